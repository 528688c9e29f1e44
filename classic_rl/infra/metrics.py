"""Metrics of a run: one JSON row per logged step in `metrics.jsonl`, the same in TensorBoard, and kept
in memory for plots and summaries."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from classic_rl.infra.run_folder import write_jsonl


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


class RunLogger:
    """Metrics to `metrics.jsonl` and TensorBoard, and the run's clock. Checkpointable: its state is the
    number of rows and the seconds elapsed, so a resumed run drops the rows logged after its checkpoint
    (by the run that crashed) and its clock continues."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.rows: list[dict[str, float]] = []
        self._path = run_dir / "metrics.jsonl"
        self._jsonl = open(self._path, "a")
        self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.start_time = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since training started (summed over resumed runs)."""
        return time.perf_counter() - self.start_time

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            self._tb.add_scalar(key, value, step)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._jsonl.close()
        self.rows = [json.loads(line) for line in self._path.read_text().splitlines()[: state["rows"]]]
        write_jsonl(self._path, self.rows)
        self._jsonl = open(self._path, "a")
        self.start_time = time.perf_counter() - state["elapsed"]

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of every logged row that has key."""
        rows = [r for r in self.rows if key in r and np.isfinite(r[key])]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()
