"""REINFORCE: the hand-derived softmax gradient against autograd, and both policy forms learning."""

import pytest
import torch

from classic_rl.algos.reinforce import ReinforceConfig, linear_softmax_gradient, train
from classic_rl.nets import load_agent
from classic_rl.training import run_training


def test_hand_derived_gradient_equals_autograd():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    obs, actions, returns = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,)), torch.randn(7, dtype=torch.float64)
    objective = (torch.log_softmax(obs @ weight + bias, -1)[torch.arange(7), actions] * returns).sum()
    objective.backward()
    grad_w, grad_b = linear_softmax_gradient(weight.detach(), bias.detach(), obs, actions, returns)
    torch.testing.assert_close(grad_w, weight.grad)
    torch.testing.assert_close(grad_b, bias.grad)


@pytest.mark.parametrize("policy", ["linear", "mlp"])
def test_reinforce_solves_cartpole(policy, tmp_path):
    cfg = ReinforceConfig(env="CartPole-v1", policy=policy, seed=1, total_timesteps=150_000, target_return=475,
                          run_dir=str(tmp_path / "run"))
    summary = run_training("reinforce", train, cfg)
    assert summary["eval_return_mean"] >= 475
    reloaded = load_agent(tmp_path / "run" / "policy.safetensors")
    assert reloaded.kind == policy
