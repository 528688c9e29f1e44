"""--model takes any Hugging Face causal LM: a Llama pretrained here runs GRPO, PPO with either critic, and sample.py."""

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from rlhf_toy.algorithms import config_for
from rlhf_toy.generation.fast_decode import supports_fast_decode
from rlhf_toy.lm.models import build_model, load_model, load_tokenizer
from rlhf_toy.online import train
from tests.conftest import run_script, step_rows


def test_pretrain_builds_a_llama_that_saves_and_loads_through_the_auto_classes(nano_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(nano_llama_dir)
    assert isinstance(model, LlamaForCausalLM) and supports_fast_decode(model)  # it samples through the lean Llama step
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    summary = json.loads((Path(nano_llama_dir).parent / "summary.json").read_text())
    assert summary["arch"] == "llama" and summary["val_loss"] < 5.0  # it learned something in 80 steps (uniform: ln 600 = 6.4)


@pytest.mark.parametrize("fields", [dict(algo="grpo"), dict(algo="ppo", critic="separate", num_generations=1, prompts_per_step=4),
                                    dict(algo="ppo", critic="shared", num_generations=1, prompts_per_step=4)],
                         ids=["grpo", "ppo-separate-critic", "ppo-shared-critic"])
def test_rlhf_fine_tunes_a_llama(fields, nano, nano_llama_dir, tmp_path):
    root = nano[0]
    base = dict(model=nano_llama_dir, prompts=str(root / "data" / "prompts_train.jsonl"), steps=3, prompts_per_step=2,
                num_generations=2, eval_prompts=str(root / "data" / "prompts_eval.jsonl"), max_completion_length=12,
                eval_samples_per_prompt=1, log_completions_every=0, run_dir=str(tmp_path / "run"))
    summary = train(config_for(fields["algo"])(**{**base, **fields}))
    rows = step_rows(tmp_path / "run")
    assert len(rows) == 3 and rows[0]["kl"] == pytest.approx(0, abs=1e-5) and rows[-1]["kl"] != 0  # it moved off the reference
    assert rows[-1]["grad_norm"] > 0
    assert summary["kl_final"] is not None and 0 <= summary["reward_after"] <= 1
    assert isinstance(load_model(str(tmp_path / "run" / "model")), LlamaForCausalLM)


def test_sample_py_compares_a_llama_with_a_gpt2(nano, nano_dir, nano_llama_dir, monkeypatch, capsys):
    prompts = str(nano[0] / "data" / "prompts_eval.jsonl")
    code, out, err = run_script("sample.py", ["--compare", nano_dir, nano_llama_dir, "--prompts", prompts, "--n", "2",
                                              "--max-new-tokens", "8", "--reward", "length"], monkeypatch, capsys)
    assert code == 0, err
    assert f"mean reward (length) of {nano_llama_dir}" in out and out.count(f"{nano_llama_dir}: [") == 2


def test_gpt2_names_its_causal_lm_loss_so_transformers_does_not_warn(nano_dir):
    """transformers picks the loss by class name, finds none in GPT2LMHeadModel's and warns on the first loss
    ("`loss_type=None` was set in the config but it is unrecognized"), which `make demo` printed while pretraining."""
    warnings = []
    catcher = logging.Handler()
    catcher.emit = lambda record: warnings.append(record.getMessage())
    logging.Logger.warning_once.cache_clear()  # transformers prints that warning once per process
    logging.getLogger("transformers").addHandler(catcher)
    try:
        for model in (build_model("nano", load_tokenizer(nano_dir)), load_model(nano_dir)):
            tokens = torch.tensor([[1, 2, 3, 4]])
            assert torch.isfinite(model(input_ids=tokens, attention_mask=torch.ones_like(tokens), labels=tokens).loss)
    finally:
        logging.getLogger("transformers").removeHandler(catcher)
    assert not [w for w in warnings if "loss_type" in w]
