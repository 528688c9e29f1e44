#!/usr/bin/env python
"""What a --task arithmetic run learned, problem type by problem type: the share of held-out eval
completions that are correct before and after training, by whether they think first, operator, digit
count and number of carries or borrows. Thinking more often is a layout; thinking more accurately
(the "thinks: yes" row rising) is a skill.

    python scripts/arithmetic_breakdown.py runs/arithmetic
"""

import json
from collections import defaultdict
from pathlib import Path

from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from rlhf_toy.rewards.functions import parse_answer_number, think_text
from rlhf_toy.tasks.arithmetic import carries, parse_prompt, solve


def kinds(a: int, op: str, b: int) -> dict[str, str]:
    """The groups a problem belongs to."""
    return {"operator": op, "digits": f"{len(str(a))} and {len(str(b))}", f"{'carries' if op == '+' else 'borrows'}": str(carries(a, op, b))}


def breakdown(rows: list[dict]) -> dict[tuple[str, str], list[float]]:
    """(group, value) -> verdicts of the rows' completions (1 correct, 0 not)."""
    table: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        a, op, b = parse_prompt(row["prompt"])
        right = float(parse_answer_number(row["completion"]) == solve(a, op, b))
        thinks = "yes" if think_text(row["completion"]) else "no"
        for group, value in [("all", "all"), ("thinks", thinks), *kinds(a, op, b).items()]:
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
    try:
        samples = json.loads(path.read_text())
        before, after = breakdown(samples["before"]), breakdown(samples["after"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not an eval_samples.json written by train_rlhf.py ({err!r:.60})") from None
    except ValueError as err:  # a prompt of another task
        raise ConfigError(f"{path}: {err}; give a train_rlhf.py --task arithmetic run folder") from None
    print("share of eval completions whose answer is right (n: completions before / after)")
    print(f"{'group':10s} {'value':10s} {'n':>9s} {'before':>7s} {'after':>7s}")
    for key in sorted(set(before) | set(after), key=lambda k: (k[0] != "all", k)):
        rates = [f"{sum(t[key]) / len(t[key]):7.3f}" if t.get(key) else f"{'-':>7s}" for t in (before, after)]
        counts = f"{len(before.get(key, []))}/{len(after.get(key, []))}"
        print(f"{key[0]:10s} {key[1]:10s} {counts:>9s} {rates[0]} {rates[1]}")


if __name__ == "__main__":
    main()
