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

import json
import time
from dataclasses import dataclass
from typing import ClassVar

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
from classic_rl.training import ClassicConfig, Evaluator


@dataclass
class DQNConfig(ClassicConfig):
    value_based: ClassVar[bool] = True
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


class ReplayBuffer:
    """A ring buffer of transitions (s, a, R, s', discount) in preallocated numpy arrays, sampled uniformly."""

    FIELDS = ("obs", "next_obs", "actions", "returns", "discounts")

    def __init__(self, capacity: int, obs_dim: int, seed: int):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.returns = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.size, self.cursor = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, next_obs, actions, returns, discounts) -> np.ndarray:
        """Add a batch of transitions; returns the slots they were written to."""
        slots = (self.cursor + np.arange(len(actions))) % self.capacity
        for i, j in enumerate(slots):
            self.obs[j], self.next_obs[j], self.actions[j] = obs[i], next_obs[i], actions[i]
            self.returns[j], self.discounts[j] = returns[i], discounts[i]
        self.cursor = (self.cursor + len(actions)) % self.capacity
        self.size = min(self.size + len(actions), self.capacity)
        return slots

    def state_dict(self) -> dict:
        """Contents, position and sampling RNG, for checkpoints (tensors and strings only)."""
        arrays = {name: torch.from_numpy(getattr(self, name)[: self.size].copy()) for name in self.FIELDS}
        return {**arrays, "size": self.size, "cursor": self.cursor, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.cursor = state["size"], state["cursor"]
        for name in self.FIELDS:
            getattr(self, name)[: self.size] = state[name].numpy()
        self.rng.bit_generator.state = state["rng"]

    def sample(self, batch_size: int, beta: float = 1.0) -> tuple[np.ndarray, tuple[torch.Tensor, ...], torch.Tensor | None]:
        """(slots, (obs, actions, returns, next_obs, discounts), importance weights or None for uniform sampling)."""
        slots = self.rng.integers(0, self.size, size=batch_size)
        return slots, self.batch(slots), None

    def batch(self, slots: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a[slots]) for a in (self.obs, self.actions, self.returns, self.next_obs, self.discounts))

    def update_priorities(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        """Uniform replay keeps no priorities."""


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritised replay (Schaul et al. 2016): slot i is sampled with probability p_i / sum p,
    p_i = (|TD error| + eps)^alpha, from a sum tree (each node holds its children's sum; leaves are slots),
    so sampling and updating a batch take O(batch x log capacity) numpy work. New transitions get the
    largest priority seen, so each is likely replayed at least once."""

    def __init__(self, capacity: int, obs_dim: int, seed: int, alpha: float, eps: float):
        super().__init__(capacity, obs_dim, seed)
        self.alpha, self.eps, self.max_priority = alpha, eps, 1.0
        self.leaves = 1 << max(0, (capacity - 1).bit_length())
        self.tree = np.zeros(2 * self.leaves)  # node k's children are 2k and 2k + 1; the root is node 1

    def add(self, obs, next_obs, actions, returns, discounts) -> np.ndarray:
        slots = super().add(obs, next_obs, actions, returns, discounts)
        self.set_priorities(slots, np.full(len(slots), self.max_priority ** self.alpha))
        return slots

    def set_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        nodes = slots + self.leaves
        self.tree[nodes] = priorities
        while nodes[0] > 1:  # every leaf is at the same depth: up one level at a time to the root
            nodes = np.unique(nodes // 2)
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]

    def sample(self, batch_size: int, beta: float = 1.0) -> tuple[np.ndarray, tuple[torch.Tensor, ...], torch.Tensor]:
        total = self.tree[1]
        targets = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)  # one draw per stratum
        nodes = np.ones(batch_size, dtype=np.int64)
        while nodes[0] < self.leaves:  # walk down: left if the target falls within the left child's sum
            left = 2 * nodes
            go_right = targets > self.tree[left]
            targets = np.where(go_right, targets - self.tree[left], targets)
            nodes = np.where(go_right, left + 1, left)
        slots = np.minimum(nodes - self.leaves, self.size - 1)  # float round-off at the very end of the range
        probabilities = self.tree[slots + self.leaves] / total
        weights = (self.size * probabilities) ** -beta
        return slots, self.batch(slots), torch.as_tensor(weights / weights.max(), dtype=torch.float32)

    def update_priorities(self, slots: np.ndarray, td_errors: np.ndarray) -> None:
        raw = np.abs(td_errors) + self.eps
        self.max_priority = max(self.max_priority, float(raw.max()))
        self.set_priorities(slots, raw ** self.alpha)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tree": torch.from_numpy(self.tree.copy()), "max_priority": self.max_priority}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tree[:] = state["tree"].numpy()
        self.max_priority = state["max_priority"]


class NStepTransitions:
    """Per env, the (s, a, r) of the last steps not yet stored. Once n_step are waiting, or the episode
    ends, the oldest become transitions (s_t, a_t, R = sum_k gamma^k r_t+k, s_t+m, gamma^m, or 0 at a
    terminal state) for the m steps summed."""

    def __init__(self, num_envs: int, n_step: int, gamma: float):
        self.n_step, self.gamma = n_step, gamma
        self.pending: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(num_envs)]

    def push(self, obs, actions, rewards, next_obs, terminated, done) -> tuple[np.ndarray, ...]:
        """One vector-env step in; the transitions it completes out, as (obs, next_obs, actions, returns, discounts)."""
        ready = []
        for i, pending in enumerate(self.pending):
            pending.append((obs[i], int(actions[i]), float(rewards[i])))
            if done[i]:
                while pending:
                    ready.append(self.emit(pending, next_obs[i], bool(terminated[i])))
            elif len(pending) == self.n_step:
                ready.append(self.emit(pending, next_obs[i], False))
        columns = list(zip(*ready, strict=True)) if ready else [[]] * 5
        return tuple(np.array(c) for c in columns)

    def emit(self, pending: list, next_obs: np.ndarray, terminated: bool) -> tuple:
        """The transition of the oldest pending step (removed), bootstrapping from next_obs."""
        steps = len(pending)
        returns = sum(self.gamma**k * reward for k, (_, _, reward) in enumerate(pending))
        obs, action, _ = pending.pop(0)
        return obs, next_obs, action, returns, 0.0 if terminated else self.gamma**steps

    def state_dict(self) -> str:
        return json.dumps([[(o.tolist(), a, r) for o, a, r in pending] for pending in self.pending])

    def load_state_dict(self, state: str) -> None:
        self.pending = [[(np.array(o, dtype=np.float32), a, r) for o, a, r in pending] for pending in json.loads(state)]


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
        stored_next = next_obs.copy()
        for i in np.flatnonzero(terminated | truncated):  # same-step autoreset: the true s' is in final_obs
            stored_next[i] = infos["final_obs"][i]
        buffer.add(*transitions.push(obs, actions, rewards, stored_next, terminated, terminated | truncated))
        obs = next_obs
        previous_step, global_step = global_step, global_step + cfg.num_envs
        logger.log_episodes(global_step, envs.finished_episodes(infos, rewards))
        progress.update(cfg.num_envs)

        if global_step > cfg.learning_starts and global_step // cfg.train_frequency > previous_step // cfg.train_frequency:
            start = time.perf_counter()
            for _ in range(cfg.gradient_steps):
                loss, q_taken = td_step(q_network, target_network, optimizer, buffer, cfg, global_step)
            logger.log(global_step, {"losses/td_loss": loss.item(), "losses/q_values": q_taken.mean().item(),
                                     "charts/epsilon": epsilon, "charts/episodic_return": logger.recent_return(),
                                     "charts/SPS": global_step / logger.elapsed(), "time/update_s": time.perf_counter() - start})
            progress.set_postfix(ret=f"{logger.recent_return():.1f}", eps=f"{epsilon:.2f}", refresh=False)
        if global_step // cfg.target_network_frequency > previous_step // cfg.target_network_frequency:
            with torch.no_grad():
                for target, online in zip(target_network.parameters(), q_network.parameters(), strict=True):
                    target.lerp_(online, cfg.tau)
        if evaluator.maybe_evaluate(global_step, q_network):
            break
        checkpoints.save_if_due(global_step, explore_rng=rng.bit_generator.state, obs=torch.from_numpy(obs), global_step=global_step)
    progress.close()
    vec_env.close()
    return q_network, global_step
