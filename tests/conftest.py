"""Shared fixtures: a nano GPT-2 pretrained for a few seconds on a small generated corpus."""

import copy
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from rlhf_toy import corpus
from rlhf_toy.data import write_jsonl
from rlhf_toy.distributed import launch_command
from rlhf_toy.generation.rollout import sample_rollout
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]
# --precision auto means fp32 in the tests (and the scripts they start) on every machine, with or without bf16 units,
# so fixed-seed outcomes do not depend on the CI machine's CPU; the bf16 tests ask for bf16 by name.
os.environ["RLHF_TOY_AUTO_PRECISION"] = "fp32"

if os.environ.get("MUTANT_UNDER_TEST"):
    # make mutate: mutmut forks a worker per mutant from a process that has run the tests, and a fork made
    # after torch's OpenMP threads ran crashes in its first parallel region; one thread keeps them unused.
    torch.set_num_threads(1)
    torch.set_num_threads = lambda _threads: None
SMALL = {"pretrain": 1500, "sft": 1500, "prompts_train": 50, "prompts_eval": 8, "preferences_train": 400,
         "preferences_eval": 100, "arithmetic_train": 200, "arithmetic_eval": 16, "arithmetic_sft": 1500,
         "calculator_train": 100, "calculator_eval": 16, "calculator_sft": 1500, "frozenlake_train": 100, "frozenlake_eval": 32,
         "maze_train": 100, "maze_eval": 32, "taxi_train": 100, "taxi_eval": 32}


@pytest.fixture(scope="session")
def nano(tmp_path_factory):
    """(root, pretrain summary): root/data holds small data files, root/run/model the nano model.

    $RLHF_TOY_TEST_CACHE names a folder where it is built once and reused by later sessions (make mutate
    runs a session per mutant); without it every session builds its own."""
    cache = os.environ.get("RLHF_TOY_TEST_CACHE")
    root = Path(cache) / "nano" if cache else tmp_path_factory.mktemp("nano")
    if (root / "run" / "summary.json").is_file():
        return root, json.loads((root / "run" / "summary.json").read_text())
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in corpus.generate_corpus(0, SMALL).items():
        write_jsonl(root / "data" / f"{name}.jsonl", rows)
    cfg = PretrainConfig(preset="nano", data_dir=str(root / "data"), vocab_size=600, batch_size=16, max_steps=80,
                         warmup_steps=10, learning_rate=3e-3, min_lr_ratio=0.1, eval_every=40, run_dir=str(root / "run"), overwrite=True)
    return root, pretrain(cfg)


@pytest.fixture(scope="session")
def nano_arithmetic_dir(nano):
    """A nano Llama pretrained as briefly on the worked arithmetic with single-digit tokens, each solution a row of its own
    (the arithmetic base model's recipe)."""
    root = nano[0]
    if not (root / "arithmetic" / "summary.json").is_file():
        pretrain(PretrainConfig(preset="nano", arch="llama", packing=False, data_dir=str(root / "data"), arithmetic=True, vocab_size=600, batch_size=16,
                                max_steps=120, warmup_steps=10, learning_rate=3e-3, min_lr_ratio=0.1, eval_every=60, run_dir=str(root / "arithmetic"), overwrite=True))
    return str(root / "arithmetic" / "model")


@pytest.fixture(scope="session")
def nano_dir(nano):
    return str(nano[0] / "run" / "model")


@pytest.fixture(scope="session")
def nano_llama_dir(nano):
    """A nano Llama (rotary positions, RMSNorm, SwiGLU, grouped-query attention) pretrained as briefly on the same data."""
    root = nano[0]
    if not (root / "llama" / "summary.json").is_file():
        pretrain(PretrainConfig(preset="nano", arch="llama", data_dir=str(root / "data"), vocab_size=600, batch_size=16,
                                max_steps=80, warmup_steps=10, eval_every=40, run_dir=str(root / "llama"), overwrite=True))
    return str(root / "llama" / "model")


@pytest.fixture(scope="session")
def nano_chat_dir(nano):
    """A nano GPT-2 pretrained as briefly with the answers as ChatML conversations: a tokenizer with a chat template and
    <|im_start|> / <|im_end|> tokens (the built-in chat model's recipe)."""
    root = nano[0]
    if not (root / "chat" / "summary.json").is_file():
        pretrain(PretrainConfig(preset="nano", chat=True, data_dir=str(root / "data"), vocab_size=600, batch_size=16, max_steps=80,
                                warmup_steps=10, learning_rate=3e-3, min_lr_ratio=0.1, eval_every=40, run_dir=str(root / "chat"), overwrite=True))
    return str(root / "chat" / "model")


@pytest.fixture(scope="session")
def dropout_gpt2_dir(nano_dir, tmp_path_factory):
    """The nano model's weights in a GPT-2 with GPT2Config's default dropout, 0.1 (embeddings, attention, residuals),
    as the hub's gpt2 has it."""
    nano = load_model(nano_dir)
    config = nano.config
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.1
    model = GPT2LMHeadModel(config)
    model.load_state_dict(nano.state_dict())
    folder = tmp_path_factory.mktemp("dropout-gpt2")
    model.save_pretrained(folder)
    load_tokenizer(nano_dir).save_pretrained(folder)
    return str(folder)


def run_script(script: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run scripts/<script> in-process as __main__; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    code = 0
    try:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def step_rows(run_dir: Path) -> list[dict]:
    """The metrics rows of an RLHF run's training steps (not its eval/* rows)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "reward" in row]


def comparable_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the fields that measure time, which differ between any two runs."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/") and "SPS" not in k and "per_s" not in k} for row in rows]


def script_command(script: str, num_processes: int = 1) -> list[str]:
    """The command running scripts/<script> with python, or in num_processes CPU processes (the script needs --cpu)."""
    return launch_command(str(ROOT / "scripts" / script), num_processes)


def kill_after_first_checkpoint(script: str, args: list[str], run_dir: Path, sig: int, timeout: float = 120.0,
                                num_processes: int = 1) -> int:
    """Start scripts/<script> in a fresh session (in num_processes processes: script_command), send `sig` to every
    process of it as soon as a complete checkpoint exists in run_dir, and return its exit status (negative: killed by
    that signal)."""
    process = subprocess.Popen([*script_command(script, num_processes), *args], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not list((run_dir / "checkpoints").glob("step-*")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{script} ended or stalled before writing a checkpoint")
        time.sleep(0.02)
    os.killpg(process.pid, sig)
    return process.wait(timeout=timeout)


@pytest.fixture(scope="module")
def policy_reference_rollout(nano_dir):
    """(policy, rollout, reference): a reference that differs from the policy (so KL terms and their gradients are not
    zero) and a rollout of 2 prompts x 4 completions of at most 10 tokens, some of them truncated, scored under both."""
    policy, tokenizer = load_model(nano_dir), load_tokenizer(nano_dir)
    reference = copy.deepcopy(policy).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [p for p in ["Describe a fox.", "Tell me about Ada and the lake."] for _ in range(4)]
    rollout = sample_rollout(policy, tokenizer, prompts, SamplingConfig(max_new_tokens=10), ref_model=reference)
    assert rollout.is_truncated.any() and not rollout.is_truncated.all()
    assert (rollout.ref_logprobs - rollout.sampling_logprobs).abs().max() > 0.05
    return policy, rollout, reference


def clipped_sgd_step(loss: torch.Tensor, params: list[torch.Tensor], lr: float, max_grad_norm: float) -> None:
    """One SGD step on loss with the global gradient norm clipped to max_grad_norm, written out (the plain
    re-derivations of GRPO and PPO in the tests use it instead of torch's optimizer and clipping)."""
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p -= lr * g * min(1.0, max_grad_norm / (norm.item() + 1e-6))


def largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest absolute difference between two models' parameters."""
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters(), strict=True))


def max_difference_while_decoding(logits, reference_logits, completion: torch.Tensor, eos_ids: list[int]) -> float:
    """The largest difference between two decoders' logits of each step `C x [B, V]`, over the rows still decoding
    at that step (not finished before it: the fast decoder stops computing finished rows)."""
    finished = torch.isin(completion, torch.tensor(eos_ids))
    return max((a.float() - b.float())[~finished[:, :t].any(1)].abs().max().item()
               for t, (a, b) in enumerate(zip(logits, reference_logits, strict=True)))
