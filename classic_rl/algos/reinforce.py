"""REINFORCE: Monte-Carlo policy gradient (Williams 1992).

    repeat:
        run complete episodes with pi_theta until the batch has episodes_per_update of them
            and at least min_batch_steps steps
        weight every step by its reward-to-go  G_t = sum_k gamma^k r_{t+k}     (core.discounted_returns)
            or (--weighting episode_return) by its whole episode's return R(tau)
        optionally whiten the weights over the batch                  (a constant baseline: lower variance)
        theta += lr * (mean or --loss-reduction sum) over steps of weight_t * grad log pi(a_t | s_t)

Two policies:
- "linear": softmax over obs @ W (+ b), with the gradient of log pi derived by hand (the softmax
  Jacobian): d log pi(a|s) / dW = s (e_a - pi(.|s))^T, d / db = e_a - pi(.|s); plain gradient ascent.
- "mlp": an MLP with autograd and Adam.
The tutorials' recipes are presets (classic_rl/tutorials.py): tutorial-000 is the linear policy without
bias from torch.rand weights, gamma 1, one episode per summed update; tutorial-001 is Spinning Up's
simplest policy gradient (whole-episode returns, batches of 5000+ steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from classic_rl import core, envs
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import require_choice, require_nonnegative, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import ACTIVATIONS, SoftmaxPolicy
from classic_rl.training import ClassicConfig, Evaluator


def linear_softmax_gradient(weight: Tensor, bias: Tensor | None, obs: Tensor, actions: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """sum_t weights_t * grad log pi(a_t|s_t) for a linear softmax policy, by hand.

    obs `[T, d]`, actions `[T]`, weights `[T]` -> (dW `[d, A]`, db `[A]`).
    d log softmax(z)_a / dz = e_a - softmax(z), and z = s W + b, so dW = s^T (e_a - pi), db = e_a - pi.
    """
    probs = torch.softmax(obs @ weight + (0.0 if bias is None else bias), dim=-1)
    score = torch.nn.functional.one_hot(actions, probs.shape[-1]).to(probs.dtype) - probs  # [T, A]
    weighted = score * weights[:, None]
    return obs.T @ weighted, weighted.sum(0)


WEIGHTINGS = ("reward_to_go", "episode_return")
REDUCTIONS = ("mean", "sum")
LINEAR_INITS = ("zeros", "uniform")


@dataclass
class ReinforceConfig(ClassicConfig):
    total_timesteps: int = config_field(500_000, "Env steps to train for")
    total_updates: int | None = config_field(None, "Also stop after this many gradient steps")
    eval_every: int = config_field(10_000, "Evaluate every this many env steps")
    policy: str = config_field("mlp", "linear (hand-derived gradient) or mlp (autograd)")
    learning_rate: float | None = config_field(None, "Step size; default 0.5 for linear (plain ascent), 1e-2 for mlp (Adam)")
    gamma: float = config_field(0.99, "Discount factor")
    episodes_per_update: int = config_field(8, "Complete episodes per gradient step (at least)")
    min_batch_steps: int = config_field(0, "Keep adding complete episodes to a batch until it has more than this many steps")
    weighting: str = config_field("reward_to_go", f"What weights grad log pi(a_t|s_t): {', '.join(WEIGHTINGS)}")
    normalize_returns: bool = config_field(True, "Whiten the weights over each batch")
    loss_reduction: str = config_field("mean", f"Average or sum the weighted gradients over the batch's steps: {', '.join(REDUCTIONS)}")
    hidden_sizes: list[int] = config_field([64], "Hidden sizes of the mlp policy")
    activation: str = config_field("tanh", "Activation of the mlp policy: tanh, relu")
    linear_bias: bool = config_field(True, "Give the linear policy a bias")
    linear_init: str = config_field("zeros", f"Initial weights of the linear policy: {', '.join(LINEAR_INITS)} (uniform: torch.rand)")

    def __post_init__(self):
        super().__post_init__()
        require_choice(policy=(self.policy, ("linear", "mlp")), weighting=(self.weighting, WEIGHTINGS),
                       loss_reduction=(self.loss_reduction, REDUCTIONS), activation=(self.activation, tuple(ACTIVATIONS)),
                       linear_init=(self.linear_init, LINEAR_INITS))
        if self.learning_rate is None:
            self.learning_rate = 0.5 if self.policy == "linear" else 1e-2
        require_positive(learning_rate=self.learning_rate, gamma=self.gamma, episodes_per_update=self.episodes_per_update,
                         total_updates=self.total_updates)
        require_nonnegative(min_batch_steps=self.min_batch_steps)
        envs.check_spaces(self.env, "reinforce")

    def budget_left(self, steps: int, updates: int) -> bool:
        return steps < self.total_timesteps and (self.total_updates is None or updates < self.total_updates)


def collect_batch(env, policy: SoftmaxPolicy, cfg: ReinforceConfig) -> list[envs.Episode]:
    """Complete episodes sampled from policy until there are episodes_per_update of them and more than
    min_batch_steps steps."""
    batch, steps = [], 0
    while len(batch) < cfg.episodes_per_update or steps <= cfg.min_batch_steps:
        batch.append(envs.play_episode(env, lambda o: policy.act(o, deterministic=False)))
        steps += len(batch[-1].rewards)
    return batch


def step_weights(batch: list[envs.Episode], cfg: ReinforceConfig) -> torch.Tensor:
    """The weight of each step's grad log pi, `[sum of episode lengths]`: reward-to-go or the episode's return.
    (A time-limit cut simply ends the sum: REINFORCE has no value to bootstrap from.)"""
    if cfg.weighting == "episode_return":
        weights = torch.cat([torch.full((len(b.rewards),), float(b.rewards.sum()), dtype=torch.float64) for b in batch])
    else:
        weights = torch.cat([core.discounted_returns(torch.as_tensor(b.rewards), torch.zeros(len(b.rewards)), cfg.gamma) for b in batch])
    return core.masked_whiten(weights) if cfg.normalize_returns else weights


def make_policy(cfg: ReinforceConfig) -> SoftmaxPolicy:
    obs_dim, n_actions = envs.check_spaces(cfg.env, "reinforce")
    policy = SoftmaxPolicy(obs_dim, n_actions, cfg.policy, cfg.hidden_sizes, cfg.activation, cfg.linear_bias)
    if cfg.policy == "linear" and cfg.linear_init == "uniform":
        with torch.no_grad():
            policy.weight.copy_(torch.rand(obs_dim, n_actions))
    return policy


def train(cfg: ReinforceConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[SoftmaxPolicy, int]:
    policy = make_policy(cfg)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate) if cfg.policy == "mlp" else None
    env = envs.make_env(cfg.env)
    env.reset(seed=cfg.seed)
    global_step, updates = 0, 0
    while cfg.budget_left(global_step, updates):
        batch = collect_batch(env, policy, cfg)
        obs = torch.as_tensor(np.concatenate([b.observations for b in batch]))
        actions = torch.as_tensor(np.concatenate([b.actions for b in batch]))
        weights = step_weights(batch, cfg)
        scale = 1.0 if cfg.loss_reduction == "sum" else 1.0 / len(weights)
        if cfg.policy == "linear":
            grad_w, grad_b = linear_softmax_gradient(policy.weight.data, policy.bias, obs.double(), actions, weights)
            policy.weight.data += cfg.learning_rate * scale * grad_w
            if policy.bias is not None:
                policy.bias.data += cfg.learning_rate * scale * grad_b
        else:
            logp = core.logprobs_from_logits(policy.logits(obs), actions)
            loss = -(logp * weights.float()).sum() * scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        global_step, updates = global_step + len(weights), updates + 1
        episodes = [b.stats() for b in batch]
        logger.log_episodes(global_step, episodes)
        logger.log(global_step, {"charts/episodic_return": logger.recent_return(), "charts/episodes": len(logger.episodes),
                                 "charts/batch_mean_return": float(np.mean([e["return"] for e in episodes]))})
        if evaluator.maybe_evaluate(global_step, policy):
            break
    env.close()
    return policy, global_step
