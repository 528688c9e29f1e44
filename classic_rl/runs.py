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
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args, get_type_hints

import numpy as np
import torch


class ConfigError(ValueError):
    """Bad user input. Its message says what was wrong and what is accepted; CLIs print it on
    one line and exit with status 2."""


class NonFiniteError(FloatingPointError):
    """A loss, reward or gradient norm became NaN or inf; the message names the step and the quantity."""


class TrainingInterrupted(Exception):
    """Ctrl-C arrived; raised at the next safe point, after a checkpoint was saved."""


class StopRequest:
    """Ctrl-C as a request, while the `with` block runs: the first sets `requested` (the training
    loop then saves a checkpoint at its next consistent point and stops); a second stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def check_finite(step: int | None, **values: Any) -> None:
    """NonFiniteError naming the step (when given) and the first value (float or tensor) that is NaN or inf."""
    for name, value in values.items():
        if not bool(torch.isfinite(torch.as_tensor(value)).all()):
            where = f"step {step}: " if step is not None else ""
            raise NonFiniteError(f"{where}non-finite {name.replace('_', ' ')} ({value!r:.40})")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (envs are seeded through reset(seed=...))."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy (global) and torch RNG states, in types torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state(legacy=False)
    return {"python": json.dumps(random.getstate()), "numpy": json.dumps({**np_state, "state": {
        k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in np_state["state"].items()}}),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    np_state = json.loads(state["numpy"])
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])


class Checkpoints:
    """`checkpoints/step-N/` folders of a run: each written under a temporary name and renamed when
    complete (so a crash never leaves a half checkpoint that --resume would pick), newest `keep` kept."""

    def __init__(self, run_dir: str | Path, keep: int = 2):
        self.root, self.keep = Path(run_dir) / "checkpoints", keep

    def save(self, step: int, write: Callable[[Path], None], stop: StopRequest | None = None) -> Path:
        """Call write(folder) on a fresh temporary folder, then publish it as step-{step}. If `stop`
        holds a Ctrl-C request, the run then ends with TrainingInterrupted."""
        tmp, final = self.root / f".step-{step}.tmp", self.root / f"step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old)
        if stop is not None and stop.requested:
            raise self.interrupted(step)
        return final

    def interrupted(self, step: int) -> TrainingInterrupted:
        """The exception that ends a run stopped by Ctrl-C after its checkpoint at step was saved."""
        return TrainingInterrupted(f"stopped at step {step}; saved {self.root / f'step-{step}'}; continue with --resume")

    def complete(self) -> list[Path]:
        return sorted(self.root.glob("step-*"), key=lambda p: int(p.name[5:]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None


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


MIN_FREE_MB = 50


def prepare_run_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Create the run folder, refusing to clobber an earlier run unless overwrite is set.

    Checks that the folder is writable and its disk not full before any training starts.
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
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < MIN_FREE_MB:
        raise ConfigError(f"only {free_mb:.0f} MB free on the disk of run dir {path}; free at least {MIN_FREE_MB} MB "
                          "or choose another --run-dir")
    return path


def start_run(cfg: Any, main_process: bool = True, **extra_config: Any) -> tuple[Path, Path | None]:
    """Open cfg.run_dir for a run, write config.json (cfg's fields plus extra_config), and set
    torch threads and all seeds. Returns (run folder, checkpoint to resume from or None).

    A fresh run gets a new, checked folder; with cfg.resume the newest complete checkpoint of the
    existing run is returned instead. cfg is a RunFields with run_dir, torch_threads and seed. The
    other processes of a multi-process run (main_process=False) only find the checkpoint and set
    threads and seeds.
    """
    resume = cfg.resume
    checkpoint = None
    if resume:
        if cfg.overwrite:
            raise ConfigError("--resume continues the run in --run-dir and --overwrite deletes it; pass one of them")
        checkpoint = Checkpoints(cfg.run_dir).latest()
        if checkpoint is None:
            raise ConfigError(f"--resume found no checkpoint in {Path(cfg.run_dir) / 'checkpoints'}; start the run with --save-every N")
    run_dir = Path(cfg.run_dir) if resume or not main_process else prepare_run_dir(cfg.run_dir, overwrite=cfg.overwrite)
    if main_process:
        write_json(run_dir / "config.json", {**extra_config, **dataclasses.asdict(cfg)})
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    return run_dir, checkpoint


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


def truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Keep only the rows of a JSON-lines file whose "step" is <= last_step (what a resumed run
    had saved); returns them. A missing file counts as empty."""
    if not path.exists():
        return []
    rows = [row for row in map(json.loads, path.read_text().splitlines()) if row["step"] <= last_step]
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(row) + "\n" for row in rows)))
    return rows


class RunLogger:
    """Metrics to `metrics.jsonl` (one JSON row per call) and TensorBoard, kept in memory for plots."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, resume_elapsed: float = 0.0):
        """resume_step: continue a run from its checkpoint at that step: rows logged after it (by
        the run that crashed) are dropped, and elapsed() continues from resume_elapsed."""
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

        self.run_dir = run_dir
        self.rows: list[dict[str, float]] = []
        path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            self.rows = truncate_jsonl(path, resume_step)
        self._jsonl = open(path, "a")
        self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.start_time = time.perf_counter() - resume_elapsed

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


def script_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser for scripts without a config dataclass, with the same one-line errors."""
    return _one_line_parser_errors(argparse.ArgumentParser)(description=description,
                                                            formatter_class=argparse.RawDescriptionHelpFormatter)


def require_positive(**values: float) -> None:
    """ConfigError for the first value that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def require_nonnegative(**values: float) -> None:
    """ConfigError for the first value that is < 0."""
    for name, value in values.items():
        if not value >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")


def require_discount(gamma: float, gae_lambda: float) -> None:
    """ConfigError unless gamma is in (0, 1] and the GAE lambda in [0, 1]."""
    if not (0 < gamma <= 1 and 0 <= gae_lambda <= 1):
        raise ConfigError(f"--gamma must be in (0, 1] and --gae-lambda in [0, 1], got {gamma} and {gae_lambda}")


def require_layer_widths(hidden_sizes: list[int]) -> None:
    if not hidden_sizes or min(hidden_sizes) <= 0:
        raise ConfigError(f"--hidden-sizes must be positive layer widths, got {hidden_sizes}")


def config_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (list defaults are copied per instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass
class RunFields:
    """The run-folder and checkpoint fields every training config shares (each config adds run_dir,
    seed and torch_threads, whose defaults differ)."""

    overwrite: bool = config_field(False, "Replace an existing run in --run-dir")
    save_every: int = config_field(0, "Write a checkpoint every this many steps (env steps in classic RL; 0: only on "
                                      "Ctrl-C or a non-finite loss)")
    keep_checkpoints: int = config_field(2, "How many checkpoints to keep")
    resume: bool = config_field(False, "Continue the run in --run-dir from its newest checkpoint")

    def __post_init__(self):
        require_positive(keep_checkpoints=self.keep_checkpoints)
        require_nonnegative(save_every=self.save_every)

    def checkpoint_due(self, step: int, stop: StopRequest) -> bool:
        """Save after this step: a --save-every multiple, or Ctrl-C asked for it."""
        return bool(self.save_every and step % self.save_every == 0) or stop.requested


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
    optional = {name for name, hint in get_type_hints(config_cls).items() if type(None) in get_args(hint)}
    for action in parser._actions:  # `--x none` unsets an optional field, e.g. a value a preset gave it
        if action.dest in optional and action.type is not None and action.nargs is None:
            action.type = _none_or(action.type)
            action.help = f"{action.help} ('none': unset)"
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


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = parse.__name__  # argparse names the type in its errors ("invalid float value")
    return parse_or_none


def cli(main: Callable[[], Any]) -> Callable[[], None]:
    """Run a script's main: a ConfigError becomes `error: ...` on stderr and exit status 2, a
    non-finite loss or reward exit status 1, Ctrl-C exit status 130; none prints a traceback."""

    @functools.wraps(main)
    def wrapped() -> None:
        try:
            main()
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except NonFiniteError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except (TrainingInterrupted, KeyboardInterrupt) as err:
            print(f"interrupted: {err or 'nothing was saved'}", file=sys.stderr)
            sys.exit(130)

    return wrapped
