"""Preference labels from a person, or from a reward function standing in for one (scripts/label.py).

    for each new pair (prompt, two sampled completions of the model), never one already in the file:
        show it; read 1 / 2 / t (tie) / s (skip) / q (quit)       (--pointwise: 1-5 per completion)
        append the row to the JSON-lines file, flush and fsync    (Ctrl-C or a killed terminal loses nothing)

Pairwise rows are in the schema of data/preferences_*.jsonl, plus where they came from:
    {"prompt", "chosen", "rejected", "outcome": "preferred" | "tie" | "skipped",
     "labeller", "labelled_at" (UTC, ISO 8601), "model", "criterion" (if given),
     "score_chosen", "score_rejected" (a simulated labeller's reward scores)}
A tie keeps the completions in the order shown. Pointwise rows (--pointwise):
    {"prompt", "completion", "score": 1..5 or null, "outcome": "scored" | "skipped", "labeller", ...}
Skips are written too, so that a continued session never shows the same pair again.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import random
import shutil
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, TrainingInterrupted, require_positive
from classic_rl.infra.run_folder import append_jsonl_fsynced, utc_now
from classic_rl.labelling_page import PAIR_KEYS, SCORE_KEYS, LabellingPage
from rlhf_toy.chat import (
    Completion,
    Prompt,
    as_assistant_turn,
    is_conversational,
    message_text,
    require_chat_template,
)
from rlhf_toy.data import DATA_DIR, load_prompt_rows, split_columns
from rlhf_toy.generation.sampling import SamplingConfig, generate_completions
from rlhf_toy.lm.base_model import default_base_model, kind_for
from rlhf_toy.lm.models import check_model_exists, load_model, load_tokenizer
from rlhf_toy.rewards.functions import resolve_reward


@dataclass
class LabelConfig:
    out: str | None = config_field(None, "JSON-lines file the labels are appended to (default: runs/labels/pairs.jsonl, "
                                         "or runs/labels/scores.jsonl with --pointwise); an existing one is continued")
    n: int = config_field(50, "Labels the file should hold when done (pairs, or scored completions with --pointwise); "
                              "ties count, skips do not")
    model: str | None = config_field(None, "Model whose completions are judged (default: the built-in base model, the chat model "
                                           "for conversational prompts)")
    prompts: str = config_field(str(DATA_DIR / "prompts_train.jsonl"), "Prompts to sample from (JSONL rows or .txt)")
    simulate: str | None = config_field(None, "Label with this reward instead of a person (a --reward spec, e.g. "
                                              "brevity or length,format): the higher score is preferred")
    label_noise: float = config_field(0.0, "With --simulate: probability of flipping a preference (pointwise: of a "
                                           "uniformly random score)")
    pointwise: bool = config_field(False, "Score each completion 1 (bad) to 5 (good) instead of comparing two")
    criterion: str | None = config_field(None, "The rule you label by, shown above every pair and kept in each row "
                                               "(e.g. 'prefer the shorter answer')")
    labeller: str | None = config_field(None, "Who labels, kept in each row (default: human:$USER, or simulate:REWARD)")
    seed: int = config_field(0, "Seeds the prompt order, the sampling and the simulated label noise")
    max_completion_length: int = config_field(40, "Max new tokens per completion")
    temperature: float = config_field(1.0, "Sampling temperature of the completions")
    torch_threads: int = config_field(2, "torch.set_num_threads")
    web: bool = config_field(False, "Label in the browser instead of the terminal: a page served on 127.0.0.1:--port, with the "
                                    "same keys, the same --out file and the same resume")
    port: int = config_field(8000, "Port of the --web page (0: any free port; the address is printed)")
    agree_with: list[str] = config_field([], "Other labellers' pair files: each pair shown says how often your answers and "
                                             "theirs agree on the pairs both of you labelled (the same --seed shows the same pairs)")

    def __post_init__(self):
        require_positive(n=self.n, max_completion_length=self.max_completion_length, temperature=self.temperature,
                         torch_threads=self.torch_threads)
        if not 0 <= self.label_noise < 0.5:
            raise ConfigError(f"--label-noise must be in [0, 0.5) (at 0.5 labels carry no signal), got {self.label_noise}")
        if self.agree_with and self.pointwise:
            raise ConfigError("--agree-with compares answers to pairs; accepted: pair files, without --pointwise")
        if missing := [path for path in self.agree_with if not Path(path).is_file()]:
            raise ConfigError(f"--agree-with: no file {missing[0]}; accepted: label files other labellers wrote")
        if self.web and self.simulate:
            raise ConfigError("--web shows the pairs to a person and --simulate answers them by a rule; give one of the two")
        if self.label_noise and not self.simulate:
            raise ConfigError("--label-noise flips a simulated labeller's answers; give --simulate REWARD too")
        self.out = self.out or f"runs/labels/{'scores' if self.pointwise else 'pairs'}.jsonl"
        self.labeller = self.labeller or (f"simulate:{self.simulate}" + (f" noise {self.label_noise}" if self.label_noise else "")
                                          if self.simulate else f"human:{getpass.getuser()}")


def pair_key(prompt: Prompt, first: Completion, second: Completion) -> str:
    """The same for a pair shown in either order (a completion as text or as an assistant turn)."""
    texts = sorted([message_text(first).strip(), message_text(second).strip()])
    return hashlib.sha1(json.dumps([prompt, texts]).encode()).hexdigest()


def completion_key(prompt: Prompt, completion: Completion) -> str:
    return hashlib.sha1(json.dumps([prompt, message_text(completion).strip()]).encode()).hexdigest()


def as_written(prompt: Prompt, completion: str) -> Completion:
    """A completion as the labels file holds it: text, or for a conversation an assistant turn (TRL's conversational
    preference format, which DPO and the reward model read as the prompt's answer)."""
    return as_assistant_turn(completion) if is_conversational(prompt) else completion


class LabelFile:
    """The labels so far, appended to one row at a time. Opening repairs a last line cut off by a kill
    (that answer was never saved: it is dropped and asked again) and refuses a file of the other mode."""

    def __init__(self, path: str | Path, pointwise: bool):
        self.path, self.pointwise = Path(path), pointwise
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows, self.repaired = self._read()
        self.seen = {self.key(row) for row in self.rows}

    def _read(self) -> tuple[list[dict], bool]:
        if not self.path.exists():
            return [], False
        text = self.path.read_text()
        lines = text.splitlines()
        rows, repaired = [], False
        for number, line in enumerate(lines, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ConfigError(f"{self.path}:{number} is not JSON; accepted: a file label.py wrote") from None
                repaired = True  # the last line, cut off mid-write
        if repaired or (text and not text.endswith("\n")):
            self.path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        wanted, other = (("completion", "score"), "pairwise") if self.pointwise else (("chosen", "rejected"), "pointwise")
        for number, row in enumerate(rows, 1):
            if not all(field in row for field in ("prompt", *wanted)):
                raise ConfigError(f"{self.path}:{number} has no {' / '.join(wanted)}: it holds {other} labels; "
                                  f"accepted: {'--pointwise' if other == 'pointwise' else 'no --pointwise'}, or another --out")
        return rows, repaired

    def key(self, row: dict) -> str:
        return completion_key(row["prompt"], row["completion"]) if self.pointwise else pair_key(row["prompt"], row["chosen"], row["rejected"])

    @property
    def labelled(self) -> int:
        """Rows that are labels (ties included, skips not)."""
        return sum(row.get("outcome") != "skipped" for row in self.rows)

    def append(self, row: dict) -> None:
        append_jsonl_fsynced(self.path, row)
        self.rows.append(row)
        self.seen.add(self.key(row))


def candidate_pairs(policy, tokenizer, prompt_rows: list[dict], sampling: SamplingConfig, seed: int, max_batches: int,
                    prompts_per_batch: int = 8) -> Iterator[tuple[dict, str, str]]:
    """(prompt row, completion 1, completion 2) from up to max_batches batches of prompts in a seeded order,
    two samples each: the same sequence for the same seed (so a continued session regenerates, and
    skips, what it showed). Pairs of identical completions are left out: there is nothing to compare."""
    order = list(range(len(prompt_rows)))
    random.Random(seed).shuffle(order)
    for batch in range(max_batches):
        rows = [prompt_rows[order[(batch * prompts_per_batch + i) % len(order)]] for i in range(prompts_per_batch)]
        prompts, _ = split_columns([row for row in rows for _ in range(2)])
        completions = generate_completions(policy, tokenizer, prompts, sampling, seed=seed * 1_000_003 + batch)
        for i, row in enumerate(rows):
            first, second = completions[2 * i].strip(), completions[2 * i + 1].strip()
            if first != second:
                yield row, first, second


class SimulatedLabeller:
    """A reward function as the labeller: the higher-scoring completion is preferred (equal scores: a tie);
    each preference flips with probability label_noise. Pointwise, a score in [0, 1] becomes 1 + round(4 s)."""

    def __init__(self, reward_spec: str, label_noise: float, seed: int):
        self.reward = resolve_reward(reward_spec)
        self.label_noise, self.rng = label_noise, random.Random(seed)

    def scores(self, row: dict, completions: list[str]) -> list[float]:
        prompts, columns = split_columns([row] * len(completions))
        return [float(s) for s in self.reward(prompts, completions, **columns)]

    def judge_pair(self, row: dict, first: str, second: str) -> tuple[str, list[float]]:
        """("1" | "2" | "tie", [score 1, score 2])."""
        scores = self.scores(row, [first, second])
        if scores[0] == scores[1]:
            return "tie", scores
        better = "1" if scores[0] > scores[1] else "2"
        if self.rng.random() < self.label_noise:
            better = "2" if better == "1" else "1"
        return better, scores

    def judge_one(self, row: dict, completion: str) -> int:
        if self.rng.random() < self.label_noise:
            return self.rng.randint(1, 5)
        return 1 + round(4 * min(1.0, max(0.0, self.scores(row, [completion])[0])))


class Terminal:
    """Shows pairs and reads answers line by line (works over SSH, in tmux and from a script's stdin)."""

    def __init__(self, read_line: Callable[[str], str] = input, out: TextIO | None = None):
        self.read_line, self.out = read_line, out

    def show(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def ask(self, question: str, answers: dict[str, Any]) -> Any:
        """The meaning of the first accepted answer; "quit" at end of input."""
        while True:
            try:
                reply = self.read_line(question).strip().lower()
            except EOFError:
                self.show("")
                return "quit"
            if reply in answers:
                return answers[reply]
            self.show(f"  {reply!r} is not an answer; accepted: {', '.join(answers)}")

    def label(self, question: dict[str, Any], save: Callable[[Any], None]) -> Any:
        """Show a question (LabellingPage.label's: kind pair or score), read the answer, save(answer) unless it is "quit"."""
        criterion = f"   (criterion: {question['criterion']})" if question.get("criterion") else ""
        self.show(f"\n--- {question['progress']}{criterion}" + (f"\n    {question['agreement']}" if question.get("agreement") else ""))
        if question["kind"] == "score":
            self.show(wrapped("prompt:", question["prompt"]) + "\n" + wrapped("->", question["completion"]))
            answer = self.ask("score 1 (bad) to 5 (good), s (skip), q (quit): ", SCORE_KEYS)
        else:
            self.show(wrapped("prompt:", question["prompt"]) + "\n" + wrapped("[1]", question["first"]) + "\n"
                      + wrapped("[2]", question["second"]))
            answer = self.ask("which is better? 1 / 2 / t (tie) / s (skip) / q (quit): ", PAIR_KEYS)
        if answer != "quit":
            save(answer)
        return answer


def wrapped(label: str, text: str) -> str:
    width = max(40, min(100, shutil.get_terminal_size().columns) - 6)
    return textwrap.fill(text, width, initial_indent=f"  {label} ", subsequent_indent=" " * (len(label) + 3))


def provenance(cfg: LabelConfig, model_name: str) -> dict[str, Any]:
    return {"labeller": cfg.labeller, "labelled_at": utc_now(), "model": model_name,
            **({"criterion": cfg.criterion} if cfg.criterion else {})}


def pair_row(row: dict, first: str, second: str, answer: str, scores: list[float] | None, extra: dict) -> dict:
    """The file row for one answered pair (answer "1", "2", "tie" or "skip")."""
    chosen, rejected = (second, first) if answer == "2" else (first, second)
    outcome = {"1": "preferred", "2": "preferred", "tie": "tie", "skip": "skipped"}[answer]
    scored = {} if scores is None else {"score_chosen": scores[answer == "2"], "score_rejected": scores[answer != "2"]}
    return {"prompt": row["prompt"], "chosen": as_written(row["prompt"], chosen), "rejected": as_written(row["prompt"], rejected),
            "outcome": outcome, **scored, **extra}


def answer_of(row: dict) -> str | None:
    """What a pair row says, in a form two labellers can share: the chosen text, "tie", or None for a skip."""
    return {"tie": "tie", "skipped": None}.get(row.get("outcome"), message_text(row["chosen"]).strip())


def agreement(mine: LabelFile, others: list[LabelFile]) -> str:
    """"you and the other labellers agree on A of N answers to pairs you both labelled", or "" before any such pair."""
    theirs = [{other.key(row): answer_of(row) for row in other.rows if answer_of(row) is not None} for other in others]
    agreed = total = 0
    for row in mine.rows:
        if (answer := answer_of(row)) is not None:
            shared = [answers[mine.key(row)] for answers in theirs if mine.key(row) in answers]
            agreed, total = agreed + sum(a == answer for a in shared), total + len(shared)
    return f"you and the other labellers agree on {agreed} of {total} answers to pairs you both labelled" if total else ""


def label_pairs(cfg: LabelConfig, file: LabelFile, pairs: Iterator[tuple[dict, str, str]], front: Terminal | LabellingPage,
                simulated: SimulatedLabeller | None, model_name: str) -> None:
    """Ask (or simulate) until the file holds cfg.n labels or the labeller quits."""
    others = [LabelFile(path, pointwise=False) for path in cfg.agree_with]
    for row, first, second in pairs:
        if file.labelled >= cfg.n:
            return
        if pair_key(row["prompt"], first, second) in file.seen:
            continue
        save = functools.partial(save_pair, file, row, first, second, extra=provenance(cfg, model_name))
        if simulated:
            answer, scores = simulated.judge_pair(row, first, second)
            save(answer, scores)
            continue
        question = {"kind": "pair", "progress": f"pair {file.labelled + 1} of {cfg.n}", "criterion": cfg.criterion,
                    "prompt": message_text(row["prompt"]), "first": first, "second": second, "agreement": agreement(file, others)}
        if front.label(question, save) == "quit":
            return


def save_pair(file: LabelFile, row: dict, first: str, second: str, answer: str, scores: list[float] | None = None,
              extra: dict | None = None) -> None:
    file.append(pair_row(row, first, second, answer, scores, extra or {}))


def save_score(file: LabelFile, row: dict, completion: str, score: int | str, extra: dict) -> None:
    skipped = score == "skip"
    file.append({"prompt": row["prompt"], "completion": as_written(row["prompt"], completion), "score": None if skipped else score,
                 "outcome": "skipped" if skipped else "scored", **extra})


def label_pointwise(cfg: LabelConfig, file: LabelFile, pairs: Iterator[tuple[dict, str, str]], front: Terminal | LabellingPage,
                    simulated: SimulatedLabeller | None, model_name: str) -> None:
    """Score both completions of each pair, one at a time, until the file holds cfg.n scores."""
    for row, *completions in pairs:
        for completion in completions:
            if file.labelled >= cfg.n:
                return
            if completion_key(row["prompt"], completion) in file.seen:
                continue
            save = functools.partial(save_score, file, row, completion, extra=provenance(cfg, model_name))
            if simulated:
                save(simulated.judge_one(row, completion))
                continue
            question = {"kind": "score", "progress": f"completion {file.labelled + 1} of {cfg.n}", "criterion": cfg.criterion,
                        "prompt": message_text(row["prompt"]), "completion": completion}
            if front.label(question, save) == "quit":
                return


def run_labelling(cfg: LabelConfig, terminal: Terminal | None = None) -> dict[str, Any]:
    """Open (or continue) cfg.out and label until it holds cfg.n labels or the labeller quits; returns
    {"out", "labelled", "added", "wanted"}."""
    prompt_rows = load_prompt_rows(cfg.prompts)
    simulated = SimulatedLabeller(cfg.simulate, cfg.label_noise, cfg.seed) if cfg.simulate else None
    if cfg.model:
        check_model_exists(cfg.model)
    file = LabelFile(cfg.out, cfg.pointwise)
    terminal = terminal or Terminal()
    start = file.labelled
    if file.repaired:
        terminal.show(f"{cfg.out}: its last line was cut off (a killed session) and is dropped; that one is asked again")
    if start:
        terminal.show(f"{cfg.out}: {start} of {cfg.n} labels already there; continuing")
    page = LabellingPage(cfg.port, title=f"rlhf-toy labelling: {cfg.out}") if cfg.web and start < cfg.n else None
    if page:
        terminal.show(f"labelling page: {page.url} (keys 1 / 2 / t / s / q); answers are appended to {cfg.out}")
    if start < cfg.n:
        torch.set_num_threads(cfg.torch_threads)
        model_name = cfg.model or default_base_model(kind=kind_for([row["prompt"] for row in prompt_rows]))
        tokenizer, policy = load_tokenizer(model_name), load_model(model_name).eval()
        require_chat_template(tokenizer, [row["prompt"] for row in prompt_rows], f"--prompts {cfg.prompts}")
        enough = 10 * (len(file.rows) + cfg.n) // 8 + 10  # batches: a model that repeats itself must not loop forever
        pairs = candidate_pairs(policy, tokenizer, prompt_rows, SamplingConfig(cfg.max_completion_length, cfg.temperature),
                                cfg.seed, enough)
        try:
            (label_pointwise if cfg.pointwise else label_pairs)(cfg, file, pairs, page or terminal, simulated, model_name)
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"{file.labelled} labels are saved in {cfg.out}; run again to continue") from None
        finally:
            if page:
                page.finish(f"{file.labelled} of {cfg.n} labels saved in {cfg.out}; run the same command to continue")
    summary = {"out": str(cfg.out), "labelled": file.labelled, "added": file.labelled - start, "wanted": cfg.n}
    terminal.show(f"{cfg.out}: {summary['labelled']} of {cfg.n} labels ({summary['added']} added this session)")
    return summary
