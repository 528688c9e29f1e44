"""Arithmetic with a checkable answer: the problems, their worked solutions, and pass@k.

A problem is "Compute 47 + 38." (2- and 3-digit addition and subtraction, results never
negative); its answer travels with it as a dataset column. A worked solution goes digit by digit
from the ones, in the layout the `think` reward asks for:

    Compute 47 + 38.  ->  <think> 7 + 8 = 15 , 4 + 3 + 1 = 8 </think> <answer> 85 </answer>
    Compute 52 - 38.  ->  <think> 12 - 8 = 4 , 5 - 1 - 3 = 1 </think> <answer> 14 </answer>

Each column writes one digit of the result (the last column writes what it gets), a carry or
borrow shows as the extra "+ 1" or "- 1" of the next column. The pretraining corpus gets
solutions of which some are wrong (one column miscounted, and everything after it follows from
that) and some skip the thinking, so the base model is right sometimes and wrong often.
"""

from __future__ import annotations

import random
import re
from math import comb

OPERATORS = ("+", "-")
DIGITS = (2, 3)


def make_problem(rng: random.Random) -> tuple[int, str, int]:
    """(a, op, b): both operands with 2 or 3 digits (not necessarily the same), and a >= b for subtraction."""
    a, b = (rng.randint(10 ** (d - 1), 10**d - 1) for d in (rng.choice(DIGITS), rng.choice(DIGITS)))
    op = rng.choice(OPERATORS)
    if op == "-" and a < b:
        a, b = b, a
    return a, op, b


def prompt_text(a: int, op: str, b: int) -> str:
    return f"Compute {a} {op} {b}."


def parse_prompt(prompt: str) -> tuple[int, str, int]:
    """(a, op, b) of a prompt_text "Compute a op b."; ValueError for any other text."""
    match = _PROMPT.fullmatch(prompt)
    if match is None:
        raise ValueError(f"{prompt!r} is not an arithmetic prompt ('Compute A + B.' or 'Compute A - B.')")
    return int(match[1]), match[2], int(match[3])


_PROMPT = re.compile(r"Compute (\d+) ([+-]) (\d+)\.")


def solve(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def column_steps(a: int, op: str, b: int, mistake_at: int | None = None, rng: random.Random | None = None) -> tuple[list[str], int]:
    """The digit-by-digit steps from the ones column (a missing digit counts as 0), and the result they spell.

    Addition: "x + y [+ 1] = v" writes v's last digit and carries its tens (the last column writes all
    of v). Subtraction: "x - y = v", or "1x - y = v" when x is too small (borrowing), with "- 1" when the
    column before borrowed. mistake_at: the column whose value is off by one (up or down, from rng);
    later columns carry on from the wrong value, as a person's slip would.
    """
    width = max(len(str(a)), len(str(b)))
    digits_a, digits_b = (str(n)[::-1].ljust(width, "0") for n in (a, b))
    steps, written, carry = [], [], 0
    for i, (x, y) in enumerate(zip(map(int, digits_a), map(int, digits_b), strict=True)):
        last = i == width - 1
        if op == "+":
            value = x + y + carry
            text = f"{x} + {y}" + (" + 1" if carry else "")
        else:
            borrow = int(x - carry < y)
            value = x + 10 * borrow - carry - y
            text = f"{x + 10 * borrow}" + (" - 1" if carry else "") + f" - {y}"
        if i == mistake_at:
            value = max(0, value + (rng or random.Random(0)).choice((-1, 1)))
        steps.append(f"{text} = {value}")
        if op == "+":
            written.append(str(value) if last else str(value % 10))
            carry = value // 10
        else:
            written.append(str(value % 10))
            carry = borrow
    return steps, int("".join(reversed(written)))


def worked_solution(a: int, op: str, b: int, rng: random.Random, mistake_rate: float, no_think_rate: float) -> str:
    """A completion in the think/answer layout: right, with a slip (mistake_rate), or without the
    thinking and then with a guess off by a small amount half of the time (no_think_rate)."""
    if rng.random() < no_think_rate:
        guess = solve(a, op, b) + (rng.choice((-10, -1, 1, 10)) if rng.random() < 0.5 else 0)
        return f"<answer> {max(0, guess)} </answer>"
    columns = max(len(str(a)), len(str(b)))
    mistake_at = rng.randrange(columns) if rng.random() < mistake_rate else None
    steps, result = column_steps(a, op, b, mistake_at, rng)
    return f"<think> {' , '.join(steps)} </think> <answer> {result} </answer>"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n - c, k) / C(n, k), the chance that k of the n samples drawn without replacement hold a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


# Shares of the pretraining corpus's worked solutions that slip in one column, or skip the thinking.
MISTAKE_RATE, NO_THINK_RATE = 0.3, 0.2


def arithmetic_splits(rng: random.Random, sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """The held-out eval problems first, then training prompts and worked solutions for pretraining, all
    distinct problems, so no eval problem is ever trained on. Rows: {"prompt", "answer"} and {"prompt", "response"}."""
    seen: set[tuple[int, str, int]] = set()

    def fresh() -> tuple[int, str, int]:
        while (problem := make_problem(rng)) in seen:
            pass
        seen.add(problem)
        return problem

    def task_row(problem: tuple[int, str, int]) -> dict[str, str]:
        return {"prompt": prompt_text(*problem), "answer": str(solve(*problem))}

    splits = {name: [task_row(fresh()) for _ in range(sizes[name])] for name in ("arithmetic_eval", "arithmetic_train")}
    splits["arithmetic_sft"] = [{"prompt": prompt_text(*p), "response": worked_solution(*p, rng, MISTAKE_RATE, NO_THINK_RATE)}
                                for p in (fresh() for _ in range(sizes["arithmetic_sft"]))]
    return splits


def carries(a: int, op: str, b: int) -> int:
    """How many columns of the right solution take a carry (addition) or a borrow (subtraction) from the column before."""
    steps, _ = column_steps(a, op, b)
    return sum(len(step.split(" = ")[0].split()) == 5 for step in steps)  # "x + y + 1", "x - 1 - y": the column after one
