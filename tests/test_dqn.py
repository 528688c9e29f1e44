"""DQN: TD targets and the dueling head by hand, the replay buffer, learning, and bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from classic_rl.algos.dqn import DQNConfig, td_targets, train
from classic_rl.buffers import NStepTransitions, PrioritizedReplayBuffer, ReplayBuffer
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
    returns, discounts, next_obs = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0]), torch.zeros(2, 1)
    target_net = FixedQ([[1.0, 3.0], [2.0, 0.0]])
    online_net = FixedQ([[5.0, 0.0], [0.0, 5.0]])
    # plain: max of the target net: y = [1 + .5 * 3, 2 + 0 (terminated)]
    torch.testing.assert_close(td_targets(target_net, online_net, returns, next_obs, discounts, double=False),
                               torch.tensor([2.5, 2.0]))
    # double: the online net picks action 0 for row 0, whose target value is 1: y = [1 + .5 * 1, 2]
    torch.testing.assert_close(td_targets(target_net, online_net, returns, next_obs, discounts, double=True),
                               torch.tensor([1.5, 2.0]))


def test_dueling_head_makes_the_mean_q_equal_the_state_value():
    net = QNetwork(3, 4, [8, 8], dueling=True)
    obs = torch.randn(5, 3)
    out = net.head(net.trunk(obs))  # [V, A_1..A_4]
    torch.testing.assert_close(net(obs).mean(1), out[:, 0])


def test_replay_buffer_wraps_around_and_samples_what_was_stored():
    buffer = ReplayBuffer(capacity=3, obs_dim=1, seed=0)
    for i in range(5):
        buffer.add(np.array([[i]]), np.array([[i + 1]]), np.array([i % 2]), np.array([float(i)]), np.array([0.9]))
    assert buffer.size == 3 and sorted(buffer.returns.tolist()) == [2.0, 3.0, 4.0]  # the oldest two were overwritten
    slots, (obs, actions, returns, next_obs, discounts), weights = buffer.sample(16)
    torch.testing.assert_close(next_obs, obs + 1)
    torch.testing.assert_close(returns, obs.squeeze(1))
    assert weights is None and torch.all(discounts == torch.tensor(0.9))
    assert torch.equal(torch.from_numpy(buffer.obs[slots]), obs)


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


def step_n_env(collector, t, reward, terminated=False, truncated=False):
    """One step of a 1-env episode whose observations count the steps: obs t -> t + 1."""
    return collector.push(np.array([[t]], dtype=np.float32), np.array([t % 2]), np.array([reward]),
                          np.array([[t + 1]], dtype=np.float32), np.array([terminated]), np.array([terminated or truncated]))


def test_n_step_transitions_sum_n_rewards_and_flush_an_ending_episode():
    collector = NStepTransitions(num_envs=1, n_step=3, gamma=0.5)
    assert len(step_n_env(collector, 0, 1.0)[0]) == 0 and len(step_n_env(collector, 1, 2.0)[0]) == 0
    obs, next_obs, actions, returns, discounts = step_n_env(collector, 2, 4.0)
    assert (obs.tolist(), next_obs.tolist(), actions.tolist()) == ([[0.0]], [[3.0]], [0])
    assert returns.tolist() == [1 + 0.5 * 2 + 0.25 * 4] and discounts.tolist() == [0.125]
    obs, next_obs, _, returns, discounts = step_n_env(collector, 3, 8.0, terminated=True)  # the episode ends
    assert obs[:, 0].tolist() == [1, 2, 3] and next_obs[:, 0].tolist() == [4, 4, 4]
    assert returns.tolist() == [2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8, 8] and discounts.tolist() == [0, 0, 0]
    step_n_env(collector, 10, 1.0)
    _, _, _, returns, discounts = step_n_env(collector, 11, 1.0, truncated=True)  # a time-limit cut still bootstraps
    assert returns.tolist() == [1.5, 1.0] and discounts.tolist() == [0.25, 0.5]


def test_one_step_transitions_are_the_plain_ones_and_survive_a_checkpoint():
    collector = NStepTransitions(num_envs=2, n_step=1, gamma=0.99)
    obs, next_obs, actions, returns, discounts = collector.push(
        np.zeros((2, 3), dtype=np.float32), np.array([0, 1]), np.array([1.0, 0.5]), np.ones((2, 3), dtype=np.float32),
        np.array([False, True]), np.array([False, True]))
    assert returns.tolist() == [1.0, 0.5] and discounts.tolist() == [0.99, 0.0] and actions.tolist() == [0, 1]
    longer = NStepTransitions(num_envs=1, n_step=4, gamma=0.9)
    step_n_env(longer, 0, 1.0)
    step_n_env(longer, 1, 2.0)
    restored = NStepTransitions(num_envs=1, n_step=4, gamma=0.9)
    restored.load_state_dict(longer.state_dict())
    for collector in (longer, restored):
        step_n_env(collector, 2, 3.0)
    assert [a.tolist() for a in step_n_env(longer, 3, 4.0)] == [a.tolist() for a in step_n_env(restored, 3, 4.0)]


def prioritized_with(priorities, alpha=1.0):
    buffer = PrioritizedReplayBuffer(capacity=len(priorities) + 1, obs_dim=1, seed=0, alpha=alpha, eps=0.0)
    n = len(priorities)
    buffer.add(np.arange(n, dtype=np.float32)[:, None], np.zeros((n, 1)), np.zeros(n, dtype=int), np.zeros(n), np.ones(n))
    buffer.update_priorities(np.arange(n), np.array(priorities, dtype=float))
    return buffer


def test_prioritized_replay_samples_in_proportion_to_priority_and_weights_by_hand():
    buffer = prioritized_with([1.0, 2.0, 3.0, 4.0], alpha=1.0)
    assert buffer.tree[1] == pytest.approx(10.0)  # the root holds the sum
    counts = np.zeros(4)
    for _ in range(500):
        slots, _, _ = buffer.sample(20)
        np.add.at(counts, slots, 1)
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.01)
    slots, (obs, *_), weights = buffer.sample(4, beta=0.5)
    probabilities = np.array([0.1, 0.2, 0.3, 0.4])[slots]
    expected = (4 * probabilities) ** -0.5
    torch.testing.assert_close(weights, torch.tensor(expected / expected.max(), dtype=torch.float32))
    assert obs[:, 0].tolist() == slots.tolist()


def test_priorities_use_alpha_and_new_transitions_get_the_largest_seen():
    buffer = prioritized_with([1.0, 9.0], alpha=0.5)
    assert buffer.tree[buffer.leaves: buffer.leaves + 2].tolist() == [1.0, 3.0]
    buffer.add(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1, dtype=int), np.zeros(1), np.ones(1))
    assert buffer.tree[buffer.leaves + 2] == pytest.approx(3.0) and buffer.tree[1] == pytest.approx(7.0)


@pytest.mark.parametrize("options", [{"n_step": 3, "total_timesteps": 40_000}, {"prioritized": True}],
                         ids=["n-step", "prioritized"])
def test_dqn_with_the_tips_learns_cartpole(options, tmp_path):
    summary = run_training("dqn", train, DQNConfig(**{**FAST, **options}, run_dir=str(tmp_path / "run")))
    assert summary["eval_return_mean"] >= 200

