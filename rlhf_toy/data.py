"""Reading and writing the project's JSONL data files (schemas in data/README.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from classic_rl.runs import ConfigError, atomic_write

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)))


def _first_bad_line(path: Path, required: Sequence[str]) -> str | None:
    """Why the file is unusable, naming the first offending line, or None if every line is fine."""
    n_rows = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return f"{path} line {number} is not valid JSON ({err.msg}); expected one JSON object per line"
        if not isinstance(row, dict):
            return f"{path} line {number} is not a JSON object; expected e.g. {json.dumps({k: '...' for k in required})}"
        missing = [k for k in required if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            return f"{path} line {number} lacks a non-empty string field {missing[0]!r}; required: {', '.join(required)}"
        n_rows += 1
    return None if n_rows else f"{path} is empty; expected one JSON object per line with {', '.join(required)}"


def load_rows(path: str | Path, required: Sequence[str]):
    """A JSONL file as a `datasets.Dataset`, each row with non-empty string `required` fields.

    Bad files get a ConfigError that names the first bad line.
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {path} not found; run scripts/make_data.py to write the shipped files")
    problem = _first_bad_line(path, required)
    if problem:
        raise ConfigError(problem)
    datasets.disable_progress_bars()
    return datasets.load_dataset("json", data_files=str(path), split="train")


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a JSONL file with a "prompt" field, or a .txt file with one prompt per line."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ConfigError(f"prompts file {path} not found")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"{path} is empty; expected one prompt per line")
        return prompts
    return list(load_rows(path, ["prompt"])["prompt"])
