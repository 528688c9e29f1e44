"""What all classic algorithms share around their loop: the common config fields, periodic
evaluation with early stopping, and the run folder (config, metrics, summary, plot, policy)."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from classic_rl import envs
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import (
    ConfigError,
    NonFiniteError,
    require_choice,
    require_nonnegative,
    require_positive,
)
from classic_rl.infra.metrics import RunLogger
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import RunFields, start_run, write_json
from classic_rl.nets import SavableModule, save_agent

EVAL_MODES = ("greedy", "sample")


@dataclass
class ClassicConfig(RunFields):
    """Fields every classic algorithm takes; each algorithm's config extends this."""

    env: str = config_field("CartPole-v1", "Gymnasium env id")
    seed: int = config_field(1, "Seeds python, numpy, torch and the envs")
    total_timesteps: int = config_field(100_000, "Env steps to train for (summed over parallel envs)")
    total_episodes: int | None = config_field(None, "Also stop once this many training episodes have finished (checked "
                                                    "after each update, like --target-return; the tutorials count episodes)")
    target_return: float | None = config_field(
        None, "Stop as soon as an evaluation's mean return reaches this (default: train for total_timesteps; "
        "solved_at_* still uses the env's registered reward threshold)")
    eval_every: int = config_field(10_000, "Evaluate every this many env steps (0 disables periodic evaluation)")
    eval_episodes: int = config_field(10, "Episodes per evaluation, run side by side")
    eval_mode: str = config_field("greedy", f"How evaluation acts: {', '.join(EVAL_MODES)} (sample draws from the policy, as "
                                            "the tutorials report; value-based agents: greedy only)")
    torch_threads: int = config_field(1, "torch.set_num_threads: small MLPs on CPU are fastest with 1")
    run_dir: str = config_field("runs/classic", "Folder for config.json, metrics.jsonl, summary.json, plots, policy")

    # the agent acts deterministically (greedy on action values, or TD3's actor): no probabilities to sample
    deterministic_policy: ClassVar[bool] = False

    def __post_init__(self):
        envs.check_env_id(self.env)
        super().__post_init__()
        require_positive(total_timesteps=self.total_timesteps, eval_episodes=self.eval_episodes, torch_threads=self.torch_threads,
                         total_episodes=self.total_episodes)
        require_nonnegative(eval_every=self.eval_every)
        require_choice(eval_mode=(self.eval_mode, EVAL_MODES))
        require_policy_to_sample(self.eval_mode, self.deterministic_policy)

    @property
    def solved_threshold(self) -> float | None:
        """The return that counts as solved: --target-return, else the env's reward_threshold."""
        return self.target_return if self.target_return is not None else envs.check_env_id(self.env).reward_threshold


def require_policy_to_sample(eval_mode: str, deterministic_policy: bool) -> None:
    """--eval-mode sample needs action probabilities, which value-based agents and deterministic actors do not have
    (value-based ones once evaluated greedily while reporting "sample")."""
    if eval_mode == "sample" and deterministic_policy:
        raise ConfigError("--eval-mode sample draws actions from a policy's probabilities, and value-based agents (dqn, q_learning, "
                          "sarsa, value and policy iteration) and deterministic actors (td3, ddpg) have none; accepted: greedy")


def policy_returns(model: SavableModule, env_id: str, episodes: int, seed: int, mode: str = "greedy") -> np.ndarray:
    """Returns `[episodes]` of model acting greedily, or sampling its actions from a torch RNG stream of its
    own (seeded from seed), so that a sampled evaluation neither depends on training's RNG nor moves it."""
    if mode == "greedy":
        return envs.play_episodes(model.act, env_id, episodes, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return envs.play_episodes(lambda obs: model.act(obs, deterministic=False), env_id, episodes, seed)


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]: a periodic event due in the env steps just taken."""
    return after // every > before // every


def evaluation_seed(cfg: ClassicConfig, number: int) -> int:
    """Seed of a run's number-th evaluation (1-based): new episodes each time, never training's."""
    return cfg.seed + 10_000 * number


class Evaluator:
    """Policy evaluation every `eval_every` env steps; remembers when the run first solved.

    `maybe_evaluate` returns True when the run should stop: an evaluation reached --target-return, or
    --total-episodes training episodes have finished.
    """

    def __init__(self, cfg: ClassicConfig, logger: RunLogger):
        self.cfg, self.logger = cfg, logger
        self.history: list[dict[str, float]] = []
        self.solved_at_steps: int | None = None
        self.solved_at_s: float | None = None
        self._next_due = cfg.eval_every if cfg.eval_every > 0 else None

    def state_dict(self) -> str:
        return json.dumps({k: getattr(self, k) for k in ("history", "solved_at_steps", "solved_at_s", "_next_due")})

    def load_state_dict(self, state: str) -> None:
        self.__dict__.update(json.loads(state))

    def maybe_evaluate(self, env_steps: int, model: SavableModule) -> bool:
        if self.cfg.total_episodes is not None and len(self.logger.episodes) >= self.cfg.total_episodes:
            return True
        if self._next_due is None or env_steps < self._next_due:
            return False
        while self._next_due <= env_steps:
            self._next_due += self.cfg.eval_every
        return self.evaluate(env_steps, model)

    def evaluate(self, env_steps: int, model: SavableModule) -> bool:
        returns = policy_returns(model, self.cfg.env, self.cfg.eval_episodes, evaluation_seed(self.cfg, len(self.history) + 1),
                                 self.cfg.eval_mode)
        record = {"env_steps": env_steps, "wall_s": self.logger.elapsed(), "mean": float(returns.mean()), "std": float(returns.std())}
        self.history.append(record)
        self.logger.log(env_steps, {"eval/return_mean": record["mean"], "eval/return_std": record["std"]})
        threshold = self.cfg.solved_threshold
        if threshold is not None and record["mean"] >= threshold and self.solved_at_steps is None:
            self.solved_at_steps, self.solved_at_s = env_steps, record["wall_s"]
        return self.cfg.target_return is not None and record["mean"] >= self.cfg.target_return


def run_training(algo: str, train_fn, cfg: ClassicConfig) -> dict[str, Any]:
    """Train with train_fn(cfg, logger, evaluator[, checkpoints]) -> (model, env steps) and write
    the whole run folder. Algorithms that take a `checkpoints` argument (classic_rl.infra's
    Checkpoints, tracking the logger and the evaluator) can save and resume.

    Returns the summary (also written to summary.json).
    """
    resumable = "checkpoints" in inspect.signature(train_fn).parameters
    if (cfg.save_every or cfg.resume) and not resumable:
        raise ConfigError(f"{algo} has no checkpoints (it trains in seconds to minutes); --save-every and --resume "
                          "are accepted by ppo, trpo, a2c, a3c, vpg, dqn, sac, td3 and ddpg")
    run_dir, checkpoints = start_run(cfg, algo=algo)
    logger = RunLogger(run_dir)
    evaluator = Evaluator(cfg, logger)
    checkpoints.track(logger=logger, evaluator=evaluator)
    try:
        if resumable:
            with checkpoints.stop:
                model, env_steps = train_fn(cfg, logger, evaluator, checkpoints=checkpoints)
        else:
            model, env_steps = train_fn(cfg, logger, evaluator)
        if not evaluator.history or evaluator.history[-1]["env_steps"] != env_steps:
            evaluator.evaluate(env_steps, model)  # the summary always describes the final policy
        wall_s = logger.elapsed()
        save_agent(model, run_dir / "policy.safetensors")
        final = evaluator.history[-1]
        summary = {
            "algo": algo, "env": cfg.env, "seed": cfg.seed, "env_steps": env_steps, "wall_s": wall_s,
            "eval_return_mean": final["mean"], "eval_return_std": final["std"], "eval_episodes": cfg.eval_episodes,
            "eval_mode": cfg.eval_mode,
            "solved_threshold": cfg.solved_threshold,
            "solved_at_steps": evaluator.solved_at_steps, "solved_at_s": evaluator.solved_at_s,
            "steps_per_s": env_steps / wall_s,
            "evaluations": evaluator.history,
        }
        write_json(run_dir / "summary.json", summary)
        plot_learning_curve(run_dir / "learning_curve.png", logger, evaluator, f"{algo} on {cfg.env} (seed {cfg.seed})", cfg.solved_threshold)
    except NonFiniteError as err:
        newest = checkpoints.latest()
        raise NonFiniteError(f"{err}; nothing after it was saved; the last good checkpoint is "
                             f"{newest if newest else 'none (pass --save-every N to keep some)'}") from None
    finally:
        logger.close()
    return summary


def plot_learning_curve(path: Path, logger: RunLogger, evaluator: Evaluator, title: str, threshold: float | None) -> None:
    """Training returns per episode, raw and smoothed, and the evaluations, against env steps and seconds."""
    steps, returns = [e["step"] for e in logger.episodes], [e["return"] for e in logger.episodes]
    eval_label = f"eval return ({evaluator.cfg.eval_mode})"
    window = smoothing_window(len(returns))
    lines = {"train return per episode": (steps, returns, {"color": "C0", "alpha": 0.3, "linewidth": 0.7, "marker": None}),
             f"train return, mean of {window}": (steps, moving_average(returns, window), {"color": "C0", "marker": None}),
             eval_label: ([h["env_steps"] for h in evaluator.history], [h["mean"] for h in evaluator.history])}
    if threshold is not None and evaluator.history:
        lines["solved threshold"] = ([0, evaluator.history[-1]["env_steps"]], [threshold, threshold], {"linestyle": "--", "marker": None})
    wall = {eval_label: ([h["wall_s"] for h in evaluator.history], [h["mean"] for h in evaluator.history])}
    plot_lines(path, [("env steps", "return", lines), ("wall seconds", "return", wall)], title)


def smoothing_window(episodes: int) -> int:
    """Episodes in the moving average of training returns: 20, or a 50th of a long run's episodes."""
    return max(20, episodes // 50)


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Mean of each value and the up to window - 1 values before it: `[len(values)]`."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (sums[end] - sums[start]) / (end - start)
