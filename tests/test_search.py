"""Random search and hill climbing: the linear-policy baselines solve CartPole and save like any policy."""

import pytest

from classic_rl.algos.search import SearchConfig, train_hill_climbing, train_random_search
from classic_rl.envs import play_episodes
from classic_rl.infra.errors import ConfigError
from classic_rl.nets import load_agent
from classic_rl.training import run_training


@pytest.mark.parametrize("train_fn", [train_random_search, train_hill_climbing])
def test_search_solves_cartpole(train_fn, tmp_path):
    cfg = SearchConfig(env="CartPole-v1", seed=1, total_timesteps=200_000, target_return=475, run_dir=str(tmp_path / "run"))
    summary = run_training("search", train_fn, cfg)
    assert summary["eval_return_mean"] >= 475 and summary["solved_at_steps"] <= 200_000
    policy = load_agent(tmp_path / "run" / "policy.safetensors")  # the saved policy is the one that solved it
    assert policy.kind == "linear" and play_episodes(policy.act, "CartPole-v1", episodes=5, seed=1234).mean() >= 475


def test_noise_bounds_must_be_ordered():
    with pytest.raises(ConfigError, match="--min-noise-std <= --noise-std <= --max-noise-std"):
        SearchConfig(noise_std=5.0, max_noise_std=2.0)
