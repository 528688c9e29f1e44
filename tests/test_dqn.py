"""DQN: TD targets and the dueling head by hand, the replay buffer, learning, and bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from classic_rl.algos.dqn import DQNConfig, ReplayBuffer, td_targets, train
from classic_rl.infra.errors import ConfigError
from classic_rl.nets import QNetwork
from classic_rl.training import run_training


class FixedQ(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, obs):
        return self.values


def test_td_targets_by_hand_plain_and_double():
    rewards, terminated, next_obs = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.zeros(2, 1)
    target_net = FixedQ([[1.0, 3.0], [2.0, 0.0]])
    online_net = FixedQ([[5.0, 0.0], [0.0, 5.0]])
    # plain: max of the target net: y = [1 + .5 * 3, 2 + 0 (terminated)]
    torch.testing.assert_close(td_targets(target_net, online_net, rewards, next_obs, terminated, 0.5, double=False),
                               torch.tensor([2.5, 2.0]))
    # double: the online net picks action 0 for row 0, whose target value is 1: y = [1 + .5 * 1, 2]
    torch.testing.assert_close(td_targets(target_net, online_net, rewards, next_obs, terminated, 0.5, double=True),
                               torch.tensor([1.5, 2.0]))


def test_dueling_head_makes_the_mean_q_equal_the_state_value():
    net = QNetwork(3, 4, [8, 8], dueling=True)
    obs = torch.randn(5, 3)
    out = net.head(net.trunk(obs))  # [V, A_1..A_4]
    torch.testing.assert_close(net(obs).mean(1), out[:, 0])


def test_replay_buffer_wraps_around_and_samples_what_was_stored():
    buffer = ReplayBuffer(capacity=3, obs_dim=1, seed=0)
    for i in range(5):
        buffer.add(np.array([[i]]), np.array([[i + 1]]), np.array([i % 2]), np.array([float(i)]), np.array([False]))
    assert buffer.size == 3 and sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0]  # the oldest two were overwritten
    obs, actions, rewards, next_obs, terminated = buffer.sample(16)
    torch.testing.assert_close(next_obs, obs + 1)
    torch.testing.assert_close(rewards, obs.squeeze(1))


FAST = dict(env="CartPole-v1", total_timesteps=20_000, eval_every=2_000, target_return=200, hidden_sizes=[64, 64],
            train_frequency=64, gradient_steps=32, learning_starts=500, seed=1)


@pytest.mark.parametrize("options", [{}, {"double_dqn": True, "dueling": True, "tau": 0.5}], ids=["dqn", "double-dueling-polyak"])
def test_dqn_learns_cartpole(options, tmp_path):
    summary = run_training("dqn", train, DQNConfig(**FAST, **options, run_dir=str(tmp_path / "run")))
    assert summary["eval_return_mean"] >= 200  # a random policy scores about 20
    assert summary["env_steps"] < FAST["total_timesteps"]


def test_dqn_rejects_continuous_actions():
    with pytest.raises(ConfigError, match="dqn needs a discrete action space but Pendulum-v1"):
        DQNConfig(env="Pendulum-v1")
