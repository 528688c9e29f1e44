"""RLHF PPO with a critic: ppo_update against PPO written out plainly, with a reference that differs from the policy."""

import copy

import pytest
import torch
from accelerate import Accelerator

from classic_rl.core import KLController
from classic_rl.infra.errors import NonFiniteError
from rlhf_toy.algorithms.ppo import PPOConfig, build_critic, ppo_update
from rlhf_toy.lm.models import load_model, position_ids
from tests.conftest import clipped_sgd_step, largest_difference
from tests.test_rlhf_grpo import plain_logprobs


def plain_ppo(policy, critic, reference, rollout, scores, cfg, beta, lr, ptx_tokens=None):
    """PPO-with-critic for LMs written out from Ziegler et al. / TRL: k1 KL penalty per token, the score on the last
    token, GAE by explicit loops, whitened advantages, clipped policy and value losses (plus, with cfg.ptx_coef,
    InstructGPT's next-token loss on ptx_tokens), gradient-norm-clipped SGD in the same minibatch order; returns
    the updated copies of policy and critic and the metrics it expects. The old log-probs are the policy's before the
    update, the reference's from its own forward."""
    policy, critic = copy.deepcopy(policy), copy.deepcopy(critic)
    params = list(policy.parameters()) + list(critic.parameters())
    ids, attention, prompt = rollout.input_ids.clone(), rollout.attention_mask.clone(), rollout.prompt_length
    mask, lengths = rollout.completion_mask.clone(), rollout.completion_mask.sum(1).long().tolist()
    scores = scores - cfg.missing_eos_penalty * rollout.is_truncated.float()

    def values_of(rows):
        hidden = critic.trunk(input_ids=ids[rows], attention_mask=attention[rows],
                              position_ids=position_ids(attention[rows])).last_hidden_state[:, prompt - 1: -1]
        return critic.head(hidden).squeeze(-1)

    with torch.no_grad():
        old_values = values_of(slice(None)) * mask
        old_logprobs, ref_logprobs = (plain_logprobs(m, rollout, slice(None))[0] for m in (policy, reference))
    advantages, returns = torch.zeros_like(mask), torch.zeros_like(mask)
    for i, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            reward = -beta * (old_logprobs[i, t] - ref_logprobs[i, t]) + (scores[i] if t == n - 1 else 0.0)
            next_value = old_values[i, t + 1] if t + 1 < n else 0.0
            running = reward + cfg.gamma * next_value - old_values[i, t] + cfg.gamma * cfg.lam * running
            advantages[i, t] = running
            returns[i, t] = running + old_values[i, t]
    valid = mask.bool()
    explained = 1 - (returns - old_values)[valid].var(unbiased=False) / returns[valid].var(unbiased=False)
    advantages[valid] = (advantages[valid] - advantages[valid].mean()) / torch.sqrt(advantages[valid].var() + 1e-8)
    losses, entropies = [], []
    for _ in range(cfg.num_ppo_epochs):
        for mb in torch.randperm(len(scores)).split(len(scores) // cfg.num_minibatches):
            out = policy(input_ids=ids[mb], attention_mask=attention[mb], position_ids=position_ids(attention[mb]))
            logp = out.logits[:, prompt - 1: -1].log_softmax(-1).gather(-1, ids[mb, prompt:, None]).squeeze(-1)
            ratio, adv, m = torch.exp(logp - old_logprobs[mb]), advantages[mb], mask[mb]
            policy_loss = (-torch.minimum(ratio * adv, ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange) * adv) * m).sum() / m.sum()
            probs = out.logits[:, prompt - 1: -1].softmax(-1)
            entropies.append(((-(probs * probs.clamp(min=1e-30).log()).sum(-1) * m).sum() / m.sum()).item())
            values, old, target = values_of(mb), old_values[mb], returns[mb]
            clipped = old + (values - old).clamp(-cfg.cliprange_value, cfg.cliprange_value)
            value_loss = 0.5 * (torch.maximum((values - target) ** 2, (clipped - target) ** 2) * m).sum() / m.sum()
            loss = policy_loss + cfg.vf_coef * value_loss
            if cfg.ptx_coef:
                next_token = policy(input_ids=ptx_tokens).logits[:, :-1].log_softmax(-1).gather(-1, ptx_tokens[:, 1:, None])
                loss = loss - cfg.ptx_coef * next_token.mean()
            losses.append(loss.item())
            clipped_sgd_step(loss, params, lr, cfg.max_grad_norm)
    k1 = (old_logprobs - ref_logprobs) * mask
    expected = {"loss": sum(losses) / len(losses), "entropy": sum(entropies) / len(entropies),
                "kl": (k1.sum() / mask.sum()).item(), "kl_sequence": k1.sum(1).mean().item(), "explained_variance": explained.item()}
    return policy, critic, expected


@pytest.mark.parametrize("case", [dict(max_grad_norm=1e9, lr=0.02),
                                  dict(max_grad_norm=1.0, lr=0.3, cliprange_value=0.05, cliprange=0.1),
                                  dict(max_grad_norm=1e9, lr=0.02, ptx_coef=0.7)],
                         ids=["unclipped-gradient", "clipped-gradient-values-and-clip-higher", "pretraining-mix"])
def test_ppo_update_equals_ppo_written_out(case, policy_reference_rollout, nano_dir):
    policy, rollout, reference = policy_reference_rollout
    torch.manual_seed(0)
    critic = build_critic(policy, "separate", lambda: load_model(nano_dir))
    case = dict(case)
    lr = case.pop("lr")
    cfg = PPOConfig(num_generations=1, prompts_per_step=8, num_minibatches=2, num_ppo_epochs=2, gamma=0.95,
                     lam=0.9, vf_coef=0.5, missing_eos_penalty=0.5, max_completion_length=10, **case)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 1.0, 0.3, 0.9])
    ptx_tokens = torch.randint(0, policy.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    expected_policy, expected_critic, expected_metrics = plain_ppo(policy, critic, reference, rollout, scores, cfg, beta=0.2, lr=lr,
                                                                   ptx_tokens=ptx_tokens)
    model, value_model = copy.deepcopy(policy), copy.deepcopy(critic)
    optimizer = torch.optim.SGD([*model.parameters(), *value_model.parameters()], lr=lr)
    torch.manual_seed(1)  # the same minibatch order
    metrics = ppo_update(model, value_model, reference, optimizer, Accelerator(cpu=True), rollout, scores, KLController(0.2), cfg,
                         ptx_batch=lambda: ptx_tokens)
    assert ("ptx_loss" in metrics) == bool(cfg.ptx_coef)
    for updated, expected, start in ((model, expected_policy, policy), (value_model, expected_critic, critic)):
        change, error = largest_difference(expected, start), largest_difference(updated, expected)
        assert change > 1e-3 and error < 1e-4 * change, (change, error)
    for key, value in expected_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert abs(metrics["kl"]) > 1e-3 and metrics["kl_sequence"] != pytest.approx(metrics["kl"])
    assert metrics["score"] == pytest.approx((scores - 0.5 * rollout.is_truncated.float()).mean().item())


def test_a_shared_critic_is_a_head_on_the_policy_and_a_separate_one_copies_the_trunk(policy_reference_rollout, nano_dir):
    policy, _, _ = policy_reference_rollout
    shared, separate = build_critic(policy, "shared", lambda: load_model(nano_dir)), build_critic(policy, "separate",
                                                                                                    lambda: load_model(nano_dir))
    assert shared.shared and [p.shape for p in shared.parameters()] == [torch.Size([1, 64]), torch.Size([1])]
    assert not separate.shared and all(p is not q for p in separate.trunk.parameters() for q in policy.parameters())
    torch.testing.assert_close(separate.trunk.wte.weight, policy.transformer.wte.weight)  # initialised from the policy


def test_ppo_without_a_reference_has_no_kl_penalty(policy_reference_rollout, nano_dir):
    policy, rollout, _ = policy_reference_rollout
    critic = build_critic(policy, "shared", lambda: load_model(nano_dir))
    model = copy.deepcopy(policy)
    cfg = PPOConfig(num_generations=1, prompts_per_step=8, kl_coef=0.0, max_completion_length=10)
    metrics = ppo_update(model, critic, None, torch.optim.SGD([*model.parameters(), *critic.head.parameters()], lr=0.01),
                         Accelerator(cpu=True), rollout, torch.linspace(0, 1, 8), KLController(0.0), cfg)
    assert metrics["kl"] == 0.0 and metrics["kl_sequence"] == 0.0 and metrics["grad_norm"] > 0


def test_a_non_finite_loss_stops_ppo_before_the_optimizer_step(policy_reference_rollout, nano_dir):
    policy, rollout, _ = policy_reference_rollout
    critic = build_critic(policy, "shared", lambda: load_model(nano_dir))
    model = copy.deepcopy(policy)
    cfg = PPOConfig(num_generations=1, prompts_per_step=8, max_completion_length=10)
    scores = torch.tensor([1.0, float("nan"), 0.5, 0.2, 0.0, 1.0, 0.3, 0.9])
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        ppo_update(model, critic, None, torch.optim.SGD([*model.parameters(), *critic.head.parameters()], lr=0.01),
                   Accelerator(cpu=True), rollout, scores, KLController(0.1), cfg)
    assert largest_difference(model, policy) == 0.0  # the weights stayed as they were


def test_a_critic_from_the_reward_model_values_each_prefix_as_the_reward_model_scores_it(policy_reference_rollout, nano_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification
    policy, rollout, _ = policy_reference_rollout
    reward_model = AutoModelForSequenceClassification.from_pretrained(nano_dir, num_labels=1)
    torch.nn.init.normal_(reward_model.score.weight, std=0.5)
    reward_model.save_pretrained(tmp_path / "rm")
    critic = build_critic(policy, "rm", lambda: load_model(nano_dir), str(tmp_path / "rm"))
    assert all(p is not q for p in critic.trunk.parameters() for q in policy.parameters())
    prompt = rollout.prompt_length
    row = int(rollout.attention_mask[:, :prompt].sum(1).argmax())  # the longest prompt: no left padding
    ids = rollout.input_ids[row: row + 1]
    with torch.no_grad():
        values = critic(ids, rollout.attention_mask[row: row + 1], prompt, policy)[0]
        for t in range(3):  # the value before completion token t is the score of the prompt and tokens < t
            assert values[t].item() == pytest.approx(reward_model(input_ids=ids[:, : prompt + t]).logits.item(), abs=1e-5)


def test_critic_rm_needs_a_reward_model_reward():
    from classic_rl.infra.errors import ConfigError
    with pytest.raises(ConfigError, match="--critic rm starts the value model from the reward model"):
        PPOConfig(critic="rm", reward="length,format")
    assert PPOConfig(critic="rm", reward="rm:some/dir,format").reward_model_dir == "some/dir"


def test_ppo_with_the_tutorials_whole_recipe_runs(nano_dir, tmp_path):
    """A reward model as reward and as the critic's start, and the pretraining mix, in a short real run."""
    import json

    from transformers import AutoModelForSequenceClassification

    from rlhf_toy.lm.models import load_tokenizer
    from rlhf_toy.online import train
    reward_model = AutoModelForSequenceClassification.from_pretrained(nano_dir, num_labels=1)
    reward_model.save_pretrained(tmp_path / "rm")
    load_tokenizer(nano_dir).save_pretrained(tmp_path / "rm")
    summary = train(PPOConfig(model=nano_dir, reward=f"rm:{tmp_path / 'rm'}", critic="rm", ptx_coef=0.5, ptx_batch_size=2, steps=2,
                              prompts_per_step=2, num_generations=2, max_completion_length=8, eval_samples_per_prompt=1,
                              log_completions_every=0, run_dir=str(tmp_path / "run")))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    assert len(rows) == 2 and all(row["ptx_loss"] > 0 for row in rows) and summary["reward_after"] is not None
