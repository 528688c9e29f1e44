#!/usr/bin/env python
"""The main job end to end, as a user on a fresh machine meets it: `make demo`'s command with an empty model cache.

    python scripts/bench_demo.py --repeats 3 --json bench/demo.json --md bench/demo.md

Each repeat runs `scripts/train_rlhf.py --algo grpo` (what `make demo` runs) in a child process whose
$RLHF_TOY_HOME is a new empty folder, so it builds the default base model first, and times the
whole command. From the run folders: the pretraining's seconds, held-out loss and precision, and
GRPO's training seconds and eval reward before and after. Run it on a quiet machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import require_positive
from classic_rl.infra.machine import machine
from classic_rl.infra.run_folder import write_json
from rlhf_toy.lm.base_model import BASE_MODEL_VERSION

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = script_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=1, help="Fresh-cache runs of the demo, one after another")
    parser.add_argument("--json", default="bench/demo.json", help="Where to write the raw results")
    parser.add_argument("--md", default="bench/demo.md", help="Where to write the Markdown table")
    args = parser.parse_args()
    require_positive(repeats=args.repeats)
    return args


def run_demo_once() -> dict:
    """One `make demo` command with an empty cache; its wall seconds and what its two run folders report."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RLHF_TOY_HOME": str(Path(tmp) / "home")}
        env.pop("RLHF_TOY_AUTO_PRECISION", None)  # the machine's own choice, as a user gets it
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "train_rlhf.py"), "--algo", "grpo", "--run-dir",
                        str(Path(tmp) / "demo"), "--overwrite"], env=env, cwd=ROOT, check=True, capture_output=True)
        total = time.perf_counter() - start
        base = json.loads((Path(tmp) / "home" / f"base-tiny-{BASE_MODEL_VERSION}" / "summary.json").read_text())
        demo = json.loads((Path(tmp) / "demo" / "summary.json").read_text())
    return {"total_s": total, "pretrain_s": base["wall_s"], "pretrain_val_loss": base["val_loss"],
            "pretrain_precision": base["precision"], "pretrain_tokens_per_s": base["tokens_per_s"],
            "grpo_train_s": demo["wall_s"], "grpo_precision": demo["precision"], "eval_reward_before": demo["reward_before"],
            "eval_reward_after": demo["reward_after"]}


def markdown(runs: list[dict]) -> str:
    lines = ["| repeat | whole command s | pretraining s | held-out loss | pretraining precision | tokens/s | GRPO training s "
             "| GRPO precision | eval reward before -> after |", "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['total_s']:.1f} | {r['pretrain_s']:.1f} | {r['pretrain_val_loss']:.4f} | {r['pretrain_precision']} "
                     f"| {r['pretrain_tokens_per_s']:,.0f} | {r['grpo_train_s']:.1f} | {r['grpo_precision']} "
                     f"| {r['eval_reward_before']:.3f} -> {r['eval_reward_after']:.3f} |")
    return "\n".join(lines)


@cli
def main() -> None:
    args = parse_args()
    print(machine())
    runs = []
    for repeat in range(args.repeats):
        runs.append(run_demo_once())
        print(f"[{repeat + 1}/{args.repeats}] " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                            for k, v in runs[-1].items()), flush=True)
    table = markdown(runs)
    print(table)
    for path in (args.json, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {"runs": runs, "machine": machine(), "command": "python scripts/train_rlhf.py --algo grpo (make demo)",
                           "base_model_version": BASE_MODEL_VERSION})
    Path(args.md).write_text(f"{machine()}\n\n`make demo`'s command with an empty model cache, timed whole:\n\n{table}\n")
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
