"""A policy's reward on fixed prompts, and the tables of completions the RLHF loop prints."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from classic_rl import core
from rlhf_toy.agents.text_games import success_rate
from rlhf_toy.agents.turns import Agent, tool_statistics
from rlhf_toy.chat import message_text
from rlhf_toy.data import DATA_DIR, load_prompt_rows, pretraining_blocks, split_columns
from rlhf_toy.generation.rollout import sample_rollout
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.base_model import default_base_model
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.rewards.functions import CombinedReward, resolve_reward, think_text
from rlhf_toy.tasks.arithmetic import pass_at_k


def evaluate_on_prompts(policy, tokenizer, prompts: list[str] | list[dict], reward: CombinedReward, sampling: SamplingConfig,
                        samples_per_prompt: int, seed: int, gold: CombinedReward | None = None, pass_k: int = 0,
                        agent: Agent | None = None) -> dict[str, Any]:
    """Mean reward (and components, and the gold reward if given) of samples_per_prompt sampled completions
    of each prompt (a string, or a row whose other columns reach the rewards), with rows of (prompt,
    completion, reward). With pass_k, also pass@1 and pass@k of the correct reward's verdicts, and the
    mean words inside <think>. With an agent, multi-turn rollouts: also tool calls per completion, the share that
    failed, and with the environment reward the share of episodes it scores 1 (success_rate).

    Samples with its own seed and leaves the caller's RNG untouched, so an evaluation before and one after
    training see the same sampling noise.
    """
    repeated, columns = split_columns([p for p in prompts for _ in range(samples_per_prompt)])
    episodes = None
    if agent is not None:
        repeated, episodes = agent.start(repeated, columns)
        columns = {**columns, "environments": episodes}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rollout = sample_rollout(policy, tokenizer, repeated, sampling, episodes=episodes)
    totals, components = reward.score(repeated, rollout.reward_completions, **columns)
    if gold is not None:
        components["gold"] = gold(repeated, rollout.reward_completions, **columns)
    result = {"reward": float(np.mean(totals)), "components": {k: float(np.mean(v)) for k, v in components.items()},
              "mean_length": float(rollout.completion_lengths.float().mean()),
              "rows": [{"prompt": p, "completion": c, "reward": r} for p, c, r in zip(repeated, rollout.completions, totals, strict=True)]}
    if pass_k:
        result.update(pass_rates(components["correct"], samples_per_prompt, pass_k), k=pass_k,
                      think_words=float(np.mean([len(think_text(c).split()) for c in rollout.completions])))
    if episodes is not None:
        tools = tool_statistics(episodes)
        result.update(call_frequency=tools["tools/call_frequency"], failure_frequency=tools["tools/failure_frequency"])
    if "environment" in components:
        result["success_rate"] = success_rate(components["environment"])
    return result


def kl_to_reference(policy, ref_model, tokenizer, prompts: list[str] | list[dict], sampling: SamplingConfig, samples_per_prompt: int,
                    seed: int) -> dict[str, float]:
    """KL(policy || reference) on the policy's own samples of the prompts, k1 (log pi - log ref, unbiased):
    {"per_token": mean over completion tokens, "per_sequence": mean over completions of their sum}. One
    measure for every fine-tuning method, whatever its loss estimates."""
    repeated, _ = split_columns([p for p in prompts for _ in range(samples_per_prompt)])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rollout = sample_rollout(policy, tokenizer, repeated, sampling, ref_model)
    kl = core.kl_estimate(rollout.sampling_logprobs, rollout.ref_logprobs, "k1", rollout.completion_mask)
    return {"per_token": core.masked_mean(kl, rollout.completion_mask).item(), "per_sequence": kl.sum(1).mean().item()}


class FixedEvaluation:
    """One measurement for every fine-tuned model, whatever trained it: the judge's mean reward on
    `samples_per_prompt` samples of each eval prompt, KL(policy || base) on those samples (k1, per
    sequence and per token), and the language-model loss on pretraining text (what fluency is kept).
    The same seed for every model."""

    def __init__(self, judge: str, samples_per_prompt: int = 4, seed: int = 1234, lm_blocks: int = 64):
        self.base_dir = default_base_model()
        self.tokenizer, self.base = load_tokenizer(self.base_dir), load_model(self.base_dir).eval()
        self.prompts, self.judge = load_prompt_rows(DATA_DIR / "prompts_eval.jsonl"), resolve_reward(judge)
        self.sampling, self.samples, self.seed = SamplingConfig(40), samples_per_prompt, seed
        blocks = pretraining_blocks(DATA_DIR / "pretrain.jsonl", self.tokenizer, 64)
        self.lm_blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:lm_blocks]]

    @torch.inference_mode()
    def __call__(self, model_dir) -> dict[str, float]:
        model = load_model(str(model_dir)).eval()
        gold = evaluate_on_prompts(model, self.tokenizer, self.prompts, self.judge, self.sampling, self.samples, self.seed)
        kl = kl_to_reference(model, self.base, self.tokenizer, self.prompts, self.sampling, self.samples, self.seed)
        lm_loss = model(input_ids=self.lm_blocks, labels=self.lm_blocks).loss.item()
        return {"gold": gold["reward"], "kl_sequence": kl["per_sequence"], "kl_token": kl["per_token"],
                "mean_length": gold["mean_length"], "lm_loss": lm_loss}


def pass_rates(correct: list[float], samples_per_prompt: int, k: int) -> dict[str, float]:
    """pass@1 and pass@k averaged over prompts, from verdicts `[prompts * samples_per_prompt]` grouped by prompt."""
    per_prompt = np.asarray(correct).reshape(-1, samples_per_prompt).sum(1).astype(int)
    return {"pass_at_1": float(np.mean([pass_at_k(samples_per_prompt, c, 1) for c in per_prompt])),
            "pass_at_k": float(np.mean([pass_at_k(samples_per_prompt, c, k) for c in per_prompt]))}


def print_completions(title: str, rows: list[dict], limit: int = 4, width: int = 90) -> None:
    tqdm.write(f"--- {title}")
    for row in rows[:limit]:
        completion = row["completion"].strip().replace("\n", " ")
        tqdm.write(f"  [{row['reward']:.2f}] {message_text(row['prompt'])}\n         -> {completion[:width]}{'...' if len(completion) > width else ''}")


def print_side_by_side(before: list[dict], after: list[dict], n: int = 6, width: int = 80) -> None:
    """The same eval prompts before and after training, with their rewards."""
    print("\n=== eval prompts, before -> after training ===")
    for b, a in list(zip(before, after, strict=True))[:n]:
        print(f"{message_text(b['prompt'])}\n  before [{b['reward']:.2f}] {b['completion'].strip()[:width]}\n"
              f"  after  [{a['reward']:.2f}] {a['completion'].strip()[:width]}")
