"""What every online RLHF algorithm shares: the fields of its config (RLHFConfig, TRL's names: model,
reward, prompts, batch arithmetic, sampling, optimiser, run folder) and the interface through which the
online loop (rlhf_toy/online.py) drives it (OnlineAlgorithm). Each algorithm's own fields and update are
in its own file beside this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import (
    ConfigError,
    check_finite,
    require_choice,
    require_nonnegative,
    require_positive,
)
from classic_rl.infra.run_folder import RunFields
from rlhf_toy.data import DATA_DIR
from rlhf_toy.distributed import clip_gradients
from rlhf_toy.generation.rollout import Rollout, completion_logprobs, trainer_forward
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.base_model import BASE_MODELS
from rlhf_toy.lm.lora import ModelFields
from rlhf_toy.lm.models import evaluation_mode
from rlhf_toy.precision import PRECISIONS
from rlhf_toy.reference_sync import ReferenceSyncFields
from rlhf_toy.rewards.functions import DEFAULT_REWARD

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class RLHFConfig(ModelFields, RunFields, ReferenceSyncFields):
    """What every RLHF algorithm takes. Batch arithmetic as TRL's: a step's generation batch is
    prompts_per_step x num_generations completions, split into num_minibatches gradient steps."""

    ALGO: ClassVar[str] = ""
    algo: str = config_field("", "RL algorithm, one of rlhf_toy/algorithms/ (grpo, ppo, rloo, reinforce_pp; picks the config class)")
    task: str | None = config_field(None, "Named task setting prompts, eval set, rewards and sampling defaults "
                                          "(rlhf_toy/tasks/; train_rlhf.py --task lists them)")
    model: str | None = config_field(None, "Policy to fine-tune: a save_pretrained folder or hub name (default: the "
                                           "cached built-in base model of --base-model, built on first use)")
    base_model: str | None = config_field(None, f"Built-in base model used without --model: {', '.join(BASE_MODELS)} (default: "
                                                "chat for conversational prompts, else default)")
    reward: str = config_field(DEFAULT_REWARD, "Comma list of rewards: built-in names (length, format), FILE.py:FUNCTION, "
                                               "package.module:function or rm:DIR")
    reward_weights: list[float] | None = config_field(None, "Weights of the rewards in --reward (default: equal, summing to 1)")
    target_words: int = config_field(12, "Target word count of the length reward when the prompt states none")
    gold_reward: str | None = config_field(None, "A reward computed on every rollout and evaluation but never optimised, "
                                                 "e.g. length,format while --reward is rm:DIR (the proxy-vs-gold picture)")
    tools: str = config_field("", "Comma list of tools the model may call (TRL's tools=): calculator, FILE.py:FUNCTION or "
                                  "package.module:FUNCTION; it writes <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call> and "
                                  "reads <tool_response>...</tool_response> (default: none, single-turn)")
    environment_factory: str | None = config_field(None, "An environment per rollout (TRL's environment_factory=): a text game "
                                                         "(frozenlake, maze), or FILE.py:CLASS / package.module:CLASS with reset(), "
                                                         "its tools as methods and get_reward() (the environment reward)")
    max_tool_calling_iterations: int | None = config_field(None, "Tool calls per completion at most; a call past them ends it "
                                                                 "(default: no limit but --max-completion-length)")
    prompts: str = config_field(str(DATA_DIR / "prompts_train.jsonl"), "Training prompts (JSONL with a prompt field, or .txt)")
    eval_prompts: str = config_field(str(DATA_DIR / "prompts_eval.jsonl"), "Fixed evaluation prompts")
    eval_samples_per_prompt: int = config_field(2, "Completions per eval prompt for reward_before / reward_after")
    pass_at_k: int = config_field(0, "With the correct reward: report pass@1 and pass@k from eval_samples_per_prompt >= k "
                                     "samples per eval prompt (0: off)")
    eval_every: int = config_field(0, "Also evaluate every N steps, for the curves of eval reward (and pass@k) (0: never)")
    steps: int = config_field(100, "Training steps (one rollout and its updates each)")
    max_train_s: float | None = config_field(None, "Stop after the step that spends this many seconds of training (a "
                                                   "budget of wall time; the schedule still spans --steps)")
    seed: int = config_field(0, "Seeds python, numpy, torch, prompt order and sampling")
    prompts_per_step: int = config_field(8, "Distinct prompts per step")
    num_generations: int = config_field(8, "Completions per prompt (GRPO's group size G; must be >= 2 for GRPO)")
    num_minibatches: int = config_field(1, "Gradient steps per pass over a rollout")
    max_completion_length: int = config_field(40, "Max new tokens per completion")
    temperature: float = config_field(1.0, "Sampling temperature of training, > 0 (log-probs are taken at the same temperature)")
    eval_temperature: float | None = config_field(None, "Sampling temperature of evaluation (default: --temperature; 0: greedy)")
    top_k: int = config_field(0, "Top-k sampling (0: off)")
    top_p: float = config_field(1.0, "Nucleus sampling (1: off)")
    learning_rate: float = config_field(5e-4, "AdamW learning rate (the peak, under a schedule)")
    lr_scheduler_type: str = config_field("constant", f"Learning rate over the steps: {', '.join(LR_SCHEDULES)} (decay "
                                                      "toward 0, as transformers' get_scheduler)")
    warmup_ratio: float = config_field(0.0, "Share of the steps over which the learning rate rises linearly from 0")
    max_grad_norm: float = config_field(1.0, "Global gradient-norm clip")
    log_completions_every: int = config_field(25, "Print a table of completions every N steps (0: never)")
    precision: str = config_field("auto", "The update and the reference's forward in fp32 or bf16 autocast (sampling stays "
                                          "fp32); auto = bf16 where the CPU/GPU has bf16 units, else fp32; weights stay fp32")
    disable_dropout: bool = config_field(True, "Turn dropout off in the policy, reference and value models (TRL's default), so "
                                               "the update's log-probs are those of the distribution the tokens were drawn "
                                               "from; false keeps the model's dropout in the update")
    torch_threads: int = config_field(2, "torch.set_num_threads")
    cpu: bool = config_field(False, "Run on CPU even when an accelerator is present")
    trust_remote_code: bool = config_field(False, "Allow a hub model's own code to run")
    run_dir: str = config_field("runs/rlhf", "Output folder")

    def __post_init__(self):
        if not self.ALGO:
            raise TypeError("RLHFConfig holds the shared fields; build an algorithm's own config (rlhf_toy/algorithms/)")
        super().__post_init__()
        self.check_lora()
        self.algo = self.algo or self.ALGO
        if self.algo != self.ALGO:
            raise ConfigError(f"{type(self).__name__} is --algo {self.ALGO}, got --algo {self.algo}")
        require_positive(steps=self.steps, prompts_per_step=self.prompts_per_step, num_generations=self.num_generations,
                         num_minibatches=self.num_minibatches, max_completion_length=self.max_completion_length,
                         learning_rate=self.learning_rate, max_grad_norm=self.max_grad_norm, target_words=self.target_words,
                         max_train_s=self.max_train_s,
                         torch_threads=self.torch_threads, eval_samples_per_prompt=self.eval_samples_per_prompt)
        require_nonnegative(log_completions_every=self.log_completions_every, pass_at_k=self.pass_at_k, eval_every=self.eval_every)
        if self.max_tool_calling_iterations is not None and self.max_tool_calling_iterations < 1:
            raise ConfigError(f"--max-tool-calling-iterations must be >= 1, got {self.max_tool_calling_iterations}; accepted: a "
                              "positive number of tool calls, or unset for no limit (--tools '' turns tools off)")
        require_choice(lr_scheduler_type=(self.lr_scheduler_type, LR_SCHEDULES), precision=(self.precision, PRECISIONS))
        if self.base_model is not None:
            require_choice(base_model=(self.base_model, BASE_MODELS))
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.pass_at_k > self.eval_samples_per_prompt:
            raise ConfigError(f"--pass-at-k {self.pass_at_k} needs --eval-samples-per-prompt >= {self.pass_at_k}, "
                              f"got {self.eval_samples_per_prompt}")
        if self.pass_at_k and "correct" not in self.reward.split(","):
            raise ConfigError("--pass-at-k counts answers the correct reward accepts; add correct to --reward "
                              "(e.g. --task arithmetic)")
        self.check_minibatches(num_processes=1)
        self.check_reference_sync(self.uses_reference)
        if self.temperature <= 0:  # every log-prob of the losses is of softmax(logits / T): greedy has none
            raise ConfigError(f"--temperature must be > 0 for training, got {self.temperature}; greedy decoding is for "
                              "evaluation (--eval-temperature 0) and scripts/sample.py")
        _ = self.eval_sampling  # validates the sampling fields

    def check_minibatches(self, num_processes: int) -> None:
        """A ConfigError unless each of num_processes takes whole prompt groups and splits its completions into
        num_minibatches equal minibatches (each process updates on its own share: an uneven split would take more
        gradient steps than asked, and DAPO's normaliser would not match them)."""
        per_process = self.completions_per_step // num_processes
        if self.prompts_per_step % num_processes or per_process % self.num_minibatches:
            raise ConfigError(f"{self.prompts_per_step} prompts x {self.num_generations} completions in {num_processes} "
                              f"process(es) with {self.num_minibatches} minibatch(es) does not split evenly; accepted: "
                              f"--prompts-per-step divisible by the processes, and the completions of each process "
                              f"(prompts_per_step * num_generations / processes) divisible by --num-minibatches")

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of training step `step` (1..steps): transformers' get_scheduler formulas with
        one scheduler step per training step (linear warmup from 0 over warmup_ratio of the steps, then
        constant, or linear or cosine decay toward 0). A function of the step alone, so a resumed run
        needs no scheduler state."""
        done, warmup = step - 1, int(self.warmup_ratio * self.steps)
        if done < warmup:
            return self.learning_rate * done / warmup
        progress = (done - warmup) / max(1, self.steps - warmup)
        decay = {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}
        return self.learning_rate * decay[self.lr_scheduler_type]

    @property
    def uses_reference(self) -> bool:
        """Whether the loss needs a frozen reference model (a KL coefficient above 0)."""
        raise NotImplementedError

    @property
    def passes(self) -> int:
        """Passes over each rollout (GRPO's num_iterations, PPO's num_ppo_epochs)."""
        raise NotImplementedError

    def minibatch_orders(self, completions: int) -> list[tuple[Tensor, ...]]:
        """For each of the update's passes, a fresh random order of this process's completions split into
        num_minibatches minibatches of row indices."""
        return [torch.randperm(completions).split(completions // self.num_minibatches) for _ in range(self.passes)]

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_completion_length, self.temperature, self.top_k, self.top_p)

    @property
    def eval_seed(self) -> int:
        """Evaluation samples with its own seed, apart from training's."""
        return self.seed + 12345

    @property
    def eval_sampling(self) -> SamplingConfig:
        temperature = self.temperature if self.eval_temperature is None else self.eval_temperature
        return SamplingConfig(self.max_completion_length, temperature, self.top_k, self.top_p)


class OnlineAlgorithm:
    """One online RLHF algorithm in one run, as the loop (rlhf_toy/online.py) drives it: made once with the run's
    policy, then update() once a step on a rollout and its rewards. Adding an algorithm is a file in this folder
    holding its Config (RLHFConfig plus its own fields, TRL's names) and a subclass of this, and its line in
    __init__.py's registry; the loop never asks which algorithm it runs.

    name            the --algo name
    Config          its config dataclass; cfg.uses_reference says whether the loop loads a reference model
    kl_label        what its logged "kl" is, for the curves

    In a run of N processes (accelerate launch) update() sees this process's share of the rollout: it takes statistics
    of the whole batch over the processes (rlhf_toy.distributed) and must give the step one process would take.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[RLHFConfig]] = RLHFConfig
    kl_label: ClassVar[str] = "KL to the reference per token"

    def __init__(self, cfg: RLHFConfig, policy, load_copy, tokenizer):
        """load_copy() gives a fresh copy of the base model (a critic's trunk, say)."""
        self.cfg = cfg

    def modules(self) -> list:
        """Models trained beside the policy, by the same optimizer (a critic); with --fsdp they are sharded as it is."""
        return []

    def state(self) -> dict[str, Any]:
        """Objects with state_dict / load_state_dict that every checkpoint holds (None: not used in this run)."""
        return {}

    def place(self, device) -> list:
        """Move the algorithm's own models to device; returns its transformer models, which run under the update's
        autocast (None for one it does not have)."""
        return []

    def update(self, policy, ref_model, optimizer, accelerator, rollout, rewards, rewards_per_func) -> dict[str, float]:
        """num passes of gradient steps on one rollout `[B]`, its sequence rewards `[B]` (the weighted sum of the rewards per
        function `[B, K]`, in --reward's order, whose weights reward_weights gives); returns the step's metrics."""
        raise NotImplementedError


def check_reward_clip_range(clip_range: list[float] | None) -> None:
    """A ConfigError unless --reward-clip-range is unset or [min, max] with min <= max."""
    if clip_range is not None and (len(clip_range) != 2 or clip_range[0] > clip_range[1]):
        raise ConfigError(f"--reward-clip-range takes two numbers, min <= max, got {clip_range}")


def trained_mask(rollout: Rollout, mask_truncated_completions: bool) -> Tensor:
    """The completion tokens `[B, C]` the loss trains on: all, or without the completions that hit the length limit (DAPO)."""
    if not mask_truncated_completions:
        return rollout.completion_mask
    return rollout.completion_mask * (~rollout.is_truncated).float()[:, None]


def logprobs_before_update(policy, ref_model, rollout: Rollout, minibatches: list[Tensor], temperature: float,
                           with_old: bool) -> tuple[Tensor | None, Tensor | None]:
    """(the policy's log-probs `[B, C]` before the update, or None without with_old; the reference's, or None without
    one), each from the update's own forward on its first pass's minibatches (trainer_forward), so that on the first
    minibatch the ratio is exactly 1 and the KL to an unchanged reference exactly 0."""
    def logprobs(model):
        return trainer_forward(lambda rows: completion_logprobs(model, rollout.input_ids[rows], rollout.attention_mask[rows],
                                                                rollout.completion_mask[rows], temperature)[:1], minibatches)[0]

    ref = None
    if ref_model is not None:
        with evaluation_mode(ref_model):
            ref = logprobs(ref_model)
    return (logprobs(policy) if with_old else None), ref


def gradient_step(accelerator, optimizer, loss: Tensor, parameters, max_grad_norm: float) -> Tensor:
    """Backward, clip the gradient norm over every process, step; returns the norm before clipping. A non-finite loss
    or norm raises NonFiniteError before the step, so the weights stay good."""
    accelerator.backward(loss)
    grad_norm = clip_gradients(accelerator, parameters, max_grad_norm)
    check_finite(None, loss=loss, grad_norm=grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
