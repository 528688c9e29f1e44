"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) and its variants.

    for each step:
        sample G completions for each of P prompts; score them with the reward
        A_i = (r_i - mean(group)) / (std(group) + eps)        scale_rewards="group" (GRPO)
            = (r_i - mean(group)) / (std(batch) + eps)        "batch"
            = (r_i - mean(group))                             "none" (Dr. GRPO, Liu et al. 2025)
            = whiten_batch(sum_k w_k (r_ik - mean_k(group)) / (std_k(group) + eps))
                                                              several rewards, "normalize_then_sum" (GDPO, 2026)
        every completion token gets its sequence's advantage; no critic
        old, ref = log-probs of the policy before the update and of the reference, from the update's own forward
        for num_iterations, for each of num_minibatches minibatches:
            rho = exp(log pi - old)                  (exactly 1 on the first minibatch: old is that very forward)
                  per token, or per sequence: exp(mean over its tokens of log pi - old)   (GSPO, Zheng et al. 2025)
            per-token loss = objective(rho, A) by loss_type (policy_objective) + beta * k3(pi, ref) * rho
            minimise its aggregation by loss_type (TRL's GRPOConfig names; see grpo_loss)
                     - entropy_coef * mean entropy               (fixed, or adapted toward a target: Skywork-OR1)

The clipped objective, KL estimator and aggregation are classic_rl.core's, as in classic PPO; each loss_type is
TRL 1.16's (tests/test_trl_parity.py checks them against TRL's code).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from classic_rl import core
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import (
    ConfigError,
    require_choice,
    require_nonnegative,
    require_positive,
)
from classic_rl.infra.metrics import MeanStats
from rlhf_toy.algorithms.base import (
    OnlineAlgorithm,
    RLHFConfig,
    gradient_step,
    logprobs_before_update,
    trained_mask,
)
from rlhf_toy.distributed import process_share, summed_over_processes, values_of_every_process
from rlhf_toy.generation.rollout import Rollout, completion_logprobs, sampler_mismatch
from rlhf_toy.rewards.functions import reward_weights

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
SCALE_REWARDS = ("group", "batch", "none")
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


@dataclass
class GRPOConfig(RLHFConfig):
    """GRPO's own fields, named as in TRL's GRPOConfig."""

    ALGO: ClassVar[str] = "grpo"
    beta: float = config_field(0.04, "k3 KL coefficient to the reference (0 loads no reference model)")
    use_bias_correction_kl: bool = config_field(True, "Multiply the per-token KL by the (differentiable) ratio pi / pi_old, "
                                                      "which makes its gradient the unbiased reverse-KL gradient (DeepSeek-V3.2; "
                                                      "TRL 1.16's default): it changes the gradient even on-policy, where the "
                                                      "ratio is 1")
    epsilon: float = config_field(0.2, "Lower clip of the policy ratio")
    epsilon_high: float | None = config_field(None, "Upper clip (DAPO's clip-higher); default: epsilon")
    loss_type: str = config_field("dapo", f"Objective and aggregation, as TRL's: {', '.join(LOSS_TYPES)} (policy_objective, "
                                          "grpo_loss; cispo clips at --epsilon-high, 5 in ScaleRL)")
    importance_sampling_level: str = config_field("token", "The ratio per token, or per sequence (exp of its tokens' mean "
                                                           "log-ratio: GSPO, with --loss-type grpo as its paper)")
    delta: float | None = config_field(None, "Cap the ratio of the unclipped branch too (two-sided clipping, INTELLECT-2; "
                                             "above 1 + epsilon_high)")
    sapo_temperature_pos: float = config_field(1.0, "SAPO's gate temperature for positive advantages")
    sapo_temperature_neg: float = config_field(1.05, "SAPO's gate temperature for negative advantages")
    vespo_k_pos: float = config_field(2.0, "VESPO's gamma-weight shape k for advantages >= 0")
    vespo_lambda_pos: float = config_field(3.0, "VESPO's gamma-weight rate lambda for advantages >= 0")
    vespo_k_neg: float = config_field(3.0, "VESPO's gamma-weight shape k for negative advantages")
    vespo_lambda_neg: float = config_field(2.0, "VESPO's gamma-weight rate lambda for negative advantages")
    top_entropy_quantile: float = config_field(1.0, "Train on the tokens whose entropy is in this top share of each minibatch's "
                                                    "(over every process): 0.2 keeps the high-entropy 'forking' fifth "
                                                    "(Wang et al. 2025); 1: every token")
    entropy_coef: float = config_field(0.0, "Entropy bonus: minimise loss - entropy_coef * the mean entropy of the tokens the "
                                            "policy loss trains on (with --use-adaptive-entropy, its starting value)")
    use_adaptive_entropy: bool = config_field(False, "Adapt entropy_coef after each gradient step toward --entropy-target, "
                                                     "applied only while entropy is at or below it (Skywork-OR1)")
    entropy_coef_min: float = config_field(0.0, "Lower bound of the adaptive entropy coefficient")
    entropy_coef_max: float = config_field(1.0, "Upper bound of the adaptive entropy coefficient")
    entropy_coef_delta: float = config_field(0.005, "Step of the adaptive entropy coefficient per gradient step")
    entropy_target: float = config_field(0.2, "Target mean token entropy (nats) of adaptive entropy control")
    scale_rewards: str = config_field("group", f"Advantage scaling: {', '.join(SCALE_REWARDS)} (none = Dr. GRPO)")
    multi_objective_aggregation: str = config_field("sum_then_normalize", "With several rewards: normalise their weighted "
                                                                          "sum (sum_then_normalize), or each within its "
                                                                          "group before the weighted sum, then whiten over "
                                                                          "the batch (normalize_then_sum: GDPO)")
    num_iterations: int = config_field(1, "Updates per rollout (GRPO's mu)")
    mask_truncated_completions: bool = config_field(False, "Exclude completions without eos from the loss (DAPO)")
    # TRL's vllm_importance_sampling_* without "vllm_": here the sampler is the fast decoder or generate, in fp32, while the
    # update may run in bf16; the same correction serves any sampler whose numbers differ from the trainer's
    importance_sampling_correction: bool = config_field(False, "Weight each token's policy loss by pi_trainer / pi_sampler "
                                                               "(the sampler-vs-trainer mismatch, logged as sampling/*), "
                                                               "truncated or masked by --importance-sampling-mode")
    importance_sampling_mode: str = config_field("sequence_mask", f"{', '.join(IMPORTANCE_SAMPLING_MODES)}: per token or "
                                                                  "per sequence (the product over its tokens); a ratio "
                                                                  "outside the clip range is clipped or its loss dropped")
    importance_sampling_clip_max: float | None = config_field(3.0, "Upper bound of the importance-sampling ratio (none: no bound)")
    importance_sampling_clip_min: float | None = config_field(None, "Lower bound of the importance-sampling ratio (none: no bound)")

    def __post_init__(self):
        super().__post_init__()
        require_choice(loss_type=(self.loss_type, LOSS_TYPES), scale_rewards=(self.scale_rewards, SCALE_REWARDS),
                       importance_sampling_mode=(self.importance_sampling_mode, IMPORTANCE_SAMPLING_MODES),
                       importance_sampling_level=(self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS),
                       multi_objective_aggregation=(self.multi_objective_aggregation, MULTI_OBJECTIVE_AGGREGATIONS))
        require_nonnegative(entropy_coef_delta=self.entropy_coef_delta, entropy_target=self.entropy_target)
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ConfigError(f"--entropy-coef-min {self.entropy_coef_min} is above --entropy-coef-max {self.entropy_coef_max}")
        require_positive(delta=self.delta, sapo_temperature_pos=self.sapo_temperature_pos,
                         sapo_temperature_neg=self.sapo_temperature_neg)
        if not 0 < self.top_entropy_quantile <= 1:
            raise ConfigError(f"--top-entropy-quantile must be in (0, 1], got {self.top_entropy_quantile}")
        if self.loss_type == "vespo" and self.importance_sampling_correction and not self.importance_sampling_mode.startswith("token"):
            raise ConfigError("--loss-type vespo folds the sampler's ratios into its own sequence weight token by token; "
                              f"accepted: --importance-sampling-mode token_truncate or token_mask, got {self.importance_sampling_mode}")
        require_positive(importance_sampling_clip_max=self.importance_sampling_clip_max)
        require_nonnegative(importance_sampling_clip_min=self.importance_sampling_clip_min)
        require_positive(epsilon=self.epsilon, num_iterations=self.num_iterations, epsilon_high=self.epsilon_high)
        require_nonnegative(beta=self.beta)
        if self.num_generations < 2:
            raise ConfigError(f"GRPO compares completions within a group, so --num-generations must be >= 2, got {self.num_generations}")

    @property
    def uses_reference(self) -> bool:
        return self.beta > 0

    @property
    def passes(self) -> int:
        return self.num_iterations

    def entropy_controller(self) -> core.EntropyController:
        return core.EntropyController(self.entropy_coef, self.use_adaptive_entropy, self.entropy_target,
                                      self.entropy_coef_delta, self.entropy_coef_min, self.entropy_coef_max)


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


def gdpo_advantages(rewards_per_func: Tensor, weights: Tensor, group_size: int, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """GDPO's (Liu et al. 2026, arXiv 2601.05242) advantages `[B]` of several rewards `[B, K]` with weights `[K]`: each reward normalised
    within its group, then their weighted sum whitened over the batch, as TRL's normalize_then_sum; so a reward with a
    small spread (a format bonus all but one completion earn) weighs as much as one with a large spread. Returns
    (advantages, frac_reward_zero_std): the share of groups where no reward differs, which give no learning signal."""
    grouped = rewards_per_func.view(-1, group_size, rewards_per_func.shape[1])
    group_std = grouped.std(1, keepdim=True)
    normalised = ((grouped - grouped.mean(1, keepdim=True)) / (group_std + eps)).view_as(rewards_per_func)
    summed = (normalised * weights).sum(1)
    return (summed - summed.mean()) / (summed.std() + eps), (group_std < 1e-6).all(-1).float().mean()


def grpo_loss(per_token_loss: Tensor, mask: Tensor, loss_type: str, max_completion_length: int,
              dapo_normaliser: Tensor) -> Tensor:
    """One minibatch's loss on one process from its per-token losses `[b, C]`, as TRL's GRPOTrainer aggregates
    them (DDP then averages the processes' gradients):

        grpo, sapo          mean over each sequence's tokens, then over the sequences (the GRPO paper)
        bnpo                mean over the minibatch's tokens on this process
        dr_grpo             sum / (sequences * max_completion_length)                  (Dr. GRPO, Liu et al. 2025)
        dapo, cispo, vespo  sum / dapo_normaliser, the generation batch's tokens on all processes / (processes *
                            minibatches): every token of the batch weighs the same, whichever minibatch and process
                            hold it (DAPO)
        luspo               sum over each sequence's tokens, mean over the sequences: a sequence weighs by its length
    """
    if loss_type in ("grpo", "sapo"):
        return core.aggregate(per_token_loss, mask, "seq")
    if loss_type == "bnpo":
        return core.aggregate(per_token_loss, mask, "token")
    if loss_type == "dr_grpo":
        return core.aggregate(per_token_loss, mask, "seq-mean-token-sum") / max_completion_length
    if loss_type == "luspo":
        return core.aggregate(per_token_loss, mask, "seq-mean-token-sum")
    if loss_type in ("dapo", "cispo", "vespo"):
        return (per_token_loss * mask).sum() / dapo_normaliser
    raise ValueError(f"unknown loss_type {loss_type!r}; accepted: {', '.join(LOSS_TYPES)}")


def log_ratio_at_level(logp: Tensor, old: Tensor, mask: Tensor, level: str) -> Tensor:
    """log rho: per token `[b, C]`, or per sequence `[b, 1]` the mean over its tokens (GSPO)."""
    log_ratio = logp - old
    if level == "token":
        return log_ratio
    return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)


def gamma_weights(log_ratio: Tensor, advantages: Tensor, mask: Tensor, cfg: GRPOConfig, sampler_weights: Tensor | None) -> Tensor:
    """VESPO's weight of each sequence `[b, 1]`, detached: phi(w) = e^lambda w^k e^(-lambda w) (1 at w = 1) of its ratio
    w = prod over its tokens of rho (times the sampler correction's ratios where given), k and lambda by the sign of its
    advantage; computed in log space with TRL's clamps."""
    with torch.no_grad():
        lower = math.log(1e-8)
        log_w = (torch.clamp(log_ratio, -20.0, 20.0) * mask).sum(-1, keepdim=True)
        if sampler_weights is not None:
            log_w = log_w + torch.clamp(torch.log(sampler_weights), lower, 20.0).sum(-1, keepdim=True)
        log_w = torch.clamp(log_w, lower, 20.0)
        nonnegative = advantages >= 0
        k = torch.where(nonnegative, cfg.vespo_k_pos, cfg.vespo_k_neg)
        lam = torch.where(nonnegative, cfg.vespo_lambda_pos, cfg.vespo_lambda_neg).clamp(min=1e-4)
        return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def policy_objective(logp: Tensor, old: Tensor, advantages: Tensor, mask: Tensor, cfg: GRPOConfig,
                     sampler_weights: Tensor | None = None) -> tuple[Tensor, Tensor, dict]:
    """(per-token policy loss `[b, C]`, the ratio rho the KL term is weighted by, stats) of log-probs `[b, C]` and
    per-sequence advantages `[b, 1]`, by loss_type as TRL 1.16 computes it:

        grpo, bnpo, dr_grpo, dapo, luspo   -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A), rho capped at delta
        cispo                              -sg(min(rho, eps_high)) A log pi      (ScaleRL: clip the weight, not the token)
        sapo                               -sigmoid(tau (rho - 1)) 4 / tau A     (a soft gate, tau by A's sign)
        vespo                              -sg(phi(w)) A log pi                  (gamma_weights of the sequence ratio w)

    rho per token or per sequence (importance_sampling_level). sampler_weights (the sampler correction's) fold into
    VESPO's sequence ratio, as TRL does; the caller multiplies the other losses by them."""
    log_ratio = log_ratio_at_level(logp, old, mask, cfg.importance_sampling_level)
    ratio, eps_high = torch.exp(log_ratio), cfg.epsilon_high or cfg.epsilon
    stats_mask = mask if cfg.importance_sampling_level == "token" else None
    if cfg.loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=eps_high).detach() * advantages * logp
        stats = core.ratio_stats(log_ratio, stats_mask, (ratio > eps_high) & (advantages > 0))
    elif cfg.loss_type == "sapo":
        tau = torch.where(advantages > 0, cfg.sapo_temperature_pos, cfg.sapo_temperature_neg)
        per_token, stats = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * advantages, core.ratio_stats(log_ratio, stats_mask)
    elif cfg.loss_type == "vespo":
        per_token = -gamma_weights(logp - old, advantages, mask, cfg, sampler_weights) * advantages * logp
        stats = core.ratio_stats(log_ratio, stats_mask)
    else:
        per_token, stats = core.policy_loss(log_ratio, torch.zeros_like(log_ratio), advantages.expand_as(log_ratio), cfg.epsilon,
                                            eps_high, stats_mask, "none", cfg.delta)
    return per_token.expand_as(logp), ratio, stats


def importance_weights(trainer_logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor, mode: str,
                       clip_min: float | None, clip_max: float | None) -> Tensor:
    """TRL's importance-sampling correction for a sampler whose numbers differ from the trainer's: the ratio
    pi_trainer / pi_sampler per token `[B, C]` ("token_*") or per sequence `[B, 1]` (the product over its tokens,
    "sequence_*"), clamped to [clip_min, clip_max] ("*_truncate") or set to 0 outside it ("*_mask")."""
    log_ratio = (trainer_logprobs - sampling_logprobs) * mask
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True)
    ratio = torch.exp(log_ratio)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float, gather=None) -> Tensor:
    """The valid tokens `[b, C]` whose entropy is at least the given quantile of every valid token's entropy in the
    minibatch, over every process (gather(values) -> all processes' values; default: this process's), as TRL's
    get_high_entropy_mask."""
    values = entropy[mask.bool()].float()
    everyone = values if gather is None else gather(values)
    if not everyone.numel():
        return torch.zeros_like(mask, dtype=torch.bool)
    return (entropy * mask >= torch.quantile(everyone, quantile)) & mask.bool()


def entropy_bonus(entropy: Tensor, mask: Tensor, control: core.EntropyController, total=None) -> tuple[Tensor, float]:
    """(-coefficient x mean entropy over mask's tokens `[b, C]` (this process's, as TRL's), the coefficient applied); then
    the adaptive controller sees the minibatch's mean entropy over every process (total: sums over the processes,
    distributed.summed_over_processes; None in one)."""
    tokens, applied = mask.sum(), control.applied
    bonus = -applied * (entropy * mask).sum() / tokens.clamp(min=1.0)
    sums = torch.stack([(entropy.detach() * mask).sum(), tokens])
    entropy_sum, token_count = sums if total is None else total(sums)
    control.update((entropy_sum / token_count.clamp(min=1.0)).item())
    return bonus, applied


def minibatch_loss(policy, rollout: Rollout, rows: Tensor, advantages: Tensor, old_logprobs: Tensor | None,
                   ref_logprobs: Tensor | None, mask: Tensor, dapo_normaliser: Tensor, cfg: GRPOConfig, *,
                   entropy_control: core.EntropyController, accelerator=None) -> tuple[Tensor, dict, Tensor]:
    """(loss, stats, the old log-probs `[b, C]` used) of the minibatch `rows` `[b]`, as TRL's GRPOTrainer computes it.
    old_logprobs None: the update takes one gradient step per rollout, so the old policy is this very forward
    (TRL's per_token_logps.detach()) and the ratio is exactly 1. entropy_control: the entropy bonus's coefficient.
    accelerator: the run's, whose processes the entropy statistics span (None: one process)."""
    several = accelerator is not None and accelerator.num_processes > 1
    logp, entropy = completion_logprobs(policy, rollout.input_ids[rows], rollout.attention_mask[rows], rollout.completion_mask[rows],
                                        cfg.temperature, with_entropy=True, entropy_grad=entropy_control.enabled)
    old = logp.detach() if old_logprobs is None else old_logprobs[rows]
    weights, trained = None, mask[rows]
    if cfg.importance_sampling_correction:
        weights = importance_weights(old, rollout.sampling_logprobs[rows], mask[rows], cfg.importance_sampling_mode,
                                     cfg.importance_sampling_clip_min, cfg.importance_sampling_clip_max)
    vespo = cfg.loss_type == "vespo"  # which folds the sampler's ratios into its own sequence weight
    per_token_loss, ratio, stats = policy_objective(logp, old, advantages[rows, None], mask[rows], cfg, weights if vespo else None)
    if cfg.top_entropy_quantile < 1:
        gather = functools.partial(values_of_every_process, accelerator) if several else None
        trained = high_entropy_mask(entropy.detach(), mask[rows], 1 - cfg.top_entropy_quantile, gather) * mask[rows]
        per_token_loss = per_token_loss * trained
        stats["entropy_mask/kept"] = core.masked_mean(trained, mask[rows])
    if weights is not None:
        per_token_loss = per_token_loss if vespo else per_token_loss * weights
        stats["sampling/importance_sampling_ratio/mean"] = core.masked_mean(weights.expand_as(logp), mask[rows])
    if cfg.beta > 0:
        kl = core.kl_estimate(logp, ref_logprobs[rows], "k3", mask[rows])
        stats["kl"] = core.masked_mean(kl.detach(), mask[rows])
        if cfg.use_bias_correction_kl:  # k3's gradient on samples of pi_old is biased once pi moves; the ratio corrects it
            kl = kl * ratio
        per_token_loss = per_token_loss + cfg.beta * kl
    loss = grpo_loss(per_token_loss, mask[rows], cfg.loss_type, cfg.max_completion_length, dapo_normaliser)
    stats["entropy"] = core.masked_mean(entropy.detach(), mask[rows])
    if entropy_control.enabled:
        stats["policy_loss"] = loss.detach()
        bonus, stats["entropy_coef_applied"] = entropy_bonus(entropy, trained, entropy_control,
                                                             summed_over_processes(accelerator) if several else None)
        loss = loss + bonus
    stats["loss"] = loss.detach()
    return loss, stats, old


def step_advantages(accelerator, rewards: Tensor, rewards_per_func: Tensor | None, cfg: GRPOConfig) -> tuple[Tensor, Tensor]:
    """(this process's advantages `[B]`, frac_reward_zero_std) from every process's rewards: group_advantages of the
    totals `[B]`, or with normalize_then_sum gdpo_advantages of the rewards per function `[B, K]` (weights: cfg's)."""
    if cfg.multi_objective_aggregation == "normalize_then_sum":
        weights = torch.tensor(reward_weights(cfg.reward, cfg.reward_weights), device=rewards.device)
        advantages, frac_zero_std = gdpo_advantages(accelerator.gather(rewards_per_func), weights, cfg.num_generations)
    else:
        advantages, frac_zero_std = group_advantages(accelerator.gather(rewards), cfg.num_generations, cfg.scale_rewards)
    return process_share(advantages, accelerator.process_index, accelerator.num_processes), frac_zero_std


def grpo_update(policy, ref_model, optimizer, accelerator, rollout: Rollout, rewards: Tensor, cfg: GRPOConfig, *,
                rewards_per_func: Tensor | None = None, entropy_control: core.EntropyController | None = None) -> dict[str, float]:
    """num_iterations passes of `cfg.num_minibatches` gradient steps over one rollout and its rewards `[B]` (and per
    reward function `[B, K]`, which GDPO reads); returns metrics.

    In a multi-process run each process holds whole groups of the step's completions; the
    advantages come from every process's rewards, so "batch" scaling sees the whole batch.
    Old and reference log-probs come from the update's own forward (trainer_forward), in the
    precision and mode it runs in.
    """
    advantages, frac_zero_std = step_advantages(accelerator, rewards, rewards_per_func, cfg)
    mask = trained_mask(rollout, cfg.mask_truncated_completions)
    dapo_normaliser = accelerator.reduce(mask.sum(), "sum").clamp(min=1.0) / (accelerator.num_processes * cfg.num_minibatches)
    passes = cfg.minibatch_orders(len(rewards))
    entropy_control = entropy_control or cfg.entropy_controller()

    old_logprobs, ref_logprobs = logprobs_before_update(policy, ref_model if cfg.beta > 0 else None, rollout, passes[0],
                                                        cfg.temperature, with_old=cfg.num_iterations * cfg.num_minibatches > 1)
    first_pass_old = torch.zeros_like(mask)  # the trainer's log-probs before the update, against the sampler's
    means = MeanStats()
    for iteration, minibatches in enumerate(passes):
        for rows in minibatches:
            loss, stats, old = minibatch_loss(policy, rollout, rows, advantages, old_logprobs, ref_logprobs, mask, dapo_normaliser, cfg,
                                              entropy_control=entropy_control, accelerator=accelerator)
            if iteration == 0:
                first_pass_old[rows] = old
            stats["grad_norm"] = gradient_step(accelerator, optimizer, loss, policy.parameters(), cfg.max_grad_norm)
            means.add(stats)
    metrics = means.means()
    metrics["clip_ratio"] = metrics.pop("clipfrac")
    metrics["frac_reward_zero_std"] = float(frac_zero_std)
    metrics.update(sampler_mismatch(first_pass_old, rollout.sampling_logprobs, mask))
    if entropy_control.enabled:
        metrics["entropy_coef"] = entropy_control.value  # after the step's updates, as TRL logs it
    return metrics


class GRPO(OnlineAlgorithm):
    """GRPO in the online loop: no model of its own beside the policy and the reference."""

    name, Config, kl_label = "grpo", GRPOConfig, "KL to the reference (k3 per token)"

    def __init__(self, cfg: GRPOConfig, policy, load_copy, tokenizer):
        super().__init__(cfg, policy, load_copy, tokenizer)
        self.entropy_control = cfg.entropy_controller()

    def state(self) -> dict:
        return {"entropy_control": self.entropy_control if self.cfg.use_adaptive_entropy else None}

    def update(self, policy, ref_model, optimizer, accelerator, rollout: Rollout, rewards: Tensor,
               rewards_per_func: Tensor) -> dict[str, float]:
        return grpo_update(policy, ref_model, optimizer, accelerator, rollout, rewards, self.cfg,
                           rewards_per_func=rewards_per_func, entropy_control=self.entropy_control)
