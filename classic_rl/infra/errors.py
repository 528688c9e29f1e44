"""The exceptions a run ends with, and the checks of user input that raise ConfigError."""

from __future__ import annotations

from typing import Any

import torch


class ConfigError(ValueError):
    """Bad user input. Its message says what was wrong and what is accepted; CLIs print it on
    one line and exit with status 2."""


class NonFiniteError(FloatingPointError):
    """A loss, reward or gradient norm became NaN or inf; the message names the step and the quantity."""


class TrainingInterrupted(Exception):
    """Ctrl-C arrived; raised at the next safe point, after a checkpoint was saved."""


def check_finite(step: int | None, **values: Any) -> None:
    """NonFiniteError naming the step (when given) and the first value (float or tensor) that is NaN or inf."""
    for name, value in values.items():
        if not bool(torch.isfinite(torch.as_tensor(value)).all()):
            where = f"step {step}: " if step is not None else ""
            raise NonFiniteError(f"{where}non-finite {name.replace('_', ' ')} ({value!r:.40})")


def require_positive(**values: float | None) -> None:
    """ConfigError for the first value that is not > 0 (None, an optional setting left unset, passes)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def require_nonnegative(**values: float | None) -> None:
    """ConfigError for the first value that is < 0 (None, an optional setting left unset, passes)."""
    for name, value in values.items():
        if value is not None and not value >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")


def require_choice(**values: tuple[str, tuple[str, ...]]) -> None:
    """ConfigError for the first value (name=(value, accepted)) that is not among its accepted names."""
    for name, (value, accepted) in values.items():
        if value not in accepted:
            raise ConfigError(f"unknown --{name.replace('_', '-')} {value!r}; accepted: {', '.join(accepted)}")


def require_discount(gamma: float, gae_lambda: float) -> None:
    """ConfigError unless gamma is in (0, 1] and the GAE lambda in [0, 1]."""
    if not (0 < gamma <= 1 and 0 <= gae_lambda <= 1):
        raise ConfigError(f"--gamma must be in (0, 1] and --gae-lambda in [0, 1], got {gamma} and {gae_lambda}")


def require_layer_widths(hidden_sizes: list[int]) -> None:
    if not hidden_sizes or min(hidden_sizes) <= 0:
        raise ConfigError(f"--hidden-sizes must be positive layer widths, got {hidden_sizes}")
