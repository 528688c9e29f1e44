"""Proximal Policy Optimization (Schulman et al. 2017) for discrete-action gymnasium envs.

    for each update:
        collect num_steps x num_envs transitions with the current policy
        (a time-limit cut adds gamma * V(final obs) to its reward: truncation is not failure)
        A, R = GAE(rewards, values, dones)
        (--normalize-returns, tutorial 003's recipe: R <- whiten(R) over the rollout, A = R - V)
        for each epoch, for each minibatch:
            minimise  clipped policy loss - ent_coef * entropy + vf_coef * value loss
        (--kl-penalty fixed|adaptive, the paper's other objective: the unclipped surrogate plus
         beta * KL(old || new) instead of the clip; adaptive: after the update, beta doubles when the
         batch's KL exceeds 1.5 x kl_penalty_target and halves below kl_penalty_target / 1.5)

All loss math comes from classic_rl.core, the same functions the RLHF trainers call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from classic_rl import core, distributions, envs
from classic_rl.buffers import RolloutBuffer
from classic_rl.fast_mlp import FlatAdam, clip_flat_grad_norm_, flatten_parameters
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import (
    ConfigError,
    check_finite,
    require_choice,
    require_discount,
    require_layer_widths,
    require_nonnegative,
    require_positive,
)
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import ACTIVATIONS, ActorCritic
from classic_rl.training import ClassicConfig, Evaluator

KL_PENALTIES = ("none", "fixed", "adaptive")


@dataclass
class PPOConfig(ClassicConfig):
    num_envs: int = config_field(8, "Parallel environments")
    num_steps: int = config_field(128, "Steps per environment per rollout (rollout batch = num_envs * num_steps)")
    async_envs: bool = config_field(False, "One process per env (gymnasium AsyncVectorEnv); pays off only for slow envs")
    learning_rate: float = config_field(2.5e-4, "Adam learning rate")
    anneal_lr: bool = config_field(True, "Decay the learning rate linearly to 0 over training")
    gamma: float = config_field(0.99, "Discount factor")
    gae_lambda: float = config_field(0.95, "GAE lambda (bias/variance trade-off of the advantage)")
    num_minibatches: int = config_field(4, "Minibatches per epoch; must divide the rollout batch")
    update_epochs: int = config_field(4, "Passes over each rollout")
    norm_adv: bool = config_field(True, "Whiten advantages within each minibatch")
    clip_coef: float = config_field(0.2, "Policy ratio clip epsilon")
    vf_clip: float | None = config_field(None, "Clip value updates to +-this around the rollout's values (default: no clipping)")
    ent_coef: float = config_field(0.01, "Entropy bonus coefficient")
    vf_coef: float = config_field(0.5, "Value loss coefficient")
    max_grad_norm: float | None = config_field(0.5, "Global gradient-norm clip (none: no clipping)")
    target_kl: float | None = config_field(None, "Stop an update's epochs early when approx KL exceeds this")
    kl_penalty: str = config_field("none", f"Objective: none (the clipped surrogate), or the paper's KL-penalty variant "
                                           f"with a fixed or adaptive beta: {', '.join(KL_PENALTIES)}")
    kl_coef: float = config_field(1.0, "Initial beta of the KL penalty (with --kl-penalty fixed or adaptive)")
    kl_penalty_target: float = config_field(0.01, "Target KL per update of --kl-penalty adaptive (the paper's d_targ)")
    normalize_returns: bool = config_field(False, "Whiten each rollout's returns; the critic learns them and A = R - V "
                                                  "(tutorial 003; with gae_lambda 1 these are Monte-Carlo returns)")
    normalize_obs: bool = config_field(False, "Running mean/std observation normalisation (saved with the policy)")
    normalize_reward: bool = config_field(False, "Divide rewards by the running std of the discounted return (SB3 "
                                                 "VecNormalize's reward scaling; logged returns stay the env's own)")
    hidden_sizes: list[int] = config_field([64, 64], "Hidden layer sizes of the actor and of the critic")
    activation: str = config_field("tanh", f"Activation of the hidden layers: {', '.join(ACTIVATIONS)}")

    def __post_init__(self):
        super().__post_init__()
        require_positive(num_envs=self.num_envs, num_steps=self.num_steps, learning_rate=self.learning_rate,
                         num_minibatches=self.num_minibatches, update_epochs=self.update_epochs,
                         clip_coef=self.clip_coef, gamma=self.gamma, vf_clip=self.vf_clip, max_grad_norm=self.max_grad_norm,
                         target_kl=self.target_kl)
        require_discount(self.gamma, self.gae_lambda)
        require_nonnegative(ent_coef=self.ent_coef, vf_coef=self.vf_coef)
        if self.batch_size % self.num_minibatches:
            raise ConfigError(f"the rollout batch num_envs * num_steps = {self.batch_size} does not split into "
                              f"{self.num_minibatches} minibatches; choose --num-minibatches dividing {self.batch_size}")
        require_layer_widths(self.hidden_sizes)
        require_choice(kl_penalty=(self.kl_penalty, KL_PENALTIES), activation=(self.activation, tuple(ACTIVATIONS)))
        require_positive(kl_coef=self.kl_coef, kl_penalty_target=self.kl_penalty_target)
        distributions.policy_spaces(self.env, "ppo")

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps


def rollout_kl(agent: ActorCritic, obs: torch.Tensor, actions: torch.Tensor, old_logprobs: torch.Tensor) -> float:
    """Mean KL(old || new) over a rollout `[batch]` after its update (the k3 estimate), for the adaptive beta."""
    with torch.no_grad():
        _, logprob, _, _ = agent.get_action_and_value(obs, actions)
    return core.kl_estimate(old_logprobs, logprob, "k3").mean().item()


def minibatch_indices(batch_size: int, num_minibatches: int) -> list[torch.Tensor] | list[slice]:
    """A fresh random split of the rollout's `batch_size` indices into minibatches; one minibatch is
    the whole rollout, in order (its gradient does not depend on the order, and a slice is a view)."""
    if num_minibatches == 1:
        return [slice(None)]
    return list(torch.randperm(batch_size).split(batch_size // num_minibatches))


def update_policy(agent: ActorCritic, optimizer: torch.optim.Optimizer, buffer: RolloutBuffer, advantages: torch.Tensor,
                  returns: torch.Tensor, kl_ctl: core.KLController | None, cfg: PPOConfig, global_step: int) -> dict[str, float]:
    """update_epochs passes of minibatch steps over one rollout (cut short once approx KL passes target_kl),
    then the adaptive beta's step; returns the last minibatch's losses and statistics for the log."""
    clip = cfg.clip_coef if kl_ctl is None else math.inf  # the KL-penalty variant replaces the clip
    b_obs, b_actions, b_logprobs, b_values = buffer.flat()
    (flat_param,) = optimizer.param_groups[0]["params"]  # every parameter is a view of it (flatten_parameters)
    whiten_each_minibatch = cfg.norm_adv and cfg.num_minibatches > 1
    if cfg.norm_adv and not whiten_each_minibatch:  # one minibatch: the same whitening every epoch, done once
        advantages = core.masked_whiten(advantages)
    for epoch in range(1, cfg.update_epochs + 1):  # noqa: B007 (read after the loop)
        for mb in minibatch_indices(cfg.batch_size, cfg.num_minibatches):
            policy_params, new_value, backward = agent.forward_for_update(b_obs[mb])
            new_logprob, entropy = agent.distribution.log_prob_and_entropy(policy_params, b_actions[mb], entropy_grad=cfg.ent_coef > 0)
            mb_advantages = core.masked_whiten(advantages[mb]) if whiten_each_minibatch else advantages[mb]
            pg_loss, stats = core.policy_loss(new_logprob, b_logprobs[mb], mb_advantages, clip)
            if kl_ctl is not None:
                pg_loss = pg_loss + kl_ctl.value * core.kl_estimate(b_logprobs[mb], new_logprob, "k3").mean()
            v_loss = core.value_loss(new_value, b_values[mb], returns[mb], clip=cfg.vf_clip)
            entropy_loss = entropy.mean()
            loss = pg_loss + cfg.vf_coef * v_loss
            if cfg.ent_coef:  # a zero-weighted term would still cost its share of the backward pass
                loss = loss - cfg.ent_coef * entropy_loss
            flat_param.grad.zero_()  # in place: every parameter's gradient is a view of it
            backward(loss)
            if cfg.max_grad_norm is not None:
                clip_flat_grad_norm_(flat_param.grad, cfg.max_grad_norm)
            optimizer.step()
        if cfg.target_kl is not None and stats["approx_kl"] > cfg.target_kl:
            break
    check_finite(global_step, policy_loss=pg_loss, value_loss=v_loss)  # a NaN anywhere in the update reaches the last losses
    if kl_ctl is not None:
        kl_ctl.update(rollout_kl(agent, b_obs, b_actions, b_logprobs))
    return {
        "losses/policy_loss": pg_loss.item(),
        "losses/value_loss": v_loss.item(),
        "losses/entropy": entropy_loss.item(),
        "losses/approx_kl": stats["approx_kl"].item(),
        "losses/clipfrac": stats["clipfrac"].item(),
        "losses/explained_variance": core.explained_variance(b_values, returns).item(),
        "losses/epochs": epoch,  # fewer than update_epochs when target_kl stopped the update
        **({"losses/kl_coef": kl_ctl.value} if kl_ctl is not None else {}),
    }


def train(cfg: PPOConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints,
          wrap_env: envs.VecEnvWrapper | None = None) -> tuple[ActorCritic, int]:
    """Train a policy; returns it and the number of env steps taken. wrap_env: see a2c.train."""
    stats_env = envs.make_vec_env(cfg.env, cfg.num_envs, cfg.async_envs)
    vec_env = wrap_env(stats_env) if wrap_env else stats_env
    vec_env = envs.scale_rewards(vec_env, cfg.gamma) if cfg.normalize_reward else vec_env
    obs_dim, action_kwargs = distributions.policy_spaces(cfg.env, "ppo")
    agent = ActorCritic(obs_dim, hidden_sizes=cfg.hidden_sizes, normalize_obs=cfg.normalize_obs, activation=cfg.activation, **action_kwargs)
    optimizer = FlatAdam(flatten_parameters(agent), lr=cfg.learning_rate, eps=1e-5)

    kl_ctl = None if cfg.kl_penalty == "none" else core.KLController(
        cfg.kl_coef, cfg.kl_penalty_target if cfg.kl_penalty == "adaptive" else None, rule="doubling")
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, obs_dim, agent.distribution)
    num_updates = max(1, cfg.total_timesteps // cfg.batch_size)

    next_obs = agent.normalize(vec_env.reset(seed=cfg.seed)[0], update=True)
    global_step, first_update = 0, 1
    checkpoints.track(model=agent, optimizer=optimizer, vec_env=envs.VecEnvState(stats_env), kl_ctl=kl_ctl,
                      reward_scale=envs.RewardScaleState(vec_env) if cfg.normalize_reward else None)
    if resumed := checkpoints.restore():
        next_obs, global_step, first_update = resumed["next_obs"], resumed["global_step"], resumed["update"] + 1
    progress = tqdm(total=num_updates * cfg.batch_size, initial=global_step, unit="step", desc=f"ppo {cfg.env}", mininterval=1.0)
    for update in range(first_update, num_updates + 1):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - (update - 1) / num_updates)

        # ---- rollout ----
        rollout_start = time.perf_counter()
        next_obs, finished = buffer.collect(agent, vec_env, next_obs, cfg.gamma)
        global_step += cfg.batch_size
        logger.log_episodes(global_step, finished)
        b_advantages, b_returns = buffer.advantages(agent, next_obs, cfg.gamma, cfg.gae_lambda)
        if cfg.normalize_returns:  # the critic then predicts whitened returns; its bootstraps are in those units
            b_returns = core.masked_whiten(b_returns)
            b_advantages = b_returns - buffer.flat()[3]
        rollout_s = time.perf_counter() - rollout_start

        update_start = time.perf_counter()
        losses = update_policy(agent, optimizer, buffer, b_advantages, b_returns, kl_ctl, cfg, global_step)
        update_s = time.perf_counter() - update_start

        progress.update(cfg.batch_size)
        sps = global_step / logger.elapsed()
        progress.set_postfix(ret=f"{logger.recent_return():.1f}", sps=f"{sps:.0f}", refresh=False)
        logger.log(global_step, {
            "charts/learning_rate": optimizer.param_groups[0]["lr"],
            "charts/episodic_return": logger.recent_return(),
            "charts/SPS": sps,
            **losses,
            "time/rollout_s": rollout_s,
            "time/update_s": update_s,
        })
        if evaluator.maybe_evaluate(global_step, agent):
            break
        checkpoints.save_if_due(global_step, update=update, global_step=global_step, next_obs=next_obs)
    progress.close()
    vec_env.close()
    return agent, global_step
