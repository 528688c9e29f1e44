"""PPO with a critic for RLHF (Ziegler et al. 2019; Ouyang et al. 2022), on token-level MDPs.

    for each step:
        sample completions; score each with the reward (minus missing_eos_penalty without eos)
        old log-probs, V and the reference's log-probs: the update's own forward on the first epoch's minibatches
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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from classic_rl import core
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import (
    ConfigError,
    check_finite,
    require_choice,
    require_nonnegative,
    require_positive,
)
from classic_rl.infra.metrics import MeanStats
from rlhf_toy.algorithms.base import OnlineAlgorithm, RLHFConfig
from rlhf_toy.data import DATA_DIR, ShuffledBatches, pretraining_blocks
from rlhf_toy.distributed import average_gradients, clip_gradients, summed_over_processes
from rlhf_toy.generation import fast_forward
from rlhf_toy.generation.rollout import (
    Rollout,
    completion_logits,
    completion_states,
    sampler_mismatch,
    trainer_forward,
)
from rlhf_toy.generation.sampling import context_length
from rlhf_toy.lm.lora import trunk_of
from rlhf_toy.lm.models import disable_dropout, evaluation_mode
from rlhf_toy.rewards.learned_reward import load_reward_model

CRITICS = ("separate", "shared", "rm")


@dataclass
class PPOConfig(RLHFConfig):
    """PPO-with-a-critic's own fields, named as in TRL's PPOConfig."""

    ALGO: ClassVar[str] = "ppo"
    cliprange: float = config_field(0.2, "Clip range of the policy ratio")
    kl_coef: float = config_field(0.05, "Initial beta of the per-token k1 KL penalty in the reward")
    target_kl: float | None = config_field(None, "Adapt beta towards this KL per sequence (Ziegler et al.); None: fixed beta")
    kl_horizon: int = config_field(10_000, "Horizon of the adaptive KL controller, in completions")
    critic: str = config_field("separate", f"Value model: {', '.join(CRITICS)} (a trunk copied from the policy, the policy's own, "
                                           "or the reward model of --reward rm:DIR with its head, as InstructGPT)")
    vf_coef: float = config_field(0.1, "Value loss coefficient")
    cliprange_value: float | None = config_field(0.2, "Clip value updates around the rollout's values")
    gamma: float = config_field(1.0, "Discount over tokens")
    lam: float = config_field(0.95, "GAE lambda over tokens")
    num_ppo_epochs: int = config_field(2, "PPO epochs over each rollout")
    whiten_rewards: bool = config_field(False, "Whiten the per-token rewards before GAE")
    missing_eos_penalty: float | None = config_field(None, "Subtract this from the score of completions without eos")
    ptx_coef: float = config_field(0.0, "InstructGPT's pretraining mix (PPO-ptx): add this times the language-model loss of "
                                        "a batch of --ptx-data to every minibatch's loss (0: off)")
    ptx_data: str = config_field(str(DATA_DIR / "pretrain.jsonl"), "Documents (JSONL with a text field) of the pretraining mix")
    ptx_batch_size: int = config_field(8, "Blocks of 64 tokens of --ptx-data per minibatch")

    def __post_init__(self):
        super().__post_init__()
        require_choice(critic=(self.critic, CRITICS))
        require_positive(cliprange=self.cliprange, num_ppo_epochs=self.num_ppo_epochs, kl_horizon=self.kl_horizon,
                         gamma=self.gamma)
        require_nonnegative(kl_coef=self.kl_coef, vf_coef=self.vf_coef, ptx_coef=self.ptx_coef)
        require_positive(ptx_batch_size=self.ptx_batch_size)
        if self.ptx_coef and not Path(self.ptx_data).is_file():
            raise ConfigError(f"--ptx-data {self.ptx_data} not found; accepted: a JSONL file with a text field per document")
        if self.critic == "rm" and self.reward_model_dir is None:
            raise ConfigError(f"--critic rm starts the value model from the reward model, so --reward must hold one rm:DIR; "
                              f"got --reward {self.reward}")
        if not (self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"--gamma must be in (0, 1] and --lam in [0, 1], got {self.gamma} and {self.lam}")
        for name in ("target_kl", "cliprange_value"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (or None to turn it off), got {getattr(self, name)}")

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0

    @property
    def passes(self) -> int:
        return self.num_ppo_epochs

    @property
    def reward_model_dir(self) -> str | None:
        """DIR of the one rm:DIR in --reward, else None."""
        folders = [part.strip()[3:] for part in self.reward.split(",") if part.strip().startswith("rm:")]
        return folders[0] if len(folders) == 1 else None


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
        trunk = trunk_of(policy) if self.shared else self.trunk
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
        return Critic(hidden, trunk_of(load_copy()))  # with --use-peft a copy with adapters of its own
    reward_model = load_reward_model(reward_model_dir)
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


def advantages_and_returns(scores: Tensor, values: Tensor, kl: Tensor, mask: Tensor, beta: float,
                           cfg: PPOConfig, total=None) -> tuple[Tensor, Tensor]:
    """(advantages whitened over valid tokens, returns), both `[B, C]`, from sequence scores `[B]`, the rollout's
    values and per-token KL `[B, C]`: token_rewards, then GAE over each completion, which ends at its last token.
    total: sums over the processes (distributed.summed_over_processes), so whitening sees every process's tokens.
    In a multi-turn rollout GAE runs across the turns over the model's tokens alone (core.valid_first): the environment's
    tokens are part of the transition to the next turn's first token, whose value bootstraps the turn before."""
    rewards = core.token_rewards(scores, kl, mask, beta)
    if cfg.whiten_rewards:
        rewards = core.masked_whiten(rewards, mask, shift_mean=False, total=total)
    order = core.valid_first(mask)
    packed_mask = mask.gather(1, order)
    # the episode ends at each completion's last token; nothing flows back from the padding after it
    dones = 1.0 - torch.cat([packed_mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    advantages, returns = (torch.zeros_like(mask).scatter(1, order, x) for x in core.gae(
        rewards.gather(1, order), values.gather(1, order), dones, scores.new_zeros(len(scores)), cfg.gamma, cfg.lam))
    return core.masked_whiten(advantages, mask, total=total), returns


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
    logp, entropy = fast_forward.token_logprobs_and_entropy(logits, rollout.completion_ids[rows], mask, temperature)
    return logp, entropy, values * mask


def reference_logprobs(ref_model, rollout: Rollout, rows: Tensor, temperature: float) -> tuple[Tensor]:
    """(log-probs `[b, C]`,) of the rollout's rows under the reference, computed as policy_forward computes the policy's."""
    logits = completion_logits(ref_model, rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_length)
    return (fast_forward.token_logprobs(logits, rollout.completion_ids[rows], rollout.completion_mask[rows], temperature),)


def ppo_update(policy, critic: Critic, ref_model, optimizer, accelerator, rollout: Rollout, scores: Tensor, kl_ctl: core.KLController,
               cfg: PPOConfig, ptx_batch=None) -> dict[str, float]:
    """One PPO phase over a rollout; returns metrics (and adapts kl_ctl). With cfg.ptx_coef, ptx_batch() gives
    `[N, T]` pretraining tokens whose language-model loss joins every minibatch's (InstructGPT's PPO-ptx).
    The old log-probs and values, and the reference's log-probs, come from the update's own forward
    (trainer_forward) on the first epoch's minibatches, in the precision and mode it runs in. In several processes,
    each holding its share of the rollout, whitening and the KL controller see every process's (summed_over_processes)
    and the critic's gradients are averaged as DDP averages the policy's."""
    mask, total = rollout.completion_mask, summed_over_processes(accelerator)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * rollout.is_truncated.float()
    epochs = cfg.minibatch_orders(len(scores))
    old_logprobs, _, old_values = trainer_forward(lambda rows: policy_forward(policy, critic, rollout, rows, cfg.temperature), epochs[0])
    kl = torch.zeros_like(mask)
    if ref_model is not None:
        with evaluation_mode(ref_model):
            (ref_logprobs,) = trainer_forward(lambda rows: reference_logprobs(ref_model, rollout, rows, cfg.temperature), epochs[0])
        kl = core.kl_estimate(old_logprobs, ref_logprobs, "k1", mask)
    advantages, returns = advantages_and_returns(scores, old_values, kl, mask, kl_ctl.value, cfg, total)

    means = MeanStats()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for minibatches in epochs:
        for mb in minibatches:
            logp, entropy, values = policy_forward(policy, critic, rollout, mb, cfg.temperature)
            # token means over the minibatch of every process: the sums over this share divided by the share of the count
            # that is this process's (the whole count / processes), which DDP's averaged gradients turn into that mean
            tokens = accelerator.reduce(mask[mb].sum(), "mean")  # >= 1: every completion has a token (its eos at least)
            per_token, stats = core.policy_loss(logp, old_logprobs[mb], advantages[mb], cfg.cliprange, mask=mask[mb], agg="none")
            pg_loss = per_token.sum() / tokens
            v_loss = core.value_loss(values, old_values[mb], returns[mb], clip=cfg.cliprange_value, mask=mask[mb], normaliser=tokens)
            loss = pg_loss + cfg.vf_coef * v_loss
            if cfg.ptx_coef:
                tokens = ptx_batch().to(logp.device)
                ptx_loss = policy(input_ids=tokens, labels=tokens).loss
                loss = loss + cfg.ptx_coef * ptx_loss
                stats["ptx_loss"] = ptx_loss.detach()
            accelerator.backward(loss)
            average_gradients(accelerator, critic.parameters())
            stats["grad_norm"] = clip_gradients(accelerator, params, cfg.max_grad_norm)
            check_finite(None, loss=loss, grad_norm=stats["grad_norm"])  # before the step: the weights stay good
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats.update(loss=loss.detach(), policy_loss=pg_loss.detach(), value_loss=v_loss.detach(),
                         entropy=core.masked_mean(entropy, mask[mb]))
            means.add(stats)
    metrics = means.means()
    sequence_kl = float(accelerator.reduce(kl.sum(1).mean(), "mean"))  # the controller's input: over every process's share
    metrics.update(clip_ratio=metrics.pop("clipfrac"), kl=float(core.masked_mean(kl, mask)), kl_sequence=sequence_kl,
                   beta=kl_ctl.value, explained_variance=float(core.explained_variance(old_values, returns, mask)),
                   score=float(scores.mean()))
    metrics.update(sampler_mismatch(old_logprobs, rollout.sampling_logprobs, mask))
    kl_ctl.update(sequence_kl, len(scores) * accelerator.num_processes)
    return metrics


def pretraining_mix(cfg: PPOConfig, tokenizer, policy) -> tuple[ShuffledBatches, Callable[[], Tensor]]:
    """PPO-ptx's data: --ptx-data packed into blocks of 64 tokens; (the batch order, to checkpoint; a function
    giving the next `[ptx_batch_size, 64]` batch)."""
    blocks = pretraining_blocks(cfg.ptx_data, tokenizer, min(64, context_length(policy)))
    batches = ShuffledBatches(len(blocks), min(cfg.ptx_batch_size, len(blocks)), torch.Generator().manual_seed(cfg.seed))
    return batches, lambda: blocks[batches.next()]


class PPO(OnlineAlgorithm):
    """PPO in the online loop: a critic trained beside the policy, the KL coefficient's controller and, with
    --ptx-coef, the pretraining batches, all three in every checkpoint."""

    name, Config, kl_label = "ppo", PPOConfig, "KL to the reference (k1 per token)"

    def __init__(self, cfg: PPOConfig, policy, load_copy, tokenizer):
        super().__init__(cfg, policy, load_copy, tokenizer)
        self.critic = build_critic(policy, cfg.critic, load_copy, cfg.reward_model_dir)
        if cfg.disable_dropout:
            disable_dropout(self.critic)
        self.kl_ctl = core.KLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.ptx_batches, self.ptx_batch = pretraining_mix(cfg, tokenizer, policy) if cfg.ptx_coef else (None, None)

    def modules(self) -> list:
        """The critic: its head, and its own trunk unless it is shared (a shared critic reads the policy's, unheld)."""
        return [self.critic]

    def state(self) -> dict:
        return {"critic": self.critic, "kl_ctl": self.kl_ctl, "ptx_batches": self.ptx_batches}

    def place(self, device) -> list:
        self.critic = self.critic.to(device)
        return [self.critic.trunk]

    def update(self, policy, ref_model, optimizer, accelerator, rollout: Rollout, rewards: Tensor, rewards_per_func) -> dict[str, float]:
        # PPO calls the sequence rewards scores, as TRL's PPOTrainer does: its rewards are per token, with the KL penalty
        return ppo_update(policy, self.critic, ref_model, optimizer, accelerator, rollout, scores=rewards, kl_ctl=self.kl_ctl,
                          cfg=self.cfg, ptx_batch=self.ptx_batch)
