"""The run folder every training command writes: created once and checked, files written atomically,
config.json, seeds and torch threads set; on --resume, the existing folder and its newest checkpoint."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_nonnegative, require_positive

MIN_FREE_MB = 50
# What a resumed run may set anew: where it is, how it checkpoints and evaluates, its threads, and how long it runs.
MAY_CHANGE_ON_RESUME = frozenset({"run_dir", "resume", "overwrite", "save_every", "keep_checkpoints", "torch_threads",
                                  "eval_every", "steps", "total_timesteps", "total_episodes", "max_steps", "max_train_s"})


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


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)))


def append_jsonl_fsynced(path: str | Path, row: dict) -> None:
    """Append one row and fsync it: once this returns, a kill or a power cut cannot lose it (labels people give)."""
    with open(path, "a") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def utc_now() -> str:
    """The time in UTC, ISO 8601 to the second (when a label was given)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file; a missing file counts as empty."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Keep only the rows of a JSON-lines file whose "step" is <= last_step (what a resumed run
    had saved); returns them. A missing file counts as empty."""
    if not path.exists():
        return []
    rows = [row for row in read_jsonl(path) if row["step"] <= last_step]
    write_jsonl(path, rows)
    return rows


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


def check_resumed_config(saved_path: Path, config: dict[str, Any]) -> None:
    """ConfigError naming every setting of a resumed run that differs from the run's saved config.json
    (other than MAY_CHANGE_ON_RESUME): its checkpoint holds a model and optimizer built from the saved one."""
    if not saved_path.is_file():
        return
    saved, given = json.loads(saved_path.read_text()), json.loads(json.dumps(config, default=str))
    changed = [f"--{key.replace('_', '-')} {given[key]} (saved: {saved[key]})" for key in given
               if key in saved and key not in MAY_CHANGE_ON_RESUME and given[key] != saved[key]]
    if changed:
        raise ConfigError(f"--resume continues the run in {saved_path.parent} as its config.json has it, but these settings "
                          f"differ: {'; '.join(changed)}; give the saved values, or start a new run in another --run-dir")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (envs are seeded through reset(seed=...))."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(cfg: Any, main_process: bool = True, **extra_config: Any) -> tuple[Path, Checkpoints]:
    """Open cfg.run_dir for a run: write config.json (cfg's fields plus extra_config), set torch threads
    and all seeds. Returns the run folder and its Checkpoints (holding the newest one on --resume).

    cfg is a RunFields with run_dir, torch_threads and seed. A fresh run gets a new, checked folder;
    with cfg.resume the existing folder is kept. The other processes of a multi-process run
    (main_process=False) only open the checkpoints and set threads and seeds.
    """
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in --run-dir and --overwrite deletes it; pass one of them")
    checkpoints = Checkpoints(cfg.run_dir, cfg.save_every, cfg.keep_checkpoints, resume=cfg.resume)
    run_dir = Path(cfg.run_dir) if cfg.resume or not main_process else prepare_run_dir(cfg.run_dir, overwrite=cfg.overwrite)
    if main_process:
        config = {**extra_config, **dataclasses.asdict(cfg)}
        if checkpoints.resumed:
            check_resumed_config(run_dir / "config.json", config)
        write_json(run_dir / "config.json", config)
        if checkpoints.resumed:
            print(f"resuming {run_dir} from {checkpoints.folder.name}")
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    return run_dir, checkpoints
