#!/usr/bin/env python
"""Preferences against the env's own reward on classic control: PPO trained on a reward model fitted to a simulated
labeller's comparisons (pairs chosen by the ensemble's disagreement, and uniformly) beside PPO on the env's reward, with
the same seeds and PPO settings (the preset), one run at a time in this process. Each run stops when its greedy
evaluation reaches the env's bar (CartPole 500, LunarLander 200) or at the preset's budget.

    python scripts/bench_classic_preferences.py                       # CartPole-v1 and LunarLander-v3, seeds 1-3 (~25 min)
    python scripts/bench_classic_preferences.py --envs CartPole-v1 --seeds 5 --out /tmp/cartpole

Writes OUT.json (every run, its evaluations, and the summary per env and variant), OUT.md (the table) and OUT.png (the
env's return against env steps, every run). Run folders go to RUNS_DIR/ENV/VARIANT-seedS (reward_vs_gold.png in each).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from classic_rl.algos import ppo
from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.machine import machine
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import atomic_write, write_json
from classic_rl.preferences import PREFERENCE_PRESETS, QUERIES, preference_config, run_from_preferences
from classic_rl.presets import preset
from classic_rl.training import run_training

BARS = {"CartPole-v1": 500.0, "LunarLander-v3": 200.0}
VARIANTS = ("true_reward", *QUERIES)


def run_one(env: str, seed: int, variant: str, run_dir: Path, label_noise: float) -> dict[str, Any]:
    """One run to the env's bar; its figures and evaluations."""
    fields = preset("ppo", env) | dict(env=env, seed=seed, target_return=BARS[env], run_dir=str(run_dir), overwrite=True)
    if variant == "true_reward":
        summary = run_training("ppo", ppo.train, ppo.PPOConfig(**fields))
    else:
        cfg = preference_config("ppo")(**fields | PREFERENCE_PRESETS.get(env, {}), queries=variant, label_noise=label_noise)
        summary = run_from_preferences("ppo", cfg)
    return {"env": env, "seed": seed, "variant": variant, "reached_bar": summary["solved_at_steps"] is not None,
            "env_steps": summary["env_steps"], "wall_s": summary["wall_s"], "gold_return_final": summary["eval_return_mean"],
            "labels_used": summary.get("labels_used", 0), "reward_gold_correlation": summary.get("reward_gold_correlation"),
            "evaluations": [(e["env_steps"], e["mean"]) for e in summary["evaluations"]]}


def spread(values: list[float], digits: int = 0) -> str:
    """'median (min-max)' of values, or '-' when there are none."""
    if not values:
        return "-"
    fmt = f"{{:,.{digits}f}}"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per env and variant: how many runs reached the bar, and the env steps, labels and seconds those took."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        row = table.setdefault(run["env"], {}).setdefault(run["variant"], {"runs": 0, "reached": 0, "env_steps": [], "labels": [],
                                                                          "wall_s": []})
        row["runs"] += 1
        if run["reached_bar"]:
            row["reached"] += 1
            for key, value in (("env_steps", run["env_steps"]), ("labels", run["labels_used"]), ("wall_s", run["wall_s"])):
                row[key].append(value)
    return table


def markdown(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| env | reward | reached the bar | env steps to it | labels used | seconds |", "|---|---|---|---|---|---|"]
    for env, variants in table.items():
        for variant, row in variants.items():
            lines.append(f"| {env} (bar {BARS[env]:.0f}) | {variant.replace('_', ' ')} | {row['reached']}/{row['runs']} | "
                         f"{spread(row['env_steps'])} | {spread(row['labels']) if variant != 'true_reward' else '-'} | "
                         f"{spread(row['wall_s'], 1)} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, runs: list[dict[str, Any]]) -> None:
    colours = dict(zip(VARIANTS, ("C0", "C1", "C2"), strict=True))
    panels = []
    for env in dict.fromkeys(r["env"] for r in runs):
        lines = {f"{r['variant'].replace('_', ' ')}, seed {r['seed']}": ([s for s, _ in r["evaluations"]], [m for _, m in r["evaluations"]],
                                                                         {"color": colours[r["variant"]], "marker": None})
                 for r in runs if r["env"] == env}
        panels.append(("env steps", f"{env}: the env's return (greedy eval)", lines))
    plot_lines(path, panels, "PPO on the env's reward and from simulated preferences")


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--envs", nargs="+", default=list(BARS), help=f"Envs: {', '.join(BARS)}")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per env and variant")
    parser.add_argument("--first-seed", type=int, default=1, help="The first seed")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"Of {', '.join(VARIANTS)}")
    parser.add_argument("--label-noise", type=float, default=0.1, help="Share of the simulated labels flipped")
    parser.add_argument("--runs-dir", default="runs/bench-classic-preferences", help="Where the run folders go")
    parser.add_argument("--out", default="bench/classic_preferences", help="OUT.json, OUT.md and OUT.png are written")
    args = parser.parse_args()
    for name, given, accepted in (("env", args.envs, BARS), ("variant", args.variants, VARIANTS)):
        if unknown := [g for g in given if g not in accepted]:
            raise ConfigError(f"unknown --{name}s {' '.join(unknown)}; accepted: {', '.join(accepted)}")
    runs = []
    for env in args.envs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for variant in args.variants:
                runs.append(run_one(env, seed, variant, Path(args.runs_dir) / env / f"{variant}-seed{seed}", args.label_noise))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "evaluations"}))
    table = summarise(runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"machine": machine(), "label_noise": args.label_noise, "bars": BARS,
                                          "summary": table, "runs": runs})
    text = markdown(table)
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(f"Machine: {machine()}\n\n{text}"))
    plot(out.with_suffix(".png"), runs)
    print(text)


if __name__ == "__main__":
    main()
