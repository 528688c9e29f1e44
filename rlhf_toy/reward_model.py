"""A trained reward model: the policy's GPT-2 trunk with a scalar head, fitted to preference pairs
with the Bradley-Terry loss (Christiano et al. 2017; Ouyang et al. 2022).

    pairs (prompt, chosen, rejected) ranked by the rule judge; flip each label with prob label_noise
    r = AutoModelForSequenceClassification(num_labels=1), initialised from the base policy
    minimise  -log sigmoid(r(prompt, chosen) - r(prompt, rejected))
    report    held-out pair accuracy, and the Spearman correlation between r and the rule reward
              on fresh samples of the base policy (is the proxy ranking what the gold rule ranks?)
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.infra.plots import plot_scatter
from classic_rl.infra.run_folder import RunFields, start_run, write_json
from rlhf_toy.base_model import default_base_model
from rlhf_toy.data import DATA_DIR, ShuffledBatches, check_finite_before_step, load_prompts, load_rows
from rlhf_toy.distributed import make_accelerator
from rlhf_toy.learned_reward import score_texts, sequence_texts
from rlhf_toy.models import (
    check_model_exists,
    load_model,
    load_tokenizer,
    model_writer,
)
from rlhf_toy.rewards import resolve_reward
from rlhf_toy.sampling import SamplingConfig, generate_completions


@dataclass
class RewardModelConfig(RunFields):
    model: str | None = config_field(None, "Backbone to start from (default: the cached default base model)")
    data_dir: str = config_field(str(DATA_DIR), "Folder with preferences_train.jsonl, preferences_eval.jsonl, prompts_eval.jsonl")
    label_noise: float = config_field(0.0, "Probability of flipping each training label (a noisy human labeller)")
    seed: int = config_field(0, "Seeds python, numpy, torch, label noise and batch order")
    steps: int = config_field(250, "Optimizer steps")
    batch_size: int = config_field(32, "Pairs per step")
    learning_rate: float = config_field(3e-4, "AdamW learning rate")
    max_grad_norm: float = config_field(1.0, "Global gradient-norm clip")
    eval_every: int = config_field(50, "Held-out accuracy every this many steps")
    spearman_samples: int = config_field(256, "Fresh base-policy completions scored by both the model and the rule")
    torch_threads: int = config_field(2, "torch.set_num_threads")
    cpu: bool = config_field(False, "Train on CPU even when an accelerator is present")
    run_dir: str = config_field("runs/reward_model", "Output folder (model/ is what rm:DIR loads: give rm:RUN_DIR/model)")

    def __post_init__(self):
        super().__post_init__()
        require_positive(steps=self.steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
                         max_grad_norm=self.max_grad_norm, eval_every=self.eval_every,
                         spearman_samples=self.spearman_samples, torch_threads=self.torch_threads)
        if not 0 <= self.label_noise < 0.5:
            raise ConfigError(f"--label-noise must be in [0, 0.5) (at 0.5 labels carry no signal), got {self.label_noise}")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), averaged over pairs `[B]`."""
    return -F.logsigmoid(chosen - rejected).mean()


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


def noisy_pairs(rows, label_noise: float, seed: int) -> tuple[list[str], list[str], list[str], int]:
    """(prompts, chosen, rejected, n_flipped) with each label flipped with probability label_noise."""
    rng = random.Random(seed)
    prompts, chosen, rejected, flipped = [], [], [], 0
    for row in rows:
        flip = rng.random() < label_noise
        flipped += flip
        prompts.append(row["prompt"])
        chosen.append(row["rejected"] if flip else row["chosen"])
        rejected.append(row["chosen"] if flip else row["rejected"])
    return prompts, chosen, rejected, flipped


@torch.inference_mode()
def pair_accuracy(model, tokenizer, rows) -> float:
    model.eval()
    prompts = list(rows["prompt"])
    chosen = score_texts(model, tokenizer, sequence_texts(tokenizer, prompts, list(rows["chosen"])))
    rejected = score_texts(model, tokenizer, sequence_texts(tokenizer, prompts, list(rows["rejected"])))
    model.train()
    return float((chosen > rejected).float().mean())


def train_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    # bad data files and model folders are reported before the run folder is created
    train_rows = load_rows(Path(cfg.data_dir) / "preferences_train.jsonl", ["prompt", "chosen", "rejected"])
    eval_rows = load_rows(Path(cfg.data_dir) / "preferences_eval.jsonl", ["prompt", "chosen", "rejected"])
    eval_prompts = load_prompts(Path(cfg.data_dir) / "prompts_eval.jsonl")
    if cfg.model:
        check_model_exists(cfg.model)
    run_dir, checkpoints = start_run(cfg)
    accelerator = make_accelerator(cfg.cpu)
    base = cfg.model or default_base_model()
    prompts, chosen, rejected, flipped = noisy_pairs(train_rows, cfg.label_noise, cfg.seed)

    tokenizer = load_tokenizer(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoints.folder / "model") if checkpoints.resumed else base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    batches = ShuffledBatches(len(prompts), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    logger = RunLogger(run_dir)
    checkpoints.track(logger=logger, optimizer=optimizer, batches=batches)
    checkpoints.restore()
    model, optimizer = accelerator.prepare(model, optimizer)
    write_model = model_writer(accelerator.unwrap_model(model), tokenizer)

    print(f"reward model from {base}: {len(prompts)} pairs ({flipped} labels flipped, noise {cfg.label_noise}), "
          f"{len(eval_rows)} held-out pairs, {cfg.steps} steps of {cfg.batch_size}")
    progress = tqdm(range(checkpoints.step + 1, cfg.steps + 1), initial=checkpoints.step, total=cfg.steps,
                    desc="reward model", mininterval=1.0)
    with checkpoints.stop:
        for step in progress:
            idx = batches.next().tolist()
            batch_prompts = [prompts[i] for i in idx]
            scores = score_texts(model, tokenizer, sequence_texts(tokenizer, batch_prompts * 2, [chosen[i] for i in idx] +
                                                                  [rejected[i] for i in idx]), batch_size=2 * len(idx))
            loss = bradley_terry_loss(scores[: len(idx)], scores[len(idx):])
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            save_last_good = functools.partial(checkpoints.save, write_files=write_model)
            check_finite_before_step(step, batches, save_last_good, train_loss=loss, grad_norm=grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            metrics = {"train/loss": loss.item(), "train/grad_norm": float(grad_norm),
                       "train/accuracy": float((scores[: len(idx)] > scores[len(idx):]).float().mean())}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                metrics["eval/accuracy"] = pair_accuracy(model, tokenizer, eval_rows)
            logger.log(step, metrics)
            progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", refresh=False)
            checkpoints.save_if_due(step, write_model)
    train_s = logger.elapsed()

    model = accelerator.unwrap_model(model).eval()
    model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    # Does the proxy rank fresh base-policy samples as the gold rule does?
    policy = load_model(base).eval()
    sample_prompts = [eval_prompts[i % len(eval_prompts)] for i in range(cfg.spearman_samples)]
    completions = generate_completions(policy, tokenizer, sample_prompts, SamplingConfig(max_new_tokens=40), seed=cfg.seed)
    gold = np.array(resolve_reward()(sample_prompts, completions))
    with torch.inference_mode():
        proxy = score_texts(model, tokenizer, sequence_texts(tokenizer, sample_prompts, completions)).cpu().numpy()
    summary = {"eval_accuracy": logger.series("eval/accuracy")[1][-1], "spearman": spearman(proxy, gold),
               "label_noise": cfg.label_noise, "labels_flipped": flipped, "steps": cfg.steps,
               "train_loss_final": logger.rows[-1]["train/loss"], "train_s": train_s, "wall_s": logger.elapsed(),
               "model_dir": "model"}
    write_json(run_dir / "summary.json", summary)
    plot_scatter(run_dir / "rm_vs_rule.png", gold, proxy, "rule reward (gold)", "reward model score (proxy)",
                 f"reward model vs rule on {len(gold)} base-policy samples: Spearman {summary['spearman']:.2f}")
    logger.close()
    return summary
