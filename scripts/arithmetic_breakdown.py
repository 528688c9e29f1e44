#!/usr/bin/env python
"""What a --task arithmetic run learned, problem type by problem type: the share of held-out eval
completions that are correct before and after training, by operator, digit count and number of carries
or borrows, and how often the completions think first.

    python scripts/arithmetic_breakdown.py runs/arithmetic
"""

import json
from collections import defaultdict
from pathlib import Path

from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from rlhf_toy.arithmetic import carries, solve
from rlhf_toy.rewards import parse_answer_number, think_text


def problem_of(prompt: str) -> tuple[int, str, int]:
    """(a, op, b) of "Compute a op b."."""
    _, a, op, b = prompt.rstrip(".").split()
    return int(a), op, int(b)


def kinds(a: int, op: str, b: int) -> dict[str, str]:
    """The groups a problem belongs to."""
    return {"operator": op, "digits": f"{len(str(a))} and {len(str(b))}", f"{'carries' if op == '+' else 'borrows'}": str(carries(a, op, b))}


def breakdown(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(group, value) -> verdicts of the rows' completions (1 correct, 0 not)."""
    table = defaultdict(list)
    for row in rows:
        a, op, b = problem_of(row["prompt"])
        right = float(parse_answer_number(row["completion"]) == solve(a, op, b))
        for group, value in [("all", "all"), *kinds(a, op, b).items()]:
            table[(group, value)].append(right)
    return table


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("run_dir", help="A folder written by train_rlhf.py --task arithmetic")
    args = parser.parse_args()
    path = Path(args.run_dir) / "eval_samples.json"
    if not path.is_file():
        raise ConfigError(f"{path} not found; give a finished train_rlhf.py --task arithmetic run folder")
    samples = json.loads(path.read_text())
    before, after = breakdown(samples["before"]), breakdown(samples["after"])
    print(f"{'group':10s} {'value':10s} {'n':>5s} {'before':>7s} {'after':>7s}")
    for key in sorted(before, key=lambda k: (k[0] != "all", k)):
        print(f"{key[0]:10s} {key[1]:10s} {len(before[key]):5d} {sum(before[key]) / len(before[key]):7.3f} "
              f"{sum(after[key]) / len(after[key]):7.3f}")
    for when in ("before", "after"):
        rows = samples[when]
        thinking = sum(bool(think_text(r["completion"])) for r in rows) / len(rows)
        print(f"{when}: {thinking:.0%} of completions think first")


if __name__ == "__main__":
    main()
