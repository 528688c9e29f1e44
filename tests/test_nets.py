"""The hand-written backward of MLP and ActorCritic.forward_for_update against autograd, and
flatten_parameters keeping parameters, gradients and saved files as they were."""

import pytest
import torch

from classic_rl import core
from classic_rl.nets import ActorCritic, flatten_parameters, load_agent, mlp, save_agent


@pytest.mark.parametrize("activation", [torch.nn.Tanh, torch.nn.ReLU])
def test_mlp_forward_and_backward_match_autograd(activation):
    torch.manual_seed(0)
    net = mlp(5, [7, 6], 3, out_std=1.0, activation=activation).double()
    x, weights = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    out, inputs = net.forward_keeping_inputs(x.clone())
    torch.testing.assert_close(out, net(x), rtol=1e-12, atol=1e-12)  # 2 sigmoid(2z) - 1 is tanh
    (net(x) * weights).sum().backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    net.backward_into_grads(weights, inputs)
    for got, want in zip([p.grad for p in net.parameters()], expected, strict=True):
        assert not got.requires_grad
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    net.backward_into_grads(weights, inputs)  # a second call accumulates, like backward()
    torch.testing.assert_close(next(net.parameters()).grad, 2 * expected[0])


@pytest.mark.parametrize("shared", [False, True])
def test_forward_for_update_gives_autograds_gradients_of_the_whole_ppo_loss(shared):
    torch.manual_seed(1)
    agent = ActorCritic(4, 3, [8, 8], shared=shared).double()
    obs, actions = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    old_logp, advantages, returns = (torch.randn(16, dtype=torch.float64) for _ in range(3))
    old_logp = old_logp - 1.0  # ratios away from 1, so both branches of the clip are taken

    def ppo_loss(logits, value):  # every term that can reach the networks: clip, value and entropy bonus
        logp, entropy = core.logprobs_and_entropy(logits, actions, entropy_grad=True)
        return (core.policy_loss(logp, old_logp, advantages, 0.2)[0] + 0.5 * core.value_loss(value, value.detach(), returns)
                - 0.01 * entropy.mean())

    hidden = agent.trunk(obs)
    ppo_loss(agent.actor(hidden), agent.critic(hidden).squeeze(-1)).backward()
    expected = {name: p.grad.clone() for name, p in agent.named_parameters()}
    agent.zero_grad(set_to_none=True)
    logits, value, backward = agent.forward_for_update(obs)
    backward(ppo_loss(logits, value))
    for name, p in agent.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-12, msg=name)


def test_forward_for_update_without_a_value_loss_gives_the_critic_zero_gradients():
    agent = ActorCritic(4, 2, [8])
    logits, value, backward = agent.forward_for_update(torch.randn(5, 4))
    backward(logits.sum())
    assert all(p.grad.abs().sum() == 0 for p in agent.critic.parameters())
    assert agent.actor[0].weight.grad.abs().sum() > 0


def test_flatten_parameters_keeps_values_and_shares_storage_with_the_module(tmp_path):
    torch.manual_seed(2)
    agent = ActorCritic(4, 2, [8, 8], normalize_obs=True)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    flat = flatten_parameters(agent)
    assert flat.numel() == sum(p.numel() for p in agent.parameters())
    for key, value in agent.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    optimizer = torch.optim.Adam([flat], lr=0.1)
    optimizer.zero_grad(set_to_none=False)
    logits, value, backward = agent.forward_for_update(torch.randn(6, 4))
    backward(logits.logsumexp(-1).sum() + value.sum())
    assert flat.grad.abs().sum() > 0  # the modules' gradients were written into the flat one
    optimizer.step()
    assert not torch.equal(agent.actor[0].weight, before["actor.0.weight"])  # the step moved the module's weights
    save_agent(agent, tmp_path / "policy.safetensors")  # views sharing memory still save
    loaded = load_agent(tmp_path / "policy.safetensors")
    for key, value in agent.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
