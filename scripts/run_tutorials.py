#!/usr/bin/env python
"""Run the tutorials' own experiments (the `--preset tutorial-*` presets of train_classic.py) over
seeds, each in its own process, and tabulate each tutorial's number against ours.

    python scripts/run_tutorials.py                                  # every preset, seed 1 (make tutorials)
    python scripts/run_tutorials.py --seeds 1 2 3 --out bench/tutorials --figures bench/tutorials   # bench/tutorials.md

Run folders go to RUNS_DIR/PRESET-seedN (figures included); --out writes OUT.json and OUT.md.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from classic_rl import tutorials
from classic_rl.infra.cli import cli, run_in_own_process, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.machine import machine
from classic_rl.infra.run_folder import atomic_write, write_json

SCRIPT = Path(__file__).resolve().parent / "train_classic.py"


def run_one(name: str, seed: int, run_dir: Path) -> dict:
    """Train one preset at one seed in a fresh process; the row of the table."""
    run_in_own_process(SCRIPT, ["--preset", name, "--seed", str(seed), "--run-dir", str(run_dir), "--overwrite"])
    summary = json.loads((run_dir / "summary.json").read_text())
    entry = summary["tutorial"]
    print(f"{name} seed {seed}: {entry['measured_text']} ({summary['wall_s']:.0f} s)", flush=True)
    return {"preset": name, "seed": seed, "measured": entry["measured"], "measured_text": entry["measured_text"],
            "env_steps": summary["env_steps"], "wall_s": summary["wall_s"], "run_dir": str(run_dir), "figures": entry["figures"]}


def copy_figures(rows: list[dict], seed: int, folder: Path) -> None:
    """The tutorial figures (not the learning curves) of each preset's run at `seed`, as FOLDER/PRESET-FIGURE."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if row["seed"] == seed:
            for figure in row["figures"]:
                if figure != "learning_curve.png":
                        shutil.copyfile(Path(row["run_dir"]) / figure, folder / f"{row['preset']}-{figure}")


def markdown(rows: list[dict], seeds: list[int]) -> str:
    lines = [f"Measured by `python scripts/run_tutorials.py --seeds {' '.join(map(str, seeds))}` on {machine()}, "
             "one process per run, one torch thread each.", "",
             "| preset | tutorial | the tutorial reports | ours, per seed | mean | wall s (mean) |", "|---|---|---|---|---|---|"]
    for name, chosen in tutorials.TUTORIALS.items():
        mine = [r for r in rows if r["preset"] == name]
        if mine:
            values = [r["measured"] for r in mine]
            lines.append(f"| `{name}` | {chosen.source} | {chosen.reported} | {', '.join(f'{v:.3g}' for v in values)} | "
                         f"{np.mean(values):.3g} | {np.mean([r['wall_s'] for r in mine]):.0f} |")
    lines += ["", "What each number is (seed 1):", ""]
    lines += [f"- `{r['preset']}`: {r['measured_text']}" for r in rows if r["seed"] == seeds[0]]
    return "\n".join(lines) + "\n"


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--presets", nargs="+", default=list(tutorials.TUTORIALS), help="Which presets (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="Seeds to run each preset with")
    parser.add_argument("--runs-dir", default="runs/tutorials", help="Parent folder of the run folders")
    parser.add_argument("--out", default=None, help="Write OUT.json and OUT.md (e.g. bench/tutorials)")
    parser.add_argument("--figures", default=None, help="Copy the first seed's figures into this folder as PRESET-FIGURE")
    args = parser.parse_args()
    for name in args.presets:
        tutorials.tutorial(name)  # a ConfigError names the accepted presets before anything runs
    if not args.seeds:
        raise ConfigError("--seeds needs at least one seed")
    rows = [run_one(name, seed, Path(args.runs_dir) / f"{name}-seed{seed}") for name in args.presets for seed in args.seeds]
    table = markdown(rows, args.seeds)
    print(table)
    if args.out:
        write_json(f"{args.out}.json", {"seeds": args.seeds, "rows": rows})
        atomic_write(f"{args.out}.md", lambda tmp: Path(tmp).write_text("# The tutorials' experiments\n\n" + table))
    if args.figures:
        copy_figures(rows, args.seeds[0], Path(args.figures))


if __name__ == "__main__":
    main()
