#!/usr/bin/env python
"""Draw the pictures of docs/design.md: docs/house.png, the folders of classic_rl and rlhf_toy and which imports which
(read from the source, so the picture follows the code), and docs/grpo_step.png, one GRPO step call by call.

    python scripts/draw_design.py                 # rewrites both
    python scripts/draw_design.py --out-dir DIR
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from classic_rl.infra.cli import cli, script_parser  # noqa: E402
from classic_rl.infra.errors import ConfigError  # noqa: E402
from classic_rl.infra.import_graph import find_cycle, import_graph  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("classic_rl", "rlhf_toy")
WHAT = {  # the caption of each box: a folder, or a module of a package's top level
    "rlhf_toy/online.py": "the online loop", "rlhf_toy/supervised.py": "the supervised loop",
    "rlhf_toy/algorithms/": "GRPO, PPO, RLOO, REINFORCE++, DPO", "rlhf_toy/generation/": "sampling, rollouts, log-probs",
    "rlhf_toy/rewards/": "rules, reward models, labels", "rlhf_toy/lm/": "models, pretraining",
    "rlhf_toy/tasks/": "named tasks, arithmetic", "rlhf_toy/evaluation.py": "before / after",
    "rlhf_toy/agents/": "turns, tools, text games",
    "rlhf_toy/corpus.py": "the synthetic data", "rlhf_toy/data.py": "JSONL, batches, labels",
    "rlhf_toy/precision.py": "bf16 where it is fast", "rlhf_toy/distributed.py": "processes",
    "rlhf_toy/prompt_schedule.py": "prompt order", "rlhf_toy/reference_sync.py": "TR-DPO's moving reference", "classic_rl/algos/": "PPO, DQN, SAC, ...",
    "classic_rl/core.py": "the PPO core", "classic_rl/infra/": "cli, checkpoints, runs",
    "classic_rl/training.py": "run_training", "classic_rl/envs.py": "vector envs", "classic_rl/nets.py": "MLP agents",
    "classic_rl/buffers.py": "rollouts, replay", "classic_rl/presets.py": "defaults", "classic_rl/tutorials.py": "presets",
    "classic_rl/maze.py": "tutorial 002's env", "classic_rl/off_policy.py": "SAC/TD3 loop", "classic_rl/preferences.py": "RL from preferences", "classic_rl/labelling_page.py": "labelling page", "classic_rl/distributions.py": "action distributions",
    "classic_rl/fast_mlp.py": "hand-written backward, flat Adam",
}


def box_of(module: str) -> str | None:
    """The box a module is drawn in: its folder, or itself at a package's top level (None: a package's __init__)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return f"{parts[0]}/{parts[1]}/" if (ROOT / parts[0] / parts[1]).is_dir() else f"{parts[0]}/{parts[1]}.py"


def box_graph() -> dict[str, set[str]]:
    """box -> the boxes it imports, from the modules' imports."""
    graph: dict[str, set[str]] = {}
    for module, deps in import_graph(ROOT, PACKAGES).items():
        if (box := box_of(module)) is None:
            continue
        graph.setdefault(box, set()).update(b for dep in deps if (b := box_of(dep)) not in (None, box))
    return graph


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """Rows of boxes, each above everything it imports (the longest path down to a box that imports none)."""
    if cycle := find_cycle(graph):
        raise ConfigError(f"folders import each other: {' -> '.join(cycle)}; a module is in the wrong folder")
    depth: dict[str, int] = {}

    def height(box: str) -> int:
        if box not in depth:
            depth[box] = 1 + max((height(dep) for dep in graph[box]), default=-1)
        return depth[box]

    rows: dict[int, list[str]] = {}
    for box in sorted(graph):
        rows.setdefault(height(box), []).append(box)
    return [rows[level] for level in sorted(rows, reverse=True)]


def draw_house(path: Path) -> None:
    graph = box_graph()
    rows = layers(graph)
    position = {}
    for r, row in enumerate(rows):
        for c, box in enumerate(row):
            position[box] = ((c + 0.5) / len(row), 1 - (r + 0.5) / len(rows))
    fig, ax = plt.subplots(figsize=(13, 1.3 * len(rows) + 1))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    for box, deps in graph.items():
        for dep in deps:
            ax.annotate("", xy=position[dep], xytext=position[box], arrowprops=dict(
                arrowstyle="->", color="0.6", lw=0.7, shrinkA=16, shrinkB=16, connectionstyle="arc3,rad=0.08"))
    for box, (x, y) in position.items():
        color = "#dbe9f6" if box.startswith("classic_rl") else "#fde9d9"
        ax.text(x, y, f"{box}\n{WHAT.get(box, '')}", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="0.3"))
    ax.set_title("The house: each box above what it imports, an arrow per import between boxes "
                 "(scripts/ import any; classic_rl imports no rlhf_toy)", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


GRPO_STEP = [
    ("prompts_for_step", "rlhf_toy/prompt_schedule.py", "the step's P prompts, each repeated G times"),
    ("sample_rollout", "rlhf_toy/generation/rollout.py", "KV-cache sampling (fast_decode.py, or generate);\nthe sampler's log-probs, kept as a check"),
    ("reward.score", "rlhf_toy/rewards/functions.py", "rule, user function or reward model: one number per completion"),
    ("group_advantages", "rlhf_toy/algorithms/grpo.py", "A = (r - mean of its group) / (std of its group + eps)"),
    ("trainer_forward", "rlhf_toy/generation/rollout.py", "old and reference log-probs from the update's own forward\n(first pass's minibatches; fast_forward.py)"),
    ("minibatch_loss", "rlhf_toy/algorithms/grpo.py", "core.policy_loss (ratio, clip) + beta * core.kl_estimate (k3)\naggregated by loss_type (grpo_loss)"),
    ("backward, clip, optimizer step", "rlhf_toy/algorithms/grpo.py", "once per minibatch, num_iterations passes"),
    ("log, checkpoint", "rlhf_toy/online.py", "metrics.jsonl, samples, checkpoints/step-N when due"),
]


def draw_grpo_step(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 8.5))
    ax.set_axis_off()
    ys = [0.95 - i * 0.125 for i in range(len(GRPO_STEP))]
    for (call, where, what), y in zip(GRPO_STEP, ys, strict=True):
        ax.text(0.3, y, call, ha="center", va="center", fontsize=10, family="monospace",
                bbox=dict(boxstyle="round,pad=0.45", fc="#fde9d9", ec="0.3"))
        ax.text(0.52, y, f"{where}\n{what}", ha="left", va="center", fontsize=8)
    for y0, y1 in zip(ys, ys[1:], strict=False):
        ax.annotate("", xy=(0.3, y1 + 0.03), xytext=(0.3, y0 - 0.03), arrowprops=dict(arrowstyle="->", color="0.4"))
    ax.set_title("One GRPO step (rlhf_toy/online.py: train_step), call by call", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--out-dir", default=str(ROOT / "docs"), help="Where house.png and grpo_step.png go")
    out = Path(parser.parse_args().out_dir)
    out.mkdir(parents=True, exist_ok=True)
    draw_house(out / "house.png")
    draw_grpo_step(out / "grpo_step.png")
    print(f"wrote {out / 'house.png'} and {out / 'grpo_step.png'}")


if __name__ == "__main__":
    main()
