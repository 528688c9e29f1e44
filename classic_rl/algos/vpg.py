"""Vanilla policy gradient with a learned value baseline (Sutton et al. 2000; Spinning Up's VPG).

    for each epoch:
        run episodes_per_epoch complete episodes with pi_theta
        A_t = GAE(lambda) from rewards and V_phi        (a time-limit cut bootstraps from V(final obs))
        R_t = A_t + V_phi(s_t)                          (the lambda-return: the value target)
        one policy step on   -mean_t log pi(a_t|s_t) * whiten(A)_t
        value_iterations steps on  mean_t (V_phi(s_t) - R_t)^2 / 2

Unlike REINFORCE, the baseline V(s) removes the part of the return the state already predicts,
so the gradient is far less noisy; unlike A2C and PPO it uses whole episodes, one policy step each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from classic_rl import core, distributions, envs
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import require_discount, require_layer_widths, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import ActorCritic
from classic_rl.training import ClassicConfig, Evaluator


@dataclass
class VPGConfig(ClassicConfig):
    total_timesteps: int = config_field(500_000, "Env steps to train for")
    episodes_per_epoch: int = config_field(8, "Complete episodes per policy step")
    policy_lr: float = config_field(1e-2, "Adam learning rate of the policy")
    value_lr: float = config_field(1e-3, "Adam learning rate of the value function")
    value_iterations: int = config_field(20, "Value-function gradient steps per epoch")
    gamma: float = config_field(0.99, "Discount factor")
    gae_lambda: float = config_field(0.97, "GAE lambda (1: reward-to-go minus V)")
    hidden_sizes: list[int] = config_field([64, 64], "Hidden layer sizes of the policy and of the value function")

    def __post_init__(self):
        super().__post_init__()
        require_positive(episodes_per_epoch=self.episodes_per_epoch, policy_lr=self.policy_lr, value_lr=self.value_lr,
                         value_iterations=self.value_iterations, gamma=self.gamma)
        require_discount(self.gamma, self.gae_lambda)
        require_layer_widths(self.hidden_sizes)
        distributions.policy_spaces(self.env, "vpg")


@torch.no_grad()
def episode_advantages(agent: ActorCritic, episode: envs.Episode, gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, lambda-returns) `[T]` of one episode; a truncated one bootstraps from V(final obs)."""
    obs = torch.as_tensor(episode.observations, dtype=torch.float32)
    values = agent.get_value(obs)
    last_value = torch.zeros(()) if episode.terminated else agent.get_value(torch.as_tensor(episode.final_obs, dtype=torch.float32)[None])[0]
    return core.gae(torch.as_tensor(episode.rewards, dtype=torch.float32), values, torch.zeros_like(values), last_value, gamma, gae_lambda)


def train(cfg: VPGConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints) -> tuple[ActorCritic, int]:
    obs_dim, action_kwargs = distributions.policy_spaces(cfg.env, "vpg")
    agent = ActorCritic(obs_dim, hidden_sizes=cfg.hidden_sizes, **action_kwargs)
    policy_optimizer = torch.optim.Adam(agent.policy_parameters(), lr=cfg.policy_lr)
    value_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=cfg.value_lr)
    env = envs.make_env(cfg.env)
    env.reset(seed=cfg.seed)
    global_step = 0
    # epochs hold whole episodes, so between them the env's state is its RNG alone
    checkpoints.track(model=agent, policy_optimizer=policy_optimizer, value_optimizer=value_optimizer)
    if resumed := checkpoints.restore():
        env.unwrapped.np_random.bit_generator.state = resumed["env_rng"]
        global_step = resumed["global_step"]
    while global_step < cfg.total_timesteps:
        batch = [envs.play_episode(env, lambda o: agent.act(o, deterministic=False)) for _ in range(cfg.episodes_per_epoch)]
        obs = torch.as_tensor(np.concatenate([b.observations for b in batch]), dtype=torch.float32)
        actions = torch.as_tensor(np.concatenate([b.actions for b in batch]))
        per_episode = [episode_advantages(agent, b, cfg.gamma, cfg.gae_lambda) for b in batch]
        advantages, returns = torch.cat([a for a, _ in per_episode]), torch.cat([r for _, r in per_episode])

        _, logprob, entropy, _ = agent.get_action_and_value(obs, actions)
        policy_loss = -(logprob * core.masked_whiten(advantages)).mean()
        policy_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        policy_optimizer.step()
        for _ in range(cfg.value_iterations):
            value_loss = core.value_loss(agent.get_value(obs), None, returns)
            value_optimizer.zero_grad(set_to_none=True)
            value_loss.backward()
            value_optimizer.step()

        global_step += len(actions)
        logger.log_episodes(global_step, [b.stats() for b in batch])
        logger.log(global_step, {"charts/episodic_return": logger.recent_return(), "losses/policy_loss": policy_loss.item(),
                                 "losses/value_loss": value_loss.item(), "losses/entropy": entropy.mean().item()})
        if evaluator.maybe_evaluate(global_step, agent):
            break
        checkpoints.save_if_due(global_step, env_rng=env.unwrapped.np_random.bit_generator.state, global_step=global_step)
    env.close()
    return agent, global_step
