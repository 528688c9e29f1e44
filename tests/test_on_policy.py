"""On-policy, exactly, on the models users bring: with policy = old policy = reference, the first update of GRPO,
PPO, RLOO and REINFORCE++ sees a ratio of exactly 1 and a KL of exactly 0, on a GPT-2 with dropout 0.1 and in bf16; several passes start
exactly on-policy too; a model's generation_config does not change what the sampler draws; and the settings that
would split a step unevenly across processes are refused."""

import json

import pytest
import torch
from transformers import GenerationConfig

from classic_rl import core
from classic_rl.infra.errors import ConfigError
from rlhf_toy.algorithms import config_for
from rlhf_toy.algorithms.grpo import GRPOConfig, importance_weights
from rlhf_toy.algorithms.ppo import PPOConfig
from rlhf_toy.data import Labels
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.online import train
from rlhf_toy.rewards.reward_model import held_out_accuracy
from tests.conftest import run_script, step_rows


def one_step_config(nano, run_dir, algo, model, **overrides):
    root = nano[0]
    fields = dict(model=model, prompts=str(root / "data" / "prompts_train.jsonl"), eval_prompts=str(root / "data" / "prompts_eval.jsonl"),
                  steps=1, prompts_per_step=4, num_generations=4, max_completion_length=12, eval_samples_per_prompt=1,
                  log_completions_every=0, run_dir=str(run_dir))
    if algo == "ppo":
        fields["num_ppo_epochs"] = 1
    return config_for(algo)(**{**fields, **overrides})


@pytest.mark.parametrize("algo", ["grpo", "ppo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("model, precision", [("dropout", "fp32"), ("dropout", "bf16"), ("nano", "bf16")])
def test_the_first_update_is_exactly_on_policy(algo, model, precision, nano, nano_dir, dropout_gpt2_dir, tmp_path):
    """One gradient step on a rollout of the reference itself: ratio 1 and KL 0 to the bit. The sampler (fp32, eval
    mode) differs from the update (bf16 here) in the last bits, which the mismatch metric shows and the loss ignores."""
    folder = dropout_gpt2_dir if model == "dropout" else nano_dir
    train(one_step_config(nano, tmp_path / "run", algo, folder, precision=precision))
    (row,) = step_rows(tmp_path / "run")
    assert row["approx_kl"] == row["clip_ratio"] == row["kl"] == 0.0 and row["ratio_mean"] == 1.0, row
    mismatch = row["sampling/sampling_logp_difference/max"]
    assert mismatch < (1e-4 if precision == "fp32" else 0.2) and (precision == "fp32" or mismatch > 0)


def test_dropout_is_kept_on_request_and_then_the_update_is_off_policy(nano, dropout_gpt2_dir, tmp_path):
    """With one gradient step the ratio is still 1 (the old log-probs are the same forward's, dropout mask and all), but
    that forward is no longer the distribution the tokens were drawn from, nor the reference's."""
    train(one_step_config(nano, tmp_path / "run", "grpo", dropout_gpt2_dir, precision="fp32", disable_dropout=False))
    (row,) = step_rows(tmp_path / "run")
    assert row["kl"] > 1e-4 and row["sampling/sampling_logp_difference/max"] > 1e-2 and row["approx_kl"] == 0.0


@pytest.mark.parametrize("algo, passes", [("grpo", dict(num_iterations=2)), ("ppo", dict(num_ppo_epochs=2)),
                                          ("rloo", dict(num_iterations=2)), ("reinforce_pp", dict(max_epochs=2))])
def test_several_passes_start_exactly_on_policy_and_then_move(algo, passes, nano, dropout_gpt2_dir, tmp_path, monkeypatch):
    """With stored old log-probs (two minibatches, two passes), in bf16 on the dropout model: the first minibatch's
    ratio is exactly 1, and the later ones see the steps taken before them."""
    seen = []
    policy_loss = core.policy_loss

    def recording_policy_loss(*args, **kwargs):
        loss, stats = policy_loss(*args, **kwargs)
        seen.append(stats)
        return loss, stats

    monkeypatch.setattr(core, "policy_loss", recording_policy_loss)
    train(one_step_config(nano, tmp_path / "run", algo, dropout_gpt2_dir, precision="bf16", num_minibatches=2, **passes))
    assert len(seen) == 4
    assert seen[0]["approx_kl"] == seen[0]["clipfrac"] == 0.0 and seen[0]["ratio_mean"] == 1.0
    assert all(stats["approx_kl"] > 0 for stats in seen[1:])


def test_importance_weights_truncate_or_mask_per_token_or_per_sequence():
    # trainer - sampler log-prob gaps: row 0 (0.5, 1.5), row 1 (-0.5, padding)
    trainer, sampler = torch.tensor([[0.5, 1.5], [-0.5, 9.0]]), torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    e = torch.exp
    torch.testing.assert_close(importance_weights(trainer, sampler, mask, "token_truncate", None, 3.0),
                               torch.tensor([[e(torch.tensor(0.5)), 3.0], [e(torch.tensor(-0.5)), 1.0]]))
    torch.testing.assert_close(importance_weights(trainer, sampler, mask, "token_mask", 0.7, 3.0),
                               torch.tensor([[e(torch.tensor(0.5)), 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(importance_weights(trainer, sampler, mask, "sequence_truncate", 0.7, 3.0),
                               torch.tensor([[3.0], [0.7]]))  # exp(2) clipped to 3, exp(-0.5) to 0.7
    torch.testing.assert_close(importance_weights(trainer, sampler, mask, "sequence_mask", None, 3.0),
                               torch.tensor([[0.0], [e(torch.tensor(-0.5))]]))


def test_the_importance_sampling_correction_runs_and_reports_its_ratio(nano, nano_dir, tmp_path):
    train(one_step_config(nano, tmp_path / "run", "grpo", nano_dir, precision="bf16", importance_sampling_correction=True,
                          importance_sampling_mode="token_truncate"))
    (row,) = step_rows(tmp_path / "run")
    assert row["sampling/importance_sampling_ratio/mean"] == pytest.approx(1.0, abs=0.05) and row["approx_kl"] == 0.0


@pytest.fixture(scope="module")
def llama_with_generation_settings(nano_llama_dir, tmp_path_factory):
    """The nano Llama (sampled by transformers' generate, not the fast decoder) saved again with a generation_config
    that sets every sampling field an instruct model's might."""
    model, tokenizer = load_model(nano_llama_dir), load_tokenizer(nano_llama_dir)
    model.generation_config = GenerationConfig(do_sample=True, repetition_penalty=5.0, no_repeat_ngram_size=1, top_k=3, top_p=0.5, min_p=0.3,
                                               eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("llama-generation-config")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert json.loads((folder / "generation_config.json").read_text())["repetition_penalty"] == 5.0
    return str(folder)


@pytest.mark.parametrize("temperature", ["0", "1"])
def test_a_models_generation_config_does_not_change_what_is_sampled(temperature, nano_llama_dir, llama_with_generation_settings,
                                                                    monkeypatch, capsys):
    """The same weights with and without the generation config print the same completions for the same seed and flags:
    greedy (the repetition penalty and no-repeat n-grams would change it) and sampled (top-k, top-p and min-p would)."""
    outputs = []
    for folder in (nano_llama_dir, llama_with_generation_settings):
        code, out, err = run_script("sample.py", ["--model", folder, "--n", "4", "--max-new-tokens", "16", "--temperature", temperature,
                                                  "--seed", "3"], monkeypatch, capsys)
        assert code == 0, err
        outputs.append(out.replace(folder, "MODEL"))
    assert outputs[0] == outputs[1]


def test_training_says_which_generation_settings_it_ignores(nano, llama_with_generation_settings, tmp_path, capsys):
    train(one_step_config(nano, tmp_path / "run", "grpo", llama_with_generation_settings, precision="fp32"))
    out = capsys.readouterr().out
    assert "the model's generation_config sets top_k=3, top_p=0.5, min_p=0.3, repetition_penalty=5.0, no_repeat_ngram_size=1: " \
           "ignored; sampling follows --temperature 1.0, --top-k 0, --top-p 1.0" in out


@pytest.mark.parametrize("prompts_per_step, num_generations, num_minibatches", [(2, 2, 4), (2, 3, 2)],
                         ids=["fewer-completions-than-minibatches", "uneven-minibatches"])
def test_minibatches_are_checked_per_process(prompts_per_step, num_generations, num_minibatches):
    """Each process splits its own share: 2 x 2 completions in 2 processes leave 2 per process for 4 minibatches (a crash
    in split), 2 x 3 leave 3 for 2 (three steps of one, and DAPO's normaliser expects two)."""
    cfg = GRPOConfig(prompts_per_step=prompts_per_step, num_generations=num_generations, num_minibatches=num_minibatches)
    with pytest.raises(ConfigError, match=f"in 2 process\\(es\\) with {num_minibatches} minibatch\\(es\\) does not split evenly"):
        cfg.check_minibatches(2)
    with pytest.raises(ConfigError, match="does not split evenly"):
        PPOConfig(prompts_per_step=1, num_generations=3, num_minibatches=2)


def test_held_out_accuracy_leaves_the_model_in_the_mode_it_found(nano_dir):
    from transformers import AutoModelForSequenceClassification
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(nano_dir, num_labels=1), load_tokenizer(nano_dir)
    labels = Labels("pairwise", ["Describe a fox."] * 2, ["A fox.", "Red."], ["No.", "A cat."], torch.tensor([1.0, 1.0]))
    for training in (True, False):
        model.train(training)
        held_out_accuracy(model, tokenizer, labels)
        assert model.training == training
