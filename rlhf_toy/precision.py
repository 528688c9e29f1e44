"""Numeric precision of the language-model passes: bf16 autocast where the hardware has bf16 units, fp32 elsewhere.

Weights, optimizer state and the losses' reductions stay fp32 (autocast runs only the matmuls and
what follows them in bf16), so a bf16 run differs from an fp32 one by rounding, not by recipe.
On a CPU without AMX or AVX-512 BF16 units bf16 is emulated and slower than fp32; "auto" picks it
only where it is fast (measured: bench/base-model-and-demo.md). $RLHF_TOY_AUTO_PRECISION pins what auto means on a
machine (the tests pin fp32, so that their fixed-seed outcomes are the same on every CI machine).
"""

from __future__ import annotations

import contextlib
import os

import torch
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from classic_rl.infra.errors import ConfigError
from classic_rl.infra.machine import cpu_bf16_units

PRECISIONS = ("auto", "fp32", "bf16")
# oneDNN builds and caches a bf16 matmul for every new shape, up to 1,024 of them by default; GRPO's batches bring new
# completion lengths every step, and by the end of the demo that cache held ~90 MB more than one of 64 entries, at the
# same speed (3 alternating runs; with 16 entries 14.7 against 11.5 s). The variable is read at oneDNN's first primitive.
ONEDNN_CACHE_VARIABLE, BF16_CPU_CACHE_CAPACITY = "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64"


def has_fast_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run on hardware units: a CUDA GPU that supports bf16, or a CPU with AMX / AVX-512 BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_bf16_units())


def resolve_precision(requested: str, device: torch.device) -> str:
    """'fp32' or 'bf16': an explicit choice is kept; auto is $RLHF_TOY_AUTO_PRECISION where set, else bf16
    where has_fast_bf16 and fp32 elsewhere."""
    if requested != "auto":
        return requested
    pinned = os.environ.get("RLHF_TOY_AUTO_PRECISION")
    if pinned is None:
        return "bf16" if has_fast_bf16(device) else "fp32"
    if pinned not in ("fp32", "bf16"):
        raise ConfigError(f"$RLHF_TOY_AUTO_PRECISION={pinned!r}; accepted: fp32, bf16, or unset")
    return pinned


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on device for precision 'bf16'; a no-op context for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_up_precision(requested: str, device: torch.device, *models: PreTrainedModel | None) -> str:
    """What every trainer does before its first step: resolve_precision, a bounded oneDNN cache for bf16 on a CPU,
    and choose_attention for each of the models it runs under autocast (None skipped). Returns 'fp32' or 'bf16'."""
    precision = resolve_precision(requested, device)
    if precision == "bf16" and device.type == "cpu":
        os.environ.setdefault(ONEDNN_CACHE_VARIABLE, BF16_CPU_CACHE_CAPACITY)  # a user's own setting wins
    for model in models:
        if model is not None:
            choose_attention(model, precision, device)
    return precision


def bf16_linear_weights(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen model that runs only under bf16 autocast (the RLHF reference) keeps its linear layers' weights and
    biases in bf16: the values autocast would cast them to on every call, since it keeps casts only of weights that train
    (the demo's reference forward: 0.8 of 16 ms, the same log-probs bit for bit). A weight tied to the input
    embedding stays fp32, as the embedding reads it outside any matmul."""
    embedding = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module.weight is not embedding:
            module.to(torch.bfloat16)
    return model


def choose_attention(model: PreTrainedModel, precision: str, device: torch.device) -> PreTrainedModel:
    """Under bf16 on a CPU, attention as transformers' plain matmul-and-softmax ("eager") instead of SDPA: the
    CPU flash-attention kernel's bf16 backward took 44% of a tiny GPT-2 training step (32 x 128 tokens: 136 ms
    a step with SDPA, 83-87 ms eager, 196 ms in fp32; bench/base-model-and-demo.md). Same maths; not saved with the model."""
    if precision == "bf16" and device.type == "cpu" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation("eager")
    return model
