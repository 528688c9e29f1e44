"""The online RLHF loop that every algorithm of rlhf_toy/algorithms/ runs in, in three phases:

    set_up     policy, reference (if cfg.uses_reference), the algorithm (its critic, say), optimizer; resume
               from a checkpoint; evaluate before
    for step in 1..steps:                                       (train_step)
        prompts   = next prompts_per_step prompts, each repeated num_generations times
        rollout   = sample_rollout(policy, prompts)             # KV-cache sampling (the sampler's log-probs: a check)
        rewards   = reward(prompts, completions)                # rule, user function or reward model
        metrics   = algorithm.update(policy, reference, ...)    # GRPO's, PPO's, ...: rlhf_toy/algorithms/
        log; checkpoint when due or on Ctrl-C
    finish     evaluate after, save the policy, summary.json and plots

The loop never asks which algorithm it runs: what differs is the algorithm's (base.OnlineAlgorithm).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.errors import ConfigError, NonFiniteError, TrainingInterrupted
from classic_rl.infra.machine import peak_rss_mb
from classic_rl.infra.metrics import RunLogger
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import start_run, truncate_jsonl, write_json
from rlhf_toy.agents.registry import resolve_agent
from rlhf_toy.agents.turns import Agent, tool_statistics
from rlhf_toy.algorithms import algorithm_for
from rlhf_toy.algorithms.base import OnlineAlgorithm, RLHFConfig
from rlhf_toy.chat import require_chat_template
from rlhf_toy.data import load_prompt_rows, split_columns
from rlhf_toy.distributed import (
    any_process,
    leave_processes,
    make_accelerator,
    metrics_over_processes,
    prepare_training,
    process_share,
    save_if_due,
    trained_modules,
)
from rlhf_toy.evaluation import evaluate_on_prompts, print_completions, print_side_by_side
from rlhf_toy.fsdp import (
    check_fsdp,
    full_parameters,
    full_state,
    held_mb,
    save_sharded_checkpoint,
)
from rlhf_toy.generation.fast_decode import supports_fast_decode
from rlhf_toy.generation.rollout import sample_rollout
from rlhf_toy.generation.sampling import RowUniforms, encode_prompts, ignored_generation_settings
from rlhf_toy.lm.base_model import default_base_model, kind_for
from rlhf_toy.lm.lora import AdapterDisabled, save_merged, trainable_model, with_lora
from rlhf_toy.lm.models import check_model_exists, disable_dropout, load_model, load_tokenizer, model_writer
from rlhf_toy.precision import autocast, bf16_linear_weights, set_up_precision
from rlhf_toy.prompt_schedule import prompts_for_step, step_seed
from rlhf_toy.reference_sync import ReferenceSync
from rlhf_toy.rewards.functions import CombinedReward, RewardFunctionError, resolve_reward, reward_names
from rlhf_toy.tasks import task_report

EVAL_CURVES = ("pass_at_1", "pass_at_k", "think_words", "call_frequency", "success_rate")  # eval/* curves beside the reward
AGENT_SUMMARY = {"call_frequency": "tool_calls_per_problem", "failure_frequency": "tool_failure_rate", "success_rate": "success_rate"}


@dataclass
class Run:
    """What the phases of one RLHF run share: its inputs, its models and its outputs."""
    cfg: RLHFConfig
    accelerator: Any
    reward: CombinedReward
    gold: CombinedReward | None
    train_prompts: list[dict]  # rows: "prompt" and the columns the rewards read
    eval_prompts: list[dict]
    run_dir: Path
    model_name: str
    tokenizer: Any
    policy: Any
    ref_model: Any
    algorithm: OnlineAlgorithm
    checkpoints: Checkpoints
    logger: RunLogger | None  # the main process's only
    reference_sync: ReferenceSync | None = None  # --sync-ref-model's
    agent: Agent | None = None  # --tools / --environment-factory: multi-turn rollouts
    optimizer: Any = None  # these two set by place_models
    precision: str = "fp32"  # or "bf16": of the update and the reference's forward (sampling and evaluation stay fp32)
    last_step: int = 0  # the last step taken (cfg.steps unless max_train_s ran out first)
    memory: dict = field(default_factory=dict)  # per process, the largest of any: peak RSS, and weights and optimizer state held

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def start_step(self) -> int:
        return self.checkpoints.step + 1

    def evaluate_policy(self, with_agent: bool = True) -> dict[str, Any]:
        """The eval prompts' rewards (evaluation.evaluate_on_prompts); with_agent=False samples single-turn (no tools)."""
        return evaluate_on_prompts(self.accelerator.unwrap_model(self.policy), self.tokenizer, self.eval_prompts, self.reward,
                                   self.cfg.eval_sampling, self.cfg.eval_samples_per_prompt, self.cfg.eval_seed, self.gold,
                                   self.cfg.pass_at_k, self.agent if with_agent else None)

    def log_evaluation(self, step: int, result: dict[str, Any]) -> None:
        """An evaluation's means as eval/* metrics at `step` (0: before training), for the curves."""
        self.logger.log(step, {"eval/reward": result["reward"], "eval/mean_length": result["mean_length"],
                               **{f"eval/{key}": result[key] for key in EVAL_CURVES if key in result}})

    def full_policy(self):
        """A block every process enters, inside which the main one may sample, evaluate or save the policy alone: with
        --fsdp it holds its full parameters there (fsdp.full_parameters); else a block that changes nothing."""
        return full_parameters(self.accelerator.unwrap_model(self.policy))

    def save_checkpoint(self, step: int) -> Path | None:
        """checkpoints/step-N/: the policy as save_pretrained; state.pt with the optimizer, the algorithm's state (PPO's
        critic and KL coefficient), the logger and the RNG states (prompt order is a function of the step). Called by the
        main process; with --fsdp by every process (fsdp.save_sharded_checkpoint: optimizer/ holds each process's shard).
        Returns the folder (None on the other processes)."""
        policy = self.accelerator.unwrap_model(self.policy)
        if not self.cfg.fsdp:
            return self.checkpoints.save(step, model_writer(policy, self.tokenizer), optimizer=self.optimizer)
        own = {name: obj for name, obj in self.algorithm.state().items() if isinstance(obj, torch.nn.Module)}  # a critic
        if self.reference_sync is not None:
            own["reference"] = self.ref_model
        return save_sharded_checkpoint(self.accelerator, self.checkpoints, step, self.trained, self.optimizer,
                                       lambda folder: model_writer(policy, self.tokenizer, full_state(policy))(folder), own)

    @property
    def trained(self) -> torch.nn.Module:
        """Every model the optimizer trains, as one module (the sharded optimizer state is named by its parameters)."""
        return trained_modules(self.accelerator.unwrap_model(self.policy), self.algorithm.modules())


def train(cfg: RLHFConfig) -> dict[str, Any]:
    """Fine-tune cfg.model (or the default base model) with cfg's algorithm; returns the summary (empty on other
    processes than the main one)."""
    run = set_up(cfg)
    try:
        before = evaluate_before(run)
        train_time = run_steps(run)
        run.memory = metrics_over_processes(run.accelerator, {  # per process, the largest of any; before evaluating
            "peak_rss_mb/max": peak_rss_mb(), "held_mb/max": held_mb([run.trained, run.ref_model], run.optimizer)})
        with run.full_policy():
            summary = finish(run, before, train_time) if run.main else {}
        run.accelerator.wait_for_everyone()
    except TrainingInterrupted:  # raised on every process at the same checkpoint (run_steps), so they can leave together
        leave(run)
        raise
    leave(run)
    return summary


def leave(run: Run) -> None:
    """Drop the DDP wrapper, whose reducer holds the process group, then leave the group (distributed.leave_processes)."""
    run.policy = run.optimizer = None
    leave_processes(run.accelerator)


# ---- set-up ----------------------------------------------------------------------------------------------

def set_up(cfg: RLHFConfig) -> Run:
    """Check the inputs (before the run folder exists), create it, build the models and the optimizer, and
    restore them from the newest checkpoint on --resume."""
    accelerator = make_accelerator(cfg.cpu)
    world, algorithm_class = accelerator.num_processes, algorithm_for(cfg.algo)
    cfg.check_minibatches(world)
    check_fsdp(cfg, world)
    reward = resolve_reward(cfg.reward, cfg.reward_weights, cfg.target_words)
    gold = resolve_reward(cfg.gold_reward, target_words=cfg.target_words) if cfg.gold_reward else None
    train_prompts, eval_prompts = load_prompt_rows(cfg.prompts), load_prompt_rows(cfg.eval_prompts)
    agent = resolve_agent(cfg.tools, cfg.environment_factory, cfg.max_tool_calling_iterations)
    check_agent(agent, cfg, train_prompts)
    if cfg.model:
        check_model_exists(cfg.model)
    run_dir, checkpoints = start_run(cfg, main_process=accelerator.is_main_process)
    torch.set_num_threads(max(1, cfg.torch_threads // world))  # the processes share the machine's cores
    accelerator.wait_for_everyone()  # the main process has checked and created the run folder

    with accelerator.main_process_first():  # the main process builds the default base model if it is not cached
        model_name = cfg.model or default_base_model(kind=cfg.base_model or kind_for([row["prompt"] for row in train_prompts]))
    tokenizer = load_tokenizer(model_name, cfg.trust_remote_code)
    policy, ref_model, load_copy = build_models(cfg, model_name, checkpoints.folder / "model" if checkpoints.resumed else None)
    for name, rows in (("--prompts", train_prompts), ("--eval-prompts", eval_prompts)):
        require_chat_template(tokenizer, [row["prompt"] for row in rows], f"{name} {getattr(cfg, name[2:].replace('-', '_'))}")
        try:
            encode_prompts(tokenizer, [row["prompt"] for row in rows], cfg.max_completion_length, policy)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from None
    algorithm = algorithm_class(cfg, policy, load_copy, tokenizer)
    logger = RunLogger(run_dir) if accelerator.is_main_process else None
    sync = ReferenceSync(policy, ref_model, cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps) if cfg.sync_ref_model else None
    checkpoints.track(logger=logger, **algorithm.state(), **(sync.checkpointed() if sync else {}))
    checkpoints.restore()  # before sharding, which the models' full weights load into
    run = Run(cfg, accelerator, reward, gold, train_prompts, eval_prompts, run_dir, model_name, tokenizer, policy, ref_model,
              algorithm, checkpoints, logger, sync, agent)
    place_models(run)
    if run.main:
        print_set_up(run)
    return run


def check_agent(agent: Agent | None, cfg: RLHFConfig, prompts: list[dict]) -> None:
    """A ConfigError before the run folder exists: the environment reward without environments, or an environment whose
    first observation (reset on the first prompt row) is not text."""
    if agent is None and "environment" in reward_names(cfg.reward):
        raise ConfigError("--reward environment reads each rollout's environment; add --environment-factory (e.g. frozenlake) "
                          "or use --task frozenlake")
    if agent is not None and prompts:
        agent.start(*split_columns(prompts[:1]))


def place_models(run: Run) -> None:
    """Put the run's models on its device in its precision; then distributed.prepare_training: with --fsdp shard them
    (the policy, a separate reference, the algorithm's own), else wrap the policy for DDP; the optimizer over what
    trains, restored on resume."""
    cfg, accelerator, policy = run.cfg, run.accelerator, run.policy
    separate_reference = None if isinstance(run.ref_model, AdapterDisabled) else run.ref_model  # LoRA's is the policy itself
    own_models = run.algorithm.place(accelerator.device)
    run.precision = set_up_precision(cfg.precision, accelerator.device, policy, separate_reference, *own_models)
    if separate_reference is not None:
        run.ref_model = separate_reference.to(accelerator.device)
        # it runs only in the update, under autocast; FSDP gathers one dtype, and a moving reference mixes in fp32
        if run.precision == "bf16" and not cfg.fsdp and not cfg.sync_ref_model:
            bf16_linear_weights(run.ref_model)
    # fused: the Trainer's default (adamw_torch_fused) since torch 2.8, so TRL runs it too; 1.4 -> 0.36 ms a step on CPU here
    run.policy, run.optimizer = prepare_training(
        accelerator, policy, cfg.fsdp, lambda params: torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0, fused=True),
        run.checkpoints, beside=run.algorithm.modules(), frozen=[separate_reference])
    if run.reference_sync is not None:
        run.reference_sync.attach(run.optimizer)


def print_set_up(run: Run) -> None:
    """What the run does, and how: batch arithmetic, model, device, precision, sampler; sampling settings it ignores."""
    cfg, policy = run.cfg, run.accelerator.unwrap_model(run.policy)
    world = run.accelerator.num_processes
    print(f"{cfg.algo}: {cfg.prompts_per_step} prompts x {cfg.num_generations} completions = {cfg.completions_per_step} "
          f"completions per step in {world} process(es){' (FSDP)' if cfg.fsdp else ''}, {cfg.num_minibatches} minibatch(es) x "
          f"{cfg.passes} pass(es), {cfg.steps} steps, reward {cfg.reward}, model {run.model_name}, device {run.accelerator.device}, "
          f"{run.precision}, sampling with " + ("the fast decoder" if supports_fast_decode(policy)
                                                else "transformers' generate (the fast decoder does not compute this model)"))
    ignored = ignored_generation_settings(policy)
    if ignored:
        print(f"the model's generation_config sets {', '.join(f'{k}={v}' for k, v in ignored.items())}: ignored; sampling "
              f"follows --temperature {cfg.temperature}, --top-k {cfg.top_k}, --top-p {cfg.top_p}, the distribution the losses assume")


def build_models(cfg: RLHFConfig, model_name: str, resume_dir: Path | None) -> tuple[Any, Any, Callable[[], Any]]:
    """(policy, reference or None, load_copy): the policy (with --use-peft, adapters on frozen weights, fresh or the
    checkpoint's), the reference (a frozen copy; under LoRA the policy with its adapters disabled), and a function giving
    another copy to build from (PPO's critic; with adapters of its own under LoRA)."""
    def load(name: str = model_name) -> Any:
        return load_model(name, cfg.trust_remote_code)

    policy = trainable_model(load, model_name, resume_dir, cfg)
    if not cfg.uses_reference:
        ref_model = None
    else:
        ref_model = AdapterDisabled(policy) if cfg.use_peft else load().eval().requires_grad_(False)
    if cfg.disable_dropout:  # the reference runs in eval mode anyway; LoRA's own dropout goes too, as in TRL
        disable_dropout(policy)
    return policy, ref_model, (lambda: with_lora(load(), cfg)) if cfg.use_peft else load


def evaluate_before(run: Run) -> dict[str, Any] | None:
    """The initial policy's evaluation: measured once and written to eval_before.json, reused on resume."""
    path = run.run_dir / "eval_before.json"
    before = None
    with run.full_policy():
        if run.main and run.start_step == 1:
            before = run.evaluate_policy()
            write_json(path, before)
            run.log_evaluation(0, before)
    if run.main and run.start_step > 1:
        before = json.loads(path.read_text())
        truncate_jsonl(run.run_dir / "samples.jsonl", run.start_step - 1)
    if run.main:
        print_completions(f"before training: eval reward {before['reward']:.3f}", before["rows"])
    run.accelerator.wait_for_everyone()
    return before


# ---- the steps -------------------------------------------------------------------------------------------

def run_steps(run: Run) -> float:
    """Steps start_step..steps (fewer once max_train_s is spent; run.last_step says where it stopped), with
    logging and checkpoints; returns the training seconds (a step's sampling, scoring, update and logging)."""
    cfg, main = run.cfg, run.main
    checkpoints = run.checkpoints
    progress = tqdm(range(run.start_step, cfg.steps + 1), desc=cfg.algo, initial=run.start_step - 1, total=cfg.steps,
                    mininterval=1.0, disable=not main)
    train_time, run.last_step = 0.0, run.start_step - 1
    samples_log = open(run.run_dir / "samples.jsonl", "a") if main else contextlib.nullcontext()
    with samples_log as samples_file, checkpoints.stop:
        for step in progress:
            start = time.perf_counter()
            metrics, samples = train_step(run, step)
            run.last_step = step
            if main:
                run.logger.log(step, metrics)
                train_time += time.perf_counter() - start
                progress.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0.0):.3f}",
                                     len=f"{metrics['completions/mean_length']:.1f}", refresh=False)
                if cfg.log_completions_every and step % cfg.log_completions_every == 0:
                    samples_file.writelines(json.dumps(row) + "\n" for row in samples)
                    samples_file.flush()
                    print_completions(f"step {step}: reward {metrics['reward']:.3f}", samples)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:  # the last is finish()'s
                with run.full_policy():
                    if main:
                        run.log_evaluation(step, run.evaluate_policy())
            save_if_due(run.accelerator, checkpoints, step, functools.partial(run.save_checkpoint, step), every_process=cfg.fsdp)
            if any_process(run.accelerator, main and cfg.max_train_s is not None and train_time >= cfg.max_train_s):
                break
    progress.close()
    return train_time


def train_step(run: Run, step: int) -> tuple[dict[str, float], list[dict]]:
    """Sample this process's share of the step's prompts, score them, update; returns the step's metrics
    (averaged over processes) and one sample row per prompt group."""
    cfg, accelerator = run.cfg, run.accelerator
    t0 = time.perf_counter()
    torch.manual_seed(step_seed(cfg.seed, step, accelerator.process_index))
    for group in run.optimizer.param_groups:
        group["lr"] = cfg.learning_rate_at(step)
    step_prompts = prompts_for_step(run.train_prompts, step, cfg.prompts_per_step, cfg.num_generations, cfg.seed)
    prompts, columns = split_columns(process_share(step_prompts, accelerator.process_index, accelerator.num_processes))
    episodes = None
    if run.agent is not None:  # each row's environment, reset from its columns; the rewards may read them (TRL's environments=)
        prompts, episodes = run.agent.start(prompts, columns)
        columns["environments"] = episodes
    # the step's completions are the same in any number of processes: each draws its rows' numbers of one stream
    uniforms = RowUniforms(step_seed(cfg.seed, step, 0), accelerator.process_index * len(prompts), len(step_prompts), accelerator.device)
    with run.full_policy():
        rollout = sample_rollout(accelerator.unwrap_model(run.policy), run.tokenizer, prompts, cfg.sampling, uniforms=uniforms,
                                 episodes=episodes)
    t1 = time.perf_counter()
    try:  # a broken reward or a non-finite loss stops the run before any bad optimizer step
        totals, components = run.reward.score(prompts, rollout.reward_completions, **columns)
        if run.gold is not None:
            components["gold"] = run.gold(prompts, rollout.reward_completions, **columns)
        rewards = torch.tensor(totals, dtype=torch.float32, device=accelerator.device)
        rewards_per_func = torch.tensor([components[name] for name in run.reward.functions], dtype=torch.float32,
                                        device=accelerator.device).T  # [B, K], TRL's name
        t2 = time.perf_counter()
        run.policy.train()
        # --precision applies to the update and the reference's forward: sampling a token is a few small matmuls, where
        # bf16 only adds casts (bench/base-model-and-demo.md). A context per step: autocast keeps its bf16 copies of the weights until the
        # outermost context exits, and they must follow every optimizer step.
        with autocast(run.precision, accelerator.device):
            metrics = run.algorithm.update(run.policy, run.ref_model, run.optimizer, accelerator, rollout, rewards, rewards_per_func)
    except (NonFiniteError, RewardFunctionError) as err:  # a non-finite gradient norm is every process's (they share it)
        saved = run.save_checkpoint(step - 1) if run.main or cfg.fsdp else None
        raise type(err)(f"step {step}: {err}" + (f"; saved the last good weights to {saved}" if saved else "")) from None
    t3 = time.perf_counter()
    metrics = metrics_over_processes(accelerator, {
        **metrics, **{f"rewards/{k}/mean": float(np.mean(v)) for k, v in components.items()},
        **(tool_statistics(episodes) if episodes is not None else {}),
        "time/generate_s": t1 - t0, "time/reward_s": t2 - t1, "time/update_s": t3 - t2})
    everyone = accelerator.gather(torch.stack([rewards, rollout.completion_lengths.to(rewards),
                                               rollout.is_truncated.to(rewards)], dim=1))  # [completions, 3]
    all_rewards, lengths, truncated = everyone.cpu().unbind(1)
    metrics.update({"learning_rate": run.optimizer.param_groups[0]["lr"], "reward": all_rewards.mean().item(), "reward_std": all_rewards.std().item(),
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
    after = run.evaluate_policy()
    run.log_evaluation(run.last_step, after)
    k = cfg.eval_samples_per_prompt  # one row per distinct prompt
    print_side_by_side(before["rows"][::k], after["rows"][::k])
    final_dir, policy = run.run_dir / "model", run.accelerator.unwrap_model(run.policy)
    # under LoRA: the adapters, which load_model (and AutoPeftModelForCausalLM) read; with --fsdp, the gathered weights
    policy.save_pretrained(final_dir, state_dict=full_state(policy) if cfg.fsdp else None)
    run.tokenizer.save_pretrained(final_dir)
    if cfg.save_merged_model:
        save_merged(policy, run.tokenizer, run.run_dir / "merged")
    completions_done = (run.last_step - run.start_step + 1) * cfg.completions_per_step
    kl_series = logger.series("kl")[1]
    summary = {
        "algo": cfg.algo, "model": run.model_name, "reward": cfg.reward, "steps": run.last_step, "seed": cfg.seed,
        "num_processes": run.accelerator.num_processes, "fsdp": cfg.fsdp, "device": str(run.accelerator.device), "precision": run.precision,
        "use_peft": cfg.use_peft, "trainable_params": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "reward_before": before["reward"], "reward_after": after["reward"],
        "components_before": before["components"], "components_after": after["components"],
        "mean_length_before": before["mean_length"], "mean_length_after": after["mean_length"],
        "kl_final": kl_series[-1] if kl_series else None,
        "wall_s": train_time, "total_wall_s": logger.elapsed(),
        "peak_rss_mb": run.memory["peak_rss_mb/max"], "held_mb": run.memory["held_mb/max"],
        "completions_per_s": completions_done / train_time if train_time else None,
    }
    if cfg.pass_at_k:
        summary.update({f"{key}_{when}": result[key] for key in ("pass_at_1", "pass_at_k", "think_words")
                        for when, result in (("before", before), ("after", after))}, k=cfg.pass_at_k)
    if run.agent is not None:
        summary.update({f"{name}_{when}": result[key] for key, name in AGENT_SUMMARY.items()
                        for when, result in (("before", before), ("after", after)) if key in result},
                       tool_calls_per_problem=after["call_frequency"])  # the trained model's
    summary.update(task_report(run, before, after))
    write_json(run.run_dir / "summary.json", summary)
    write_json(run.run_dir / "eval_samples.json", {"before": before["rows"], "after": after["rows"]})
    plot_run(run)
    logger.close()
    if cfg.pass_at_k:
        print(f"pass@1 {before['pass_at_1']:.3f} -> {after['pass_at_1']:.3f}, pass@{cfg.pass_at_k} {before['pass_at_k']:.3f} -> "
              f"{after['pass_at_k']:.3f} on {len(run.eval_prompts)} held-out prompts; plot: {run.run_dir / 'pass_at_k.png'}")
    print(f"eval reward {before['reward']:.3f} -> {after['reward']:.3f}; plots: {run.run_dir / 'curves.png'}; model: {final_dir}")
    return summary


def model_label(name_or_dir: str) -> str:
    """A model's short name for a plot: a hub name, or the folder's name, or where that is save_pretrained's usual
    `model` (runs and the cache: base-tiny-v4/model), the folder it is in."""
    path = Path(name_or_dir)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def plot_run(run: Run) -> None:
    """curves.png (reward and its components, KL, length against step) and, with a gold reward,
    proxy_vs_gold.png."""
    cfg, logger = run.cfg, run.logger
    plot_lines(run.run_dir / "curves.png", [
        ("step", "reward", {"train reward": logger.series("reward"),
                            **{k: logger.series(f"rewards/{k}/mean") for k in run.reward.functions}}),
        ("step", run.algorithm.kl_label, {"kl": logger.series("kl")}),
        ("step", "completion tokens", {"mean length": logger.series("completions/mean_length")}),
    ], f"{cfg.algo} on {model_label(run.model_name)}, reward {cfg.reward}")
    if cfg.pass_at_k:
        plot_lines(run.run_dir / "pass_at_k.png", [
            ("step", "held-out problems solved", {"pass@1": logger.series("eval/pass_at_1"),
                                                  f"pass@{cfg.pass_at_k}": logger.series("eval/pass_at_k")}),
            ("step", "words inside <think>", {"mean": logger.series("eval/think_words")}),
        ], f"{cfg.algo}, reward {cfg.reward}: pass@k on the eval set")
    if run.gold is not None:
        plot_lines(run.run_dir / "proxy_vs_gold.png", [("step", "mean reward per step", {
            f"proxy ({cfg.reward}, optimised)": logger.series("reward"),
            f"gold ({cfg.gold_reward}, never optimised)": logger.series("rewards/gold/mean")})],
            "over-optimisation check: proxy against gold reward")
