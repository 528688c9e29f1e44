"""Sharding with FSDP2 (torch's `fully_shard`, the engine under accelerate's FSDP plugin), for --fsdp runs in several
processes: each process holds 1/N of the parameters, gradients and optimizer state.

    accelerate launch --multi_gpu --num_processes 2 scripts/train_rlhf.py --cpu --fsdp     # 2 CPU processes (gloo)
    accelerate launch --num_processes 8 scripts/train_rlhf.py --fsdp                       # 8 GPUs (nccl)

The project calls fully_shard itself rather than through accelerate's plugin, which engages only on accelerators (on CPU
it silently runs DDP), so one code path serves CPU and GPU. Each transformer block (the model's _no_split_modules) is a
group, all-gathered for its forward and backward and freed after; the rest (embeddings, final norm, head) is the root's.
Sampling and evaluation see the full parameters (full_parameters, as TRL's unwrap_model_for_generation gathers them), so
the fast decoder and generate run unchanged; checkpoints hold the optimizer state as each process's shard
(torch.distributed.checkpoint), and the model as a save_pretrained folder written from the gathered parameters.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from classic_rl.infra.errors import ConfigError


def check_fsdp(cfg, num_processes: int) -> None:
    """A ConfigError for --fsdp in one process, where there is nothing to shard over, or with a setting it does not serve."""
    if not cfg.fsdp:
        return
    if num_processes < 2:
        raise ConfigError("--fsdp shards the model over the processes of a launched run, and this run has one; accepted: "
                          "accelerate launch --multi_gpu --num_processes N (N >= 2) SCRIPT --fsdp, or no --fsdp")
    if getattr(cfg, "ptx_coef", 0):  # a second forward of the policy before the backward: FSDP has freed the first's weights
        raise ConfigError("--ptx-coef runs the policy twice before each backward, which --fsdp does not serve; accepted: one of them")
    if cfg.save_merged_model:
        raise ConfigError("--save-merged-model with --fsdp: merge the saved adapters afterwards (their folder loads with "
                          "AutoPeftModelForCausalLM, whose merge_and_unload gives the merged model); accepted: one of them")


def block_classes(model: torch.nn.Module) -> set[str]:
    """The class names of the transformer blocks in model: the _no_split_modules of the transformers models it holds
    (itself, under peft the base model, a critic's trunk)."""
    return {name for module in model.modules() for name in getattr(module, "_no_split_modules", None) or []}


def shard(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """Shard model over the processes in place, each transformer block its own group, then the rest (a model without
    blocks, a critic's head alone, is one group); returns it. Its parameters become DTensors: build the optimizer after."""
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    blocks = block_classes(model)
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model) -> bool:
    """Whether model holds any sharded module (itself, or blocks of it: a critic's trunk)."""
    return any(isinstance(module, FSDPModule) for module in model.modules())


def fsdp_modules(model: torch.nn.Module) -> list[FSDPModule]:
    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def reshard(*models) -> None:
    """Put the sharded modules of models back in their sharded state (a no-op for those in it), so that their parameters
    are the local shards."""
    for model in models:
        for module in fsdp_modules(model):
            module.reshard()


@contextlib.contextmanager
def full_parameters(*models):
    """Within the block the sharded ones of models hold their full parameters as plain tensors, and forwards neither
    gather nor free them: every process must enter it together (the gathering is collective), and then any of them may
    sample, evaluate or save alone. Models that hold no sharded module pass through."""
    groups = list({id(module): module for model in models if model is not None for module in fsdp_modules(model)}.values())
    for module in groups:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module in groups:
            module.set_reshard_after_forward(True, recurse=False)
            module.reshard()


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Inside full_parameters: the model's parameters and persistent buffers by name, what state_dict gives an unsharded
    model (whose state_dict hooks would reshard a sharded one), for save_pretrained(state_dict=...)."""
    state = dict(model.named_parameters(remove_duplicate=False))  # tied weights under each name, as state_dict
    for prefix, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buffer
    return state


@torch.no_grad()
def held_mb(models, optimizer) -> float:
    """Megabytes of model weights (every model given, each tensor once) and optimizer state this process holds: its
    shards of sharded ones, all of the others."""
    tensors = {id(t): t for model in models if model is not None for t in model.parameters()}
    tensors.update({id(t): t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)})
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors.values()]
    return sum(t.numel() * t.element_size() for t in local) / 2**20


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ over parameters some of which are sharded (DTensors: their shards' squares summed over the
    processes) and some replicated (a critic's head, averaged by distributed.average_gradients: the same on every
    process); returns the total norm before clipping, as a plain tensor."""
    grads = [p.grad for p in parameters if p.grad is not None]
    local = [grad.to_local() if isinstance(grad, DTensor) else grad for grad in grads]
    device = local[0].device
    sharded = sum((g.float().pow(2).sum() for grad, g in zip(grads, local, strict=True) if isinstance(grad, DTensor)),
                  torch.zeros((), device=device))
    torch.distributed.all_reduce(sharded)
    replicated = sum((g.float().pow(2).sum() for grad, g in zip(grads, local, strict=True) if not isinstance(grad, DTensor)),
                     torch.zeros((), device=device))
    total = (sharded + replicated).sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in local:
        g.mul_(scale.to(g.dtype))
    return total


def save_sharded_checkpoint(accelerator, checkpoints, step: int, trained: torch.nn.Module, optimizer, write_files,
                            modules: dict[str, torch.nn.Module] | None = None, **state) -> Path | None:
    """Checkpoints.save for a sharded run, called by every process: each writes its shard of the optimizer state into
    optimizer/ (trained: every model the optimizer trains, as one module); then, with the full parameters gathered, the
    main process writes write_files(folder) (the model, from full_state) and state.pt with the full weights of modules
    (a critic, which trained holds too, or a moving reference) and state. Returns the folder (None on the other processes)."""
    if accelerator.is_main_process:
        shutil.rmtree(checkpoints.partial(step), ignore_errors=True)  # a crash's leftovers
    accelerator.wait_for_everyone()
    save_optimizer_shards(trained, optimizer, checkpoints.partial(step) / "optimizer")
    modules, folder = modules or {}, None
    with full_parameters(trained, *modules.values()):
        if accelerator.is_main_process:
            folder = checkpoints.save(step, write_files, keep_partial=True,
                                      **{name: full_state(module) for name, module in modules.items()}, **state)
    accelerator.wait_for_everyone()
    return folder


def save_optimizer_shards(model, optimizer, folder: Path) -> None:
    """Every process writes its shard of the optimizer state into folder (torch.distributed.checkpoint)."""
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(folder))


def load_optimizer_shards(model, optimizer, folder: Path) -> None:
    """Every process reads its shard of the optimizer state that save_optimizer_shards wrote (also when written by
    another number of processes: the checkpoint records the full shapes)."""
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(folder))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
