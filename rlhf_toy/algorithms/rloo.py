"""REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"), as TRL 1.16's RLOOTrainer.

    for each step:
        sample G completions for each of P prompts; score them: r_i, clipped to reward_clip_range
        old, ref = the policy's and the reference's token log-probs before the update (the update's own forward)
        r_i <- r_i - beta * sum over its tokens of (old - ref)       the KL penalty goes into the reward (k1, per sequence)
        A_i = r_i - mean of the other G - 1 rewards of its group     the leave-one-out baseline: no critic, no std
        A   <- (A - mean(A)) / (std(A) + 1e-4) over the batch        with normalize_advantages
        for num_iterations, for each of num_minibatches minibatches:
            rho_i = exp(sum over its tokens of log pi - old)         one ratio per completion, as the paper's REINFORCE
            minimise the mean over completions of -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A)

The clipped objective is classic_rl.core's, on sequences instead of tokens; tests/test_trl_parity.py checks the
advantages and the loss against TRL's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from classic_rl import core
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_nonnegative, require_positive
from classic_rl.infra.metrics import MeanStats
from rlhf_toy.algorithms.base import (
    OnlineAlgorithm,
    RLHFConfig,
    check_reward_clip_range,
    gradient_step,
    logprobs_before_update,
    trained_mask,
)
from rlhf_toy.distributed import process_share
from rlhf_toy.generation.rollout import Rollout, completion_logprobs, sampler_mismatch


@dataclass
class RLOOConfig(RLHFConfig):
    """RLOO's own fields, named as in TRL's RLOOConfig."""

    ALGO: ClassVar[str] = "rloo"
    beta: float = config_field(0.05, "KL coefficient: the reward loses beta * the completion's summed k1 KL to the reference "
                                     "(0 loads no reference model)")
    epsilon: float = config_field(0.2, "Lower clip of the completion's ratio")
    epsilon_high: float | None = config_field(None, "Upper clip of the completion's ratio; default: epsilon")
    num_iterations: int = config_field(1, "Updates per rollout (mu)")
    normalize_advantages: bool = config_field(False, "Whiten the advantages over the generation batch")
    reward_clip_range: list[float] | None = config_field(None, "Clip the rewards to [min, max] before the KL penalty")
    mask_truncated_completions: bool = config_field(False, "Exclude completions without eos from the loss (DAPO)")

    def __post_init__(self):
        super().__post_init__()
        require_positive(epsilon=self.epsilon, epsilon_high=self.epsilon_high, num_iterations=self.num_iterations)
        require_nonnegative(beta=self.beta)
        if self.num_generations < 2:
            raise ConfigError(f"RLOO's baseline is the mean of the other completions of the prompt, so --num-generations must "
                              f"be >= 2, got {self.num_generations}")
        check_reward_clip_range(self.reward_clip_range)

    @property
    def uses_reference(self) -> bool:
        return self.beta > 0

    @property
    def passes(self) -> int:
        return self.num_iterations


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """A_i = r_i - the mean of the other rewards of its group, `[B]` from rewards `[B]` in consecutive groups."""
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).view(-1)


def rloo_advantages(accelerator, rewards: Tensor, sequence_kl: Tensor, cfg: RLOOConfig) -> Tensor:
    """This process's advantages `[B]` from its rewards and summed KL to the reference `[B]`, the baselines and the
    whitening taken over every process's completions."""
    if cfg.reward_clip_range is not None:
        rewards = rewards.clamp(*cfg.reward_clip_range)
    advantages = leave_one_out_advantages(accelerator.gather(rewards - cfg.beta * sequence_kl), cfg.num_generations)
    if cfg.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-4)
    return process_share(advantages, accelerator.process_index, accelerator.num_processes)


def sequence_loss(policy, rollout: Rollout, rows: Tensor, advantages: Tensor, old_logprobs: Tensor | None, mask: Tensor,
                  cfg: RLOOConfig) -> tuple[Tensor, dict, Tensor]:
    """(loss, stats, the old token log-probs `[b, C]` used) of the minibatch `rows` `[b]`: the clipped objective of each
    completion's ratio, averaged over its completions. old_logprobs None: one gradient step per rollout, whose old
    policy is this very forward (the ratio exactly 1)."""
    logp, entropy = completion_logprobs(policy, rollout.input_ids[rows], rollout.attention_mask[rows],
                                        rollout.completion_mask[rows], cfg.temperature, with_entropy=True)
    old = logp.detach() if old_logprobs is None else old_logprobs[rows]
    loss, stats = core.policy_loss((logp * mask[rows]).sum(1), (old * mask[rows]).sum(1), advantages[rows], cfg.epsilon,
                                   cfg.epsilon_high)
    stats.update(loss=loss.detach(), entropy=core.masked_mean(entropy, mask[rows]))
    return loss, stats, old


def rloo_update(policy, ref_model, optimizer, accelerator, rollout: Rollout, rewards: Tensor, cfg: RLOOConfig) -> dict[str, float]:
    """num_iterations passes of num_minibatches gradient steps over one rollout and its rewards `[B]`; returns metrics."""
    mask = trained_mask(rollout, cfg.mask_truncated_completions)
    passes = cfg.minibatch_orders(len(rewards))
    old_logprobs, ref_logprobs = logprobs_before_update(policy, ref_model if cfg.beta > 0 else None, rollout, passes[0], cfg.temperature,
                                                        with_old=cfg.num_iterations * cfg.num_minibatches > 1 or cfg.beta > 0)
    kl = torch.zeros_like(mask) if ref_logprobs is None else core.kl_estimate(old_logprobs, ref_logprobs, "k1", mask)
    advantages = rloo_advantages(accelerator, rewards, kl.sum(1), cfg)
    first_pass_old, means = torch.zeros_like(mask), MeanStats()
    for iteration, minibatches in enumerate(passes):
        for rows in minibatches:
            loss, stats, old = sequence_loss(policy, rollout, rows, advantages, old_logprobs, mask, cfg)
            if iteration == 0:
                first_pass_old[rows] = old
            stats["grad_norm"] = gradient_step(accelerator, optimizer, loss, policy.parameters(), cfg.max_grad_norm)
            means.add(stats)
    metrics = means.means()
    metrics.update(clip_ratio=metrics.pop("clipfrac"), kl=float(core.masked_mean(kl, mask)),
                   kl_sequence=float(kl.sum(1).mean()))
    metrics.update(sampler_mismatch(first_pass_old, rollout.sampling_logprobs, mask))
    return metrics


class RLOO(OnlineAlgorithm):
    """RLOO in the online loop: no model of its own beside the policy and the reference."""

    name, Config, kl_label = "rloo", RLOOConfig, "KL to the reference (k1 per token)"

    def update(self, policy, ref_model, optimizer, accelerator, rollout: Rollout, rewards: Tensor,
               rewards_per_func: Tensor) -> dict[str, float]:
        return rloo_update(policy, ref_model, optimizer, accelerator, rollout, rewards, self.cfg)
