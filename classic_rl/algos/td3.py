"""Twin Delayed DDPG (Fujimoto et al. 2018, "Addressing Function Approximation Error in Actor-Critic Methods"): a
deterministic actor mu(s) trained through twin Q critics, with smoothed target actions and delayed actor and
target updates. DDPG (Lillicrap et al. 2016) is its degenerate setting: one critic, no target smoothing, no delay.

    for each env step (classic_rl/off_policy.py's loop):
        a = clip(mu(s) + N(0, exploration_noise^2), -1, 1) (uniform in the first learning_starts steps); store (s, a, r, s', discount)
        every train_frequency env steps after learning_starts, gradient_steps times, on a sampled batch:
            a' = clip(mu_target(s') + clip(N(0, target_policy_noise^2), -target_noise_clip, target_noise_clip), -1, 1)
            y = r + discount * min_i Q_target_i(s', a')
            critics: minimise sum_i mean (Q_i(s, a) - y)^2
            every policy_delay-th gradient step:
                actor: minimise -mean Q_1(s, mu(s))
                Q_target_i <- tau Q_i + (1 - tau) Q_target_i;  mu_target <- tau mu + (1 - tau) mu_target

The losses, and targets moving only with the actor, are SB3's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from classic_rl import distributions
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import check_finite, require_nonnegative, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import DeterministicActor, QCritics
from classic_rl.off_policy import Counter, OffPolicyConfig, Optimized, PolyakTarget, train_loop
from classic_rl.training import Evaluator


@dataclass
class TD3Config(OffPolicyConfig):
    algo: ClassVar[str] = "td3"
    deterministic_policy: ClassVar[bool] = True
    exploration_noise: float = config_field(0.1, "Std of the Gaussian noise added to the actor's actions in [-1, 1] while training")
    policy_delay: int = config_field(2, "Critic steps per actor (and target) step")
    target_policy_noise: float = config_field(0.2, "Std of the noise smoothing the target action (0: none, DDPG)")
    target_noise_clip: float = config_field(0.5, "That noise is clipped to +-this")
    n_critics: int = config_field(2, "Q networks; the target takes their minimum (1: DDPG)")

    def __post_init__(self):
        super().__post_init__()
        require_positive(policy_delay=self.policy_delay, n_critics=self.n_critics)
        require_nonnegative(exploration_noise=self.exploration_noise, target_policy_noise=self.target_policy_noise,
                            target_noise_clip=self.target_noise_clip)


@dataclass
class DDPGConfig(TD3Config):
    """DDPG as SB3 defines it: TD3 with one critic, no target smoothing and no delay."""

    algo: ClassVar[str] = "ddpg"
    policy_delay: int = config_field(1, "Critic steps per actor (and target) step")
    target_policy_noise: float = config_field(0.0, "Std of the noise smoothing the target action (0: none, DDPG)")
    n_critics: int = config_field(1, "Q networks; the target takes their minimum (1: DDPG)")


class TD3:
    """The networks, their optimisers and TD3's update (the module docstring's inner loop)."""

    def __init__(self, cfg: TD3Config, obs_dim: int, action_dim: int, low: list[float], high: list[float]):
        self.cfg = cfg
        self.actor = DeterministicActor(obs_dim, action_dim, cfg.hidden_sizes, low, high)
        self.actor_opt = Optimized(self.actor, cfg.learning_rate)
        self.actor_target = PolyakTarget(self.actor_opt, DeterministicActor(obs_dim, action_dim, cfg.hidden_sizes, low, high))
        self.critics = Optimized(QCritics(obs_dim, action_dim, cfg.hidden_sizes, cfg.n_critics), cfg.learning_rate)
        self.critic_targets = PolyakTarget(self.critics, QCritics(obs_dim, action_dim, cfg.hidden_sizes, cfg.n_critics))
        self.updates = Counter()
        self.last_actor_loss = torch.tensor(float("nan"))  # until the first delayed actor step

    @torch.inference_mode()
    def explore(self, obs: np.ndarray) -> np.ndarray:
        """clip(mu(s) + N(0, exploration_noise^2), -1, 1) `[N, d]`."""
        mu = self.actor(torch.as_tensor(obs, dtype=torch.float32))
        return (mu + self.cfg.exploration_noise * torch.randn_like(mu)).clamp(-1, 1).numpy()

    def update(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, discounts: Tensor) -> dict[str, Tensor]:
        cfg = self.cfg
        targets = td3_targets(self.actor_target.module, self.critic_targets.module, rewards, next_obs, discounts,
                              cfg.target_policy_noise, cfg.target_noise_clip)
        q_values = self.critics.module(obs, actions)
        critic_loss = (q_values - targets).square().mean(1).sum()
        self.critics.step(critic_loss)
        self.updates.count += 1
        if self.updates.count % cfg.policy_delay == 0:
            actor_loss = -self.critics.module.first(obs, self.actor(obs)).mean()
            self.actor_opt.step(actor_loss)
            self.critic_targets.update(cfg.tau)
            self.actor_target.update(cfg.tau)
            self.last_actor_loss = actor_loss.detach()
        check_finite(self.updates.count, critic_loss=critic_loss)
        return {"losses/critic_loss": critic_loss.detach(), "losses/actor_loss": self.last_actor_loss,
                "losses/q_values": q_values.detach().mean()}

    def checkpointed(self) -> dict[str, Any]:
        return {"model": self.actor, "actor_target": self.actor_target.module, "critics": self.critics.module,
                "critic_targets": self.critic_targets.module, "actor_optimizer": self.actor_opt.optimizer,
                "critic_optimizer": self.critics.optimizer, "updates": self.updates}


@torch.no_grad()
def td3_targets(actor_target: DeterministicActor, critic_targets: QCritics, rewards: Tensor, next_obs: Tensor, discounts: Tensor,
                noise_std: float, noise_clip: float) -> Tensor:
    """y = r + discount * min_i Q_target_i(s', a') `[B]`, a' the target actor's action smoothed by clipped noise."""
    next_actions = actor_target(next_obs)
    if noise_std > 0:
        noise = (noise_std * torch.randn_like(next_actions)).clamp(-noise_clip, noise_clip)
        next_actions = (next_actions + noise).clamp(-1, 1)
    return rewards + discounts * critic_targets(next_obs, next_actions).min(0).values


def train(cfg: TD3Config, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints) -> tuple[DeterministicActor, int]:
    obs_dim, action_dim, low, high = distributions.continuous_spaces(cfg.env, cfg.algo)
    return train_loop(cfg, TD3(cfg, obs_dim, action_dim, low, high), logger, evaluator, checkpoints)
