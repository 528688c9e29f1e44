"""Soft Actor-Critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications"): a stochastic
actor that maximises return plus alpha times its entropy, twin Q critics with Polyak-averaged targets, and
alpha tuned so the policy's entropy stays near a target.

    for each env step (classic_rl/off_policy.py's loop):
        a ~ pi(.|s) (uniform in the first learning_starts steps); store (s, a, r, s', discount)
        every train_frequency env steps after learning_starts, gradient_steps times, on a sampled batch:
            a~ ~ pi(.|s) by reparameterisation, with log pi(a~|s)         (one draw for the alpha and actor losses)
            alpha (--autotune): minimise -log(alpha) * (log pi(a~|s) + target_entropy)   (target: -dim A)
            y = r + discount * (min_i Q_target_i(s', a') - alpha log pi(a'|s')),   a' ~ pi(.|s')
            critics: minimise 1/2 sum_i mean (Q_i(s, a) - y)^2
            actor: minimise mean(alpha log pi(a~|s) - min_i Q_i(s, a~))
            Q_target_i <- tau Q_i + (1 - tau) Q_target_i

The order (alpha, critics, actor, targets) is SB3's, as is the tanh-Gaussian with log-probs in [-1, 1]^d
(classic_rl/distributions.py's TanhGaussian).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from classic_rl import distributions
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import check_finite, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import QCritics, SquashedGaussianActor
from classic_rl.off_policy import Counter, OffPolicyConfig, Optimized, PolyakTarget, train_loop
from classic_rl.training import Evaluator


@dataclass
class SACConfig(OffPolicyConfig):
    algo: ClassVar[str] = "sac"
    alpha: float = config_field(1.0, "Entropy coefficient: its starting value with --autotune (SB3's and CleanRL's 1.0), "
                                     "else fixed")
    autotune: bool = config_field(True, "Tune alpha towards --target-entropy (--no-autotune keeps --alpha fixed)")
    target_entropy: float | None = config_field(None, "Entropy the tuning aims for, in nats (default: -action_dim)")

    def __post_init__(self):
        super().__post_init__()
        require_positive(alpha=self.alpha)


class EntropyCoefficient(nn.Module):
    """alpha = exp(log_alpha), learned (--autotune) or fixed; a module so checkpoints hold it."""

    def __init__(self, alpha: float):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor([math.log(alpha)]))

    def forward(self) -> Tensor:
        return self.log_alpha.exp()


class SAC:
    """The networks, their optimisers and SAC's update (the module docstring's inner loop)."""

    def __init__(self, cfg: SACConfig, obs_dim: int, action_dim: int, low: list[float], high: list[float]):
        self.cfg = cfg
        self.actor = SquashedGaussianActor(obs_dim, action_dim, cfg.hidden_sizes, low, high)
        self.actor_opt = Optimized(self.actor, cfg.learning_rate)
        self.critics = Optimized(QCritics(obs_dim, action_dim, cfg.hidden_sizes, n_critics=2), cfg.learning_rate)
        self.critic_targets = PolyakTarget(self.critics, QCritics(obs_dim, action_dim, cfg.hidden_sizes, n_critics=2))
        self.alpha = EntropyCoefficient(cfg.alpha)
        self.alpha_opt = Optimized(self.alpha, cfg.learning_rate) if cfg.autotune else None
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.updates = Counter()

    @torch.inference_mode()
    def explore(self, obs: np.ndarray) -> np.ndarray:
        """a ~ pi(.|s) in [-1, 1] `[N, d]`."""
        return self.actor.distribution.sample(self.actor(torch.as_tensor(obs, dtype=torch.float32))).numpy()

    def update(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, discounts: Tensor) -> dict[str, Tensor]:
        new_actions, log_prob = self.actor.distribution.rsample_with_log_prob(self.actor(obs))
        alpha_loss = None
        if self.alpha_opt is not None:
            alpha_loss = -(self.alpha.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_opt.step(alpha_loss)
        alpha = self.alpha().detach()
        targets = soft_q_targets(self.actor, self.critic_targets.module, alpha, rewards, next_obs, discounts)
        q_values = self.critics.module(obs, actions)
        critic_loss = 0.5 * (q_values - targets).square().mean(1).sum()
        self.critics.step(critic_loss)
        actor_loss = (alpha * log_prob - self.critics.module(obs, new_actions).min(0).values).mean()
        self.actor_opt.step(actor_loss)
        self.critic_targets.update(self.cfg.tau)
        self.updates.count += 1
        check_finite(self.updates.count, critic_loss=critic_loss, actor_loss=actor_loss)
        metrics = {"losses/critic_loss": critic_loss.detach(), "losses/actor_loss": actor_loss.detach(), "losses/alpha": alpha[0],
                   "losses/q_values": q_values.detach().mean(), "charts/entropy": -log_prob.detach().mean()}
        return metrics if alpha_loss is None else {**metrics, "losses/alpha_loss": alpha_loss.detach()}

    def checkpointed(self) -> dict[str, Any]:
        optimizers = {"actor_optimizer": self.actor_opt.optimizer, "critic_optimizer": self.critics.optimizer}
        if self.alpha_opt is not None:
            optimizers["alpha_optimizer"] = self.alpha_opt.optimizer
        return {"model": self.actor, "critics": self.critics.module, "critic_targets": self.critic_targets.module,
                "alpha": self.alpha, "updates": self.updates, **optimizers}


@torch.no_grad()
def soft_q_targets(actor: SquashedGaussianActor, critic_targets: QCritics, alpha: Tensor, rewards: Tensor, next_obs: Tensor,
                   discounts: Tensor) -> Tensor:
    """y = r + discount * (min_i Q_target_i(s', a') - alpha log pi(a'|s')) `[B]`, a' ~ pi(.|s') drawn afresh."""
    next_actions, next_log_prob = actor.distribution.rsample_with_log_prob(actor(next_obs))
    next_q = critic_targets(next_obs, next_actions).min(0).values
    return rewards + discounts * (next_q - alpha * next_log_prob)


def train(cfg: SACConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints) -> tuple[SquashedGaussianActor, int]:
    obs_dim, action_dim, low, high = distributions.continuous_spaces(cfg.env, cfg.algo)
    return train_loop(cfg, SAC(cfg, obs_dim, action_dim, low, high), logger, evaluator, checkpoints)
