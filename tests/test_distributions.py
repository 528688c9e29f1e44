"""Action distributions: hand-computed log-probs, entropies and KLs, the rollouts' numpy samplers against the
torch code, the choice from an env's action space, and continuous actions through the on-policy algorithms."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from classic_rl import distributions
from classic_rl.distributions import Categorical, DiagGaussian, draw_categorical_numpy
from classic_rl.infra.errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


def test_gaussian_log_prob_entropy_and_kl_by_hand():
    """mean (0, 1), std (1, 2), action (1, 3): z = (1, 1), so
    log p = -(1/2 + 1/2) - (0 + ln 2) - 2 * ln(2 pi)/2 = -1 - ln 2 - ln(2 pi);
    H = sum(1/2 + ln(2 pi)/2 + log std) = 1 + ln(2 pi) + ln 2;
    KL(N(0,1) || N(1,1)) = 1/2 per dimension, with std 2 on both sides (1/2)^2 / 2 = 1/8."""
    gaussian = DiagGaussian(2)
    with torch.no_grad():
        gaussian.log_std.copy_(torch.tensor([0.0, math.log(2)]))
    params = gaussian.params(torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(params, torch.tensor([[0.0, 1.0, 0.0, math.log(2)]]))
    logp, entropy = gaussian.log_prob_and_entropy(params, torch.tensor([[1.0, 3.0]]), entropy_grad=False)
    torch.testing.assert_close(logp, torch.tensor([-1 - math.log(2) - LOG_2PI]))
    torch.testing.assert_close(entropy, torch.tensor([1 + LOG_2PI + math.log(2)]))
    torch.testing.assert_close(gaussian.log_prob(params, torch.tensor([[1.0, 3.0]])), logp)
    shifted = gaussian.params(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(gaussian.kl(params, shifted), torch.tensor([0.5 + 0.125]))
    torch.testing.assert_close(gaussian.mode(params), torch.tensor([[0.0, 1.0]]))


def test_categorical_log_prob_entropy_and_kl_by_hand():
    """probs (1/2, 1/4, 1/4): log p(1) = -ln 4, H = 1.5 ln 2; KL to uniform thirds = ln 3 - 1.5 ln 2."""
    categorical = Categorical(3)
    params = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    logp, entropy = categorical.log_prob_and_entropy(params, torch.tensor([1]), entropy_grad=False)
    torch.testing.assert_close(logp, torch.tensor([-math.log(4)]))
    torch.testing.assert_close(entropy, torch.tensor([1.5 * math.log(2)]))
    torch.testing.assert_close(categorical.kl(params, torch.zeros(1, 3)), torch.tensor([math.log(3) - 1.5 * math.log(2)]))
    assert categorical.mode(params).tolist() == [0]


def test_gaussian_numpy_sampler_gives_torchs_log_prob_and_draws_at_the_std():
    torch.manual_seed(0)
    gaussian = DiagGaussian(3, log_std_init=-0.5)
    mean = np.tile(np.array([[0.5, -1.0, 2.0]], dtype=np.float32), (20_000, 1))
    action, logprob = gaussian.numpy_sampler()(mean)
    assert action.dtype == logprob.dtype == np.float32 and action.shape == (20_000, 3) and logprob.shape == (20_000,)
    want = gaussian.log_prob(gaussian.params(torch.from_numpy(mean)), torch.from_numpy(action))
    np.testing.assert_allclose(logprob, want.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(action.mean(0), [0.5, -1.0, 2.0], atol=0.02)  # 3 standard errors: 3 * 0.61 / sqrt(20k)
    np.testing.assert_allclose(action.std(0), np.exp(-0.5), rtol=0.02)


def test_the_entropy_carries_a_gradient_only_when_asked():
    gaussian = DiagGaussian(2)
    params = gaussian.params(torch.zeros(4, 2))
    logp, entropy = gaussian.log_prob_and_entropy(params, torch.ones(4, 2), entropy_grad=False)
    assert logp.requires_grad and not entropy.requires_grad
    assert gaussian.log_prob_and_entropy(params, torch.ones(4, 2), entropy_grad=True)[1].requires_grad


def test_draw_categorical_numpy_inverts_the_cdf():
    """probs [0.1, 0, 0.6, 0.3, 0] (a logit of -200 underflows to probability 0): action a owns
    [cdf[a-1], cdf[a]) = [0, .1), none, [.1, .7), [.7, 1), none, so neither zero is ever drawn, not even
    at the largest float32 below 1, which is above this cdf's rounded total of 0.9999999."""
    logits = np.tile(np.array([np.log(0.1), -200, np.log(0.6), np.log(0.3), -200], dtype=np.float32), (6, 1))
    uniform = np.array([0.0, 0.0999, 0.1001, 0.6999, 0.7001, 1 - 2**-24], dtype=np.float32)
    action, logprob = draw_categorical_numpy(logits, uniform)
    np.testing.assert_array_equal(action, [0, 0, 2, 2, 3, 3])
    np.testing.assert_allclose(logprob, np.log([0.1, 0.1, 0.6, 0.6, 0.3, 0.3]), rtol=1e-6)


def test_draw_categorical_numpy_draws_each_action_at_its_probability():
    rng = np.random.default_rng(0)
    probs = np.array([0.1, 0.6, 0.3])
    action, _ = draw_categorical_numpy(np.log(np.tile(probs, (20_000, 1))).astype(np.float32), rng.random(20_000, dtype=np.float32))
    frequencies = np.bincount(action, minlength=3) / 20_000
    np.testing.assert_allclose(frequencies, probs, atol=0.01)  # 3 standard errors at most: sqrt(.24 / 20k) = 0.0035


def test_the_distribution_is_chosen_from_the_action_space():
    assert distributions.policy_spaces("CartPole-v1", "ppo") == (4, {"n_actions": 2})
    assert distributions.policy_spaces("LunarLanderContinuous-v3", "ppo") == (8, {"action_dim": 2})
    assert isinstance(distributions.make(n_actions=2), Categorical)
    assert isinstance(distributions.make(action_dim=2), DiagGaussian)
    with pytest.raises(ConfigError, match=r"ppo cannot act in X's action space MultiDiscrete\(\[2 3\]\); accepted: Discrete, or a 1-D Box"):
        distributions.action_kwargs(gym.spaces.MultiDiscrete([2, 3]), "X", "ppo")
    with pytest.raises(ValueError, match="exactly one of n_actions"):
        distributions.make(n_actions=2, action_dim=2)
