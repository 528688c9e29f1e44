"""Devices and processes through `accelerate`: one code path for one CPU, one GPU, or N processes.

    accelerate launch --multi_gpu --num_processes 2 scripts/train_rlhf.py --cpu ...   # 2 CPU processes (gloo)
    accelerate launch --num_processes 8 scripts/train_rlhf.py ...                     # 8 GPUs (nccl)

Each process samples and scores its own share of the step's prompt groups; DDP averages the
gradients; the main process alone writes the run folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from accelerate import Accelerator

from classic_rl.infra.errors import ConfigError


def make_accelerator(cpu: bool):
    """An Accelerator; on a machine without an accelerator it runs on CPU even without --cpu, so that
    processes started by a launcher join one gloo group instead of training alone side by side."""
    return Accelerator(cpu=cpu or not torch.accelerator.is_available())


def require_one_process(script: str) -> None:
    """Refuse a launch in several processes for a script that does not split its work."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ConfigError(f"{script} runs in one process, but was launched in {world_size}; run it with python "
                          "(multi-process training is scripts/train_rlhf.py --algo grpo)")


def process_share(items: Sequence, process_index: int, num_processes: int) -> list:
    """This process's contiguous share of items (whole groups when len(items) / num_processes is a
    multiple of the group size)."""
    size = len(items) // num_processes
    return list(items[process_index * size: (process_index + 1) * size])


def metrics_over_processes(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Each metric over processes (one gather for all of them; unchanged in one process): the largest for a name ending
    in /max, as TRL logs them, else the mean."""
    if accelerator.num_processes == 1:
        return metrics
    values = accelerator.gather(torch.tensor([[float(v) for v in metrics.values()]], device=accelerator.device))  # [P, K]
    return {key: (column.max() if key.endswith("/max") else column.mean()).item()
            for key, column in zip(metrics, values.unbind(1), strict=True)}


def any_process(accelerator, flag: bool) -> bool:
    """True on every process when flag is true on at least one (e.g. a Ctrl-C seen by one of them)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item() > 0)


def leave_processes(accelerator) -> None:
    """Leave the process group in order at the end of a run: drop the prepared (DDP) models first, whose
    reducers hold the group, then destroy it. Exiting with the group alive lets gloo's threads outlive the
    interpreter, which aborts a process now and then; destroying it while a reducer still holds it can hang
    in the reducer's destructor. The caller drops its own references to the prepared model first;
    free_memory drops accelerate's and collects the garbage."""
    accelerator.free_memory()
    accelerator.end_training()
