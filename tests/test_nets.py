"""The hand-written backward of MLP and ActorCritic.forward_for_update against autograd,
flatten_parameters keeping parameters, gradients and saved files as they were, its gradient clip
against torch's, and the rollouts' numpy sampler against the torch networks."""

import copy

import numpy as np
import pytest
import torch

from classic_rl import core
from classic_rl.fast_mlp import FlatAdam, clip_flat_grad_norm_, flatten_parameters, numpy_function
from classic_rl.nets import ActorCritic, load_agent, mlp, save_agent


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


ACTIONS = {"discrete": {"n_actions": 3}, "continuous": {"action_dim": 2}}


def some_actions(agent: ActorCritic, n: int) -> torch.Tensor:
    return agent.distribution.sample(agent.distribution.params(torch.randn(n, agent.distribution.head_dim, dtype=torch.float64)))


@pytest.mark.parametrize("actions", ACTIONS)
@pytest.mark.parametrize("shared", [False, True])
def test_forward_for_update_gives_autograds_gradients_of_the_whole_ppo_loss(shared, actions):
    torch.manual_seed(1)
    agent = ActorCritic(4, hidden_sizes=[8, 8], shared=shared, **ACTIONS[actions]).double()
    if actions == "continuous":
        with torch.no_grad():
            agent.distribution.log_std.fill_(-0.3)  # away from 0, so every term of the log-prob matters
    obs, actions = torch.randn(16, 4, dtype=torch.float64), some_actions(agent, 16)
    advantages, returns = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    old_logp = agent.distribution.log_prob(agent.policy_params(obs), actions).detach() + torch.randn(16, dtype=torch.float64)
    # ratios away from 1, so both branches of the clip are taken

    def ppo_loss(policy_params, value):  # every term that can reach the networks: clip, value and entropy bonus
        logp, entropy = agent.distribution.log_prob_and_entropy(policy_params, actions, entropy_grad=True)
        return (core.policy_loss(logp, old_logp, advantages, 0.2)[0] + 0.5 * core.value_loss(value, value.detach(), returns)
                - 0.01 * entropy.mean())

    hidden = agent.trunk(obs)
    ppo_loss(agent.distribution.params(agent.actor(hidden)), agent.critic(hidden).squeeze(-1)).backward()
    expected = {name: p.grad.clone() for name, p in agent.named_parameters()}
    agent.zero_grad(set_to_none=True)
    policy_params, value, backward = agent.forward_for_update(obs)
    backward(ppo_loss(policy_params, value))
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


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, and left alone
def test_clip_flat_grad_norm_matches_torchs_clip(max_norm):
    grad = torch.randn(300) * 0.3
    expected = grad.clone()
    param = torch.nn.Parameter(torch.zeros(300))
    param.grad = expected
    torch_norm = torch.nn.utils.clip_grad_norm_([param], max_norm)
    norm = clip_flat_grad_norm_(grad, max_norm)
    torch.testing.assert_close(norm, torch_norm, rtol=0, atol=0)
    torch.testing.assert_close(grad, param.grad, rtol=0, atol=0)
    assert (grad.norm() < norm) == (max_norm < norm)


def test_flat_adam_takes_torchs_adam_steps_and_shares_its_state_dict():
    torch.manual_seed(4)
    ours, theirs = (torch.nn.Parameter(torch.ones(50)) for _ in range(2))
    flat_adam = FlatAdam(ours, lr=0.01, eps=1e-5, betas=(0.8, 0.9))
    torch_adam = torch.optim.Adam([theirs], lr=0.01, eps=1e-5, betas=(0.8, 0.9), foreach=False)
    for step in range(5):
        ours.grad, theirs.grad = (torch.randn(50) * 10.0**-step,) * 2  # shrinking, so eps and both corrections matter
        for optimizer in (flat_adam, torch_adam):
            optimizer.param_groups[0]["lr"] = 0.01 / (step + 1)  # a schedule sets the lr in between
            optimizer.step()
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch_adam.load_state_dict(copy.deepcopy(flat_adam.state_dict()))  # a checkpoint of either loads into the other
    flat_adam.load_state_dict(copy.deepcopy(torch_adam.state_dict()))
    ours.grad = theirs.grad = torch.ones(50)
    flat_adam.step()
    torch_adam.step()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert flat_adam.state[ours]["step"].item() == 6


@pytest.mark.parametrize("actions", ACTIONS)
@pytest.mark.parametrize("shared,activation", [(False, "tanh"), (False, "relu"), (True, "tanh")])
def test_sampler_gives_the_torch_networks_log_probs_and_values(shared, activation, actions):
    torch.manual_seed(3)
    agent = ActorCritic(4, hidden_sizes=[16, 8], shared=shared, activation=activation, **ACTIONS[actions])
    obs = torch.randn(50, 4)
    action, logprob, value = agent.sampler()(obs.numpy())
    assert logprob.dtype == value.dtype == np.float32 and logprob.shape == (50,)
    assert (action.dtype, action.shape) == ((np.int64, (50,)) if actions == "discrete" else (np.float32, (50, 2)))
    _, want_logprob, _, want_value = agent.get_action_and_value(obs, torch.from_numpy(action))
    np.testing.assert_allclose(logprob, want_logprob.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(value, want_value.detach().numpy(), rtol=0, atol=1e-5)


def test_numpy_function_copies_the_weights_and_refuses_other_layers():
    net = mlp(3, [5], 2, out_std=1.0)
    forward, x = numpy_function(net), np.ones((1, 3), dtype=np.float32)
    before = forward(x)
    with torch.no_grad():
        net[0].weight.add_(1.0)  # a training step after the function was made
    np.testing.assert_array_equal(forward(x), before)
    assert not np.allclose(numpy_function(net)(x), before)
    with pytest.raises(TypeError, match="no numpy forward for GELU; accepted: Linear, Tanh, ReLU, Identity, Sequential"):
        numpy_function(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.GELU()))
