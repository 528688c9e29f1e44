"""The tutorials' experiments as presets: each recipe builds, the tutorial's own math equals ours, the
maze plans the shortest path, episode budgets stop runs, and a preset run reports its number and figure."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from classic_rl import envs, tutorials
from classic_rl.algos import ALGOS, tabular
from classic_rl.algos.reinforce import ReinforceConfig, collect_batch, linear_softmax_gradient, step_weights
from classic_rl.infra.cli import parse_config
from classic_rl.maze import Maze
from classic_rl.nets import ActorCritic, SoftmaxPolicy, load_agent, save_agent
from tests.conftest import ROOT, run_script


@pytest.mark.parametrize("name", list(tutorials.TUTORIALS))
def test_every_preset_is_a_valid_config_of_its_algorithm(name):
    chosen = tutorials.TUTORIALS[name]
    config_cls, _ = ALGOS[chosen.algo]
    cfg = parse_config(config_cls, [], defaults=chosen.fields)
    assert all(getattr(cfg, key) == value for key, value in chosen.fields.items())


def test_preset_without_a_name_lists_them_and_a_wrong_one_is_refused(monkeypatch, capsys):
    code, out, _ = run_script("train_classic.py", ["--preset"], monkeypatch, capsys)
    assert code == 0 and all(name in out for name in tutorials.TUTORIALS)
    code, _, err = run_script("train_classic.py", ["--preset", "tutorial-9"], monkeypatch, capsys)
    assert code == 2 and "accepted: tutorial-000," in err and err.count("\n") == 1
    code, _, err = run_script("train_classic.py", ["--preset", "tutorial-000", "--algo", "ppo"], monkeypatch, capsys)
    assert code == 2 and "runs reinforce; drop --algo ppo" in err


def tutorial_000_update(weight: torch.Tensor, episode: envs.Episode, learning_rate: float) -> torch.Tensor:
    """Tutorial 000's own update, step by step: the softmax Jacobian row of the action over its
    probability, times the state, times the steps still to come."""
    weight = weight.clone()
    grads = []
    for state, action in zip(torch.as_tensor(episode.observations).double(), episode.actions, strict=True):
        probs = torch.softmax(state @ weight, dim=0)
        d_softmax = torch.diag(probs) - probs.view(-1, 1) * probs
        grads.append(state.view(-1, 1) * (d_softmax[action] / probs[action]))
    total_reward = float(episode.rewards.sum())
    for i, grad in enumerate(grads):
        weight += learning_rate * grad * (total_reward - i)
    return weight


def test_tutorial_000_update_is_reinforce_with_summed_undiscounted_reward_to_go():
    cfg = ReinforceConfig(env="CartPole-v0", policy="linear", linear_bias=False, gamma=1.0, normalize_returns=False,
                          loss_reduction="sum", episodes_per_update=1)
    env = envs.make_env("CartPole-v0")
    env.reset(seed=3)
    torch.manual_seed(3)
    policy = SoftmaxPolicy(4, 2, "linear", bias=False)
    policy.weight.data = torch.rand(4, 2, dtype=torch.float64)
    [episode] = collect_batch(env, policy, cfg)
    assert len(episode.rewards) > 5
    weights = step_weights([episode], cfg)
    grad_w, _ = linear_softmax_gradient(policy.weight.data, None, torch.as_tensor(episode.observations).double(),
                                        torch.as_tensor(episode.actions), weights)
    expected = tutorial_000_update(policy.weight.data, episode, 0.001)
    torch.testing.assert_close(policy.weight.data + 0.001 * grad_w, expected)


def fake_episode(rewards: list[float]) -> envs.Episode:
    return envs.Episode(np.zeros((len(rewards), 4)), np.zeros(len(rewards), dtype=np.int64), np.array(rewards), True, np.zeros(4))


def test_step_weights_reward_to_go_or_whole_episode_return():
    batch = [fake_episode([1.0, 2.0, 4.0]), fake_episode([3.0, 5.0])]
    whole = ReinforceConfig(weighting="episode_return", normalize_returns=False)
    to_go = ReinforceConfig(gamma=0.5, normalize_returns=False)
    assert step_weights(batch, whole).tolist() == [7.0, 7.0, 7.0, 8.0, 8.0]
    assert step_weights(batch, to_go).tolist() == [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0, 3 + 0.5 * 5, 5.0]


def test_a_batch_takes_whole_episodes_until_it_passes_min_batch_steps():
    cfg = ReinforceConfig(env="CartPole-v0", episodes_per_update=1, min_batch_steps=300)
    env = envs.make_env("CartPole-v0")
    env.reset(seed=0)
    batch = collect_batch(env, SoftmaxPolicy(4, 2, "linear"), cfg)
    lengths = [len(b.rewards) for b in batch]
    assert sum(lengths) > 300 and sum(lengths[:-1]) <= 300 and all(b.terminated or len(b.rewards) == 200 for b in batch)


def test_maze_moves_walls_rewards_and_value_iteration_finds_the_shortest_path():
    maze = Maze()
    assert maze.P[maze.start][3] == [(1.0, maze.start, -1.0, False)]  # up from the top-left corner: off the grid, stay
    assert maze.P[maze.start][2] == [(1.0, 1, -1.0, False)]  # right: the open cell next to it
    assert maze.P[1][2] == [(1.0, 1, -1.0, False)]  # right again: a wall, stay
    values, policy, _ = tabular.value_iteration(maze.P, 4, gamma=1.0, theta=1e-9)
    assert maze.shortest_path_length() == 18 and values[maze.start] == -18 and values[maze.goal] == 0
    env = envs.make_env("Maze-v0")
    state, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        state, reward, terminated, truncated, _ = env.step(int(policy[state]))
        total, done = total + reward, terminated or truncated
    assert total == -18 and state == maze.goal


@pytest.mark.parametrize("algo, fields", [
    ("ppo", dict(num_envs=2, num_steps=64)),
    ("reinforce", dict(episodes_per_update=1)),
    ("sarsa", dict(env="FrozenLake-v1")),
])
def test_total_episodes_ends_training_once_that_many_episodes_have_finished(algo, fields, tmp_path):
    from classic_rl.training import run_training
    config_cls, train_fn = ALGOS[algo]
    cfg = config_cls(**{"env": "CartPole-v1", **fields}, total_episodes=7, total_timesteps=10**6, eval_every=0,
                     eval_episodes=2, run_dir=str(tmp_path / "run"))
    summary = run_training(algo, train_fn, cfg)
    finished = (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
    assert summary["env_steps"] < 10**6 and 7 <= len(finished) < 7 + 2 * 64  # an update's episodes at most past the budget
    if algo != "ppo":
        assert len(finished) == 7


def test_policies_without_bias_or_with_relu_save_and_load(tmp_path):
    for model in (SoftmaxPolicy(4, 2, "linear", bias=False), ActorCritic(8, 4, [128, 64], activation="relu"),
                  SoftmaxPolicy(4, 2, "mlp", [32], activation="relu")):
        save_agent(model, tmp_path / "policy.safetensors")
        loaded = load_agent(tmp_path / "policy.safetensors")
        obs = torch.randn(5, model.init_kwargs["obs_dim"])
        assert loaded.init_kwargs == model.init_kwargs
        torch.testing.assert_close(torch.as_tensor(loaded.act(obs.numpy())), torch.as_tensor(model.act(obs.numpy())))


def test_a_tutorial_preset_run_reports_its_number_and_draws_its_figure(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "t000"
    code, out, _ = run_script("train_classic.py", ["--preset", "tutorial-000", "--total-episodes", "30", "--eval-episodes", "50",
                                                   "--run-dir", str(run_dir)], monkeypatch, capsys)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert code == 0 and "the tutorial reports average total reward over 1000 sampled episodes: 200" in out
    assert summary["tutorial"]["measured"] == summary["eval_return_mean"] and summary["eval_mode"] == "sample"
    assert len((run_dir / "episodes.jsonl").read_text().splitlines()) == 30
    assert (run_dir / "episode_rewards.png").stat().st_size > 10_000
    assert load_agent(run_dir / "policy.safetensors").bias is None


def test_make_tutorials_script_writes_a_row_per_preset_and_seed_and_copies_figures(tmp_path, monkeypatch, capsys):
    code, out, err = run_script("run_tutorials.py", ["--presets", "tutorial-002-value-iteration", "--seeds", "1", "2",
                                                     "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                                                     "--figures", str(tmp_path / "figures")], monkeypatch, capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [(row["preset"], row["seed"], row["measured"]) for row in rows] == [("tutorial-002-value-iteration", 1, 18.0),
                                                                                ("tutorial-002-value-iteration", 2, 18.0)]
    assert "| `tutorial-002-value-iteration` | 002 |" in (tmp_path / "out.md").read_text()
    assert (tmp_path / "figures" / "tutorial-002-value-iteration-maze_values.png").is_file()


def test_a_tutorial_on_its_own_old_env_version_runs_without_gymnasium_s_advice_to_upgrade(tmp_path):
    """tutorial-000 runs CartPole-v0 on purpose (the tutorial's 200-step episodes): gymnasium's deprecation warning
    about it, in ANSI colours, was noise in every run of the preset."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts/train_classic.py"), "--preset", "tutorial-000", "--total-episodes", "3",
                           "--eval-episodes", "3", "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "CartPole-v0 is out of date" not in done.stderr
