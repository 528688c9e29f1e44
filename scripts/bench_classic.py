#!/usr/bin/env python
"""Our PPO against Stable-Baselines3 PPO (RL-Zoo hyperparameters), side by side.

    make bench                      # both envs, all seeds (needs the [bench] extra)
    python scripts/bench_classic.py --envs CartPole-v1 --seeds 5 --json bench/classic.json

For each env and seed the two run back to back in this process (ours first, then SB3, then the
next seed), with the same torch thread count and the same evaluation: the greedy policy on
`--eval-episodes` episodes every `eval_every` env steps (ours' preset), stopping at the env's
reward threshold. Wall time counts from before env creation, evaluations included.
Run it on a quiet machine: a second CPU-heavy job distorts every figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import torch

from classic_rl import envs
from classic_rl.algos.ppo import PPOConfig, train
from classic_rl.presets import preset
from classic_rl.runs import ConfigError, cli, write_json
from classic_rl.training import run_training

# rl-baselines3-zoo hyperparams/ppo.yml (LunarLander-v3 uses the v2 entry).
ZOO = {
    "CartPole-v1": dict(n_envs=8, n_timesteps=100_000, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                        n_epochs=20, ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    "LunarLander-v3": dict(n_envs=16, n_timesteps=1_000_000, n_steps=1024, batch_size=64, gae_lambda=0.98,
                           gamma=0.999, n_epochs=4, ent_coef=0.01),
}
DEFAULT_SEEDS = {"CartPole-v1": 5, "LunarLander-v3": 3}


def run_ours(env_id: str, seed: int, eval_episodes: int, max_steps: int | None, run_root: Path) -> dict:
    fields = {**preset("ppo", env_id), "env": env_id, "seed": seed, "eval_episodes": eval_episodes,
              "target_return": gym.spec(env_id).reward_threshold, "run_dir": str(run_root / f"ours-{env_id}-{seed}"),
              "overwrite": True}
    if max_steps:
        fields["total_timesteps"] = max_steps
    s = run_training("ppo", train, PPOConfig(**fields))
    return dict(solved=s["solved_at_steps"] is not None, steps_to_solve=s["solved_at_steps"], s_to_solve=s["solved_at_s"],
                final_eval=s["eval_return_mean"], env_steps=s["env_steps"], wall_s=s["wall_s"], steps_per_s=s["steps_per_s"])


def run_sb3(env_id: str, seed: int, eval_episodes: int, eval_every: int, max_steps: int | None, max_seconds: float) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.utils import get_linear_fn

    hp = dict(ZOO[env_id])
    n_envs, n_timesteps = hp.pop("n_envs"), max_steps or hp.pop("n_timesteps")
    hp.pop("n_timesteps", None)
    for key in ("learning_rate", "clip_range"):  # "lin_x": linear decay from x to 0, as the Zoo means it
        if isinstance(hp.get(key), str):
            hp[key] = get_linear_fn(float(hp[key][4:]), 0.0, 1.0)
    threshold = gym.spec(env_id).reward_threshold

    class EvalAndStop(BaseCallback):
        def __init__(self):
            super().__init__()
            self.history, self.solved, self.next_eval = [], None, eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return time.perf_counter() - start < max_seconds
            self.next_eval += eval_every
            act = lambda obs: self.model.predict(obs, deterministic=True)[0]  # noqa: E731
            returns = envs.evaluate(act, env_id, eval_episodes, seed=seed + 10_000 * (len(self.history) + 1))
            self.history.append((self.num_timesteps, time.perf_counter() - start, float(returns.mean())))
            if returns.mean() >= threshold:
                self.solved = self.history[-1]
                return False
            return time.perf_counter() - start < max_seconds

    start = time.perf_counter()
    model = PPO("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", verbose=0, **hp)
    callback = EvalAndStop()
    model.learn(total_timesteps=n_timesteps, callback=callback)
    wall_s = time.perf_counter() - start
    final = callback.history[-1][2] if callback.history else float("nan")
    return dict(solved=callback.solved is not None, steps_to_solve=callback.solved[0] if callback.solved else None,
                s_to_solve=callback.solved[1] if callback.solved else None, final_eval=final,
                env_steps=int(model.num_timesteps), wall_s=wall_s, steps_per_s=model.num_timesteps / wall_s)


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"


def markdown(results: dict) -> str:
    lines = ["| env | impl | solved | median steps to solve | median s to solve | median final eval | env steps/s |",
             "|---|---|---|---|---|---|---|"]
    for env_id, by_impl in results.items():
        for impl, runs in by_impl.items():
            solved = sum(r["solved"] for r in runs)
            lines.append(f"| {env_id} | {impl} | {solved}/{len(runs)} | {fmt(median_or_none([r['steps_to_solve'] for r in runs]), 0)} "
                         f"| {fmt(median_or_none([r['s_to_solve'] for r in runs]))} | {fmt(statistics.median(r['final_eval'] for r in runs))} "
                         f"| {fmt(statistics.median(r['steps_per_s'] for r in runs), 0)} |")
    return "\n".join(lines)


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ZOO), help=f"Env ids (accepted: {', '.join(ZOO)})")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds per env (default: 5 for CartPole, 3 for LunarLander)")
    parser.add_argument("--impls", nargs="+", default=["ours", "sb3"], choices=["ours", "sb3"], help="Which implementations to run")
    parser.add_argument("--eval-episodes", type=int, default=10, help="Episodes per evaluation")
    parser.add_argument("--max-steps", type=int, default=None, help="Cap on env steps per run (default: each preset's budget)")
    parser.add_argument("--sb3-max-seconds", type=float, default=900.0, help="Wall-clock cap per SB3 run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is fastest for these MLPs here)")
    parser.add_argument("--json", default="bench/classic.json", help="Where to write the raw results")
    parser.add_argument("--md", default="bench/classic.md", help="Where to write the Markdown table")
    args = parser.parse_args()
    unknown = [e for e in args.envs if e not in ZOO]
    if unknown:
        raise ConfigError(f"no Zoo settings for {unknown}; accepted: {', '.join(ZOO)}")
    if "sb3" in args.impls:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            raise ConfigError("stable-baselines3 is not installed; run `make setup-bench` (the [bench] extra)") from None
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in args.envs:
            results[env_id] = {impl: [] for impl in args.impls}
            eval_every = PPOConfig(**{**preset("ppo", env_id), "env": env_id}).eval_every
            for seed in range(1, (args.seeds or DEFAULT_SEEDS[env_id]) + 1):
                for impl in args.impls:
                    if impl == "ours":
                        r = run_ours(env_id, seed, args.eval_episodes, args.max_steps, Path(tmp))
                    else:
                        r = run_sb3(env_id, seed, args.eval_episodes, eval_every, args.max_steps, args.sb3_max_seconds)
                    results[env_id][impl].append({"seed": seed, **r})
                    print(f"{env_id} seed {seed} {impl}: solved={r['solved']} at {r['steps_to_solve']} steps / "
                          f"{fmt(r['s_to_solve'])} s, final eval {r['final_eval']:.1f}, {r['steps_per_s']:.0f} steps/s", flush=True)
    table = markdown(results)
    print(table)
    for path in (args.json, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {"threads": args.threads, "eval_episodes": args.eval_episodes, "results": results})
    Path(args.md).write_text(table + "\n")
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
