"""scripts/compare_critics.py: the true values its critic error is measured against, and one small run end to end."""

import json
import runpy

import numpy as np
import pytest

from classic_rl import envs
from tests.conftest import ROOT, run_script

critics = runpy.run_path(str(ROOT / "scripts" / "compare_critics.py"))


def episode(rewards, terminated):
    n = len(rewards)
    return envs.Episode(np.arange(n, dtype=np.float32)[:, None], np.zeros(n, dtype=int), np.array(rewards, dtype=float),
                        terminated, np.zeros(1))


def test_true_values_are_discounted_returns_and_a_time_limit_cut_drops_the_states_it_biases():
    obs, values = critics["true_values"](episode([1.0, 2.0, 4.0], terminated=True), gamma=0.5)
    np.testing.assert_allclose(values, [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4])
    assert obs[:, 0].tolist() == [0, 1, 2]
    # gamma 0.5: 0.5^7 < 0.01 <= 0.5^6, so the last 7 states of a cut episode are dropped
    obs, values = critics["true_values"](episode([1.0] * 10, terminated=False), gamma=0.5)
    assert obs[:, 0].tolist() == [0, 1, 2] and values[0] == pytest.approx(sum(0.5**k for k in range(10)))


def test_a_small_comparison_writes_the_plot_and_a_row_per_checkpoint(tmp_path, monkeypatch, capsys):
    args = ["--lambdas", "1", "0", "--seeds", "1", "--total-timesteps", "2000", "--every", "1000", "--episodes", "2",
            "--run-dir", str(tmp_path / "c")]
    code, out, err = run_script("compare_critics.py", args, monkeypatch, capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "c" / "critics.json").read_text())["rows"]
    assert sorted({(r["lambda"], r["bucket"]) for r in rows}) == [(0.0, 1000), (0.0, 2000), (1.0, 1000), (1.0, 2000)]
    assert all(r["critic_rmse"] >= 0 and r["critic_relative_rmse"] >= 0 for r in rows)
    assert (tmp_path / "c" / "critics.png").stat().st_size > 10_000 and "lambda" in out
