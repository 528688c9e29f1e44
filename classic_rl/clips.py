"""Clips of behaviour for preference labels (classic_rl/preferences.py): segments cut from the policy's recent steps,
replayed as GIFs for a person, and who judges them: a simulated labeller that knows the env's return, or a person at
the labelling page (classic_rl/labelling_page.py)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from classic_rl import envs
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.run_folder import append_jsonl_fsynced, read_jsonl, utc_now
from classic_rl.labelling_page import LabellingPage


@dataclass(frozen=True)
class Segments:
    """S clips of L steps: reward-model inputs `[S, L, F]` (observation, then the action one-hot or as it is), which
    steps are real `[S, L]` (False: the absorbing state after a termination), the env's rewards `[S, L]` (0 there), and
    where each began `[S, 2]`: its episode's id and the step of that episode (to replay it as a clip)."""

    features: Tensor
    real: Tensor
    gold_rewards: Tensor
    origins: Tensor

    @property
    def gold_returns(self) -> Tensor:
        return self.gold_rewards.sum(-1)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index) -> Segments:
        return Segments(*(field[index] for field in astuple_shallow(self)))

    @staticmethod
    def empty(length: int, feature_dim: int) -> Segments:
        return Segments(torch.zeros(0, length, feature_dim), torch.zeros(0, length, dtype=torch.bool), torch.zeros(0, length),
                        torch.zeros(0, 2, dtype=torch.long))

    @staticmethod
    def cat(parts: list[Segments]) -> Segments:
        return Segments(*(torch.cat(fields) for fields in zip(*map(astuple_shallow, parts), strict=True)))


def astuple_shallow(segments: Segments) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return segments.features, segments.real, segments.gold_rewards, segments.origins


def step_features(obs: np.ndarray, actions: np.ndarray, action_space: gym.Space) -> np.ndarray:
    """Reward-model inputs `[N, F]` of N (s, a): the observation, then the action one-hot (discrete) or as it is."""
    if isinstance(action_space, gym.spaces.Discrete):
        actions = np.eye(action_space.n, dtype=np.float32)[np.asarray(actions, dtype=np.int64)]
    return np.concatenate([obs, np.asarray(actions, dtype=np.float32).reshape(len(obs), -1)], axis=1, dtype=np.float32)


class SegmentPool:
    """The last `capacity` steps of each of N envs, oldest first, and segments cut from them."""

    FIELDS = ("features", "rewards", "terminated", "truncated", "origins")

    def __init__(self, capacity: int, num_envs: int, feature_dim: int):
        self.features = np.zeros((capacity, num_envs, feature_dim), dtype=np.float32)
        self.origins = np.zeros((capacity, num_envs, 2), dtype=np.int64)  # episode id, step within the episode
        self.rewards = np.zeros((capacity, num_envs), dtype=np.float32)
        self.terminated, self.truncated = np.zeros((capacity, num_envs), dtype=bool), np.zeros((capacity, num_envs), dtype=bool)
        self.capacity, self.cursor, self.filled = capacity, 0, 0

    def add(self, features: np.ndarray, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
            origins: np.ndarray) -> None:
        """One step of every env: features `[N, F]`, the env's rewards and episode ends `[N]`, (episode id, step) `[N, 2]`."""
        row = self.cursor
        self.features[row], self.rewards[row], self.terminated[row], self.truncated[row] = features, rewards, terminated, truncated
        self.origins[row] = origins
        self.cursor, self.filled = (row + 1) % self.capacity, min(self.filled + 1, self.capacity)

    def sample(self, count: int, length: int, rng: np.random.Generator) -> Segments:
        """Up to `count` segments at uniform random places. A step after its episode's termination is absorbing; a
        segment that a time limit cuts before its last step is dropped (the return it would have had is unknown)."""
        if self.filled < length:
            raise ConfigError(f"the pool holds {self.filled} steps per env, fewer than a segment's {length}")
        env = rng.integers(0, self.features.shape[1], size=2 * count)
        start = rng.integers(0, self.filled - length + 1, size=2 * count)
        rows = (self.cursor - self.filled + start[:, None] + np.arange(length)) % self.capacity  # [2 count, L]
        ended = self.terminated[rows, env[:, None]] | self.truncated[rows, env[:, None]]
        real = np.concatenate([np.ones((len(rows), 1), bool), np.cumsum(ended, 1)[:, :-1] == 0], axis=1)
        cut = (real & self.truncated[rows, env[:, None]] & ~self.terminated[rows, env[:, None]])[:, :-1].any(1)
        keep = np.flatnonzero(~cut)[:count]
        rows, env, real = rows[keep], env[keep], real[keep]
        return Segments(torch.from_numpy(self.features[rows, env[:, None]]), torch.from_numpy(real),
                        torch.from_numpy(self.rewards[rows, env[:, None]] * real), torch.from_numpy(self.origins[rows[:, 0], env]))

    def real_features(self) -> Tensor:
        """Every (s, a) in the pool `[filled * N, F]`."""
        rows = (self.cursor - self.filled + np.arange(self.filled)) % self.capacity
        return torch.from_numpy(self.features[rows].reshape(-1, self.features.shape[-1]))

    def state_dict(self) -> dict[str, Any]:
        return {**{name: torch.from_numpy(getattr(self, name).copy()) for name in self.FIELDS},
                "cursor": self.cursor, "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.FIELDS:
            getattr(self, name)[:] = state[name].numpy()
        self.cursor, self.filled = state["cursor"], state["filled"]


class SimulatedClipLabeller:
    """Prefers the segment with the higher env return (equal returns: a tie), Boltzmann-rational at temperature > 0
    (P[first] = sigmoid((R1 - R2) / T)); then each preference is flipped with probability `noise`."""

    quit = False  # it never stops answering

    def __init__(self, noise: float, temperature: float, rng: np.random.Generator):
        self.noise, self.temperature, self.rng = noise, temperature, rng

    def judge(self, first: Segments, second: Segments, predicted: Tensor | None = None, labels_before: int = 0) -> np.ndarray:
        """mu `[P]`: 1 (first better), 0 (second better) or 0.5 (a tie). (predicted and labels_before, what a person at
        the page is shown, do not sway it.)"""
        margin = (first.gold_returns - second.gold_returns).double().numpy()
        if self.temperature > 0:
            mu = (self.rng.random(len(margin)) < 1 / (1 + np.exp(-margin / self.temperature))).astype(float)
        else:
            mu = np.where(np.abs(margin) < 1e-6, 0.5, (margin > 0).astype(float))
        flip = (self.rng.random(len(mu)) < self.noise) & (mu != 0.5)
        return np.where(flip, 1 - mu, mu)

    def close(self, message: str) -> None:
        """Nothing to stop."""


class EpisodeTracker:
    """Which episode each env is in and how far along (every pool step's origin); with keep_actions (labeller web), also
    how each episode began and its actions, so that a segment can be replayed as a clip (envs.record_segment_gif)."""

    def __init__(self, num_envs: int, keep_actions: bool):
        self.ids, self.steps, self.next_id = np.arange(num_envs), np.zeros(num_envs, dtype=np.int64), num_envs
        self.keep_actions = keep_actions
        self.starts: dict[int, dict] = {}
        self.actions: dict[int, list] = {}

    def origins(self) -> np.ndarray:
        """(episode id, step within it) of each env's current step `[N, 2]`."""
        return np.stack([self.ids, self.steps], 1)

    def begin(self, env_indices, starts: tuple[dict, ...]) -> None:
        """The episodes now running in env_indices began as starts[i] (EpisodeRecorder.episode_start)."""
        for i in env_indices:
            self.starts[int(self.ids[i])], self.actions[int(self.ids[i])] = starts[i], []

    def record(self, actions: np.ndarray) -> None:
        for episode, action in zip(self.ids.tolist(), actions, strict=True):
            self.actions[episode].append(action.tolist() if isinstance(action, np.ndarray) else int(action))

    def advance(self, done: np.ndarray) -> None:
        """One step on; the envs whose episode ended start a new one (same-step autoreset)."""
        self.steps += 1
        ended = np.flatnonzero(done)
        self.ids[ended], self.steps[ended] = self.next_id + np.arange(len(ended)), 0
        self.next_id += len(ended)

    def forget_all_but(self, episode_ids: set[int]) -> None:
        for episode in [e for e in self.starts if e not in episode_ids]:
            del self.starts[episode], self.actions[episode]

    def state_dict(self) -> dict[str, Any]:
        return {"ids": torch.from_numpy(self.ids.copy()), "steps": torch.from_numpy(self.steps.copy()), "next_id": self.next_id,
                "episodes": json.dumps({e: [self.starts[e], self.actions[e]] for e in self.starts})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ids, self.steps, self.next_id = state["ids"].numpy().copy(), state["steps"].numpy().copy(), state["next_id"]
        episodes = json.loads(state["episodes"])
        self.starts = {int(e): start for e, (start, _) in episodes.items()}
        self.actions = {int(e): actions for e, (_, actions) in episodes.items()}


class WebClipLabeller:
    """A person at the labelling page (classic_rl/labelling_page.py): each pair's segments replayed and rendered as GIF
    clips side by side, answered 1 / 2 / t / s / q. Every answer is appended to answers.jsonl and fsynced before the page
    says it is saved; a resumed run, which draws the same pairs, takes the answers already there instead of asking
    again. q ends labelling: training goes on with the labels given so far."""

    ANSWERS = {"1": 1.0, "2": 0.0, "tie": 0.5, "skip": math.nan}

    def __init__(self, env_id: str, segment_length: int, max_labels: int, port: int, run_dir: Path, episodes: EpisodeTracker):
        self.env_id, self.segment_length, self.max_labels = env_id, segment_length, max_labels
        self.episodes, self.clips = episodes, run_dir / "clips"
        self.clips.mkdir(exist_ok=True)
        self.answers = LabelLog(run_dir / "answers.jsonl")
        self.page = LabellingPage(port, media_dir=self.clips, title=f"rlhf-toy: which clip of {env_id} is better?")
        print(f"labelling page: {self.page.url} (keys 1 / 2 / t / s / q); answers go to {self.answers.path}", flush=True)
        self.quit, self.agreed = False, []

    def judge(self, first: Segments, second: Segments, predicted: Tensor, labels_before: int) -> np.ndarray:
        """mu `[P]` as SimulatedClipLabeller's, NaN for a skipped pair and for every pair after a quit."""
        mu = np.full(len(first), math.nan)
        for i in range(len(first)):
            key = json.dumps([first.origins[i].tolist(), second.origins[i].tolist()])
            answer = self.answers.saved.get(key) or self.ask(first[i], second[i], key, f"pair {i + 1} of {len(first)} this round "
                                                             f"({labels_before} labels so far, {self.max_labels} wanted)")
            if answer == "quit":
                self.quit = True
                break
            mu[i] = self.ANSWERS[answer]
            if answer in ("1", "2"):
                self.agreed.append((predicted[i].item() > 0.5) == (answer == "1"))
        return mu

    def ask(self, first: Segments, second: Segments, key: str, progress: str) -> str:
        names = [f"{key_name(key)}-{side}.gif" for side in (1, 2)]
        for segment, name in zip((first, second), names, strict=True):
            episode, step = segment.origins.tolist()
            envs.record_segment_gif(self.env_id, self.episodes.starts[episode], self.episodes.actions[episode], step,
                                    self.segment_length, self.clips / name)
        recent = self.agreed[-20:]
        agreement = f"the reward model agreed with {sum(recent)} of your last {len(recent)} preferences" if recent else ""
        question = {"kind": "clips", "first": names[0], "second": names[1], "progress": progress, "agreement": agreement,
                    "criterion": f"which clip shows the better {self.env_id} agent?"}
        return self.page.label(question, save=lambda answer: self.answers.append({"key": key, "answer": answer,
                                                                                  "labelled_at": utc_now()}))

    def close(self, message: str) -> None:
        self.page.finish(message)


def key_name(key: str) -> str:
    """A file name for a pair's key."""
    return hashlib.sha1(key.encode()).hexdigest()[:12]


class LabelLog:
    """A person's answers, appended and fsynced one by one, and those already there (key -> answer)."""

    def __init__(self, path: Path):
        self.path = path
        rows = read_jsonl(path) if path.exists() else []
        self.saved = {row["key"]: row["answer"] for row in rows}

    def append(self, row: dict[str, Any]) -> None:
        append_jsonl_fsynced(self.path, row)
        self.saved[row["key"]] = row["answer"]
