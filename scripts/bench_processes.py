#!/usr/bin/env python
"""One process against two (DDP) and two sharded (FSDP) on this machine: seconds per GRPO step and the peak resident
memory of each process, on a model large enough to show where the memory goes.

    python scripts/bench_processes.py --json bench/processes.json --md bench/processes.md    # GPT-2 124M, ~10 min

The model is GPT-2 124M's architecture at its size with random weights (bench_rlhf.py --shape gpt2-124m), trained in
full (policy, AdamW state, a separate reference): in fp32 the weights are 0.5 GB, the AdamW state 1 GB, the gradients
0.5 GB and the reference another 0.5 GB. The same global batch in every run (--prompts-per-step prompts x
--num-generations completions), one run after another; the processes share the machine's cores (torch threads =
--threads / processes). Per process, each run's largest over its processes (summary.json): the weights and optimizer
state it holds (its shards under FSDP; held_mb) and its peak RSS (VmHWM before the final evaluation; peak_rss_mb), with
glibc's allocator as it comes and with a fixed mmap threshold, under which freed buffers leave RSS at once.
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
from classic_rl.infra.machine import machine
from classic_rl.infra.run_folder import write_json
from rlhf_toy.distributed import launch_command

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_rlhf import shape_model  # noqa: E402  (the real-size model the other benchmarks use)

RUNS = [("1 process", 1, False), ("2 processes, DDP", 2, False), ("2 processes, FSDP", 2, True)]
# glibc's malloc keeps a freed block under its dynamic mmap threshold (up to 32 MB) for reuse instead of returning it to the
# system, so the transient full-size buffers of FSDP's gathers stay in RSS; a fixed threshold returns them at once
ALLOCATORS = {"glibc default": {}, "mmap threshold 256 KB": {"MALLOC_MMAP_THRESHOLD_": "262144"}}


def run(args, model: str, processes: int, fsdp: bool, env: dict, run_dir: Path) -> dict:
    flags = ["--model", model, "--steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step),
             "--num-generations", str(args.num_generations), "--max-completion-length", str(args.max_completion_length),
             "--precision", args.precision, "--torch-threads", str(args.threads), "--eval-samples-per-prompt", "1",
             "--log-completions-every", "0", "--beta", "0.04", "--run-dir", str(run_dir), "--cpu"] + (["--fsdp"] if fsdp else [])
    start = time.perf_counter()
    command = launch_command(str(ROOT / "scripts" / "train_rlhf.py"), processes)
    result = subprocess.run([*command, *flags], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    if result.returncode:
        raise SystemExit(f"{processes} process(es){', FSDP' if fsdp else ''} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"processes": processes, "fsdp": fsdp, "sec_per_step": summary["wall_s"] / summary["steps"],
            "completions_per_s": summary["completions_per_s"], "held_mb": summary["held_mb"], "peak_rss_mb": summary["peak_rss_mb"],
            "total_s": time.perf_counter() - start}


def markdown(rows: list[dict], args, machine_line: str) -> str:
    lines = [machine_line, "", f"GRPO on GPT-2 124M (random weights), {args.prompts_per_step} prompts x {args.num_generations} "
             f"completions of {args.max_completion_length} tokens a step, {args.steps} steps, {args.precision}, {args.threads} "
             "threads in all", "", "| run | allocator | s/step | completions/s | weights and optimizer state per process, MB | "
             "peak RSS per process, MB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['allocator']} | {r['sec_per_step']:.2f} | {r['completions_per_s']:.2f} | {r['held_mb']:,.0f} | "
              f"{r['peak_rss_mb']:,.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all, shared by the processes")
    parser.add_argument("--json", default=str(ROOT / "bench" / "processes.json"))
    parser.add_argument("--md", default=str(ROOT / "bench" / "processes.md"))
    args = parser.parse_args()
    model, machine_line, rows = shape_model("gpt2-124m"), machine(), []
    print(machine_line, flush=True)
    with tempfile.TemporaryDirectory() as work:
        for allocator, env in ALLOCATORS.items():
            for name, processes, fsdp in RUNS:
                run_dir = Path(work) / f"{len(rows)}"
                rows.append({"name": name, "allocator": allocator, **run(args, model, processes, fsdp, env, run_dir)})
                print(f"{name}, {allocator}: {rows[-1]['sec_per_step']:.2f} s/step, held {rows[-1]['held_mb']:,.0f} MB, "
                      f"peak RSS {rows[-1]['peak_rss_mb']:,.0f} MB per process", flush=True)
    write_json(Path(args.json), {"machine": machine_line, "args": vars(args), "runs": rows})
    Path(args.md).write_text(markdown(rows, args, machine_line))
    print(markdown(rows, args, machine_line))


if __name__ == "__main__":
    main()
