"""GRPO's loss: TRL's four aggregations by hand, and grpo_update against GRPO written out plainly."""

import copy

import pytest
import torch
from accelerate import Accelerator

from classic_rl import core
from rlhf_toy.algorithms.grpo import GRPOConfig, grpo_loss, grpo_update
from rlhf_toy.generation.rollout import completion_logits
from rlhf_toy.lm.models import position_ids
from tests.conftest import clipped_sgd_step, largest_difference

# four completions of 3, 1, 2 and 1 tokens (7 in all); per-token losses, 0 on padding
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [2.0, 2.0, 0.0], [6.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
FIRST, SECOND = slice(0, 2), slice(2, 4)  # two minibatches, or two processes' shares


def loss(part, loss_type, dapo_normaliser=None):
    return grpo_loss(PER_TOKEN[part], MASK[part], loss_type, max_completion_length=3, dapo_normaliser=dapo_normaliser).item()


def test_grpo_and_dr_grpo_by_hand_on_two_minibatches():
    # grpo: sequence means [2, 4] -> 3;  [2, 6] -> 4
    assert (loss(FIRST, "grpo"), loss(SECOND, "grpo")) == pytest.approx((3.0, 4.0))
    # dr_grpo: token sums 10 and 10 over 2 sequences x max_completion_length 3
    assert (loss(FIRST, "dr_grpo"), loss(SECOND, "dr_grpo")) == pytest.approx((10 / 6, 10 / 6))


def test_bnpo_is_a_token_mean_per_minibatch_and_dapo_weighs_every_token_of_the_batch_alike():
    # bnpo: (1 + 2 + 3 + 4) / 4 and (2 + 2 + 6) / 3: a token of the short second minibatch weighs more
    assert (loss(FIRST, "bnpo"), loss(SECOND, "bnpo")) == pytest.approx((2.5, 10 / 3))
    # dapo, 2 minibatches in 1 process: normaliser 7 tokens / (1 * 2) = 3.5; the two steps add up to 2 x the token mean
    two_minibatches = [loss(part, "dapo", torch.tensor(7 / 2)) for part in (FIRST, SECOND)]
    assert two_minibatches == pytest.approx([10 / 3.5, 10 / 3.5]) and sum(two_minibatches) / 2 == pytest.approx(20 / 7)


def test_with_two_processes_ddp_averages_to_the_batch_token_mean_for_dapo_only():
    # process 0 holds FIRST, process 1 SECOND, one minibatch each; DDP averages their losses' gradients
    dapo = [loss(part, "dapo", torch.tensor(7 / (2 * 1))) for part in (FIRST, SECOND)]
    assert sum(dapo) / 2 == pytest.approx(20 / 7)  # the token mean of the whole batch
    bnpo = [loss(part, "bnpo") for part in (FIRST, SECOND)]
    assert sum(bnpo) / 2 == pytest.approx((2.5 + 10 / 3) / 2)  # a mean of per-process token means, as TRL's bnpo


def test_an_unknown_loss_type_names_the_accepted_ones():
    with pytest.raises(ValueError, match="accepted: grpo, dapo, bnpo, dr_grpo"):
        loss(FIRST, "ppo")


# ---- grpo_update against a plain re-derivation ----------------------------------------------------

def plain_logprobs(model, rollout, rows, temperature=1.0):
    """Log-probs `[b, C]` of the rollout's completions of rows, from one plain forward pass of model."""
    ids, attention, prompt = rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_length
    out = model(input_ids=ids, attention_mask=attention, position_ids=position_ids(attention))
    return (out.logits[:, prompt - 1: -1] / temperature).log_softmax(-1).gather(-1, ids[:, prompt:, None]).squeeze(-1), out


def plain_grpo(policy, reference, rollout, rewards, cfg, lr):
    """GRPO written out from the papers and TRL's formulas, with full forward passes and gradient-norm-clipped
    SGD steps in the same minibatch order; returns the updated copy of policy and the metrics it expects. The old
    log-probs are the policy's before the update (with one gradient step, the same forward's, detached), the
    reference's from its own forward."""
    model = copy.deepcopy(policy)
    params = list(model.parameters())
    with torch.no_grad():
        old_logprobs, ref_logprobs = (plain_logprobs(m, rollout, slice(None), cfg.temperature)[0] for m in (policy, reference))
    single_step = cfg.num_iterations * cfg.num_minibatches == 1
    mask = rollout.completion_mask.clone()
    if cfg.mask_truncated_completions:
        mask = mask * (~rollout.is_truncated).float()[:, None]
    grouped = rewards.view(-1, cfg.num_generations)
    scale = {"group": grouped.std(1, keepdim=True) + 1e-4, "batch": rewards.std() + 1e-4, "none": 1.0}[cfg.scale_rewards]
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / scale).view(-1)
    high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    seen = {key: [] for key in ("loss", "kl", "entropy", "approx_kl", "clip_ratio")}
    for _ in range(cfg.num_iterations):
        for mb in torch.randperm(len(rewards)).split(len(rewards) // cfg.num_minibatches):
            logp, out = plain_logprobs(model, rollout, mb, cfg.temperature)
            ratio = torch.exp(logp - (logp.detach() if single_step else old_logprobs[mb]))
            adv = advantages[mb, None]
            clipped_objective = -torch.minimum(ratio * adv, ratio.clamp(1 - cfg.epsilon, 1 + high) * adv)
            log_ref_over_pi = ref_logprobs[mb] - logp
            k3 = torch.exp(log_ref_over_pi) - log_ref_over_pi - 1
            per_token = clipped_objective + cfg.beta * k3 * (ratio if cfg.use_bias_correction_kl else 1.0)
            m = mask[mb]
            total = (per_token * m).sum()
            loss = {"grpo": ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean(),
                    "bnpo": total / m.sum(),
                    "dr_grpo": total / (len(mb) * cfg.max_completion_length),
                    "dapo": total / (mask.sum() / cfg.num_minibatches)}[cfg.loss_type]
            probs = out.logits[:, rollout.prompt_length - 1: -1].softmax(-1)
            clipped = ((ratio < 1 - cfg.epsilon) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))
            for key, per_position in (("kl", torch.exp(log_ref_over_pi) - log_ref_over_pi - 1), ("approx_kl", ratio - 1 - ratio.log()),
                                      ("entropy", -(probs * probs.clamp(min=1e-30).log()).sum(-1)), ("clip_ratio", clipped.float())):
                seen[key].append(((per_position * m).sum() / m.sum()).item())
            seen["loss"].append(loss.item())
            clipped_sgd_step(loss, params, lr, cfg.max_grad_norm)
    return model, {key: sum(values) / len(values) for key, values in seen.items()}


@pytest.fixture(scope="module")
def grpo_setup(policy_reference_rollout):
    """(policy, rollout, reference, rewards)."""
    return (*policy_reference_rollout, torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 1.0, 0.3, 0.9]))


@pytest.mark.parametrize("case", [
    dict(loss_type="grpo", num_minibatches=2),
    dict(loss_type="bnpo", num_minibatches=2),
    dict(loss_type="dr_grpo", num_minibatches=2),
    dict(loss_type="dapo", num_minibatches=2),
    dict(loss_type="dapo", num_minibatches=1, num_iterations=3, epsilon=0.05, epsilon_high=0.3),
    dict(loss_type="grpo", num_minibatches=1, num_iterations=2, mask_truncated_completions=True, max_grad_norm=1.0, lr=0.3),
    dict(loss_type="dapo", num_minibatches=2, scale_rewards="batch"),
    dict(loss_type="dr_grpo", num_minibatches=1, scale_rewards="none"),
    dict(loss_type="dapo", num_minibatches=2, num_iterations=2, use_bias_correction_kl=False),
], ids=["grpo", "bnpo", "dr_grpo", "dapo", "dapo-3-iterations-clip-higher", "grpo-truncated-masked-grad-clipped",
        "dapo-batch-scaled", "dr_grpo-unscaled", "dapo-2-iterations-plain-kl"])
def test_grpo_update_equals_grpo_written_out(case, grpo_setup):
    """Without gradient clipping (which would hide a wrong scale) unless the case asks for it."""
    policy, rollout, reference, rewards = grpo_setup
    case = {"max_grad_norm": 1e9, "lr": 0.05, **case}
    lr = case.pop("lr")
    cfg = GRPOConfig(num_generations=4, prompts_per_step=2, max_completion_length=10, beta=0.1, **case)
    torch.manual_seed(1)
    expected, expected_metrics = plain_grpo(policy, reference, rollout, rewards, cfg, lr)
    model = copy.deepcopy(policy)
    torch.manual_seed(1)  # the same minibatch order
    metrics = grpo_update(model, reference, torch.optim.SGD(model.parameters(), lr=lr), Accelerator(cpu=True), rollout, rewards, cfg)
    change, error = largest_difference(expected, policy), largest_difference(model, expected)
    assert change > 1e-3 and error < 1e-4 * change, (change, error)
    for key, value in expected_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert metrics["kl"] > 0.01
    if case.get("num_iterations", 1) > 1:
        assert metrics["clip_ratio"] > 0  # later iterations see ratios outside the clip range


def test_the_kl_term_pulls_the_policy_towards_the_reference(grpo_setup):
    policy, rollout, reference, _ = grpo_setup
    equal_rewards = torch.zeros(8)  # no advantage: the KL term alone moves the policy
    cfg = GRPOConfig(num_generations=4, prompts_per_step=2, max_completion_length=10, beta=1.0)
    model = copy.deepcopy(policy)
    grpo_update(model, reference, torch.optim.SGD(model.parameters(), lr=0.2), Accelerator(cpu=True), rollout, equal_rewards, cfg)
    assert kl_to_reference(model, rollout) < kl_to_reference(policy, rollout) - 1e-3


def kl_to_reference(model, rollout):
    """Mean k3 KL of model's token log-probs to the reference's over the rollout's valid tokens."""
    with torch.no_grad():
        logits = completion_logits(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_length)
        logp = core.logprobs_from_logits(logits, rollout.completion_ids, rollout.completion_mask)
        return core.masked_mean(core.kl_estimate(logp, rollout.ref_logprobs, "k3"), rollout.completion_mask).item()


def test_grpo_without_a_reference_has_no_kl_term(grpo_setup):
    policy, rollout, _, rewards = grpo_setup
    cfg = GRPOConfig(num_generations=4, prompts_per_step=2, max_completion_length=10, beta=0.0)
    model = copy.deepcopy(policy)
    metrics = grpo_update(model, None, torch.optim.SGD(model.parameters(), lr=0.01), Accelerator(cpu=True), rollout, rewards, cfg)
    assert "kl" not in metrics and metrics["grad_norm"] > 0
