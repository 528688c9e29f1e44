"""classic_rl.core against numbers worked out by hand (the working is in the comments)."""

import math
import threading

import pytest
import torch

from classic_rl import core


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32), torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# ---- masked statistics ------------------------------------------------------------------------

def test_masked_mean_over_all_and_along_dim():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    close(core.masked_mean(x), 2.5)
    close(core.masked_mean(x, mask), 8 / 3)  # (1 + 3 + 4) / 3
    close(core.masked_mean(x, mask, dim=-1), [1.0, 3.5])
    close(core.masked_mean(x, torch.zeros_like(mask)), 0.0)  # nothing valid: 0, not NaN


def test_masked_mean_with_soft_weights_is_the_weighted_mean():
    x = t(2.0, 4.0, 10.0)
    close(core.masked_mean(x, t(0.25, 0.25, 0.0)), 3.0)  # (0.5 + 1) / 0.5, not / 1
    close(core.masked_mean(torch.stack([x, x]), torch.stack([t(0.5, 0.0, 0.0), t(0.0, 0.1, 0.3)]), dim=-1),
          [2.0, (0.4 + 3.0) / 0.4])
    x.requires_grad_(True)
    core.masked_mean(x, t(0.0, 0.0, 0.0)).backward()  # no weight at all: 0 and a finite gradient
    assert torch.isfinite(x.grad).all()


def test_masked_whiten_uses_valid_positions_only():
    x = t(1, 2, 3, 100)  # the 100 is padding and must not move the statistics
    mask = t(1, 1, 1, 0)
    # mean 2, sample var (1 + 0 + 1) / (3 - 1) = 1  ->  (x - 2) / sqrt(1), as TRL's masked_whiten and torch.std
    s = 1.0
    close(core.masked_whiten(x, mask), [-s, 0.0, s, 0.0])
    close(core.masked_whiten(x, mask, shift_mean=False), [2 - s, 2.0, 2 + s, 0.0])
    close(core.masked_whiten(t(1, 2, 3)), [-s, 0.0, s])


def in_two_processes(work):
    """work(process_index, total) run in two threads whose total(value) is an all-reduce: it returns the sum of the
    values both threads pass in the same call; [process 0's result, process 1's]."""
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def total_of(index):
        def total(value):
            slots[index] = value
            barrier.wait()
            summed = slots[0] + slots[1]
            barrier.wait()  # both have read the slots before either writes the next call's
            return summed
        return total

    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, work(i, total_of(i)))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_masked_whiten_over_processes_uses_the_statistics_of_every_processs_values():
    """Process 0 holds 1, 2 (and padding), process 1 holds 6, 3: together mean 3, squared deviations 4, 1, 9, 0, sample
    variance 14 / 3, which each process applies to its own values."""
    shares = [(t(1, 2, 100), t(1, 1, 0)), (t(6, 100, 3), t(1, 0, 1))]
    whitened = in_two_processes(lambda i, total: core.masked_whiten(*shares[i], total=total))
    std = (14 / 3) ** 0.5
    close(whitened[0], [(1 - 3) / std, (2 - 3) / std, 0.0])
    close(whitened[1], [(6 - 3) / std, 0.0, 0.0])


# ---- returns and advantages -------------------------------------------------------------------

def test_gae_by_hand_with_episode_end_and_bootstrap():
    # gamma = lam = 0.5; an episode ends after t=1, the rollout is cut after t=2 (bootstrap V=2).
    rewards, values, dones = t(1, 2, 3), t(0.5, 1.0, 1.5), t(0, 1, 0)
    # next values [1.0, 1.5, 2.0]
    # delta0 = 1 + .5*1.0 - .5 = 1.0;  delta1 = 2 + 0 - 1.0 = 1.0;  delta2 = 3 + .5*2 - 1.5 = 2.5
    # A2 = 2.5;  A1 = 1.0 (done: nothing flows back);  A0 = 1.0 + .25 * 1.0 = 1.25
    adv, ret = core.gae(rewards, values, dones, torch.tensor(2.0), gamma=0.5, lam=0.5)
    close(adv, [1.25, 1.0, 2.5])
    close(ret, [1.75, 2.0, 4.0])  # A + V


def test_gae_batches_along_last_axis():
    # Row 1 as above; row 2 terminates at its last step, so its last_value=5 is ignored.
    rewards = torch.stack([t(1, 2, 3), t(0, 0, 1)])
    values = torch.stack([t(0.5, 1.0, 1.5), t(0, 0, 0)])
    dones = torch.stack([t(0, 1, 0), t(0, 0, 1)])
    adv, _ = core.gae(rewards, values, dones, t(2, 5), gamma=0.5, lam=0.5)
    # row 2: deltas [0, 0, 1] -> A = [.0625, .25, 1]
    close(adv, [[1.25, 1.0, 2.5], [0.0625, 0.25, 1.0]])


def test_gae_with_lambda_one_is_monte_carlo_return_minus_value():
    rewards, values, dones = t(1, 1, 1), t(0.3, -0.2, 0.7), t(0, 0, 1)
    adv, ret = core.gae(rewards, values, dones, torch.tensor(9.0), gamma=0.9, lam=1.0)
    mc = t(1 + 0.9 + 0.81, 1 + 0.9, 1)
    close(ret, mc)
    close(adv, mc - values)


def test_discounted_returns_restart_after_episode_end():
    # gamma 0.9, episode ends after t=1:  G = [1 + .9*1, 1, 1 + .9*1, 1]
    close(core.discounted_returns(t(1, 1, 1, 1), t(0, 1, 0, 0), gamma=0.9), [1.9, 1.0, 1.9, 1.0])
    bool_dones = torch.tensor([False, True, False, False])  # the dtype envs hand back
    close(core.discounted_returns(t(1, 1, 1, 1), bool_dones, gamma=0.9), [1.9, 1.0, 1.9, 1.0])
    close(core.discounted_returns(t(2.5), t(1), gamma=0.9), [2.5])  # a one-step episode


# ---- losses -----------------------------------------------------------------------------------

RATIOS, ADV = t(1.5, 0.5, 1.0, 1.1), t(1, 1, -2, -1)
# clip 0.2, per position -min(rho*A, clip(rho)*A):
#   rho 1.5, A  1: min(1.5, 1.2) -> -1.2 (clipped branch active)
#   rho 0.5, A  1: min(0.5, 0.8) -> -0.5 (not clipped: gradient still pushes rho up)
#   rho 1.0, A -2: -2            ->  2.0
#   rho 1.1, A -1: -1.1          ->  1.1
PER_POSITION = t(-1.2, -0.5, 2.0, 1.1)


def policy_loss(**kwargs):
    return core.policy_loss(torch.log(RATIOS), torch.zeros(4), ADV, **kwargs)


def test_policy_loss_clipped_objective_and_stats():
    loss, stats = policy_loss(clip_low=0.2)
    close(loss, PER_POSITION.mean())  # 0.35
    close(stats["clipfrac"], 0.25)
    # approx_kl = mean((rho - 1) - log rho)
    close(stats["approx_kl"], ((RATIOS - 1) - torch.log(RATIOS)).mean())
    close(stats["approx_kl"], (0.5 - math.log(1.5) + (-0.5 - math.log(0.5)) + 0 + 0.1 - math.log(1.1)) / 4)
    close(stats["ratio_mean"], 1.025)


def test_policy_loss_clip_higher_lets_positive_advantages_move_further():
    loss, stats = policy_loss(clip_low=0.2, clip_high=0.6)
    close(loss, (-1.5 - 0.5 + 2.0 + 1.1) / 4)  # rho 1.5 < 1.6 is no longer clipped
    close(stats["clipfrac"], 0.0)


def test_policy_loss_mask_and_aggregations():
    mask = t(1, 1, 0, 1)
    loss, stats = policy_loss(clip_low=0.2, mask=mask)
    close(loss, (-1.2 - 0.5 + 1.1) / 3)
    close(stats["clipfrac"], 1 / 3)
    # As two sequences of two tokens: [[-1.2, -0.5], [pad, 1.1]]
    logp, adv, mask2 = torch.log(RATIOS).view(2, 2), ADV.view(2, 2), mask.view(2, 2)
    for agg, expected in [("token", -0.2), ("seq", (-0.85 + 1.1) / 2), ("seq-mean-token-sum", (-1.7 + 1.1) / 2)]:
        loss, _ = core.policy_loss(logp, torch.zeros(2, 2), adv, 0.2, mask=mask2, agg=agg)
        close(loss, expected)
    with pytest.raises(ValueError, match="accepted: token, seq, seq-mean-token-sum"):
        core.policy_loss(logp, torch.zeros(2, 2), adv, 0.2, agg="sequence")


def test_policy_loss_gradient_is_zero_where_clipped():
    logp = torch.log(RATIOS).requires_grad_()
    loss, _ = core.policy_loss(logp, torch.zeros(4), ADV, 0.2)
    loss.backward()
    # d/dlogp of -rho*A/4 = -rho*A/4 where unclipped; 0 at the clipped position 0.
    close(logp.grad, [0.0, -0.5 / 4, 2.0 / 4, 1.1 / 4])


def test_value_loss_plain_and_clipped():
    values, old, returns = t(1.0, 2.0), t(0.0, 2.0), t(2.0, 0.0)
    # plain: 0.5 * mean((1-2)^2, (2-0)^2) = 0.5 * 2.5
    close(core.value_loss(values, old, returns), 1.25)
    # clip 0.5: V0 clipped to 0 + 0.5 -> (0.5-2)^2 = 2.25 > 1;  V1 unchanged -> 4
    close(core.value_loss(values, old, returns, clip=0.5), 0.5 * (2.25 + 4) / 2)
    close(core.value_loss(values, old, returns, clip=0.5, mask=t(0, 1)), 0.5 * 4)


# ---- distributions ----------------------------------------------------------------------------

def test_entropy_and_logprobs_from_logits():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # probs [.5, .5] and [.25, .75]
    close(core.entropy_from_logits(logits), [math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    close(core.entropy_from_logits(logits, mask=t(1, 0)), [math.log(2), 0.0])
    close(core.logprobs_from_logits(logits, torch.tensor([0, 1])), [math.log(0.5), math.log(0.75)])


def test_logprobs_and_entropy_share_one_log_softmax():
    """The same values as the two functions apart; the log-probs carry the gradient, the entropy none."""
    logits = torch.tensor([[0.0, 0.0, -1.0], [0.0, math.log(3.0), 2.0]], requires_grad=True)
    actions, mask = torch.tensor([2, 1]), t(1, 0)
    logp, entropy = core.logprobs_and_entropy(logits, actions, mask)
    z = 2 + math.exp(-1)  # row 0: probs [1, 1, e^-1] / z
    close(logp, [-1 - math.log(z), 0.0])
    close(entropy, [math.log(z) + math.exp(-1) / z, 0.0])
    close(core.logprobs_and_entropy(logits, actions)[1], core.entropy_from_logits(logits.detach()))
    assert not entropy.requires_grad
    logp.sum().backward()
    close(logits.grad, [[-1 / z, -1 / z, 1 - math.exp(-1) / z], [0.0, 0.0, 0.0]])  # onehot - softmax, masked row 0


def test_logprobs_and_entropy_with_entropy_grad_gives_the_entropy_bonus_its_gradient():
    """dH/dz_i = -p_i (log p_i + H): for probs [1, 1, e^-1] / z the third logit's gradient differs."""
    logits = torch.tensor([[0.0, 0.0, -1.0]], requires_grad=True)
    _, entropy = core.logprobs_and_entropy(logits, torch.tensor([0]), entropy_grad=True)
    entropy.sum().backward()
    z = 2 + math.exp(-1)
    probs, entropy_value = [1 / z, 1 / z, math.exp(-1) / z], math.log(z) + math.exp(-1) / z
    close(logits.grad, [[-p * (math.log(p) + entropy_value) for p in probs]])


def test_token_logprobs_by_hand_at_a_temperature():
    """At temperature 0.5 the logits [0, 0, -1] become [0, 0, -2]: probs [1, 1, e^-2] / z; d logp / d logits is
    (onehot - softmax) / temperature, and the masked row holds 0 with no gradient."""
    logits = torch.tensor([[0.0, 0.0, -1.0], [0.0, math.log(3.0), 2.0]], requires_grad=True)
    tokens, mask = torch.tensor([2, 1]), t(1, 0)
    logp, entropy = core.token_logprobs_and_entropy(logits, tokens, mask, temperature=0.5)
    z = 2 + math.exp(-2)
    close(logp, [-2 - math.log(z), 0.0])
    close(entropy, [math.log(z) + 2 * math.exp(-2) / z, 0.0])
    assert not entropy.requires_grad
    logp.sum().backward()
    close(logits.grad, [[-2 / z, -2 / z, 2 * (1 - math.exp(-2) / z)], [0.0, 0.0, 0.0]])


def test_kl_estimators_by_hand():
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.0)  # x = ref - logp = [-0.5, 1.0]
    close(core.kl_estimate(logp, ref, "k1"), [0.5, -1.0])
    close(core.kl_estimate(logp, ref, "k2"), [0.125, 0.5])
    close(core.kl_estimate(logp, ref, "k3"), [math.exp(-0.5) - 1 + 0.5, math.e - 2])
    close(core.kl_estimate(logp, logp, "k3"), [0.0, 0.0])  # identical policies: exactly 0
    with pytest.raises(ValueError, match="accepted: k1, k2, k3"):
        core.kl_estimate(logp, ref, "k4")


def test_kl_mask_zeroes_padding_even_when_it_holds_inf():
    logp, ref = t(-1.0, -float("inf")), t(-1.5, 0.0)
    kl = core.kl_estimate(logp, ref, "k3", mask=torch.tensor([True, False]))
    close(kl, [math.exp(-0.5) - 0.5, 0.0])


def test_explained_variance():
    target = t(1, 2, 3)
    close(core.explained_variance(target, target), 1.0)
    close(core.explained_variance(t(2, 2, 2), target), 0.0)
    assert torch.isnan(core.explained_variance(target, t(5, 5, 5)))


def test_kl_estimate_defaults_to_k1_and_a_sum_aggregation_needs_no_mask():
    logp, ref = t(-1.0, -2.0), t(-1.5, -1.0)
    close(core.kl_estimate(logp, ref), [0.5, -1.0])  # k1 = logp - ref
    close(core.aggregate(torch.stack([t(1, 2), t(3, 4)]), None, "seq-mean-token-sum"), 5.0)  # (3 + 7) / 2


def test_policy_loss_counts_no_clipping_where_the_advantage_is_zero():
    # a GRPO group with equal rewards has advantage 0: its gradient is 0 either way, and no branch is "clipped"
    _, stats = core.policy_loss(torch.log(t(0.5, 1.5)), t(0.0, 0.0), t(0.0, 0.0), 0.2)
    close(stats["clipfrac"], 0.0)
    # masked positions count in none of the statistics
    _, stats = core.policy_loss(torch.log(t(1.1, 3.0)), t(0.0, 0.0), t(1.0, 1.0), 0.2, mask=t(1, 0))
    close(stats["ratio_mean"], 1.1)
    close(stats["approx_kl"], 0.1 - math.log(1.1))


def test_aggregate_defaults_to_the_token_mean_and_reduces_the_last_axis():
    x = torch.arange(12.0).view(2, 2, 3)  # [batch, sequences, tokens]
    close(core.aggregate(x), 5.5)
    close(core.aggregate(x, None, "seq"), 5.5)
    close(core.aggregate(x, None, "seq-mean-token-sum"), x.sum(-1).mean())
    close(core.aggregate(t(1, 2, 3), t(1, 1, 0), "seq"), 1.5)


def test_masked_whiten_of_a_constant_is_zero_not_nan():
    close(core.masked_whiten(t(2, 2, 2)), [0.0, 0.0, 0.0])


def test_masked_var_population_and_sample_and_a_single_valid_position():
    x, mask = t(1, 2, 6, 50), t(1, 1, 1, 0)  # mean 3; squared deviations 4, 1, 9: sum 14
    close(core.masked_var(x, mask), 14 / 3)
    close(core.masked_var(x, mask, unbiased=True), 14 / 2)
    close(core.masked_var(t(1, 2, 6), unbiased=True), torch.tensor([1.0, 2.0, 6.0]).var())  # torch's std is the sample one
    close(core.masked_var(x, t(0, 0, 1, 0), unbiased=True), 0.0)  # one valid value: no sample variance, not a NaN
    close(core.masked_whiten(t(5, 7), t(1, 0)), [0.0, 0.0])


@pytest.mark.parametrize("kl, beta_after", [(0.0151, 2.0), (0.015, 1.0), (0.01, 1.0), (0.0067, 1.0), (0.0066, 0.5)])
def test_the_doubling_kl_rule_of_the_ppo_paper(kl, beta_after):
    controller = core.KLController(1.0, target=0.01, rule="doubling")
    controller.update(kl, n_steps=123)  # the doubling rule ignores how many samples the KL came from
    assert controller.value == beta_after


def test_kl_controller_without_a_target_is_fixed_and_an_unknown_rule_is_refused():
    fixed = core.KLController(0.3, rule="doubling")
    fixed.update(10.0)
    assert fixed.value == 0.3
    with pytest.raises(ValueError, match="unknown KL controller rule 'pid'; accepted: proportional, doubling"):
        core.KLController(1.0, 0.01, rule="pid")


def test_the_adaptive_entropy_coefficient_of_skywork_or1_by_hand():
    """Target 0.2, step 0.05, bounds [0, 0.12]: no bonus before a measurement; below the target the coefficient rises (to
    its bound) and is applied; above it, it falls (to its bound) and is not. Its state round-trips."""
    control = core.EntropyController(0.1, adaptive=True, target=0.2, delta=0.05, coef_max=0.12)
    assert control.enabled and control.applied == 0.0
    control.update(0.15)
    assert (control.value, control.applied) == (pytest.approx(0.12), pytest.approx(0.12))
    control.update(0.5)
    assert (control.value, control.applied) == (pytest.approx(0.07), 0.0)
    control.update(0.9)
    control.update(0.9)
    assert control.value == 0.0 and control.enabled  # at its floor it stays on, to rise when entropy falls again
    again = core.EntropyController(0.1, adaptive=True)
    again.load_state_dict(control.state_dict())
    assert again.state_dict() == {"value": 0.0, "last_entropy": 0.9}
    fixed = core.EntropyController(0.01)
    fixed.update(0.0)
    assert (fixed.value, fixed.applied) == (0.01, 0.01) and not core.EntropyController(0.0).enabled

