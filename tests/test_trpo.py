"""TRPO: the conjugate-gradient solve, Fisher-vector products against the KL's Hessian, the trust region
kept by the line search, and learning CartPole."""

import pytest
import torch
from torch.autograd.functional import hessian
from torch.distributions import Categorical, Independent, Normal, kl_divergence
from torch.func import functional_call

from classic_rl.algos.trpo import PolicyStep, TRPOConfig, conjugate_gradient, policy_step, train
from classic_rl.nets import ActorCritic
from classic_rl.training import run_training


def test_conjugate_gradient_solves_a_symmetric_positive_definite_system():
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    b = torch.tensor([1.0, 2.0, 3.0])
    x = conjugate_gradient(lambda v: a @ v, b, iters=3)  # exact in n steps for an n x n matrix
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    one_step = conjugate_gradient(lambda v: a @ v, b, iters=1)  # steepest descent: alpha = b.b / b.Ab
    torch.testing.assert_close(one_step, (b @ b) / (b @ a @ b) * b)


def small_step(damping=0.1, seed=0, **actions):
    torch.manual_seed(seed)
    agent = ActorCritic(obs_dim=3, hidden_sizes=[5], **(actions or {"n_actions": 4}))
    obs = torch.randn(16, 3)
    actions = agent.distribution.sample(agent.policy_params(obs)).detach()
    return agent, PolicyStep(agent, obs, actions, torch.randn(16), damping)


class PolicyParams(torch.nn.Module):
    """The agent's policy_params as a module's forward, for functional_call."""

    def __init__(self, agent):
        super().__init__()
        self.agent = agent

    def forward(self, obs):
        return self.agent.policy_params(obs)


@pytest.mark.parametrize("actions", [{"n_actions": 4}, {"action_dim": 2}])
def test_fisher_vector_product_is_the_kl_hessian_at_the_old_policy_plus_damping(actions):
    """The KL written with torch.distributions over every policy parameter (for a Gaussian, its log-std too)."""
    agent, step = small_step(damping=0.1, **actions)
    module = PolicyParams(agent)
    name_of = {id(p): name for name, p in module.named_parameters()}
    names = [name_of[id(p)] for p in step.params]
    shapes = [p.shape for p in step.params]
    flat = torch.cat([p.detach().reshape(-1) for p in step.params])

    def distribution(policy_params):
        if "n_actions" in actions:
            return Categorical(logits=policy_params)
        mean, log_std = policy_params.chunk(2, -1)
        return Independent(Normal(mean, log_std.exp()), 1)

    def kl_of(flat_params):
        chunks = torch.split(flat_params, [s.numel() for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return kl_divergence(distribution(step.old_policy), distribution(functional_call(module, params, (step.obs,)))).mean()

    fisher = hessian(kl_of, flat)
    vector = torch.randn_like(flat)
    torch.testing.assert_close(step.fisher_vector_product(vector), fisher @ vector + 0.1 * vector, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("max_kl", [1e-4, 1e-2, 0.5])
def test_the_policy_step_stays_inside_the_trust_region_and_raises_the_surrogate(max_kl):
    agent, step = small_step(seed=3)
    before = [p.detach().clone() for p in step.params]
    cfg = TRPOConfig(max_kl=max_kl, run_dir="unused")
    stats = policy_step(step, cfg)
    with torch.no_grad():
        kl, gain = step.kl().item(), step.surrogate().item() - step.advantages.mean().item()  # at theta_old rho = 1
    if stats["accepted"]:
        assert kl <= max_kl and gain > 0 and stats["kl"] == pytest.approx(kl)
        assert stats["surrogate_gain"] == pytest.approx(gain, abs=1e-5)
    else:
        assert all(torch.equal(p, q) for p, q in zip(step.params, before, strict=True))


def test_trpo_learns_cartpole(tmp_path):
    cfg = TRPOConfig(env="CartPole-v1", seed=1, total_timesteps=32_768, eval_every=8_192, target_return=475,
                     run_dir=str(tmp_path / "run"))
    summary = run_training("trpo", train, cfg)
    assert summary["eval_return_mean"] >= 475 and summary["env_steps"] <= 16_384  # measured: solved at 16,384
