"""The comparison scripts behind bench/'s figures, end to end at toy budgets (`make test-slow`): every run is its own
process, so nano models stand in for the default base models in a model cache of the test's own ($RLHF_TOY_HOME)."""

import json
import shutil

import pytest

from rlhf_toy.lm.base_model import ARITHMETIC_MODEL_VERSION, BASE_MODEL_VERSION
from rlhf_toy.tasks import TASKS
from tests.conftest import run_script

pytestmark = pytest.mark.slow


@pytest.fixture
def nano_cache(nano_dir, nano_arithmetic_dir, tmp_path, monkeypatch):
    """A model cache whose default and arithmetic base models are the nano ones."""
    home = tmp_path / "home"
    shutil.copytree(nano_dir, home / f"base-tiny-{BASE_MODEL_VERSION}" / "model")
    shutil.copytree(nano_arithmetic_dir, home / f"base-tiny-arithmetic-{ARITHMETIC_MODEL_VERSION}" / "model")
    monkeypatch.setenv("RLHF_TOY_HOME", str(home))
    return home


def run_comparison(script: str, args: list[str], tmp_path, monkeypatch, capsys) -> dict:
    """script's JSON after a run into tmp_path; its Markdown must be there too."""
    code, _, err = run_script(script, [*args, "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "out.md").stat().st_size > 0
    return json.loads((tmp_path / "out.json").read_text())


def test_compare_preferences_trains_each_method_on_each_label_set(nano_cache, tmp_path, monkeypatch, capsys):
    result = run_comparison("compare_preferences.py", ["--seeds", "1", "--methods", "rm+grpo", "dpo", "--labels", "shipped", "simulated",
                                                       "--budget-s", "3", "--rm-steps", "2", "--simulated-n", "10"], tmp_path, monkeypatch, capsys)
    assert {(row["labels"], row["method"]) for row in result["rows"]} == {(labels, method) for labels in ("shipped", "simulated")
                                                                          for method in ("rm+grpo", "dpo")}
    assert all(0.0 <= row["gold"] <= 1.0 and row["steps"] >= 1 for row in result["rows"])
    assert (tmp_path / "out.png").is_file()


def test_compare_algorithms_trains_each_method_on_each_task_and_measures_its_kl(nano_cache, tmp_path, monkeypatch, capsys):
    result = run_comparison("compare_algorithms.py", ["--methods", "gspo", "rloo", "reinforce++", "--seeds", "1", "--budget-s", "2"],
                            tmp_path, monkeypatch, capsys)
    assert {(row["task"], row["method"]) for row in result["rows"]} == {(task, method) for task in ("default", "arithmetic")
                                                                       for method in ("gspo", "rloo", "reinforce++")}
    for row in result["rows"]:
        assert row["steps"] >= 1 and row["train_s"] >= 2 and row["kl"] > 0 and 0 <= row["after"] <= 1, row
        assert row["curve"] and row["curve"][-1][0] <= row["train_s"] + 1e-6
    assert (tmp_path / "out.png").is_file()
    # two gradient steps a rollout (the default --num-minibatches) at half the arithmetic recipe's rate each
    arithmetic = json.loads((tmp_path / "runs" / "arithmetic" / "rloo-seed1" / "config.json").read_text())
    assert arithmetic["num_minibatches"] == 2 and arithmetic["learning_rate"] == TASKS["arithmetic"]["learning_rate"] / 2


def test_compare_ppo_recipes_runs_its_four_variants(nano_cache, tmp_path, monkeypatch, capsys):
    result = run_comparison("compare_ppo_recipes.py", ["--seeds", "1", "--steps", "2"], tmp_path, monkeypatch, capsys)
    assert len({row["variant"] for row in result["rows"]}) == 4
