"""Reward functions: plain callables `reward(prompts, completions, **columns) -> list[float]`
(TRL's signature; extra dataset columns arrive as keyword lists), built-in rules, and the
`--reward` spec that combines several with weights.

Built-in rules return a score in [0, 1], 1 = perfect:
- length: closeness of the answer's word count to a target (from the prompt's "in N words",
  else `target_words`): max(0, 1 - |words - target| / target);
- format: the completion is exactly `<answer> ... </answer>` (1.0); the tags are there but with
  text outside them (0.5); only the opening tag (0.25); otherwise 0.
- think: the completion is exactly `<think> ... </think> <answer> ... </answer>`, both non-empty
  (1.0); both pairs in that order with text around them (0.5); a `<think> ... </think>` pair alone
  (0.25); otherwise 0. The simplest reward for a reasoning layout, usable with any task.
- brevity: "prefer the shorter answer": 1 - words / 40 of the answer, floored at 0 (an empty answer
  scores 1: pair it with format to hold that hack back). The simulated labeller of the RLHF loop.
- correct: 1 if the number inside the first `<answer> ... </answer>` equals the row's `answer`
  column (spaces, a sign, thousands commas and a final full stop allowed; anything else is 0).
- environment: a multi-turn rollout's own reward, its environment's get_reward() (rlhf_toy/agents/).
The default RLHF reward is `length,format` with weights 0.5,0.5.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
import traceback
from collections.abc import Callable, Sequence

from classic_rl.infra.cli import load_user_object
from classic_rl.infra.errors import ConfigError
from rlhf_toy.chat import Completion, Prompt, as_assistant_turn, is_conversational, message_text
from rlhf_toy.rewards.learned_reward import RewardModelScorer

OPEN_TAG, CLOSE_TAG = "<answer>", "</answer>"  # the layout the format reward asks for
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
RewardFn = Callable[..., Sequence[float]]

_TARGET_IN_PROMPT = re.compile(r"\bin (\d+) words\b", re.IGNORECASE)
_EXACT_FORMAT = re.compile(rf"^{re.escape(OPEN_TAG)}(.+?){re.escape(CLOSE_TAG)}$", re.DOTALL)
_THINK_THEN_ANSWER = re.compile(rf"{re.escape(THINK_OPEN)}(.*?){re.escape(THINK_CLOSE)}\s*{re.escape(OPEN_TAG)}(.*?){re.escape(CLOSE_TAG)}",
                                re.DOTALL)
_THINK_PAIR = re.compile(rf"{re.escape(THINK_OPEN)}(.*?){re.escape(THINK_CLOSE)}", re.DOTALL)
_ANSWER_BLOCK = re.compile(rf"{re.escape(OPEN_TAG)}(.*?){re.escape(CLOSE_TAG)}", re.DOTALL)
_NUMBER = re.compile(r"^([+-]?)\s*(\d{1,3}(?:,\d{3})+|\d+)\.?$")


def on_texts(rule: RewardFn) -> RewardFn:
    """A built-in rule that reads text, given prompts and completions in either of TRL's formats: a conversation is
    read as its last message (the user's question, the assistant's answer)."""
    @functools.wraps(rule)
    def read_texts(prompts, completions, **columns):
        return rule([message_text(p) for p in prompts], [message_text(c) for c in completions], **columns)
    return read_texts


def answer_text(completion: str) -> str:
    """The text inside the answer tags if present, else the whole completion, stripped."""
    inner = completion.split(OPEN_TAG, 1)[-1].split(CLOSE_TAG, 1)[0]
    return inner.strip()


@on_texts
def length_reward(prompts: list[str], completions: list[str], target_words: int = 12, **_) -> list[float]:
    """1 - |words - target| / target, floored at 0; the target comes from "in N words" in the prompt if stated."""
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        stated = _TARGET_IN_PROMPT.search(prompt)
        target = int(stated.group(1)) if stated else target_words
        words = len(answer_text(completion).split())
        scores.append(max(0.0, 1.0 - abs(words - target) / max(target, 1)))
    return scores


BREVITY_WORDS = 40  # the default max_completion_length in tokens: no answer that fits is longer in words


@on_texts
def brevity_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
    """1 - words / 40 of the answer text, floored at 0: the shorter, the better."""
    return [max(0.0, 1.0 - len(answer_text(c).split()) / BREVITY_WORDS) for c in completions]


@on_texts
def format_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
    """1 for exactly `<answer> text </answer>`, 0.5 for the tags with text outside, 0.25 for the opening tag only."""
    scores = []
    for completion in completions:
        text = completion.strip()
        exact = _EXACT_FORMAT.match(text)
        if exact and exact.group(1).strip() and OPEN_TAG not in exact.group(1):
            scores.append(1.0)
        elif OPEN_TAG in text and CLOSE_TAG in text.split(OPEN_TAG, 1)[1]:
            scores.append(0.5)
        else:
            scores.append(0.25 if OPEN_TAG in text else 0.0)
    return scores


@on_texts
def think_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
    """1 for exactly `<think> T </think> <answer> A </answer>` (T, A non-empty), 0.5 with text around it or an
    empty part, 0.25 for a think pair alone."""
    scores = []
    for completion in completions:
        text = completion.strip()
        layout = _THINK_THEN_ANSWER.search(text)
        if layout and layout.span() == (0, len(text)) and layout.group(1).strip() and layout.group(2).strip():
            scores.append(1.0)
        elif layout:
            scores.append(0.5)
        else:
            scores.append(0.25 if _THINK_PAIR.search(text) else 0.0)
    return scores


def think_text(completion: str) -> str:
    """What the first <think> ... </think> holds ("" without one)."""
    pair = _THINK_PAIR.search(completion)
    return pair.group(1).strip() if pair else ""


def parse_answer_number(completion: str) -> int | None:
    """The integer inside the first `<answer> ... </answer>`, or None when there is none or it holds anything else."""
    block = _ANSWER_BLOCK.search(completion)
    number = _NUMBER.match(block.group(1).strip()) if block else None
    if number is None:
        return None
    return int(number.group(1) + number.group(2).replace(",", ""))


@on_texts
def correct_reward(prompts: list[str], completions: list[str], answer: list | None = None, **_) -> list[float]:
    """1 where the answer block's number equals the `answer` column (a dataset column, TRL's convention), else 0."""
    if answer is None:
        raise ConfigError("the correct reward needs an `answer` column in the prompts file, e.g. --task arithmetic")
    return [float(parse_answer_number(c) == int(str(a).strip())) for c, a in zip(completions, answer, strict=True)]


def environment_reward(prompts: list, completions: list, environments: list | None = None, **_) -> list[float]:
    """Each rollout's own reward from its environment, get_reward() (TRL's environment_factory protocol: the text games'
    success, a user environment's score)."""
    if environments is None:
        raise ConfigError("the environment reward reads the rollouts' environments; add --environment-factory (e.g. "
                          "--task frozenlake)")
    return [environment.get_reward() for environment in environments]


BUILTIN_REWARDS: dict[str, RewardFn] = {"length": length_reward, "format": format_reward, "think": think_reward,
                                        "correct": correct_reward, "brevity": brevity_reward, "environment": environment_reward}
DEFAULT_REWARD = "length,format"


class RewardFunctionError(ConfigError):
    """A reward function broke its contract; the message names it and the first bad index."""


def check_scores(name: str, scores, n: int) -> list[float]:
    """The scores as floats, or an error naming the function and the first bad value."""
    try:
        scores = list(scores)
    except TypeError:
        raise RewardFunctionError(f"reward {name!r} returned {type(scores).__name__}, expected a list of {n} numbers") from None
    if len(scores) != n:
        raise RewardFunctionError(f"reward {name!r} returned {len(scores)} values for {n} completions")
    for i, score in enumerate(scores):
        if score is None or isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise RewardFunctionError(f"reward {name!r} returned {score!r} at index {i}; expected a finite number")
    return [float(s) for s in scores]


def call_reward(name: str, fn: RewardFn, prompts: list[str], completions: list[str], columns: dict) -> list[float]:
    """fn's checked scores. An exception inside fn becomes a RewardFunctionError that names it and the line that raised
    it: in training, the run then keeps its last good weights (online.train_step) and ends with one line."""
    try:
        scores = fn(prompts, completions, **columns)
    except ConfigError:
        raise
    except Exception as err:
        where = traceback.extract_tb(err.__traceback__)[-1]
        raise RewardFunctionError(f"reward {name!r} raised {type(err).__name__}: {err} ({where.filename}, line {where.lineno})") from err
    return check_scores(name, scores, len(completions))


class CombinedReward:
    """A weighted sum of reward functions that also reports each component.

    Called like a reward function; `score` returns (total [B], {name: [B]}).
    """

    def __init__(self, functions: dict[str, RewardFn], weights: Sequence[float]):
        self.functions, self.weights = functions, list(weights)

    def score(self, prompts: list[Prompt], completions: list[Completion], **columns) -> tuple[list[float], dict[str, list[float]]]:
        """completions are texts, or a multi-turn chat rollout's lists of messages; for conversational prompts each
        function receives them as TRL passes them, lists of messages (a text as `[{"role": "assistant", "content": text}]`)."""
        if any(map(is_conversational, prompts)):
            completions = [as_assistant_turn(c) for c in completions]
        components = {name: call_reward(name, fn, prompts, completions, columns) for name, fn in self.functions.items()}
        totals = [sum(w * components[name][i] for name, w in zip(self.functions, self.weights, strict=True))
                  for i in range(len(completions))]
        return totals, components

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float]:
        return self.score(prompts, completions, **columns)[0]


def _load_user_function(spec: str) -> RewardFn:
    """`path/to/file.py:function` or `package.module:function`, with TRL's reward signature."""
    fn = load_user_object(spec, "--reward")
    try:
        inspect.signature(fn).bind_partial(["prompt"], ["completion"])  # columns come by name, and only some runs have them
    except TypeError:
        raise ConfigError(f"reward {spec} takes {inspect.signature(fn)}; accepted: (prompts, completions, **columns), "
                          "TRL's reward signature") from None
    except ValueError:  # a callable without a signature to read: called as it is
        pass
    return fn


def resolve_reward(spec: str = DEFAULT_REWARD, weights: Sequence[float] | None = None, target_words: int = 12) -> CombinedReward:
    """Build the reward from a comma list of names (`length,format`), `FILE.py:FUNCTION`,
    `package.module:function` or `rm:DIR` (a trained reward model), weighted as reward_weights says.
    """
    parts = reward_names(spec)
    if not parts:
        raise ConfigError(f"--reward is empty; accepted: a comma list of {', '.join(BUILTIN_REWARDS)}, FILE.py:FUNCTION, "
                          "package.module:function or rm:DIR")
    functions: dict[str, RewardFn] = {}
    for part in parts:
        if part in BUILTIN_REWARDS:
            fn = BUILTIN_REWARDS[part]
            functions[part] = functools.partial(fn, target_words=target_words) if part == "length" else fn
        elif part.startswith("rm:"):
            functions[part] = RewardModelScorer(part[3:])
        elif ":" in part:
            functions[part] = _load_user_function(part)
        else:
            raise ConfigError(f"unknown reward {part!r}; accepted: {', '.join(BUILTIN_REWARDS)}, FILE.py:FUNCTION, "
                              "package.module:function or rm:DIR")
    return CombinedReward(functions, reward_weights(spec, weights))


def reward_names(spec: str) -> list[str]:
    """The rewards of a --reward comma list, in its order (the order of every per-function tensor)."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"--reward names {', '.join(twice)} more than once; accepted: each reward once, weighted by --reward-weights")
    return names


def reward_weights(spec: str, weights: Sequence[float] | None = None) -> list[float]:
    """The weight of each reward in spec: weights, or by default equal shares summing to 1 (so rule sums stay in
    [0, 1])."""
    names = reward_names(spec)
    if weights is None or len(weights) == 0:
        return [1.0 / len(names)] * len(names)
    if len(weights) != len(names):
        raise ConfigError(f"--reward-weights has {len(weights)} values for {len(names)} rewards ({', '.join(names)})")
    return list(weights)
