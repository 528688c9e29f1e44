"""Deep Q-Network (Mnih et al. 2015), with the tips of Q-learning as options: Double DQN (van Hasselt
et al. 2016), Dueling heads (Wang et al. 2016), n-step returns (Sutton 1988; Hessel et al. 2018) and
prioritised replay (Schaul et al. 2016).

    for each env step:
        act epsilon-greedily (epsilon decays linearly)
        store (s_t, a_t, R = r_t + gamma r_t+1 + ... + gamma^(m-1) r_t+m-1, s_t+m, discount = gamma^m (0 if terminated))
            with m = n_step, or fewer at an episode end (a time-limit cut stores the final observation as s_t+m
            and keeps its discount, so the target bootstraps)
        every train_frequency steps after learning_starts, gradient_steps times:
            sample a batch uniformly, or (prioritized) with P(i) ~ p_i^alpha, weighting each loss by
                w_i = (N P(i))^-beta / max w  (beta annealed to 1)
            y = R + discount * Q_target(s', argmax_a' Q_online(s', a') if double else argmax Q_target)
            minimise mean of w * Huber(Q_online(s, a) - y);  prioritized: p_i <- |Q_online(s, a) - y| + eps
        every target_network_frequency steps: Q_target <- tau * Q_online + (1 - tau) * Q_target (tau=1: hard copy)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from classic_rl import envs
from classic_rl.buffers import NStepTransitions, PrioritizedReplayBuffer, ReplayBuffer
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, check_finite, require_layer_widths, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import QNetwork
from classic_rl.training import ClassicConfig, Evaluator, crossed


@dataclass
class DQNConfig(ClassicConfig):
    deterministic_policy: ClassVar[bool] = True
    num_envs: int = config_field(1, "Parallel environments (each vector step adds num_envs transitions)")
    buffer_size: int = config_field(100_000, "Replay buffer capacity, in transitions")
    learning_rate: float = config_field(2.3e-3, "Adam learning rate")
    batch_size: int = config_field(64, "Transitions per gradient step")
    gamma: float = config_field(0.99, "Discount factor")
    learning_starts: int = config_field(1_000, "Env steps of random-policy data before learning")
    train_frequency: int = config_field(256, "Env steps between bursts of gradient steps")
    gradient_steps: int = config_field(128, "Gradient steps per burst")
    target_network_frequency: int = config_field(10, "Env steps between target updates (checked after each env step)")
    tau: float = config_field(1.0, "Target update rate: 1 copies the online network, < 1 is Polyak averaging")
    start_e: float = config_field(1.0, "Initial epsilon")
    end_e: float = config_field(0.04, "Final epsilon")
    exploration_fraction: float = config_field(0.16, "Share of total_timesteps over which epsilon decays")
    double_dqn: bool = config_field(False, "Choose the next action with the online network (Double DQN)")
    dueling: bool = config_field(False, "Dueling value/advantage head")
    n_step: int = config_field(1, "Rewards summed into each stored return before bootstrapping (1: one-step Q-learning)")
    prioritized: bool = config_field(False, "Prioritised replay: sample transitions in proportion to their TD error^alpha")
    prioritized_alpha: float = config_field(0.6, "How strongly priorities shape sampling (0: uniform)")
    prioritized_beta: float = config_field(0.4, "Initial importance-sampling exponent, annealed to 1 over training")
    prioritized_eps: float = config_field(1e-6, "Added to |TD error|, so no transition's priority is 0")
    max_grad_norm: float = config_field(10.0, "Global gradient-norm clip")
    hidden_sizes: list[int] = config_field([256, 256], "Hidden layer sizes")

    def __post_init__(self):
        super().__post_init__()
        require_positive(num_envs=self.num_envs, buffer_size=self.buffer_size, learning_rate=self.learning_rate,
                         batch_size=self.batch_size, gamma=self.gamma, train_frequency=self.train_frequency,
                         gradient_steps=self.gradient_steps, target_network_frequency=self.target_network_frequency,
                         tau=self.tau, exploration_fraction=self.exploration_fraction, max_grad_norm=self.max_grad_norm,
                         n_step=self.n_step, prioritized_eps=self.prioritized_eps)
        if not (0 <= self.prioritized_alpha <= 1 and 0 <= self.prioritized_beta <= 1):
            raise ConfigError(f"--prioritized-alpha and --prioritized-beta must be in [0, 1], got {self.prioritized_alpha} "
                              f"and {self.prioritized_beta}")
        if self.gamma > 1 or self.tau > 1 or not 0 <= self.end_e <= self.start_e <= 1 or self.learning_starts < 0:
            raise ConfigError("need --gamma <= 1, --tau <= 1, 0 <= --end-e <= --start-e <= 1 and --learning-starts >= 0")
        require_layer_widths(self.hidden_sizes)
        envs.check_spaces(self.env, "dqn")


def td_targets(q_target: QNetwork, q_online: QNetwork, returns, next_obs, discounts, double: bool):
    """y = R + discount * Q_target(s', a*), a* from the online net (double) or the target net; discount is
    gamma^m for an m-step return, 0 after a terminal state."""
    with torch.no_grad():
        next_q = q_target(next_obs)
        if double:
            best = q_online(next_obs).argmax(1, keepdim=True)
            next_value = next_q.gather(1, best).squeeze(1)
        else:
            next_value = next_q.max(1).values
        return returns + discounts * next_value


def td_step(q_network: QNetwork, target_network: QNetwork, optimizer, buffer, cfg: DQNConfig,
            global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient step on a sampled batch's Huber TD loss (importance-weighted under prioritised replay, whose
    priorities it updates); returns (loss, Q of the actions taken `[batch_size]`)."""
    beta = cfg.prioritized_beta + (1.0 - cfg.prioritized_beta) * min(1.0, global_step / cfg.total_timesteps)
    slots, (b_obs, b_actions, b_returns, b_next, b_discounts), weights = buffer.sample(cfg.batch_size, beta)
    targets = td_targets(target_network, q_network, b_returns, b_next, b_discounts, cfg.double_dqn)
    q_taken = q_network(b_obs).gather(1, b_actions[:, None]).squeeze(1)
    if weights is None:
        loss = F.smooth_l1_loss(q_taken, targets)
    else:  # importance weights undo the bias of sampling by priority
        loss = (weights * F.smooth_l1_loss(q_taken, targets, reduction="none")).mean()
        buffer.update_priorities(slots, (q_taken - targets).detach().numpy())
    check_finite(global_step, td_loss=loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(q_network.parameters(), cfg.max_grad_norm)
    optimizer.step()
    return loss, q_taken


def train(cfg: DQNConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints) -> tuple[QNetwork, int]:
    obs_dim, n_actions = envs.check_spaces(cfg.env, "dqn")
    vec_env = envs.make_vec_env(cfg.env, cfg.num_envs)
    vec_env.action_space.seed(cfg.seed)
    q_network = QNetwork(obs_dim, n_actions, cfg.hidden_sizes, cfg.dueling)
    target_network = QNetwork(obs_dim, n_actions, cfg.hidden_sizes, cfg.dueling)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=cfg.learning_rate)
    buffer = (PrioritizedReplayBuffer(cfg.buffer_size, obs_dim, cfg.seed, cfg.prioritized_alpha, cfg.prioritized_eps)
              if cfg.prioritized else ReplayBuffer(cfg.buffer_size, obs_dim, cfg.seed))
    transitions = NStepTransitions(cfg.num_envs, cfg.n_step, cfg.gamma)
    rng = np.random.default_rng(cfg.seed)
    decay_steps = max(1.0, cfg.exploration_fraction * cfg.total_timesteps)

    obs, _ = vec_env.reset(seed=cfg.seed)
    global_step = 0
    checkpoints.track(model=q_network, optimizer=optimizer, vec_env=envs.VecEnvState(vec_env), target_network=target_network,
                      buffer=buffer, transitions=transitions)
    if resumed := checkpoints.restore():
        rng.bit_generator.state = resumed["explore_rng"]
        obs, global_step = resumed["obs"].numpy(), resumed["global_step"]
    progress = tqdm(total=cfg.total_timesteps, initial=global_step, unit="step", desc=f"dqn {cfg.env}", mininterval=1.0)
    while global_step < cfg.total_timesteps:
        epsilon = max(cfg.end_e, cfg.start_e - (cfg.start_e - cfg.end_e) * global_step / decay_steps)
        actions = q_network.act(obs)
        explore = rng.random(cfg.num_envs) < epsilon
        actions[explore] = rng.integers(n_actions, size=int(explore.sum()))
        next_obs, rewards, terminated, truncated, infos = vec_env.step(actions)
        done = terminated | truncated
        buffer.add(*transitions.push(obs, actions, rewards, envs.next_observations(next_obs, infos, done), terminated, done))
        obs = next_obs
        previous_step, global_step = global_step, global_step + cfg.num_envs
        logger.log_episodes(global_step, envs.finished_episodes(infos))
        progress.update(cfg.num_envs)

        if global_step > cfg.learning_starts and crossed(previous_step, global_step, cfg.train_frequency):
            start = time.perf_counter()
            for _ in range(cfg.gradient_steps):
                loss, q_taken = td_step(q_network, target_network, optimizer, buffer, cfg, global_step)
            logger.log(global_step, {"losses/td_loss": loss.item(), "losses/q_values": q_taken.mean().item(),
                                     "charts/epsilon": epsilon, "charts/episodic_return": logger.recent_return(),
                                     "charts/SPS": global_step / logger.elapsed(), "time/update_s": time.perf_counter() - start})
            progress.set_postfix(ret=f"{logger.recent_return():.1f}", eps=f"{epsilon:.2f}", refresh=False)
        if crossed(previous_step, global_step, cfg.target_network_frequency):
            with torch.no_grad():
                for target, online in zip(target_network.parameters(), q_network.parameters(), strict=True):
                    target.lerp_(online, cfg.tau)
        if evaluator.maybe_evaluate(global_step, q_network):
            break
        checkpoints.save_if_due(global_step, explore_rng=rng.bit_generator.state, obs=torch.from_numpy(obs), global_step=global_step)
    progress.close()
    vec_env.close()
    return q_network, global_step
