"""Trust Region Policy Optimization (Schulman et al. 2015) for discrete-action gymnasium envs.

    for each iteration:
        collect num_steps x num_envs transitions with pi_old      (the same RolloutBuffer as A2C and PPO)
        A, R = GAE(rewards, values, dones);  A whitened
        g = grad of the surrogate L(theta) = mean(rho * A) at theta_old,   rho = pi_theta(a|s) / pi_old(a|s)
        x = conjugate_gradient(F, g),  F v = grad(grad KL(pi_old || pi_theta) . v) + cg_damping * v
        s = sqrt(2 max_kl / x.Fx) * x                              the natural-gradient step that reaches max_kl
        line search over theta_old + backtrack_coef^i * s, i = 0, 1, ...: take the first with
            KL(pi_old || pi_theta) <= max_kl and L(theta) > L(theta_old); none: keep theta_old
        value function: value_epochs passes of value_minibatches Adam steps on (V(s) - R)^2 / 2

The Fisher matrix F is never built: the KL's Hessian-vector product gives F v at the cost of two
backward passes. PPO (algos/ppo.py) replaces this constraint with the clip, a first-order stand-in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from classic_rl import core, distributions, envs
from classic_rl.buffers import RolloutBuffer
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import check_finite, require_discount, require_layer_widths, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import ActorCritic
from classic_rl.training import ClassicConfig, Evaluator


@dataclass
class TRPOConfig(ClassicConfig):
    num_envs: int = config_field(8, "Parallel environments")
    num_steps: int = config_field(128, "Steps per environment per iteration (batch = num_envs * num_steps)")
    gamma: float = config_field(0.99, "Discount factor")
    gae_lambda: float = config_field(0.95, "GAE lambda")
    max_kl: float = config_field(0.01, "Trust region: the largest mean KL(pi_old || pi_new) a policy step may take")
    cg_iters: int = config_field(10, "Conjugate-gradient iterations for the natural gradient")
    cg_damping: float = config_field(0.1, "Added to the Fisher matrix's diagonal, for a stable solve")
    backtrack_iters: int = config_field(10, "Line-search step shrinks to try before keeping the old policy")
    backtrack_coef: float = config_field(0.8, "Line-search step shrink factor")
    value_lr: float = config_field(1e-3, "Adam learning rate of the value function")
    value_epochs: int = config_field(5, "Passes of value-function regression over each batch")
    value_minibatches: int = config_field(8, "Minibatches per value-function pass")
    normalize_obs: bool = config_field(False, "Running mean/std observation normalisation (saved with the policy)")
    hidden_sizes: list[int] = config_field([64, 64], "Hidden layer sizes of the policy and of the value function")

    def __post_init__(self):
        super().__post_init__()
        require_positive(num_envs=self.num_envs, num_steps=self.num_steps, gamma=self.gamma, max_kl=self.max_kl,
                         cg_iters=self.cg_iters, cg_damping=self.cg_damping, backtrack_iters=self.backtrack_iters,
                         backtrack_coef=self.backtrack_coef, value_lr=self.value_lr, value_epochs=self.value_epochs,
                         value_minibatches=self.value_minibatches)
        require_discount(self.gamma, self.gae_lambda)
        require_layer_widths(self.hidden_sizes)
        distributions.policy_spaces(self.env, "trpo")


def conjugate_gradient(matrix_vector: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10) -> Tensor:
    """x with A x ~ b for a symmetric positive-definite A given only as v -> A v (`[n]` vectors)."""
    x = torch.zeros_like(b)
    residual, direction = b.clone(), b.clone()
    residual_sq = residual @ residual
    for _ in range(iters):
        a_direction = matrix_vector(direction)
        alpha = residual_sq / (direction @ a_direction)
        x += alpha * direction
        residual -= alpha * a_direction
        new_residual_sq = residual @ residual
        if new_residual_sq < tol:
            break
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x


class PolicyStep:
    """The quantities TRPO's policy step needs on one batch, as functions of the policy's parameters (the
    actor's, and a Gaussian's log-std): the surrogate advantage, the mean KL to the old policy, and
    Fisher-vector products."""

    def __init__(self, agent: ActorCritic, obs: Tensor, actions: Tensor, advantages: Tensor, damping: float):
        self.agent, self.obs, self.actions, self.advantages, self.damping = agent, obs, actions, advantages, damping
        self.params = agent.policy_parameters()
        with torch.no_grad():
            self.old_policy = agent.policy_params(obs)
        self.old_logprobs = agent.distribution.log_prob(self.old_policy, actions)

    def surrogate(self) -> Tensor:
        """mean(rho * A), the policy loss without a clip, negated: the objective to raise."""
        logprobs = self.agent.distribution.log_prob(self.agent.policy_params(self.obs), self.actions)
        return -core.policy_loss(logprobs, self.old_logprobs, self.advantages, clip_low=float("inf"))[0]

    def kl(self) -> Tensor:
        """Mean KL(pi_old || pi_theta) over the batch's states, exact over the actions."""
        return self.agent.distribution.kl(self.old_policy, self.agent.policy_params(self.obs)).mean()

    def fisher_vector_product(self, vector: Tensor) -> Tensor:
        """(F + damping I) v, with F the KL's Hessian at theta_old (the Fisher information)."""
        grad_kl = parameters_to_vector(torch.autograd.grad(self.kl(), self.params, create_graph=True))
        return parameters_to_vector(torch.autograd.grad(grad_kl @ vector, self.params)) + self.damping * vector


def policy_step(step: PolicyStep, cfg: TRPOConfig) -> dict[str, float]:
    """The natural-gradient step with its backtracking line search; returns the step's statistics."""
    old_params = parameters_to_vector(step.params).detach()
    old_surrogate = step.surrogate()
    gradient = parameters_to_vector(torch.autograd.grad(old_surrogate, step.params))
    direction = conjugate_gradient(step.fisher_vector_product, gradient, cfg.cg_iters)
    full_step = torch.sqrt(2 * cfg.max_kl / (direction @ step.fisher_vector_product(direction))) * direction
    check_finite(None, natural_gradient_step=full_step)
    for shrinks in range(cfg.backtrack_iters):
        vector_to_parameters(old_params + cfg.backtrack_coef ** shrinks * full_step, step.params)
        with torch.no_grad():
            kl, surrogate = step.kl().item(), step.surrogate().item()
        if kl <= cfg.max_kl and surrogate > old_surrogate.item():
            return {"kl": kl, "surrogate_gain": surrogate - old_surrogate.item(), "backtracks": shrinks, "accepted": 1.0}
    vector_to_parameters(old_params, step.params)
    return {"kl": 0.0, "surrogate_gain": 0.0, "backtracks": cfg.backtrack_iters, "accepted": 0.0}


def value_regression(agent: ActorCritic, optimizer: torch.optim.Optimizer, obs: Tensor, returns: Tensor,
                     cfg: TRPOConfig) -> Tensor:
    """value_epochs passes of minibatch Adam steps on (V(s) - R)^2 / 2; returns the last loss."""
    for _ in range(cfg.value_epochs):
        for mb in torch.randperm(len(obs)).split(max(1, len(obs) // cfg.value_minibatches)):
            loss = core.value_loss(agent.get_value(obs[mb]), None, returns[mb])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return loss


def train(cfg: TRPOConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints,
          wrap_env: envs.VecEnvWrapper | None = None) -> tuple[ActorCritic, int]:
    """Train a policy; returns it and the number of env steps taken. wrap_env: see a2c.train."""
    stats_env = envs.make_vec_env(cfg.env, cfg.num_envs)
    vec_env = wrap_env(stats_env) if wrap_env else stats_env
    obs_dim, action_kwargs = distributions.policy_spaces(cfg.env, "trpo")
    agent = ActorCritic(obs_dim, hidden_sizes=cfg.hidden_sizes, normalize_obs=cfg.normalize_obs, **action_kwargs)
    value_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=cfg.value_lr)
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, obs_dim, agent.distribution)
    batch_size = cfg.num_envs * cfg.num_steps

    next_obs = agent.normalize(vec_env.reset(seed=cfg.seed)[0], update=True)
    global_step = 0
    checkpoints.track(model=agent, optimizer=value_optimizer, vec_env=envs.VecEnvState(stats_env))
    if resumed := checkpoints.restore():
        next_obs, global_step = resumed["next_obs"], resumed["global_step"]
    progress = tqdm(total=cfg.total_timesteps, initial=global_step, unit="step", desc=f"trpo {cfg.env}", mininterval=1.0)
    while global_step + batch_size <= cfg.total_timesteps:
        rollout_start = time.perf_counter()
        next_obs, finished = buffer.collect(agent, vec_env, next_obs, cfg.gamma)
        global_step += batch_size
        logger.log_episodes(global_step, finished)
        advantages, returns = buffer.advantages(agent, next_obs, cfg.gamma, cfg.gae_lambda)
        obs, actions, _, values = buffer.flat()
        rollout_s = time.perf_counter() - rollout_start

        update_start = time.perf_counter()
        stats = policy_step(PolicyStep(agent, obs, actions, core.masked_whiten(advantages), cfg.cg_damping), cfg)
        value_loss = value_regression(agent, value_optimizer, obs, returns, cfg)
        check_finite(global_step, value_loss=value_loss)
        progress.update(batch_size)
        progress.set_postfix(ret=f"{logger.recent_return():.1f}", kl=f"{stats['kl']:.4f}", refresh=False)
        logger.log(global_step, {
            "charts/episodic_return": logger.recent_return(),
            "charts/SPS": global_step / logger.elapsed(),
            "losses/kl": stats["kl"], "losses/surrogate_gain": stats["surrogate_gain"],
            "losses/backtracks": stats["backtracks"], "losses/step_accepted": stats["accepted"],
            "losses/value_loss": value_loss.item(),
            "losses/explained_variance": core.explained_variance(values, returns).item(),
            "time/rollout_s": rollout_s, "time/update_s": time.perf_counter() - update_start,
        })
        if evaluator.maybe_evaluate(global_step, agent):
            break
        checkpoints.save_if_due(global_step, global_step=global_step, next_obs=next_obs)
    progress.close()
    vec_env.close()
    return agent, global_step
