"""Named tasks for train_rlhf.py --task NAME: each bundles prompts, an eval set, rewards, a base model
and sampling defaults; any flag given beside --task overrides them.

    arithmetic   "Compute 47 + 38." with its answer as a column; reward correct (the answer is right)
                 plus a little think (the <think> ... </think> <answer> ... </answer> layout); the
                 arithmetic base model; pass@1 and pass@8 on 100 held-out problems
    chat         the default prompts as conversations ([{"role": "user", ...}], TRL's format) for the built-in chat
                 model, which reads them through its ChatML template and ends its turn with <|im_end|>; the default
                 rewards, which receive each completion as an assistant turn
"""

from __future__ import annotations

from typing import Any

from classic_rl.infra.errors import ConfigError
from rlhf_toy.data import DATA_DIR

TASKS: dict[str, dict[str, Any]] = {
    "arithmetic": dict(
        prompts=str(DATA_DIR / "arithmetic_train.jsonl"), eval_prompts=str(DATA_DIR / "arithmetic_eval.jsonl"),
        reward="correct,think", reward_weights=[0.8, 0.2], base_model="arithmetic", max_completion_length=64,
        eval_samples_per_prompt=8, pass_at_k=8, eval_every=50, run_dir="runs/arithmetic",
        # a small step: the base model's skill is sharp (entropy 0.1 per token); at 5e-4, the demo's rate, one
        # GRPO step took held-out pass@1 from 0.37 to 0, and 2e-4 swings between 0.3 and 0.5. Seed 0, held-out
        # pass@1 at the end: 5e-5 constant, 600 steps 0.75; 1e-4 decaying linearly over 950 steps 0.83
        learning_rate=1e-4, lr_scheduler_type="linear", steps=900,
        # PPO's step costs 2.6x GRPO's (its critic): 360 steps keep its training within the same 5 minutes
        by_algo={"ppo": dict(steps=360)},
    ),
    "chat": dict(prompts=str(DATA_DIR / "prompts_chat_train.jsonl"), eval_prompts=str(DATA_DIR / "prompts_chat_eval.jsonl"),
                 base_model="chat", run_dir="runs/chat"),
}


def task_defaults(name: str, algo: str) -> dict[str, Any]:
    """The config fields of task `name` for `algo` (a ConfigError lists the tasks)."""
    if name not in TASKS:
        raise ConfigError(f"unknown --task {name!r}; accepted: {', '.join(TASKS)}")
    fields = dict(TASKS[name])
    by_algo = fields.pop("by_algo", {}).get(algo, {})
    return {"task": name, **fields, **by_algo}


def listing() -> str:
    return __doc__.split("\n\n", 1)[1].rstrip()
