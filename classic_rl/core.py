"""The PPO core: pure tensor math shared by classic PPO (flat `[T*N]` steps) and LM PPO/GRPO
(`[B, L]` tokens with a response mask). Imports torch only.

Conventions:
- Every function takes an optional `mask` broadcastable to its input (None = all valid, bool or
  float). Losses return a scalar reduced over the valid positions; elementwise functions
  (`kl_estimate`, `entropy_from_logits`, `logprobs_from_logits`, `logprobs_and_entropy`, `token_logprobs`) return
  per-position values with the masked positions set to exactly 0, so garbage in padding (e.g. -inf
  log-probs) never leaks a NaN into a sum.
- Time runs along the last axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

AGGREGATIONS = ("token", "seq", "seq-mean-token-sum", "none")
KL_KINDS = ("k1", "k2", "k3")


def _as_weights(mask: Tensor | None, like: Tensor) -> Tensor:
    """The mask as float weights shaped like `like` (all ones when mask is None)."""
    if mask is None:
        return torch.ones_like(like)
    return mask.to(like.dtype).expand_as(like)


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Weighted mean of x over all positions (dim=None) or along `dim`; a bool mask gives weights 0/1.

    Soft masks are weighted means: sum(w * x) / sum(w). A reduction with no weight returns 0 rather
    than NaN (the numerator is 0 there too, so the divisor 1 changes nothing else).
    """
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    w = _as_weights(mask, x)
    if dim is None:
        return (x * w).sum() / _nonzero(w.sum())
    return (x * w).sum(dim) / _nonzero(w.sum(dim))


def _nonzero(total: Tensor) -> Tensor:
    """total with zeros replaced by ones: a safe divisor whose gradient stays finite."""
    return torch.where(total == 0, torch.ones_like(total), total)


def masked_var_mean(x: Tensor, mask: Tensor | None = None, unbiased: bool = False, total=None) -> tuple[Tensor, Tensor]:
    """(variance, mean) of x over the valid positions, two scalars: the population variance, or with unbiased
    the sample variance, times n / (n - 1) for n valid positions (the total weight of a soft mask), as TRL's
    masked_var. total(scalar) -> its sum over the processes of a multi-process run makes them the statistics of
    every process's x together (default: this x's alone)."""
    if total is None:
        mean = masked_mean(x, mask)
        var = masked_mean((x - mean) ** 2, mask)
        n = _as_weights(mask, x).sum() if unbiased else None
    else:  # the same means, their sums taken over the processes
        weights = _as_weights(mask, x)
        n = total(weights.sum())
        mean = total((x * weights).sum()) / _nonzero(n)
        var = total(((x - mean) ** 2 * weights).sum()) / _nonzero(n)
    if unbiased:  # one valid position: its population variance, 0 (a division by n - 1 would give a NaN)
        var = var * n / (n - 1).clamp(min=1.0)
    return var, mean


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = False) -> Tensor:
    """Variance of x over the valid positions (a scalar): population, or sample with unbiased."""
    return masked_var_mean(x, mask, unbiased)[0]


def masked_whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8, total=None) -> Tensor:
    """(x - mean) / sqrt(var + eps) with statistics over the valid positions only, var the sample variance
    (TRL's masked_whiten; CleanRL and SB3 divide by torch's std, which is the sample one too).

    shift_mean=False keeps the original mean (only rescales), as TRL does for PPO rewards.
    Masked positions are returned as 0. total: as masked_var_mean's, for statistics over every process.
    """
    var, mean = masked_var_mean(x, mask, unbiased=True, total=total)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if mask is None else torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def gae(
    rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) along the last axis.

    Shapes: rewards, values, dones `[..., T]`; last_value `[...]` = V(s_T), the state after the
    last step. `dones[t] = 1` means the episode ended after step t, so nothing is bootstrapped
    across it. A time-limit truncation is not an end of the task: the caller adds
    `gamma * V(final_obs)` to that step's reward and marks it done.

        delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
        R_t     = A_t + V(s_t)

    Returns (advantages, returns), both `[..., T]`.
    """
    not_done = 1.0 - dones.to(values.dtype)
    next_values = torch.cat([values[..., 1:], last_value.unsqueeze(-1).to(values.dtype)], dim=-1)
    deltas = rewards + gamma * next_values * not_done - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(last_value, dtype=values.dtype)
    for t in reversed(range(values.shape[-1])):
        running = deltas[..., t] + gamma * lam * not_done[..., t] * running
        advantages[..., t] = running
    return advantages, advantages + values


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """`[B, C]` rewards of a language model's tokens from its sequence scores `[B]` and per-token KL `[B, C]`: -beta * KL on
    every valid token, plus the score on the last valid token (RLHF PPO's and REINFORCE++'s; in a multi-turn rollout
    the model's last token, wherever the environment's tokens sit between its turns)."""
    rewards = -beta * kl * mask
    rewards[torch.arange(len(scores), device=scores.device), last_valid_index(mask)] += scores
    return rewards


def last_valid_index(mask: Tensor) -> Tensor:
    """`[B]`: the index of each row's last valid position along the last axis (0 for a row with none)."""
    steps = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return ((mask > 0) * steps).amax(-1).sub(1).clamp(min=0)


def valid_first(mask: Tensor) -> Tensor:
    """`[B, C]` indices that gather each row's valid positions first, in their order, then the masked ones: with
    `x.gather(1, order)` a sequence computation (GAE, discounted returns) runs over the valid steps alone, as if the masked
    ones (an environment's tokens between a model's turns) were not there; `scatter(1, order, y)` puts the results back.
    The identity where every row's valid positions come first already."""
    return torch.sort((mask <= 0).to(torch.int8), dim=-1, stable=True).indices


def discounted_returns(rewards: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """Reward-to-go G_t = r_t + gamma * (1 - done_t) * G_{t+1} along the last axis, G_T = 0.

    Used by REINFORCE and VPG on complete episodes. Shapes: `[..., T]` -> `[..., T]`.
    """
    not_done = 1.0 - dones.to(rewards.dtype)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + gamma * not_done[..., t] * running
        returns[..., t] = running
    return returns


def aggregate(per_position: Tensor, mask: Tensor | None = None, agg: str = "token") -> Tensor:
    """Reduce a per-position loss to a scalar (or, "none", leave it per position).

    - "token": mean over every valid position of the batch (DAPO; classic PPO on flat steps).
    - "seq": mean over each sequence's valid positions, then over sequences (GRPO paper).
    - "seq-mean-token-sum": sum over each sequence's positions, mean over sequences
      (divide by a constant length for Dr. GRPO).
    - "none": no reduction; the per-position values with masked positions set to 0, for a caller's
      own normaliser (GRPO's loss types).
    Sequences run along the last axis.
    """
    if agg == "none":
        return _zero_masked(per_position, mask)
    if agg == "token":
        return masked_mean(per_position, mask)
    if agg == "seq":
        return masked_mean(per_position, mask, dim=-1).mean()
    if agg == "seq-mean-token-sum":
        return (per_position * _as_weights(mask, per_position)).sum(-1).mean()
    raise ValueError(f"unknown aggregation {agg!r}; accepted: {', '.join(AGGREGATIONS)}")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_low: float,
    clip_high: float | None = None,
    mask: Tensor | None = None,
    agg: str = "token",
    delta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017), negated to be minimised.

        rho = exp(logp - old_logp)
        L   = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)

    clip_high defaults to clip_low; a larger clip_high is DAPO's "clip-higher". delta also caps the unclipped
    branch's rho (two-sided clipping, INTELLECT-2): a token with A < 0 whose ratio ran far past 1 + clip_high
    weighs at most delta instead of rho. All inputs share one shape (`[N]` steps, `[B, L]` tokens or `[B, 1]`
    sequences). Returns (loss, ratio_stats).
    """
    clip_high = clip_low if clip_high is None else clip_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = (ratio if delta is None else torch.clamp(ratio, max=delta)) * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    is_clipped = clipped < unclipped  # rho left the range in A's direction: the min takes the clipped branch
    loss = aggregate(-torch.where(is_clipped, clipped, unclipped), mask, agg)  # the min, with a cheaper backward
    return loss, ratio_stats(log_ratio, mask, is_clipped)


@torch.no_grad()
def ratio_stats(log_ratio: Tensor, mask: Tensor | None = None, clipped: Tensor | None = None) -> dict[str, Tensor]:
    """Detached scalars over the valid positions of a policy ratio rho = exp(log_ratio):
    - clipfrac: the share where `clipped` (the objective's gradient is cut there; 0 without it),
    - approx_kl: mean((rho - 1) - log rho), a non-negative estimate of KL(old || new),
    - ratio_mean: mean rho."""
    ratio = torch.exp(log_ratio)
    return {"clipfrac": masked_mean(clipped.to(log_ratio.dtype), mask) if clipped is not None else log_ratio.new_zeros(()),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask), "ratio_mean": masked_mean(ratio, mask)}


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None = None, mask: Tensor | None = None,
    normaliser: Tensor | None = None,
) -> Tensor:
    """Squared-error value loss, optionally clipped around the old values (PPO2 style).

        unclipped: (V - R)^2 / 2
        clipped:   max((V - R)^2, (old_V + clip(V - old_V, -c, c) - R)^2) / 2

    Mean over valid positions: their sum over normaliser where given (a multi-process run's share of the whole batch's
    count, so that averaging the processes' gradients gives the mean over all of them), else over their count.
    """
    squared = (values - returns) ** 2
    if clip is not None:
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        squared = torch.maximum(squared, (clipped_values - returns) ** 2)
    if normaliser is not None:
        return 0.5 * _zero_masked(squared, mask).sum() / normaliser
    return 0.5 * masked_mean(squared, mask)


def _zero_masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else torch.where(mask.bool(), x, torch.zeros_like(x))


def logprobs_from_logits(logits: Tensor, actions: Tensor, mask: Tensor | None = None) -> Tensor:
    """log pi(a) for categorical logits `[..., A]` and integer actions `[...]` -> `[...]`."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    return _zero_masked(logp, mask)


def logprobs_and_entropy(logits: Tensor, actions: Tensor, mask: Tensor | None = None,
                         entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """(log pi(a) `[...]`, entropy `[...]`) for finite logits `[..., A]` from one log-softmax; the entropy
    carries a gradient only with entropy_grad (for an entropy bonus; otherwise it is a diagnostic and
    keeps nothing alive for backward). Half the passes over `[..., A]` of logprobs_from_logits and
    entropy_from_logits called apart (the demo's GRPO update, [64, 40, 1304]: 13.1 -> 6.9 ms of about 68)."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return _zero_masked(logp, mask), _zero_masked(entropy, mask)


def entropy_from_logits(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Entropy of the categorical distribution at each position: `[..., A]` -> `[...]`.

    H = logsumexp(z) - sum(softmax(z) * z), which avoids log(0) for tiny probabilities.
    """
    logits = logits.float()
    entropy = torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return _zero_masked(entropy, mask)


def token_logprobs(logits: Tensor, tokens: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[token] `[...]` for a language model's logits `[..., V]` in any float dtype,
    computed in fp32. (rlhf_toy/generation/fast_forward.py computes the same values in chunks, for speed.)"""
    return logprobs_from_logits(_scaled(logits, temperature), tokens, mask)


def token_logprobs_and_entropy(logits: Tensor, tokens: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                               entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """(token_logprobs, entropy of softmax(logits / temperature)) `[...]`, as logprobs_and_entropy gives them: the
    entropy has a gradient only with entropy_grad."""
    return logprobs_and_entropy(_scaled(logits, temperature), tokens, mask, entropy_grad)


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature in fp32."""
    z = logits.float()
    return z if temperature == 1 else z / temperature


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1", mask: Tensor | None = None) -> Tensor:
    """Per-position estimate of KL(pi || ref) from samples of pi (Schulman's k1/k2/k3).

    With x = ref_logp - logp:  k1 = -x,  k2 = x^2 / 2,  k3 = exp(x) - 1 - x.
    k1 is unbiased but can be negative, k3 is unbiased and non-negative, k2 is low-variance
    but biased.
    """
    x = ref_logp - logp
    if kind == "k1":
        kl = -x
    elif kind == "k2":
        kl = 0.5 * x**2
    elif kind == "k3":
        kl = torch.expm1(x) - x
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; accepted: {', '.join(KL_KINDS)}")
    return _zero_masked(kl, mask)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, target: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """-[t log sigmoid(r_c - r_r) + (1 - t) log sigmoid(r_r - r_c)], the mean over valid pairs: scores `[..., B]`, t the
    probability that chosen is better (1 by default; 1/2 for a tie). The reward model's loss on both sides: InstructGPT's
    over completions, Christiano et al.'s over clips of behaviour (a soft mask weights the pairs: their bootstrap)."""
    margin = chosen - rejected
    if target is None:
        per_pair = -F.logsigmoid(margin)
    else:
        per_pair = -(target * F.logsigmoid(margin) + (1 - target) * F.logsigmoid(-margin))
    return masked_mean(per_pair, mask)


def ranking_accuracy(first: Tensor, second: Tensor, target: Tensor) -> float:
    """Share of the pairs with a preference (target not 1/2) that the scores `[B]` order as labelled (NaN: all ties)."""
    decided = target != 0.5
    return float(((first > second) == (target > 0.5))[decided].float().mean()) if decided.any() else float("nan")


def explained_variance(predicted: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 - Var[target - predicted] / Var[target]; 1 is perfect, 0 no better than a constant.

    Returns NaN when the target has no variance.
    """
    var_target = masked_var(target, mask)
    if var_target == 0:
        return torch.full_like(var_target, float("nan"))
    return 1.0 - masked_var(target - predicted, mask) / var_target


KL_RULES = ("proportional", "doubling")


class KLController:
    """The coefficient beta of a KL penalty: fixed (target None), or adapted after each update toward
    a target KL by one of two rules:

        proportional (Ziegler et al. 2019, RLHF PPO): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)
        doubling (Schulman et al. 2017, PPO's KL-penalty variant): beta <- 2 beta if KL > 1.5 target,
                                                                  beta / 2 if KL < target / 1.5

    n is the number of samples the KL was measured on (completions in RLHF); the doubling rule ignores it.
    """

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10_000, rule: str = "proportional"):
        if rule not in KL_RULES:
            raise ValueError(f"unknown KL controller rule {rule!r}; accepted: {', '.join(KL_RULES)}")
        self.value, self.target, self.horizon, self.rule = beta, target, horizon, rule

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["value"]

    def update(self, kl: float, n_steps: int = 0) -> None:
        if self.target is None:
            return
        if self.rule == "doubling":
            if kl > 1.5 * self.target:
                self.value *= 2.0
            elif kl < self.target / 1.5:
                self.value /= 2.0
        else:
            error = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.value *= 1.0 + error * n_steps / self.horizon


class EntropyController:
    """The coefficient of an entropy bonus (loss - coef * mean entropy): fixed, or adapted after each optimizer step
    toward a target entropy in nats (Skywork-OR1, He et al. 2025; TRL's use_adaptive_entropy):

        applied  = coef if the last measured entropy <= target else 0     (none before the first measurement)
        coef    <- min(coef + delta, coef_max) if entropy <= target else max(coef - delta, coef_min)

    so the bonus acts only once entropy has fallen to the target, growing while it stays there.
    """

    def __init__(self, coef: float, adaptive: bool = False, target: float = 0.2, delta: float = 0.005,
                 coef_min: float = 0.0, coef_max: float = 1.0):
        self.value, self.adaptive, self.target, self.delta = coef, adaptive, target, delta
        self.coef_min, self.coef_max, self.last_entropy = coef_min, coef_max, math.inf

    @property
    def enabled(self) -> bool:
        return self.value != 0.0 or self.adaptive

    @property
    def applied(self) -> float:
        return self.value if not self.adaptive or self.last_entropy <= self.target else 0.0

    def update(self, entropy: float) -> None:
        if not self.adaptive:
            return
        if entropy <= self.target:
            self.value = min(self.value + self.delta, self.coef_max)
        else:
            self.value = max(self.value - self.delta, self.coef_min)
        self.last_entropy = entropy

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.last_entropy = state["value"], state["last_entropy"]
