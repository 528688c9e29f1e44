"""Adding an online algorithm is one file and one registry line: a toy REINFORCE with a baseline, registered here
and nowhere else, trains for a step through the loop and through train_rlhf.py, its own field a flag."""

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from classic_rl.infra.cli import config_field
from rlhf_toy.algorithms import ALGORITHMS, config_for
from rlhf_toy.algorithms.base import OnlineAlgorithm, RLHFConfig
from rlhf_toy.generation.rollout import completion_logprobs
from rlhf_toy.lm.models import load_model
from rlhf_toy.online import train
from tests.conftest import largest_difference, run_script, step_rows


@dataclass
class ToyConfig(RLHFConfig):
    """What a new algorithm's file holds first: its config, RLHFConfig plus its own fields."""
    ALGO: ClassVar[str] = "toy_reinforce"
    baseline: bool = config_field(True, "Subtract the batch's mean reward")

    @property
    def uses_reference(self) -> bool:
        return False

    @property
    def passes(self) -> int:
        return 1


class ToyReinforce(OnlineAlgorithm):
    """Then its update: REINFORCE on the completions' tokens, one gradient step a rollout."""
    name, Config = "toy_reinforce", ToyConfig

    def update(self, policy, ref_model, optimizer, accelerator, rollout, rewards, rewards_per_func):
        logp, _ = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
        advantages = rewards - rewards.mean() if self.cfg.baseline else rewards
        loss = -(advantages[:, None] * logp).sum() / rollout.completion_mask.sum()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item()}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "toy_reinforce", ToyReinforce)  # the registry line


def small_fields(nano, tmp_path) -> dict:
    root = nano[0]
    return dict(model=str(root / "run" / "model"), prompts=str(root / "data" / "prompts_train.jsonl"),
                eval_prompts=str(root / "data" / "prompts_eval.jsonl"), steps=1, prompts_per_step=2, num_generations=2,
                max_completion_length=8, eval_samples_per_prompt=1, log_completions_every=0, run_dir=str(tmp_path / "run"))


def test_a_registered_algorithm_trains_through_the_loop(registered, nano, nano_dir, tmp_path):
    assert config_for("toy_reinforce") is ToyConfig
    summary = train(ToyConfig(**small_fields(nano, tmp_path)))
    (row,) = step_rows(tmp_path / "run")
    assert summary["algo"] == "toy_reinforce" and row["loss"] != 0 and summary["kl_final"] is None
    assert largest_difference(load_model(str(tmp_path / "run" / "model")), load_model(nano_dir)) > 0  # it took its step


def test_a_registered_algorithm_is_an_algo_of_the_script_with_its_fields_as_flags(registered, nano, tmp_path, monkeypatch, capsys):
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in small_fields(nano, tmp_path).items()]
    code, out, err = run_script("train_rlhf.py", ["--algo", "toy_reinforce", "--baseline", "false", *flags], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["baseline"] is False
    code, _, err = run_script("train_rlhf.py", ["--algo", "toy_reinforce", "--beta", "0.1", *flags], monkeypatch, capsys)
    assert code == 2 and "--beta is a setting of --algo grpo, not of --algo toy_reinforce" in err
