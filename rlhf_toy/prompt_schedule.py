"""Which prompts each RLHF step trains on, and the seed each step samples with: pure functions of
(seed, step), so a resumed run, or another process, sees exactly what an uninterrupted one does."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded permutation of n prompts for one epoch (built once, not once per prompt)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def prompts_for_step(prompts: Sequence[T], step: int, prompts_per_step: int, num_generations: int, seed: int) -> list[T]:
    """The prompts (strings or rows) of step (1-based), each repeated num_generations times (groups are
    consecutive), drawn epoch by epoch from seeded permutations of the prompt list."""
    chosen, n = [], len(prompts)
    for index in range((step - 1) * prompts_per_step, step * prompts_per_step):
        epoch, position = divmod(index, n)
        chosen.append(prompts[epoch_order(n, seed, epoch)[position]])
    return [p for p in chosen for _ in range(num_generations)]


def step_seed(seed: int, step: int, process_index: int) -> int:
    """The torch seed of one step on one process: minibatch order (and a dropout left on) are then a pure function of
    (seed, step, process), so resumed and multi-process runs need no saved torch RNG state. Sampling draws from
    step_seed(seed, step, 0) on every process (sampling.RowUniforms), so its completions do not depend on the processes."""
    return int(np.random.SeedSequence([seed, step, process_index]).generate_state(1)[0])
