"""Tabular methods on discrete-state envs (Sutton & Barto, chapters 4 and 6).

Planning, from the env's transition model P[s][a] = [(prob, next_state, reward, terminated), ...]:
    value iteration:   V(s) <- max_a sum_s' p (r + gamma * V(s') * (1 - done))      until max change < theta
    policy iteration:  evaluate pi exactly (iterate to theta), then pi(s) <- argmax_a Q(s, a); repeat until stable

Learning, from experience with an epsilon-greedy behaviour policy (epsilon decays linearly):
    Q-learning (off-policy):  Q(s,a) += alpha * (r + gamma * max_a' Q(s',a') * (1 - terminated) - Q(s,a))
    SARSA (on-policy):        Q(s,a) += alpha * (r + gamma * Q(s',a')          * (1 - terminated) - Q(s,a))
A time-limit truncation is not terminal: the target still bootstraps from s'.

Continuous observations (CartPole) become table rows through `--discretize-bins`: each dimension
is clipped to [obs_low, obs_high] and cut into equal-width bins. The discretisation lives in the
saved QTable rather than in an env wrapper (gymnasium's DiscretizeObservation needs finite
bounds, which CartPole's velocities lack), so the saved policy acts on raw observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch

from classic_rl import envs
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import QTable
from classic_rl.training import ClassicConfig, Evaluator

Transitions = dict[int, dict[int, list[tuple[float, int, float, bool]]]]


@dataclass
class TabularConfig(ClassicConfig):
    deterministic_policy: ClassVar[bool] = True
    env: str = config_field("Taxi-v4", "Gymnasium env id with Discrete observations and actions")
    total_timesteps: int = config_field(200_000, "Env steps (learning methods) or sweeps are not counted (planning)")
    eval_every: int = config_field(20_000, "Evaluate every this many env steps")
    eval_episodes: int = config_field(100, "Greedy episodes per evaluation (run side by side)")
    gamma: float = config_field(0.99, "Discount factor")
    learning_rate: float = config_field(0.1, "Step size alpha of the TD update")
    epsilon_start: float = config_field(1.0, "Initial exploration rate")
    epsilon_end: float = config_field(0.05, "Final exploration rate")
    exploration_fraction: float = config_field(0.5, "Share of total_timesteps over which epsilon decays linearly")
    theta: float = config_field(1e-10, "Planning stops when no value changes by more than this")
    discretize_bins: list[int] = config_field([], "Bins per observation dimension, for Box observations (e.g. CartPole)")
    obs_low: list[float] = config_field([], "Lower clip of each observation dimension (default: the space's bounds)")
    obs_high: list[float] = config_field([], "Upper clip of each observation dimension (default: the space's bounds)")

    def __post_init__(self):
        super().__post_init__()
        require_positive(gamma=self.gamma, learning_rate=self.learning_rate, theta=self.theta,
                         exploration_fraction=self.exploration_fraction)
        if self.gamma > 1 or not 0 <= self.epsilon_end <= self.epsilon_start <= 1:
            raise ConfigError("need --gamma <= 1 and 0 <= --epsilon-end <= --epsilon-start <= 1")
        self.make_table("tabular methods")

    def make_table(self, algo: str) -> QTable:
        """An all-zero table for this env (discretising Box observations), or a ConfigError naming the fix."""
        env = envs.make_env(self.env)
        space, n_actions = env.observation_space, envs.require_discrete_actions(env.action_space, self.env, algo)
        env.close()
        if isinstance(space, gym.spaces.Discrete):
            return QTable(int(space.n), n_actions)
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1 or not self.discretize_bins:
            raise ConfigError(f"{algo} need a Discrete observation space but {self.env} has {space}; accepted: e.g. "
                              "Taxi-v4, FrozenLake-v1, or a flat Box space with --discretize-bins (one count per dimension)")
        dim = space.shape[0]
        low = self.obs_low or space.low.tolist()
        high = self.obs_high or space.high.tolist()
        if not len(self.discretize_bins) == len(low) == len(high) == dim:
            raise ConfigError(f"{self.env} observations have {dim} dimensions; give {dim} values to each of "
                              "--discretize-bins, --obs-low and --obs-high")
        if min(self.discretize_bins) <= 0 or not np.all(np.isfinite(low + high)) or not np.all(np.array(low) < np.array(high)):
            raise ConfigError(f"need positive --discretize-bins and finite --obs-low < --obs-high for {self.env} "
                              f"(its space is {space}); got bins {self.discretize_bins}, low {low}, high {high}")
        return QTable(int(np.prod(self.discretize_bins)), n_actions, list(self.discretize_bins), low, high)


def transition_model(env_id: str) -> Transitions:
    env = envs.make_env(env_id)
    model = getattr(env.unwrapped, "P", None)
    env.close()
    if model is None:
        raise ConfigError(f"{env_id} exposes no transition model (env.unwrapped.P); planning needs one, e.g. FrozenLake-v1 or Taxi-v4")
    return model


def q_from_v(model: Transitions, v: np.ndarray, gamma: float, n_actions: int) -> np.ndarray:
    """One-step lookahead Q(s, a) = sum_s' p (r + gamma V(s') (1 - done)): `[S, A]`."""
    q = np.zeros((len(v), n_actions))
    for s, actions in model.items():
        for a, outcomes in actions.items():
            q[s, a] = sum(p * (r + gamma * v[s2] * (not done)) for p, s2, r, done in outcomes)
    return q


def value_iteration(model: Transitions, n_actions: int, gamma: float, theta: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(V*, greedy policy, sweeps) by synchronous Bellman optimality backups."""
    v = np.zeros(len(model))
    for sweep in range(1, 100_000):
        q = q_from_v(model, v, gamma, n_actions)
        new_v = q.max(1)
        delta, v = np.abs(new_v - v).max(), new_v
        if delta < theta:
            return v, q.argmax(1), sweep
    raise RuntimeError("value iteration did not converge; is gamma < 1 or every policy terminating?")


def policy_iteration(model: Transitions, n_actions: int, gamma: float, theta: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(V_pi, pi, improvement rounds): iterative policy evaluation, then greedy improvement, until stable."""
    policy = np.zeros(len(model), dtype=np.int64)
    v = np.zeros(len(model))
    for rounds in range(1, 10_000):
        while True:  # evaluate the current policy
            new_v = q_from_v(model, v, gamma, n_actions)[np.arange(len(v)), policy]
            delta, v = np.abs(new_v - v).max(), new_v
            if delta < theta:
                break
        improved = q_from_v(model, v, gamma, n_actions).argmax(1)
        if np.array_equal(improved, policy):
            return v, policy, rounds
        policy = improved
    raise RuntimeError("policy iteration did not stabilise")


def _plan(solver, cfg: TabularConfig, logger: RunLogger) -> tuple[QTable, int]:
    table = cfg.make_table("planning methods")
    n_actions = table.q.shape[1]
    model = transition_model(cfg.env)
    v, policy, iterations = solver(model, n_actions, cfg.gamma, cfg.theta)
    table.q.copy_(torch.as_tensor(q_from_v(model, v, cfg.gamma, n_actions)))
    logger.log(0, {"planning/iterations": iterations, "planning/v_start": float(v[0])})
    return table, 0


def train_value_iteration(cfg: TabularConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[QTable, int]:
    return _plan(value_iteration, cfg, logger)


def train_policy_iteration(cfg: TabularConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[QTable, int]:
    return _plan(policy_iteration, cfg, logger)


def _td_control(cfg: TabularConfig, logger: RunLogger, evaluator: Evaluator, on_policy: bool) -> tuple[QTable, int]:
    table = cfg.make_table("tabular methods")
    n_actions = table.q.shape[1]
    q = table.q.numpy()  # shares memory with the buffer: updates land in the saved table
    env = envs.make_env(cfg.env)
    rng = np.random.default_rng(cfg.seed)
    decay_steps = max(1, int(cfg.exploration_fraction * cfg.total_timesteps))

    def epsilon_greedy(state: int, step: int) -> int:
        epsilon = max(cfg.epsilon_end, cfg.epsilon_start - (cfg.epsilon_start - cfg.epsilon_end) * step / decay_steps)
        return int(rng.integers(n_actions)) if rng.random() < epsilon else int(q[state].argmax())

    def observe(obs) -> int:
        return int(table.state_index(np.asarray(obs)[None])[0])

    state = observe(env.reset(seed=cfg.seed)[0])
    action = epsilon_greedy(state, 0)
    episode_return, episode_start = 0.0, 0
    for step in range(1, cfg.total_timesteps + 1):
        next_obs, reward, terminated, truncated, _ = env.step(action)
        next_state = observe(next_obs)
        next_action = epsilon_greedy(next_state, step)
        bootstrap = q[next_state, next_action] if on_policy else q[next_state].max()
        q[state, action] += cfg.learning_rate * (reward + cfg.gamma * bootstrap * (not terminated) - q[state, action])
        episode_return += reward
        state, action = next_state, next_action
        if terminated or truncated:
            logger.log_episodes(step, [{"return": episode_return, "length": step - episode_start, "final_reward": reward}])
            episode_return, episode_start = 0.0, step
            state = observe(env.reset()[0])
            action = epsilon_greedy(state, step)
        if step % 1000 == 0:
            logger.log(step, {"charts/episodic_return": logger.recent_return(100)})
        if evaluator.maybe_evaluate(step, table):
            break
    env.close()
    return table, step


def train_q_learning(cfg: TabularConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[QTable, int]:
    return _td_control(cfg, logger, evaluator, on_policy=False)


def train_sarsa(cfg: TabularConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[QTable, int]:
    return _td_control(cfg, logger, evaluator, on_policy=True)
