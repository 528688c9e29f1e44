"""Devices and processes through `accelerate`: one code path for one CPU, one GPU, or N processes.

    accelerate launch --multi_gpu --num_processes 2 scripts/train_rlhf.py --cpu ...   # 2 CPU processes (gloo)
    accelerate launch --num_processes 8 scripts/train_rlhf.py ...                     # 8 GPUs (nccl)

Every trainer (online RLHF, DPO, the reward model, pretraining) splits each batch by process: an RLHF step's
prompt groups, a supervised batch's rows. DDP averages the policy's gradients, average_gradients those of a
model beside it (PPO's critic); statistics of the whole batch (advantages, whitening, the KL controller's KL)
are summed over the processes; the main process alone evaluates and writes the run folder. A run in N
processes takes the steps one process would take on the same global batch (tests/test_processes.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch.distributed.tensor import DTensor

from classic_rl.infra.errors import ConfigError, TrainingInterrupted
from rlhf_toy import fsdp


def make_accelerator(cpu: bool):
    """An Accelerator; on a machine without an accelerator it runs on CPU even without --cpu, so that
    processes started by a launcher join one gloo group instead of training alone side by side."""
    return Accelerator(cpu=cpu or not torch.accelerator.is_available())


def require_one_process(script: str) -> None:
    """Refuse a launch in several processes for a script that does not split its work."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ConfigError(f"{script} runs in one process, but was launched in {world_size}; run it with python "
                          "(the training scripts it calls run in several: train_rlhf.py, train_dpo.py, "
                          "train_reward_model.py, pretrain.py)")


# the variables through which torchrun tells a process that it is one of several
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                      "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def launched() -> bool:
    """Whether this process is one of several started by a launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_command(script: str, num_processes: int = 1) -> list[str]:
    """The command that runs a script with python, or in num_processes processes through `accelerate launch` (torchrun:
    one per GPU, or on CPU with gloo when the script gets --cpu)."""
    if num_processes == 1:
        return [sys.executable, script]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script]


def run_alone(code: str) -> None:
    """Run python code in a process of its own, outside the launcher's process group: the main process of a launched
    run builds a missing base model this way while the others wait, since pretraining in its own process would join
    their group. Its output goes to this process's."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def require_even_split(count: int, num_processes: int, what: str) -> None:
    """A ConfigError unless count rows split into equal shares over the processes (a batch whose mean is then the mean
    of the shares' means, as DDP averages them)."""
    if count % num_processes:
        raise ConfigError(f"{what} is {count}, which does not split over {num_processes} processes; accepted: a multiple "
                          f"of {num_processes}")


def summed_over_processes(accelerator) -> Callable | None:
    """total(tensor) -> its sum over the processes, for statistics of the whole batch (core.masked_whiten's total);
    None in one process, where a sum over one process is the tensor itself."""
    if accelerator.num_processes == 1:
        return None
    return lambda tensor: accelerator.reduce(tensor, "sum")


def values_of_every_process(accelerator, values: torch.Tensor) -> torch.Tensor:
    """The 1-D values of every process, concatenated in process order (each may hold a different number: padded with a
    value no entropy or count takes, gathered, unpadded)."""
    sentinel = -1e9
    gathered = accelerator.gather(accelerator.pad_across_processes(values, dim=0, pad_index=sentinel))
    return gathered[gathered != sentinel]


def average_gradients(accelerator, parameters) -> None:
    """Average over the processes the gradients of a model that no DDP wrapper holds (PPO's critic trains beside the
    policy), as DDP averages the policy's: one all-reduce of their concatenation. Every process must hold gradients for
    the same parameters. Sharded parameters (--fsdp) are left to FSDP, which reduces their gradients itself."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None and not isinstance(p.grad, DTensor)]  # FSDP reduces its own
    if grads:
        mean = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
        for grad, averaged in zip(grads, mean.split([g.numel() for g in grads]), strict=True):
            grad.copy_(averaged.view_as(grad))


def process_share(items: Sequence, process_index: int, num_processes: int) -> Sequence:
    """This process's contiguous share of items, a list or a tensor of rows (whole groups when len(items) / num_processes
    is a multiple of the group size)."""
    size = len(items) // num_processes
    return items[process_index * size: (process_index + 1) * size]


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


def clip_gradients(accelerator, parameters, max_norm: float) -> torch.Tensor:
    """Clip the gradients' global norm to max_norm; returns the norm before clipping: accelerate's clip_grad_norm_, or
    where some are sharded (--fsdp) fsdp.clip_grad_norm, which sums their shards' squares over the processes."""
    parameters = list(parameters)
    if any(isinstance(p.grad, DTensor) for p in parameters):
        return fsdp.clip_grad_norm(parameters, max_norm)
    return accelerator.clip_grad_norm_(parameters, max_norm)


def trained_modules(policy, beside=()) -> torch.nn.Module:
    """Every model one optimizer trains (the policy, a critic beside it) as one module: the names under which a sharded
    optimizer state is saved and loaded."""
    return torch.nn.ModuleList([policy, *beside])


def prepare_training(accelerator, policy, sharded: bool, make_optimizer, checkpoints, beside=(), frozen=()) -> tuple[Any, Any]:
    """Make policy ready to train with the models trained beside it (a critic) and the frozen ones run beside it (a
    reference; None skipped): sharded (--fsdp), shard them all, else wrap the policy for DDP (accelerate's prepare); build the
    optimizer, make_optimizer(trainable parameters), after sharding, and on --resume restore it from the checkpoint
    (sharded, from each process's shard in optimizer/). The tracked objects are restored before: a critic's full
    weights load into it unsharded. Returns (the policy as trained, the optimizer)."""
    if sharded:
        for model in (policy, *beside, *frozen):
            if model is not None:
                fsdp.shard(model, accelerator)
    trained = trained_modules(policy, beside)
    optimizer = make_optimizer([p for p in trained.parameters() if p.requires_grad])  # under LoRA, the adapters
    if checkpoints.resumed and sharded:
        fsdp.load_optimizer_shards(trained, optimizer, checkpoints.folder / "optimizer")
    elif checkpoints.resumed:
        optimizer.load_state_dict(checkpoints.saved["optimizer"])
    if sharded:
        return policy, accelerator.prepare(optimizer)
    return accelerator.prepare(policy, optimizer)


def save_if_due(accelerator, checkpoints, step: int, save: Callable[[], Any], every_process: bool = False) -> None:
    """The checkpoint schedule of a run in any number of processes: a Ctrl-C seen by one process stops them all, every
    process asks whether a checkpoint is due, the main one alone calls save() (every one, with every_process: a sharded
    model's checkpoint is written by all), the others wait for it, and then all stop together if asked to
    (TrainingInterrupted)."""
    checkpoints.stop.requested = any_process(accelerator, checkpoints.stop.requested)
    if checkpoints.due(step):
        if every_process or accelerator.is_main_process:
            save()
        accelerator.wait_for_everyone()
        checkpoints.stop_if_requested(step)


def in_processes(train: Callable[[Any, Any], dict], cfg) -> dict:
    """train(cfg, accelerator) in this process's accelerator (cfg.cpu), leaving the process group in order afterwards,
    also when a Ctrl-C stopped the run (leave_processes): train's frame, which holds the prepared model, is gone by
    then. Returns train's summary (the main process's; {} on the others)."""
    accelerator = make_accelerator(cfg.cpu)
    try:
        summary = train(cfg, accelerator)
    except TrainingInterrupted as err:  # every process raises it at the same checkpoint (save_if_due)
        traceback.clear_frames(err.__traceback__)  # the frames' locals hold the prepared model
        leave_processes(accelerator)
        raise
    leave_processes(accelerator)
    return summary


def leave_processes(accelerator) -> None:
    """Leave the process group in order at the end of a run: drop the prepared (DDP) models first, whose
    reducers hold the group, then destroy it. Exiting with the group alive lets gloo's threads outlive the
    interpreter, which aborts a process now and then; destroying it while a reducer still holds it can hang
    in the reducer's destructor. The caller drops its own references to the prepared model first;
    free_memory drops accelerate's and collects the garbage."""
    accelerator.free_memory()
    accelerator.end_training()
