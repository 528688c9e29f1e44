#!/usr/bin/env python
"""One preference file, four ways to learn from it, the same budget of wall time each: (a) a reward model
then GRPO against it, (b) the same reward model then PPO, (c) DPO, (d) IPO (DPO's loss with a bounded
margin, Azar et al. 2023). Scored alike afterwards: the rule judge (length,format, never optimised) on fresh
samples of the eval prompts and the KL to the base model on the policy's own samples.

    python scripts/compare_preferences.py --seeds 1 2 3 --out bench/preferences     # ~55 minutes on 2 cores
    python scripts/compare_preferences.py --methods ipo --out bench/preferences_ipo  # one method alone
    python scripts/compare_preferences.py --methods ipo --beta 1 --out bench/preferences_ipo_beta1  # at its own beta

Label files: `shipped` (data/preferences_*.jsonl: corpus texts ranked by the rule) and `simulated`
(scripts/label.py --simulate length,format on the base model's own samples, labelled once and reused).
The reward model's training seconds count against (a)'s and (b)'s budget. Each run is its own process,
one at a time; run folders go to RUNS_DIR/LABELS/seedS/. Writes OUT.json, OUT.md and OUT.png.
"""

import json
import sys
from pathlib import Path

import numpy as np

from classic_rl.infra.cli import cli, run_in_own_process, script_parser
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.machine import machine
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import atomic_write, write_json
from rlhf_toy.data import DATA_DIR
from rlhf_toy.evaluation import FixedEvaluation

SCRIPTS = Path(__file__).resolve().parent
JUDGE = "length,format"
METHODS = ("rm+grpo", "rm+ppo", "dpo", "ipo")


def run(script: str, args: list[str]) -> dict:
    """scripts/<script> in its own process; its run folder's summary.json (or, for label.py, {})."""
    run_in_own_process(SCRIPTS / script, args)
    run_dir = args[args.index("--run-dir") + 1] if "--run-dir" in args else None
    return json.loads((Path(run_dir) / "summary.json").read_text()) if run_dir else {}


def label_files(name: str, runs_dir: Path, simulated_n: int) -> tuple[str, list[str]]:
    """(training labels, the flags that name its held-out labels) of label set `name`."""
    if name == "shipped":
        return str(DATA_DIR / "preferences_train.jsonl"), ["--eval-preferences", str(DATA_DIR / "preferences_eval.jsonl")]
    path = runs_dir / "simulated_pairs.jsonl"
    run("label.py", ["--simulate", JUDGE, "--n", str(simulated_n), "--seed", "0", "--out", str(path)])  # continues, or is done
    return str(path), ["--eval-preferences", "none"]


def train_methods(methods: list[str], labels: str, held_out: list[str], seed: int, budget_s: float, rm_steps: int,
                  beta: float, folder: Path) -> dict[str, dict]:
    """The methods on one label file and seed; {method: {"model_dir", "train_s", "steps"}}."""
    common = ["--seed", str(seed), "--overwrite"]
    results = {}
    rl_algos = [method.removeprefix("rm+") for method in methods if method.startswith("rm+")]
    if rl_algos:
        rm = run("train_reward_model.py", ["--preferences", labels, *held_out, "--gold-reward", JUDGE, "--steps", str(rm_steps),
                                           "--run-dir", str(folder / "rm"), *common])
    for algo in rl_algos:
        summary = run("train_rlhf.py", ["--algo", algo, "--reward", f"rm:{folder / 'rm' / 'model'}", "--gold-reward", JUDGE,
                                        "--steps", "100000", "--max-train-s", str(max(1.0, budget_s - rm["train_s"])), "--log-completions-every", "0",
                                        "--run-dir", str(folder / algo), *common])
        results[f"rm+{algo}"] = {"model_dir": folder / algo / "model", "train_s": rm["train_s"] + summary["wall_s"],
                                 "steps": summary["steps"], "rm_eval_accuracy": rm["eval_accuracy"]}
    for method in [m for m in methods if m in ("dpo", "ipo")]:
        summary = run("train_dpo.py", ["--preferences", labels, *held_out, "--loss-type", "sigmoid" if method == "dpo" else "ipo",
                                       "--beta", str(beta),
                                       "--steps", "100000", "--max-train-s", str(budget_s),
                                       "--eval-every", "100000",  # held-out pair accuracy once, at the end
                                       "--run-dir", str(folder / method), *common])
        results[method] = {"model_dir": folder / method / "model", "train_s": summary["wall_s"], "steps": summary["steps"],
                           "pair_accuracy": summary["pair_accuracy"]}
    return results


def markdown(rows: list[dict], base: dict, budget_s: float, command: str) -> str:
    lines = [f"Measured by `{command}` on {machine()}, one run at a time; every method had {budget_s:.0f} s of training "
             f"(the reward model's included). Gold: the rule judge {JUDGE} (never optimised) on 4 fresh samples of each of the "
             f"64 eval prompts; KL: k1 of the policy against the base model on those samples. Base model: gold {base['gold']:.3f}.", "",
             "| labels | method | seed | gold after | KL per sequence | KL per token | steps | training s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['labels']} | {r['method']} | {r['seed']} | **{r['gold']:.3f}** | {r['kl_sequence']:.2f} | {r['kl_token']:.3f} | "
              f"{r['steps']} | {r['train_s']:.0f} |" for r in rows]
    lines += ["", "| labels | method | gold after, mean (min-max) | KL per sequence, mean |", "|---|---|---|---|"]
    for labels in dict.fromkeys(r["labels"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["labels"] == labels and r["method"] == method]
            golds = [r["gold"] for r in mine]
            lines.append(f"| {labels} | {method} | {np.mean(golds):.3f} ({min(golds):.3f}-{max(golds):.3f}) | "
                         f"{np.mean([r['kl_sequence'] for r in mine]):.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], base: dict, path: Path) -> None:
    colors = dict(zip(METHODS, ("C0", "C1", "C2", "C3"), strict=True))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    panels = []
    for labels in dict.fromkeys(r["labels"] for r in rows):
        lines = {method: ([r["kl_sequence"] for r in rows if r["labels"] == labels and r["method"] == method],
                          [r["gold"] for r in rows if r["labels"] == labels and r["method"] == method],
                          {"linestyle": "none", "marker": "o", "markersize": 7, "color": colors[method]}) for method in methods}
        lines["base model"] = ([0.0], [base["gold"]], {"linestyle": "none", "marker": "*", "markersize": 12, "color": "k"})
        panels.append((f"KL to the base model per sequence (k1); {labels} pairs", f"gold score ({JUDGE})", lines))
    plot_lines(path, panels, "same preferences, same wall time: reward model + GRPO / PPO against DPO / IPO")


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Seeds of each method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="Which methods to train")
    parser.add_argument("--labels", nargs="+", default=["shipped", "simulated"], choices=["shipped", "simulated"], help="Label files")
    parser.add_argument("--budget-s", type=float, default=120.0, help="Seconds of training per method (reward model included)")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's and IPO's beta (train_dpo.py --beta; IPO's margin "
                                                                  "target is 1 / (2 beta) nats per token)")
    parser.add_argument("--rm-steps", type=int, default=150, help="Reward model steps (its time is charged to (a) and (b))")
    parser.add_argument("--simulated-n", type=int, default=1000, help="Pairs the simulated labeller labels")
    parser.add_argument("--runs-dir", default="runs/preferences", help="Parent folder of the run folders")
    parser.add_argument("--out", default="bench/preferences", help="Write OUT.json, OUT.md and OUT.png")
    args = parser.parse_args()
    require_positive(budget_s=args.budget_s, rm_steps=args.rm_steps, beta=args.beta)
    if args.simulated_n < 10:
        raise ConfigError(f"--simulated-n must be >= 10, got {args.simulated_n}")
    runs_dir, scorer, rows = Path(args.runs_dir), FixedEvaluation(JUDGE), []
    base = scorer(scorer.base_dir)
    for labels_name in args.labels:
        labels, held_out = label_files(labels_name, runs_dir, args.simulated_n)
        for seed in args.seeds:
            for method, result in train_methods(args.methods, labels, held_out, seed, args.budget_s, args.rm_steps,
                                                args.beta, runs_dir / labels_name / f"seed{seed}").items():
                row = {"labels": labels_name, "method": method, "seed": seed, **result, **scorer(result["model_dir"])}
                row["model_dir"] = str(row["model_dir"])
                rows.append(row)
                print(f"{labels_name} {method} seed {seed}: gold {row['gold']:.3f}, KL {row['kl_sequence']:.2f} per sequence, "
                      f"{row['steps']} steps in {row['train_s']:.0f} s", flush=True)
    command = "python scripts/compare_preferences.py " + " ".join(sys.argv[1:])
    table = markdown(rows, base, args.budget_s, command.strip())
    print(table)
    write_json(f"{args.out}.json", {"command": command, "machine": machine(), "budget_s": args.budget_s, "base": base, "rows": rows})
    atomic_write(f"{args.out}.md", lambda tmp: Path(tmp).write_text("# Preferences: reward model + RL against DPO and IPO\n\n" + table))
    plot(rows, base, Path(f"{args.out}.png"))


if __name__ == "__main__":
    main()
