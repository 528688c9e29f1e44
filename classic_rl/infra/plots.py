"""PNG plots of a run, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server, and no GUI toolkit to import
import matplotlib.pyplot as plt  # noqa: E402

from classic_rl.infra.run_folder import atomic_write  # noqa: E402

# label -> (x, y), or (x, y, matplotlib line style such as {"alpha": 0.3}) to set one line apart
Lines = dict[str, tuple[Sequence[float], Sequence[float]] | tuple[Sequence[float], Sequence[float], dict]]


def plot_lines(path: Path, panels: Sequence[tuple[str, str, Lines]], title: str = "") -> None:
    """One PNG with a panel per (xlabel, ylabel, {label: (x, y[, style])})."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (xlabel, ylabel, lines) in zip(axes[0], panels, strict=True):
        for label, (x, y, *style) in lines.items():
            ax.plot(x, y, label=label, **{"marker": "o" if len(x) < 30 else None, "markersize": 3, **(style[0] if style else {})})
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
    """A scatter plot PNG (e.g. proxy reward against gold reward)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.scatter(x, y, s=12, alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
