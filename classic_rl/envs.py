"""Gymnasium environments: checked construction, vector envs with same-step autoreset, evaluation."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
from gymnasium.vector import AutoresetMode

from classic_rl import maze  # noqa: F401 (registers Maze-v0)
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.run_folder import atomic_write

# a wrapper put between a vector env's episode statistics and the algorithm (e.g. one that replaces its rewards)
VecEnvWrapper = Callable[[gym.vector.VectorEnv], gym.vector.VectorEnv]


class Episode(NamedTuple):
    """One episode: observations `[T, obs_dim]`, actions `[T, ...]`, rewards `[T]`, whether it ended in a
    terminal state (False: cut by the time limit) and the observation it ended in."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    final_obs: np.ndarray

    def stats(self) -> dict[str, float]:
        """What RunLogger.log_episodes records: return, length and the last step's reward."""
        return {"return": float(self.rewards.sum()), "length": len(self.rewards), "final_reward": float(self.rewards[-1])}


def check_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of env_id, or a ConfigError naming close registered ids."""
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.pprint_registry()"
        raise ConfigError(f"unknown env id {env_id!r}: {hint}") from None


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """env_id, with real-valued actions clipped to the action space's bounds (see clip_box_actions)."""
    check_env_id(env_id)
    return clip_box_actions(gym.make(env_id, render_mode=render_mode))


def clip_box_actions(env: gym.Env) -> gym.Env:
    """A Box-action env wrapped in gymnasium's ClipAction: a Gaussian policy samples unbounded actions, and the
    env receives them clipped to its bounds, as CleanRL and SB3 do (the buffer keeps the unclipped sample, whose
    log-prob the policy gave). Other envs unchanged."""
    return gym.wrappers.ClipAction(env) if isinstance(env.action_space, gym.spaces.Box) else env


def require_discrete_actions(space: gym.Space, env_id: str, algo: str) -> int:
    """The number of actions, or a ConfigError if `algo` cannot act in this space."""
    if not isinstance(space, gym.spaces.Discrete):
        raise ConfigError(
            f"{algo} needs a discrete action space but {env_id} has {space}; "
            "accepted: envs with gymnasium.spaces.Discrete actions (e.g. CartPole-v1, LunarLander-v3)"
        )
    return int(space.n)


def require_box_observations(space: gym.Space, env_id: str, algo: str) -> int:
    """The flat observation size, or a ConfigError for observations an MLP cannot read."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ConfigError(f"{algo} needs a flat Box observation space but {env_id} has {space}")
    return int(space.shape[0])


def env_spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) of env_id, as the env declares them (a Box keeps its bounds)."""
    check_env_id(env_id)
    env = gym.make(env_id)
    env.close()
    return env.observation_space, env.action_space


def check_spaces(env_id: str, algo: str) -> tuple[int, int]:
    """(obs_dim, n_actions) for an MLP over discrete actions (DQN's Q-network, a softmax policy), or a ConfigError.
    (Algorithms that act through classic_rl/distributions.py use its policy_spaces instead.)"""
    observation_space, action_space = env_spaces(env_id)
    return require_box_observations(observation_space, env_id, algo), require_discrete_actions(action_space, env_id, algo)


class EpisodeRecorder(gym.Wrapper):
    """Remembers how the current episode began (its seed, or the env's RNG state) and every action
    since, so a resumed run can rebuild the env exactly: gymnasium envs are deterministic given
    their RNG and actions, and most (Box2D ones included) cannot be pickled."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.episode_start = {"seed": int(seed)} if seed is not None else {"rng": self.unwrapped.np_random.bit_generator.state}
        self.episode_actions: list = []
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.episode_actions.append(action.tolist() if hasattr(action, "tolist") else action)
        return self.env.step(action)

    def episode_state(self) -> str:
        return json.dumps({"start": self.episode_start, "actions": self.episode_actions})

    def replay(self) -> None:
        """Rebuild the episode that episode_state() described, set as `pending_episode`: same start,
        same actions. (An attribute rather than an argument, so vector envs can set one per copy.)"""
        state = json.loads(self.pending_episode)
        if "seed" in state["start"]:
            self.reset(seed=state["start"]["seed"])
        else:
            self.unwrapped.np_random.bit_generator.state = state["start"]["rng"]
            self.reset()
        box = isinstance(self.action_space, gym.spaces.Box)
        for action in state["actions"]:
            self.step(np.asarray(action, dtype=self.action_space.dtype) if box else action)  # the dtype the env saw


class VecEnvState:
    """A vector env from make_vec_env as a checkpointable object: its state is how each copy's current
    episode began and its actions since (see EpisodeRecorder), and the episode statistics, as JSON."""

    def __init__(self, vec_env: gym.vector.VectorEnv):
        self.vec_env = vec_env

    def state_dict(self) -> str:
        return json.dumps({"episodes": list(self.vec_env.unwrapped.call("episode_state")),
                           "episode_returns": self.vec_env.episode_returns.tolist(),
                           "episode_lengths": self.vec_env.episode_lengths.tolist(),
                           "episode_count": int(self.vec_env.episode_count)})

    def load_state_dict(self, state: str) -> None:
        """Replay each copy's current episode and restore the episode statistics."""
        state = json.loads(state)
        self.vec_env.unwrapped.set_attr("pending_episode", state["episodes"])
        self.vec_env.unwrapped.call("replay")
        self.vec_env.episode_returns[:] = state["episode_returns"]
        self.vec_env.episode_lengths[:] = state["episode_lengths"]
        self.vec_env.episode_count = state["episode_count"]


def scale_rewards(vec_env: gym.vector.VectorEnv, gamma: float) -> gym.vector.VectorEnv:
    """vec_env with SB3 VecNormalize's reward scaling, gymnasium's NormalizeReward: each reward divided by the running
    std of the discounted return (gamma). Wrapped outside make_vec_env's episode statistics, which stay the env's own."""
    return gym.wrappers.vector.NormalizeReward(vec_env, gamma=gamma)


class RewardScaleState:
    """scale_rewards' running statistics as a checkpointable object (a resumed run scales as the first would have)."""

    def __init__(self, vec_env: gym.wrappers.vector.NormalizeReward):
        self.vec_env = vec_env

    def state_dict(self) -> dict[str, Any]:
        rms = self.vec_env.return_rms
        return {"mean": float(rms.mean), "var": float(rms.var), "count": float(rms.count),
                "accumulated_reward": self.vec_env.accumulated_reward.tolist(), "prev_dones": self.vec_env._prev_dones.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rms = self.vec_env.return_rms
        rms.mean, rms.var, rms.count = np.float64(state["mean"]), np.float64(state["var"]), state["count"]
        self.vec_env.accumulated_reward[:] = state["accumulated_reward"]
        self.vec_env._prev_dones[:] = state["prev_dones"]


def make_vec_env(env_id: str, num_envs: int, asynchronous: bool = False) -> gym.vector.VectorEnv:
    """`num_envs` copies of env_id with same-step autoreset and episode statistics.

    Same-step autoreset (not gymnasium's default next-step) means every transition in a rollout
    is real: at an episode end the returned observation already belongs to the next episode and
    the final one is in `infos["final_obs"]`, which the caller needs to bootstrap truncations.
    Async runs each env in its own process, which only pays off for slow envs.
    """
    check_env_id(env_id)
    envs = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="async" if asynchronous else "sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        wrappers=[clip_box_actions, EpisodeRecorder],
    )
    return EpisodeStatistics(envs)


class EpisodeStatistics(gym.wrappers.vector.RecordEpisodeStatistics):
    """gymnasium's episode statistics, with each finished episode's last reward as episode["final_reward"]: the env's own,
    whatever scales the rewards outside (scale_rewards)."""

    def step(self, actions):
        obs, rewards, terminated, truncated, infos = super().step(actions)
        if "episode" in infos:
            infos["episode"]["final_reward"] = np.where(infos["_episode"], rewards, 0.0)
        return obs, rewards, terminated, truncated, infos


def truncation_bootstrap_obs(infos: dict, terminations: np.ndarray, truncations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of envs cut by a time limit (not terminated) this step, and their final observations."""
    cut = np.flatnonzero(truncations & ~terminations)
    if cut.size == 0:
        return cut, np.empty(0)
    return cut, np.stack([infos["final_obs"][i] for i in cut])


def next_observations(next_obs: np.ndarray, infos: dict, done: np.ndarray) -> np.ndarray:
    """The s' of each env's transition `[N, obs_dim]`: next_obs, except where an episode ended, whose env has
    already reset (same-step autoreset) and whose true last observation is in infos["final_obs"]."""
    stored = next_obs.copy()
    for i in np.flatnonzero(done):
        stored[i] = infos["final_obs"][i]
    return stored


def finished_episodes(infos: dict) -> list[dict[str, float]]:
    """{"return", "length", "final_reward"} of every episode that ended this step (EpisodeStatistics' figures: the
    last is this step's reward, e.g. LunarLander's +100 for coming to rest or -100 for a crash)."""
    if "episode" not in infos:
        return []
    episode = infos["episode"]
    return [{"return": float(episode["r"][i]), "length": int(episode["l"][i]), "final_reward": float(episode["final_reward"][i])}
            for i in np.flatnonzero(infos["_episode"])]


def play_episode(env: gym.Env, act: Callable[[np.ndarray], np.ndarray]) -> Episode:
    """One complete episode of a single env, acting with act(obs `[1, obs_dim]`) -> actions `[1, ...]`."""
    obs, _ = env.reset()
    observations, actions, rewards = [], [], []
    while True:
        action = act(obs[None])[0]
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            return Episode(np.array(observations), np.array(actions), np.array(rewards, dtype=np.float64), bool(terminated), obs)


def run_episodes(act: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(returns float64 `[episodes]`, lengths int `[episodes]`) of episodes run side by side, one per env copy.

    act maps a batch of observations `[episodes, obs_dim]` to actions `[episodes]`.
    Running the copies in lock-step batches the policy's forward passes, which is what makes
    frequent evaluation cheap. An env with its own array implementation (gymnasium's
    CartPoleVectorEnv: the same dynamics in numpy) steps all copies in one call; its autoreset
    mode does not matter here, since nothing after an episode's end is counted.
    """
    own = gym.spec(env_id).vector_entry_point is not None
    envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="vector_entry_point" if own else "sync",
                        vector_kwargs={} if own else {"autoreset_mode": AutoresetMode.SAME_STEP},
                        wrappers=None if own else [clip_box_actions])
    obs, _ = envs.reset(seed=seed)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        obs, rewards, terminations, truncations, _ = envs.step(act(obs))
        returns += rewards * running
        lengths += running
        running &= ~(terminations | truncations)
    envs.close()
    return returns, lengths


def play_episodes(act: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns `[episodes]` of `episodes` greedy episodes (see run_episodes)."""
    return run_episodes(act, env_id, episodes, seed)[0]


def check_renders_frames(env_id: str) -> None:
    """A ConfigError unless env_id renders frames (`rgb_array`), which record_gif needs."""
    env = make_env(env_id)
    modes = env.metadata.get("render_modes", [])
    env.close()
    if "rgb_array" not in modes:
        raise ConfigError(f"--video needs an env that renders frames (rgb_array); {env_id} renders {modes or 'nothing'}")


def frame_env(env_id: str) -> gym.Env:
    """env_id rendering rgb_array frames offscreen."""
    # offscreen frames need no display: SDL's dummy video driver, unless the user chose one (on a headless machine the default
    # printed "error: XDG_RUNTIME_DIR is invalid or not set", which reads like this project's one-line errors)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    return make_env(env_id, render_mode="rgb_array")


def write_gif(frames: list[np.ndarray], path: Path, fps: float, every: int = 1) -> None:
    """Frames `[H, W, 3]` as a looping animated GIF, keeping every `every`-th one, played at fps / every."""
    atomic_write(path, lambda tmp: iio.imwrite(tmp, np.stack(frames[::every]), extension=".gif", duration=1000 * every / fps, loop=0))


def record_gif(act: Callable[[np.ndarray], np.ndarray], env_id: str, seed: int, path: Path, max_frames: int = 1000) -> tuple[float, int]:
    """Play one episode of env_id with act(obs `[1, obs_dim]`) -> actions `[1]`, rendered into an animated GIF
    at half the env's frame rate (every other frame); returns (the episode's return, frames rendered)."""
    env = frame_env(env_id)
    obs, _ = env.reset(seed=seed)
    frames, total, done = [env.render()], 0.0, False
    while not done and len(frames) < max_frames:
        obs, reward, terminated, truncated, _ = env.step(act(np.asarray(obs)[None])[0])  # a discrete env's obs is an int
        total += float(reward)
        done = terminated or truncated
        frames.append(env.render())
    env.close()
    write_gif(frames, path, env.metadata.get("render_fps", 30), every=2)
    return total, len(frames)


def record_segment_gif(env_id: str, start: dict, actions: list, first_step: int, length: int, path: Path) -> None:
    """A clip of `length` steps of a past episode, as an animated GIF at the env's frame rate: the episode is replayed from
    how it began (`start`, EpisodeRecorder's) through its actions; steps after its end show its last frame, dimmed (the
    absorbing state a segment's reward model sees there)."""
    env = EpisodeRecorder(frame_env(env_id))
    env.pending_episode = json.dumps({"start": start, "actions": actions[:first_step]})
    env.replay()
    box = isinstance(env.action_space, gym.spaces.Box)
    frames = [env.render()]
    for action in actions[first_step: first_step + length - 1]:
        _, _, terminated, truncated, _ = env.step(np.asarray(action, dtype=env.action_space.dtype) if box else action)
        frames.append(env.render())
        if terminated or truncated:
            break
    frames += [frames[-1] // 2] * (length - len(frames))
    env.close()
    write_gif(frames, path, env.metadata.get("render_fps", 30))
