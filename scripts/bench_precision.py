#!/usr/bin/env python
"""What bf16 buys on this machine, op by op: the measurements behind --precision auto.

    python scripts/bench_precision.py --json bench/precision.json --md bench/precision.md

Side by side in one process, each figure the median of --repeats timings after a warm-up:
  matmul       GFLOP/s of fp32 and bf16 at the tiny GPT-2's shapes ([2560 x 128] @ [128 x 384] and the MLP's)
  pretraining  one optimizer step of the default base model on 32 x 128 tokens: fp32 / bf16, SDPA / eager attention
  grpo         the demo's step (8 prompts x 8 completions, 40 new tokens): sampling, the reference's forward, and
               the update's forward and backward, each in fp32 and in bf16
Run it on a quiet machine, with the thread count the trainers use (2).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import require_positive
from classic_rl.infra.machine import machine
from classic_rl.infra.run_folder import write_json
from rlhf_toy.data import DATA_DIR, load_prompts
from rlhf_toy.generation import fast_forward
from rlhf_toy.generation.rollout import completion_logits, sample_rollout
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.base_model import default_base_model
from rlhf_toy.lm.models import check_model_exists, load_model, load_tokenizer
from rlhf_toy.precision import autocast, choose_attention

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of fn() over repeats calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def matmul_rows(repeats: int) -> list[dict]:
    rows = []
    for m, k, n in ((2560, 128, 384), (2560, 128, 512), (2560, 512, 128)):
        for precision in PRECISIONS:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            ms = median_ms(lambda a=a, b=b: [a @ b for _ in range(10)], repeats) / 10
            rows.append({"part": "matmul", "shape": f"[{m}x{k}]@[{k}x{n}]", "precision": precision, "ms": ms,
                         "gflops": 2 * m * k * n / ms / 1e6})
    return rows


def pretraining_rows(model_dir: str, repeats: int) -> list[dict]:
    """One AdamW step of the base model on 32 x 128 random tokens, for each precision and attention kernel."""
    rows = []
    tokens = torch.randint(0, load_tokenizer(model_dir).vocab_size, (32, 128))
    for attention in ("sdpa", "eager"):
        for precision in PRECISIONS:
            model = load_model(model_dir).train()
            model.set_attn_implementation(attention)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

            def step(model=model, optimizer=optimizer, precision=precision):
                with autocast(precision, CPU):
                    loss = model(input_ids=tokens, labels=tokens).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            rows.append({"part": "pretraining step", "shape": "32 x 128 tokens", "attention": attention, "precision": precision,
                         "ms": median_ms(step, repeats)})
    return rows


def grpo_rows(model_dir: str, repeats: int) -> list[dict]:
    """The demo's GRPO step in three parts, each in fp32 and in bf16 (with the attention choose_attention picks for it):
    sampling, the reference's forward, and the update's forward and backward."""
    tokenizer = load_tokenizer(model_dir)
    prompts = [p for p in load_prompts(DATA_DIR / "prompts_train.jsonl")[:8] for _ in range(8)]
    policy = load_model(model_dir)
    sampling = SamplingConfig(max_new_tokens=40)
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, prompts, sampling)
    tokens = f"64 x {rollout.input_ids.shape[1]} tokens"
    rows = []
    for precision in PRECISIONS:
        reference = choose_attention(load_model(model_dir).eval(), precision, CPU)
        trained = choose_attention(load_model(model_dir).train(), precision, CPU)
        for part, shape, fn in (("grpo sampling", "64 completions, 40 new tokens", functools.partial(
                                    sample_with, precision, policy, tokenizer, prompts, sampling)),
                                ("grpo reference forward", tokens, functools.partial(reference_pass, precision, reference, rollout)),
                                ("grpo update forward + backward", tokens, functools.partial(update_pass, precision, trained, rollout))):
            rows.append({"part": part, "shape": shape, "precision": precision, "ms": median_ms(fn, repeats)})
    return rows


def sample_with(precision: str, policy, tokenizer, prompts, sampling) -> None:
    with autocast(precision, CPU):
        sample_rollout(policy, tokenizer, prompts, sampling)


@torch.inference_mode()
def reference_pass(precision: str, model, rollout) -> None:
    with autocast(precision, CPU):
        logits = completion_logits(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_length)
        fast_forward.token_logprobs(logits, rollout.completion_ids, rollout.completion_mask)


def update_pass(precision: str, model, rollout) -> None:
    """The log-probs of a GRPO update and their backward (the loss's own few ops aside)."""
    input_ids, attention_mask, completion_ids, mask = (t.clone() for t in (  # out of inference mode, as the trainer's
        rollout.input_ids, rollout.attention_mask, rollout.completion_ids, rollout.completion_mask))
    with autocast(precision, CPU):
        logits = completion_logits(model, input_ids, attention_mask, rollout.prompt_length)
    fast_forward.token_logprobs(logits, completion_ids, mask).sum().backward()
    model.zero_grad(set_to_none=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| part | shape | attention | precision | ms (median) | GFLOP/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        gflops = f"{r['gflops']:.0f}" if "gflops" in r else ""
        lines.append(f"| {r['part']} | {r['shape']} | {r.get('attention', '')} | {r['precision']} | {r['ms']:.2f} | {gflops} |")
    return "\n".join(lines)


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="Timed calls per figure (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--model", default=None, help="A GPT-2 model folder (default: the cached default base model)")
    parser.add_argument("--json", default="bench/precision.json", help="Where to write the raw results")
    parser.add_argument("--md", default="bench/precision.md", help="Where to write the Markdown table")
    args = parser.parse_args()
    require_positive(repeats=args.repeats, threads=args.threads)
    if args.model:
        check_model_exists(args.model)
    torch.set_num_threads(args.threads)
    model_dir = args.model or default_base_model()
    rows = matmul_rows(args.repeats) + pretraining_rows(model_dir, args.repeats) + grpo_rows(model_dir, args.repeats)
    table = markdown(rows)
    print(f"{machine()}, {args.threads} threads\n\n{table}")
    for path in (args.json, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "rows": rows})
    Path(args.md).write_text(f"{machine()}, {args.threads} threads\n\n{table}\n")
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
