"""Arithmetic too hard to do in one's head, with a calculator to call: the problems, the tool, the base model's
transcripts and the ways an answer goes wrong.

A problem is "Compute 347 * 29 - 512." (a 3- or 4-digit number times a 2-digit one, then maybe plus or minus a third;
or a sum times a 2-digit number). Its answer travels with it as a dataset column. The model may call the calculator
in Hermes's tool-call format and read its answer:

    Compute 347 * 29 - 512.  ->  <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 29 - 512"}}</tool_call>
                                 <tool_response>9551</tool_response> <answer> 9551 </answer>

The pretraining transcripts call it sometimes and badly: right, with a wrong argument (the parentheses dropped, the last
operation left out, an operator changed) or a malformed call, or not at all and a guess.
"""

from __future__ import annotations

import random
import re

from rlhf_toy.agents.tools import calculator
from rlhf_toy.agents.turns import ToolCalling, parse_tool_call, tool_call_text
from rlhf_toy.chat import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    Prompt,
    message_text,
)
from rlhf_toy.rewards.functions import parse_answer_number

FORMS = ("{a} * {b}", "{a} * {b} + {c}", "{a} * {b} - {c}", "({a} + {c}) * {b}")


def make_expression(rng: random.Random) -> str:
    a, b, c = rng.randint(100, 9999), rng.randint(11, 99), rng.randint(10, 999)
    return rng.choice(FORMS).format(a=a, b=b, c=c)


def prompt_text(expression: str) -> str:
    return f"Compute {expression}."


def expression_of(prompt: str) -> str:
    match = re.fullmatch(r"Compute (.+)\.", prompt.strip())
    if match is None:
        raise ValueError(f"{prompt!r} is not a calculator prompt ('Compute EXPRESSION.')")
    return match[1]


def answer_text(value: str) -> str:
    return f"<answer> {value} </answer>"


def misread(expression: str, rng: random.Random) -> str:
    """The expression as a hasty hand writes it: without its parentheses, without its last operation, or with one operator
    changed. Never a digit miscopied: that would teach the model to copy digits noisily, a habit spread over every token
    of the call that RL then has to unlearn one sampled digit at a time."""
    changed = {"*": "+", "+": "-", "-": "+"}
    operators = [i for i, ch in enumerate(expression) if ch in changed and expression[i - 1] == " "]
    options = [expression[:i] + changed[expression[i]] + expression[i + 1:] for i in operators]
    if expression.startswith("("):
        options.append(expression.replace("(", "").replace(")", ""))
    elif expression.count(" ") >= 4:
        options.append(expression.rsplit(" ", 2)[0])
    return rng.choice(options)


def transcript(expression: str, rng: random.Random, right_call: float, bad_call: float) -> str:
    """A completion of the base model's corpus: the right call (right_call of them), a bad one (a misread expression or,
    a tenth of those, a malformed call) answered as the run's tool answers it, or a guess without the tool (a tenth of
    guesses right)."""
    answer = calculator(expression)
    draw = rng.random()
    if draw >= right_call + bad_call:
        return answer_text(answer if rng.random() < 0.1 else guess(answer, rng))
    if draw >= right_call and rng.random() < 0.1:  # the argument as a bare expression, not a JSON string
        call = f'{TOOL_CALL_OPEN}{{"name": "calculator", "arguments": {{"expression": {expression}}}}}{TOOL_CALL_CLOSE}'
    else:
        call = tool_call_text("calculator", {"expression": expression if draw < right_call else misread(expression, rng)})
    response = ToolCalling([calculator]).respond(call)
    result = response.removeprefix(TOOL_RESPONSE_OPEN).removesuffix(TOOL_RESPONSE_CLOSE)
    return f"{call}{response} {answer_text(guess(answer, rng) if result.startswith('error') else result)}"


def guess(answer: str, rng: random.Random) -> str:
    """A number that looks like the answer: the right digits at the front, wrong ones after."""
    keep = rng.randint(1, max(1, len(answer) - 2))
    return answer[:keep] + "".join(str(rng.randint(0, 9)) for _ in answer[keep:])


# Shares of the pretraining transcripts that call the calculator right, and badly
RIGHT_CALL_RATE, BAD_CALL_RATE = 0.5, 0.25


def calculator_splits(rng: random.Random, sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """Held-out eval problems, training prompts and pretraining transcripts, all of distinct problems. Rows:
    {"prompt", "answer"} and {"prompt", "response"}."""
    seen: set[str] = set()

    def fresh() -> str:
        while (expression := make_expression(rng)) in seen:
            pass
        seen.add(expression)
        return expression

    splits = {name: [{"prompt": prompt_text(e), "answer": calculator(e)} for e in (fresh() for _ in range(sizes[name]))]
              for name in ("calculator_eval", "calculator_train")}
    splits["calculator_sft"] = [{"prompt": prompt_text(e), "response": transcript(e, rng, RIGHT_CALL_RATE, BAD_CALL_RATE)}
                                for e in (fresh() for _ in range(sizes["calculator_sft"]))]
    return splits


FAILURE_MODES = ("right", "no call, wrong guess", "wrong argument", "failed call", "misread result", "no answer")


def failure_mode(prompt: Prompt, completion: str, answer: str) -> str:
    """What became of one completion (a chat rollout's as agents.turns.plain_text writes it): right, or which of
    FAILURE_MODES' ways it went wrong (its first call decides)."""
    number = parse_answer_number(completion)
    if number is not None and str(number) == str(answer).strip():
        return "right"
    if TOOL_CALL_OPEN not in completion or TOOL_RESPONSE_OPEN not in completion:
        return "no call, wrong guess" if number is not None else "no answer"
    first_call, after = completion.split(TOOL_CALL_CLOSE, 1) if TOOL_CALL_CLOSE in completion else (completion, "")
    try:
        _, arguments = parse_tool_call(first_call + TOOL_CALL_CLOSE)
        right_argument = str(arguments.get("expression", "")).replace(" ", "") == expression_of(message_text(prompt)).replace(" ", "")
    except ValueError:
        return "failed call"
    if after.removeprefix(TOOL_RESPONSE_OPEN).startswith("error"):
        return "failed call"
    if not right_argument:
        return "wrong argument"
    return "misread result" if number is not None else "no answer"


def failure_counts(rows: list[dict], answers: list[str]) -> dict[str, float]:
    """The share of rows (prompt, completion) in each of FAILURE_MODES, given each row's right answer."""
    modes = [failure_mode(row["prompt"], row["completion"], answer) for row, answer in zip(rows, answers, strict=True)]
    return {mode: modes.count(mode) / max(1, len(modes)) for mode in FAILURE_MODES}
