#!/usr/bin/env python
"""GRPO and PPO side by side on --task arithmetic over seeds: held-out pass@1 and pass@k before and
after, KL, training seconds, and pass@1 against step for every run in one plot.

    python scripts/compare_reasoning.py --seeds 1 2 3 --out bench/reasoning     # ~25 minutes on 2 cores

Each run is `train_rlhf.py --task arithmetic --algo ALGO --seed S` in its own process, one at a time;
run folders go to RUNS_DIR/ALGO-seedS. Writes OUT.json, OUT.md and OUT.png.
"""

import json
import sys
from pathlib import Path

import numpy as np

from classic_rl.infra.cli import cli, run_in_own_process, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.machine import machine
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import atomic_write, read_jsonl, write_json

SCRIPT = Path(__file__).resolve().parent / "train_rlhf.py"
KEYS = ("pass_at_1_before", "pass_at_1_after", "pass_at_k_before", "pass_at_k_after", "think_words_after", "kl_final", "wall_s")


def run_one(algo: str, seed: int, run_dir: Path, extra: list[str], keep_finished: bool) -> dict:
    if not (keep_finished and (run_dir / "summary.json").is_file()):
        run_in_own_process(SCRIPT, ["--task", "arithmetic", "--algo", algo, "--seed", str(seed), "--run-dir", str(run_dir),
                                    "--overwrite", "--log-completions-every", "0", *extra])
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    curve = [(r["step"], r["eval/pass_at_1"]) for r in rows if "eval/pass_at_1" in r]
    row = {"algo": algo, "seed": seed, **{key: summary[key] for key in KEYS}, "k": summary["k"], "curve": curve}
    print(f"{algo} seed {seed}: pass@1 {row['pass_at_1_before']:.3f} -> {row['pass_at_1_after']:.3f}, pass@{row['k']} "
          f"{row['pass_at_k_before']:.3f} -> {row['pass_at_k_after']:.3f}, {row['wall_s']:.0f} s", flush=True)
    return row


def markdown(rows: list[dict], command: str) -> str:
    k = rows[0]["k"]
    lines = [f"Measured by `{command}` on {machine()}, one run at a time.", "",
             f"| algo | seed | pass@1 before | pass@1 after | pass@{k} before | pass@{k} after | think words after | KL final | training s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['seed']} | {r['pass_at_1_before']:.3f} | **{r['pass_at_1_after']:.3f}** | {r['pass_at_k_before']:.3f} | "
                     f"{r['pass_at_k_after']:.3f} | {r['think_words_after']:.1f} | {r['kl_final']:.4f} | {r['wall_s']:.0f} |")
    for algo in dict.fromkeys(r["algo"] for r in rows):
        mine = [r for r in rows if r["algo"] == algo]
        gains = [r["pass_at_1_after"] - r["pass_at_1_before"] for r in mine]
        lines.append(f"\n{algo}: pass@1 gain {np.mean(gains) * 100:+.1f} points on average (range {min(gains) * 100:+.1f} to "
                     f"{max(gains) * 100:+.1f}), {np.mean([r['wall_s'] for r in mine]):.0f} s of training.")
    return "\n".join(lines) + "\n"


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--algos", nargs="+", default=["grpo", "ppo"], choices=["grpo", "ppo"], help="Algorithms to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Seeds of each algorithm")
    parser.add_argument("--runs-dir", default="runs/reasoning", help="Parent folder of the run folders")
    parser.add_argument("--out", default="bench/reasoning", help="Write OUT.json, OUT.md and OUT.png")
    parser.add_argument("--steps", type=int, default=None, help="Training steps of every run (default: the task's)")
    parser.add_argument("--keep-finished", action="store_true", help="Reuse run folders that already hold a summary.json "
                                                                      "(a comparison stopped half way goes on)")
    args = parser.parse_args()
    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps must be > 0, got {args.steps}")
    extra = ["--steps", str(args.steps)] if args.steps else []
    rows = [run_one(algo, seed, Path(args.runs_dir) / f"{algo}-seed{seed}", extra, args.keep_finished)
            for algo in args.algos for seed in args.seeds]
    command = "python scripts/compare_reasoning.py " + " ".join(sys.argv[1:])
    table = markdown(rows, command.strip())
    print(table)
    write_json(f"{args.out}.json", {"command": command, "machine": machine(), "rows": rows})
    atomic_write(f"{args.out}.md", lambda tmp: Path(tmp).write_text("# Reasoning with verifiable rewards: GRPO and PPO\n\n" + table))
    plot_lines(Path(f"{args.out}.png"), [("step", "held-out pass@1", {
        f"{r['algo']} seed {r['seed']}": ([s for s, _ in r["curve"]], [p for _, p in r["curve"]],
                                          {"color": "C0" if r["algo"] == "grpo" else "C1", "marker": None}) for r in rows})],
        "--task arithmetic: pass@1 on 100 held-out problems")


if __name__ == "__main__":
    main()
