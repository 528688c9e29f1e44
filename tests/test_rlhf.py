"""RLHF: rollouts, GRPO's math and update, the training loop end to end, and bad input."""

import copy
import functools
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator

from classic_rl import core
from classic_rl.core import KLController
from classic_rl.infra.errors import ConfigError, TrainingInterrupted
from rlhf_toy import online
from rlhf_toy.algorithms import config_for
from rlhf_toy.algorithms.base import RLHFConfig
from rlhf_toy.algorithms.grpo import GRPOConfig, gdpo_advantages, group_advantages, grpo_update
from rlhf_toy.algorithms.ppo import (
    PPOConfig,
    advantages_and_returns,
    build_critic,
    logits_and_values,
    ppo_update,
)
from rlhf_toy.evaluation import evaluate_on_prompts
from rlhf_toy.generation.fast_forward import length_groups
from rlhf_toy.generation.rollout import (
    completion_logits,
    completion_logprobs,
    completion_mask_from_ids,
    sample_rollout,
)
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer, position_ids
from rlhf_toy.online import train
from rlhf_toy.rewards.functions import resolve_reward
from tests.conftest import ROOT, comparable_metrics, kill_after_first_checkpoint, run_script, step_rows


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 3.0, 1.0])  # groups of 2: [1,0] [.5,.5] [3,1]
    adv, frac_zero = group_advantages(rewards, 2, "none")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, -1.0]))
    assert frac_zero.item() == pytest.approx(1 / 3)
    adv, _ = group_advantages(rewards, 2, "group")
    # unbiased std of [1,0] is sqrt(.5), of [3,1] sqrt(2): both give +-sqrt(.5); an equal group stays 0 (eps keeps 0/0 away)
    s = 0.5 ** 0.5
    torch.testing.assert_close(adv, torch.tensor([s, -s, 0.0, 0.0, s, -s]), atol=1e-3, rtol=0)
    adv, _ = group_advantages(rewards, 2, "batch", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, -1.0]) / rewards.std())
    with pytest.raises(ValueError, match="unknown scale_rewards 'token'; accepted: group, batch, none"):
        group_advantages(rewards, 2, "token")


def test_gdpo_keeps_the_weight_of_each_reward_that_group_scaling_of_the_sum_removes():
    """Two groups of 2, rewards weighted 0.8 and 0.2: the first group differs only in reward 1, the second only in reward 2.
    Scaling the weighted sum by its group's std gives both groups +-sqrt(.5); GDPO normalises each reward in its group
    (+-sqrt(.5), the equal reward 0), sums them weighted (+-0.8 sqrt(.5), +-0.2 sqrt(.5)) and whitens that over the batch
    (unbiased std sqrt(0.68 / 3)), so the heavier reward moves its group four times as far."""
    per_func = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    weights = torch.tensor([0.8, 0.2])
    summed, _ = group_advantages((per_func * weights).sum(1), 2, "group")
    s = 0.5 ** 0.5
    torch.testing.assert_close(summed, torch.tensor([s, -s, s, -s]), atol=1e-3, rtol=0)
    adv, frac_zero = gdpo_advantages(per_func, weights, 2)
    expected = torch.tensor([0.8 * s, -0.8 * s, 0.2 * s, -0.2 * s]) / (0.68 / 3) ** 0.5
    torch.testing.assert_close(adv, expected, atol=1e-3, rtol=0)
    assert frac_zero.item() == 0.0
    _, frac_zero = gdpo_advantages(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), weights, 2)
    assert frac_zero.item() == 0.5  # the first group: no reward differs


def test_completion_mask_stops_after_the_first_of_any_eos_id():
    eos, end_of_turn = 9, 7
    ids = torch.tensor([[4, 5, eos, 3, 3], [4, eos, eos, 3, 3], [1, 2, 3, 4, 5], [1, end_of_turn, eos, 4, 5]])
    mask, truncated = completion_mask_from_ids(ids, [eos, end_of_turn])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert truncated.tolist() == [False, False, True, False]


def sequence_logprobs(policy, rollout) -> torch.Tensor:
    """Sum of each completion's token log-probs under policy, `[B]`."""
    with torch.no_grad():
        logits = completion_logits(policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_length)
    return core.token_logprobs(logits, rollout.completion_ids, rollout.completion_mask).sum(1)


@pytest.fixture(scope="module")
def policy_and_tokenizer(nano_dir):
    torch.manual_seed(0)
    return load_model(nano_dir).eval(), load_tokenizer(nano_dir)


def test_rollout_logprobs_equal_a_teacher_forced_forward(policy_and_tokenizer):
    policy, tokenizer = policy_and_tokenizer
    prompts = ["Tell me about Ada.", "What happened to the lantern in Ashford?", "Describe a fox."] * 2
    torch.manual_seed(1)
    rollout = sample_rollout(policy, tokenizer, prompts, SamplingConfig(max_new_tokens=24, temperature=0.8), ref_model=policy)
    assert rollout.input_ids[:, 0].eq(tokenizer.pad_token_id).any()  # prompts of different length: left padding is exercised
    with torch.no_grad():
        logits = completion_logits(policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_length)
    forward = core.token_logprobs(logits, rollout.completion_ids, rollout.completion_mask, temperature=0.8)
    torch.testing.assert_close(rollout.sampling_logprobs, forward, atol=1e-5, rtol=0)
    # the reference is the policy itself at step 0: its log-probs agree and k3 KL is zero
    kl = core.kl_estimate(rollout.sampling_logprobs, rollout.ref_logprobs, "k3", rollout.completion_mask)
    assert kl.abs().max().item() < 1e-5
    # padding and tokens after eos are outside the mask and hold exactly zero log-prob
    assert (rollout.sampling_logprobs[rollout.completion_mask == 0] == 0).all()
    assert rollout.completion_lengths.tolist() == rollout.completion_mask.sum(1).tolist()


def test_sampling_and_evaluation_run_in_eval_mode_and_restore_the_mode(nano, nano_dir, tmp_path):
    policy, tokenizer = load_model(nano_dir), load_tokenizer(nano_dir)
    for module in policy.modules():  # as a hub GPT-2 has (0.1); the nano model is built without dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    cfg = small_config(nano, tmp_path)
    prompts = ["Describe a fox.", "Tell me about Ada."]
    results = {}
    for training in (True, False):
        policy.train(training)
        results[training] = evaluate_on_prompts(policy, tokenizer, prompts, resolve_reward(), cfg.eval_sampling, 1, seed=5)
        assert policy.training == training
    assert results[True]["rows"] == results[False]["rows"]


def test_rows_sharing_a_prompt_give_the_logits_and_gradients_of_one_full_forward(nano_dir, policy_and_tokenizer):
    policy, tokenizer = load_model(nano_dir), policy_and_tokenizer[1]
    prompts = ["Tell me about Ada.", "Describe a fox.", "Tell me about Ada.", "What happened to the lantern in Ashford?"] * 2
    torch.manual_seed(3)
    rollout = sample_rollout(policy, tokenizer, prompts, SamplingConfig(max_new_tokens=12))
    ids, mask, prompt_length = rollout.input_ids.clone(), rollout.attention_mask.clone(), rollout.prompt_length  # not inference tensors
    out = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True)
    full_logits, full_hidden = out.logits[:, prompt_length - 1: -1], out.hidden_states[-1][:, prompt_length - 1: -1]
    shared_logits, shared_hidden = completion_logits(policy, ids, mask, prompt_length, return_hidden=True)  # 3 prompts run, not 8
    torch.testing.assert_close(shared_logits, full_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_hidden, full_hidden, atol=1e-5, rtol=0)

    def gradients(logits):
        policy.zero_grad()
        core.logprobs_from_logits(logits / 0.7, ids[:, prompt_length:], rollout.completion_mask.clone()).sum().backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    shared, full = gradients(shared_logits), gradients(full_logits)
    assert (shared - full).norm() < 1e-5 * full.norm()


def test_length_groups_split_off_the_long_completions_only_when_it_saves_a_fifth():
    """Two groups' lengths round up to multiples of 8, splits fall at multiples of 8 rows; one group runs unrounded."""
    def groups(*lengths):
        mask = torch.tensor([[1.0] * n + [0.0] * (max(lengths) - n) for n in lengths])
        return [(sorted(rows.tolist()), length) for rows, length in length_groups(mask)]
    short_first = [3] * 8 + [20] * 8
    assert groups(*short_first) == [(list(range(8)), 8), (list(range(8, 16)), 24)]  # 8 x 8 + 8 x 24 positions, not 16 x 24
    assert groups(*reversed(short_first)) == [(list(range(8, 16)), 8), (list(range(8)), 24)]
    assert groups(*[17] * 8, *[20] * 8) == [(list(range(16)), 20)]  # both round to 24: nothing to save
    assert groups(3, 3, 3, 20) == [([0, 1, 2, 3], 20)]  # fewer than 16 rows: one group


def test_completion_logprobs_in_length_groups_equal_one_forward_of_the_whole_batch(nano_dir, policy_and_tokenizer):
    """Two groups of rows, the longer one padded past the batch's completions (13 -> 16 tokens): the values and the
    gradients of token_logprobs on one forward over all rows."""
    policy, tokenizer = load_model(nano_dir), policy_and_tokenizer[1]
    torch.manual_seed(4)
    rollout = sample_rollout(policy, tokenizer, ["Describe a fox.", "Tell me about Ada."] * 8, SamplingConfig(max_new_tokens=13))
    ids, attention, mask = rollout.input_ids.clone(), rollout.attention_mask.clone(), rollout.completion_mask.clone()
    mask[:8, 3:], attention[:8, rollout.prompt_length + 3:] = 0, 0  # eight completions end after 3 tokens
    assert [length for _, length in length_groups(mask)] == [8, 16] and mask.sum(1).max() > 8
    results = []
    for grouped in (True, False):
        policy.zero_grad()
        if grouped:
            logp, entropy = completion_logprobs(policy, ids, attention, mask, temperature=0.7, with_entropy=True)
        else:
            logits = completion_logits(policy, ids, attention, rollout.prompt_length)
            logp, entropy = core.token_logprobs_and_entropy(logits, ids[:, rollout.prompt_length:], mask, temperature=0.7)
        logp.sum().backward()
        results.append((logp.detach(), entropy, torch.cat([p.grad.flatten() for p in policy.parameters()])))
    (logp, entropy, grad), (full_logp, full_entropy, full_grad) = results
    torch.testing.assert_close(logp, full_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, full_entropy, atol=1e-5, rtol=0)
    assert (grad - full_grad).norm() < 1e-5 * full_grad.norm()


def test_one_grpo_update_raises_the_logprob_of_the_better_completion(policy_and_tokenizer, nano_dir):
    policy = load_model(nano_dir)
    _, tokenizer = policy_and_tokenizer
    torch.manual_seed(2)
    rollout = sample_rollout(policy, tokenizer, ["Describe a fox."] * 2, SamplingConfig(max_new_tokens=16))
    cfg = GRPOConfig(num_generations=2, prompts_per_step=1, loss_type="grpo", max_completion_length=16)

    before = sequence_logprobs(policy, rollout)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    metrics = grpo_update(policy, copy.deepcopy(policy), optimizer, Accelerator(cpu=True), rollout, torch.tensor([1.0, 0.0]), cfg)
    after = sequence_logprobs(policy, rollout)
    assert after[0] > before[0] and after[1] < before[1]
    # the first update: policy = old policy = reference, exactly
    assert metrics["kl"] == metrics["approx_kl"] == metrics["clip_ratio"] == 0.0 and metrics["ratio_mean"] == 1.0


def small_config(nano, tmp_path, **overrides):
    root = nano[0]
    fields = dict(model=str(root / "run" / "model"), prompts=str(root / "data" / "prompts_train.jsonl"),
                  eval_prompts=str(root / "data" / "prompts_eval.jsonl"), steps=3, prompts_per_step=2, num_generations=2,
                  max_completion_length=12, eval_samples_per_prompt=1, log_completions_every=2, run_dir=str(tmp_path / "run"))
    return config_for(overrides.get("algo", "grpo"))(**{**fields, **overrides})


def test_grpo_end_to_end_writes_the_run_folder(nano, tmp_path):
    summary = train(small_config(nano, tmp_path))
    run_dir = tmp_path / "run"
    for name in ["config.json", "metrics.jsonl", "samples.jsonl", "summary.json", "curves.png", "eval_samples.json",
                 "model/config.json", "model/tokenizer.json"]:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir())
    assert {"reward_before", "reward_after", "kl_final", "wall_s", "completions_per_s", "components_before",
            "components_after"} <= set(summary)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps, evaluations = [r for r in rows if "reward" in r], [r for r in rows if "eval/reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and [r["step"] for r in evaluations] == [0, 3]
    assert [r["eval/reward"] for r in evaluations] == [summary["reward_before"], summary["reward_after"]]
    for key in ["reward", "rewards/length/mean", "rewards/format/mean", "kl", "entropy", "clip_ratio", "approx_kl",
                "completions/mean_length", "frac_reward_zero_std", "time/generate_s", "time/update_s"]:
        assert key in steps[0], key
    assert load_model(str(run_dir / "model")).num_parameters() > 0


@pytest.mark.parametrize("name, label", [("/cache/base-tiny-v4/model", "base-tiny-v4"), ("runs/demo-grpo/model", "demo-grpo"),
                                         ("runs/my-policy", "my-policy"), ("gpt2", "gpt2"), ("model", "model")])
def test_plots_name_the_model_by_its_folder_not_save_pretrained_s_model(name, label):
    assert online.model_label(name) == label


@pytest.mark.parametrize("args, message", [
    (["--num-generations", "1"], "--num-generations must be >= 2"),
    (["--reward", "politeness"], "unknown reward 'politeness'; accepted: length, format"),
    (["--loss-type", "ppo"], "unknown --loss-type 'ppo'; accepted: grpo, dapo, bnpo, dr_grpo"),
    (["--learning-rate", "0"], "--learning-rate must be > 0"),
    (["--algo", "dpo"], "unknown --algo 'dpo'"),
    (["--max-completion-length", "500"], "--prompts: the longest prompt"),
    (["--temperature", "0"], "--temperature must be > 0 for training, got 0.0; greedy decoding is for evaluation"),
    (["--eval-temperature", "-1"], "--temperature >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, nano, tmp_path, monkeypatch, capsys):
    root = nano[0]
    base = ["--model", str(root / "run" / "model"), "--prompts", str(root / "data" / "prompts_train.jsonl"),
            "--eval-prompts", str(root / "data" / "prompts_eval.jsonl"), "--run-dir", str(tmp_path / "r")]
    code, _, err = run_script("train_rlhf.py", [*base, *args], monkeypatch, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args, message", [
    (["--algo", "ppo", "--beta", "0.1"], "--beta is a setting of --algo grpo, not of --algo ppo (see --algo ppo --help)"),
    (["--num-ppo-epochs", "3"], "--num-ppo-epochs is a setting of --algo ppo, not of --algo grpo"),
    (["--algo", "ppo", "--critic", "tied"], "unknown --critic 'tied'; accepted: separate, shared"),
])
def test_each_algorithm_takes_only_its_own_fields(args, message, tmp_path, monkeypatch, capsys):
    code, _, err = run_script("train_rlhf.py", [*args, "--run-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(TypeError, match=r"build an algorithm's own config \(rlhf_toy/algorithms/\)"):
        RLHFConfig()


def test_a_run_config_file_chooses_its_algorithm(tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"algo": "ppo", "kl_coef": 0.5, "num_ppo_epochs": 0}))
    code, _, err = run_script("train_rlhf.py", ["--config", str(config), "--run-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code == 2 and "--num-ppo-epochs must be > 0, got 0" in err  # read as a PPOConfig


def test_token_rewards_put_the_score_on_the_last_valid_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = core.token_rewards(torch.tensor([1.0, 2.0]), kl, mask, beta=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 1.0 - 0.15], [2.0 - 0.25, 0.0, 0.0]]))


PPO_CASE = dict(scores=[1.0, 2.0], kl=[[0.2, 0.4, 0.0], [0.6, 0.0, 0.0]], mask=[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]],
                values=[[0.5, 0.25, 0.5], [0.3, 0.0, 0.0]])


def ppo_case(device="cpu", **cfg):
    tensors = {k: torch.tensor(v, device=device) for k, v in PPO_CASE.items()}
    cfg = PPOConfig(**{"gamma": 0.9, "lam": 0.5, **cfg})
    return tensors, cfg


def test_ppo_advantages_and_returns_by_hand():
    case, cfg = ppo_case()
    advantages, returns = advantages_and_returns(case["scores"], case["values"], case["kl"], case["mask"], 0.5, cfg)
    # beta 0.5: rewards row 0 [-0.1, -0.2, 1.0], row 1 [2 - 0.3, 0, 0] (its completion is one token long)
    # row 0, gamma .9, lam .5: deltas t2 = 1 - .5 = .5; t1 = -.2 + .9 * .5 - .25 = 0; t0 = -.1 + .9 * .25 - .5 = -.375
    #   A2 = .5, A1 = 0 + .45 * .5 = .225, A0 = -.375 + .45 * .225 = -.27375;  row 1: A0 = 1.7 - .3 = 1.4
    close = functools.partial(torch.testing.assert_close, atol=1e-6, rtol=0)
    close(returns, torch.tensor([[-0.27375 + 0.5, 0.225 + 0.25, 1.0], [1.7, 0.0, 0.0]]))
    # whitened over the 4 valid tokens: mean 0.4628125, sample variance 0.4929275 (TRL's masked_whiten)
    close(advantages, torch.tensor([[-1.0491029, -0.3387218, 0.0529670], [1.3348577, 0.0, 0.0]]))
    _, whitened_returns = advantages_and_returns(case["scores"], case["values"], case["kl"], case["mask"], 0.5,
                                                 ppo_case(whiten_rewards=True)[1])
    # whiten_rewards rescales the valid rewards [-.1, -.2, 1, 1.7] (mean .6, sample variance 2.5 / 3) keeping their mean
    assert whitened_returns[1, 0].item() == pytest.approx((1.7 - 0.6) / (2.5 / 3) ** 0.5 + 0.6, abs=1e-5)


def test_ppo_advantages_stay_on_the_device_of_their_inputs():
    case, cfg = ppo_case(device="meta")  # shapes and devices only: a CPU tensor among them fails as it would on a GPU
    advantages, returns = advantages_and_returns(case["scores"], case["values"], case["kl"], case["mask"], 0.5, cfg)
    assert advantages.device.type == returns.device.type == "meta" and advantages.shape == (2, 3)


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    ctl = KLController(0.1, target=6.0, horizon=100)
    ctl.update(kl=12.0, n_steps=10)  # error clipped to +0.2: beta * (1 + 0.2 * 10 / 100)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(kl=3.0, n_steps=10)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = KLController(0.1)
    fixed.update(kl=100.0, n_steps=10)
    assert fixed.value == 0.1


@pytest.mark.parametrize("critic_kind", ["separate", "shared"])
def test_one_ppo_update_raises_the_logprob_of_the_better_completion(critic_kind, policy_and_tokenizer, nano_dir):
    policy = load_model(nano_dir)
    _, tokenizer = policy_and_tokenizer
    torch.manual_seed(2)
    rollout = sample_rollout(policy, tokenizer, ["Describe a fox.", "Describe a fox."], SamplingConfig(max_new_tokens=16))
    critic = build_critic(policy, critic_kind, lambda: load_model(nano_dir))
    cfg = PPOConfig(num_generations=1, prompts_per_step=2, num_ppo_epochs=1, gamma=1.0)

    before = sequence_logprobs(policy, rollout)
    with torch.no_grad():  # the values of the rollout (the critic's own pass) are those the update's forward gives
        args = (rollout.input_ids, rollout.attention_mask, rollout.prompt_length)
        torch.testing.assert_close(critic(*args, policy), logits_and_values(policy, critic, *args)[1], atol=1e-5, rtol=0)
    params = list(policy.parameters()) + [p for p in critic.head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05)
    reference = copy.deepcopy(policy)  # before the hook, which a copy would carry
    policy_forwards = []
    policy.register_forward_hook(lambda *_: policy_forwards.append(1))
    with torch.no_grad():
        completion_logits(policy, *args)
    one_pass = len(policy_forwards)  # 2: the shared prompt, then the completions
    metrics = ppo_update(policy, critic, reference, optimizer, Accelerator(cpu=True), rollout, torch.tensor([1.0, 0.0]),
                         KLController(0.05), cfg)
    assert len(policy_forwards) == 3 * one_pass  # the old log-probs' and values' pass, then the update's: one each
    after = sequence_logprobs(policy, rollout)
    assert after[0] > before[0] and after[1] < before[1]
    # the first update: policy = old policy = reference, exactly
    assert metrics["kl"] == metrics["approx_kl"] == metrics["clip_ratio"] == 0.0 and metrics["ratio_mean"] == 1.0
    assert {"value_loss", "explained_variance", "policy_loss", "clip_ratio", "approx_kl"} <= set(metrics)


def test_ppo_end_to_end_with_a_shared_critic(nano, tmp_path):
    summary = train(small_config(nano, tmp_path, algo="ppo", critic="shared", num_generations=1, prompts_per_step=4,
                                 num_ppo_epochs=2, missing_eos_penalty=0.5, target_kl=1.0))
    rows = step_rows(tmp_path / "run")
    assert {"value_loss", "explained_variance", "beta", "kl_sequence"} <= set(rows[-1])
    assert rows[-1]["beta"] != 0.05  # the adaptive controller moved beta
    assert summary["algo"] == "ppo" and (tmp_path / "run" / "model" / "config.json").is_file()


@pytest.mark.parametrize("algo, learning_rate, gain", [("grpo", 4e-3, 0.10), ("ppo", 2e-3, 0.06)])
def test_rlhf_learns_the_length_reward_on_the_nano_model(algo, learning_rate, gain, nano, tmp_path):
    """120 steps (5-8 s) raise the eval reward by a clear margin. Measured on seeds 0-3, eval reward 0.68-0.72 before:
    GRPO +0.141 to +0.148, PPO +0.080 to +0.208; the test runs seed 0 at 1 thread, which repeats exactly."""
    batch = dict(prompts_per_step=4, num_generations=8) if algo == "grpo" else dict(prompts_per_step=16, num_generations=1)
    summary = train(small_config(nano, tmp_path, algo=algo, reward="length", steps=120, max_completion_length=24,
                                 eval_samples_per_prompt=4, learning_rate=learning_rate, torch_threads=1,
                                 log_completions_every=0, **batch))
    assert summary["reward_after"] > summary["reward_before"] + gain, (summary["reward_before"], summary["reward_after"])


def test_a_user_reward_file_is_optimised_through_the_same_loop(nano, tmp_path):
    reward_file = tmp_path / "short.py"
    reward_file.write_text("def short(prompts, completions, **columns):\n"
                           "    return [1.0 / (1 + len(c.split())) for c in completions]\n")
    summary = train(small_config(nano, tmp_path, reward=f"{reward_file}:short", gold_reward="length,format"))
    assert set(summary["components_after"]) == {f"{reward_file}:short", "gold"}
    assert (tmp_path / "run" / "proxy_vs_gold.png").is_file()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_same_seed_twice_gives_identical_metrics_at_2_threads(algo, nano, tmp_path):
    """Batches big enough for torch's parallel CPU kernels (64 shuffled rows, 8 per prompt): a kernel that adds in
    thread order would make the runs drift apart, as index_put_'s accumulate did before PromptPass.cache."""
    def run(name):
        return train(small_config(nano, tmp_path / name, algo=algo, steps=4, prompts_per_step=8, num_generations=8,
                                  max_completion_length=16, torch_threads=2))

    first, second = run("a"), run("b")
    assert comparable_metrics(tmp_path / "a" / "run") == comparable_metrics(tmp_path / "b" / "run")
    assert first["reward_after"] == second["reward_after"]


@pytest.mark.parametrize("extra", [{}, {"use_adaptive_entropy": True, "entropy_target": 50.0, "entropy_coef_delta": 0.05}],
                         ids=["grpo", "adaptive-entropy"])
def test_resume_ends_where_an_uninterrupted_run_ends(extra, nano, tmp_path):
    """With adaptive entropy control the controller's coefficient and last entropy are in the checkpoint."""
    straight = train(small_config(nano, tmp_path / "straight", steps=4, **extra))
    train(small_config(nano, tmp_path, steps=2, save_every=1, keep_checkpoints=1, **extra))
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-2"]  # only the newest kept, no temporary folder left behind
    resumed = train(small_config(nano, tmp_path, steps=4, save_every=1, resume=True, **extra))
    # the eval before (step 0), steps 1-4 and the eval after; not the first run's eval after its step 2
    assert [r["step"] for r in comparable_metrics(tmp_path / "run")] == [0, 1, 2, 3, 4, 4]
    assert comparable_metrics(tmp_path / "run") == comparable_metrics(tmp_path / "straight" / "run")
    for key in ("reward_before", "reward_after", "kl_final"):  # before: the initial policy's, not the checkpoint's
        assert resumed[key] == straight[key], key
    if extra:
        coefficients = [row["entropy_coef"] for row in step_rows(tmp_path / "run")]
        assert coefficients == pytest.approx([0.05 * step for step in range(1, 5)])  # one gradient step a step, from 0


def test_resume_without_a_checkpoint_is_a_clear_error(nano, tmp_path):
    with pytest.raises(ConfigError, match="--resume found no checkpoint"):
        train(small_config(nano, tmp_path, resume=True))


def test_an_interrupted_run_leaves_the_process_group_after_dropping_its_ddp_wrapper(nano, tmp_path, monkeypatch):
    runs, left = [], []

    def interrupted(run):
        runs.append(run)
        raise TrainingInterrupted("stopped at step 2")

    monkeypatch.setattr(online, "run_steps", interrupted)
    monkeypatch.setattr(online, "leave_processes", lambda accelerator: left.append((accelerator, runs[0].policy)))
    with pytest.raises(TrainingInterrupted, match="stopped at step 2"):
        train(small_config(nano, tmp_path))
    assert left == [(runs[0].accelerator, None)]  # without it, gloo's threads could outlive the interpreter and abort it


def as_flags(cfg: RLHFConfig, **extra) -> list[str]:
    """The command line that builds cfg (its non-default fields) plus extra flags."""
    defaults = type(cfg)()
    flags = []
    for key, value in {**cfg.__dict__, **extra}.items():
        if key in extra or key == "algo" or value != getattr(defaults, key):
            flags += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return flags


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)])
def test_grpo_killed_or_interrupted_then_resumed_matches_an_uninterrupted_run(sig, code, nano, tmp_path, monkeypatch, capsys):
    straight = train(small_config(nano, tmp_path / "straight", steps=12))
    cfg = small_config(nano, tmp_path, steps=12, save_every=2)
    assert kill_after_first_checkpoint("train_rlhf.py", as_flags(cfg), tmp_path / "run", sig) == code
    assert not (tmp_path / "run" / "summary.json").exists()
    exit_code, out, _ = run_script("train_rlhf.py", as_flags(cfg, resume=True), monkeypatch, capsys)
    assert exit_code == 0
    assert comparable_metrics(tmp_path / "run") == comparable_metrics(tmp_path / "straight" / "run")
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("reward_after", "kl_final"):
        assert resumed[key] == pytest.approx(straight[key], abs=1e-4), key


@pytest.mark.parametrize("breaks, says", [("float('nan')", "returned nan"), ("1 / 0", "raised ZeroDivisionError: division by zero")])
def test_a_reward_that_breaks_stops_the_run_and_keeps_the_last_good_weights(breaks, says, nano, tmp_path, monkeypatch, capsys):
    reward_file = tmp_path / "bad_reward.py"  # its 4th call (after the evaluation before training) is step 3's
    reward_file.write_text("def breaks_at_step_3(prompts, completions, **kw):\n"
                           "    breaks_at_step_3.calls = getattr(breaks_at_step_3, 'calls', 0) + 1\n"
                           f"    return [{breaks} if breaks_at_step_3.calls > 3 else 0.5 * (i % 2) for i in range(len(completions))]\n")
    cfg = small_config(nano, tmp_path, steps=4, reward=f"{reward_file}:breaks_at_step_3")
    code, _, err = run_script("train_rlhf.py", as_flags(cfg), monkeypatch, capsys)
    message = err[err.index("error: "):].splitlines()[0]
    assert code == 2 and "Traceback" not in err  # a reward function breaking its contract is bad input
    assert message.startswith("error: step 3: reward") and says in message and message.endswith("checkpoints/step-2")
    assert load_model(str(tmp_path / "run" / "checkpoints" / "step-2" / "model")).num_parameters() > 0


@pytest.mark.slow
def test_bench_rlhf_runs_ours_trl_and_ppo_and_writes_the_table(nano_dir, tmp_path):
    args = ["--model", nano_dir, "--steps", "2", "--threads", "1", "--prompts-per-step", "2", "--num-generations", "2",
            "--max-completion-length", "8", "--precisions", "fp32", "bf16", "--eval-every", "1", "--target", "0.0",
            "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md")]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_rlhf.py"), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "b.json").read_text())
    for impl in ("ours", "trl", "ppo"):
        assert table[impl]["completions_per_s"] > 0 and table[impl]["sec_per_step"] > 0 and table[impl]["peak_rss_mb"] > 100
        assert 0 <= table[impl]["eval_reward"] <= 1 and table[impl]["precision"] in ("fp32", "bf16")
        assert 0 < table[impl]["time_to_target_s"] <= 2 * table[impl]["sec_per_step"] + 1e-9  # target 0: the first evaluation
    assert {(run["impl"], run["precision"]) for run in table["runs"]} == {(i, p) for i in ("ours", "trl", "ppo") for p in ("fp32", "bf16")}
    assert "TRL GRPOTrainer" in (tmp_path / "b.md").read_text()


@pytest.mark.slow
def test_bench_demo_builds_the_base_model_from_an_empty_cache_and_runs_the_demo(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_demo.py"), "--json", str(tmp_path / "d.json"),
                             "--md", str(tmp_path / "d.md")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = json.loads((tmp_path / "d.json").read_text())["runs"]
    assert run["total_s"] > run["pretrain_s"] + run["grpo_train_s"] and run["pretrain_val_loss"] < 1.6
    assert run["eval_reward_after"] > run["eval_reward_before"] + 0.5 and run["pretrain_precision"] in ("fp32", "bf16")


def test_learning_rate_schedules_by_hand():
    # 10 steps, warmup_ratio 0.2, as transformers' schedulers count (from 0): steps 1-2 at 0 and 1/2 of the peak, then
    # 8 steps of decay with progress (step - 3) / 8
    linear = GRPOConfig(steps=10, learning_rate=0.3, lr_scheduler_type="linear", warmup_ratio=0.2)
    assert [linear.learning_rate_at(s) for s in (1, 2, 3, 7, 10)] == pytest.approx([0.0, 0.15, 0.3, 0.3 * 4 / 8, 0.3 / 8])
    cosine = GRPOConfig(steps=10, learning_rate=0.3, lr_scheduler_type="cosine", warmup_ratio=0.2)
    assert cosine.learning_rate_at(7) == pytest.approx(0.15)  # 0.3 * (1 + cos(pi / 2)) / 2
    assert [GRPOConfig(steps=10, learning_rate=0.3).learning_rate_at(s) for s in (1, 10)] == [0.3, 0.3]
    with pytest.raises(ConfigError, match="--warmup-ratio must be in"):
        GRPOConfig(warmup_ratio=1.0)
    with pytest.raises(ConfigError, match="unknown --lr-scheduler-type 'step'"):
        GRPOConfig(lr_scheduler_type="step")


def test_the_scheduled_rate_is_the_one_the_optimizer_used(nano_dir, tmp_path):
    train(GRPOConfig(model=nano_dir, steps=4, prompts_per_step=2, num_generations=2, max_completion_length=8, eval_samples_per_prompt=1,
                     learning_rate=1e-4, lr_scheduler_type="linear", log_completions_every=0, run_dir=str(tmp_path / "run")))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-4, 7.5e-5, 5e-5, 2.5e-5])


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_learning_rate_schedules_match_transformers(kind):
    from transformers import get_scheduler
    cfg = GRPOConfig(steps=37, learning_rate=2e-4, lr_scheduler_type=kind, warmup_ratio=0.1)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
    name = "constant_with_warmup" if kind == "constant" else kind
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * cfg.steps), num_training_steps=cfg.steps)
    theirs = []
    for _ in range(cfg.steps):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [cfg.learning_rate_at(s) for s in range(1, cfg.steps + 1)] == pytest.approx(theirs)


def test_a_budget_of_wall_time_stops_training_early_and_says_where(nano_dir, tmp_path):
    summary = train(GRPOConfig(model=nano_dir, steps=50, max_train_s=1e-9, prompts_per_step=2, num_generations=2, max_completion_length=8,
                               eval_samples_per_prompt=1, log_completions_every=0, run_dir=str(tmp_path / "run")))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 1 and [r["step"] for r in rows] == [0, 1, 1]  # eval before, the one step, eval after


@pytest.mark.slow
def test_bench_rlhf_on_a_real_shape_with_lora_builds_the_model_and_runs_both_sides(tmp_path):
    """GPT-2 124M with random weights, built into an empty cache: both sides train adapters; no eval reward is reported."""
    args = ["--shape", "gpt2-124m", "--use-peft", "--steps", "1", "--threads", "2", "--prompts-per-step", "1", "--num-generations", "2",
            "--max-completion-length", "4", "--precisions", "fp32", "--eval-every", "0", "--impls", "ours", "trl",
            "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md")]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_rlhf.py"), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "RLHF_TOY_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "b.json").read_text())
    assert table["settings"]["use_peft"] and table["ours"]["eval_reward"] is None and table["trl"]["completions_per_s"] > 0
    config = json.loads((tmp_path / "home" / "bench-gpt2-124m" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"]) == (12, 768, 50257)
    assert "- (random weights)" in (tmp_path / "b.md").read_text()
