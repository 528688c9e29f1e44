"""Action distributions: the one place that knows what an action is. A policy network outputs a head
`[B, head_dim]`; the distribution chosen from the env's action space turns it into the distribution's
parameters, actions, their log-probabilities and entropy. PPO, A2C, VPG, TRPO and A3C act through this
interface only, so they take discrete and continuous actions through the same code.

    Discrete(n)    Categorical     head = logits `[B, n]`, actions integers `[B]`
    Box((d,))      DiagGaussian    head = mean `[B, d]`, a state-independent log-std `[d]` (a parameter),
                                   actions floats `[B, d]`, sampled unbounded: the env clips them (ClipAction),
                                   as CleanRL and SB3 do, and the log-prob is that of the unclipped sample
    Box((d,))      TanhGaussian    (SAC) head = mean and log-std `[B, 2 d]`, both state-dependent; actions
                                   tanh(u) in (-1, 1)^d, u Gaussian, with the log-det correction in the log-prob

A new kind of action space is a new class here plus a line in `action_kwargs` and `make`.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Normal, kl_divergence

from classic_rl import core, envs
from classic_rl.infra.errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


class Categorical(nn.Module):
    """softmax(logits) over n actions; no parameters of its own."""

    def __init__(self, n_actions: int):
        super().__init__()
        self.n_actions = n_actions
        self.head_dim = n_actions

    def params(self, head: Tensor) -> Tensor:
        """The distribution's parameters `[B, n]`: the logits themselves."""
        return head

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        return core.logprobs_from_logits(params, actions)

    def entropy(self, params: Tensor) -> Tensor:
        return core.entropy_from_logits(params)

    def log_prob_and_entropy(self, params: Tensor, actions: Tensor, entropy_grad: bool) -> tuple[Tensor, Tensor]:
        """(log pi(a), entropy), each `[B]`, from one log-softmax (see core.logprobs_and_entropy)."""
        return core.logprobs_and_entropy(params, actions, entropy_grad=entropy_grad)

    def sample(self, params: Tensor) -> Tensor:
        return torch.multinomial(torch.softmax(params.float(), -1), 1).squeeze(-1)

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def kl(self, old_params: Tensor, new_params: Tensor) -> Tensor:
        """KL(old || new) `[B]`, exact over the actions."""
        return kl_divergence(TorchCategorical(logits=old_params), TorchCategorical(logits=new_params))

    def empty_actions(self, *batch_shape: int) -> Tensor:
        return torch.zeros(*batch_shape, dtype=torch.long)

    def numpy_sampler(self):
        """(head numpy `[B, n]`) -> (action, log-prob), each `[B]`, with the draw from torch's random stream."""
        return lambda logits: draw_categorical_numpy(logits, torch.rand(len(logits)).numpy())


class DiagGaussian(nn.Module):
    """N(mean, diag(exp(log_std))^2) over `action_dim` real actions: the mean is the head, the log-std a
    state-independent parameter (PPO's usual choice, Schulman et al. 2017; CleanRL's and SB3's default),
    starting at `log_std_init`. Log-prob and entropy are sums over the action's dimensions."""

    def __init__(self, action_dim: int, log_std_init: float = 0.0):
        super().__init__()
        self.action_dim = action_dim
        self.head_dim = action_dim
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def params(self, head: Tensor) -> Tensor:
        """(mean, log-std) side by side `[B, 2 d]`, so a snapshot of them (TRPO's old policy) is one tensor."""
        return torch.cat([head, self.log_std.expand_as(head)], -1)

    def normal(self, params: Tensor) -> Normal:
        mean, log_std = params.float().chunk(2, -1)
        return Normal(mean, log_std.exp(), validate_args=False)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        return self.normal(params).log_prob(actions).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        return self.normal(params).entropy().sum(-1)

    def log_prob_and_entropy(self, params: Tensor, actions: Tensor, entropy_grad: bool) -> tuple[Tensor, Tensor]:
        normal = self.normal(params)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = normal.entropy().sum(-1)
        return normal.log_prob(actions).sum(-1), entropy

    def sample(self, params: Tensor) -> Tensor:
        return self.normal(params).sample()

    def mode(self, params: Tensor) -> Tensor:
        return params.chunk(2, -1)[0]

    def kl(self, old_params: Tensor, new_params: Tensor) -> Tensor:
        return kl_divergence(self.normal(old_params), self.normal(new_params)).sum(-1)

    def empty_actions(self, *batch_shape: int) -> Tensor:
        return torch.zeros(*batch_shape, self.action_dim)

    def numpy_sampler(self):
        """(mean numpy `[B, d]`) -> (action `[B, d]`, log-prob `[B]`) for the log-std as it is now, the noise
        from torch's random stream: a = mean + std * eps, log pi(a) = sum(-eps^2 / 2 - log std - log(2 pi) / 2)."""
        log_std = self.log_std.detach().numpy().copy()
        std, log_norm = np.exp(log_std), float(log_std.sum()) + 0.5 * LOG_2PI * self.action_dim

        def sample(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            eps = torch.randn(mean.shape).numpy()
            return mean + std * eps, -0.5 * np.square(eps).sum(1) - log_norm
        return sample


class TanhGaussian(nn.Module):
    """a = tanh(u), u ~ N(mean, diag(exp(log_std))^2), mean and log-std both from the head `[B, 2 d]` (SAC's
    policy, Haarnoja et al. 2018), the log-std clamped to [-20, 2] as SB3 does. Actions lie in (-1, 1)^d: the
    actor rescales them to the env's bounds outside the distribution, so log-probs, and SAC's entropy target
    -d, mean the same on every env (SB3's convention; CleanRL's log-prob adds log of the action scale).

        log pi(a) = sum_i [log N(u_i; mean_i, std_i) - log(1 - tanh(u_i)^2)]          (change of variables)
        log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2 u))                          (exact; 1 - tanh^2 rounds
                                                                                      to 0 once |u| > 9)
    The entropy has no closed form: `entropy` estimates it as the mean of -log pi over draws."""

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, action_dim: int):
        super().__init__()
        self.action_dim = action_dim
        self.head_dim = 2 * action_dim

    def params(self, head: Tensor) -> Tensor:
        """(mean, clamped log-std) side by side `[B, 2 d]`."""
        mean, log_std = head.chunk(2, -1)
        return torch.cat([mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)], -1)

    def rsample_with_log_prob(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(action `[B, d]`, log pi(action) `[B]`), the action a differentiable function of params
        (the reparameterisation SAC's actor loss needs): u = mean + std * eps, eps ~ N(0, I)."""
        mean, log_std = params.chunk(2, -1)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        return torch.tanh(u), (gaussian_log_density(eps, log_std) - squash_log_det(u)).sum(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        """log pi(actions) `[B]` for actions `[B, d]` in (-1, 1), clamped 1e-6 inside so atanh stays finite."""
        mean, log_std = params.chunk(2, -1)
        u = torch.atanh(actions.clamp(-1 + 1e-6, 1 - 1e-6))
        return (gaussian_log_density((u - mean) * torch.exp(-log_std), log_std) - squash_log_det(u)).sum(-1)

    def entropy(self, params: Tensor, draws: int = 1) -> Tensor:
        """Estimate of the entropy `[B]`: the mean of -log pi(a) over `draws` samples a ~ pi."""
        return -torch.stack([self.rsample_with_log_prob(params)[1] for _ in range(draws)]).mean(0)

    def sample(self, params: Tensor) -> Tensor:
        return self.rsample_with_log_prob(params)[0]

    def mode(self, params: Tensor) -> Tensor:
        """tanh(mean): the squashed Gaussian's centre (SB3's deterministic action)."""
        return torch.tanh(params.chunk(2, -1)[0])


def gaussian_log_density(z: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, std) elementwise, from the standardised z = (x - mean) / std."""
    return -0.5 * z.square() - log_std - 0.5 * LOG_2PI


def squash_log_det(u: Tensor) -> Tensor:
    """log(d tanh(u) / du) = log(1 - tanh(u)^2) elementwise, in a form that stays exact for large |u|."""
    return 2 * (math.log(2) - u - F.softplus(-2 * u))


ActionDistribution = Categorical | DiagGaussian


def draw_categorical_numpy(logits: np.ndarray, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(action, its log-prob), each `[B]`, drawn from softmax(logits `[B, A]`) by inverting its CDF at
    `uniform` `[B]` in [0, 1): action a owns [cdf[a-1], cdf[a]), so an action of probability 0 is never
    drawn. The CDF is left unnormalised and the draw scaled by its total instead."""
    shifted = logits - logits.max(1, keepdims=True)
    cdf = np.exp(shifted).cumsum(1)
    action = (cdf <= uniform[:, None] * cdf[:, -1:]).sum(1)
    action = np.minimum(action, logits.shape[1] - 1)  # in case the product rounds up to the total
    return action, shifted[np.arange(len(action)), action] - np.log(cdf[:, -1])


def action_kwargs(space: gym.Space, env_id: str, algo: str) -> dict[str, int]:
    """What `make` needs for this action space ({"n_actions": n} or {"action_dim": d}), or a ConfigError."""
    if isinstance(space, gym.spaces.Discrete):
        return {"n_actions": int(space.n)}
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return {"action_dim": int(space.shape[0])}
    raise ConfigError(f"{algo} cannot act in {env_id}'s action space {space}; accepted: Discrete, or a 1-D Box "
                      "(e.g. CartPole-v1, Pendulum-v1)")


def policy_spaces(env_id: str, algo: str) -> tuple[int, dict[str, int]]:
    """(obs_dim, action_kwargs) for an MLP policy acting in env_id, or a ConfigError."""
    observation_space, action_space = envs.env_spaces(env_id)
    return envs.require_box_observations(observation_space, env_id, algo), action_kwargs(action_space, env_id, algo)


def continuous_spaces(env_id: str, algo: str) -> tuple[int, int, list[float], list[float]]:
    """(obs_dim, action_dim, low, high) for an actor over a 1-D bounded Box action space, or a ConfigError."""
    observation_space, action_space = envs.env_spaces(env_id)
    obs_dim = envs.require_box_observations(observation_space, env_id, algo)
    if not (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1 and action_space.is_bounded()):
        raise ConfigError(f"{algo} needs a bounded continuous (1-D Box) action space but {env_id} has {action_space}; accepted: "
                          "e.g. Pendulum-v1, LunarLanderContinuous-v3, BipedalWalker-v3 (for discrete actions: ppo or dqn)")
    return obs_dim, int(action_space.shape[0]), action_space.low.tolist(), action_space.high.tolist()


def make(n_actions: int | None = None, action_dim: int | None = None) -> ActionDistribution:
    """The distribution for `n_actions` discrete actions or `action_dim` real ones (exactly one given)."""
    if (n_actions is None) == (action_dim is None):
        raise ValueError("give exactly one of n_actions (discrete) and action_dim (continuous)")
    return Categorical(n_actions) if n_actions is not None else DiagGaussian(action_dim)
