"""TR-DPO's moving reference (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment"), as TRL's
SyncRefModelCallback applies it to DPO, GRPO and RLOO: the KL term ties the policy to a reference that follows it,

    after every ref_model_sync_steps-th optimizer step:   ref <- alpha * policy + (1 - alpha) * ref     (per parameter)

so the policy may drift far from where it started while staying near where it was recently (alpha = 1: the reference
jumps to the policy; TR-DPO's soft update is alpha 0.6 every 512 steps, TRL's default). Steps are optimizer steps, as
TRL's global_step: an online step of num_minibatches x passes gradient steps counts that many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError
from rlhf_toy.fsdp import reshard


@dataclass
class ReferenceSyncFields:
    """TRL's names (GRPOConfig, RLOOConfig, DPOConfig); mixed into every trainer with a reference model."""

    sync_ref_model: bool = config_field(False, "Move the reference toward the policy every --ref-model-sync-steps optimizer "
                                               "steps (TR-DPO): ref = alpha * policy + (1 - alpha) * ref")
    ref_model_mixup_alpha: float = config_field(0.6, "TR-DPO's alpha: the policy's share of the new reference, in (0, 1]")
    ref_model_sync_steps: int = config_field(512, "Optimizer steps between two reference updates")

    def check_reference_sync(self, uses_reference: bool) -> None:
        """A ConfigError for a sync that cannot apply: a bad alpha or period, no reference model (its KL coefficient is
        0), or LoRA's reference, which is the policy itself with its adapters off (TRL refuses it too)."""
        if not 0 < self.ref_model_mixup_alpha <= 1:
            raise ConfigError(f"--ref-model-mixup-alpha must be in (0, 1], got {self.ref_model_mixup_alpha}")
        if self.ref_model_sync_steps < 1:
            raise ConfigError(f"--ref-model-sync-steps must be >= 1, got {self.ref_model_sync_steps}")
        if not self.sync_ref_model:
            return
        if not uses_reference:
            raise ConfigError("--sync-ref-model moves the reference model, which this run does not load (its KL "
                              "coefficient is 0); accepted: a KL coefficient above 0, or no --sync-ref-model")
        if getattr(self, "use_peft", False):
            raise ConfigError("--sync-ref-model needs a reference of its own; under --use-peft the reference is the policy "
                              "with its adapters disabled (TRL refuses this too); accepted: one of the two")


class ReferenceSync:
    """The moving reference of one run: attach(optimizer) mixes the policy into the reference after every
    `every`-th optimizer step. policy and reference have the same parameters in the same order (both whole, or both
    sharded alike by FSDP, whose local shards then mix). Checkpoints hold its step count (state_dict) and the reference's
    weights (tracked beside it)."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, alpha: float, every: int):
        self.policy, self.reference, self.alpha, self.every = policy, reference, alpha, every
        self.optimizer_steps = 0

    def attach(self, optimizer) -> None:
        """Count optimizer's steps (the torch optimizer inside accelerate's wrapper)."""
        getattr(optimizer, "optimizer", optimizer).register_step_post_hook(self.after_step)

    def after_step(self, optimizer, args, kwargs) -> None:
        self.optimizer_steps += 1
        if self.optimizer_steps % self.every == 0:
            reshard(self.reference, self.policy)  # FSDP2 keeps a root's parameters gathered after a forward with no backward
            mix_into(self.reference, self.policy, self.alpha)

    def checkpointed(self) -> dict[str, Any]:
        """The objects a run's checkpoints track for it, by name: the reference (its weights) and this (its step count)."""
        return {"reference": self.reference, "reference_sync": self}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer_steps = state["optimizer_steps"]


@torch.no_grad()
def mix_into(target: torch.nn.Module, source: torch.nn.Module, alpha: float) -> None:
    """target <- alpha * source + (1 - alpha) * target, parameter by parameter, in TRL's operations (the same rounding)."""
    for target_param, source_param in zip(target.parameters(), source.parameters(), strict=True):
        target_param.mul_(1.0 - alpha).add_(source_param, alpha=alpha)
