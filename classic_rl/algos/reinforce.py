"""REINFORCE: Monte-Carlo policy gradient with reward-to-go (Williams 1992).

    repeat:
        run episodes_per_update complete episodes with pi_theta
        G_t = sum_k gamma^k r_{t+k}                       (core.discounted_returns, per episode)
        optionally whiten G over the batch                 (a constant baseline: lower variance)
        theta += lr * mean over steps of G_t * grad log pi(a_t | s_t)

Two policies:
- "linear": softmax over obs @ W + b, with the gradient of log pi derived by hand (the softmax
  Jacobian): d log pi(a|s) / dW = s (e_a - pi(.|s))^T, d / db = e_a - pi(.|s); plain gradient ascent.
- "mlp": an MLP with autograd and Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from classic_rl import core, envs
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import SoftmaxPolicy
from classic_rl.training import ClassicConfig, Evaluator


def linear_softmax_gradient(weight: Tensor, bias: Tensor, obs: Tensor, actions: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """sum_t weights_t * grad log pi(a_t|s_t) for a linear softmax policy, by hand.

    obs `[T, d]`, actions `[T]`, weights `[T]` -> (dW `[d, A]`, db `[A]`).
    d log softmax(z)_a / dz = e_a - softmax(z), and z = s W + b, so dW = s^T (e_a - pi), db = e_a - pi.
    """
    probs = torch.softmax(obs @ weight + bias, dim=-1)
    score = torch.nn.functional.one_hot(actions, probs.shape[-1]).to(probs.dtype) - probs  # [T, A]
    weighted = score * weights[:, None]
    return obs.T @ weighted, weighted.sum(0)


@dataclass
class ReinforceConfig(ClassicConfig):
    total_timesteps: int = config_field(500_000, "Env steps to train for")
    eval_every: int = config_field(10_000, "Evaluate every this many env steps")
    policy: str = config_field("mlp", "linear (hand-derived gradient) or mlp (autograd)")
    learning_rate: float | None = config_field(None, "Step size; default 0.5 for linear (plain ascent), 1e-2 for mlp (Adam)")
    gamma: float = config_field(0.99, "Discount factor")
    episodes_per_update: int = config_field(8, "Complete episodes per gradient step")
    normalize_returns: bool = config_field(True, "Whiten the reward-to-go over each batch")
    hidden_sizes: list[int] = config_field([64], "Hidden sizes of the mlp policy")

    def __post_init__(self):
        super().__post_init__()
        if self.policy not in ("linear", "mlp"):
            raise ConfigError(f"unknown --policy {self.policy!r}; accepted: linear, mlp")
        if self.learning_rate is None:
            self.learning_rate = 0.5 if self.policy == "linear" else 1e-2
        require_positive(learning_rate=self.learning_rate, gamma=self.gamma, episodes_per_update=self.episodes_per_update)
        envs.check_spaces(self.env, "reinforce")


def train(cfg: ReinforceConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[SoftmaxPolicy, int]:
    obs_dim, n_actions = envs.check_spaces(cfg.env, "reinforce")
    policy = SoftmaxPolicy(obs_dim, n_actions, cfg.policy, cfg.hidden_sizes)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate) if cfg.policy == "mlp" else None
    env = envs.make_env(cfg.env)
    env.reset(seed=cfg.seed)
    global_step = 0
    while global_step < cfg.total_timesteps:
        batch = [envs.play_episode(env, lambda o: policy.act(o, deterministic=False)) for _ in range(cfg.episodes_per_update)]
        obs = torch.as_tensor(np.concatenate([b.observations for b in batch]))
        actions = torch.as_tensor(np.concatenate([b.actions for b in batch]))
        # reward-to-go per episode (truncated episodes are simply cut short: REINFORCE has no value to bootstrap from)
        returns = torch.cat([core.discounted_returns(torch.as_tensor(b.rewards), torch.zeros(len(b.rewards)), cfg.gamma) for b in batch])
        if cfg.normalize_returns:
            returns = core.masked_whiten(returns)
        if cfg.policy == "linear":
            grad_w, grad_b = linear_softmax_gradient(policy.weight.data, policy.bias.data, obs.double(), actions, returns)
            policy.weight.data += cfg.learning_rate * grad_w / len(returns)
            policy.bias.data += cfg.learning_rate * grad_b / len(returns)
        else:
            logp = core.logprobs_from_logits(policy.logits(obs), actions)
            loss = -(logp * returns.float()).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        global_step += len(returns)
        logger.log_episodes(global_step, [b.stats() for b in batch])
        logger.log(global_step, {"charts/episodic_return": logger.recent_return(), "charts/episodes": len(logger.episodes)})
        if evaluator.maybe_evaluate(global_step, policy):
            break
    env.close()
    return policy, global_step
