"""What every training command shares: bad-input errors, seeding, the run folder and its logger,
atomic writes, plots, and a dataclass-generated CLI whose errors fit on one line."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


class ConfigError(ValueError):
    """Bad user input. Its message says what was wrong and what is accepted; CLIs print it on
    one line and exit with status 2."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (envs are seeded through reset(seed=...))."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- files --------------------------------------------------------------------------------------

def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename onto path, so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a run folder is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create the run folder, refusing to clobber an earlier run unless overwrite is set.

    Checks that the folder is writable before any training starts.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run dir {path} is a file; give a folder path")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError(f"run dir {path} already holds files; pass --overwrite to replace them or choose another --run-dir")
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run dir {path} is not writable: {err.strerror}") from None
    return path


def start_run(cfg: Any, resume: bool = False, **extra_config: Any) -> Path:
    """Open cfg.run_dir for a run (a fresh folder unless resuming), write config.json (cfg's fields
    plus extra_config), and set torch threads and all seeds. cfg needs run_dir, overwrite,
    torch_threads and seed."""
    run_dir = Path(cfg.run_dir) if resume else prepare_run_dir(cfg.run_dir, overwrite=cfg.overwrite)
    write_json(run_dir / "config.json", {**extra_config, **dataclasses.asdict(cfg)})
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    return run_dir


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
    """Metrics to `metrics.jsonl` (one JSON row per call) and TensorBoard, kept in memory for plots."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

        self.run_dir = run_dir
        self.rows: list[dict[str, float]] = []
        self._jsonl = open(run_dir / "metrics.jsonl", "a")
        self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.start_time = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the logger was created (the start of training)."""
        return time.perf_counter() - self.start_time

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            self._tb.add_scalar(key, value, step)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of every logged row that has key."""
        rows = [r for r in self.rows if key in r and np.isfinite(r[key])]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def plot_lines(path: Path, panels: Sequence[tuple[str, str, dict[str, tuple[Sequence[float], Sequence[float]]]]],
               title: str = "") -> None:
    """One PNG with a panel per (xlabel, ylabel, {label: (x, y)}); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (xlabel, ylabel, lines) in zip(axes[0], panels, strict=True):
        for label, (x, y) in lines.items():
            ax.plot(x, y, label=label, marker="o" if len(x) < 30 else None, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_scatter(path: Path, x: Sequence[float], y: Sequence[float], xlabel: str, ylabel: str, title: str = "") -> None:
    """A scatter plot PNG (e.g. proxy reward against gold reward); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(x, y, s=12, alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------------

def _one_line_parser_errors(parser_cls: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    class Parser(parser_cls):
        def error(self, message: str):  # argparse prints the whole usage block; one line is enough
            raise ConfigError(f"{message} (see --help)")

    return Parser


def require_positive(**values: float) -> None:
    """ConfigError for the first value that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def config_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (list defaults are copied per instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def load_config_file(path: str) -> dict[str, Any]:
    """Field values from a JSON or YAML file (e.g. a run's config.json)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read --config {path}: {err.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except ValueError as err:  # json and yaml parse errors both derive from ValueError
        raise ConfigError(f"--config {path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of field names to values")
    return values


def parse_dataclass_args(config_cls: type, argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None,
                         description: str = "") -> Any:
    """Build config_cls from the command line: every field is a flag (`--field-name`) with its help.

    Precedence: explicit flags > `--config FILE` > `defaults` (e.g. a preset) > the dataclass.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _one_line_parser_errors(HfArgumentParser)(config_cls, description=description)
    parser.add_argument("--config", default=None, help="JSON or YAML file of field values (flags override it)")
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    merged = dict(defaults or {})
    config_path = parser.parse_known_args(argv)[0].config if "--config" in argv else None
    if config_path:
        file_values = load_config_file(config_path)
        unknown = sorted(set(file_values) - field_names)
        if unknown:
            raise ConfigError(f"--config {config_path} has unknown fields {unknown}; accepted: {', '.join(sorted(field_names))}")
        merged.update(file_values)
    parser.set_defaults(**merged)
    config, _namespace_with_config_flag, unknown = parser.parse_args_into_dataclasses(
        argv, return_remaining_strings=True, look_for_args_file=False)
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    return config


def cli(main: Callable[[], Any]) -> Callable[[], None]:
    """Run a script's main: a ConfigError becomes `error: ...` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped() -> None:
        try:
            main()
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapped
