"""Metrics of a run: one JSON row per logged step in `metrics.jsonl` (the same in TensorBoard), one per
finished training episode in `episodes.jsonl`, both kept in memory for plots and summaries."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from classic_rl.infra.run_folder import read_jsonl, write_jsonl


class MeanStats:
    """Means of scalar stats accumulated over the minibatches of one update."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, stats: dict[str, Any]) -> None:
        for key, value in stats.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: total / self._counts[key] for key, total in self._sums.items()}


class JsonLines:
    """Rows appended to a JSON-lines file (opened on the first row) and kept in memory; checkpointable
    as its row count, so a resumed run drops the rows that the crashed run logged after its checkpoint."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, float]] = []
        self._file = None

    def append(self, rows: list[dict[str, float]]) -> None:
        if self._file is None:
            self._file = open(self.path, "a")
        self.rows += rows
        self._file.write("".join(json.dumps(row) + "\n" for row in rows))
        self._file.flush()

    def truncate(self, count: int) -> None:
        self.close()
        self.rows = read_jsonl(self.path)[:count]
        write_jsonl(self.path, self.rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunLogger:
    """Metrics to `metrics.jsonl` and TensorBoard, finished training episodes to `episodes.jsonl`, and the
    run's clock. Checkpointable: its state is the row counts and the seconds elapsed, so a resumed run
    drops what the crashed run logged after its checkpoint, and its clock continues."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._metrics = JsonLines(run_dir / "metrics.jsonl")
        self._episodes = JsonLines(run_dir / "episodes.jsonl")
        self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.start_time = time.perf_counter()

    @property
    def rows(self) -> list[dict[str, float]]:
        """Every metrics row so far: {"step": env step, name: value, ...}."""
        return self._metrics.rows

    @property
    def episodes(self) -> list[dict[str, float]]:
        """Every finished training episode so far: {"episode", "step", "return", "length"[, "final_reward"]}."""
        return self._episodes.rows

    def elapsed(self) -> float:
        """Seconds since training started (summed over resumed runs)."""
        return time.perf_counter() - self.start_time

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics.append([{"step": step, **{k: float(v) for k, v in metrics.items()}}])
        for key, value in metrics.items():
            self._tb.add_scalar(key, value, step)

    def log_episodes(self, step: int, episodes: list[dict[str, float]]) -> None:
        """Record training episodes that finished by env step `step` (dicts with "return", "length" and,
        where known, "final_reward", the reward of the last step)."""
        if episodes:
            first = len(self.episodes) + 1
            self._episodes.append([{"episode": first + i, "step": step, **{k: float(v) for k, v in e.items()}}
                                   for i, e in enumerate(episodes)])

    def recent_return(self, n: int = 20) -> float:
        """Mean return of the last n training episodes (NaN before the first), for progress bars and logs."""
        return float(np.mean([e["return"] for e in self.episodes[-n:]])) if self.episodes else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "episodes": len(self.episodes), "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._metrics.truncate(state["rows"])
        self._episodes.truncate(state["episodes"])
        self.start_time = time.perf_counter() - state["elapsed"]

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of every logged row that has key."""
        rows = [r for r in self.rows if key in r and np.isfinite(r[key])]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def close(self) -> None:
        self._metrics.close()
        self._episodes.close()
        self._tb.close()
