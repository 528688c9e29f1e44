#!/usr/bin/env python
"""Language models as agents, measured: the calculator with and without the tool, FrozenLake, the maze and Taxi as text games,
each `train_rlhf.py --task NAME` with the task's own recipe, over seeds, one run at a time in its own process.

    python scripts/bench_agents.py --out bench/agents                       # every experiment, seed 0 (~20 min on 2 cores)
    python scripts/bench_agents.py --experiments frozenlake --seeds 0 1 2

Experiments: calculator (the tool), calculator-no-tool (the same training with --tools '': its calls go unanswered, so
it can only learn to answer in its head), calculator-chat (the same through a chat template: the call in the assistant's
turn, the answer a tool message), frozenlake, maze, taxi. Run folders go to RUNS_DIR/EXPERIMENT-seedS; writes OUT.json
(every summary's agent keys) and OUT.md (the table).
"""

import json
from pathlib import Path

import numpy as np

from classic_rl.infra.cli import cli, run_in_own_process, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.machine import machine
from classic_rl.infra.run_folder import atomic_write, write_json

SCRIPT = Path(__file__).resolve().parent / "train_rlhf.py"
EXPERIMENTS = {"calculator": ["--task", "calculator"], "calculator-no-tool": ["--task", "calculator", "--tools", ""],
               "calculator-chat": ["--task", "calculator-chat"],
               **{game: ["--task", game] for game in ("frozenlake", "maze", "taxi")}}
# summary.json's keys each experiment reports, as (column, key)
CALCULATOR_COLUMNS = [("pass@1 before", "pass_at_1_before"), ("pass@1 after", "pass_at_1_after"),
                      ("pass@1 after, no tool", "pass_at_1_no_tool_after"), ("calls before", "tool_calls_per_problem_before"),
                      ("calls after", "tool_calls_per_problem_after")]
COLUMNS = {"calculator": CALCULATOR_COLUMNS, "calculator-chat": CALCULATOR_COLUMNS,
           "calculator-no-tool": [("pass@1 before", "pass_at_1_before"), ("pass@1 after", "pass_at_1_after")],
           "frozenlake": [("success before", "success_rate_before"), ("success after", "success_rate_after"),
                          ("value iteration", "optimal_success_rate")],
           **{game: [("shortest path before", "success_rate_before"), ("shortest path after", "success_rate_after"),
                     ("value iteration", "optimal_success_rate")] for game in ("maze", "taxi")}}


def run(experiment: str, seed: int, runs_dir: Path) -> dict:
    run_dir = runs_dir / f"{experiment}-seed{seed}"
    run_in_own_process(SCRIPT, [*EXPERIMENTS[experiment], "--seed", str(seed), "--run-dir", str(run_dir), "--overwrite",
                                "--log-completions-every", "0"])
    return json.loads((run_dir / "summary.json").read_text())


def table(results: dict[str, list[dict]]) -> list[str]:
    lines = []
    for experiment, summaries in results.items():
        columns = COLUMNS[experiment]
        lines += [f"**{experiment}** ({len(summaries)} seed(s); min-max over seeds)", "",
                  "| " + " | ".join([name for name, _ in columns] + ["training s"]) + " |", "|---" * (len(columns) + 1) + "|"]
        cells = [spread([s[key] for s in summaries]) for _, key in columns] + [spread([s["wall_s"] for s in summaries], "{:.0f}")]
        lines += ["| " + " | ".join(cells) + " |", ""]
        if experiment in ("calculator", "calculator-chat"):
            for when in ("before", "after", "no_tool_after"):
                modes = summaries[0][f"failure_modes_{when}"]
                lines.append(f"failure modes {when.replace('_', ' ')} (seed {summaries[0]['seed']}): "
                             + ", ".join(f"{mode} {share:.2f}" for mode, share in modes.items()))
            lines.append("")
    return lines


def spread(values: list[float], form: str = "{:.3f}") -> str:
    low, high = min(values), max(values)
    return form.format(low) if np.isclose(low, high) else f"{form.format(low)}-{form.format(high)}"


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), help=f"Any of {', '.join(EXPERIMENTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--runs-dir", default="runs/bench-agents")
    parser.add_argument("--out", default="runs/bench-agents/agents", help="Writes OUT.json and OUT.md")
    args = parser.parse_args()
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        raise ConfigError(f"unknown --experiments {', '.join(unknown)}; accepted: {', '.join(EXPERIMENTS)}")
    results = {e: [run(e, seed, Path(args.runs_dir)) for seed in args.seeds] for e in args.experiments}
    lines = [f"Machine: {machine()}", "", *table(results)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(f"{args.out}.md"), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    write_json(Path(f"{args.out}.json"), {"machine": machine(), "results": results})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
