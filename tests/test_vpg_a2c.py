"""VPG and A2C: per-episode advantages by hand, learning CartPole, shared and separate networks."""

import numpy as np
import pytest
import torch

from classic_rl import envs
from classic_rl.algos import a2c, vpg
from classic_rl.infra.errors import ConfigError
from classic_rl.nets import ActorCritic, load_agent
from classic_rl.training import run_training


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


@pytest.mark.parametrize("config_cls", [vpg.VPGConfig, a2c.A2CConfig])
def test_policy_gradients_reject_continuous_actions(config_cls):
    with pytest.raises(ConfigError, match="needs a discrete action space but Pendulum-v1"):
        config_cls(env="Pendulum-v1")
