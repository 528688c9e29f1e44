"""PPO with a critic for RLHF (Ziegler et al. 2019; Ouyang et al. 2022), on token-level MDPs.

    for each step:
        sample completions; score each with the reward (minus missing_eos_penalty without eos)
        V = critic(prompt + completion)                         one batched forward
        r_t = -beta * k1_t  for every completion token,  + score on the last one
        A, R = core.gae(r, V, dones=last token, gamma, lam);  A whitened over valid tokens
        for num_ppo_epochs, for each minibatch:
            minimise  core.policy_loss(clip cliprange) + vf_coef * core.value_loss(clip cliprange_value)
        beta <- adaptive KL controller (optional)
    options from InstructGPT: --critic rm starts the value model from the reward model; --ptx-coef g adds
    g * (language-model loss on a batch of pretraining text) to every minibatch's loss (PPO-ptx)

The same GAE, clipped objective and value loss serve classic PPO on CartPole.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from classic_rl import core
from classic_rl.infra.errors import ConfigError, check_finite
from classic_rl.infra.metrics import MeanStats
from rlhf_toy.configs import PPOConfig
from rlhf_toy.models import evaluation_mode
from rlhf_toy.rollout import Rollout, completion_logits, completion_states, sampler_mismatch, trainer_forward


class Critic(nn.Module):
    """A scalar value per token: a head on a transformer trunk.

    separate: its own copy of the policy's trunk (the usual RLHF choice: value and policy do not
    compete for features); shared: reads the policy's last hidden states, so one forward gives
    logits and values and the trunk trains on both losses.
    """

    def __init__(self, hidden_size: int, trunk: PreTrainedModel | None = None):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.head.bias)

    @property
    def shared(self) -> bool:
        return self.trunk is None

    def values_from_hidden(self, hidden: Tensor) -> Tensor:
        return self.head(hidden.float()).squeeze(-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, policy: PreTrainedModel) -> Tensor:
        """Values of the states before each completion token, `[B, C]`, from the critic's own trunk or, shared,
        the policy's (its trunk alone: no vocabulary projection). Rows that share a prompt share its forward."""
        trunk = policy.base_model if self.shared else self.trunk
        (hidden,) = completion_states(trunk, input_ids, attention_mask, prompt_length, lambda out: (out.last_hidden_state,))
        return self.values_from_hidden(hidden)


def build_critic(policy: PreTrainedModel, kind: str, load_copy, reward_model_dir: str | None = None) -> Critic:
    """kind "separate" initialises a trunk from the policy's weights (load_copy() gives a fresh copy); "rm" takes
    the trunk and the scalar head of the reward model in reward_model_dir (InstructGPT's value model), so the
    first values are the reward model's scores of each prefix."""
    hidden = policy.config.hidden_size
    if kind == "shared":
        return Critic(hidden)
    if kind == "separate":
        return Critic(hidden, load_copy().base_model)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    head = getattr(reward_model, "score", None)
    if reward_model.config.hidden_size != hidden or not isinstance(head, nn.Linear):
        raise ConfigError(f"--critic rm needs a reward model with the policy's width ({hidden}) and a linear score head; "
                          f"{reward_model_dir} has width {reward_model.config.hidden_size}")
    critic = Critic(hidden, reward_model.base_model)
    with torch.no_grad():
        critic.head.weight.copy_(head.weight)
        if head.bias is not None:
            critic.head.bias.copy_(head.bias)
    return critic


def token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """`[B, C]`: -beta * k1 on every valid token, plus the sequence score on the last valid token."""
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


def advantages_and_returns(scores: Tensor, values: Tensor, kl: Tensor, mask: Tensor, beta: float,
                           cfg: PPOConfig) -> tuple[Tensor, Tensor]:
    """(advantages whitened over valid tokens, returns), both `[B, C]`, from sequence scores `[B]`, the rollout's
    values and per-token KL `[B, C]`: token_rewards, then GAE over each completion, which ends at its last token."""
    rewards = token_rewards(scores, kl, mask, beta)
    if cfg.whiten_rewards:
        rewards = core.masked_whiten(rewards, mask, shift_mean=False)
    # the episode ends at each completion's last token; nothing flows back from the padding after it
    dones = 1.0 - torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    advantages, returns = core.gae(rewards, values, dones, scores.new_zeros(len(scores)), cfg.gamma, cfg.lam)
    return core.masked_whiten(advantages, mask), returns


def logits_and_values(policy, critic: Critic, input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> tuple[Tensor, Tensor]:
    """Policy logits `[B, C, V]` (completion_logits) and values `[B, C]`; a shared critic reads the same forward pass."""
    if critic.shared:
        logits, hidden = completion_logits(policy, input_ids, attention_mask, prompt_length, return_hidden=True)
        return logits, critic.values_from_hidden(hidden)
    logits = completion_logits(policy, input_ids, attention_mask, prompt_length)
    return logits, critic(input_ids, attention_mask, prompt_length, policy)


def policy_forward(policy, critic: Critic, rollout: Rollout, rows: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(log-probs, entropies, values), each `[b, C]`, of the rollout's rows `[b]`: the update's forward, which also gives
    the old log-probs and values (trainer_forward)."""
    logits, values = logits_and_values(policy, critic, rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_length)
    mask = rollout.completion_mask[rows]
    logp, entropy = core.token_logprobs_and_entropy(logits, rollout.completion_ids[rows], mask, temperature)
    return logp, entropy, values * mask


def reference_logprobs(ref_model, rollout: Rollout, rows: Tensor, temperature: float) -> tuple[Tensor]:
    """(log-probs `[b, C]`,) of the rollout's rows under the reference, computed as policy_forward computes the policy's."""
    logits = completion_logits(ref_model, rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_length)
    return (core.token_logprobs(logits, rollout.completion_ids[rows], rollout.completion_mask[rows], temperature),)


def ppo_update(policy, critic: Critic, ref_model, optimizer, accelerator, rollout: Rollout, scores: Tensor, kl_ctl: core.KLController,
               cfg: PPOConfig, ptx_batch=None) -> dict[str, float]:
    """One PPO phase over a rollout; returns metrics (and adapts kl_ctl). With cfg.ptx_coef, ptx_batch() gives
    `[N, T]` pretraining tokens whose language-model loss joins every minibatch's (InstructGPT's PPO-ptx).
    The old log-probs and values, and the reference's log-probs, come from the update's own forward
    (trainer_forward) on the first epoch's minibatches, in the precision and mode it runs in."""
    mask = rollout.completion_mask
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * rollout.is_truncated.float()
    epochs = [torch.randperm(len(scores)).split(len(scores) // cfg.num_minibatches) for _ in range(cfg.num_ppo_epochs)]
    old_logprobs, _, old_values = trainer_forward(lambda rows: policy_forward(policy, critic, rollout, rows, cfg.temperature), epochs[0])
    kl = torch.zeros_like(mask)
    if ref_model is not None:
        with evaluation_mode(ref_model):
            (ref_logprobs,) = trainer_forward(lambda rows: reference_logprobs(ref_model, rollout, rows, cfg.temperature), epochs[0])
        kl = core.kl_estimate(old_logprobs, ref_logprobs, "k1", mask)
    advantages, returns = advantages_and_returns(scores, old_values, kl, mask, kl_ctl.value, cfg)

    means = MeanStats()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for minibatches in epochs:
        for mb in minibatches:
            logp, entropy, values = policy_forward(policy, critic, rollout, mb, cfg.temperature)
            pg_loss, stats = core.policy_loss(logp, old_logprobs[mb], advantages[mb], cfg.cliprange,
                                              mask=mask[mb], agg="token")
            v_loss = core.value_loss(values, old_values[mb], returns[mb], clip=cfg.cliprange_value, mask=mask[mb])
            loss = pg_loss + cfg.vf_coef * v_loss
            if cfg.ptx_coef:
                tokens = ptx_batch().to(logp.device)
                ptx_loss = policy(input_ids=tokens, labels=tokens).loss
                loss = loss + cfg.ptx_coef * ptx_loss
                stats["ptx_loss"] = ptx_loss.detach()
            accelerator.backward(loss)
            stats["grad_norm"] = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            check_finite(None, loss=loss, grad_norm=stats["grad_norm"])  # before the step: the weights stay good
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats.update(loss=loss.detach(), policy_loss=pg_loss.detach(), value_loss=v_loss.detach(),
                         entropy=core.masked_mean(entropy, mask[mb]))
            means.add(stats)
    metrics = means.means()
    sequence_kl = float((kl.sum(1)).mean())
    metrics.update(clip_ratio=metrics.pop("clipfrac"), kl=float(core.masked_mean(kl, mask)), kl_sequence=sequence_kl,
                   beta=kl_ctl.value, explained_variance=float(core.explained_variance(old_values, returns, mask)),
                   score=float(scores.mean()))
    metrics.update(sampler_mismatch(old_logprobs, rollout.sampling_logprobs, mask))
    kl_ctl.update(sequence_kl, len(scores))
    return metrics
