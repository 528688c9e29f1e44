"""Typed configs of RLHF runs, with TRL's field names: what GRPO and PPO share (RLHFConfig), and each
algorithm's own fields (GRPOConfig, PPOConfig). `train_rlhf.py --algo NAME` picks the class; every
field is a flag.

    RLHFConfig   model, reward, prompts, batch arithmetic, sampling, optimiser, run folder
    GRPOConfig   beta (k3 KL in the loss), epsilon / epsilon_high, loss_type, scale_rewards, num_iterations
    PPOConfig    kl_coef / target_kl (k1 KL in the reward), cliprange, critic, vf_coef, cliprange_value,
                 gamma, lam, num_ppo_epochs, whiten_rewards, missing_eos_penalty
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_choice, require_nonnegative, require_positive
from classic_rl.infra.run_folder import RunFields
from rlhf_toy.base_model import BASE_MODELS
from rlhf_toy.data import DATA_DIR
from rlhf_toy.precision import PRECISIONS
from rlhf_toy.rewards import DEFAULT_REWARD
from rlhf_toy.sampling import SamplingConfig

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
SCALE_REWARDS = ("group", "batch", "none")
CRITICS = ("separate", "shared", "rm")
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class RLHFConfig(RunFields):
    """What every RLHF algorithm takes. Batch arithmetic as TRL's: a step's generation batch is
    prompts_per_step x num_generations completions, split into num_minibatches gradient steps."""

    ALGO: ClassVar[str] = ""
    algo: str = config_field("", "RL algorithm: grpo or ppo (picks the config class)")
    task: str | None = config_field(None, "Named task setting prompts, eval set, rewards and sampling defaults "
                                          "(rlhf_toy/tasks.py; train_rlhf.py --task lists them)")
    model: str | None = config_field(None, "Policy to fine-tune: a save_pretrained folder or hub name (default: the "
                                           "cached built-in base model of --base-model, built on first use)")
    base_model: str = config_field("default", f"Built-in base model used without --model: {', '.join(BASE_MODELS)}")
    reward: str = config_field(DEFAULT_REWARD, "Comma list of rewards: built-in names (length, format), FILE.py:FUNCTION, "
                                               "package.module:function or rm:DIR")
    reward_weights: list[float] | None = config_field(None, "Weights of the rewards in --reward (default: equal, summing to 1)")
    target_words: int = config_field(12, "Target word count of the length reward when the prompt states none")
    gold_reward: str | None = config_field(None, "A reward computed on every rollout and evaluation but never optimised, "
                                                 "e.g. length,format while --reward is rm:DIR (the proxy-vs-gold picture)")
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
            raise TypeError("RLHFConfig holds the shared fields; build a GRPOConfig or a PPOConfig")
        super().__post_init__()
        self.algo = self.algo or self.ALGO
        if self.algo != self.ALGO:
            raise ConfigError(f"{type(self).__name__} is --algo {self.ALGO}, got --algo {self.algo}")
        require_positive(steps=self.steps, prompts_per_step=self.prompts_per_step, num_generations=self.num_generations,
                         num_minibatches=self.num_minibatches, max_completion_length=self.max_completion_length,
                         learning_rate=self.learning_rate, max_grad_norm=self.max_grad_norm, target_words=self.target_words,
                         max_train_s=self.max_train_s,
                         torch_threads=self.torch_threads, eval_samples_per_prompt=self.eval_samples_per_prompt)
        require_nonnegative(log_completions_every=self.log_completions_every, pass_at_k=self.pass_at_k, eval_every=self.eval_every)
        require_choice(base_model=(self.base_model, BASE_MODELS), lr_scheduler_type=(self.lr_scheduler_type, LR_SCHEDULES),
                       precision=(self.precision, PRECISIONS))
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.pass_at_k > self.eval_samples_per_prompt:
            raise ConfigError(f"--pass-at-k {self.pass_at_k} needs --eval-samples-per-prompt >= {self.pass_at_k}, "
                              f"got {self.eval_samples_per_prompt}")
        if self.pass_at_k and "correct" not in self.reward.split(","):
            raise ConfigError("--pass-at-k counts answers the correct reward accepts; add correct to --reward "
                              "(e.g. --task arithmetic)")
        self.check_minibatches(num_processes=1)
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


@dataclass
class GRPOConfig(RLHFConfig):
    """GRPO's own fields, named as in TRL's GRPOConfig."""

    ALGO: ClassVar[str] = "grpo"
    beta: float = config_field(0.04, "k3 KL coefficient to the reference (0 loads no reference model)")
    use_bias_correction_kl: bool = config_field(True, "Multiply the per-token KL by the (differentiable) ratio pi / pi_old, "
                                                      "which makes its gradient the unbiased reverse-KL gradient (DeepSeek-V3.2; "
                                                      "TRL 1.16's default): it changes the gradient even on-policy, where the "
                                                      "ratio is 1")
    epsilon: float = config_field(0.2, "Lower clip of the policy ratio")
    epsilon_high: float | None = config_field(None, "Upper clip (DAPO's clip-higher); default: epsilon")
    loss_type: str = config_field("dapo", f"Loss aggregation, as TRL's: {', '.join(LOSS_TYPES)}")
    scale_rewards: str = config_field("group", f"Advantage scaling: {', '.join(SCALE_REWARDS)} (none = Dr. GRPO)")
    num_iterations: int = config_field(1, "Updates per rollout (GRPO's mu)")
    mask_truncated_completions: bool = config_field(False, "Exclude completions without eos from the loss (DAPO)")
    # TRL's vllm_importance_sampling_* without "vllm_": here the sampler is the fast decoder or generate, in fp32, while the
    # update may run in bf16; the same correction serves any sampler whose numbers differ from the trainer's
    importance_sampling_correction: bool = config_field(False, "Weight each token's policy loss by pi_trainer / pi_sampler "
                                                               "(the sampler-vs-trainer mismatch, logged as sampling/*), "
                                                               "truncated or masked by --importance-sampling-mode")
    importance_sampling_mode: str = config_field("sequence_mask", f"{', '.join(IMPORTANCE_SAMPLING_MODES)}: per token or "
                                                                  "per sequence (the product over its tokens); a ratio "
                                                                  "outside the clip range is clipped or its loss dropped")
    importance_sampling_clip_max: float | None = config_field(3.0, "Upper bound of the importance-sampling ratio (none: no bound)")
    importance_sampling_clip_min: float | None = config_field(None, "Lower bound of the importance-sampling ratio (none: no bound)")

    def __post_init__(self):
        super().__post_init__()
        require_choice(loss_type=(self.loss_type, LOSS_TYPES), scale_rewards=(self.scale_rewards, SCALE_REWARDS),
                       importance_sampling_mode=(self.importance_sampling_mode, IMPORTANCE_SAMPLING_MODES))
        require_positive(importance_sampling_clip_max=self.importance_sampling_clip_max)
        require_nonnegative(importance_sampling_clip_min=self.importance_sampling_clip_min)
        require_positive(epsilon=self.epsilon, num_iterations=self.num_iterations, epsilon_high=self.epsilon_high)
        require_nonnegative(beta=self.beta)
        if self.num_generations < 2:
            raise ConfigError(f"GRPO compares completions within a group, so --num-generations must be >= 2, got {self.num_generations}")

    @property
    def uses_reference(self) -> bool:
        return self.beta > 0


@dataclass
class PPOConfig(RLHFConfig):
    """PPO-with-a-critic's own fields, named as in TRL's PPOConfig."""

    ALGO: ClassVar[str] = "ppo"
    cliprange: float = config_field(0.2, "Clip range of the policy ratio")
    kl_coef: float = config_field(0.05, "Initial beta of the per-token k1 KL penalty in the reward")
    target_kl: float | None = config_field(None, "Adapt beta towards this KL per sequence (Ziegler et al.); None: fixed beta")
    kl_horizon: int = config_field(10_000, "Horizon of the adaptive KL controller, in completions")
    critic: str = config_field("separate", f"Value model: {', '.join(CRITICS)} (a trunk copied from the policy, the policy's own, "
                                           "or the reward model of --reward rm:DIR with its head, as InstructGPT)")
    vf_coef: float = config_field(0.1, "Value loss coefficient")
    cliprange_value: float | None = config_field(0.2, "Clip value updates around the rollout's values")
    gamma: float = config_field(1.0, "Discount over tokens")
    lam: float = config_field(0.95, "GAE lambda over tokens")
    num_ppo_epochs: int = config_field(2, "PPO epochs over each rollout")
    whiten_rewards: bool = config_field(False, "Whiten the per-token rewards before GAE")
    missing_eos_penalty: float | None = config_field(None, "Subtract this from the score of completions without eos")
    ptx_coef: float = config_field(0.0, "InstructGPT's pretraining mix (PPO-ptx): add this times the language-model loss of "
                                        "a batch of --ptx-data to every minibatch's loss (0: off)")
    ptx_data: str = config_field(str(DATA_DIR / "pretrain.jsonl"), "Documents (JSONL with a text field) of the pretraining mix")
    ptx_batch_size: int = config_field(8, "Blocks of 64 tokens of --ptx-data per minibatch")

    def __post_init__(self):
        super().__post_init__()
        require_choice(critic=(self.critic, CRITICS))
        require_positive(cliprange=self.cliprange, num_ppo_epochs=self.num_ppo_epochs, kl_horizon=self.kl_horizon,
                         gamma=self.gamma)
        require_nonnegative(kl_coef=self.kl_coef, vf_coef=self.vf_coef, ptx_coef=self.ptx_coef)
        require_positive(ptx_batch_size=self.ptx_batch_size)
        if self.ptx_coef and not Path(self.ptx_data).is_file():
            raise ConfigError(f"--ptx-data {self.ptx_data} not found; accepted: a JSONL file with a text field per document")
        if self.critic == "rm" and self.reward_model_dir is None:
            raise ConfigError(f"--critic rm starts the value model from the reward model, so --reward must hold one rm:DIR; "
                              f"got --reward {self.reward}")
        if not (self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"--gamma must be in (0, 1] and --lam in [0, 1], got {self.gamma} and {self.lam}")
        for name in ("target_kl", "cliprange_value"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (or None to turn it off), got {getattr(self, name)}")

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0

    @property
    def reward_model_dir(self) -> str | None:
        """DIR of the one rm:DIR in --reward, else None."""
        folders = [part.strip()[3:] for part in self.reward.split(",") if part.strip().startswith("rm:")]
        return folders[0] if len(folders) == 1 else None


CONFIGS: dict[str, type[RLHFConfig]] = {"grpo": GRPOConfig, "ppo": PPOConfig}


def config_for(algo: str) -> type[RLHFConfig]:
    """The config class of --algo, or a ConfigError listing the accepted names."""
    require_choice(algo=(algo, tuple(CONFIGS)))
    return CONFIGS[algo]


def other_algorithm_flag(algo: str, argv: list[str]) -> str | None:
    """The first flag in argv that belongs to another algorithm's config (e.g. --beta with --algo ppo)."""
    own = {f.name for f in dataclasses.fields(CONFIGS[algo])}
    for other, cls in CONFIGS.items():
        foreign = {f.name for f in dataclasses.fields(cls)} - own
        for arg in argv:
            name = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
            if arg.startswith("--") and name in foreign:
                return f"{arg.split('=', 1)[0]} is a setting of --algo {other}, not of --algo {algo} (see --algo {algo} --help)"
    return None
