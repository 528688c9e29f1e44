"""Deep Q-Network (Mnih et al. 2015), with Double DQN (van Hasselt et al. 2016) and Dueling heads
(Wang et al. 2016) as options.

    for each env step:
        act epsilon-greedily (epsilon decays linearly); store (s, a, r, s', terminated) in the replay buffer
        (a time-limit cut stores the final observation as s' and terminated=0, so the target bootstraps)
        every train_frequency steps after learning_starts, gradient_steps times:
            y = r + gamma * (1 - terminated) * Q_target(s', argmax_a' Q_online(s', a') if double else argmax Q_target)
            minimise Huber(Q_online(s, a) - y)
        every target_network_frequency steps: Q_target <- tau * Q_online + (1 - tau) * Q_target (tau=1: hard copy)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from classic_rl import envs
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, check_finite, require_layer_widths, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import QNetwork
from classic_rl.training import ClassicConfig, Evaluator, recent_mean


@dataclass
class DQNConfig(ClassicConfig):
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
    max_grad_norm: float = config_field(10.0, "Global gradient-norm clip")
    hidden_sizes: list[int] = config_field([256, 256], "Hidden layer sizes")

    def __post_init__(self):
        super().__post_init__()
        require_positive(num_envs=self.num_envs, buffer_size=self.buffer_size, learning_rate=self.learning_rate,
                         batch_size=self.batch_size, gamma=self.gamma, train_frequency=self.train_frequency,
                         gradient_steps=self.gradient_steps, target_network_frequency=self.target_network_frequency,
                         tau=self.tau, exploration_fraction=self.exploration_fraction, max_grad_norm=self.max_grad_norm)
        if self.gamma > 1 or self.tau > 1 or not 0 <= self.end_e <= self.start_e <= 1 or self.learning_starts < 0:
            raise ConfigError("need --gamma <= 1, --tau <= 1, 0 <= --end-e <= --start-e <= 1 and --learning-starts >= 0")
        require_layer_widths(self.hidden_sizes)
        envs.check_spaces(self.env, "dqn")


class ReplayBuffer:
    """A ring buffer of transitions in preallocated numpy arrays."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")

    def __init__(self, capacity: int, obs_dim: int, seed: int):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.size, self.cursor = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, next_obs, actions, rewards, terminated) -> None:
        """Add a batch of transitions (one per env)."""
        for i in range(len(actions)):
            j = self.cursor
            self.obs[j], self.next_obs[j], self.actions[j] = obs[i], next_obs[i], actions[i]
            self.rewards[j], self.terminated[j] = rewards[i], terminated[i]
            self.cursor = (j + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def state_dict(self) -> dict:
        """Contents, position and sampling RNG, for checkpoints (tensors and strings only)."""
        arrays = {name: torch.from_numpy(getattr(self, name)[: self.size].copy()) for name in self.FIELDS}
        return {**arrays, "size": self.size, "cursor": self.cursor, "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.cursor = state["size"], state["cursor"]
        for name in self.FIELDS:
            getattr(self, name)[: self.size] = state[name].numpy()
        self.rng.bit_generator.state = json.loads(state["rng"])

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        idx = self.rng.integers(0, self.size, size=batch_size)
        return tuple(torch.from_numpy(a[idx]) for a in (self.obs, self.actions, self.rewards, self.next_obs, self.terminated))


def td_targets(q_target: QNetwork, q_online: QNetwork, rewards, next_obs, terminated, gamma: float, double: bool):
    """y = r + gamma * (1 - terminated) * Q_target(s', a*), a* from the online net (double) or the target net."""
    with torch.no_grad():
        next_q = q_target(next_obs)
        if double:
            best = q_online(next_obs).argmax(1, keepdim=True)
            next_value = next_q.gather(1, best).squeeze(1)
        else:
            next_value = next_q.max(1).values
        return rewards + gamma * (1.0 - terminated) * next_value


def train(cfg: DQNConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints) -> tuple[QNetwork, int]:
    obs_dim, n_actions = envs.check_spaces(cfg.env, "dqn")
    vec_env = envs.make_vec_env(cfg.env, cfg.num_envs)
    vec_env.action_space.seed(cfg.seed)
    q_network = QNetwork(obs_dim, n_actions, cfg.hidden_sizes, cfg.dueling)
    target_network = QNetwork(obs_dim, n_actions, cfg.hidden_sizes, cfg.dueling)
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=cfg.learning_rate)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    decay_steps = max(1.0, cfg.exploration_fraction * cfg.total_timesteps)

    obs, _ = vec_env.reset(seed=cfg.seed)
    returns, global_step = [], 0
    if resumed := checkpoints.restore(model=q_network, optimizer=optimizer, vec_env=envs.VecEnvState(vec_env),
                                      target_network=target_network, buffer=buffer):
        rng.bit_generator.state = json.loads(resumed["explore_rng"])
        obs, returns, global_step = resumed["obs"].numpy(), resumed["returns"], resumed["global_step"]
    progress = tqdm(total=cfg.total_timesteps, initial=global_step, unit="step", desc=f"dqn {cfg.env}", mininterval=1.0)
    while global_step < cfg.total_timesteps:
        epsilon = max(cfg.end_e, cfg.start_e - (cfg.start_e - cfg.end_e) * global_step / decay_steps)
        actions = q_network.act(obs)
        explore = rng.random(cfg.num_envs) < epsilon
        actions[explore] = rng.integers(n_actions, size=int(explore.sum()))
        next_obs, rewards, terminated, truncated, infos = vec_env.step(actions)
        stored_next = next_obs.copy()
        for i in np.flatnonzero(terminated | truncated):  # same-step autoreset: the true s' is in final_obs
            stored_next[i] = infos["final_obs"][i]
        buffer.add(obs, stored_next, actions, rewards, terminated)
        obs = next_obs
        returns += [r for r, _ in envs.finished_episodes(infos)]
        previous_step, global_step = global_step, global_step + cfg.num_envs
        progress.update(cfg.num_envs)

        if global_step > cfg.learning_starts and global_step // cfg.train_frequency > previous_step // cfg.train_frequency:
            start = time.perf_counter()
            for _ in range(cfg.gradient_steps):
                b_obs, b_actions, b_rewards, b_next, b_terminated = buffer.sample(cfg.batch_size)
                targets = td_targets(target_network, q_network, b_rewards, b_next, b_terminated, cfg.gamma, cfg.double_dqn)
                q_taken = q_network(b_obs).gather(1, b_actions[:, None]).squeeze(1)
                loss = F.smooth_l1_loss(q_taken, targets)
                check_finite(global_step, td_loss=loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(q_network.parameters(), cfg.max_grad_norm)
                optimizer.step()
            logger.log(global_step, {"losses/td_loss": loss.item(), "losses/q_values": q_taken.mean().item(),
                                     "charts/epsilon": epsilon, "charts/episodic_return": recent_mean(returns),
                                     "charts/SPS": global_step / logger.elapsed(), "time/update_s": time.perf_counter() - start})
            progress.set_postfix(ret=f"{recent_mean(returns):.1f}", eps=f"{epsilon:.2f}", refresh=False)
        if global_step // cfg.target_network_frequency > previous_step // cfg.target_network_frequency:
            with torch.no_grad():
                for target, online in zip(target_network.parameters(), q_network.parameters(), strict=True):
                    target.lerp_(online, cfg.tau)
        if evaluator.maybe_evaluate(global_step, q_network):
            break
        checkpoints.save_if_due(global_step, model=q_network, optimizer=optimizer, vec_env=envs.VecEnvState(vec_env),
                                target_network=target_network, buffer=buffer, explore_rng=json.dumps(rng.bit_generator.state),
                                obs=torch.from_numpy(obs), returns=returns, global_step=global_step)
    progress.close()
    vec_env.close()
    return q_network, global_step
