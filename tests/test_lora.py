"""LoRA through peft and gradient checkpointing: the fast decoder with adapters against generate, the adapter-disabled
reference against a full copy, the first update exactly on-policy, exact resume, the saved adapters and merged model,
and DPO and the reward model with adapters."""

import copy
import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

from classic_rl.infra.errors import ConfigError
from rlhf_toy.algorithms.grpo import GRPOConfig, grpo_update
from rlhf_toy.generation.fast_decode import supports_fast_decode
from rlhf_toy.generation.rollout import completion_logprobs, sample_rollout
from rlhf_toy.generation.sampling import SamplingConfig, encode_prompts, generate_completions
from rlhf_toy.lm.lora import AdapterDisabled, ModelFields, adapters_disabled, prepare_for_training, with_lora
from rlhf_toy.lm.models import load_model, load_tokenizer, stop_token_ids
from rlhf_toy.online import train
from tests.conftest import comparable_metrics, run_script, step_rows
from tests.test_on_policy import one_step_config

PROMPTS = [p for p in ["Describe a fox.", "Tell me about Ada and the lake."] for _ in range(4)]


GPT2_BLOCK_LINEARS = ["c_attn", "c_proj", "c_fc"]
LLAMA_BLOCK_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_policy(model_dir, seed=0, targets=tuple(GPT2_BLOCK_LINEARS), **fields):
    """The model with adapters on every block linear, their B made non-zero so that they change its outputs."""
    torch.manual_seed(seed)
    policy = with_lora(load_model(model_dir), ModelFields(use_peft=True, lora_target_modules=list(targets), **fields))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return policy


def greedy(model, tokenizer, batch, fast: bool):
    config = SamplingConfig(max_new_tokens=12, temperature=0)
    with torch.inference_mode():
        if fast:
            from rlhf_toy.generation.fast_decode import sample_fast
            return sample_fast(model, batch["input_ids"], batch["attention_mask"], 12, config.chooser(),
                               stop_token_ids(model, tokenizer), tokenizer.pad_token_id)[0]
        return model.generate(**batch, generation_config=config.generation_config(tokenizer, stop_token_ids(model, tokenizer)))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_fast_decoder_samples_with_the_adapters_merged_in(arch, request):
    model_dir = request.getfixturevalue("nano_dir" if arch == "gpt2" else "nano_llama_dir")
    policy = lora_policy(model_dir, targets=GPT2_BLOCK_LINEARS if arch == "gpt2" else LLAMA_BLOCK_LINEARS).eval()
    tokenizer = load_tokenizer(model_dir)
    batch = encode_prompts(tokenizer, PROMPTS[::4], 12, policy)
    assert supports_fast_decode(policy)
    assert torch.equal(greedy(policy, tokenizer, batch, fast=True), greedy(policy, tokenizer, batch, fast=False))
    base = greedy(load_model(model_dir).eval(), tokenizer, batch, fast=False)
    with adapters_disabled(policy):  # the reference samples as the base model
        assert torch.equal(greedy(policy, tokenizer, batch, fast=True), base)
    assert not torch.equal(greedy(policy, tokenizer, batch, fast=True), base)  # the adapters do change the policy
    head = with_lora(load_model(model_dir), ModelFields(use_peft=True, lora_target_modules=["lm_head"]))
    assert not supports_fast_decode(head)  # an adapter the lean step would not apply: generate instead


def test_the_adapter_disabled_reference_gives_a_full_copys_loss_and_kl(nano_dir):
    """The same GRPO update with the reference as the policy without its adapters and as a separate copy of the weights."""
    tokenizer, cfg = load_tokenizer(nano_dir), GRPOConfig(beta=0.2, run_dir="unused")
    policy = lora_policy(nano_dir, lora_dropout=0.0)  # as --disable-dropout leaves it
    torch.manual_seed(1)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, SamplingConfig(max_new_tokens=10))
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 1.0, 0.3, 0.9])
    results = []
    for reference in ("adapters disabled", "full copy"):
        trained = copy.deepcopy(policy).train()
        ref_model = AdapterDisabled(trained) if reference == "adapters disabled" else load_model(nano_dir).eval()
        optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.1)
        torch.manual_seed(2)
        metrics = grpo_update(trained, ref_model, optimizer, Accelerator(cpu=True), rollout, rewards, cfg)
        results.append((metrics, [p.detach().clone() for p in trained.parameters() if p.requires_grad]))
    (with_adapters_off, adapters_a), (with_copy, adapters_b) = results
    assert with_adapters_off["kl"] > 0.001 and with_adapters_off == with_copy  # every metric, to the bit
    for a, b in zip(adapters_a, adapters_b, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_lora_runs_first_update_is_exactly_on_policy(algo, nano, dropout_gpt2_dir, tmp_path):
    """Fresh adapters (B = 0) on a GPT-2 with dropout 0.1: the policy is its reference, bit for bit."""
    summary = train(one_step_config(nano, tmp_path / "run", algo, dropout_gpt2_dir, precision="fp32", use_peft=True))
    (row,) = step_rows(tmp_path / "run")
    assert row["approx_kl"] == row["clip_ratio"] == row["kl"] == 0.0 and row["ratio_mean"] == 1.0, row
    assert summary["use_peft"] and 0 < summary["trainable_params"] < 0.1 * sum(p.numel() for p in load_model(dropout_gpt2_dir).parameters())


def lora_config(nano, run_dir, algo="grpo", **overrides):
    return one_step_config(nano, run_dir, algo, str(nano[0] / "run" / "model"), precision="fp32", use_peft=True, **overrides)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_resume_with_lora_ends_where_an_uninterrupted_run_ends(algo, nano, tmp_path):
    fields = dict(steps=4, save_every=2, keep_checkpoints=5, learning_rate=5e-3, gradient_checkpointing=algo == "ppo")
    full = train(lora_config(nano, tmp_path / "full", algo, **fields))
    train(lora_config(nano, tmp_path / "run", algo, **fields))
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-4")
    (tmp_path / "run" / "summary.json").unlink()
    assert json.loads((tmp_path / "run" / "checkpoints" / "step-2" / "model" / "adapter_config.json").read_text())["r"] == 16
    resumed = train(lora_config(nano, tmp_path / "run", algo, resume=True, **fields))
    assert comparable_metrics(tmp_path / "run") == comparable_metrics(tmp_path / "full")
    assert resumed["reward_after"] == full["reward_after"]


def test_the_saved_adapters_and_the_merged_model_sample_the_same_tokens(nano, tmp_path):
    train(lora_config(nano, tmp_path / "run", steps=2, learning_rate=5e-2, save_merged_model=True))
    adapters, merged = tmp_path / "run" / "model", tmp_path / "run" / "merged"
    assert (adapters / "adapter_model.safetensors").is_file() and not (adapters / "config.json").exists()
    tokenizer = load_tokenizer(str(adapters))
    by_peft, by_transformers = AutoPeftModelForCausalLM.from_pretrained(str(adapters)), AutoModelForCausalLM.from_pretrained(str(merged))
    ours = load_model(str(adapters))  # what sample.py --model RUN/model and the next trainer load
    sampling = SamplingConfig(max_new_tokens=12)
    texts = [generate_completions(model.eval(), tokenizer, PROMPTS, sampling, seed=3) for model in (by_peft, by_transformers, ours)]
    assert texts[0] == texts[1] == texts[2]
    base = generate_completions(load_model(str(nano[0] / "run" / "model")).eval(), tokenizer, PROMPTS, sampling, seed=3)
    assert base != texts[0]  # the adapters trained


def test_gradient_checkpointing_gives_the_same_log_probs_and_gradients(nano_dir):
    tokenizer = load_tokenizer(nano_dir)
    rollout = sample_rollout(load_model(nano_dir), tokenizer, PROMPTS, SamplingConfig(max_new_tokens=10))
    grads = []
    for checkpointing in (False, True):
        fields = ModelFields(use_peft=True, gradient_checkpointing=checkpointing)
        policy = prepare_for_training(lora_policy(nano_dir, lora_dropout=0.0), fields).train()
        logp, _ = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
        logp.sum().backward()
        grads.append((logp.detach(), [p.grad for p in policy.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dpo_and_the_reward_model_train_adapters(nano, nano_dir, tmp_path, monkeypatch, capsys):
    data = nano[0] / "data"
    common = ["--model", nano_dir, "--use-peft", "--steps", "2", "--eval-every", "2"]
    code, _, err = run_script("train_dpo.py", [*common, "--preferences", str(data / "preferences_train.jsonl"), "--eval-preferences",
                                               str(data / "preferences_eval.jsonl"), "--eval-prompts", str(data / "prompts_eval.jsonl"),
                                               "--eval-samples-per-prompt", "1", "--run-dir", str(tmp_path / "dpo")], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "dpo" / "model" / "adapter_model.safetensors").is_file()
    code, _, err = run_script("train_reward_model.py", [*common, "--data-dir", str(data), "--spearman-samples", "8",
                                                        "--run-dir", str(tmp_path / "rm")], monkeypatch, capsys)
    assert code == 0, err
    from rlhf_toy.rewards.functions import resolve_reward
    scores = resolve_reward(f"rm:{tmp_path / 'rm' / 'model'}")(["Describe a fox."] * 2, ["<answer> A fox. </answer>", "no"])
    assert len(scores) == 2 and scores[0] != scores[1]


def test_bad_lora_settings_are_one_line(nano, nano_dir, tmp_path):
    with pytest.raises(ConfigError, match="--save-merged-model merges LoRA adapters; give --use-peft too"):
        one_step_config(nano, tmp_path / "r", "grpo", nano_dir, save_merged_model=True)
    with pytest.raises(ConfigError, match="--lora-r must be > 0"):
        one_step_config(nano, tmp_path / "r", "grpo", nano_dir, use_peft=True, lora_r=0)
    with pytest.raises(ConfigError, match="--use-peft on a gpt2 model: .*accepted: --lora-target-modules naming its linear layers"):
        with_lora(load_model(nano_dir), ModelFields(use_peft=True, lora_target_modules=["q_proj"]))
