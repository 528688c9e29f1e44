"""A policy's reward on fixed prompts, and the tables of completions the RLHF loop prints."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rlhf_toy.data import split_columns
from rlhf_toy.rewards import CombinedReward
from rlhf_toy.rollout import sample_rollout
from rlhf_toy.sampling import SamplingConfig


def evaluate_on_prompts(policy, tokenizer, prompts: list[str] | list[dict], reward: CombinedReward, sampling: SamplingConfig,
                        samples_per_prompt: int, seed: int, gold: CombinedReward | None = None) -> dict[str, Any]:
    """Mean reward (and components, and the gold reward if given) of samples_per_prompt sampled completions
    of each prompt (a string, or a row whose other columns reach the rewards), with rows of (prompt,
    completion, reward).

    Samples with its own seed and leaves the caller's RNG untouched, so an evaluation before and one after
    training see the same sampling noise.
    """
    repeated, columns = split_columns([p for p in prompts for _ in range(samples_per_prompt)])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rollout = sample_rollout(policy, tokenizer, repeated, sampling)
    totals, components = reward.score(repeated, rollout.completions, **columns)
    if gold is not None:
        components["gold"] = gold(repeated, rollout.completions, **columns)
    return {"reward": float(np.mean(totals)), "components": {k: float(np.mean(v)) for k, v in components.items()},
            "mean_length": float(rollout.completion_lengths.float().mean()),
            "rows": [{"prompt": p, "completion": c, "reward": r} for p, c, r in zip(repeated, rollout.completions, totals, strict=True)]}


def print_completions(title: str, rows: list[dict], limit: int = 4, width: int = 90) -> None:
    tqdm.write(f"--- {title}")
    for row in rows[:limit]:
        completion = row["completion"].strip().replace("\n", " ")
        tqdm.write(f"  [{row['reward']:.2f}] {row['prompt']}\n         -> {completion[:width]}{'...' if len(completion) > width else ''}")


def print_side_by_side(before: list[dict], after: list[dict], n: int = 6, width: int = 80) -> None:
    """The same eval prompts before and after training, with their rewards."""
    print("\n=== eval prompts, before -> after training ===")
    for b, a in list(zip(before, after, strict=True))[:n]:
        print(f"{b['prompt']}\n  before [{b['reward']:.2f}] {b['completion'].strip()[:width]}\n"
              f"  after  [{a['reward']:.2f}] {a['completion'].strip()[:width]}")
