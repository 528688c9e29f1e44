"""Checkpoints, one concept for every training loop (classic RL, pretraining, the reward model, RLHF):

    checkpoints = start_run(cfg)[1]                     # on --resume: the newest complete checkpoint
    model = load(checkpoints.folder / ...) if checkpoints.resumed else build()
    checkpoints.track(optimizer=optimizer, logger=logger)   # saved with every checkpoint, restored by restore()
    saved = checkpoints.restore()                       # load_state_dict each, then the RNG states
    with checkpoints.stop:                              # Ctrl-C becomes a request
        for step in range(checkpoints.step + 1, last + 1):
            ...
            checkpoints.save_if_due(step, write_model, extra=...)   # plus plain values, returned by restore()

A checkpoint is `checkpoints/step-N/`: the loop's model files and `state.pt` (the step, every RNG state,
each object's state_dict and the plain values; read back with torch.load(weights_only=True)). It is
written under a temporary name and renamed when complete, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classic_rl.infra.errors import ConfigError, TrainingInterrupted


class StopRequest:
    """Ctrl-C as a request, while the `with` block runs: the first sets `requested` (the training
    loop then saves a checkpoint at its next consistent point and stops); a second stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._owner = None  # the process that installed the handler

    def _handler(self, signum, frame) -> None:
        if os.getpid() != self._owner:  # a process forked while this was installed (async env workers): its parent stops it
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._owner = os.getpid()
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
    """A run's checkpoints: when one is due (each time `step` passes a multiple of `every`, or at the next
    consistent point after Ctrl-C), writing it (newest `keep` kept), and resuming from the newest."""

    def __init__(self, run_dir: str | Path, every: int = 0, keep: int = 2, resume: bool = False):
        self.root, self.every, self.keep = Path(run_dir) / "checkpoints", every, keep
        self.stop = StopRequest()
        self.folder = self.latest() if resume else None
        if resume and self.folder is None:
            raise ConfigError(f"--resume found no checkpoint in {self.root}; start the run with --save-every N")
        self.saved = torch.load(self.folder / "state.pt", weights_only=True) if self.folder else None
        self.step = self.saved["step"] if self.saved else 0  # the step the run continues after
        self._tracked: dict[str, Any] = {}
        self._next_due = (self.step // every + 1) * every if every else None

    @property
    def resumed(self) -> bool:
        return self.folder is not None

    def track(self, **objects: Any) -> None:
        """Objects (with state_dict / load_state_dict) saved in every checkpoint and restored by restore()."""
        self._tracked.update(objects)

    def restore(self) -> dict[str, Any] | None:
        """On a resumed run: load the tracked objects from the checkpoint, then the RNG states (last, so
        nothing built before consumes them); returns everything saved. None on a fresh run."""
        if self.saved is None:
            return None
        for name, obj in self._tracked.items():
            if obj is not None:
                obj.load_state_dict(self.saved[name])
        set_rng_state(self.saved["rng"])
        return self.saved

    def due(self, step: int) -> bool:
        """True once each time step reaches the next multiple of `every`, and after Ctrl-C. Every process
        of a multi-process run asks, so all agree on the schedule."""
        passed = self._next_due is not None and step >= self._next_due
        while self._next_due is not None and self._next_due <= step:
            self._next_due += self.every
        return passed or self.stop.requested

    def partial(self, step: int) -> Path:
        """The folder checkpoints/step-{step} is written in until it is complete, when save() renames it into place."""
        return self.root / f".step-{step}.tmp"

    def save(self, step: int, write_files: Callable[[Path], None] | None = None, keep_partial: bool = False, **state: Any) -> Path:
        """Write checkpoints/step-{step}: write_files(folder) (e.g. the model) and state.pt with the step, the
        RNG states, the state_dict of each tracked object and of each value that has one, the other values
        as they are (tensors, numbers, strings and lists of them). keep_partial keeps what others already wrote into
        partial(step) (the shards of a multi-process run); otherwise a partial folder left by a crash is cleared first."""
        values = {name: value.state_dict() if hasattr(value, "state_dict") else value
                  for name, value in {**self._tracked, **state}.items()}
        tmp, final = self.partial(step), self.root / f"step-{step}"
        if not keep_partial:
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        if write_files is not None:
            write_files(tmp)
        torch.save({"step": step, "rng": rng_state(), **values}, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old)
        return final

    def save_if_due(self, step: int, write_files: Callable[[Path], None] | None = None, **state: Any) -> None:
        """save() when due; after a Ctrl-C, then end the run with TrainingInterrupted."""
        if self.due(step):
            self.save(step, write_files, **state)
            self.stop_if_requested(step)

    def stop_if_requested(self, step: int) -> None:
        """TrainingInterrupted, naming the checkpoint of `step`, if Ctrl-C asked to stop."""
        if self.stop.requested:
            raise TrainingInterrupted(f"stopped at step {step}; saved {self.root / f'step-{step}'}; continue with --resume")

    def complete(self) -> list[Path]:
        return sorted(self.root.glob("step-*"), key=lambda p: int(p.name[5:]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None
