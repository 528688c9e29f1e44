"""Advantage actor-critic, A2C: the synchronous form of A3C (Mnih et al. 2016).

    for each update:
        collect num_steps x num_envs transitions with the current policy (vector envs, in lock-step)
        (a time-limit cut adds gamma * V(final obs) to its reward: truncation is not failure)
        A, R = GAE(rewards, values, dones)            (gae_lambda=1: the n-step advantage R_t^(n) - V(s_t))
        one gradient step on  -mean(log pi(a|s) A) + vf_coef * value loss - ent_coef * entropy

It is PPO with one epoch, one minibatch and no ratio to clip: the same rollout and core functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from classic_rl import core, distributions, envs
from classic_rl.buffers import RolloutBuffer
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import (
    check_finite,
    require_discount,
    require_layer_widths,
    require_nonnegative,
    require_positive,
)
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import ActorCritic
from classic_rl.training import ClassicConfig, Evaluator


@dataclass
class A2CConfig(ClassicConfig):
    total_timesteps: int = config_field(500_000, "Env steps to train for (summed over parallel envs)")
    num_envs: int = config_field(8, "Parallel environments")
    num_steps: int = config_field(5, "Steps per environment per update (the n of the n-step return)")
    learning_rate: float = config_field(7e-4, "RMSprop learning rate")
    anneal_lr: bool = config_field(False, "Decay the learning rate linearly to 0 over training")
    gamma: float = config_field(0.99, "Discount factor")
    gae_lambda: float = config_field(1.0, "GAE lambda; 1 gives the plain n-step advantage")
    norm_adv: bool = config_field(False, "Whiten advantages within each update")
    ent_coef: float = config_field(0.0, "Entropy bonus coefficient")
    vf_coef: float = config_field(0.5, "Value loss coefficient")
    max_grad_norm: float = config_field(0.5, "Global gradient-norm clip")
    shared: bool = config_field(False, "One network trunk for actor and critic (two heads) instead of two networks")
    hidden_sizes: list[int] = config_field([64, 64], "Hidden layer sizes")

    def __post_init__(self):
        super().__post_init__()
        require_positive(num_envs=self.num_envs, num_steps=self.num_steps, learning_rate=self.learning_rate,
                         gamma=self.gamma, max_grad_norm=self.max_grad_norm)
        require_discount(self.gamma, self.gae_lambda)
        require_nonnegative(ent_coef=self.ent_coef, vf_coef=self.vf_coef)
        require_layer_widths(self.hidden_sizes)
        distributions.policy_spaces(self.env, "a2c")


def rmsprop(params, learning_rate: float) -> torch.optim.RMSprop:
    """RMSprop as in the A3C paper and SB3 (alpha 0.99, eps 1e-5)."""
    return torch.optim.RMSprop(params, lr=learning_rate, alpha=0.99, eps=1e-5)


def gradient_of_the_rollout(agent: ActorCritic, buffer: RolloutBuffer, next_obs: torch.Tensor, cfg: A2CConfig,
                            global_step: int) -> dict[str, float]:
    """Fill agent's .grad (clipped) with the gradient of the actor-critic loss on the buffer's rollout:
    -mean(log pi(a|s) A) + vf_coef * value loss - ent_coef * entropy. Returns the losses for logging, as
    0-d tensors (read only when logged: .item() on every 40-step update would cost more than the update)."""
    advantages, returns = buffer.advantages(agent, next_obs, cfg.gamma, cfg.gae_lambda)
    if cfg.norm_adv:
        advantages = core.masked_whiten(advantages)
    b_obs, b_actions, _, b_values = buffer.flat()
    _, logprob, entropy, value = agent.get_action_and_value(b_obs, b_actions)
    pg_loss = -(logprob * advantages).mean()
    v_loss = core.value_loss(value, b_values, returns)
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy.mean()
    check_finite(global_step, policy_loss=pg_loss, value_loss=v_loss)
    agent.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
    return {"losses/policy_loss": pg_loss.detach(), "losses/value_loss": v_loss.detach(), "losses/entropy": entropy.detach().mean(),
            "losses/explained_variance": core.explained_variance(b_values, returns)}


def train(cfg: A2CConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints,
          wrap_env: envs.VecEnvWrapper | None = None) -> tuple[ActorCritic, int]:
    """Train a policy; returns it and the number of env steps taken. wrap_env: what the agent's rewards pass through
    (classic_rl/preferences.py's reward model), outside the env's own episode statistics."""
    obs_dim, action_kwargs = distributions.policy_spaces(cfg.env, "a2c")
    stats_env = envs.make_vec_env(cfg.env, cfg.num_envs)
    vec_env = wrap_env(stats_env) if wrap_env else stats_env
    agent = ActorCritic(obs_dim, hidden_sizes=cfg.hidden_sizes, shared=cfg.shared, **action_kwargs)
    optimizer = rmsprop(agent.parameters(), cfg.learning_rate)
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, obs_dim, agent.distribution)
    batch_size = cfg.num_envs * cfg.num_steps
    num_updates = max(1, cfg.total_timesteps // batch_size)

    next_obs = agent.normalize(vec_env.reset(seed=cfg.seed)[0])
    global_step, first_update = 0, 1
    checkpoints.track(model=agent, optimizer=optimizer, vec_env=envs.VecEnvState(stats_env))
    if resumed := checkpoints.restore():
        next_obs, global_step, first_update = resumed["next_obs"], resumed["global_step"], resumed["update"] + 1
    progress = tqdm(total=num_updates * batch_size, initial=global_step, unit="step", desc=f"a2c {cfg.env}", mininterval=1.0)
    for update in range(first_update, num_updates + 1):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.learning_rate * (1.0 - (update - 1) / num_updates)
        next_obs, finished = buffer.collect(agent, vec_env, next_obs, cfg.gamma)
        global_step += batch_size
        logger.log_episodes(global_step, finished)
        stats = gradient_of_the_rollout(agent, buffer, next_obs, cfg, global_step)
        optimizer.step()

        progress.update(batch_size)
        if update % 20 == 0 or update == num_updates:  # per-update logging would dominate 40-step updates
            progress.set_postfix(ret=f"{logger.recent_return():.1f}", refresh=False)
            logger.log(global_step, {"charts/episodic_return": logger.recent_return(),
                                     "charts/SPS": global_step / logger.elapsed(),
                                     **stats})
        if evaluator.maybe_evaluate(global_step, agent):
            break
        checkpoints.save_if_due(global_step, update=update, global_step=global_step, next_obs=next_obs)
    progress.close()
    vec_env.close()
    return agent, global_step
