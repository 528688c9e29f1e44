"""The RLHF loop shared by GRPO and PPO, in three phases:

    set_up     policy, reference, critic, optimizer; resume from a checkpoint; evaluate before
    for step in 1..steps:                                       (train_step)
        prompts   = next prompts_per_step prompts, each repeated num_generations times
        rollout   = sample_rollout(policy, prompts)             # KV-cache sampling, old/ref log-probs
        rewards   = reward(prompts, completions)                # rule, user function or reward model
        metrics   = grpo_update(...) or ppo_update(...)         # all loss math from classic_rl.core
        log; checkpoint when due or on Ctrl-C
    finish     evaluate after, save the policy, summary.json and plots
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from classic_rl.runs import (
    Checkpoints,
    ConfigError,
    NonFiniteError,
    RunFields,
    RunLogger,
    StopRequest,
    config_field,
    plot_lines,
    require_positive,
    set_rng_state,
    start_run,
    truncate_jsonl,
    write_json,
)
from rlhf_toy.data import DATA_DIR, load_prompts
from rlhf_toy.distributed import any_process, make_accelerator, mean_over_processes, process_share
from rlhf_toy.evaluation import evaluate_on_prompts, print_completions, print_side_by_side
from rlhf_toy.grpo import LOSS_TYPES, SCALE_REWARDS, grpo_update
from rlhf_toy.models import check_model_exists, load_model, load_tokenizer, save_model_checkpoint
from rlhf_toy.ppo import Critic, KLController, build_critic, ppo_update
from rlhf_toy.pretrain import default_base_model
from rlhf_toy.prompt_schedule import prompts_for_step, step_seed
from rlhf_toy.rewards import DEFAULT_REWARD, CombinedReward, RewardFunctionError, resolve_reward
from rlhf_toy.rollout import sample_rollout
from rlhf_toy.sampling import SamplingConfig, encode_prompts

ALGOS = ("grpo", "ppo")
CRITICS = ("separate", "shared")


@dataclass
class RLHFConfig(RunFields):
    algo: str = config_field("grpo", f"RL algorithm: {', '.join(ALGOS)}")
    model: str | None = config_field(None, "Policy to fine-tune: a save_pretrained folder or hub name (default: the "
                                           "cached default base model, built on first use)")
    reward: str = config_field(DEFAULT_REWARD, "Comma list of rewards: built-in names (length, format), FILE.py:FUNCTION, "
                                               "package.module:function or rm:DIR")
    reward_weights: list[float] | None = config_field(None, "Weights of the rewards in --reward (default: equal, summing to 1)")
    target_words: int = config_field(12, "Target word count of the length reward when the prompt states none")
    gold_reward: str | None = config_field(None, "A reward computed on every rollout and evaluation but never optimised, "
                                                 "e.g. length,format while --reward is rm:DIR (the proxy-vs-gold picture)")
    prompts: str = config_field(str(DATA_DIR / "prompts_train.jsonl"), "Training prompts (JSONL with a prompt field, or .txt)")
    eval_prompts: str = config_field(str(DATA_DIR / "prompts_eval.jsonl"), "Fixed evaluation prompts")
    eval_samples_per_prompt: int = config_field(2, "Completions per eval prompt for reward_before / reward_after")
    steps: int = config_field(100, "Training steps (one rollout and its updates each)")
    seed: int = config_field(0, "Seeds python, numpy, torch, prompt order and sampling")
    # batch arithmetic (TRL: generation batch = prompts x num_generations)
    prompts_per_step: int = config_field(8, "Distinct prompts per step")
    num_generations: int = config_field(8, "Completions per prompt (GRPO's group size G; must be >= 2)")
    num_minibatches: int = config_field(1, "Gradient steps per pass over a rollout")
    # sampling
    max_completion_length: int = config_field(40, "Max new tokens per completion")
    temperature: float = config_field(1.0, "Sampling temperature of training, > 0 (log-probs are taken at the same temperature)")
    eval_temperature: float | None = config_field(None, "Sampling temperature of evaluation (default: --temperature; 0: greedy)")
    top_k: int = config_field(0, "Top-k sampling (0: off)")
    top_p: float = config_field(1.0, "Nucleus sampling (1: off)")
    # optimisation
    learning_rate: float = config_field(5e-4, "AdamW learning rate (constant)")
    max_grad_norm: float = config_field(1.0, "Global gradient-norm clip")
    # GRPO (field names follow TRL's GRPOConfig)
    beta: float = config_field(0.04, "k3 KL coefficient to the reference (0 loads no reference model)")
    epsilon: float = config_field(0.2, "Lower clip of the policy ratio")
    epsilon_high: float | None = config_field(None, "Upper clip (DAPO's clip-higher); default: epsilon")
    loss_type: str = config_field("dapo", f"Loss aggregation, as TRL's: {', '.join(LOSS_TYPES)}")
    scale_rewards: str = config_field("group", f"Advantage scaling: {', '.join(SCALE_REWARDS)} (none = Dr. GRPO)")
    num_iterations: int = config_field(1, "Updates per rollout (GRPO's mu)")
    mask_truncated_completions: bool = config_field(False, "Exclude completions without eos from the loss (DAPO)")
    # PPO with a critic (field names follow TRL's PPOConfig; the clip range is --epsilon as above)
    kl_coef: float = config_field(0.05, "Initial beta of the per-token k1 KL penalty in the reward")
    target_kl: float | None = config_field(None, "Adapt beta towards this KL per sequence (Ziegler et al.); None: fixed beta")
    kl_horizon: int = config_field(10_000, "Horizon of the adaptive KL controller, in completions")
    critic: str = config_field("separate", f"Value model: {', '.join(CRITICS)} (a trunk copied from the policy, or the policy's own)")
    vf_coef: float = config_field(0.1, "Value loss coefficient")
    cliprange_value: float | None = config_field(0.2, "Clip value updates around the rollout's values")
    gamma: float = config_field(1.0, "Discount over tokens")
    lam: float = config_field(0.95, "GAE lambda over tokens")
    num_ppo_epochs: int = config_field(2, "PPO epochs over each rollout")
    whiten_rewards: bool = config_field(False, "Whiten the per-token rewards before GAE")
    missing_eos_penalty: float | None = config_field(None, "Subtract this from the score of completions without eos")
    # run
    log_completions_every: int = config_field(25, "Print a table of completions every N steps (0: never)")
    torch_threads: int = config_field(2, "torch.set_num_threads")
    cpu: bool = config_field(False, "Run on CPU even when an accelerator is present")
    trust_remote_code: bool = config_field(False, "Allow a hub model's own code to run")
    run_dir: str = config_field("runs/rlhf", "Output folder")

    def __post_init__(self):
        super().__post_init__()
        choices = {"algo": (self.algo, ALGOS), "loss_type": (self.loss_type, LOSS_TYPES),
                   "scale_rewards": (self.scale_rewards, SCALE_REWARDS), "critic": (self.critic, CRITICS)}
        for name, (value, accepted) in choices.items():
            if value not in accepted:
                raise ConfigError(f"unknown --{name.replace('_', '-')} {value!r}; accepted: {', '.join(accepted)}")
        require_positive(steps=self.steps, prompts_per_step=self.prompts_per_step, num_generations=self.num_generations,
                         num_minibatches=self.num_minibatches, max_completion_length=self.max_completion_length,
                         learning_rate=self.learning_rate, max_grad_norm=self.max_grad_norm, epsilon=self.epsilon,
                         num_iterations=self.num_iterations, target_words=self.target_words, torch_threads=self.torch_threads,
                         eval_samples_per_prompt=self.eval_samples_per_prompt,
                         num_ppo_epochs=self.num_ppo_epochs, kl_horizon=self.kl_horizon, gamma=self.gamma)
        if not (self.gamma <= 1 and 0 <= self.lam <= 1) or self.kl_coef < 0 or self.vf_coef < 0:
            raise ConfigError("--gamma must be in (0, 1], --lam in [0, 1], --kl-coef and --vf-coef >= 0")
        for name in ("target_kl", "cliprange_value"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (or None to turn it off), got {getattr(self, name)}")
        if self.algo == "grpo" and self.num_generations < 2:
            raise ConfigError(f"GRPO compares completions within a group, so --num-generations must be >= 2, got {self.num_generations}")
        if self.completions_per_step % self.num_minibatches:
            raise ConfigError(f"{self.completions_per_step} completions per step do not split into {self.num_minibatches} "
                              "minibatches; choose --num-minibatches dividing prompts_per_step * num_generations")
        if self.beta < 0 or self.log_completions_every < 0:
            raise ConfigError("--beta and --log-completions-every must be >= 0")
        if self.epsilon_high is not None and self.epsilon_high <= 0:
            raise ConfigError(f"--epsilon-high must be > 0, got {self.epsilon_high}")
        if self.temperature <= 0:  # every log-prob of the losses is of softmax(logits / T): greedy has none
            raise ConfigError(f"--temperature must be > 0 for training, got {self.temperature}; greedy decoding is for "
                              "evaluation (--eval-temperature 0) and scripts/sample.py")
        _ = self.eval_sampling  # validates the sampling fields

    @property
    def uses_reference(self) -> bool:
        return (self.beta if self.algo == "grpo" else self.kl_coef) > 0

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
class Run:
    """What the phases of one RLHF run share: its inputs, its models and its outputs."""
    cfg: RLHFConfig
    accelerator: Any
    reward: CombinedReward
    gold: CombinedReward | None
    train_prompts: list[str]
    eval_prompts: list[str]
    run_dir: Path
    model_name: str
    tokenizer: Any
    policy: Any
    ref_model: Any
    critic: Critic | None
    kl_ctl: KLController | None
    optimizer: Any
    start_step: int
    store: Checkpoints
    logger: RunLogger | None  # the main process's only

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def evaluate(self) -> dict[str, Any]:
        return evaluate_on_prompts(self.accelerator.unwrap_model(self.policy), self.tokenizer, self.eval_prompts, self.reward,
                                   self.cfg.eval_sampling, self.cfg.eval_samples_per_prompt, self.cfg.eval_seed, self.gold)

    def save_checkpoint(self, step: int) -> Path:
        """checkpoints/step-N/: the policy (save_pretrained), the critic (safetensors), and state.pt with the
        optimizer, RNG states and KL coefficient (prompt order is a function of the step)."""
        def write_critic(folder: Path) -> None:
            save_file({k: v.contiguous() for k, v in self.critic.state_dict().items()}, folder / "critic.safetensors")

        state = {"optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value if self.kl_ctl else None}
        return save_model_checkpoint(self.store, step, self.accelerator.unwrap_model(self.policy), self.tokenizer, state,
                                     write_extra=write_critic if self.critic is not None else None)


def train(cfg: RLHFConfig) -> dict[str, Any]:
    """Fine-tune cfg.model (or the default base model) with GRPO or PPO; returns the summary (empty on other
    processes than the main one)."""
    run = set_up(cfg)
    before = evaluate_before(run)
    train_time = run_steps(run)
    if not run.main:
        run.accelerator.wait_for_everyone()
        return {}
    summary = finish(run, before, train_time)
    run.accelerator.wait_for_everyone()
    return summary


# ---- set-up ----------------------------------------------------------------------------------------------

def set_up(cfg: RLHFConfig) -> Run:
    """Check the inputs (before the run folder exists), create it, build the models and the optimizer, and
    restore them from the newest checkpoint on --resume."""
    accelerator = make_accelerator(cfg.cpu)
    world = accelerator.num_processes
    if world > 1 and (cfg.algo != "grpo" or cfg.prompts_per_step % world):
        raise ConfigError(f"a run in {world} processes needs --algo grpo and --prompts-per-step divisible by {world} "
                          f"(each process takes whole prompt groups), got --algo {cfg.algo} --prompts-per-step {cfg.prompts_per_step}")
    reward = resolve_reward(cfg.reward, cfg.reward_weights, cfg.target_words)
    gold = resolve_reward(cfg.gold_reward, target_words=cfg.target_words) if cfg.gold_reward else None
    train_prompts, eval_prompts = load_prompts(cfg.prompts), load_prompts(cfg.eval_prompts)
    if cfg.model:
        check_model_exists(cfg.model)
    run_dir, checkpoint = start_run(cfg, main_process=accelerator.is_main_process)
    torch.set_num_threads(max(1, cfg.torch_threads // world))  # the processes share the machine's cores
    accelerator.wait_for_everyone()  # the main process has checked and created the run folder

    with accelerator.main_process_first():  # the main process builds the default base model if it is not cached
        model_name = cfg.model or default_base_model()
    tokenizer = load_tokenizer(model_name, cfg.trust_remote_code)
    policy = load_model(str(checkpoint / "model") if checkpoint else model_name, cfg.trust_remote_code)
    for name, prompts in (("--prompts", train_prompts), ("--eval-prompts", eval_prompts)):
        try:
            encode_prompts(tokenizer, prompts, cfg.max_completion_length, policy)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from None
    ref_model = load_model(model_name, cfg.trust_remote_code).eval().requires_grad_(False) if cfg.uses_reference else None
    critic, kl_ctl, params = None, None, list(policy.parameters())
    if cfg.algo == "ppo":
        critic = build_critic(policy, cfg.critic, lambda: load_model(model_name, cfg.trust_remote_code))
        kl_ctl = KLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        params += [p for p in critic.parameters() if all(p is not q for q in params)]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    start_step = restore(checkpoint, optimizer, critic, kl_ctl) if checkpoint else 1
    policy, optimizer = accelerator.prepare(policy, optimizer)
    critic = critic.to(accelerator.device) if critic is not None else None
    ref_model = ref_model.to(accelerator.device) if ref_model is not None else None
    if accelerator.is_main_process:
        print(f"{cfg.algo}: {cfg.prompts_per_step} prompts x {cfg.num_generations} completions = {cfg.completions_per_step} "
              f"completions per step in {world} process(es), {cfg.num_minibatches} minibatch(es) x {cfg.num_iterations} "
              f"iteration(s), {cfg.steps} steps, reward {cfg.reward}, model {model_name}, device {accelerator.device}")
    logger = RunLogger(run_dir, resume_step=start_step - 1 if checkpoint else None) if accelerator.is_main_process else None
    return Run(cfg, accelerator, reward, gold, train_prompts, eval_prompts, run_dir, model_name, tokenizer, policy, ref_model,
               critic, kl_ctl, optimizer, start_step, Checkpoints(run_dir, cfg.keep_checkpoints), logger)


def restore(checkpoint: Path, optimizer, critic: Critic | None, kl_ctl: KLController | None) -> int:
    """Load the optimizer, RNG states, critic and KL coefficient of a checkpoint; returns the step to start at."""
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    if critic is not None:
        critic.load_state_dict(load_file(checkpoint / "critic.safetensors"))
        kl_ctl.value = state["kl_coef"]
    return state["step"] + 1


def evaluate_before(run: Run) -> dict[str, Any] | None:
    """The initial policy's evaluation: measured once and written to eval_before.json, reused on resume."""
    path = run.run_dir / "eval_before.json"
    before = None
    if run.main and run.start_step == 1:
        before = run.evaluate()
        write_json(path, before)
    elif run.main:
        before = json.loads(path.read_text())
        truncate_jsonl(run.run_dir / "samples.jsonl", run.start_step - 1)
    if run.main:
        print_completions(f"before training: eval reward {before['reward']:.3f}", before["rows"])
    run.accelerator.wait_for_everyone()
    return before


# ---- the steps -------------------------------------------------------------------------------------------

def run_steps(run: Run) -> float:
    """Steps start_step..steps, with logging and checkpoints; returns the training seconds (a step's
    sampling, scoring, update and logging)."""
    cfg, main = run.cfg, run.main
    progress = tqdm(range(run.start_step, cfg.steps + 1), desc=cfg.algo, initial=run.start_step - 1, total=cfg.steps,
                    mininterval=1.0, disable=not main)
    train_time = 0.0
    with open(run.run_dir / "samples.jsonl", "a") if main else contextlib.nullcontext() as samples_file, StopRequest() as stop:
        for step in progress:
            start = time.perf_counter()
            metrics, samples = train_step(run, step)
            if main:
                run.logger.log(step, metrics)
                train_time += time.perf_counter() - start
                progress.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0.0):.3f}",
                                     len=f"{metrics['completions/mean_length']:.1f}", refresh=False)
                if cfg.log_completions_every and step % cfg.log_completions_every == 0:
                    samples_file.writelines(json.dumps(row) + "\n" for row in samples)
                    samples_file.flush()
                    print_completions(f"step {step}: reward {metrics['reward']:.3f}", samples)
            stop.requested = any_process(run.accelerator, stop.requested)
            if cfg.checkpoint_due(step, stop):
                if main:
                    run.save_checkpoint(step)
                run.accelerator.wait_for_everyone()
                if stop.requested:
                    raise run.store.interrupted(step)
    progress.close()
    return train_time


def train_step(run: Run, step: int) -> tuple[dict[str, float], list[dict]]:
    """Sample this process's share of the step's prompts, score them, update; returns the step's metrics
    (averaged over processes) and one sample row per prompt group."""
    cfg, accelerator = run.cfg, run.accelerator
    t0 = time.perf_counter()
    torch.manual_seed(step_seed(cfg.seed, step, accelerator.process_index))
    step_prompts = prompts_for_step(run.train_prompts, step, cfg.prompts_per_step, cfg.num_generations, cfg.seed)
    prompts = process_share(step_prompts, accelerator.process_index, accelerator.num_processes)
    rollout = sample_rollout(accelerator.unwrap_model(run.policy), run.tokenizer, prompts, cfg.sampling, run.ref_model)
    t1 = time.perf_counter()
    try:  # a broken reward or a non-finite loss stops the run before any bad optimizer step
        totals, components = run.reward.score(prompts, rollout.completions)
        if run.gold is not None:
            components["gold"] = run.gold(prompts, rollout.completions)
        rewards = torch.tensor(totals, dtype=torch.float32, device=accelerator.device)
        t2 = time.perf_counter()
        run.policy.train()
        if cfg.algo == "grpo":
            metrics = grpo_update(run.policy, run.optimizer, accelerator, rollout, rewards, cfg)
        else:
            metrics = ppo_update(run.policy, run.critic, run.optimizer, accelerator, rollout, rewards, run.kl_ctl, cfg)
    except (NonFiniteError, RewardFunctionError) as err:
        saved = run.save_checkpoint(step - 1) if run.main else None
        raise type(err)(f"step {step}: {err}" + (f"; saved the last good weights to {saved}" if saved else "")) from None
    t3 = time.perf_counter()
    metrics = mean_over_processes(accelerator, {
        **metrics, **{f"rewards/{k}/mean": float(np.mean(v)) for k, v in components.items()},
        "time/generate_s": t1 - t0, "time/reward_s": t2 - t1, "time/update_s": t3 - t2})
    everyone = accelerator.gather(torch.stack([rewards, rollout.completion_lengths.to(rewards),
                                               rollout.is_truncated.to(rewards)], dim=1))  # [completions, 3]
    all_rewards, lengths, truncated = everyone.cpu().unbind(1)
    metrics.update({"reward": all_rewards.mean().item(), "reward_std": all_rewards.std().item(),
                    "completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
                    "completions/max_length": lengths.max().item(), "completions/clipped_ratio": truncated.mean().item(),
                    "completions_per_s": len(step_prompts) / (t3 - t0)})
    group = cfg.num_generations
    samples = [{"step": step, "prompt": p, "completion": c, "reward": r}
               for p, c, r in zip(prompts[::group], rollout.completions[::group], totals[::group], strict=True)]
    return metrics, samples


# ---- finish ----------------------------------------------------------------------------------------------

def finish(run: Run, before: dict[str, Any], train_time: float) -> dict[str, Any]:
    """Evaluate the trained policy, save it, and write summary.json, eval_samples.json and the plots."""
    cfg, logger = run.cfg, run.logger
    after = run.evaluate()
    k = cfg.eval_samples_per_prompt  # one row per distinct prompt
    print_side_by_side(before["rows"][::k], after["rows"][::k])
    final_dir = run.run_dir / "model"
    run.accelerator.unwrap_model(run.policy).save_pretrained(final_dir)
    run.tokenizer.save_pretrained(final_dir)
    completions_done = (cfg.steps - run.start_step + 1) * cfg.completions_per_step
    kl_series = logger.series("kl")[1]
    summary = {
        "algo": cfg.algo, "model": run.model_name, "reward": cfg.reward, "steps": cfg.steps, "seed": cfg.seed,
        "num_processes": run.accelerator.num_processes, "device": str(run.accelerator.device),
        "reward_before": before["reward"], "reward_after": after["reward"],
        "components_before": before["components"], "components_after": after["components"],
        "mean_length_before": before["mean_length"], "mean_length_after": after["mean_length"],
        "kl_final": kl_series[-1] if kl_series else None,
        "wall_s": train_time, "total_wall_s": logger.elapsed(),
        "completions_per_s": completions_done / train_time if train_time else None,
    }
    write_json(run.run_dir / "summary.json", summary)
    write_json(run.run_dir / "eval_samples.json", {"before": before["rows"], "after": after["rows"]})
    plot_run(run)
    logger.close()
    print(f"eval reward {before['reward']:.3f} -> {after['reward']:.3f}; plots: {run.run_dir / 'curves.png'}; model: {final_dir}")
    return summary


def plot_run(run: Run) -> None:
    """curves.png (reward and its components, KL, length against step) and, with a gold reward,
    proxy_vs_gold.png."""
    cfg, logger = run.cfg, run.logger
    plot_lines(run.run_dir / "curves.png", [
        ("step", "reward", {"train reward": logger.series("reward"),
                            **{k: logger.series(f"rewards/{k}/mean") for k in run.reward.functions}}),
        ("step", f"KL to reference ({'k3' if cfg.algo == 'grpo' else 'k1'} per token)", {"kl": logger.series("kl")}),
        ("step", "completion tokens", {"mean length": logger.series("completions/mean_length")}),
    ], f"{cfg.algo} on {Path(run.model_name).name}, reward {cfg.reward}")
    if run.gold is not None:
        plot_lines(run.run_dir / "proxy_vs_gold.png", [("step", "mean reward per step", {
            f"proxy ({cfg.reward}, optimised)": logger.series("reward"),
            f"gold ({cfg.gold_reward}, never optimised)": logger.series("rewards/gold/mean")})],
            "over-optimisation check: proxy against gold reward")
