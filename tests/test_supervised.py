"""The supervised loop behaves alike under each trainer: a budget of wall time stops pretraining and the reward model
(as it stops DPO, test_dpo.py) after the step that spends it, evaluated there, with the steps taken reported."""

import json

from rlhf_toy.lm.pretrain import PretrainConfig, pretrain
from rlhf_toy.rewards.reward_model import RewardModelConfig, train_reward_model


def test_pretraining_stops_when_its_budget_of_wall_time_is_spent(nano, tmp_path):
    summary = pretrain(PretrainConfig(preset="nano", data_dir=str(nano[0] / "data"), vocab_size=600, batch_size=4, max_steps=80,
                                      max_train_s=1e-9, run_dir=str(tmp_path / "run")))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 1 and summary["train_tokens"] == 4 * 128 and [row["step"] for row in rows] == [1]
    assert "eval/loss" in rows[0] and rows[0]["train/tokens_per_s"] > 0


def test_the_reward_model_stops_when_its_budget_of_wall_time_is_spent(nano, tmp_path):
    summary = train_reward_model(RewardModelConfig(model=str(nano[0] / "run" / "model"), data_dir=str(nano[0] / "data"), steps=250,
                                                   max_train_s=1e-9, spearman_samples=8, run_dir=str(tmp_path / "run")))
    assert summary["steps"] == 1 and summary["eval_accuracy"] is not None and summary["train_s"] > 0
