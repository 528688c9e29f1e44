"""Reading and writing the project's JSONL data files (schemas in data/README.md)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from classic_rl.infra.errors import ConfigError
from classic_rl.infra.run_folder import atomic_write
from rlhf_toy.chat import messages_problem

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)))


def _field_problem(row: dict, key: str, may_be_empty: bool) -> str | None:
    """Why row[key] is neither a (non-empty unless may_be_empty) string nor a conversation, or None."""
    value = row.get(key)
    if isinstance(value, list):
        problem = messages_problem(value)
        return None if problem is None else f"has a field {key!r} that is {problem}"
    if not isinstance(value, str) or not (value.strip() or may_be_empty):
        kind = "string" if may_be_empty else "non-empty string"
        return f"lacks a {kind} field {key!r} (or a list of messages)"
    return None


def _first_bad_line(path: Path, required: Sequence[str], may_be_empty: Sequence[str] = ()) -> str | None:
    """Why the file is unusable, naming the first offending line, or None if every line is fine. Each field is a string or
    a conversation (TRL's two formats), the same in every line."""
    n_rows, forms = 0, {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return f"{path} line {number} is not valid JSON ({err.msg}); expected one JSON object per line"
        if not isinstance(row, dict):
            return f"{path} line {number} is not a JSON object; expected e.g. {json.dumps({k: '...' for k in required})}"
        for key in required:
            if problem := _field_problem(row, key, key in may_be_empty):
                return f"{path} line {number} {problem}; required: {', '.join(required)}"
            form = "a conversation" if isinstance(row[key], list) else "a string"
            if forms.setdefault(key, (form, number))[0] != form:
                return (f"{path} line {number} gives {key!r} as {form} but line {forms[key][1]} as {forms[key][0]}; "
                        "accepted: one format per file")
        n_rows += 1
    return None if n_rows else f"{path} is empty; expected one JSON object per line with {', '.join(required)}"


def load_rows(path: str | Path, required: Sequence[str], may_be_empty: Sequence[str] = ()):
    """A JSONL file as a `datasets.Dataset`, each row with string `required` fields, non-empty unless in may_be_empty.

    Bad files get a ConfigError that names the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {path} not found; run scripts/make_data.py to write the shipped files")
    problem = _first_bad_line(path, required, may_be_empty)
    if problem:
        raise ConfigError(problem)
    datasets.disable_progress_bars()
    return datasets.load_dataset("json", data_files=str(path), split="train")


def load_prompt_rows(path: str | Path) -> list[dict]:
    """Prompt rows from a JSONL file with a "prompt" field (other fields, e.g. "answer", come along as
    columns), or from a .txt file with one prompt per line."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ConfigError(f"prompts file {path} not found")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"{path} is empty; expected one prompt per line")
        return [{"prompt": p} for p in prompts]
    return load_rows(path, ["prompt"]).to_list()


def load_preferences(path: str | Path) -> tuple[str, list[dict]]:
    """(kind, rows) of a labels file without its skipped rows: "pairwise" rows have prompt, chosen and
    rejected (data/preferences_*.jsonl, scripts/label.py; "outcome": "tie" marks a tie), "pointwise"
    rows prompt, completion and a score of 1-5 (scripts/label.py --pointwise)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file {path} not found; write one with scripts/label.py or scripts/make_data.py")
    first_line = next((line for line in path.read_text().splitlines() if line.strip()), "{}")
    try:
        kind = "pointwise" if "score" in json.loads(first_line) else "pairwise"
    except json.JSONDecodeError:
        kind = "pairwise"  # load_rows names the bad line
    texts = ["completion"] if kind == "pointwise" else ["chosen", "rejected"]  # a completion may be empty: eos at once
    rows = load_rows(path, ["prompt", *texts], may_be_empty=texts).to_list()
    rows = [row for row in rows if row.get("outcome") != "skipped"]
    if kind == "pointwise":
        bad = next((row["score"] for row in rows if row["score"] not in (1, 2, 3, 4, 5)), None)
        if bad is not None:
            raise ConfigError(f"{path} has a score of {bad!r}; accepted: an integer 1-5 (or a skipped row)")
    if not rows:
        raise ConfigError(f"{path} holds no labels (every row is skipped)")
    return kind, rows


def train_and_held_out_labels(preferences: str | None, eval_preferences: str | None, data_dir: str | Path,
                              eval_fraction: float, seed: int) -> tuple[str, list[dict], list[dict]]:
    """(kind, training rows, held-out rows) of load_preferences: the two files given, or a seeded
    eval_fraction of `preferences` held out, or without either the shipped pairs in data_dir."""
    kind, rows = load_preferences(preferences or Path(data_dir) / "preferences_train.jsonl")
    if eval_preferences or not preferences:
        eval_kind, eval_rows = load_preferences(eval_preferences or Path(data_dir) / "preferences_eval.jsonl")
        if eval_kind != kind:
            raise ConfigError(f"the held-out labels are {eval_kind} but the training labels are {kind}; accepted: one kind")
        return kind, rows, eval_rows
    if len(rows) < 2:
        raise ConfigError(f"{preferences} holds {len(rows)} label(s); accepted: at least 2, one of them held out")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_fraction * len(rows)))
    return kind, [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def shipped_eval_prompts(conversational: bool, data_dir: str | Path = DATA_DIR) -> Path:
    """The shipped eval prompts in the format of the data they go with: as conversations, or as plain text."""
    return Path(data_dir) / ("prompts_chat_eval.jsonl" if conversational else "prompts_eval.jsonl")


def load_prompts(path: str | Path) -> list[str]:
    """Just the prompts of load_prompt_rows."""
    return [row["prompt"] for row in load_prompt_rows(path)]


def split_columns(rows: list[dict] | list[str]) -> tuple[list[str], dict[str, list]]:
    """(prompts, {column: values}) of prompt rows (plain strings are rows without columns): the columns
    reach reward functions as keyword lists, TRL's convention."""
    rows = [row if isinstance(row, dict) else {"prompt": row} for row in rows]
    names = [name for name in (rows[0] if rows else {}) if name != "prompt"]
    return [row["prompt"] for row in rows], {name: [row.get(name) for row in rows] for name in names}


def pack(token_lists: list[list[int]], eos_id: int, block: int) -> torch.Tensor:
    """Concatenate documents, each followed by eos, into `[n_blocks, block]` (the tail is dropped)."""
    stream = [t for tokens in token_lists for t in (*tokens, eos_id)]
    n = len(stream) // block
    if n == 0:
        raise ConfigError(f"the corpus holds {len(stream)} tokens, fewer than one block of {block}")
    return torch.tensor(stream[: n * block]).view(n, block)


def pad_rows(token_lists: list[list[int]], eos_id: int, pad_id: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document followed by eos in a row of its own from position 0, cut to max_length and right-padded to the
    longest: (ids `[n, L]`, lengths `[n]`), for documents whose start the model must see (TRL's packing=False)."""
    rows = [[*tokens, eos_id][:max_length] for tokens in token_lists]
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
    return ids, torch.tensor([len(row) for row in rows])


def padded_batch(ids: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of pad_rows' output cut to their longest: (input ids `[b, L]`, labels `[b, L]` with -100 on the padding)."""
    width = int(lengths[rows].max())
    batch = ids[rows, :width]
    return batch, batch.masked_fill(torch.arange(width) >= lengths[rows, None], -100)


def pretraining_blocks(path: str | Path, tokenizer, block: int) -> torch.Tensor:
    """The documents of a JSONL file with a "text" field, tokenized and packed into `[n_blocks, block]`."""
    texts = [row["text"] for row in load_rows(path, ["text"])]
    return pack(tokenizer(texts, add_special_tokens=False).input_ids, tokenizer.eos_token_id, block)


class ShuffledBatches:
    """Index batches `[batch_size]` drawn epoch by epoch from seeded permutations of n items; the
    position (generator, order, cursor) saves and restores exactly, so a resumed run sees the same data."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.order, self.cursor = torch.randperm(n, generator=generator), 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.batch_size > self.n:  # a new epoch: reshuffle
            self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
        self.cursor += self.batch_size
        return self.order[self.cursor - self.batch_size: self.cursor]

    def put_back(self) -> None:
        """Undo the last next(), e.g. when its batch gave a non-finite loss and no step was taken."""
        self.cursor -= self.batch_size

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.cursor = state["order"], state["cursor"]


# ---- labels as the losses read them (the reward model's and DPO's) ----------------------------------------

def score_target(score: int) -> float:
    """A 1-5 score as the regression target in [-1, 1]."""
    return (score - 3) / 2


@dataclass
class Labels:
    """Labels as the loss reads them: pairs (first = chosen, second = rejected, target = the probability
    that first is better: 1, or 1/2 for a tie) or pointwise scores (first = the completion, second = None,
    target = (score - 3) / 2)."""

    kind: str
    prompts: list[str]
    first: list[str]
    second: list[str] | None
    target: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: list[int]) -> Labels:
        return Labels(self.kind, [self.prompts[i] for i in idx], [self.first[i] for i in idx],
                      None if self.second is None else [self.second[i] for i in idx], self.target[idx])


def noisy_pairs(rows, label_noise: float, seed: int) -> tuple[list[str], list[str], list[str], int]:
    """(prompts, chosen, rejected, n_flipped) with each label flipped with probability label_noise."""
    rng = random.Random(seed)
    prompts, chosen, rejected, flipped = [], [], [], 0
    for row in rows:
        flip = rng.random() < label_noise
        flipped += flip
        prompts.append(row["prompt"])
        chosen.append(row["rejected"] if flip else row["chosen"])
        rejected.append(row["chosen"] if flip else row["rejected"])
    return prompts, chosen, rejected, flipped


def to_labels(kind: str, rows: list[dict], label_noise: float = 0.0, seed: int = 0) -> tuple[Labels, int]:
    """(Labels, labels flipped) of load_preferences rows; pairwise labels flip with probability label_noise."""
    if kind == "pointwise":
        return Labels(kind, [r["prompt"] for r in rows], [r["completion"] for r in rows], None,
                      torch.tensor([score_target(r["score"]) for r in rows])), 0
    prompts, chosen, rejected, flipped = noisy_pairs(rows, label_noise, seed)
    target = torch.tensor([0.5 if r.get("outcome") == "tie" else 1.0 for r in rows])
    return Labels(kind, prompts, chosen, rejected, target), flipped
