"""bf16 where the hardware has bf16 units: what auto picks, the fast decoder and the update in bf16 against their plain
and fp32 counterparts (stated tolerances), and bf16 runs of pretraining and GRPO."""

import copy
import json
import os

import pytest
import torch

from classic_rl import core
from classic_rl.infra import machine
from classic_rl.infra.errors import ConfigError
from rlhf_toy import precision
from rlhf_toy.algorithms.grpo import GRPOConfig
from rlhf_toy.generation.fast_decode import sample_fast
from rlhf_toy.generation.rollout import completion_logits, completion_logprobs
from rlhf_toy.generation.sampling import SamplingConfig, encode_prompts
from rlhf_toy.lm.models import load_model, load_tokenizer, stop_token_ids
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain
from rlhf_toy.precision import autocast, choose_attention, resolve_precision, set_up_precision
from tests.conftest import max_difference_while_decoding, run_script

CPU = torch.device("cpu")
PROMPTS = ["Describe a fox.", "Tell me about Ada and the lake in 8 words.", "Hi."]


def test_the_machine_line_names_the_cpu_family_and_reads_the_bf16_units_from_its_flags(monkeypatch):
    flags = {"flags": "fpu sse avx512f avx512_bf16 avx2", "model name": "Some CPU", "cpu family": "25", "model": "17"}
    monkeypatch.setattr(machine, "cpuinfo_field", lambda name: flags.get(name, ""))
    assert machine.cpu_bf16_units() == ["avx512_bf16"]
    assert machine.machine().startswith("Some CPU (family 25, model 17), ") and "bf16 units: avx512_bf16" in machine.machine()
    flags["flags"] = "fpu sse avx512f avx2 amx_tile amx_bf16 avx512_bf16"
    assert machine.cpu_bf16_units() == ["amx_bf16", "avx512_bf16"]
    flags["flags"] = "fpu sse avx2"
    assert machine.cpu_bf16_units() == [] and "bf16 units: none" in machine.machine()


def test_auto_is_bf16_only_on_a_cpu_with_bf16_units_and_an_explicit_choice_is_kept(monkeypatch):
    monkeypatch.delenv("RLHF_TOY_AUTO_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: [])
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: ["amx_bf16"])
    assert resolve_precision("auto", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setenv("RLHF_TOY_AUTO_PRECISION", "fp32")
    assert resolve_precision("auto", CPU) == "fp32"


def test_bf16_on_a_cpu_bounds_the_onednn_cache_unless_the_user_set_it(monkeypatch):
    # set, then delete: monkeypatch then removes what set_up_precision writes when the test ends (a delenv of an absent
    # variable alone records nothing to undo, and the setting would leak into later tests)
    monkeypatch.setenv(precision.ONEDNN_CACHE_VARIABLE, "unset by the test")
    monkeypatch.delenv(precision.ONEDNN_CACHE_VARIABLE)
    set_up_precision("fp32", CPU)
    assert precision.ONEDNN_CACHE_VARIABLE not in os.environ
    set_up_precision("bf16", torch.device("meta"))
    assert precision.ONEDNN_CACHE_VARIABLE not in os.environ
    set_up_precision("bf16", CPU)
    assert os.environ[precision.ONEDNN_CACHE_VARIABLE] == "64"
    monkeypatch.setenv(precision.ONEDNN_CACHE_VARIABLE, "512")
    set_up_precision("bf16", CPU)
    assert os.environ[precision.ONEDNN_CACHE_VARIABLE] == "512"


def test_a_bad_pinned_auto_precision_and_a_bad_flag_are_refused(monkeypatch):
    monkeypatch.setenv("RLHF_TOY_AUTO_PRECISION", "fp16")
    with pytest.raises(ConfigError, match=r"\$RLHF_TOY_AUTO_PRECISION='fp16'; accepted: fp32, bf16, or unset"):
        resolve_precision("auto", CPU)
    with pytest.raises(ConfigError, match="unknown --precision 'half'; accepted: auto, fp32, bf16"):
        GRPOConfig(precision="half")
    with pytest.raises(ConfigError, match="unknown --precision 'fp16'"):
        PretrainConfig(precision="fp16")


def test_fp32_is_no_autocast_and_bf16_runs_matmuls_in_bf16():
    x = torch.randn(4, 8)
    with autocast("fp32", CPU):
        assert (x @ x.T).dtype == torch.float32
    with autocast("bf16", CPU):
        assert (x @ x.T).dtype == torch.bfloat16


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def policy_and_tokenizer(request):
    """Each lean step of the fast decoder: a nano GPT-2 and a nano Llama."""
    model_dir = request.getfixturevalue("nano_dir" if request.param == "gpt2" else "nano_llama_dir")
    return load_model(model_dir).eval(), load_tokenizer(model_dir)


def test_fast_decode_in_bf16_matches_generate_in_bf16(policy_and_tokenizer):
    """Under bf16 autocast both decoders round alike: the same greedy tokens, and logits within a bf16 rounding step of
    their scale (2^-7 x the largest logit; they agree exactly on the machines measured). fp32 and bf16 differ by more."""
    policy, tokenizer = policy_and_tokenizer
    batch = encode_prompts(tokenizer, PROMPTS, 16, policy)
    greedy = SamplingConfig(max_new_tokens=16, temperature=0)
    eos = stop_token_ids(policy, tokenizer)
    with torch.inference_mode(), autocast("bf16", CPU):
        reference = policy.generate(**batch, generation_config=greedy.generation_config(tokenizer, eos, with_logits=True))
        sequences, logits = sample_fast(policy, batch["input_ids"], batch["attention_mask"], 16, greedy.chooser(), eos,
                                        tokenizer.pad_token_id)
    assert torch.equal(sequences, reference.sequences)
    scale = max(step.abs().max().item() for step in reference.logits)
    completion = sequences[:, batch["input_ids"].shape[1]:]
    assert max_difference_while_decoding(logits, reference.logits, completion, eos) <= scale / 128


def test_the_update_in_bf16_is_the_fp32_update_to_rounding(policy_reference_rollout):
    """The log-probs a GRPO update differentiates, in bf16 autocast (eager attention) against fp32: within 0.05 per token
    (measured at most ~0.02 on the nano model), and the gradient of their sum points the same way (cosine > 0.99)."""
    policy, rollout, _ = policy_reference_rollout
    results = {}
    for name in ("fp32", "bf16"):
        model = choose_attention(copy.deepcopy(policy).train(), name, CPU)
        with autocast(name, CPU):
            logits = completion_logits(model, rollout.input_ids.clone(), rollout.attention_mask.clone(), rollout.prompt_length)
        logp = core.token_logprobs(logits, rollout.completion_ids.clone(), rollout.completion_mask.clone())
        (logp.sum()).backward()
        results[name] = logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])
    assert model.config._attn_implementation == "eager"
    assert (results["bf16"][0] - results["fp32"][0]).abs().max() < 0.05
    assert torch.nn.functional.cosine_similarity(results["bf16"][1], results["fp32"][1], dim=0) > 0.99


def test_a_frozen_model_with_bf16_linear_weights_gives_the_same_logprobs_under_autocast(policy_reference_rollout):
    """bf16_linear_weights casts a frozen model's linear layers once, to what autocast casts them to per call; the tied
    embedding and the layer norms stay fp32."""
    policy, rollout, _ = policy_reference_rollout
    args = (rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
    frozen = choose_attention(copy.deepcopy(policy).eval().requires_grad_(False), "bf16", CPU)  # the attention bf16 runs
    with torch.inference_mode(), autocast("bf16", CPU):
        before = completion_logprobs(frozen, *args)[0]
        precision.bf16_linear_weights(frozen)
        after = completion_logprobs(frozen, *args)[0]
    assert torch.equal(before, after)
    blocks = frozen.transformer.h
    assert blocks[0].attn.c_attn.weight.dtype == blocks[-1].mlp.c_proj.bias.dtype == torch.bfloat16
    assert frozen.lm_head.weight.dtype == frozen.transformer.wte.weight.dtype == blocks[0].ln_1.weight.dtype == torch.float32


def test_pretraining_in_bf16_learns_and_saves_a_model_that_loads_with_its_own_attention(nano, tmp_path):
    root, fp32_summary = nano
    summary = pretrain(PretrainConfig(preset="nano", data_dir=str(root / "data"), vocab_size=600, batch_size=16, max_steps=80,
                                      warmup_steps=10, learning_rate=3e-3, min_lr_ratio=0.1, eval_every=40, precision="bf16", run_dir=str(tmp_path / "run")))
    assert summary["precision"] == "bf16" and fp32_summary["precision"] == "fp32"
    assert abs(summary["val_loss"] - fp32_summary["val_loss"]) < 0.1, (summary["val_loss"], fp32_summary["val_loss"])
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert "attn_implementation" not in config and "_attn_implementation" not in config
    assert load_model(str(tmp_path / "run" / "model")).config._attn_implementation == "sdpa"


def test_grpo_in_bf16_trains_each_step_on_the_weights_of_the_last(nano_dir, tmp_path):
    """Autocast keeps its bf16 copies of the weights until its outermost context exits; one context around the run
    would train every step on the first step's weights (ratio to the sampling policy far from 1: half the tokens
    clipped at this learning rate). The trainer opens one per update: one pass per rollout stays on-policy up to
    rounding, and the policy still learns."""
    from rlhf_toy.online import train
    summary = train(GRPOConfig(model=nano_dir, steps=12, prompts_per_step=4, num_generations=8, max_completion_length=16,
                               reward="length", learning_rate=4e-3, precision="bf16", eval_samples_per_prompt=4, torch_threads=1,
                               log_completions_every=0, run_dir=str(tmp_path / "run")))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"clip_ratio"' in line]
    assert summary["precision"] == "bf16" and len(rows) == 12
    assert max(row["clip_ratio"] for row in rows) < 0.02, [row["clip_ratio"] for row in rows]
    assert summary["reward_after"] > summary["reward_before"]


def test_fast_decode_reads_a_bf16_prefill_into_fp32_steps(policy_and_tokenizer):
    """accelerate's bf16 wraps a model's forward in autocast (TRL's trained model in bench_rlhf.py): the prefill then
    fills a bf16 cache while the decoding steps run in fp32. Same greedy tokens as an fp32 run, logits within bf16
    rounding of its scale (2^-6 x the largest logit: the prompt's keys and values were rounded once)."""
    policy, tokenizer = policy_and_tokenizer
    wrapped = copy.deepcopy(policy)
    wrapped.forward = torch.autocast("cpu", dtype=torch.bfloat16)(wrapped.forward)
    batch = encode_prompts(tokenizer, PROMPTS, 12, policy)
    eos = stop_token_ids(policy, tokenizer)
    greedy = SamplingConfig(max_new_tokens=12, temperature=0).chooser()
    with torch.inference_mode():
        plain_sequences, plain_logits = sample_fast(policy, batch["input_ids"], batch["attention_mask"], 12, greedy, eos,
                                                    tokenizer.pad_token_id)
        sequences, logits = sample_fast(wrapped, batch["input_ids"], batch["attention_mask"], 12, greedy, eos, tokenizer.pad_token_id)
    assert logits[-1].dtype == torch.float32 and torch.equal(sequences, plain_sequences)
    scale = max(step.abs().max().item() for step in plain_logits)
    completion = sequences[:, batch["input_ids"].shape[1]:]
    assert max_difference_while_decoding(logits, plain_logits, completion, eos) <= scale / 64


def test_bench_precision_times_every_part_in_both_precisions(nano_dir, tmp_path, monkeypatch, capsys):
    code, out, _ = run_script("bench_precision.py", ["--model", nano_dir, "--repeats", "1", "--json", str(tmp_path / "p.json"),
                                                     "--md", str(tmp_path / "p.md")], monkeypatch, capsys)
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    parts = {(r["part"], r.get("attention"), r["precision"]) for r in rows}
    assert code == 0 and all(r["ms"] > 0 for r in rows)
    for part in ("grpo sampling", "grpo reference forward", "grpo update forward + backward"):
        assert {(part, None, "fp32"), (part, None, "bf16")} <= parts
    assert {("pretraining step", attention, p) for attention in ("sdpa", "eager") for p in ("fp32", "bf16")} <= parts
    assert "grpo update forward + backward" in (tmp_path / "p.md").read_text()
