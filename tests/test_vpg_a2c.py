"""VPG and A2C: per-episode advantages by hand, learning CartPole, shared and separate networks; every on-policy
algorithm in a continuous env."""

import json

import numpy as np
import pytest
import torch

from classic_rl import envs
from classic_rl.algos import a2c, vpg
from classic_rl.nets import ActorCritic, load_agent
from classic_rl.training import policy_returns, run_training
from tests.conftest import run_script


class ConstantValue(ActorCritic):
    def __init__(self, value: float):
        super().__init__(1, 2, [4])
        self.value = value

    def get_value(self, obs):
        return torch.full(obs.shape[:1], self.value)


def test_episode_advantages_bootstrap_only_truncated_episodes():
    # V = 1 everywhere, rewards [1, 1], gamma 0.5, lambda 1: terminated R = [1.5, 1], truncated adds 0.5^2 * V(final) = 0.25
    episode = envs.Episode(np.zeros((2, 1)), np.zeros(2, dtype=np.int64), np.array([1.0, 1.0]), True, np.zeros(1))
    adv, ret = vpg.episode_advantages(ConstantValue(1.0), episode, gamma=0.5, gae_lambda=1.0)
    torch.testing.assert_close(ret, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.0]))
    _, ret = vpg.episode_advantages(ConstantValue(1.0), episode._replace(terminated=False), gamma=0.5, gae_lambda=1.0)
    torch.testing.assert_close(ret, torch.tensor([1.75, 1.5]))


def test_vpg_solves_cartpole(tmp_path):
    cfg = vpg.VPGConfig(env="CartPole-v1", seed=1, total_timesteps=100_000, target_return=475, run_dir=str(tmp_path / "run"))
    assert run_training("vpg", vpg.train, cfg)["eval_return_mean"] >= 475


@pytest.mark.parametrize("shared", [False, True])
def test_a2c_learns_cartpole(shared, tmp_path):
    cfg = a2c.A2CConfig(env="CartPole-v1", seed=1, shared=shared, total_timesteps=150_000, target_return=195,
                        eval_every=5_000, run_dir=str(tmp_path / "run"))
    summary = run_training("a2c", a2c.train, cfg)
    assert summary["eval_return_mean"] >= 195
    agent = load_agent(tmp_path / "run" / "policy.safetensors")
    assert isinstance(agent.trunk, torch.nn.Identity) != shared


def test_shared_network_has_one_trunk_and_two_heads():
    agent = ActorCritic(4, 2, [64, 64], shared=True)
    assert agent.actor.in_features == agent.critic.in_features == 64
    action, logprob, entropy, value = agent.get_action_and_value(torch.zeros(3, 4))
    assert action.shape == logprob.shape == entropy.shape == value.shape == (3,)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "vpg", "trpo", "a3c"])
def test_on_policy_algorithms_act_in_a_continuous_env_through_the_same_code(algo, tmp_path, monkeypatch, capsys):
    """Pendulum's one torque in [-2, 2]: each trains, saves a Gaussian policy, and its reload acts within bounds."""
    args = ["--algo", algo, "--env", "Pendulum-v1", "--total-timesteps", "2000", "--eval-every", "1000", "--eval-episodes", "2",
            "--run-dir", str(tmp_path / "run")]
    code, _, err = run_script("train_classic.py", args, monkeypatch, capsys)
    assert code == 0, err
    agent = load_agent(tmp_path / "run" / "policy.safetensors")
    assert agent.init_kwargs["action_dim"] == 1 and agent.distribution.log_std.shape == (1,)
    assert np.isfinite(json.loads((tmp_path / "run" / "summary.json").read_text())["eval_return_mean"])
    action = agent.act(np.zeros((3, 3), dtype=np.float32), deterministic=False)
    assert action.shape == (3, 1) and action.dtype == np.float32


def test_sampled_evaluation_draws_from_the_policy_with_its_own_rng_stream():
    policy = ActorCritic(obs_dim=4, n_actions=2, hidden_sizes=[8])
    with torch.no_grad():
        for p in policy.actor.parameters():
            p.zero_()  # uniform over both actions: greedy always pushes left, sampling wobbles longer
    torch.manual_seed(0)
    before = torch.get_rng_state()
    sampled = policy_returns(policy, "CartPole-v1", 50, seed=3, mode="sample")
    assert torch.equal(torch.get_rng_state(), before)  # training's RNG did not move
    greedy = policy_returns(policy, "CartPole-v1", 50, seed=3, mode="greedy")
    assert greedy.max() <= 11 and sampled.mean() > 15  # always-left falls in ~9 steps; random play lasts ~22
    np.testing.assert_array_equal(sampled, policy_returns(policy, "CartPole-v1", 50, seed=3, mode="sample"))


def test_summary_records_the_eval_mode(tmp_path):
    cfg = vpg.VPGConfig(env="CartPole-v1", total_timesteps=500, eval_every=0, eval_mode="sample", run_dir=str(tmp_path / "r"))
    assert run_training("vpg", vpg.train, cfg)["eval_mode"] == "sample"
