"""Experience stores: on-policy rollouts from vector envs, collected the same way for A2C, PPO and TRPO
(RolloutBuffer), and off-policy replay for DQN (ReplayBuffer, its prioritised variant, and the n-step
transitions that feed them)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from classic_rl import core, distributions, envs
from classic_rl.nets import ActorCritic


class RolloutBuffer:
    """`num_steps` x `num_envs` transitions from an ActorCritic and the GAE advantages over them.

    Per-step tensors are `[T, N]` (observations `[T, N, obs_dim]`, already normalised as the
    policy saw them; actions `[T, N, ...]` as the policy's distribution makes them). A time-limit cut adds gamma * V(final obs) to that step's reward, so the
    episode end is not treated as failure; `dones` marks every episode end.
    """

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, distribution: distributions.ActionDistribution):
        self.obs = torch.zeros(num_steps, num_envs, obs_dim)
        self.actions = distribution.empty_actions(num_steps, num_envs)
        self.logprobs, self.rewards, self.dones, self.values = (torch.zeros(num_steps, num_envs) for _ in range(4))

    @torch.no_grad()
    def collect(self, agent: ActorCritic, vec_env: gym.vector.VectorEnv, next_obs: Tensor, gamma: float) -> tuple[Tensor, list[dict[str, float]]]:
        """Fill the buffer starting from next_obs; returns the observation after the last step and the
        statistics of every episode that finished meanwhile (see envs.finished_episodes).

        Each step works in numpy, through views of the buffer's tensors: it moves a few [num_envs]
        rows, where numpy's indexing costs a tenth of torch's."""
        obs, actions, logprobs, rewards, dones, values = (x.numpy() for x in (self.obs, self.actions, self.logprobs,
                                                                              self.rewards, self.dones, self.values))
        finished, sample = [], agent.sampler()
        for step in range(len(obs)):
            obs[step] = next_obs.numpy()
            actions[step], logprobs[step], values[step] = sample(obs[step])
            raw_obs, reward, terminated, truncated, infos = vec_env.step(actions[step])
            rewards[step] = reward
            cut, final_obs = envs.truncation_bootstrap_obs(infos, terminated, truncated)
            if cut.size:
                rewards[step, cut] += gamma * agent.get_value(agent.normalize(final_obs)).numpy()
            dones[step] = terminated | truncated
            next_obs = agent.normalize(raw_obs, update=True)
            finished += envs.finished_episodes(infos)
        return next_obs, finished

    @torch.no_grad()
    def advantages(self, agent: ActorCritic, next_obs: Tensor, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        """(advantages, returns), both `[T * N]`: GAE along time, bootstrapped from V(next_obs)."""
        advantages, returns = core.gae(self.rewards.T, self.values.T, self.dones.T, agent.get_value(next_obs), gamma, gae_lambda)
        return advantages.T.reshape(-1), returns.T.reshape(-1)

    def flat(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(observations `[T * N, obs_dim]`, actions `[T * N, ...]`, log-probs, values `[T * N]`) in the advantages' order."""
        return self.obs.flatten(0, 1), self.actions.flatten(0, 1), self.logprobs.reshape(-1), self.values.reshape(-1)


class ReplayBuffer:
    """A ring buffer of transitions (s, a, R, s', discount) in preallocated numpy arrays, sampled uniformly.
    Actions are integers (DQN), or float32 vectors `[action_dim]` when action_dim is given (SAC, TD3)."""

    FIELDS = ("obs", "next_obs", "actions", "returns", "discounts")

    def __init__(self, capacity: int, obs_dim: int, seed: int, action_dim: int | None = None):
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = (np.zeros(capacity, dtype=np.int64) if action_dim is None
                        else np.zeros((capacity, action_dim), dtype=np.float32))
        self.returns = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.size, self.cursor = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, next_obs, actions, returns, discounts) -> np.ndarray:
        """Add a batch of transitions; returns the slots they were written to."""
        slots = (self.cursor + np.arange(len(actions))) % self.capacity
        if not len(slots):
            return slots
        self.obs[slots], self.next_obs[slots], self.actions[slots] = obs, next_obs, actions
        self.returns[slots], self.discounts[slots] = returns, discounts
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
