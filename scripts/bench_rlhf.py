#!/usr/bin/env python
"""Our GRPO against TRL's GRPOTrainer on identical work (and our PPO with a critic beside them).

    make bench-rlhf       # the demo's work: 100 steps of 8 prompts x 8 completions of at most 40 tokens, 3 seeds
    python scripts/bench_rlhf.py --steps 30 --threads 1 2 --json bench/rlhf.json --md bench/rlhf.md
    make bench-real-models   # real shapes: GPT-2 124M and Qwen2 0.5B, full and LoRA, what a step costs (--shape)

--shape builds a model of a real architecture at its real size (GPT-2 124M: 12 layers of 768, vocabulary 50,257;
Qwen2 0.5B: 24 layers of 896, grouped-query attention, vocabulary 151,936, tied embeddings) with random weights, once,
and its tokenizer (the project's, padded with placeholder tokens to the vocabulary's size). Random weights never say
eos, so every completion runs to --max-completion-length: the same work on both sides, and no eval reward (it would say
nothing). --use-peft trains LoRA adapters on both sides (TRL: peft_config, its reference the adapter-disabled policy, as
ours), --gradient-checkpointing turns it on on both sides.

Both get the same base model folder and tokenizer, the same training prompts in the same chat
template, the same reward functions (length, format; weights 0.5/0.5), prompts per step,
completions per prompt, max new tokens, temperature, learning rate (constant), beta, clip range,
loss aggregation ("dapo") and number of optimizer steps: one step = one generation batch = one
optimizer step. Each run is a fresh child process (so peak RSS is its own), started in turn:
for every repeat and thread count, ours, then TRL, then PPO. TRL runs as its users would run it
on CPU (use_cpu=True), with gradient checkpointing off (the small model does not need it and it
costs TRL time). Each runs in every precision of --precisions (fp32, and bf16 where the CPU has
bf16 units: bf16=True for TRL, --precision bf16 for ours) and is reported at its best thread count
and precision, with MFU against the measured matmul peak of that precision. Both timers start
warm in the same way: one sampling pass over the eval prompts before the first step (ours samples
them for reward_before; TRL's model runs generate on them), and both count a step's metric
gathering and logging. Repeat r runs training seed --seed + r on both sides. Each implementation is
reported at its best thread count and precision, as the mean over repeats with the range beside it
(which holds the seeds' spread). After training, every policy is scored by the same evaluation:
the eval prompts, fixed sampling seed, the same reward; the same evaluation every --eval-every steps
(outside the timers) gives time_to_target_s, the training seconds until the eval reward first
reaches --target. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from peft import LoraConfig
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM, TrainerCallback

from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.machine import machine, peak_rss_mb
from classic_rl.infra.run_folder import read_jsonl, write_json
from rlhf_toy.algorithms import config_for
from rlhf_toy.algorithms.base import RLHFConfig
from rlhf_toy.chat import format_prompt
from rlhf_toy.data import DATA_DIR, load_prompts
from rlhf_toy.evaluation import evaluate_on_prompts
from rlhf_toy.lm.base_model import cache_home, default_base_model
from rlhf_toy.lm.models import check_model_exists, load_model, load_tokenizer
from rlhf_toy.online import train
from rlhf_toy.precision import has_fast_bf16
from rlhf_toy.rewards.functions import resolve_reward

IMPLS = ("ours", "trl", "ppo")
SHAPES = ("default", "gpt2-124m", "qwen2-0.5b")


def shape_model(shape: str) -> str:
    """Folder of a real architecture at its real size with random weights (seed 0) and a tokenizer of its vocabulary's
    size, built once into the cache: the project's tokenizer padded with placeholder tokens, so every sampled id decodes."""
    folder = cache_home() / f"bench-{shape}"
    if (folder / "config.json").is_file():
        return str(folder)
    tokenizer = load_tokenizer(default_base_model())
    vocab = {"gpt2-124m": 50257, "qwen2-0.5b": 151936}[shape]
    tokenizer.add_tokens([f"<placeholder_{i}>" for i in range(vocab - len(tokenizer))])
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if shape == "gpt2-124m":  # GPT2Config's defaults are the 124M model's
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=1024, **special))
    else:  # Qwen2.5-0.5B's config.json, context cut to what these runs use
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=1024,
                                             rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, **special))
    building = folder.with_name(folder.name + ".building")
    model.save_pretrained(building)
    tokenizer.save_pretrained(building)
    building.rename(folder)
    return str(folder)


def parse_args():
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps per run")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="Distinct prompts per step")
    parser.add_argument("--num-generations", type=int, default=8, help="Completions per prompt (G)")
    parser.add_argument("--max-completion-length", type=int, default=24, help="Max new tokens")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="AdamW learning rate, constant")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient to the reference")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the first repeat; repeat r runs seed + r on both sides, "
                                                            "so the repeats' ranges hold the seeds' spread")
    parser.add_argument("--model", default=None, help="Base model folder (default: the cached default base model)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to try for each implementation")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="Precisions to try for each implementation: fp32, bf16 (default: fp32, and bf16 where the "
                             "CPU has bf16 units)")
    parser.add_argument("--eval-every", type=int, default=10, help="Evaluate every N steps for time_to_target_s (0: never)")
    parser.add_argument("--target", type=float, default=0.9, help="Eval reward whose first reaching time_to_target_s reports")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per (implementation, thread count)")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), help=f"Which to run (accepted: {', '.join(IMPLS)})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default="bench/rlhf.json", help="Where to write the raw results")
    parser.add_argument("--md", default="bench/rlhf.md", help="Where to write the Markdown table")
    parser.add_argument("--shape", default="default", choices=SHAPES, help="The model: the default base model, or a real "
                                                                            "architecture at its real size with random weights")
    parser.add_argument("--use-peft", action="store_true", help="LoRA adapters on both sides instead of full fine-tuning")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha is twice it, dropout 0.05: TRL's defaults)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Activation checkpointing on both sides")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)  # internal: run one implementation here
    args = parser.parse_args()
    require_positive(steps=args.steps, prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
                     max_completion_length=args.max_completion_length, learning_rate=args.learning_rate,
                     repeats=args.repeats, **{f"threads ({t})": t for t in args.threads})
    unknown = [i for i in args.impls if i not in IMPLS]
    if unknown:
        raise ConfigError(f"unknown --impls {unknown}; accepted: {', '.join(IMPLS)}")
    args.precisions = args.precisions or (["fp32", "bf16"] if has_fast_bf16(torch.device(args.device)) else ["fp32"])
    unknown = [p for p in args.precisions if p not in ("fp32", "bf16")]
    if unknown:
        raise ConfigError(f"unknown --precisions {unknown}; accepted: fp32, bf16")
    if args.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {args.eval_every}")
    if args.device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown --device {args.device!r}; accepted: cpu, cuda")
    if args.model:
        check_model_exists(args.model)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU")
    return args


# ---- shared by both workers -----------------------------------------------------------------------

def rlhf_config(args, algo: str, run_dir: str) -> RLHFConfig:
    """Our config for a worker: GRPO's beta, or PPO's kl_coef, from --beta."""
    kl = {"beta": args.beta} if algo == "grpo" else {"kl_coef": args.beta}
    return config_for(algo)(model=args.model, steps=args.steps, seed=args.seed, prompts_per_step=args.prompts_per_step,
                            num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                            learning_rate=args.learning_rate, torch_threads=args.threads[0], log_completions_every=0,
                            precision=args.precisions[0], eval_every=args.eval_every, cpu=args.device == "cpu",
                            use_peft=args.use_peft, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                            gradient_checkpointing=args.gradient_checkpointing, run_dir=run_dir, overwrite=True, **kl)


def model_flops_per_step(args, model, mean_completion_tokens: float, prompt_tokens: float, ppo: bool) -> float:
    """Matmul FLOPs of the nominal work of one step, each completion with its own prompt: 2 * params per
    token per forward, backward twice the forward: sampling and the reference forward (2 forwards), then
    one forward and backward (3): 10 * N * tokens (8 under LoRA: no weight gradients of the frozen matrices); PPO adds
    the critic's forward before and its forward and backward in the update (8 * N * tokens). Ours runs each distinct
    prompt once, so for ours the MFU from this count is an effective one."""
    tokens = args.prompts_per_step * args.num_generations * (prompt_tokens + mean_completion_tokens)
    return ((8 if args.use_peft else 10) + (8 if ppo else 0)) * matmul_params(model) * tokens


def matmul_params(model) -> int:
    """Parameters a token meets in a matmul: all but the lookup tables (GPT-2's positions; an input embedding that is not
    also the output head)."""
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    positions = getattr(getattr(model, "transformer", None), "wpe", None)
    lookups = (0 if embedding is head else embedding.numel()) + (positions.weight.numel() if positions is not None else 0)
    return sum(p.numel() for p in model.parameters()) - lookups


def peak_matmul_flops(threads: int, precision: str, n: int = 1024, repeats: int = 20) -> float:
    """Measured matmul FLOP/s of this machine at this thread count and precision (the denominator of MFU)."""
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def evaluate_policy(policy, tokenizer, args) -> float:
    """The same evaluation for every implementation: the trainer's, on the eval prompts with its fixed seed."""
    cfg = rlhf_config(args, "grpo", "unused")
    return evaluate_on_prompts(policy, tokenizer, load_prompts(DATA_DIR / "prompts_eval.jsonl"), resolve_reward(),
                               cfg.eval_sampling, cfg.eval_samples_per_prompt, cfg.eval_seed)["reward"]


# ---- workers: one implementation in this process -----------------------------------------------

def run_ours(args, algo: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = rlhf_config(args, algo, tmp)
        summary = train(cfg)
        rows = read_jsonl(Path(tmp) / "metrics.jsonl")  # step rows, and eval rows every --eval-every steps
        policy = load_model(str(Path(tmp) / "model"))
        tokenizer = load_tokenizer(str(Path(tmp) / "model"))
    steps = [r for r in rows if "time/generate_s" in r]
    split = {part: sum(r[f"time/{key}_s"] for r in steps) for part, key in
             (("generation", "generate"), ("scoring", "reward"), ("update", "update"))}
    return {"train_s": summary["wall_s"], "split_s": split, "eval_reward": summary["reward_after"],
            "time_to_target_s": time_to_target(rows, args.target),
            "completion_tokens": sum(r["completions/mean_length"] for r in steps) * cfg.completions_per_step,
            "mean_completion_tokens": sum(r["completions/mean_length"] for r in steps) / len(steps),
            "policy": policy, "tokenizer": tokenizer}


def time_to_target(rows: list[dict], target: float) -> float | None:
    """Training seconds (sampling, scoring and update of the steps so far) when an evaluation during training
    first reached target; None if none did."""
    seconds = 0.0
    for row in rows:
        seconds += sum(row.get(f"time/{part}_s", 0.0) for part in ("generate", "reward", "update"))
        if row["step"] > 0 and row.get("eval/reward", -1.0) >= target:
            return seconds
    return None


def run_trl(args) -> dict:
    from trl import GRPOConfig, GRPOTrainer  # an optional peer (the [bench] extra): imported only to run it

    model_dir = args.model or default_base_model()
    reward = resolve_reward()  # the same functions and weights as ours
    functions = []
    for name, fn in reward.functions.items():
        def named(prompts, completions, _fn=fn, **_):
            return _fn(prompts, completions)
        named.__name__ = name
        functions.append(named)
    prompts = datasets.Dataset.from_dict({"prompt": [format_prompt(p) for p in load_prompts(DATA_DIR / "prompts_train.jsonl")]})
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp, max_steps=args.steps, seed=args.seed, learning_rate=args.learning_rate, lr_scheduler_type="constant",
            weight_decay=0.0, max_grad_norm=1.0, per_device_train_batch_size=args.prompts_per_step * args.num_generations,
            gradient_accumulation_steps=1, steps_per_generation=1, num_generations=args.num_generations,
            max_completion_length=args.max_completion_length, temperature=1.0, beta=args.beta, epsilon=0.2,
            loss_type="dapo", scale_rewards="group", num_iterations=1, reward_weights=reward.weights,
            use_cpu=args.device == "cpu", bf16=args.precisions[0] == "bf16", gradient_checkpointing=args.gradient_checkpointing,
            logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
        lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05, task_type="CAUSAL_LM") if args.use_peft else None
        trainer = GRPOTrainer(model=load_model(model_dir), reward_funcs=functions, args=config, train_dataset=prompts,
                              processing_class=load_tokenizer(model_dir), peft_config=lora)
        warm_up_generate(trainer, args)
        timer = StepTimer(trainer, lambda model: evaluate_policy(plain_copy(model, model_dir), trainer.processing_class, args),
                          args.eval_every)
        trainer.add_callback(timer)
        trainer.train()
        trained = trainer.accelerator.unwrap_model(trainer.model)
        policy = plain_copy(trained.merge_and_unload() if args.use_peft else trained, model_dir)
    lengths = [log["completions/mean_length"] for log in timer.logs if "completions/mean_length" in log]
    return {"train_s": timer.total, "split_s": {"generation": timer.parts["generation"], "scoring": timer.parts["scoring"],
                                                "update": timer.total - timer.parts["generation"] - timer.parts["scoring"]},
            "completion_tokens": sum(lengths) * args.prompts_per_step * args.num_generations,
            "time_to_target_s": next((s for s, reward in timer.evaluations if reward >= args.target), None),
            "mean_completion_tokens": sum(lengths) / len(lengths), "policy": policy, "tokenizer": trainer.processing_class}


def plain_copy(model, model_dir: str):
    """A fresh fp32 model holding model's weights: with bf16=True accelerate wraps the trained model's forward in autocast,
    and the evaluation must be the same code in the same precision for every implementation."""
    copy = load_model(model_dir)
    copy.load_state_dict(model.state_dict())
    return copy


def warm_up_generate(trainer, args) -> None:
    """TRL's warm-up, the counterpart of ours' before-training evaluation: its model samples the eval prompts
    once with transformers' generate, as its training steps will."""
    tokenizer = trainer.processing_class
    prompts = [format_prompt(p) for p in load_prompts(DATA_DIR / "prompts_eval.jsonl")]
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(trainer.accelerator.device)
    with torch.inference_mode():
        trainer.model.generate(**batch, do_sample=True, max_new_tokens=args.max_completion_length,
                               pad_token_id=tokenizer.pad_token_id)


class StepTimer(TrainerCallback):
    """Times each optimizer step of a TRL trainer, and the generation and reward calls inside it; every eval_every
    steps, outside the timer, evaluates the model (evaluations: (training seconds so far, eval reward))."""

    def __init__(self, trainer, evaluate, eval_every: int):
        self.total, self.parts, self.logs, self._start = 0.0, {"generation": 0.0, "scoring": 0.0}, [], 0.0
        self.evaluate, self.eval_every, self.evaluations = evaluate, eval_every, []
        for method, part in (("_generate", "generation"), ("_calculate_rewards", "scoring")):
            setattr(trainer, method, self._timed(getattr(trainer, method), part))

    def _timed(self, fn, part: str):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.parts[part] += time.perf_counter() - start
        return wrapper

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.total += time.perf_counter() - self._start
        if self.eval_every and state.global_step % self.eval_every == 0:
            self.evaluations.append((self.total, self.evaluate(model)))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def worker(args) -> None:
    """Run one implementation at args.threads[0] threads and print its result as the last line."""
    threads = args.threads[0]
    torch.set_num_threads(threads)

    result = run_trl(args) if args.worker == "trl" else run_ours(args, "ppo" if args.worker == "ppo" else "grpo")
    policy, tokenizer = result.pop("policy"), result.pop("tokenizer")
    rss = peak_rss_mb()  # before evaluation, which is the same for all and not part of training
    result["eval_reward"] = evaluate_policy(policy, tokenizer, args) if args.shape == "default" else None  # random weights: none
    prompts = [format_prompt(p) for p in load_prompts(DATA_DIR / "prompts_train.jsonl")]
    prompt_tokens = sum(len(ids) for ids in tokenizer(prompts)["input_ids"]) / len(prompts)
    completions = args.steps * args.prompts_per_step * args.num_generations
    flops = model_flops_per_step(args, policy, result.pop("mean_completion_tokens"), prompt_tokens, args.worker == "ppo")
    result.update({"impl": args.worker, "threads": threads, "precision": args.precisions[0], "seed": args.seed, "sec_per_step": result["train_s"] / args.steps,
                   "completions_per_s": completions / result["train_s"], "tokens_per_s": result["completion_tokens"] / result["train_s"],
                   "peak_rss_mb": rss, "model_tflops_per_step": flops / 1e12, "achieved_gflops": flops * args.steps / result["train_s"] / 1e9})
    print("RESULT " + json.dumps(result))


# ---- the driver --------------------------------------------------------------------------------

def launch(args, impl: str, threads: int, precision: str, seed: int) -> dict:
    flags = ["--worker", impl, "--threads", str(threads), "--precisions", precision, "--seed", str(seed)]
    for name in ("steps", "prompts_per_step", "num_generations", "max_completion_length", "learning_rate", "beta", "device",
                 "eval_every", "target", "shape", "lora_r"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    flags += [f"--{name.replace('_', '-')}" for name in ("use_peft", "gradient_checkpointing") if getattr(args, name)]
    if args.model:
        flags += ["--model", args.model]
    done = subprocess.run([sys.executable, __file__, *flags], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{impl} at {threads} threads in {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def best_by_impl(runs: list[dict]) -> dict[str, dict]:
    """Per implementation, the (thread count, precision) with the highest mean completions/s, averaged over repeats;
    time_to_target_s is None unless every repeat reached the target."""
    best = {}
    for impl in dict.fromkeys(r["impl"] for r in runs):
        by_setting = {}
        for r in runs:
            if r["impl"] == impl:
                by_setting.setdefault((r["threads"], r["precision"]), []).append(r)
        mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        (threads, precision), group = max(by_setting.items(), key=lambda kv: mean(kv[1], "completions_per_s"))
        best[impl] = {key: mean(group, key) for key in ("completions_per_s", "sec_per_step", "tokens_per_s",
                                                         "peak_rss_mb", "achieved_gflops", "model_tflops_per_step")}
        best[impl]["eval_reward"] = mean(group, "eval_reward") if group[0]["eval_reward"] is not None else None
        best[impl]["split_s"] = {part: sum(r["split_s"][part] for r in group) / len(group) for part in group[0]["split_s"]}
        best[impl].update(threads=threads, repeats=len(group), precision=precision,
                          **{f"{key}_range": [min(r[key] for r in group), max(r[key] for r in group)]
                             for key in ("completions_per_s", "eval_reward") if group[0][key] is not None})
        reached = [r["time_to_target_s"] for r in group if r["time_to_target_s"] is not None]
        best[impl]["time_to_target_s"] = sum(reached) / len(reached) if len(reached) == len(group) else None
        best[impl]["time_to_target_s_range"] = [min(reached), max(reached)] if len(reached) == len(group) else None
    return best


def markdown(best: dict[str, dict], peak_gflops: dict[str, float], target: float) -> str:
    names = {"ours": "ours, GRPO", "trl": "TRL GRPOTrainer", "ppo": "ours, PPO + critic"}
    lines = ["| implementation | threads | precision | s/step | completions/s (range) | gen. tokens/s | generation / scoring / "
             f"update s | peak RSS MB | eval reward (range) | s to eval reward {target} (range) | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for impl, b in best.items():
        split = " / ".join(f"{b['split_s'][p]:.1f}" for p in ("generation", "scoring", "update"))
        mfu = b["achieved_gflops"] / peak_gflops[f"{b['threads']} {b['precision']}"]
        low, high = b["completions_per_s_range"]
        reward = (f"{b['eval_reward']:.3f} ({b['eval_reward_range'][0]:.3f}-{b['eval_reward_range'][1]:.3f})"
                  if b["eval_reward"] is not None else "- (random weights)")
        to_target = (f"{b['time_to_target_s']:.1f} ({b['time_to_target_s_range'][0]:.1f}-{b['time_to_target_s_range'][1]:.1f})"
                     if b["time_to_target_s"] is not None else "not reached in every repeat")
        lines.append(f"| {names[impl]} | {b['threads']} | {b['precision']} | {b['sec_per_step']:.3f} | "
                     f"{rate(b['completions_per_s'])} ({rate(low)}-{rate(high)}) | {b['tokens_per_s']:.0f} | {split} | "
                     f"{b['peak_rss_mb']:.0f} | {reward} | {to_target} | {mfu:.2%} |")
    if "ours" in best and "trl" in best:
        ours, trl = best["ours"], best["trl"]
        rewards = f"; eval reward: {separation(ours, trl, 'eval_reward')}" if ours["eval_reward"] is not None else ""
        lines.append(f"\nours / TRL: {ours['completions_per_s'] / trl['completions_per_s']:.2f}x completions/s "
                     f"({separation(ours, trl, 'completions_per_s')}){rewards}")
    return "\n".join(lines)


def rate(per_s: float) -> str:
    """Completions per second to the digits that matter: 371, or 3.87 for a real-size model."""
    return f"{per_s:.0f}" if per_s >= 100 else f"{per_s:.3g}"


def separation(ours: dict, trl: dict, key: str) -> str:
    """Which side is higher on key, claimed only where the repeats' ranges do not overlap."""
    (ours_low, ours_high), (trl_low, trl_high) = ours[f"{key}_range"], trl[f"{key}_range"]
    if ours["repeats"] < 2 or trl["repeats"] < 2:
        return "one repeat, no spread measured: no difference claimed"
    if ours_low == ours_high and trl_low == trl_high:  # e.g. eval reward with one seed: each run repeats exactly
        return "each side repeats exactly, so the repeats measure no noise: no difference claimed"
    if ours_low > trl_high:
        return "ours higher in every repeat"
    if trl_low > ours_high:
        return "TRL higher in every repeat"
    return "the repeats' ranges overlap: no difference claimed"


@cli
def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    try:
        import trl
    except ImportError:
        raise ConfigError("trl is not installed; run `make setup-bench` (the [bench] extra)") from None

    # built once here, not inside a timed run
    args.model = args.model or (default_base_model() if args.shape == "default" else shape_model(args.shape))
    peak = {f"{t} {p}": peak_matmul_flops(t, p) / 1e9 for t in args.threads for p in args.precisions}
    print(f"{machine()}; matmul peak (1024^3): " + ", ".join(f"{g:.0f} GFLOP/s at {key}" for key, g in peak.items()))
    runs = []
    for repeat in range(args.repeats):
        for threads in args.threads:
            for precision in args.precisions:
                for impl in args.impls:
                    r = launch(args, impl, threads, precision, args.seed + repeat)
                    runs.append(r)
                    reward = f", eval reward {r['eval_reward']:.3f}, {r['time_to_target_s']} s to {args.target}" if r["eval_reward"] is not None else ""
                    print(f"[{repeat + 1}/{args.repeats}] {impl} at {threads} thread(s), {precision}: {r['sec_per_step']:.3f} s/step, "
                          f"{r['completions_per_s']:.0f} completions/s, peak RSS {r['peak_rss_mb']:.0f} MB{reward}", flush=True)
    best = best_by_impl(runs)
    table = markdown(best, peak, args.target)
    print(table)
    settings = {k: getattr(args, k) for k in ("steps", "prompts_per_step", "num_generations", "max_completion_length",
                                              "learning_rate", "beta", "seed", "threads", "precisions", "repeats", "device",
                                              "model", "eval_every", "target", "shape", "use_peft", "lora_r", "gradient_checkpointing")}
    for path in (args.json, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {**best, "settings": settings, "machine": machine(), "trl_version": trl.__version__,
                           "peak_matmul_gflops": peak, "runs": runs})
    Path(args.md).write_text(f"{machine()}\n\n{table}\n")
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
