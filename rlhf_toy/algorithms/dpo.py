"""Direct Preference Optimization (Rafailov et al. 2023): fine-tune on preference pairs against a frozen
reference, with no reward model and no sampling. Field names are TRL's DPOConfig's.

    for each batch of pairs (x, y_w, y_l):                      (ties are left out: DPO has no tie)
        h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]      sequence log-probs
        sigmoid:  loss = -log sigmoid(beta h)                                          (TRL's sigmoid)
        robust:   loss = (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)
                                                  eps = label_smoothing; unbiased under label noise (Chowdhury et al. 2024)
        cdpo:     loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)      conservative DPO (Mitchell 2023),
                                                  which TRL's sigmoid computed before 1.x and no longer offers
        ipo:      loss = (h - 1 / (2 beta))^2, log-probs averaged over tokens          (Azar et al. 2023)
    implicit reward r(x, y) = beta [log pi(y|x) - log ref(y|x)]; pair accuracy: r(y_w) > r(y_l), held out
    report: the rule judge's reward on the eval prompts before and after (as RL reports it), KL to the
            reference on the policy's own samples
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_choice, require_nonnegative, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import RunFields, start_run, write_json
from rlhf_toy.chat import is_conversational, require_chat_template
from rlhf_toy.data import (
    DATA_DIR,
    Labels,
    ShuffledBatches,
    load_prompt_rows,
    shipped_eval_prompts,
    to_labels,
    train_and_held_out_labels,
)
from rlhf_toy.distributed import in_processes, prepare_training, require_even_split
from rlhf_toy.evaluation import evaluate_on_prompts, kl_to_reference, print_side_by_side
from rlhf_toy.fsdp import check_fsdp, full_parameters, full_state
from rlhf_toy.generation.rollout import encode_completions, sequence_logprobs
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.base_model import default_base_model, kind_for
from rlhf_toy.lm.lora import (
    AdapterDisabled,
    ModelFields,
    adapters_disabled,
    save_merged,
    trainable_model,
)
from rlhf_toy.lm.models import (
    check_model_exists,
    disable_dropout,
    evaluation_mode,
    load_model,
    load_tokenizer,
    model_writer,
)
from rlhf_toy.precision import PRECISIONS, set_up_precision
from rlhf_toy.reference_sync import ReferenceSync, ReferenceSyncFields
from rlhf_toy.rewards.functions import DEFAULT_REWARD, resolve_reward
from rlhf_toy.supervised import SupervisedRun, train_supervised

DPO_LOSS_TYPES = ("sigmoid", "robust", "cdpo", "ipo")
LABEL_SMOOTHING_LOSSES = ("robust", "cdpo")


@dataclass
class DPOConfig(ModelFields, RunFields, ReferenceSyncFields):
    model: str | None = config_field(None, "Policy to fine-tune, and the frozen reference (default: the cached default base model)")
    preferences: str = config_field(str(DATA_DIR / "preferences_train.jsonl"), "Preference pairs (data/preferences_*.jsonl's "
                                                                                "schema, or a scripts/label.py file)")
    eval_preferences: str | None = config_field(str(DATA_DIR / "preferences_eval.jsonl"),
                                                "Held-out pairs for pair_accuracy (none: hold out eval_fraction of --preferences)")
    eval_fraction: float = config_field(0.2, "Share of --preferences held out when --eval-preferences is none")
    eval_prompts: str | None = config_field(None, "Prompts the rule judge scores samples of, before and after (default: the shipped "
                                                  "eval prompts, data/prompts_eval.jsonl, or prompts_chat_eval.jsonl for conversations)")
    reward: str = config_field(DEFAULT_REWARD, "The rule judge of reward_before / reward_after (never optimised)")
    beta: float = config_field(0.1, "Strength of the tie to the reference (sigmoid: temperature of the implicit reward; "
                                    "ipo: the margin target is 1/(2 beta) nats per token, so 0.1 asks for 5; 1 did best "
                                    "here, bench/preference-methods.md)")
    loss_type: str = config_field("sigmoid", f"DPO loss: {', '.join(DPO_LOSS_TYPES)}")
    label_smoothing: float = config_field(0.0, "Probability that a pair's label is wrong, in [0, 0.5): the robust and cdpo "
                                              "losses' epsilon")
    disable_dropout: bool = config_field(True, "Turn dropout off in the policy and the reference (TRL's default); false keeps "
                                               "the model's dropout in training")
    learning_rate: float = config_field(5e-5, "AdamW learning rate (constant)")
    steps: int = config_field(200, "Optimizer steps")
    max_train_s: float | None = config_field(None, "Stop after the step that spends this many seconds of training (a budget of wall time)")
    per_device_train_batch_size: int = config_field(16, "Pairs per step")
    max_grad_norm: float = config_field(1.0, "Global gradient-norm clip")
    max_completion_length: int = config_field(40, "Max new tokens of the eval samples")
    eval_samples_per_prompt: int = config_field(2, "Completions per eval prompt for reward_before / reward_after")
    eval_every: int = config_field(50, "Held-out pair accuracy every this many steps")
    seed: int = config_field(0, "Seeds python, numpy, torch, batch order and the eval samples")
    precision: str = config_field("auto", "The training step's forwards and backward in fp32 or bf16 autocast; auto = bf16 where "
                                          "the CPU/GPU has bf16 units, else fp32 (evaluation stays fp32)")
    torch_threads: int = config_field(2, "torch.set_num_threads")
    cpu: bool = config_field(False, "Train on CPU even when an accelerator is present")
    run_dir: str = config_field("runs/dpo", "Output folder (model/ holds the fine-tuned policy)")

    def __post_init__(self):
        super().__post_init__()
        self.check_lora()
        require_positive(beta=self.beta, learning_rate=self.learning_rate, steps=self.steps, max_grad_norm=self.max_grad_norm,
                         max_train_s=self.max_train_s,
                         per_device_train_batch_size=self.per_device_train_batch_size, eval_every=self.eval_every,
                         max_completion_length=self.max_completion_length, eval_samples_per_prompt=self.eval_samples_per_prompt,
                         torch_threads=self.torch_threads)
        require_nonnegative(label_smoothing=self.label_smoothing)
        require_choice(loss_type=(self.loss_type, DPO_LOSS_TYPES), precision=(self.precision, PRECISIONS))
        if not self.label_smoothing < 0.5:
            raise ConfigError(f"--label-smoothing must be in [0, 0.5) (at 0.5 labels carry no signal), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type not in LABEL_SMOOTHING_LOSSES:
            raise ConfigError(f"--label-smoothing is the epsilon of --loss-type {' or '.join(LABEL_SMOOTHING_LOSSES)}; --loss-type "
                              f"{self.loss_type} takes none (TRL's sigmoid ignores it)")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        self.check_reference_sync(uses_reference=True)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """The mean DPO loss over pairs from log-probs `[B]` of chosen and rejected completions under the policy and
    the reference (summed over tokens, or for ipo averaged over tokens), as TRL 1.16's DPOTrainer computes each
    loss_type it has; cdpo is the label-smoothed sigmoid, which it no longer has."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "ipo":
        return ((h - 1 / (2 * beta)) ** 2).mean()
    right, wrong = F.logsigmoid(beta * h), F.logsigmoid(-beta * h)  # the log-likelihood of the label, and of its flip
    eps = label_smoothing
    if loss_type == "robust":
        return ((-(1 - eps) * right + eps * wrong) / (1 - 2 * eps)).mean()
    if loss_type == "cdpo":
        return (-(1 - eps) * right - eps * wrong).mean()
    if loss_type == "sigmoid":
        return -right.mean()
    raise ValueError(f"unknown DPO loss_type {loss_type!r}; accepted: {', '.join(DPO_LOSS_TYPES)}")


def preference_pairs(rows: list[dict]) -> Labels:
    """The pairs with a preference as Labels (first = chosen, second = rejected); DPO has no tie, so ties are left out."""
    return to_labels("pairwise", [row for row in rows if row.get("outcome") != "tie"])[0]


def pair_logprobs(model, tokenizer, pairs: Labels, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(chosen|x), log pi(rejected|x)) `[B]` each, in one forward over both; per_token divides by length."""
    input_ids, attention_mask, completion_mask = encode_completions(tokenizer, pairs.prompts * 2, pairs.first + pairs.second, model)
    device = model.device
    logps = sequence_logprobs(model, input_ids.to(device), attention_mask.to(device), completion_mask.to(device))
    if per_token:
        logps = logps / completion_mask.sum(1).to(device)
    return logps[: len(pairs)], logps[len(pairs):]


def dpo_batch_loss(policy, ref_model, tokenizer, pairs: Labels, cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, r(chosen) `[B]`, r(rejected) `[B]`): the DPO loss of a batch and its implicit rewards (detached)."""
    per_token = cfg.loss_type == "ipo"
    with torch.no_grad(), evaluation_mode(ref_model):
        ref_chosen, ref_rejected = pair_logprobs(ref_model, tokenizer, pairs, per_token)
    policy_chosen, policy_rejected = pair_logprobs(policy, tokenizer, pairs, per_token)
    loss = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss_type, cfg.label_smoothing)
    return loss, cfg.beta * (policy_chosen - ref_chosen).detach(), cfg.beta * (policy_rejected - ref_rejected).detach()


@torch.no_grad()
def pair_accuracy(policy, ref_model, tokenizer, pairs: Labels, cfg: DPOConfig, batch_size: int = 64) -> float:
    """Share of held-out pairs whose implicit reward ranks chosen above rejected."""
    wins = []
    with evaluation_mode(policy):
        for start in range(0, len(pairs), batch_size):
            _, chosen, rejected = dpo_batch_loss(policy, ref_model, tokenizer, pairs.subset(list(range(start, min(start + batch_size, len(pairs))))), cfg)
            wins.append(chosen > rejected)
    return float(torch.cat(wins).float().mean())


def policy_and_reference(cfg: DPOConfig, model_name: str, resume_dir: Path | None, device) -> tuple[Any, Any]:
    """(policy to train, frozen reference): the reference is a copy of model_name's weights, or under LoRA the policy
    with its adapters disabled (lora.AdapterDisabled)."""
    policy = trainable_model(load_model, model_name, resume_dir, cfg).train()
    ref_model = AdapterDisabled(policy) if cfg.use_peft else load_model(model_name).eval().requires_grad_(False).to(device)
    if cfg.disable_dropout:  # the reference runs in eval mode anyway
        disable_dropout(policy)
    return policy, ref_model


def train_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Train with DPO in this process, or as one of several (accelerate launch): each takes its share of every batch of
    pairs. Returns the summary (the main process's; {} on the others)."""
    return in_processes(run_dpo, cfg)


def load_pairs(cfg: DPOConfig) -> tuple[Labels, Labels, int]:
    """(training pairs, held-out pairs, ties left out) of cfg's preference files; a ConfigError for pointwise scores or
    for no pairs on either side."""
    kind, train_rows, eval_rows = train_and_held_out_labels(cfg.preferences, cfg.eval_preferences, DATA_DIR, cfg.eval_fraction, cfg.seed)
    if kind != "pairwise":
        raise ConfigError(f"DPO learns from pairs; {cfg.preferences} holds pointwise scores (train a reward model on them: "
                          "scripts/train_reward_model.py --preferences FILE)")
    pairs, eval_pairs = preference_pairs(train_rows), preference_pairs(eval_rows)
    if not len(pairs) or not len(eval_pairs):
        raise ConfigError(f"{cfg.preferences} leaves {len(pairs)} training and {len(eval_pairs)} held-out pairs that are not ties; "
                          "accepted: at least one of each")
    return pairs, eval_pairs, len(train_rows) - len(pairs)


def run_dpo(cfg: DPOConfig, accelerator) -> dict[str, Any]:
    pairs, eval_pairs, ties = load_pairs(cfg)  # bad files, flags and model folders are reported before the run folder exists
    judge = resolve_reward(cfg.reward)
    batches = ShuffledBatches(len(pairs), min(cfg.per_device_train_batch_size, len(pairs)), torch.Generator().manual_seed(cfg.seed))
    require_even_split(batches.batch_size, accelerator.num_processes, "--per-device-train-batch-size (at most the pairs)")
    check_fsdp(cfg, accelerator.num_processes)
    eval_prompts = load_prompt_rows(cfg.eval_prompts or shipped_eval_prompts(any(map(is_conversational, pairs.prompts))))
    if cfg.model:
        check_model_exists(cfg.model)
    run_dir, checkpoints = start_run(cfg, main_process=accelerator.is_main_process)
    accelerator.wait_for_everyone()  # the main process has checked and created the run folder
    with accelerator.main_process_first():  # the main process builds the default base model if it is not cached
        model_name = cfg.model or default_base_model(kind=kind_for(pairs.prompts))
    tokenizer = load_tokenizer(model_name)
    for name, prompts in (("--preferences", pairs.prompts), ("--eval-prompts", [row["prompt"] for row in eval_prompts])):
        require_chat_template(tokenizer, prompts, name)
    policy, ref_model = policy_and_reference(cfg, model_name, checkpoints.folder / "model" if checkpoints.resumed else None,
                                             accelerator.device)
    separate_reference = None if cfg.use_peft else ref_model  # LoRA's is the policy itself
    precision = set_up_precision(cfg.precision, accelerator.device, policy, separate_reference)
    logger = RunLogger(run_dir) if accelerator.is_main_process else None
    sync = ReferenceSync(policy, ref_model, cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps) if cfg.sync_ref_model else None
    moving = {"reference": ref_model} if sync else {}  # a moving reference's weights are in every checkpoint
    checkpoints.track(logger=logger, batches=batches, **(sync.checkpointed() if sync else {}))
    saved = checkpoints.restore() or {"train_s": 0.0}
    trained, optimizer = prepare_training(accelerator, policy, cfg.fsdp, checkpoints=checkpoints, frozen=[separate_reference],
                                          make_optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0))
    if sync:
        sync.attach(optimizer)
    if accelerator.is_main_process:
        print(f"dpo ({cfg.loss_type}, beta {cfg.beta}) from {model_name}: {len(pairs)} pairs ({ties} ties left out), "
              f"{len(eval_pairs)} held out, {cfg.steps} steps of {batches.batch_size} in {accelerator.num_processes} process(es)")
    run = SupervisedRun(trained, optimizer, batches, checkpoints, logger, accelerator, precision,
                        lambda folder: model_writer(policy, tokenizer, full_state(policy) if cfg.fsdp else None)(folder),
                        cfg.steps, cfg.max_grad_norm, cfg.eval_every, "dpo", max_train_s=cfg.max_train_s, sharded=cfg.fsdp,
                        evaluated=(ref_model,), saved_modules=moving)
    evaluate = functools.partial(evaluate_on_prompts, tokenizer=tokenizer, prompts=eval_prompts, reward=judge,
                                 sampling=SamplingConfig(cfg.max_completion_length), samples_per_prompt=cfg.eval_samples_per_prompt,
                                 seed=cfg.seed)
    with full_parameters(policy, ref_model):
        before = evaluate_reference(policy if cfg.use_peft else ref_model, evaluate) if accelerator.is_main_process else None

    def loss_of(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss, chosen, rejected = dpo_batch_loss(trained, ref_model, tokenizer, pairs.subset(rows.tolist()), cfg)
        return loss, {"rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
                      "rewards/margins": (chosen - rejected).mean().item(), "rewards/accuracies": (chosen > rejected).float().mean().item()}

    train_s = train_supervised(run, loss_of, lambda: {"eval/pair_accuracy": pair_accuracy(policy, ref_model, tokenizer, eval_pairs, cfg)},
                               lambda m: {"loss": f"{m['train/loss']:.3f}", "acc": f"{m['rewards/accuracies']:.2f}"}, saved["train_s"])
    with full_parameters(policy, ref_model):
        if not accelerator.is_main_process:
            return {}
        return finish(cfg, policy.eval(), ref_model, tokenizer, before, evaluate(policy), logger, run_dir, train_s,
                      evaluate.keywords["sampling"], eval_prompts, precision)


def evaluate_reference(reference, evaluate) -> dict[str, Any]:
    """The judge's evaluation of the reference's samples, reward_before: under LoRA the reference is the policy with its
    adapters disabled."""
    with adapters_disabled(reference):
        return evaluate(reference)


def finish(cfg: DPOConfig, policy, ref_model, tokenizer, before: dict, after: dict, logger: RunLogger, run_dir: Path, train_s: float,
           sampling: SamplingConfig, eval_prompts: list[dict], precision: str) -> dict[str, Any]:
    """Save the policy; write summary.json (TRL-style reward_before/after, kl_final, wall_s, pair_accuracy),
    eval_samples.json and curves.png."""
    policy.save_pretrained(run_dir / "model", state_dict=full_state(policy) if cfg.fsdp else None)  # under LoRA: the adapters
    tokenizer.save_pretrained(run_dir / "model")
    if cfg.save_merged_model:
        save_merged(policy, tokenizer, run_dir / "merged")
    kl = kl_to_reference(policy, ref_model, tokenizer, eval_prompts, sampling, cfg.eval_samples_per_prompt, cfg.seed)
    k = cfg.eval_samples_per_prompt
    print_side_by_side(before["rows"][::k], after["rows"][::k])
    summary = {"reward_before": before["reward"], "reward_after": after["reward"], "components_before": before["components"],
               "components_after": after["components"], "mean_length_before": before["mean_length"],
               "mean_length_after": after["mean_length"], "kl_final": kl["per_token"], "kl_sequence": kl["per_sequence"],
               "pair_accuracy": logger.series("eval/pair_accuracy")[1][-1], "loss_type": cfg.loss_type, "beta": cfg.beta,
               "steps": logger.rows[-1]["step"], "precision": precision, "wall_s": train_s, "total_wall_s": logger.elapsed()}
    write_json(run_dir / "summary.json", summary)
    write_json(run_dir / "eval_samples.json", {"before": before["rows"], "after": after["rows"]})
    plot_lines(run_dir / "curves.png", [
        ("step", "DPO loss", {"loss": logger.series("train/loss")}),
        ("step", "pairs ranked as labelled", {"train batch": logger.series("rewards/accuracies"),
                                              "held out": logger.series("eval/pair_accuracy")}),
        ("step", "implicit reward", {"chosen": logger.series("rewards/chosen"), "rejected": logger.series("rewards/rejected")}),
    ], f"DPO ({cfg.loss_type}, beta {cfg.beta}) on {cfg.preferences}")
    logger.close()
    print(f"eval reward {before['reward']:.3f} -> {after['reward']:.3f} (rule judge {cfg.reward}), held-out pair accuracy "
          f"{summary['pair_accuracy']:.3f}, KL to reference {kl['per_token']:.4f} per token; model: {run_dir / 'model'}")
    return summary
