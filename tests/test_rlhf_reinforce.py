"""RLOO and REINFORCE++(-baseline): their advantages worked by hand, their configs' bad input, and one update of each
raising the log-prob of the better completion. (RLOO's advantages and loss against TRL's code: test_trl_parity.py.)"""

import copy

import pytest
import torch
from accelerate import Accelerator

from classic_rl.infra.errors import ConfigError
from rlhf_toy.algorithms.reinforce_pp import (
    ReinforcePPConfig,
    reinforce_advantages,
    reinforce_pp_update,
    shaped_rewards,
)
from rlhf_toy.algorithms.rloo import RLOOConfig, leave_one_out_advantages, rloo_advantages, rloo_update
from rlhf_toy.generation.rollout import sample_rollout
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer
from tests.test_rlhf import sequence_logprobs


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_the_leave_one_out_baseline_by_hand():
    # groups of 3: [1, 0, .5] -> baselines .25, .75, .5; [3, 1, 2] -> 1.5, 2.5, 2
    advantages = leave_one_out_advantages(t(1, 0, 0.5, 3, 1, 2), 3)
    torch.testing.assert_close(advantages, t(0.75, -0.75, 0.0, 1.5, -1.5, 0.0))


def test_rloo_takes_the_kl_from_the_reward_then_clips_nothing_after_it():
    """Rewards clipped to [0, 2] first (3 -> 2), then beta * summed KL taken off: [2 - .5, 0 - (-.5)] -> +-0.5 each."""
    cfg = RLOOConfig(num_generations=2, prompts_per_step=1, beta=0.5, reward_clip_range=[0.0, 2.0])
    advantages = rloo_advantages(Accelerator(cpu=True), t(3.0, 0.0), t(1.0, -1.0), cfg)
    torch.testing.assert_close(advantages, t(1.0, -1.0))
    whitened = rloo_advantages(Accelerator(cpu=True), t(3.0, 0.0), t(1.0, -1.0), RLOOConfig(
        num_generations=2, prompts_per_step=1, beta=0.5, reward_clip_range=[0.0, 2.0], normalize_advantages=True))
    torch.testing.assert_close(whitened, t(1.0, -1.0) / (2 ** 0.5 + 1e-4))  # the sample std of [1, -1] is sqrt(2)


def test_reinforce_pp_baseline_advantages_by_hand():
    """One group of 2 (rewards 1, 0 -> 0.5, -0.5 after the group mean), KL coefficient 0.5, gamma 1; the second completion
    is a token shorter (its padding's KL of 9 must not count):
        token rewards  [-.05, -.1, .05 + .5]  and  [-.15, 0 - .5]
        returns        [.4, .45, .55]         and  [-.65, -.5]
    whitened over the 5 tokens: mean .05, sample variance 1.325 / 4."""
    cfg = ReinforcePPConfig(num_generations=2, prompts_per_step=1, init_kl_coef=0.5)
    mask, kl = t([1, 1, 1], [1, 1, 0]), t([0.1, 0.2, -0.1], [0.3, 0.0, 9.0])
    rewards = shaped_rewards(Accelerator(cpu=True), t(1.0, 0.0), cfg)
    torch.testing.assert_close(rewards, t(0.5, -0.5))
    expected = (t([0.4, 0.45, 0.55], [-0.65, -0.5, 0.05]) - 0.05) / (1.325 / 4) ** 0.5 * mask
    torch.testing.assert_close(reinforce_advantages(rewards, kl, mask, cfg), expected, atol=1e-6, rtol=0)


def test_reinforce_pp_discounts_the_returns_and_keeps_the_raw_reward_without_a_baseline():
    """advantage_estimator reinforce, gamma 0.5, the reward clipped to [-1, 0.8]: returns [.1125, .325, .85] and [-.15, 0]."""
    cfg = ReinforcePPConfig(advantage_estimator="reinforce", num_generations=2, prompts_per_step=1, init_kl_coef=0.5,
                            gamma=0.5, reward_clip_range=[-1.0, 0.8])
    mask, kl = t([1, 1, 1], [1, 1, 0]), t([0.1, 0.2, -0.1], [0.3, 0.0, 9.0])
    rewards = shaped_rewards(Accelerator(cpu=True), t(1.0, 0.0), cfg)
    torch.testing.assert_close(rewards, t(0.8, 0.0))
    returns = t([-0.05 + 0.5 * (-0.1 + 0.5 * 0.85), -0.1 + 0.5 * 0.85, 0.85], [-0.15, 0.0, 0.0])
    valid = returns[mask.bool()]
    expected = (returns - valid.mean()) / valid.std() * mask
    torch.testing.assert_close(reinforce_advantages(rewards, kl, mask, cfg), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("config, fields, message", [
    (RLOOConfig, dict(num_generations=1), "RLOO's baseline is the mean of the other completions"),
    (RLOOConfig, dict(reward_clip_range=[1.0, 0.0]), r"--reward-clip-range takes two numbers, min <= max, got \[1.0, 0.0\]"),
    (ReinforcePPConfig, dict(num_generations=1), "--advantage-estimator reinforce_baseline subtracts the mean"),
    (ReinforcePPConfig, dict(kl_estimator="k4"), "unknown --kl-estimator 'k4'; accepted: k1, k2, k3"),
    (ReinforcePPConfig, dict(gamma=1.5), r"--gamma must be in \[0, 1\], got 1.5"),
])
def test_bad_settings_are_one_line_errors(config, fields, message):
    with pytest.raises(ConfigError, match=message):
        config(**fields)


@pytest.mark.parametrize("algo", ["rloo", "reinforce_pp"])
def test_one_update_raises_the_logprob_of_the_better_completion(algo, nano_dir):
    policy, tokenizer = load_model(nano_dir), load_tokenizer(nano_dir)
    torch.manual_seed(2)
    rollout = sample_rollout(policy, tokenizer, ["Describe a fox."] * 2, SamplingConfig(max_new_tokens=16))
    before = sequence_logprobs(policy, rollout)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    if algo == "rloo":
        cfg = RLOOConfig(num_generations=2, prompts_per_step=1, max_completion_length=16)
        metrics = rloo_update(policy, copy.deepcopy(policy), optimizer, Accelerator(cpu=True), rollout, t(1.0, 0.0), cfg)
    else:
        cfg = ReinforcePPConfig(num_generations=2, prompts_per_step=1, max_completion_length=16)
        metrics = reinforce_pp_update(policy, copy.deepcopy(policy), optimizer, Accelerator(cpu=True), rollout, t(1.0, 0.0), cfg)
    after = sequence_logprobs(policy, rollout)
    assert after[0] > before[0] and after[1] < before[1]
    assert metrics["kl"] == metrics["approx_kl"] == metrics["clip_ratio"] == 0.0 and metrics["ratio_mean"] == 1.0
