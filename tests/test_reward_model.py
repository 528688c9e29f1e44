"""The trained reward model: its loss by hand, learning on a small set, save/load, rm:DIR."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

import rlhf_toy.rewards.reward_model as rm
from classic_rl.core import bradley_terry_loss
from classic_rl.infra.errors import ConfigError, NonFiniteError
from rlhf_toy.data import load_rows, noisy_pairs
from rlhf_toy.rewards.functions import resolve_reward
from rlhf_toy.rewards.learned_reward import RewardModelScorer
from rlhf_toy.rewards.reward_model import RewardModelConfig, spearman, train_reward_model
from tests.conftest import comparable_metrics


def test_bradley_terry_loss_by_hand():
    # -log sigmoid(1 - 0) = log(1 + e^-1);  -log sigmoid(0) = log 2
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2)


def test_spearman_by_hand():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0])) == pytest.approx(0.5)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_label_noise_flips_about_the_asked_share(nano):
    rows = load_rows(nano[0] / "data" / "preferences_train.jsonl", ["prompt", "chosen", "rejected"])
    _, chosen, _, flipped = noisy_pairs(rows, 0.25, seed=0)
    assert 0.15 * len(rows) < flipped < 0.35 * len(rows)
    assert sum(c != r for c, r in zip(chosen, rows["chosen"], strict=True)) == flipped
    assert noisy_pairs(rows, 0.0, seed=0)[3] == 0


def test_preference_pairs_are_ranked_by_the_rule_judge(nano):
    rows = load_rows(nano[0] / "data" / "preferences_train.jsonl", ["prompt", "chosen", "rejected"])
    judge = resolve_reward()
    for row in list(rows)[:20]:
        chosen, rejected = judge([row["prompt"]] * 2, [row["chosen"], row["rejected"]])
        assert chosen > rejected and chosen == pytest.approx(row["score_chosen"], abs=1e-6)


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def small_rm(request, nano, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("rm") / "run"
    cfg = RewardModelConfig(model=str(nano[0] / "run" / "model"), data_dir=str(nano[0] / "data"), steps=60, batch_size=16,
                            learning_rate=1e-3, eval_every=30, spearman_samples=32, precision=request.param, run_dir=str(run_dir))
    return run_dir, train_reward_model(cfg)


def test_reward_model_loss_falls_and_accuracy_rises(small_rm, request):
    """In fp32 and in bf16 autocast (the saved model loads with its own attention either way)."""
    run_dir, summary = small_rm
    assert summary["precision"] == request.node.callspec.params["small_rm"]
    assert "_attn_implementation" not in json.loads((run_dir / "model" / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    early = np.mean([r["train/loss"] for r in rows[:5]])
    late = np.mean([r["train/loss"] for r in rows[-5:]])
    assert late < early - 0.1, (early, late)
    assert summary["eval_accuracy"] > 0.75
    assert {"eval_accuracy", "spearman", "wall_s"} <= set(summary) and (run_dir / "rm_vs_rule.png").is_file()


def test_saved_reward_model_reloads_with_the_same_scores(small_rm, nano):
    run_dir, _ = small_rm
    scorer = RewardModelScorer(str(run_dir / "model"))
    prompts, completions = ["Describe a fox."] * 2, ["<answer> The fox ran to Ashford. </answer>", "fox"]
    again = resolve_reward(f"rm:{run_dir / 'model'}")
    assert scorer(prompts, completions) == pytest.approx(again(prompts, completions), abs=1e-6)


def test_a_completions_score_does_not_depend_on_the_padding_of_its_batch(small_rm):
    """Left padding shifts a short text's tokens right; its positions still count from its first token."""
    scorer = RewardModelScorer(str(small_rm[0] / "model"))
    short, long = "<answer> Fox. </answer>", "<answer> The fox ran to Ashford by the lake and slept there all night. </answer>"
    alone = scorer(["Describe a fox."], [short])
    beside_a_longer_one = scorer(["Describe a fox."] * 2, [short, long])
    assert beside_a_longer_one[0] == pytest.approx(alone[0], abs=1e-5)


def test_missing_reward_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="reward model folder .* not found"):
        resolve_reward(f"rm:{tmp_path / 'nope'}")


def rm_fields(nano, run_dir, **overrides) -> dict:
    return dict(model=str(nano[0] / "run" / "model"), data_dir=str(nano[0] / "data"), steps=12, batch_size=8,
                learning_rate=1e-3, eval_every=4, spearman_samples=8, run_dir=str(run_dir), **overrides)


def test_reward_model_resumed_from_a_checkpoint_ends_like_an_uninterrupted_run(nano, tmp_path):
    fields = rm_fields(nano, tmp_path / "run", save_every=4, keep_checkpoints=5)
    straight = train_reward_model(RewardModelConfig(**fields))
    reference = comparable_metrics(tmp_path / "run")
    for later in ("step-8", "step-12"):  # as if the run had died just after step 4's checkpoint
        shutil.rmtree(tmp_path / "run" / "checkpoints" / later)
    resumed = train_reward_model(RewardModelConfig(**fields, resume=True))
    assert comparable_metrics(tmp_path / "run") == reference
    assert resumed["eval_accuracy"] == straight["eval_accuracy"] and resumed["spearman"] == pytest.approx(straight["spearman"])


def test_non_finite_reward_model_loss_stops_and_keeps_the_last_good_weights(nano, tmp_path, monkeypatch):
    calls = {"n": 0}

    def nan_on_third_step(chosen, rejected, target):
        calls["n"] += 1
        return bradley_terry_loss(chosen, rejected, target) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(rm, "bradley_terry_loss", nan_on_third_step)
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite train loss.*saved the last good weights to .*step-2"):
        train_reward_model(RewardModelConfig(**rm_fields(nano, tmp_path / "run")))
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "model" / "model.safetensors").is_file()
