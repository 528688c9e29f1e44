"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) and its variants.

    for each step:
        sample G completions for each of P prompts; score them with the reward
        A_i = (r_i - mean(group)) / (std(group) + eps)        scale_rewards="group" (GRPO)
            = (r_i - mean(group)) / (std(batch) + eps)        "batch"
            = (r_i - mean(group))                             "none" (Dr. GRPO, Liu et al. 2025)
        every completion token gets its sequence's advantage; no critic
        for num_iterations, for each of num_minibatches minibatches:
            per-token loss = clipped objective + beta * k3 KL to the reference
            minimise its aggregation by loss_type (TRL's GRPOConfig names; see grpo_loss)

The clipped objective, KL estimator and aggregation are classic_rl.core's, as in classic PPO.
"""

from __future__ import annotations

import torch
from torch import Tensor

from classic_rl import core
from classic_rl.infra.errors import check_finite
from classic_rl.infra.metrics import MeanStats
from rlhf_toy.configs import LOSS_TYPES, SCALE_REWARDS, GRPOConfig
from rlhf_toy.rollout import Rollout, completion_logprobs


def group_advantages(rewards: Tensor, group_size: int, scale_rewards: str = "group", eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Per-completion advantages `[B]` from rewards `[B]` laid out as consecutive groups of group_size.

    Returns (advantages, frac_reward_zero_std): the share of groups whose rewards are all equal,
    which give no learning signal.
    """
    grouped = rewards.view(-1, group_size)
    group_std = grouped.std(1, keepdim=True)
    advantages = grouped - grouped.mean(1, keepdim=True)
    if scale_rewards == "group":
        advantages = advantages / (group_std + eps)
    elif scale_rewards == "batch":
        advantages = advantages / (rewards.std() + eps)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; accepted: {', '.join(SCALE_REWARDS)}")
    return advantages.view(-1), (group_std < 1e-6).float().mean()


def grpo_loss(per_token_loss: Tensor, mask: Tensor, loss_type: str, max_completion_length: int,
              dapo_normaliser: Tensor) -> Tensor:
    """One minibatch's loss on one process from its per-token losses `[b, C]`, as TRL's GRPOTrainer aggregates
    them (DDP then averages the processes' gradients):

        grpo     mean over each sequence's tokens, then over the sequences (the GRPO paper)
        bnpo     mean over the minibatch's tokens on this process
        dr_grpo  sum / (sequences * max_completion_length)                  (Dr. GRPO, Liu et al. 2025)
        dapo     sum / dapo_normaliser, the generation batch's tokens on all processes / (processes * minibatches):
                 every token of the batch weighs the same, whichever minibatch and process hold it (DAPO)
    """
    if loss_type == "grpo":
        return core.aggregate(per_token_loss, mask, "seq")
    if loss_type == "bnpo":
        return core.aggregate(per_token_loss, mask, "token")
    if loss_type == "dr_grpo":
        return core.aggregate(per_token_loss, mask, "seq-mean-token-sum") / max_completion_length
    if loss_type == "dapo":
        return (per_token_loss * mask).sum() / dapo_normaliser
    raise ValueError(f"unknown loss_type {loss_type!r}; accepted: {', '.join(LOSS_TYPES)}")


def grpo_update(policy, optimizer, accelerator, rollout: Rollout, rewards: Tensor, cfg: GRPOConfig) -> dict[str, float]:
    """num_iterations passes of `cfg.num_minibatches` gradient steps over one rollout; returns metrics.

    In a multi-process run each process holds whole groups of the step's completions; the
    advantages come from every process's rewards, so "batch" scaling sees the whole batch.
    """
    everyone = accelerator.gather(rewards)  # [completions of all processes], in process order
    advantages, frac_zero_std = group_advantages(everyone, cfg.num_generations, cfg.scale_rewards)
    advantages = advantages.view(accelerator.num_processes, -1)[accelerator.process_index]
    mask = rollout.completion_mask
    if cfg.mask_truncated_completions:
        mask = mask * (~rollout.is_truncated).float()[:, None]
    dapo_normaliser = accelerator.reduce(mask.sum(), "sum").clamp(min=1.0) / (accelerator.num_processes * cfg.num_minibatches)
    size = len(rewards) // cfg.num_minibatches
    means = MeanStats()
    for _iteration in range(cfg.num_iterations):
        for mb in torch.randperm(len(rewards)).split(size):
            logp, entropy = completion_logprobs(policy, rollout.input_ids[mb], rollout.attention_mask[mb], rollout.completion_mask[mb],
                                                cfg.temperature, with_entropy=True)
            adv = advantages[mb, None].expand_as(logp)
            per_token_loss, stats = core.policy_loss(logp, rollout.old_logprobs[mb], adv, cfg.epsilon, cfg.epsilon_high,
                                                     mask[mb], "none")
            if cfg.beta > 0:
                kl = core.kl_estimate(logp, rollout.ref_logprobs[mb], "k3", mask[mb])
                per_token_loss = per_token_loss + cfg.beta * kl
                stats["kl"] = core.masked_mean(kl.detach(), mask[mb])
            loss = grpo_loss(per_token_loss, mask[mb], cfg.loss_type, cfg.max_completion_length, dapo_normaliser)
            stats["loss"] = loss.detach()
            accelerator.backward(loss)
            stats["grad_norm"] = accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            check_finite(None, loss=loss, grad_norm=stats["grad_norm"])  # before the step: the weights stay good
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats["entropy"] = core.masked_mean(entropy, mask[mb])
            means.add(stats)
    metrics = means.means()
    metrics["clip_ratio"] = metrics.pop("clipfrac")
    metrics["frac_reward_zero_std"] = float(frac_zero_std)
    return metrics
