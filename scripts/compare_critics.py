#!/usr/bin/env python
"""Monte-Carlo against temporal-difference critics: VPG (or A2C) trained with GAE lambda 1, 0 and in
between, side by side. In VPG, which learns from whole episodes, lambda 1 makes the critic's target
the Monte-Carlo return and lambda 0 the TD(0) target r + gamma V(s'); in A2C's 5-step rollouts
lambda 1 is the 5-step return.

    python scripts/compare_critics.py --env CartPole-v1 --lambdas 1 0 0.95 --seeds 3 --run-dir runs/critics

For each lambda and seed, the algorithm (its defaults) trains with a checkpoint every --every steps. Each checkpoint's critic is then scored against the truth: the discounted return
that followed each state in --episodes fresh episodes of that checkpoint's own (sampling) policy.
Writes critics.png (greedy eval return and the critic's relative error against env steps, mean over seeds)
and critics.json (every point).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from classic_rl import core, envs
from classic_rl.algos import ALGOS
from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import require_discount, require_positive
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import prepare_run_dir, write_json
from classic_rl.nets import ActorCritic, load_agent
from classic_rl.training import run_training


def parse_args():
    parser = script_parser(__doc__)
    parser.add_argument("--algo", default="vpg", choices=["vpg", "a2c"], help="Whole episodes (vpg) or 5-step rollouts (a2c)")
    parser.add_argument("--env", default="CartPole-v1", help="Gymnasium env id (flat Box observations, discrete actions)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 0.0, 0.95], help="GAE lambdas to compare")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 1..N per lambda")
    parser.add_argument("--total-timesteps", type=int, default=100_000, help="Env steps per run")
    parser.add_argument("--every", type=int, default=10_000, help="Checkpoint, evaluate and score the critic every N steps")
    parser.add_argument("--episodes", type=int, default=10, help="Fresh episodes per critic score")
    parser.add_argument("--gamma", type=float, default=0.99, help="Discount of the critic and of its true values")
    parser.add_argument("--run-dir", default="runs/critics", help="Folder for the runs, critics.png and critics.json")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --run-dir folder")
    args = parser.parse_args()
    require_positive(seeds=args.seeds, total_timesteps=args.total_timesteps, every=args.every, episodes=args.episodes)
    for lam in args.lambdas:
        require_discount(args.gamma, lam)
    envs.check_spaces(args.env, args.algo)
    return args


def true_values(episode: envs.Episode, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(observations, discounted return that followed each) of one episode. An episode cut by the time
    limit keeps only the states whose cut-off tail weighs under 1% (gamma^k < 0.01), so that the
    unseen rewards after the cut do not bias the truth."""
    rewards = torch.as_tensor(episode.rewards, dtype=torch.float64)
    returns = core.discounted_returns(rewards, torch.zeros_like(rewards), gamma).numpy()
    keep = len(returns) if episode.terminated else max(0, len(returns) - int(np.ceil(np.log(0.01) / np.log(gamma))))
    return episode.observations[:keep], returns[:keep]


def critic_error(agent: ActorCritic, env_id: str, episodes: int, gamma: float, seed: int) -> tuple[float, float]:
    """(RMSE, relative RMSE) of V(s) against the true discounted return over the states of fresh episodes
    played by agent's sampling policy; relative: divided by the root mean square of the true returns, so
    that critics of good and bad policies compare. NaNs when no state qualifies."""
    env = envs.make_env(env_id)
    env.reset(seed=seed)
    observations, targets = [], []
    for _ in range(episodes):
        obs, returns = true_values(envs.play_episode(env, lambda o: agent.act(o, deterministic=False)), gamma)
        observations.append(obs)
        targets.append(returns)
    env.close()
    targets = np.concatenate(targets)
    if not len(targets):
        return float("nan"), float("nan")
    with torch.no_grad():
        values = agent.get_value(agent.normalize(np.concatenate(observations))).double().numpy()
    rmse = float(np.sqrt(np.mean((values - targets) ** 2)))
    return rmse, rmse / float(np.sqrt(np.mean(targets**2)))


def run_one(args, lam: float, seed: int, run_dir: Path) -> list[dict]:
    """Train with this lambda, then score every checkpoint's critic; one row per checkpoint."""
    config_cls, train = ALGOS[args.algo]
    cfg = config_cls(env=args.env, seed=seed, total_timesteps=args.total_timesteps, gamma=args.gamma, gae_lambda=lam,
                    eval_every=args.every, save_every=args.every, keep_checkpoints=args.total_timesteps // args.every + 1,
                    run_dir=str(run_dir))
    summary = run_training(args.algo, train, cfg)
    agent = load_agent(run_dir / "policy.safetensors")  # the architecture; each checkpoint's weights go into it
    eval_at = {e["env_steps"]: e["mean"] for e in summary["evaluations"]}
    rows = []
    for folder in sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:])):
        step = int(folder.name[5:])
        agent.load_state_dict(torch.load(folder / "state.pt", weights_only=True)["model"])
        rmse, relative = critic_error(agent, args.env, args.episodes, args.gamma, seed=10_000 + step)
        rows.append({"lambda": lam, "seed": seed, "env_steps": step, "bucket": step // args.every * args.every,
                     "eval_return": eval_at.get(step),
                     "critic_rmse": rmse, "critic_relative_rmse": relative})
    return rows


def label(algo: str, lam: float) -> str:
    target = {1.0: "Monte-Carlo" if algo == "vpg" else "5-step return", 0.0: "TD(0)"}.get(lam, "GAE")
    return f"lambda {lam:g} ({target})"


def mean_curve(rows: list[dict], lam: float, key: str) -> tuple[list[int], list[float]]:
    """(env steps, mean over seeds of key) for one lambda, per multiple of --every (VPG checkpoints at the
    end of the first epoch past each multiple, so seeds differ by up to an epoch's steps)."""
    by_step: dict[int, list[float]] = {}
    for row in rows:
        if row["lambda"] == lam and row[key] is not None and np.isfinite(row[key]):
            by_step.setdefault(row["bucket"], []).append(row[key])
    steps = sorted(by_step)
    return steps, [statistics.mean(by_step[s]) for s in steps]


@cli
def main() -> None:
    args = parse_args()
    out = prepare_run_dir(args.run_dir, overwrite=args.overwrite)
    rows = []
    for lam in args.lambdas:
        for seed in range(1, args.seeds + 1):
            rows += run_one(args, lam, seed, out / f"lambda-{lam:g}-seed-{seed}")
    write_json(out / "critics.json", {"algo": args.algo, "env": args.env, "gamma": args.gamma, "episodes": args.episodes, "rows": rows})
    plot_lines(out / "critics.png", [
        ("env steps", "greedy eval return", {label(args.algo, lam): mean_curve(rows, lam, "eval_return") for lam in args.lambdas}),
        ("env steps", "critic RMSE / RMS of the true return", {label(args.algo, lam): mean_curve(rows, lam, "critic_relative_rmse")
                                                               for lam in args.lambdas}),
    ], f"{args.algo.upper()} on {args.env}: Monte-Carlo vs TD critics (mean of {args.seeds} seeds)")
    print(f"{'lambda':>8} {'final eval':>11} {'critic RMSE':>12} {'relative':>9}")
    for lam in args.lambdas:
        final = [max((r for r in rows if r["lambda"] == lam and r["seed"] == seed), key=lambda r: r["env_steps"])
                 for seed in range(1, args.seeds + 1)]  # each run's last checkpoint
        print(f"{lam:>8g} {statistics.mean(r['eval_return'] or 0 for r in final):>11.1f} "
              f"{statistics.mean(r['critic_rmse'] for r in final):>12.2f} {statistics.mean(r['critic_relative_rmse'] for r in final):>9.2f}")
    print(f"wrote {out / 'critics.png'} and {out / 'critics.json'}")


if __name__ == "__main__":
    main()
