"""SAC, TD3 and DDPG: the tanh-Gaussian worked by hand, their targets on a 2-transition batch by hand, the replay
buffer with real-valued actions, saved actors acting the same, learning on Pendulum, and bad input."""

import math

import numpy as np
import pytest
import torch

from classic_rl.algos import sac, td3
from classic_rl.buffers import ReplayBuffer
from classic_rl.distributions import TanhGaussian
from classic_rl.nets import DeterministicActor, SquashedGaussianActor, load_agent, save_agent
from classic_rl.training import run_training
from tests.conftest import run_script

LOG_2PI = math.log(2 * math.pi)


def log_one_minus_tanh_squared(u: float) -> float:
    return math.log(1 - math.tanh(u) ** 2)


def test_tanh_gaussian_log_prob_by_hand():
    """Two dimensions: mean (0.5, -1), std (0.5, 1), u = (1, -2), so z = (1, -1):
    log N = -z^2/2 - log std - ln(2 pi)/2 per dimension; minus log(1 - tanh(u)^2) for the squash."""
    dist = TanhGaussian(2)
    params = dist.params(torch.tensor([[0.5, -1.0, math.log(0.5), 0.0]]))
    actions = torch.tanh(torch.tensor([[1.0, -2.0]]))
    want = (-0.5 - math.log(0.5) - LOG_2PI / 2 - log_one_minus_tanh_squared(1.0)) + \
           (-0.5 - 0.0 - LOG_2PI / 2 - log_one_minus_tanh_squared(-2.0))
    torch.testing.assert_close(dist.log_prob(params, actions), torch.tensor([want]))
    torch.testing.assert_close(dist.mode(params), torch.tanh(torch.tensor([[0.5, -1.0]])))


def test_tanh_gaussian_draw_gives_the_log_prob_of_its_action_and_stays_finite_when_saturated():
    torch.manual_seed(0)
    dist = TanhGaussian(3)
    params = dist.params(torch.tensor([[0.3, -0.2, 1.0, -1.0, 0.0, -0.5]]).repeat(1000, 1))
    actions, log_prob = dist.rsample_with_log_prob(params)
    torch.testing.assert_close(log_prob, dist.log_prob(params, actions), atol=1e-3, rtol=1e-4)
    saturated = dist.params(torch.tensor([[30.0, -5.0]]))  # tanh(u) rounds to 1: log(1 - tanh^2) would be log 0
    _, log_prob = dist.rsample_with_log_prob(saturated)
    assert torch.isfinite(log_prob).all() and log_prob.item() > 50  # a density piled up against the bound


def test_tanh_gaussian_log_std_is_clamped_as_sb3_does():
    dist = TanhGaussian(1)
    assert dist.params(torch.tensor([[0.0, -50.0]]))[0, 1] == -20 and dist.params(torch.tensor([[0.0, 9.0]]))[0, 1] == 2


def test_tanh_gaussian_entropy_against_numerical_integration():
    """H = H(N(mean, std)) + E_u[log(1 - tanh(u)^2)] (the change of variables), the expectation integrated on a grid:
    mean 0.4, std 0.8."""
    mean, std = 0.4, 0.8
    u = np.linspace(mean - 10 * std, mean + 10 * std, 200_001)
    density = np.exp(-0.5 * ((u - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    log_det = np.log1p(-np.tanh(u) ** 2)
    want = 0.5 + 0.5 * LOG_2PI + math.log(std) + np.trapezoid(density * log_det, u)
    torch.manual_seed(0)
    dist = TanhGaussian(1)
    estimate = dist.entropy(dist.params(torch.tensor([[mean, math.log(std)]])).repeat(20_000, 1)).mean()
    assert estimate.item() == pytest.approx(want, abs=0.02)  # a std of about 0.7 over 20k draws: 3 standard errors


class LinearCritics(torch.nn.Module):
    """Q_1(s, a) = s_0 + s_1 + 2 a,  Q_2(s, a) = s_0 + s_1 - a  (one action dimension)."""

    def forward(self, obs, actions):
        base = obs.sum(-1)
        return torch.stack([base + 2 * actions[:, 0], base - actions[:, 0]])


def test_sac_soft_q_targets_by_hand(monkeypatch):
    """eps = 0, so a' = tanh(mean); alpha 0.5, r = (1, -1), discounts (0.99, 0.5).
    Row 1: s' = (1, 0), mean 0, std 1: a' = 0, Q = (1, 1), log pi = -ln(2 pi)/2.
    Row 2: s' = (0, 2), mean 1, std 1/2: a' = tanh 1, Q = (2 + 2 a', 2 - a'), log pi = ln 2 - ln(2 pi)/2 - log(1 - tanh(1)^2)."""
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    actor = SquashedGaussianActor(2, 1, [4], [-1.0], [1.0])
    monkeypatch.setattr(actor, "forward", lambda obs: torch.tensor([[0.0, 0.0], [1.0, math.log(0.5)]]))
    targets = sac.soft_q_targets(actor, LinearCritics(), torch.tensor([0.5]), torch.tensor([1.0, -1.0]),
                                 torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0.99, 0.5]))
    a = math.tanh(1.0)
    log_pi = [-LOG_2PI / 2, math.log(2) - LOG_2PI / 2 - log_one_minus_tanh_squared(1.0)]
    want = [1.0 + 0.99 * (1.0 - 0.5 * log_pi[0]), -1.0 + 0.5 * (2 - a - 0.5 * log_pi[1])]
    torch.testing.assert_close(targets, torch.tensor(want))


def test_td3_targets_smooth_and_clip_the_target_action_by_hand(monkeypatch):
    """mu_target(s') = (0.5, 0.9), noise std 0.2 with eps = 3 clipped to 0.5 (DDPG: none): a' = (1.0, 1.0) after
    clipping to [-1, 1]; Q = (s_0 + s_1 + 2 a', s_0 + s_1 - a'), the min; r = (1, -1), discounts (0.99, 0)."""
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.full_like(x, 3.0))
    actor = DeterministicActor(2, 1, [4], [-1.0], [1.0])
    monkeypatch.setattr(actor, "forward", lambda obs: torch.tensor([[0.5], [0.9]]))
    args = (actor, LinearCritics(), torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0.99, 0.0]))
    smoothed = td3.td3_targets(*args, noise_std=0.2, noise_clip=0.5)
    torch.testing.assert_close(smoothed, torch.tensor([1.0 + 0.99 * min(1 + 2.0, 1 - 1.0), -1.0]))
    plain = td3.td3_targets(*args, noise_std=0.0, noise_clip=0.5)
    torch.testing.assert_close(plain, torch.tensor([1.0 + 0.99 * min(1 + 1.0, 1 - 0.5), -1.0]))


def test_replay_buffer_stores_real_valued_actions_and_wraps_around():
    buffer = ReplayBuffer(capacity=3, obs_dim=2, seed=0, action_dim=2)
    for step in range(4):
        buffer.add(np.full((1, 2), step), np.full((1, 2), step + 1), np.array([[step / 10, -step / 10]]), np.array([step]),
                   np.array([0.99]))
    assert buffer.size == 3 and buffer.actions.dtype == np.float32
    np.testing.assert_allclose(buffer.actions[0], [0.3, -0.3])  # the fourth overwrote the oldest
    obs, actions, returns, next_obs, discounts = buffer.batch(np.array([0, 1]))
    assert actions.shape == (2, 2) and returns.tolist() == [3, 1] and next_obs[:, 0].tolist() == [4, 2]


@pytest.mark.parametrize("actor_cls", [SquashedGaussianActor, DeterministicActor])
def test_saved_actor_acts_the_same_in_the_envs_units(actor_cls, tmp_path):
    torch.manual_seed(0)
    actor = actor_cls(3, 2, [16, 16], [-2.0, 0.0], [2.0, 1.0])
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    save_agent(actor, tmp_path / "policy.safetensors")
    loaded = load_agent(tmp_path / "policy.safetensors")
    actions = actor.act(obs)
    np.testing.assert_array_equal(loaded.act(obs), actions)
    assert (actions[:, 0] >= -2).all() and (actions[:, 0] <= 2).all() and (actions[:, 1] >= 0).all() and (actions[:, 1] <= 1).all()


@pytest.mark.parametrize("algo, config_cls, fields", [
    ("sac", sac.SACConfig, dict(learning_rate=1e-3)),
    ("td3", td3.TD3Config, dict(learning_rate=1e-3, total_timesteps=6_000)),
])
def test_learns_to_swing_up_the_pendulum(algo, config_cls, fields, tmp_path):
    """Random actions score about -1,200 on Pendulum; 3,000 steps (SAC) and 6,000 (TD3, whose exploration is narrower)
    take these above -400."""
    cfg = config_cls(**{"env": "Pendulum-v1", "seed": 1, "total_timesteps": 3_000, "eval_every": 0, "eval_episodes": 5,
                        "hidden_sizes": [64, 64], "run_dir": str(tmp_path / algo), **fields})
    summary = run_training(algo, {"sac": sac.train, "td3": td3.train}[algo], cfg)
    assert summary["eval_return_mean"] > -400, summary["eval_return_mean"]


@pytest.mark.parametrize("args, message", [
    (["--algo", "sac", "--env", "CartPole-v1"], "sac needs a bounded continuous (1-D Box) action space but CartPole-v1 has Discrete(2)"),
    (["--algo", "dqn", "--env", "Pendulum-v1"], "dqn needs a discrete action space but Pendulum-v1 has Box(-2.0, 2.0, (1,), float32)"),
    (["--algo", "td3", "--eval-mode", "sample"], "deterministic actors (td3, ddpg) have none; accepted: greedy"),
    (["--algo", "sac", "--tau", "1.5"], "need --gamma <= 1, --tau <= 1 and --learning-starts >= 0"),
], ids=["sac-on-discrete", "dqn-on-continuous", "td3-sampled-eval", "sac-tau"])
def test_bad_input_is_one_line(args, message, tmp_path, monkeypatch, capsys):
    code, _, err = run_script("train_classic.py", [*args, "--run-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code == 2 and message in err and err.count("\n") == 1
