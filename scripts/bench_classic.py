#!/usr/bin/env python
"""Our classic algorithms against Stable-Baselines3, side by side, in two comparisons:

    identical hyperparameters  SB3 runs our preset (PPO): the implementations are compared
    each side's own best       SB3 runs RL-Zoo's settings for the (algo, env), ours its preset

    make bench                                                     # PPO on both envs, ours and SB3
    python scripts/bench_classic.py --envs CartPole-v1 --json bench/classic_cartpole.json --md bench/classic_cartpole.md
    python scripts/bench_classic.py --envs CartPole-v1 --algos all --seeds 3 --plot bench/classic_cartpole_all.png
    python scripts/bench_classic.py --same-hparams --json bench/classic_speed.json --md bench/classic_speed.md

--same-hparams compares the implementations alone: each of --algos (PPO by default; SAC, TD3, DDPG) with our
preset for the first --envs on both sides, a fixed budget of env steps (50k for PPO, 3k off-policy), no
evaluation at all, one thread; each run times training from before env creation to the end of learning,
both sides' own logging included, and reports env steps per second and the gradient epochs (PPO: the
preset's KL stop can end an update early) or steps each side took.

    python scripts/bench_classic.py --same-hparams --algos sac td3 --envs Pendulum-v1 --json bench/offpolicy_speed.json \
        --md bench/offpolicy_speed.md

For each env, seed and algorithm the runs go back to back in this process (ours, then SB3 with each
of --sb3-hparams where it has settings), with the same torch thread count and the same evaluation:
the greedy policy on `--eval-episodes` episodes at the first update that ends at or past each
multiple of `eval_every` env steps (ours' preset), after that update, stopping at the env's reward
threshold. Wall time counts from before env creation, evaluations included. Our preset in SB3's
terms: the same network (separate 64x64 tanh actor and critic), rollout, minibatches, epochs,
learning rate and its linear decay, clip range, loss coefficients and advantage normalisation; our
KL stop (after an epoch whose approx KL exceeded target_kl) becomes SB3's target_kl / 1.5, since SB3
stops before the minibatch whose approx KL exceeds 1.5 x target_kl. `--plot` draws every algorithm's
eval curve (first seed) against env steps and against wall seconds. Run it on a quiet machine: a
second CPU-heavy job distorts every figure. Long runs go one seed per invocation (a killed run then loses
one seed), merged into one table afterwards:

    python scripts/bench_classic.py --envs LunarLanderContinuous-v3 --algos sac --first-seed 2 --seeds 1 --json runs/s2.json
    python scripts/bench_classic.py --merge runs/s1.json runs/s2.json --json bench/x.json --md bench/x.md
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from classic_rl import envs
from classic_rl.algos import ALGOS
from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.machine import machine
from classic_rl.infra.metrics import RunLogger
from classic_rl.infra.plots import plt
from classic_rl.infra.run_folder import start_run, write_json
from classic_rl.presets import preset
from classic_rl.training import Evaluator, run_training

# rl-baselines3-zoo hyperparams/{ppo,dqn,a2c}.yml (LunarLander-v3 uses the v2 entries).
ZOO = {
    ("ppo", "CartPole-v1"): dict(n_envs=8, n_timesteps=100_000, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                                 n_epochs=20, ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    ("ppo", "LunarLander-v3"): dict(n_envs=16, n_timesteps=1_000_000, n_steps=1024, batch_size=64, gae_lambda=0.98,
                                    gamma=0.999, n_epochs=4, ent_coef=0.01),
    ("dqn", "CartPole-v1"): dict(n_timesteps=100_000, learning_rate=2.3e-3, batch_size=64, buffer_size=100_000,
                                 learning_starts=1000, gamma=0.99, target_update_interval=10, train_freq=256,
                                 gradient_steps=128, exploration_fraction=0.16, exploration_final_eps=0.04,
                                 policy_kwargs=dict(net_arch=[256, 256])),
    ("dqn", "LunarLander-v3"): dict(n_timesteps=500_000, learning_rate=6.3e-4, batch_size=128, buffer_size=50_000,
                                    learning_starts=0, gamma=0.99, target_update_interval=250, train_freq=4,
                                    gradient_steps=-1, exploration_fraction=0.12, exploration_final_eps=0.1,
                                    policy_kwargs=dict(net_arch=[256, 256])),
    ("a2c", "CartPole-v1"): dict(n_envs=8, n_timesteps=500_000, ent_coef=0.0),
    ("sac", "Pendulum-v1"): dict(n_timesteps=20_000, learning_rate=1e-3),
    ("td3", "Pendulum-v1"): dict(n_timesteps=20_000, gamma=0.98, buffer_size=200_000, learning_starts=10_000, noise_std=0.1,
                                 gradient_steps=-1, train_freq=(1, "episode"), learning_rate=1e-3,
                                 policy_kwargs=dict(net_arch=[400, 300])),
    ("sac", "LunarLanderContinuous-v3"): dict(n_timesteps=500_000, batch_size=256, learning_rate="lin_7.3e-4", buffer_size=1_000_000,
                                              ent_coef="auto", gamma=0.99, tau=0.01, train_freq=1, gradient_steps=1,
                                              learning_starts=10_000, policy_kwargs=dict(net_arch=[400, 300])),
}
ZOO[("ppo", "LunarLanderContinuous-v3")] = ZOO[("ppo", "LunarLander-v3")]  # RL Zoo's PPO entry is the same for both
DEFAULT_SEEDS = {"CartPole-v1": 5, "LunarLander-v3": 3}
SOLVED_AT = {"Pendulum-v1": -200.0}  # envs gymnasium registers without a reward threshold: issue 42's bar
SB3_HPARAMS = ("ours", "zoo")  # our preset given to SB3 (identical settings); RL-Zoo's (each side's own best)
HPARAMS_LABEL = {"preset": "our preset", "ours": "our preset (identical)", "zoo": "RL-Zoo (its own best)"}


def sb3_settings(algo: str, env_id: str, hparams: str, ours) -> dict | None:
    """SB3 keyword arguments (plus n_envs and n_timesteps) for one comparison, or None where there are none:
    RL-Zoo's table, or our preset `ours` (a PPOConfig, SACConfig or TD3Config) translated to SB3's names."""
    if hparams == "zoo":
        return dict(ZOO[(algo, env_id)]) if (algo, env_id) in ZOO else None
    if algo in ("sac", "td3", "ddpg"):
        return sb3_off_policy_settings(algo, ours)
    if algo != "ppo" or ours.normalize_obs:  # SB3 would need a VecNormalize wrapper: not the same run
        return None
    return dict(n_envs=ours.num_envs, n_timesteps=ours.total_timesteps, n_steps=ours.num_steps,
                batch_size=ours.batch_size // ours.num_minibatches, n_epochs=ours.update_epochs,
                learning_rate=f"lin_{ours.learning_rate}" if ours.anneal_lr else ours.learning_rate, gamma=ours.gamma,
                gae_lambda=ours.gae_lambda, clip_range=ours.clip_coef, clip_range_vf=ours.vf_clip, ent_coef=ours.ent_coef,
                vf_coef=ours.vf_coef, max_grad_norm=ours.max_grad_norm, normalize_advantage=ours.norm_adv,
                target_kl=None if ours.target_kl is None else ours.target_kl / 1.5,
                policy_kwargs=dict(net_arch=dict(pi=list(ours.hidden_sizes), vf=list(ours.hidden_sizes)), activation_fn=torch.nn.Tanh))


def sb3_off_policy_settings(algo: str, ours) -> dict:
    """Our SAC / TD3 / DDPG config in SB3's names: the same networks (ReLU, torch's default init on both sides), replay,
    batch, rates, update schedule, and SAC's entropy tuning or TD3's noise and delay."""
    hp = dict(n_envs=ours.num_envs, n_timesteps=ours.total_timesteps, learning_rate=ours.learning_rate, buffer_size=ours.buffer_size,
              learning_starts=ours.learning_starts, batch_size=ours.batch_size, tau=ours.tau, gamma=ours.gamma,
              train_freq=ours.train_frequency, gradient_steps=ours.gradient_steps, policy_kwargs=dict(net_arch=list(ours.hidden_sizes)))
    if algo == "sac":
        return {**hp, "ent_coef": f"auto_{ours.alpha}" if ours.autotune else ours.alpha,
                "target_entropy": "auto" if ours.target_entropy is None else ours.target_entropy}
    hp["noise_std"] = ours.exploration_noise
    if algo == "td3":  # SB3's DDPG fixes these itself (one critic, no delay, no smoothing)
        hp.update(policy_delay=ours.policy_delay, target_policy_noise=ours.target_policy_noise, target_noise_clip=ours.target_noise_clip)
        hp["policy_kwargs"]["n_critics"] = ours.n_critics
    return hp


def solved_threshold(env_id: str) -> float | None:
    """The return that counts as solved: the env's registered threshold, or SOLVED_AT's."""
    return SOLVED_AT.get(env_id, gym.spec(env_id).reward_threshold)


def ours_config(algo: str, env_id: str, seed: int, eval_episodes: int, max_steps: int | None, run_dir: Path):
    config_cls, _ = ALGOS[algo]
    fields = {**preset(algo, env_id), "env": env_id, "seed": seed, "eval_episodes": eval_episodes,
              "target_return": solved_threshold(env_id), "run_dir": str(run_dir), "overwrite": True}
    if max_steps:
        fields["total_timesteps"] = max_steps
    return config_cls(**fields)


def run_ours(algo: str, cfg) -> dict:
    s = run_training(algo, ALGOS[algo][1], cfg)
    return dict(solved=s["solved_at_steps"] is not None, steps_to_solve=s["solved_at_steps"], s_to_solve=s["solved_at_s"],
                final_eval=s["eval_return_mean"], env_steps=s["env_steps"], wall_s=s["wall_s"], steps_per_s=s["steps_per_s"],
                evaluations=s["evaluations"])


def sb3_model(algo: str, env_id: str, hp: dict, seed: int):
    """(SB3's model for settings hp, their n_timesteps): hp as sb3_settings writes them (n_envs, n_timesteps, and
    "lin_x" for a linear decay from x to 0, as the Zoo means it), on CPU."""
    import stable_baselines3  # an optional peer (the [bench] extra): imported only to run it
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.utils import LinearSchedule

    hp = dict(hp)
    n_envs, n_timesteps = hp.pop("n_envs", 1), hp.pop("n_timesteps")
    for key in ("learning_rate", "clip_range"):
        if isinstance(hp.get(key), str):
            hp[key] = LinearSchedule(float(hp[key][4:]), 0.0, 1.0)
    if "noise_std" in hp:  # Gaussian exploration noise, in SB3's [-1, 1] action scale as in ours
        action_dim = gym.make(env_id).action_space.shape[0]
        hp["action_noise"] = NormalActionNoise(np.zeros(action_dim), hp.pop("noise_std") * np.ones(action_dim))
    model_cls = getattr(stable_baselines3, algo.upper())
    return model_cls("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", verbose=0, **hp), n_timesteps


def run_sb3(algo: str, env_id: str, hp: dict, seed: int, eval_episodes: int, eval_every: int, max_steps: int | None,
            max_seconds: float) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback

    threshold = solved_threshold(env_id)

    class EvalAndStop(BaseCallback):
        """Evaluates where ours does, after the update that follows each eval_every steps: SB3 calls
        _on_rollout_start after train(); _on_step then stops the run once solved or out of time."""

        def __init__(self):
            super().__init__()
            self.history, self.solved, self.next_eval = [], None, eval_every

        def _on_rollout_start(self) -> None:
            if self.num_timesteps < self.next_eval or self.solved:
                return
            while self.next_eval <= self.num_timesteps:
                self.next_eval += eval_every
            act = lambda obs: self.model.predict(obs, deterministic=True)[0]  # noqa: E731
            returns = envs.play_episodes(act, env_id, eval_episodes, seed=seed + 10_000 * (len(self.history) + 1))
            self.history.append({"env_steps": self.num_timesteps, "wall_s": time.perf_counter() - start, "mean": float(returns.mean())})
            if returns.mean() >= threshold:
                self.solved = self.history[-1]

        def _on_step(self) -> bool:
            return not self.solved and time.perf_counter() - start < max_seconds

    start = time.perf_counter()
    model, n_timesteps = sb3_model(algo, env_id, hp, seed)
    callback = EvalAndStop()
    model.learn(total_timesteps=max_steps or n_timesteps, callback=callback)
    wall_s = time.perf_counter() - start
    final = callback.history[-1]["mean"] if callback.history else float("nan")
    return dict(solved=callback.solved is not None, steps_to_solve=callback.solved["env_steps"] if callback.solved else None,
                s_to_solve=callback.solved["wall_s"] if callback.solved else None, final_eval=final,
                env_steps=int(model.num_timesteps), wall_s=wall_s, steps_per_s=model.num_timesteps / wall_s,
                evaluations=callback.history)


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_and_range(values, digits=1) -> str:
    """'median (min-max)' of the runs that have a value (the solved ones), or '-'."""
    values = [v for v in values if v is not None]
    return f"{fmt(statistics.median(values), digits)} ({fmt(min(values), digits)}-{fmt(max(values), digits)})" if values else "-"


def fmt(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"


def markdown(results: dict) -> str:
    """One row per (env, algo, impl, hyperparameters); under each comparison, our median seconds to solve
    over SB3's (below 1: ours is faster)."""
    lines = ["| env | algo | impl | hyperparameters | solved | median steps to solve (range) | median s to solve (range) "
             "| median final eval | env steps/s |", "|---|---|---|---|---|---|---|---|---|"]
    for (env_id, algo, impl, hparams), runs in results.items():
        solved = sum(r["solved"] for r in runs)
        lines.append(f"| {env_id} | {algo} | {impl} | {HPARAMS_LABEL[hparams]} | {solved}/{len(runs)} "
                     f"| {median_and_range([r['steps_to_solve'] for r in runs], 0)} | {median_and_range([r['s_to_solve'] for r in runs])} "
                     f"| {fmt(statistics.median(r['final_eval'] for r in runs))} | {fmt(statistics.median(r['steps_per_s'] for r in runs), 0)} |")
    for (env_id, algo, impl, hparams), runs in results.items():
        ours = results.get((env_id, algo, "ours", "preset"))
        mine, theirs = (median_or_none([r["s_to_solve"] for r in rs]) for rs in (ours or [], runs))
        if impl == "sb3" and mine and theirs:
            lines.append(f"\n{env_id} {algo}, {HPARAMS_LABEL[hparams]}: ours / SB3 median seconds to solve = {mine / theirs:.2f}x")
    return "\n".join(lines)


def plot_curves(path: str, results: dict, env_id: str) -> None:
    """Eval return of each (algo, impl)'s first seed against env steps and against wall seconds
    (log scales: the algorithms differ by 30x in both); SB3 dashed."""
    runs = {(algo, impl if impl == "ours" else f"sb3, {hparams}"): r[0] for (env, algo, impl, hparams), r in results.items()
            if env == env_id and r[0]["evaluations"]}
    palette = plt.get_cmap("tab20").colors  # 20 colours: more than there are algorithms (tab10 ran out at 11)
    colors = {algo: palette[i % len(palette)] for i, algo in enumerate(dict.fromkeys(algo for algo, _ in runs))}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, key, xlabel in ((axes[0], "env_steps", "env steps"), (axes[1], "wall_s", "wall seconds")):
        for (algo, impl), run in runs.items():
            history = run["evaluations"]
            ax.plot([h[key] for h in history], [h["mean"] for h in history], color=colors[algo],
                    linestyle="-" if impl == "ours" else "--", marker="o", markersize=3, label=f"{algo} ({impl})")
        ax.set_xscale("log")
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.set_ylabel("eval return (greedy)")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    first_seed = next(iter(runs.values()))["seed"]
    fig.suptitle(f"{env_id}: every algorithm, seed {first_seed}, evaluated until solved (SB3 dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_results(json_path: str, flag: str) -> tuple[dict, dict]:
    """(the saved JSON, its results keyed by (env, algo, impl, hyperparameters)) from a file this script wrote."""
    if not Path(json_path).is_file():
        raise ConfigError(f"{flag} {json_path}: no such file")
    try:
        saved = json.loads(Path(json_path).read_text())
        results = {(r["env"], r["algo"], r["impl"], r.get("hparams", "zoo" if r["impl"] == "sb3" else "preset")): r["runs"]
                   for r in saved["results"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{flag} {json_path} is not a results JSON written by this script ({err!r:.60})") from None
    return saved, results


def replot(json_path: str, plot_path: str) -> None:
    """Redraw the plot from a saved results JSON (no training)."""
    saved, results = load_results(json_path, "--replot")
    plot_curves(plot_path, results, saved["results"][0]["env"])


def merge(json_paths: list[str]) -> tuple[dict, dict]:
    """(settings, results) of several results JSONs (one seed per invocation, so that a killed run loses one seed):
    every file from one machine, thread count and evaluation size, and no (env, algo, impl, hparams, seed) twice."""
    settings, merged = None, {}
    for path in json_paths:
        saved, results = load_results(path, "--merge")
        mine = {key: saved.get(key) for key in ("threads", "eval_episodes", "machine")}
        if settings is not None and mine != settings:
            raise ConfigError(f"--merge {path} ran with {mine}, the first file with {settings}: merge runs of one setting and machine only")
        settings = mine
        for key, runs in results.items():
            seen = {r["seed"] for r in merged.get(key, [])}
            if twice := sorted(seen & {r["seed"] for r in runs}):
                raise ConfigError(f"--merge {path} repeats seed {twice[0]} of {' '.join(key)}; each seed may come from one file only")
            merged[key] = sorted(merged.get(key, []) + runs, key=lambda r: r["seed"])
    return settings, merged


def write_results(args, settings: dict, results: dict) -> None:
    """The table on stdout and in --md, the raw results in --json, and the curves in --plot if asked."""
    table = markdown(results)
    print(table)
    for path in (args.json, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {**settings, "results": [{"env": e, "algo": a, "impl": i, "hparams": h, "runs": runs}
                                                   for (e, a, i, h), runs in results.items()]})
    Path(args.md).write_text(f"{settings['machine']}\n\n{table}\n")
    print(f"wrote {args.json} and {args.md}")
    if args.plot:
        plot_curves(args.plot, results, next(iter(results))[0])
        print(f"wrote {args.plot}")


def time_ours(algo: str, cfg) -> dict:
    """Our training loop alone (env creation to the last update, its logging included): wall seconds, env steps,
    gradient epochs (PPO's, cut short by its KL stop) or gradient steps (off-policy)."""
    run_dir, checkpoints = start_run(cfg, algo=algo)
    logger = RunLogger(run_dir)
    start = time.perf_counter()
    _, env_steps = ALGOS[algo][1](cfg, logger, Evaluator(cfg, logger), checkpoints)
    wall_s = time.perf_counter() - start
    if algo == "ppo":
        updates = sum(row["losses/epochs"] for row in logger.rows if "losses/epochs" in row)
    else:  # a burst of gradient_steps each time the env steps pass a multiple of train_frequency after learning_starts
        updates = (env_steps // cfg.train_frequency - cfg.learning_starts // cfg.train_frequency) * cfg.gradient_steps
    logger.close()
    return {"wall_s": wall_s, "env_steps": env_steps, "updates": updates}


def time_sb3(algo: str, hp: dict, env_id: str, seed: int, total_steps: int) -> dict:
    """SB3 with the same settings, from env creation to the end of learn(): wall seconds, env steps, gradient epochs or steps."""
    start = time.perf_counter()
    model, _ = sb3_model(algo, env_id, hp, seed)
    model.learn(total_timesteps=total_steps)
    return {"wall_s": time.perf_counter() - start, "env_steps": int(model.num_timesteps), "updates": model._n_updates}


SAME_HPARAMS_STEPS = {"ppo": 50_000, "sac": 3_000, "td3": 3_000, "ddpg": 3_000}  # default --max-steps of --same-hparams


def same_hparams(args, tmp: Path) -> None:
    """Implementation against implementation: our preset of each --algos on the first --envs on both sides, no evaluation,
    a fixed budget of env steps; ours and SB3 alternate seed by seed. Writes rows with algo, impl, seed, wall_s, sps, updates."""
    env_id, rows, lines = args.envs[0], [], []
    for algo in args.algos:
        total_steps = args.max_steps or SAME_HPARAMS_STEPS[algo]
        for seed in range(args.first_seed, args.first_seed + (args.seeds or 5)):
            cfg = ALGOS[algo][0](**{**preset(algo, env_id), **args.overrides, "env": env_id, "seed": seed, "total_timesteps": total_steps,
                                    "eval_every": 0, "torch_threads": args.threads, "run_dir": str(tmp / f"speed-{algo}-{seed}"),
                                    "overwrite": True})
            hp = sb3_settings(algo, env_id, "ours", cfg)
            for impl in ("ours", "sb3"):
                gc.collect()
                r = time_ours(algo, cfg) if impl == "ours" else time_sb3(algo, hp, env_id, seed, total_steps)
                rows.append({"algo": algo, "impl": impl, "seed": seed, **r, "sps": r["env_steps"] / r["wall_s"]})
                print(f"{env_id} {algo} seed {seed} {impl}: {r['env_steps']} env steps in {r['wall_s']:.2f} s = "
                      f"{rows[-1]['sps']:.0f} steps/s, {r['updates']} gradient {'epochs' if algo == 'ppo' else 'steps'}", flush=True)
        lines += speed_table(env_id, algo, [r for r in rows if r["algo"] == algo], total_steps, args.threads)
    table = "\n".join(lines)
    print(table)
    for path in (args.json, args.md):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    ratios = {algo: median_sps_ratio(rows, algo) for algo in args.algos}
    write_json(args.json, {"env": env_id, "threads": args.threads, "machine": machine(), "ratio_median_sps_by_algo": ratios,
                           "ratio_median_sps": ratios[args.algos[0]], "rows": rows})
    Path(args.md).write_text(f"{machine()}\n\n{table}\n")
    print(f"wrote {args.json} and {args.md}")


def median_sps_ratio(rows: list[dict], algo: str) -> float:
    """ours / SB3, median env steps per second of one algorithm's rows."""
    median = {impl: statistics.median(r["sps"] for r in rows if r["algo"] == algo and r["impl"] == impl) for impl in ("ours", "sb3")}
    return median["ours"] / median["sb3"]


def speed_table(env_id: str, algo: str, rows: list[dict], total_steps: int, threads: int) -> list[str]:
    """Markdown lines: per implementation, median (range) env steps/s, wall seconds and gradient updates; then the ratio."""
    lines = [f"\n{algo} on {env_id}:\n", "| impl | seeds | median env steps/s (range) | median wall s | median gradient updates |",
             "|---|---|---|---|---|"]
    for impl in ("ours", "sb3"):
        group = [r for r in rows if r["impl"] == impl]
        sps = [r["sps"] for r in group]
        lines.append(f"| {impl} | {len(group)} | {statistics.median(sps):,.0f} ({min(sps):,.0f}-{max(sps):,.0f}) | "
                     f"{statistics.median(r['wall_s'] for r in group):.2f} | {statistics.median(r['updates'] for r in group):.0f} |")
    lines.append(f"\n{algo}: ours / SB3, median env steps/s: {median_sps_ratio(rows, algo):.2f}x ({env_id}, our preset on both "
                 f"sides, {total_steps:,} steps, no evaluation, {threads} thread(s))")
    return lines


def check_overrides(algos: list[str], overrides: dict) -> None:
    """ConfigError for an --override field some algorithm's config lacks."""
    for algo in algos:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ALGOS[algo][0])})
        if unknown:
            raise ConfigError(f"--override {', '.join(unknown)}: not a setting of {algo}; see train_classic.py --algo {algo} --help")


def parse_overrides(pairs: list[str]) -> dict:
    """FIELD=VALUE pairs -> {field: value}, each value read as JSON (none: None, else a string if it is not JSON)."""
    overrides = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise ConfigError(f"--override takes FIELD=VALUE pairs (e.g. target_kl=none), got {pair!r}")
        try:
            overrides[field] = None if value.lower() == "none" else json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return overrides


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_SEEDS), help=f"Env ids (default: {', '.join(DEFAULT_SEEDS)})")
    parser.add_argument("--algos", nargs="+", default=["ppo"], help=f"Algorithms, or 'all' (accepted: {', '.join(ALGOS)})")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds per env (default: 5 for CartPole, 3 for LunarLander)")
    parser.add_argument("--first-seed", type=int, default=1, help="Seeds run are first-seed, first-seed + 1, ... (fresh seeds: "
                                                                  "ones no earlier report used)")
    parser.add_argument("--impls", nargs="+", default=["ours", "sb3"], choices=["ours", "sb3"], help="Which implementations to run")
    parser.add_argument("--sb3-hparams", nargs="+", default=list(SB3_HPARAMS), choices=SB3_HPARAMS,
                        help="SB3's settings: ours (our preset: identical hyperparameters; PPO only) and/or zoo (RL-Zoo's)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="Episodes per evaluation")
    parser.add_argument("--max-steps", type=int, default=None, help="Cap on env steps per run (default: each preset's budget)")
    parser.add_argument("--sb3-max-seconds", type=float, default=900.0, help="Wall-clock cap per SB3 run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1 is fastest for these MLPs here)")
    parser.add_argument("--json", default="runs/bench_classic.json",
                        help="Where to write the raw results (bench/ holds the documented ones; make bench writes those)")
    parser.add_argument("--md", default="runs/bench_classic.md", help="Where to write the Markdown table")
    parser.add_argument("--plot", default=None, help="PNG of every algorithm's learning curve on the first env")
    parser.add_argument("--replot", default=None, metavar="JSON", help="Only redraw --plot from a results JSON written earlier")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="Only merge results JSONs written earlier (e.g. one seed each) into --json, --md and --plot")
    parser.add_argument("--override", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="With --same-hparams: change our preset on both sides, e.g. target_kl=none (a JSON value, or none)")
    parser.add_argument("--same-hparams", action="store_true",
                        help="Implementations alone: each of --algos (ppo, sac, td3, ddpg) with our preset of the first --envs on "
                             "both sides, --max-steps (default 50k for PPO, 3k off-policy) env steps, no evaluation; writes rows "
                             "with algo, impl, wall_s, sps")
    args = parser.parse_args()
    args.overrides = parse_overrides(args.override)
    if args.overrides and not args.same_hparams:
        raise ConfigError("--override changes the preset both sides run under --same-hparams; add --same-hparams")
    given = {"seeds": args.seeds, "max_steps": args.max_steps}  # None: each env's or preset's default
    require_positive(**{k: v for k, v in given.items() if v is not None}, eval_episodes=args.eval_episodes,
                     sb3_max_seconds=args.sb3_max_seconds, threads=args.threads)
    if args.replot:
        if not args.plot or not Path(args.replot).is_file():
            raise ConfigError("--replot needs an existing results JSON and --plot PNG")
        replot(args.replot, args.plot)
        return
    if args.merge:
        write_results(args, *merge(args.merge))
        return
    algos = list(ALGOS) if args.algos == ["all"] else args.algos
    unknown = [a for a in algos if a not in ALGOS]
    if unknown:
        raise ConfigError(f"unknown --algos {unknown}; accepted: all, {', '.join(ALGOS)}")
    for env_id in args.envs:
        envs.check_env_id(env_id)
    if "sb3" in args.impls:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            raise ConfigError("stable-baselines3 is not installed; run `make setup-bench` (the [bench] extra)") from None
    torch.set_num_threads(args.threads)
    # The first torch optimizer imports torch._dynamo (~1 s here): pay it before the first timed run, which
    # is always ours, rather than charge one seed of one implementation with a library's start-up.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    if args.same_hparams:
        if any(algo not in SAME_HPARAMS_STEPS for algo in algos):
            raise ConfigError(f"--same-hparams runs SB3 on our settings, which it has for {', '.join(SAME_HPARAMS_STEPS)}; "
                              f"got --algos {' '.join(algos)}")
        args.algos = algos
        check_overrides(algos, args.overrides)
        with tempfile.TemporaryDirectory() as tmp:
            same_hparams(args, Path(tmp))
        return
    results: dict[tuple[str, str, str], list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in args.envs:
            for seed in range(args.first_seed, args.first_seed + (args.seeds or DEFAULT_SEEDS.get(env_id, 3))):
                for algo in algos:
                    try:
                        cfg = ours_config(algo, env_id, seed, args.eval_episodes, args.max_steps, Path(tmp) / f"{algo}-{env_id}-{seed}")
                    except ConfigError as err:  # e.g. planning on CartPole: skip the pair, say why
                        if seed == args.first_seed:
                            print(f"skipping {algo} on {env_id}: {err}")
                        continue
                    runs = [("ours", "preset", None)] if "ours" in args.impls else []
                    if "sb3" in args.impls:
                        runs += [("sb3", h, hp) for h in args.sb3_hparams if (hp := sb3_settings(algo, env_id, h, cfg)) is not None]
                    for impl, hparams, hp in runs:
                        gc.collect()  # neither side pays for collecting what earlier runs left behind
                        if impl == "ours":
                            r = run_ours(algo, cfg)
                        else:
                            r = run_sb3(algo, env_id, hp, seed, args.eval_episodes, cfg.eval_every or 10_000, args.max_steps,
                                        args.sb3_max_seconds)
                        results.setdefault((env_id, algo, impl, hparams), []).append({"seed": seed, **r})
                        print(f"{env_id} {algo} seed {seed} {impl} ({HPARAMS_LABEL[hparams]}): solved={r['solved']} at "
                              f"{r['steps_to_solve']} steps / {fmt(r['s_to_solve'])} s, final eval {r['final_eval']:.1f}, "
                              f"{r['steps_per_s']:.0f} steps/s", flush=True)
    write_results(args, {"threads": args.threads, "eval_episodes": args.eval_episodes, "machine": machine()}, results)


if __name__ == "__main__":
    main()
