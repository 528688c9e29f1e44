"""The tutorials' own experiments, one preset each (`train_classic.py --preset NAME`).

The project was specified from five tutorials (`../shared/seeds/`, numbered 000-004); each preset
below is one experiment of theirs with its recipe (env, algorithm, settings, evaluation mode and
episode budget), and a `report` that measures the number the tutorial gives, draws its figure, and
returns both for summary.json's "tutorial" entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classic_rl import envs
from classic_rl.algos import tabular
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.plots import plot_lines, plt
from classic_rl.infra.run_folder import atomic_write, read_jsonl
from classic_rl.maze import MOVES, Maze
from classic_rl.nets import QTable, load_agent
from classic_rl.training import (
    ClassicConfig,
    evaluation_seed,
    moving_average,
    policy_returns,
    smoothing_window,
)

Report = Callable[[Path, ClassicConfig, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Tutorial:
    source: str  # the seed file's number, e.g. "000"
    title: str
    algo: str
    fields: dict[str, Any]  # config fields, env included
    reported: str  # what the tutorial reports, in its words and numbers
    report: Report
    figures: tuple[str, ...] = ()


def plot_episode_returns(run_dir: Path, title: str) -> None:
    """Total reward of every training episode against its number: the plot tutorial 000 draws."""
    returns = [e["return"] for e in read_jsonl(run_dir / "episodes.jsonl")]
    episodes, window = list(range(1, len(returns) + 1)), smoothing_window(len(returns))
    plot_lines(run_dir / "episode_rewards.png", [("episode", "total reward", {
        "per episode": (episodes, returns, {"alpha": 0.5, "linewidth": 0.7, "marker": None}),
        f"mean of {window}": (episodes, moving_average(returns, window), {"marker": None})})], title)


def report_eval(run_dir: Path, cfg: ClassicConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The final evaluation (its mode and episode count are the tutorial's), and the per-episode plot."""
    plot_episode_returns(run_dir, f"{summary['algo']} on {cfg.env}: total reward per training episode")
    solved = f" (solved at {summary['solved_at_steps']:,} env steps)" if summary["solved_at_steps"] is not None else ""
    return {"measured": summary["eval_return_mean"],
            "measured_text": f"{cfg.eval_mode} evaluation over {cfg.eval_episodes} new episodes: average "
                             f"{summary['eval_return_mean']:.1f}{solved}"}


def report_epochs(run_dir: Path, cfg: ClassicConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Tutorial 001 prints each epoch's mean training return; the last one is its result."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    epoch_means = [r["charts/batch_mean_return"] for r in rows if "charts/batch_mean_return" in r]
    epochs = list(range(len(epoch_means)))
    plot_lines(run_dir / "epoch_returns.png", [("epoch", "mean return of the epoch's episodes", {"return": (epochs, epoch_means)})],
               f"vanilla policy gradient on {cfg.env}")
    return {"measured": epoch_means[-1], "measured_text": f"epoch {epochs[-1]}: return {epoch_means[-1]:.1f} "
            f"(sampled evaluation over {cfg.eval_episodes} new episodes: {summary['eval_return_mean']:.1f})"}


def report_maze(run_dir: Path, cfg: ClassicConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The greedy path's length against breadth-first search's, and the values drawn on the maze."""
    maze = Maze()
    values = load_agent(run_dir / "policy.safetensors").q.max(-1).values.numpy().reshape(maze.rows, maze.cols)
    draw_maze(run_dir / "maze_values.png", maze, values)
    moves, shortest = -summary["eval_return_mean"], maze.shortest_path_length()
    return {"measured": moves, "measured_text": f"the greedy path takes {moves:.0f} moves; breadth-first search's shortest: {shortest}"}


def draw_maze(path: Path, maze: Maze, values: np.ndarray) -> None:
    """Heat map of V(s) = -(moves to the goal) with the greedy path from S to G."""
    walls = maze.grid == "#"
    fig, ax = plt.subplots(figsize=(5, 5))
    image = ax.imshow(np.ma.masked_where(walls, values), cmap="viridis")
    ax.imshow(np.ma.masked_where(~walls, walls), cmap="gray_r", vmin=0, vmax=1.5)
    for (row, col), value in np.ndenumerate(values):
        if not walls[row, col]:
            ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=8, color="w")
    state, route = maze.start, [maze.start]
    while state != maze.goal and len(route) <= maze.rows * maze.cols:
        row, col = divmod(state, maze.cols)
        neighbours = [maze.P[state][a][0][1] for a in range(len(MOVES))]
        state = max(neighbours, key=lambda s: values.flat[s] if s != state else -np.inf)
        route.append(state)
    rows, cols = zip(*(divmod(s, maze.cols) for s in route), strict=True)
    ax.plot(cols, rows, color="r", linewidth=2, alpha=0.7)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, shrink=0.8, label="V(s) = -(moves to G)")
    ax.set_title("value iteration on the maze: V and the greedy path", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def report_taxi(run_dir: Path, cfg: ClassicConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The learned table's greedy return against the optimal plan's on the same evaluation episodes."""
    plot_episode_returns(run_dir, f"{summary['algo']} on {cfg.env}: total reward per training episode")
    model = tabular.transition_model(cfg.env)
    n_actions = len(model[0])
    values, _, _ = tabular.value_iteration(model, n_actions, 0.99, 1e-6)
    optimal = QTable(len(model), n_actions)
    optimal.q.copy_(torch.as_tensor(tabular.q_from_v(model, values, 0.99, n_actions)))
    same_episodes = evaluation_seed(cfg, len(summary["evaluations"]))
    best = float(policy_returns(optimal, cfg.env, cfg.eval_episodes, same_episodes).mean())
    return {"measured": summary["eval_return_mean"], "optimal_plan_return": best,
            "measured_text": f"greedy return {summary['eval_return_mean']:.2f} over {cfg.eval_episodes} episodes; "
                             f"value iteration's optimal plan on the same episodes: {best:.2f}"}


def report_lander(run_dir: Path, cfg: ClassicConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Tutorial 003's figure (average total and final reward per batch of 5 episodes, with a random agent
    for scale), its test (sampled episodes scoring over 100, landings at rest) and its GIF."""
    model = load_agent(run_dir / "policy.safetensors")
    test = episode_stats(lambda obs: model.act(obs, deterministic=False), cfg.env, 100, seed=cfg.seed + 777)
    rng = np.random.default_rng(cfg.seed)
    random_agent = episode_stats(lambda obs: rng.integers(4, size=len(obs)), cfg.env, 100, seed=cfg.seed + 999)
    plot_lander(run_dir / "lunar_lander.png", read_jsonl(run_dir / "episodes.jsonl"), float(np.mean([e["return"] for e in random_agent])))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        envs.record_gif(lambda obs: model.act(obs, deterministic=False), cfg.env, cfg.seed + 777, run_dir / "lunar_lander.gif")
    over_100 = float(np.mean([e["return"] > 100 for e in test]))
    at_rest = float(np.mean([e["final_reward"] == 100 for e in test]))
    return {"measured": over_100, "test_return_mean": float(np.mean([e["return"] for e in test])), "test_at_rest": at_rest,
            "measured_text": f"{over_100:.0%} of 100 sampled test episodes score over 100 (the tutorial's 3 of 5 = 60%), "
                             f"{at_rest:.0%} come to rest (final reward +100); mean return {np.mean([e['return'] for e in test]):.1f}"}


def episode_stats(act: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int) -> list[dict[str, float]]:
    """Statistics (return, length, final reward) of `episodes` episodes played one after another."""
    env = envs.make_env(env_id)
    env.reset(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        played = [envs.play_episode(env, act).stats() for _ in range(episodes)]
    env.close()
    return played


def plot_lander(path: Path, episodes: list[dict[str, float]], random_return: float) -> None:
    batches = [episodes[i:i + 5] for i in range(0, len(episodes) - 4, 5)]
    x = list(range(1, len(batches) + 1))
    totals = [float(np.mean([e["return"] for e in b])) for b in batches]
    finals = [float(np.mean([e["final_reward"] for e in b])) for b in batches]
    plot_lines(path, [
        ("batch of 5 episodes", "average total reward", {"ppo": (x, totals, {"marker": None}),
                                                         "random agent": ([1, len(x)], [random_return] * 2, {"linestyle": "--", "marker": None})}),
        ("batch of 5 episodes", "average final reward (+100 at rest, -100 crashed)", {"ppo": (x, finals, {"marker": None})}),
    ], "PPO on LunarLander (tutorial 003)")


TUTORIALS: dict[str, Tutorial] = {
    "tutorial-000": Tutorial(
        "000", "REINFORCE with a linear softmax policy and its hand-derived gradient", "reinforce",
        dict(env="CartPole-v0", policy="linear", linear_bias=False, linear_init="uniform", gamma=1.0, normalize_returns=False,
             loss_reduction="sum", learning_rate=0.001, episodes_per_update=1, total_episodes=1000, total_timesteps=10**7,
             eval_every=0, eval_episodes=1000, eval_mode="sample"),
        "average total reward over 1000 sampled episodes: 200", report_eval, ("episode_rewards.png",)),
    "tutorial-000-random-search": Tutorial(
        "000", "random search over linear policies, the baseline tutorial 000 starts from", "random_search",
        dict(env="CartPole-v0", episodes_per_candidate=1, total_episodes=1000, total_timesteps=10**7, eval_every=0,
             eval_episodes=1000),
        "enough for a problem as simple as CartPole (no number)", report_eval, ("episode_rewards.png",)),
    "tutorial-000-hill-climbing": Tutorial(
        "000", "hill climbing with adaptive noise over linear policies, tutorial 000's other baseline", "hill_climbing",
        dict(env="CartPole-v0", episodes_per_candidate=1, total_episodes=1000, total_timesteps=10**7, eval_every=0,
             eval_episodes=1000),
        "enough for a problem as simple as CartPole (no number)", report_eval, ("episode_rewards.png",)),
    "tutorial-001": Tutorial(
        "001", "vanilla policy gradient: a 1x32 MLP, every step weighted by its episode's return", "reinforce",
        dict(env="CartPole-v0", policy="mlp", hidden_sizes=[32], activation="relu", weighting="episode_return",
             normalize_returns=False, learning_rate=1e-2, episodes_per_update=1, min_batch_steps=5000, total_updates=40,
             total_timesteps=10**7, eval_every=0, eval_episodes=100, eval_mode="sample"),
        "180+ after 40 epochs (its last three: 181.1, 186.2, 176.8)", report_epochs, ("epoch_returns.png",)),
    "tutorial-002-value-iteration": Tutorial(
        "002", "value iteration on a maze: every cell's value, and the shortest path it implies", "value_iteration",
        dict(env="Maze-v0", gamma=1.0, eval_episodes=1),
        "the values lead the agent along the shortest path from start to goal (no number)", report_maze, ("maze_values.png",)),
    "tutorial-002-q-table": Tutorial(
        "002", "Q-table learning with alpha 0.1, gamma 0.6 and a constant epsilon of 0.1, on Taxi", "q_learning",
        dict(env="Taxi-v4", learning_rate=0.1, gamma=0.6, epsilon_start=0.1, epsilon_end=0.1, total_episodes=100_000,
             total_timesteps=10**7, eval_every=200_000, eval_episodes=100),
        "the settings only (no env, no number)", report_taxi, ("episode_rewards.png",)),
    "tutorial-002-sarsa": Tutorial(
        "002", "SARSA, the on-policy twin of the Q-table example, at its settings", "sarsa",
        dict(env="Taxi-v4", learning_rate=0.1, gamma=0.6, epsilon_start=0.1, epsilon_end=0.1, total_episodes=100_000,
             total_timesteps=10**7, eval_every=200_000, eval_episodes=100),
        "the idea only (no settings, no number)", report_taxi, ("episode_rewards.png",)),
    "tutorial-002-dqn": Tutorial(
        "002", "DQN with experience replay and a target network, on CartPole", "dqn",
        dict(env="CartPole-v1", target_return=475.0),  # DQN's greedy policy oscillates: keep the first one that solves it
        "the idea only (replay, target network; no settings, no number)", report_eval, ("episode_rewards.png",)),
    "tutorial-003": Tutorial(
        "003", "PPO on LunarLander: separate 128-64 actor and critic, normalised Monte-Carlo returns", "ppo",
        dict(env="LunarLander-v3", num_envs=1, num_steps=1200, update_epochs=4, num_minibatches=1, learning_rate=2e-3,
             anneal_lr=False, gamma=0.99, gae_lambda=1.0, norm_adv=False, normalize_returns=True, ent_coef=0.01, vf_coef=0.5,
             clip_coef=0.2, max_grad_norm=None, hidden_sizes=[128, 64], activation="relu", total_episodes=1000,
             total_timesteps=10**7, eval_every=0, eval_episodes=100, eval_mode="sample"),
        "3 of 5 sampled test episodes score over 100 and come to rest; the batch average climbs from about -200",
        report_lander, ("lunar_lander.png", "lunar_lander.gif")),
}


def tutorial(name: str) -> Tutorial:
    if name not in TUTORIALS:
        raise ConfigError(f"unknown --preset {name!r}; accepted: {', '.join(TUTORIALS)}")
    return TUTORIALS[name]


def listing() -> str:
    """The presets, one line each, for `--preset` without a name."""
    return "\n".join(f"{name:30s} ({t.source}) {t.algo} on {t.fields['env']}: {t.title}" for name, t in TUTORIALS.items())


def report(name: str, cfg: ClassicConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Measure the tutorial's number and draw its figures; the entry summary.json keeps under "tutorial"."""
    chosen = tutorial(name)
    run_dir = Path(cfg.run_dir)
    measured = chosen.report(run_dir, cfg, summary)
    return {"name": name, "source": chosen.source, "title": chosen.title, "reported": chosen.reported,
            "figures": [*chosen.figures, "learning_curve.png"], **measured}
