"""Action distributions: the one place that knows what an action is. A policy network outputs a head
`[B, head_dim]`; the distribution chosen from the env's action space turns it into the distribution's
parameters, actions, their log-probabilities and entropy. PPO, A2C, VPG, TRPO and A3C act through this
interface only, so they take discrete and continuous actions through the same code.

    Discrete(n)    Categorical     head = logits `[B, n]`, actions integers `[B]`
    Box((d,))      DiagGaussian    head = mean `[B, d]`, a state-independent log-std `[d]` (a parameter),
                                   actions floats `[B, d]`, sampled unbounded: the env clips them (ClipAction),
                                   as CleanRL and SB3 do, and the log-prob is that of the unclipped sample

A new kind of action space is a new class here plus a line in `action_kwargs` and `make`.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Normal, kl_divergence

from classic_rl import core, envs
from classic_rl.infra.errors import ConfigError


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
        std, log_norm = np.exp(log_std), float(log_std.sum()) + 0.5 * math.log(2 * math.pi) * self.action_dim

        def sample(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            eps = torch.randn(mean.shape).numpy()
            return mean + std * eps, -0.5 * np.square(eps).sum(1) - log_norm
        return sample


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


def make(n_actions: int | None = None, action_dim: int | None = None) -> ActionDistribution:
    """The distribution for `n_actions` discrete actions or `action_dim` real ones (exactly one given)."""
    if (n_actions is None) == (action_dim is None):
        raise ValueError("give exactly one of n_actions (discrete) and action_dim (continuous)")
    return Categorical(n_actions) if n_actions is not None else DiagGaussian(action_dim)
