"""REINFORCE++ and REINFORCE++-baseline (Hu et al. 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to
Both Prompt and Reward Models"), as OpenRLHF defines them (its advantage estimators "reinforce" and
"reinforce_baseline"): PPO's tricks without a critic.

    for each step:
        sample G completions for each of P prompts; score them: r_i
        r_i <- r_i - mean of its group                                  reinforce_baseline only (no std: Dr. GRPO's point)
        r_i <- clip(r_i, reward_clip_range)
        old, ref = the policy's and the reference's token log-probs before the update (the update's own forward)
        token rewards: -init_kl_coef * KL_t on every completion token (kl_estimator, k1 by default), + r_i on its last
        G_t = sum over s >= t of gamma^(s - t) reward_s                 each token's return to go
        A = (G - mean) / std over every completion token of the batch   global normalisation instead of a critic
        for max_epochs, for each of num_minibatches minibatches:
            minimise the minibatch's token mean of -min(rho A, clip(rho, 1 - eps_clip, 1 + eps_clip) A)

Token rewards, returns to go, whitening and the clipped objective are classic_rl.core's, as PPO's; the tests check
the advantages against a hand computation (OpenRLHF is not a dependency).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from classic_rl import core
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_choice, require_nonnegative, require_positive
from classic_rl.infra.metrics import MeanStats
from rlhf_toy.algorithms.base import (
    OnlineAlgorithm,
    RLHFConfig,
    check_reward_clip_range,
    gradient_step,
    logprobs_before_update,
)
from rlhf_toy.distributed import process_share, summed_over_processes
from rlhf_toy.generation.rollout import Rollout, completion_logprobs, sampler_mismatch

ADVANTAGE_ESTIMATORS = ("reinforce", "reinforce_baseline")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass
class ReinforcePPConfig(RLHFConfig):
    """REINFORCE++'s own fields, named as in OpenRLHF (TRL has no REINFORCE++)."""

    ALGO: ClassVar[str] = "reinforce_pp"
    advantage_estimator: str = config_field("reinforce_baseline", "reinforce (REINFORCE++) or reinforce_baseline (its group "
                                                                  "mean subtracted first: REINFORCE++-baseline)")
    init_kl_coef: float = config_field(0.01, "Coefficient of the per-token KL penalty in the reward (0 loads no reference)")
    kl_estimator: str = config_field("k1", f"The per-token KL estimate of the penalty: {', '.join(KL_ESTIMATORS)}")
    gamma: float = config_field(1.0, "Discount of the tokens' returns to go")
    eps_clip: float = config_field(0.2, "Clip of the policy ratio")
    max_epochs: int = config_field(1, "Updates per rollout")
    reward_clip_range: list[float] | None = config_field(None, "Clip the (baselined) rewards to [min, max]")

    def __post_init__(self):
        super().__post_init__()
        require_choice(advantage_estimator=(self.advantage_estimator, ADVANTAGE_ESTIMATORS),
                       kl_estimator=(self.kl_estimator, KL_ESTIMATORS))
        require_positive(eps_clip=self.eps_clip, max_epochs=self.max_epochs)
        require_nonnegative(init_kl_coef=self.init_kl_coef)
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"--gamma must be in [0, 1], got {self.gamma}")
        if self.advantage_estimator == "reinforce_baseline" and self.num_generations < 2:
            raise ConfigError("--advantage-estimator reinforce_baseline subtracts the mean of each prompt's completions, so "
                              f"--num-generations must be >= 2, got {self.num_generations}")
        check_reward_clip_range(self.reward_clip_range)

    @property
    def uses_reference(self) -> bool:
        return self.init_kl_coef > 0

    @property
    def passes(self) -> int:
        return self.max_epochs


def shaped_rewards(accelerator, rewards: Tensor, cfg: ReinforcePPConfig) -> Tensor:
    """This process's sequence rewards `[B]`: less their group's mean over every process's completions
    (reinforce_baseline), then clipped to reward_clip_range."""
    if cfg.advantage_estimator == "reinforce_baseline":
        grouped = accelerator.gather(rewards).view(-1, cfg.num_generations)
        everyone = (grouped - grouped.mean(1, keepdim=True)).view(-1)
        rewards = process_share(everyone, accelerator.process_index, accelerator.num_processes)
    if cfg.reward_clip_range is not None:
        rewards = rewards.clamp(*cfg.reward_clip_range)
    return rewards


def reinforce_advantages(rewards: Tensor, kl: Tensor, mask: Tensor, cfg: ReinforcePPConfig, total=None) -> Tensor:
    """Advantages `[B, C]` from shaped sequence rewards `[B]` and per-token KL `[B, C]`: the returns to go of the token
    rewards, whitened over the valid tokens (of every process with total: distributed.summed_over_processes). The returns run
    over the model's tokens alone (core.valid_first): an environment's tokens between its turns are no steps."""
    order = core.valid_first(mask)
    token_rewards = core.token_rewards(rewards, kl, mask, cfg.init_kl_coef).gather(1, order)
    returns = torch.zeros_like(mask).scatter(1, order, core.discounted_returns(token_rewards, torch.zeros_like(mask), cfg.gamma))
    return core.masked_whiten(returns, mask, total=total) * mask


def reinforce_pp_update(policy, ref_model, optimizer, accelerator, rollout: Rollout, rewards: Tensor,
                        cfg: ReinforcePPConfig) -> dict[str, float]:
    """max_epochs passes of num_minibatches gradient steps over one rollout and its rewards `[B]`; returns metrics."""
    mask = rollout.completion_mask
    epochs = cfg.minibatch_orders(len(rewards))
    old_logprobs, ref_logprobs = logprobs_before_update(policy, ref_model if cfg.init_kl_coef > 0 else None, rollout, epochs[0],
                                                        cfg.temperature, with_old=True)
    kl = torch.zeros_like(mask) if ref_logprobs is None else core.kl_estimate(old_logprobs, ref_logprobs, cfg.kl_estimator, mask)
    advantages = reinforce_advantages(shaped_rewards(accelerator, rewards, cfg), kl, mask, cfg, summed_over_processes(accelerator))
    means = MeanStats()
    for minibatches in epochs:
        for rows in minibatches:
            logp, entropy = completion_logprobs(policy, rollout.input_ids[rows], rollout.attention_mask[rows], mask[rows],
                                                cfg.temperature, with_entropy=True)
            # the token mean over the minibatch of every process, as PPO's (DDP's average of the gradients divides by processes)
            tokens = accelerator.reduce(mask[rows].sum(), "mean")
            per_token, stats = core.policy_loss(logp, old_logprobs[rows], advantages[rows], cfg.eps_clip, mask=mask[rows], agg="none")
            loss = per_token.sum() / tokens
            stats.update(loss=loss.detach(), entropy=core.masked_mean(entropy, mask[rows]))
            stats["grad_norm"] = gradient_step(accelerator, optimizer, loss, policy.parameters(), cfg.max_grad_norm)
            means.add(stats)
    metrics = means.means()
    metrics.update(clip_ratio=metrics.pop("clipfrac"), kl=float(core.masked_mean(kl, mask)), kl_sequence=float(kl.sum(1).mean()))
    metrics.update(sampler_mismatch(old_logprobs, rollout.sampling_logprobs, mask))
    return metrics


class ReinforcePP(OnlineAlgorithm):
    """REINFORCE++ in the online loop: no model of its own beside the policy and the reference."""

    name, Config, kl_label = "reinforce_pp", ReinforcePPConfig, "KL to the reference (per token, --kl-estimator)"

    def update(self, policy, ref_model, optimizer, accelerator, rollout: Rollout, rewards: Tensor,
               rewards_per_func: Tensor) -> dict[str, float]:
        return reinforce_pp_update(policy, ref_model, optimizer, accelerator, rollout, rewards, self.cfg)
