"""The built-in base policies: pretrained from the project's own corpus on first use (about 1 minute on
2 cores with bf16 units, 2 without) and cached, so every command that needs a model without --model finds one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rlhf_toy.agents.text_games import GAMES
from rlhf_toy.chat import is_conversational
from rlhf_toy.data import DATA_DIR
from rlhf_toy.distributed import launched, run_alone
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain

BASE_MODEL_VERSION = "v4"  # bump when the corpus or recipe changes, so cached models are rebuilt (v3: bf16 where fast; v4: 400 steps, not 600)
ARITHMETIC_MODEL_VERSION = "v2"  # likewise for the arithmetic base model (v2: a Llama, each solution a row of its own)
CHAT_MODEL_VERSION = "v1"  # and for the chat model
AGENT_MODEL_VERSION = "v1"  # and for the agent tasks' models
AGENT_MODEL_VERSIONS = {"calculator": "v2"}  # and per agent task past v1 (the calculator's v2: 2,000 steps, not 1,200)
# the built-in base models: the little world's stories and answers; those and sums; the stories with the answers as
# ChatML conversations, a tokenizer with a chat template; transcripts of the agent tasks (rlhf_toy/agents/), the
# calculator's also as conversations with tool calls and tool messages
BASE_MODELS = ("default", "arithmetic", "chat", "calculator", "calculator-chat", *GAMES)
# the agent tasks' recipes. The calculator's in fp32: copying the operands into the call is an attention pattern that
# bf16 training did not form (held-out pass@1 0.016 after 1200 steps, against 0.12 in fp32; bench/agents.md); and
# 2,000 steps: after 1,200, held-out pass@1 was 0.258 on a Xeon but 0.195 on an EPYC, where 500 GRPO steps then
# reached 0.824; after 2,000 (7.5 min), 0.466 on the EPYC, where copying formed between steps 800 and 1,400. The
# games' episodes run to 100 moves, longer than the default context. Taxi's model learns a move from three squares
# spread over the context (the taxi's, the passenger's or the destination's): after 400 steps it delivered by a shortest
# route 0.03 of the time and GRPO lifted that to 0.13 in 100 steps; after 800, 0.31 and 0.94 (bench/agents.md). The
# calculator's transcripts as conversations are longer (median 86 tokens against 69), so a batch holds fewer: with
# 1,200 steps copying never formed (held-out pass@1 0.000); with 2,000 it formed between steps 1,000 and 1,400 (0.116,
# and GRPO took that to 0.30); with 3,000, 0.479 (bench/agents.md).
# The arithmetic model: a Llama, each worked solution in a row of its own from position 0, in fp32. Held-out pass@1
# after 1200 steps of 32 rows (seed 0, bench/reasoning-arithmetic.md): 0.40 (pass@8 0.97), which GRPO takes to 0.85-0.88
# in 200 steps. Reading an operand's digits is attention at a relative offset, which rotary positions give (a GPT-2 on
# the same rows: 0.21); a row per solution holds half the tokens of packed blocks of 128 (packed: 32 blocks 0.55 in twice
# the time, 16 blocks 0.27, 700 steps of 32 blocks 0.17). 1000 steps: 0.30; bf16: 0.30; batches grouped by length (10%
# faster): 0.00. The held-out loss twice, not six times: each pass is 2,000 solutions.
ARITHMETIC_RECIPE = dict(arithmetic=True, arch="llama", packing=False, max_steps=1200, learning_rate=3e-3, min_lr_ratio=0.1,
                         warmup_steps=60, precision="fp32", eval_every=600)
GAME_PRETRAIN_STEPS = {"frozenlake": 400, "maze": 400, "taxi": 800}
CALCULATOR_RECIPE = dict(transcripts="calculator", max_steps=2000, learning_rate=3e-3, min_lr_ratio=0.1, warmup_steps=60, precision="fp32")
AGENT_RECIPES = {"calculator": CALCULATOR_RECIPE, "calculator-chat": dict(CALCULATOR_RECIPE, chat=True, max_steps=3000),
                 **{game: dict(transcripts=game, max_steps=GAME_PRETRAIN_STEPS[game], batch_size=16, n_positions=320,
                               learning_rate=3e-3, min_lr_ratio=0.1)
                    for game in GAMES}}


def kind_for(prompts: list) -> str:
    """The built-in base model for data in this format: the chat model for conversations, else the default."""
    return "chat" if any(map(is_conversational, prompts)) else "default"


def cache_home() -> Path:
    """Where built artefacts are cached: $RLHF_TOY_HOME, else ~/.cache/rlhf-toy."""
    return Path(os.environ.get("RLHF_TOY_HOME", Path.home() / ".cache" / "rlhf-toy"))


def default_base_model(preset: str = "tiny", kind: str = "default") -> str:
    """Folder of a built-in base model (BASE_MODELS), pretrained once with PretrainConfig's defaults and cached.

    Built in a temporary folder and renamed into place, so an interrupted build is never reused; inside a launched
    multi-process run, in a process of its own.
    """
    version = {"default": BASE_MODEL_VERSION, "arithmetic": f"arithmetic-{ARITHMETIC_MODEL_VERSION}", "chat": f"chat-{CHAT_MODEL_VERSION}",
               **{agent: f"{agent}-{AGENT_MODEL_VERSIONS.get(agent, AGENT_MODEL_VERSION)}" for agent in AGENT_RECIPES}}[kind]
    final = cache_home() / f"base-{preset}-{version}"
    if (final / "model" / "config.json").is_file():
        return str(final / "model")
    if launched():  # the main process of a launched run: pretraining here would train in the launcher's process group
        run_alone(f"from rlhf_toy.lm.base_model import default_base_model; default_base_model({preset!r}, {kind!r})")
        return str(final / "model")
    final.parent.mkdir(parents=True, exist_ok=True)
    building = final.with_name(final.name + ".building")
    print(f"building the {kind} base model ({preset}) once into {final} ...")
    recipe = {"arithmetic": ARITHMETIC_RECIPE,
              "chat": dict(chat=True), **AGENT_RECIPES}.get(kind, {})
    pretrain(PretrainConfig(preset=preset, data_dir=str(DATA_DIR), run_dir=str(building), overwrite=True, **recipe))
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)
    return str(final / "model")
