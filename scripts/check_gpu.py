#!/usr/bin/env python
"""The GPU check: every trainer for a few steps on the CUDA device in fp32 and bf16, the fast decoder against
transformers' generate there, and runs in 2 processes (DDP, FSDP) against one in 1 where two GPUs exist; a table in bench/gpu.md
(and bench/gpu.json) naming the device, in a few minutes.

    make check-gpu                                                     # on a machine with a CUDA device
    python scripts/check_gpu.py --device cpu --md /tmp/g.md --json /tmp/g.json   # the same checks on CPU (the tests)

It needs nothing from the hub: the first check pretrains a small base model from the project's data, which the others
fine-tune. A check that fails is a row saying why, and the script exits 1 after writing the table.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.machine import machine
from classic_rl.infra.run_folder import write_json
from rlhf_toy.algorithms import config_for
from rlhf_toy.algorithms.dpo import DPOConfig, train_dpo
from rlhf_toy.data import DATA_DIR
from rlhf_toy.distributed import launch_command
from rlhf_toy.generation.fast_decode import supports_fast_decode
from rlhf_toy.generation.sampling import RowUniforms, SamplingConfig, encode_prompts, sample_sequences
from rlhf_toy.lm.models import load_model, load_tokenizer, stop_token_ids
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain
from rlhf_toy.online import train
from rlhf_toy.rewards.reward_model import RewardModelConfig, train_reward_model

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Describe a fox.", "Tell me about Ada and the lake in 8 words.", "Who lives in Redfern?", "Hi."]


def device_line(device: str) -> str:
    if device == "cpu":
        return f"CPU: {machine()}"
    props = torch.cuda.get_device_properties(0)
    return (f"{torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}")


def pretraining(work: Path, precision: str, cpu: bool) -> str:
    summary = pretrain(PretrainConfig(preset="nano", data_dir=str(DATA_DIR), max_steps=60, warmup_steps=6, batch_size=16,
                                      eval_every=60, precision=precision, cpu=cpu, run_dir=str(work / f"base-{precision}"),
                                      overwrite=True))
    return f"held-out loss {summary['val_loss']:.2f}, {summary['tokens_per_s']:,.0f} tokens/s"


def online(algo: str) -> Callable[[Path, str, bool], str]:
    def check(work: Path, precision: str, cpu: bool) -> str:
        cfg = config_for(algo)(model=str(work / "base-fp32" / "model"), steps=4, prompts_per_step=4, num_generations=4,
                               max_completion_length=24, eval_samples_per_prompt=1, log_completions_every=0,
                               precision=precision, cpu=cpu, run_dir=str(work / f"{algo}-{precision}"), overwrite=True)
        summary = train(cfg)
        on_device(summary["device"], cpu)
        return (f"reward {summary['reward_before']:.3f} -> {summary['reward_after']:.3f}, "
                f"{summary['completions_per_s']:.1f} completions/s")
    return check


def dpo(work: Path, precision: str, cpu: bool) -> str:
    summary = train_dpo(DPOConfig(model=str(work / "base-fp32" / "model"), steps=6, eval_every=6, per_device_train_batch_size=8,
                                  eval_samples_per_prompt=1, precision=precision, cpu=cpu, run_dir=str(work / f"dpo-{precision}"),
                                  overwrite=True))
    return f"held-out pair accuracy {summary['pair_accuracy']:.2f}, KL {summary['kl_final']:.4f} per token"


def reward_model(work: Path, precision: str, cpu: bool) -> str:
    summary = train_reward_model(RewardModelConfig(model=str(work / "base-fp32" / "model"), steps=6, eval_every=6, batch_size=8,
                                                   spearman_samples=16, precision=precision, cpu=cpu,
                                                   run_dir=str(work / f"rm-{precision}"), overwrite=True))
    return f"held-out accuracy {summary['eval_accuracy']:.2f}"


def on_device(device: str, cpu: bool) -> None:
    if not cpu and not device.startswith("cuda"):
        raise RuntimeError(f"ran on {device}, not on the GPU")


def decoder(work: Path, precision: str, cpu: bool) -> str:
    """The fast decoder against generate on the device: the same greedy tokens, and the same sampled tokens from
    the same numbers; their speeds."""
    device = "cpu" if cpu else "cuda"
    model, tokenizer = load_model(str(work / "base-fp32" / "model")).to(device).eval(), load_tokenizer(str(work / "base-fp32" / "model"))
    if not supports_fast_decode(model):
        raise RuntimeError("the fast decoder turned itself off for this model")
    batch = encode_prompts(tokenizer, PROMPTS * 16, 48, model).to(device)
    outputs, seconds = {}, {}
    for path in ("fast", "generate"):
        for sampling in (SamplingConfig(48, temperature=0), SamplingConfig(48, temperature=1.0, top_k=50)):
            start = time.perf_counter()
            with torch.inference_mode():
                outputs[path, sampling.temperature], _ = sample_sequences(
                    model, tokenizer, batch, sampling, stop_token_ids(model, tokenizer),
                    uniforms=RowUniforms(0, 0, len(batch["input_ids"]), device), fast_decoder=path == "fast")
            seconds[path] = seconds.get(path, 0.0) + time.perf_counter() - start
    for temperature in (0, 1.0):
        if not torch.equal(outputs["fast", temperature], outputs["generate", temperature]):
            raise RuntimeError(f"the fast decoder and generate drew different tokens at temperature {temperature}")
    return f"same tokens greedy and sampled; fast {seconds['generate'] / seconds['fast']:.1f}x generate"


def compare_processes(work: Path, precision: str, cpu: bool, fsdp: bool) -> str:
    """GRPO in 2 processes (one per GPU; sharded with fsdp) against 1 on the same global batch: the same weights."""
    flags = ["--model", str(work / "base-fp32" / "model"), "--steps", "3", "--prompts-per-step", "4", "--num-generations", "4",
             "--max-completion-length", "16", "--eval-samples-per-prompt", "1", "--log-completions-every", "0",
             "--learning-rate", "1e-4",  # Adam moves a weight whose gradient is rounding noise by up to lr a step
             "--precision", precision, "--overwrite"] + (["--cpu"] if cpu else [])
    script = str(ROOT / "scripts" / "train_rlhf.py")
    for n in (1, 2):
        extra = ["--fsdp"] if fsdp and n == 2 else []
        result = subprocess.run([*launch_command(script, n), *flags, *extra, "--run-dir", str(work / f"processes-{n}")], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{n} process(es): " + (result.stderr.strip().splitlines() or ["no output"])[-1])
    one, two = (load_file(work / f"processes-{n}" / "model" / "model.safetensors") for n in (1, 2))
    difference = max((one[k] - two[k]).abs().max().item() for k in one)
    if difference > (1e-5 if precision == "fp32" else 1e-2):
        raise RuntimeError(f"the 2-process weights differ from the 1-process ones by {difference:.1e}")
    return f"weights equal to {difference:.1e}"


CHECKS = [("pretraining", pretraining), ("GRPO", online("grpo")), ("PPO with a critic", online("ppo")), ("DPO", dpo),
          ("reward model", reward_model), ("fast decoder vs generate", decoder)]


def run_checks(device: str, work: Path) -> list[dict]:
    cpu, rows = device == "cpu", []
    processes = 2 if cpu or torch.cuda.device_count() >= 2 else 0
    several = [("2 processes vs 1 (DDP)", functools.partial(compare_processes, fsdp=False)),
               ("2 processes vs 1 (FSDP)", functools.partial(compare_processes, fsdp=True))]
    for name, check in CHECKS + (several if processes else []):
        for precision in ("fp32",) if check is decoder else ("fp32", "bf16"):
            start = time.perf_counter()
            try:
                detail, status = check(work, precision, cpu), "ok"
            except Exception as err:  # a failed check is a row of the table, and the next one runs
                traceback.print_exc()
                detail, status = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}", "FAILED"
            rows.append({"check": name, "precision": precision, "status": status, "seconds": time.perf_counter() - start,
                         "detail": detail})
            print(f"{name} ({precision}): {status}, {detail}", flush=True)
    return rows


def markdown(device: str, rows: list[dict], total_s: float) -> str:
    lines = [f"# The GPU check ({time.strftime('%Y-%m-%d')})", "", f"Device: {device}. Command: `make check-gpu` "
             f"({total_s:.0f} s in all).", "", "| check | precision | result | seconds | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['precision']} | {r['status']} | {r['seconds']:.1f} | {r['detail']} |" for r in rows]
    return "\n".join(lines) + "\n"


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (the check) or cpu (a dry run)")
    parser.add_argument("--md", default=str(ROOT / "bench" / "gpu.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "gpu.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA device here; accepted: a machine with one (make check-gpu), or --device cpu for a dry run")
    device, start = device_line(args.device), time.perf_counter()
    print(f"checking {device}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        rows = run_checks(args.device, Path(work))
    total_s = time.perf_counter() - start
    Path(args.md).write_text(markdown(device, rows, total_s))
    write_json(Path(args.json), {"device": device, "total_s": total_s, "checks": rows})
    print(markdown(device, rows, total_s))
    if any(row["status"] != "ok" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
