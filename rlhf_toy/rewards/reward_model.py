"""A trained reward model: the policy's GPT-2 trunk with a scalar head, fitted to people's (or a rule's)
judgements, the scoring model of InstructGPT (Ouyang et al. 2022) and of Christiano et al. 2017.

    labels   pairs (prompt, chosen, rejected), ties allowed, each flipped with prob label_noise;
             or pointwise scores 1-5 of single completions (scripts/label.py --pointwise)
    r        AutoModelForSequenceClassification(num_labels=1), initialised from the base policy; its score is read at the
             last token that is not padding: the eos after the response, or, where the tokenizer pads with its eos
             (GPT-2's, which has no pad token), the response's last token
    pairs    minimise  -[t log sigmoid(r(chosen) - r(rejected)) + (1 - t) log sigmoid(r(rejected) - r(chosen))]
             (Bradley-Terry; t = 1, or 1/2 for a tie)
    scores   minimise  (r(completion) - (score - 3) / 2)^2            (regression onto [-1, 1])
    report   held-out accuracy (pairs ranked as labelled), and the Spearman correlation between r and
             the rule reward on fresh samples of the base policy (is the proxy ranking what the gold rule ranks?)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from classic_rl.core import bradley_terry_loss, ranking_accuracy
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_choice, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.infra.plots import plot_scatter
from classic_rl.infra.run_folder import RunFields, start_run, write_json
from rlhf_toy.chat import is_conversational, require_chat_template
from rlhf_toy.data import (
    DATA_DIR,
    Labels,
    ShuffledBatches,
    load_prompts,
    shipped_eval_prompts,
    to_labels,
    train_and_held_out_labels,
)
from rlhf_toy.distributed import in_processes, prepare_training, require_even_split
from rlhf_toy.fsdp import check_fsdp, full_parameters, full_state
from rlhf_toy.generation.sampling import SamplingConfig, generate_completions
from rlhf_toy.lm.base_model import default_base_model, kind_for
from rlhf_toy.lm.lora import ModelFields, save_merged, trainable_model
from rlhf_toy.lm.models import (
    check_model_exists,
    disable_dropout,
    evaluation_mode,
    load_model,
    load_tokenizer,
    model_writer,
)
from rlhf_toy.precision import PRECISIONS, set_up_precision
from rlhf_toy.rewards.functions import resolve_reward
from rlhf_toy.rewards.learned_reward import score_texts, sequence_texts
from rlhf_toy.supervised import SupervisedRun, train_supervised


@dataclass
class RewardModelConfig(ModelFields, RunFields):
    model: str | None = config_field(None, "Backbone to start from (default: the cached default base model)")
    data_dir: str = config_field(str(DATA_DIR), "Folder with preferences_train.jsonl, preferences_eval.jsonl, prompts_eval.jsonl "
                                                "(prompts_chat_eval.jsonl for conversations)")
    preferences: str | None = config_field(None, "Training labels: pairs (data/preferences_*.jsonl's schema) or label.py "
                                                 "--pointwise scores (default: DATA_DIR/preferences_train.jsonl)")
    eval_preferences: str | None = config_field(None, "Held-out labels of the same kind (default: DATA_DIR/preferences_eval"
                                                      ".jsonl, or eval_fraction of --preferences when that is given)")
    eval_fraction: float = config_field(0.2, "Share of --preferences held out when no --eval-preferences is given")
    gold_reward: str = config_field("length,format", "The rule the Spearman check compares the reward model with")
    label_noise: float = config_field(0.0, "Probability of flipping each training label (a noisy human labeller)")
    seed: int = config_field(0, "Seeds python, numpy, torch, label noise and batch order")
    steps: int = config_field(250, "Optimizer steps")
    max_train_s: float | None = config_field(None, "Stop after the step that spends this many seconds of training (a budget of "
                                                   "wall time; the schedule still spans the steps)")
    batch_size: int = config_field(32, "Pairs per step")
    learning_rate: float = config_field(3e-4, "AdamW learning rate")
    max_grad_norm: float = config_field(1.0, "Global gradient-norm clip")
    eval_every: int = config_field(50, "Held-out accuracy every this many steps")
    spearman_samples: int = config_field(256, "Fresh base-policy completions scored by both the model and the rule")
    precision: str = config_field("auto", "The training step's forward and backward in fp32 or bf16 autocast; auto = bf16 where "
                                          "the CPU/GPU has bf16 units, else fp32 (evaluation and the saved weights stay fp32)")
    disable_dropout: bool = config_field(True, "Turn dropout off in the reward model (TRL's default); false keeps the model's "
                                               "dropout in training")
    torch_threads: int = config_field(2, "torch.set_num_threads")
    cpu: bool = config_field(False, "Train on CPU even when an accelerator is present")
    run_dir: str = config_field("runs/reward_model", "Output folder (model/ is what rm:DIR loads: give rm:RUN_DIR/model)")

    def __post_init__(self):
        super().__post_init__()
        self.check_lora()
        require_positive(steps=self.steps, batch_size=self.batch_size, learning_rate=self.learning_rate, max_train_s=self.max_train_s,
                         max_grad_norm=self.max_grad_norm, eval_every=self.eval_every,
                         spearman_samples=self.spearman_samples, torch_threads=self.torch_threads)
        require_choice(precision=(self.precision, PRECISIONS))
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0 <= self.label_noise < 0.5:
            raise ConfigError(f"--label-noise must be in [0, 0.5) (at 0.5 labels carry no signal), got {self.label_noise}")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


def label_scores(model, tokenizer, labels: Labels) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's scores `[N]` of the first texts and, for pairs, of the second, in one batch."""
    if labels.second is None:
        return score_texts(model, tokenizer, sequence_texts(tokenizer, labels.prompts, labels.first)), None
    scores = score_texts(model, tokenizer, sequence_texts(tokenizer, labels.prompts * 2, labels.first + labels.second))
    return scores[: len(labels)], scores[len(labels):]


def labels_loss(model, tokenizer, labels: Labels) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, metrics) of a batch: Bradley-Terry on pairs, squared error on scores."""
    first, second = label_scores(model, tokenizer, labels)
    target = labels.target.to(first.device)
    if second is None:
        return F.mse_loss(first, target), {}
    return bradley_terry_loss(first, second, target), {"train/accuracy": ranking_accuracy(first, second, target)}


@torch.inference_mode()
def held_out_accuracy(model, tokenizer, labels: Labels) -> float:
    """Pairs: share ranked as labelled. Scores: share of the pairs of completions with different scores
    that the model orders the same way (concordance)."""
    with evaluation_mode(model):
        first, second = label_scores(model, tokenizer, labels)
    if second is not None:
        return ranking_accuracy(first, second, labels.target.to(first.device))
    i, j = torch.triu_indices(len(first), len(first), offset=1)
    differ = labels.target[i] != labels.target[j]
    if not differ.any():
        return float("nan")
    agree = (first.cpu()[i] > first.cpu()[j]) == (labels.target[i] > labels.target[j])
    return float(agree[differ].float().mean())


def gold_and_proxy(model, tokenizer, base: str, eval_prompts: list[str], gold_reward, cfg: RewardModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Does the proxy rank fresh samples of the base policy as the gold rule does? (gold, proxy) scores `[spearman_samples]`."""
    policy = load_model(base).eval()
    sample_prompts = [eval_prompts[i % len(eval_prompts)] for i in range(cfg.spearman_samples)]
    completions = generate_completions(policy, tokenizer, sample_prompts, SamplingConfig(max_new_tokens=40), seed=cfg.seed)
    with torch.inference_mode():
        proxy = score_texts(model, tokenizer, sequence_texts(tokenizer, sample_prompts, completions)).cpu().numpy()
    return np.array(gold_reward(sample_prompts, completions)), proxy


def train_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    """Train the reward model in this process, or as one of several (accelerate launch): each takes its share of every
    batch of labels. Returns the summary (the main process's; {} on the others)."""
    return in_processes(run_reward_model, cfg)


def run_reward_model(cfg: RewardModelConfig, accelerator) -> dict[str, Any]:
    # bad data files and model folders are reported before the run folder is created
    kind, train_rows, eval_rows = train_and_held_out_labels(cfg.preferences, cfg.eval_preferences, cfg.data_dir,
                                                            cfg.eval_fraction, cfg.seed)
    train_prompts = [row["prompt"] for row in train_rows]
    eval_prompts = load_prompts(shipped_eval_prompts(any(map(is_conversational, train_prompts)), cfg.data_dir))
    gold_reward = resolve_reward(cfg.gold_reward)
    labels, flipped = to_labels(kind, train_rows, cfg.label_noise, cfg.seed)
    eval_labels, _ = to_labels(kind, eval_rows)
    batches = ShuffledBatches(len(labels), min(cfg.batch_size, len(labels)), torch.Generator().manual_seed(cfg.seed))
    require_even_split(batches.batch_size, accelerator.num_processes, "--batch-size (at most the labels)")
    check_fsdp(cfg, accelerator.num_processes)
    if cfg.model:
        check_model_exists(cfg.model)
    run_dir, checkpoints = start_run(cfg, main_process=accelerator.is_main_process)
    accelerator.wait_for_everyone()  # the main process has checked and created the run folder
    with accelerator.main_process_first():  # the main process builds the default base model if it is not cached
        base = cfg.model or default_base_model(kind=kind_for(train_prompts))
    tokenizer = load_tokenizer(base)
    require_chat_template(tokenizer, train_prompts, "--preferences")
    model = reward_model_to_train(cfg, base, tokenizer, checkpoints.folder / "model" if checkpoints.resumed else None)
    precision = set_up_precision(cfg.precision, accelerator.device, model)
    logger = RunLogger(run_dir) if accelerator.is_main_process else None
    checkpoints.track(logger=logger, batches=batches)
    saved = checkpoints.restore() or {"train_s": 0.0}
    trained, optimizer = prepare_training(accelerator, model, cfg.fsdp, checkpoints=checkpoints,
                                          make_optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0))
    run = SupervisedRun(trained, optimizer, batches, checkpoints, logger, accelerator, precision,
                        lambda folder: model_writer(model, tokenizer, full_state(model) if cfg.fsdp else None)(folder),
                        cfg.steps, cfg.max_grad_norm, cfg.eval_every, "reward model", max_train_s=cfg.max_train_s, sharded=cfg.fsdp)
    if accelerator.is_main_process:
        objective = "regression on 1-5 scores" if kind == "pointwise" else "Bradley-Terry on pairs"
        print(f"reward model from {base}: {objective}, {len(labels)} {kind} labels ({flipped} flipped, noise {cfg.label_noise}), "
              f"{len(eval_labels)} held out, {cfg.steps} steps of {batches.batch_size} in {accelerator.num_processes} process(es), "
              f"{precision}")
    train_s = train_supervised(run, lambda rows: labels_loss(trained, tokenizer, labels.subset(rows.tolist())),
                               lambda: {"eval/accuracy": held_out_accuracy(model, tokenizer, eval_labels)},
                               lambda m: {"loss": f"{m['train/loss']:.3f}"}, saved["train_s"])
    summary = {"labels": kind, "train_labels": len(labels), "eval_labels": len(eval_labels), "label_noise": cfg.label_noise,
               "labels_flipped": flipped, "precision": precision, "train_s": train_s}
    with full_parameters(model):
        if not accelerator.is_main_process:
            return {}
        return finish(cfg, model.eval(), tokenizer, base, eval_prompts, gold_reward, logger, run_dir, summary)


def reward_model_to_train(cfg: RewardModelConfig, base: str, tokenizer, resume_dir: Path | None):
    """A sequence classifier with one output on base's trunk (with --use-peft, adapters; fresh or the checkpoint's), in
    training mode, padding with the tokenizer's pad token."""
    def load(name: str):
        return AutoModelForSequenceClassification.from_pretrained(name, num_labels=1)

    # under LoRA the score head trains whole beside the adapters (peft's modules_to_save for SEQ_CLS)
    model = trainable_model(load, base, resume_dir, cfg, task_type="SEQ_CLS").train()
    if cfg.disable_dropout:
        disable_dropout(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def finish(cfg: RewardModelConfig, model, tokenizer, base: str, eval_prompts: list[str], gold_reward, logger: RunLogger,
           run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Save the model; write summary.json (summary plus the held-out accuracy and the Spearman correlation with the gold
    rule on fresh samples of the base policy) and rm_vs_rule.png."""
    # under LoRA: the adapters and the score head, which rm:DIR merges on loading; with --fsdp, the gathered weights
    model.save_pretrained(run_dir / "model", state_dict=full_state(model) if cfg.fsdp else None)
    tokenizer.save_pretrained(run_dir / "model")
    if cfg.save_merged_model:
        save_merged(model, tokenizer, run_dir / "merged")
    gold, proxy = gold_and_proxy(model, tokenizer, base, eval_prompts, gold_reward, cfg)
    accuracies = logger.series("eval/accuracy")[1]  # none when no held-out pair has a preference or no two held-out scores differ
    summary = {"eval_accuracy": accuracies[-1] if accuracies else None, "spearman": spearman(proxy, gold), **summary,
               "steps": logger.rows[-1]["step"], "train_loss_final": logger.rows[-1]["train/loss"], "wall_s": logger.elapsed(),
               "model_dir": "model"}
    write_json(run_dir / "summary.json", summary)
    plot_scatter(run_dir / "rm_vs_rule.png", gold, proxy, f"rule reward {cfg.gold_reward} (gold)", "reward model score (proxy)",
                 f"reward model vs rule on {len(gold)} base-policy samples: Spearman {summary['spearman']:.2f}")
    logger.close()
    return summary
