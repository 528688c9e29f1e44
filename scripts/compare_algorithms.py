#!/usr/bin/env python
"""Every policy-gradient method for language models in the project, on the same budget: each trains on the default
task (eval reward of the length,format rule) and on the arithmetic task (held-out pass@1), over seeds, with the same
seconds of training and the same sampling per step (the task's prompts x completions x tokens); afterwards the KL
of each trained model to its base model is measured alike on the model's own samples of the eval prompts.

    python scripts/compare_algorithms.py --out bench/algorithms           # every method, 2 tasks, 3 seeds: under an hour on 2 cores
    python scripts/compare_algorithms.py --methods grpo rloo --tasks arithmetic --seeds 1 --budget-s 60
    python scripts/compare_algorithms.py --methods grpo ppo --tasks arithmetic --steps task --num-minibatches 1  # the task's recipe

Each run is `train_rlhf.py --max-train-s BUDGET` (or, with --steps, that many steps or the task's own for the algorithm) in
its own process, one at a time, evaluated every few steps for the curves; run folders go to RUNS_DIR/TASK/METHOD-seedS.
Writes OUT.json, OUT.md and OUT.png (pass@1 or eval reward against training seconds, and the final one against KL to
the base model).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from classic_rl.infra.cli import cli, run_in_own_process, script_parser
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.machine import machine
from classic_rl.infra.plots import plt  # with the Agg backend: files only
from classic_rl.infra.run_folder import atomic_write, read_jsonl, write_json
from rlhf_toy.data import load_prompt_rows
from rlhf_toy.evaluation import kl_to_reference
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.tasks import TASKS as TASK_RECIPES

SCRIPT = Path(__file__).resolve().parent / "train_rlhf.py"
# name: --algo and its flags, each method's own recipe (GSPO's clip range is its paper's, for a ratio per sequence).
# Every method takes --num-minibatches (2) gradient steps a rollout, so that its ratio leaves 1 and the clipped
# objectives differ (with one gradient step per rollout they are the same step).
METHODS = {
    "dapo": ["--algo", "grpo"],  # GRPO as it ships (TRL 1.16's defaults): DAPO's token-level loss, clip 0.2
    "grpo": ["--algo", "grpo", "--loss-type", "grpo"],  # the GRPO paper's mean over each completion's tokens
    "dr_grpo": ["--algo", "grpo", "--loss-type", "dr_grpo", "--scale-rewards", "none"],
    "bnpo": ["--algo", "grpo", "--loss-type", "bnpo"],
    "clip-higher": ["--algo", "grpo", "--epsilon-high", "0.28"],  # DAPO's clip-higher
    "two-sided-clip": ["--algo", "grpo", "--epsilon-high", "0.28", "--delta", "1.5"],  # INTELLECT-2's
    "gspo": ["--algo", "grpo", "--loss-type", "grpo", "--importance-sampling-level", "sequence", "--epsilon", "3e-4",
             "--epsilon-high", "4e-4"],
    "cispo": ["--algo", "grpo", "--loss-type", "cispo", "--epsilon-high", "5"],
    "sapo": ["--algo", "grpo", "--loss-type", "sapo"],
    "luspo": ["--algo", "grpo", "--loss-type", "luspo", "--importance-sampling-level", "sequence"],
    "vespo": ["--algo", "grpo", "--loss-type", "vespo"],
    "top-entropy-20": ["--algo", "grpo", "--top-entropy-quantile", "0.2"],
    "adaptive-entropy": ["--algo", "grpo", "--use-adaptive-entropy"],
    "gdpo": ["--algo", "grpo", "--multi-objective-aggregation", "normalize_then_sum"],
    # TR-DPO's moving reference at its alpha, its period scaled to these runs (tens to hundreds of gradient steps)
    "tr-sync": ["--algo", "grpo", "--sync-ref-model", "--ref-model-sync-steps", "16"],
    "rloo": ["--algo", "rloo"],
    "reinforce++": ["--algo", "reinforce_pp", "--advantage-estimator", "reinforce"],
    "reinforce++-baseline": ["--algo", "reinforce_pp", "--advantage-estimator", "reinforce_baseline"],
    "ppo": ["--algo", "ppo"],
}
TASKS = {  # name: (train_rlhf.py flags, the summary's score after training and before, its label)
    "default": (["--eval-every", "20"], "reward_after", "reward_before", "eval reward (length,format)"),
    "arithmetic": (["--task", "arithmetic"], "pass_at_1_after", "pass_at_1_before", "held-out pass@1"),
}
# a run on a budget of seconds: as many steps as fit (a constant learning rate then: the arithmetic task's linear decay
# spans the steps asked for); arithmetic evaluated on 4 samples a problem, every 40 steps. The default budgets fit every
# method, both tasks and 3 seeds in under an hour on 2 cores (54 min on an EPYC, base models built: bench/algorithms.md).
BUDGET_FLAGS = {"default": ["--steps", "100000"],
                "arithmetic": ["--steps", "100000", "--eval-samples-per-prompt", "4", "--pass-at-k", "4", "--eval-every", "40"]}
DEFAULT_BUDGET_S = {"default": 10.0, "arithmetic": 36.0}


def train_one(task: str, method: str, seed: int, budget: list[str], num_minibatches: int, run_dir: Path, keep_finished: bool) -> dict:
    """One run's row: its score before and after, its steps and seconds, and its curve [(training s, score)]. budget: the
    flags of its budget (budget_flags)."""
    flags, after, before, _ = TASKS[task]
    if not (keep_finished and (run_dir / "summary.json").is_file()):
        run_in_own_process(SCRIPT, [*flags, *budget, *step_size_flags(task, num_minibatches), *METHODS[method], "--num-minibatches",
                                    str(num_minibatches), "--seed", str(seed), "--log-completions-every", "0", "--run-dir",
                                    str(run_dir), "--overwrite"])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"task": task, "method": method, "seed": seed, "before": summary[before], "after": summary[after],
            "steps": summary["steps"], "train_s": summary["wall_s"], "curve": curve(run_dir, task), **diagnostics(run_dir)}


def step_size_flags(task: str, num_minibatches: int) -> list[str]:
    """The task's learning rate divided by the gradient steps per rollout: its recipe takes one, and Adam moves each
    weight about lr a step whatever the gradient's size, so a rollout moves the policy as far as the recipe's does (at
    the arithmetic recipe's 2e-4 in each of 2 steps, held-out pass@1 after 36 s fell below the base model's 0.367 for 6
    of 17 methods, seed 1; DAPO's rose to 0.405 at 2e-4 and 0.545 at 1e-4)."""
    recipe = TASK_RECIPES.get(task, {}).get("learning_rate")
    return [] if recipe is None or num_minibatches == 1 else ["--learning-rate", f"{recipe / num_minibatches:g}"]


def diagnostics(run_dir: Path, last: int = 10) -> dict[str, float]:
    """What explains a result: the token entropy and completion length over the last steps (collapse, length bias) and
    the share of tokens (or completions) whose ratio was clipped, over every step (how much the clip cut)."""
    rows = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "reward" in row]
    return {"entropy_end": float(np.mean([row["entropy"] for row in rows[-last:]])),
            "length_end": float(np.mean([row["completions/mean_length"] for row in rows[-last:]])),
            "clip_ratio": float(np.mean([row["clip_ratio"] for row in rows]))}


def budget_flags(task: str, budget_s: float | None, steps: str | None) -> list[str]:
    """train_rlhf.py's flags of a run's budget: seconds, a number of steps, or the task's own ("task": none)."""
    if steps == "task":
        return []
    if steps is not None:
        return ["--steps", steps]
    return [*BUDGET_FLAGS[task], "--max-train-s", str(budget_s or DEFAULT_BUDGET_S[task])]


def curve(run_dir: Path, task: str) -> list[tuple[float, float]]:
    """(training seconds, eval score) at each evaluation: the seconds summed over the steps before it."""
    key = "eval/pass_at_1" if task == "arithmetic" else "eval/reward"
    seconds, points = 0.0, []
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        seconds += row.get("time/generate_s", 0.0) + row.get("time/reward_s", 0.0) + row.get("time/update_s", 0.0)
        if key in row:
            points.append((seconds, row[key]))
    return points


@torch.inference_mode()
def kl_to_base(run_dir: Path, samples: int = 2) -> float:
    """KL(trained || base) per completion: k1 on the trained model's own samples (2 of each of the run's eval prompts,
    seed 1234, at temperature 1), one measure whatever KL the method's loss estimates, or none."""
    cfg = json.loads((run_dir / "config.json").read_text())
    base_dir = json.loads((run_dir / "summary.json").read_text())["model"]
    model, base = load_model(str(run_dir / "model")).eval(), load_model(base_dir).eval()
    return kl_to_reference(model, base, load_tokenizer(base_dir), load_prompt_rows(cfg["eval_prompts"]),
                           SamplingConfig(cfg["max_completion_length"]), samples, 1234)["per_sequence"]


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def winners(rows: list[dict], ranked: list[str]) -> str:
    """The method with the highest mean, and those whose range over seeds reaches its lowest run: no claim between them."""
    afters = {method: [r["after"] for r in rows if r["method"] == method] for method in ranked}
    tied = [method for method in ranked[1:] if max(afters[method]) >= min(afters[ranked[0]])]
    return (f"Highest mean: **{ranked[0]}** ({spread(afters[ranked[0]])}); within its spread (a run of theirs at or above "
            f"its lowest): {', '.join(tied) or 'none'}.")


def markdown(rows: list[dict], budgets: dict[str, list[str]], command: str) -> str:
    given = "; ".join(f"{task}: " + (f"`{' '.join(budgets[task])}`" if budgets[task] else "the task's own steps")
                      for task in dict.fromkeys(r["task"] for r in rows))
    lines = [f"Measured by `{command}` on {machine()}, one run at a time. Budget of each run ({given}).", ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        lines += [f"## {task}: {TASKS[task][3]}", "", f"Before training: {spread([r['before'] for r in mine])}.", "",
                  "| method | after, mean (min-max) over seeds | KL to base per completion | entropy at the end | clipped | "
                  "length at the end | steps | training s |", "|---|---|---|---|---|---|---|---|"]
        ranked = sorted(dict.fromkeys(r["method"] for r in mine), key=lambda m: -np.mean([r["after"] for r in mine if r["method"] == m]))
        for method in ranked:
            runs = [r for r in mine if r["method"] == method]
            mean = {key: np.mean([r[key] for r in runs]) for key in ("kl", "entropy_end", "clip_ratio", "length_end", "steps", "train_s")}
            lines.append(f"| {method} | **{spread([r['after'] for r in runs])}** | {mean['kl']:.2f} | {mean['entropy_end']:.3f} | "
                         f"{mean['clip_ratio']:.3f} | {mean['length_end']:.1f} | {mean['steps']:.0f} | {mean['train_s']:.0f} |")
        lines += ["", winners(mine, ranked), ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """A row per task: the score against training seconds (mean over seeds at each evaluation), and the final score
    against KL to the base model (one point per run); one legend for all."""
    methods, tasks = list(dict.fromkeys(r["method"] for r in rows)), list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4 * len(tasks)), squeeze=False)
    for (over_time, over_kl), task in zip(axes, tasks, strict=True):
        for i, method in enumerate(methods):
            runs = [r for r in rows if r["task"] == task and r["method"] == method]
            points = min(len(r["curve"]) for r in runs)
            style = {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"}
            over_time.plot([np.mean([r["curve"][j][0] for r in runs]) for j in range(points)],
                           [np.mean([r["curve"][j][1] for r in runs]) for j in range(points)], label=method, marker=".", **style)
            over_kl.plot([r["kl"] for r in runs], [r["after"] for r in runs], marker="o" if i < 10 else "s", linestyle="none",
                         color=style["color"])
        over_time.set(xlabel="training seconds", ylabel=f"{task}: {TASKS[task][3]}")
        over_kl.set(xlabel="KL to the base model per completion (k1)", ylabel=f"{task}: {TASKS[task][3]} after")
        for ax in (over_time, over_kl):
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle("every method on the same budget of seconds and samples")
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="Methods to train")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="Tasks to train each on")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Seeds of each method")
    parser.add_argument("--budget-s", type=float, default=None, help="Seconds of training per run on every task "
                                                                   "(default: 10 on the default task, 36 on arithmetic)")
    parser.add_argument("--steps", default=None, help="Train each run for this many steps, or 'task': the task's own for "
                                                      "the algorithm (default: a budget of seconds)")
    parser.add_argument("--num-minibatches", type=int, default=2, help="Gradient steps per rollout of every method")
    parser.add_argument("--runs-dir", default="runs/algorithms", help="Parent folder of the run folders")
    parser.add_argument("--out", default="bench/algorithms", help="Write OUT.json, OUT.md and OUT.png")
    parser.add_argument("--keep-finished", action="store_true", help="Reuse run folders that already hold a summary.json "
                                                                      "(a comparison stopped half way goes on)")
    args = parser.parse_args()
    require_positive(budget_s=args.budget_s, num_minibatches=args.num_minibatches)
    if args.steps is not None and args.budget_s is not None:
        raise ConfigError("--steps trains for steps, --budget-s for seconds; accepted: one of the two")
    if args.steps not in (None, "task") and not (args.steps.isdigit() and int(args.steps) > 0):
        raise ConfigError(f"--steps takes a number > 0 or 'task', got {args.steps!r}")
    budgets = {task: budget_flags(task, args.budget_s, args.steps) for task in TASKS}
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            for method in args.methods:
                run_dir = Path(args.runs_dir) / task / f"{method}-seed{seed}"
                row = train_one(task, method, seed, budgets[task], args.num_minibatches, run_dir, args.keep_finished)
                row["kl"] = kl_to_base(run_dir)
                rows.append(row)
                print(f"{task} {method} seed {seed}: {row['before']:.3f} -> {row['after']:.3f}, KL {row['kl']:.2f}, "
                      f"{row['steps']} steps in {row['train_s']:.0f} s", flush=True)
    command = "python scripts/compare_algorithms.py " + " ".join(sys.argv[1:])
    table = markdown(rows, budgets, command.strip())
    print(table)
    write_json(f"{args.out}.json", {"command": command, "machine": machine(), "budgets": budgets, "rows": rows})
    atomic_write(f"{args.out}.md", lambda tmp: Path(tmp).write_text("# The policy-gradient methods on one budget\n\n" + table))
    plot(rows, Path(f"{args.out}.png"))


if __name__ == "__main__":
    main()
