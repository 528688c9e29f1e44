"""Checkpoints of classic runs: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends
exactly like an uninterrupted one; a NaN stops the run with a one-line message."""

import json
import shutil
import signal

import pytest

from classic_rl.algos import a2c, dqn, ppo, sac, td3, vpg
from classic_rl.infra.errors import NonFiniteError
from classic_rl.training import run_training
from tests.conftest import comparable_metrics, kill_after_first_checkpoint, run_script

# 48 PPO updates of 8 x 32 steps; evaluations every 2,048 steps, checkpoints every 256.
PPO_ARGS = ["--algo", "ppo", "--env", "CartPole-v1", "--seed", "3", "--total-timesteps", "12288", "--eval-every", "2048",
            "--eval-episodes", "5"]


def final(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def episodes(run_dir):
    return (run_dir / "episodes.jsonl").read_text().splitlines()


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)])
def test_ppo_killed_or_interrupted_then_resumed_matches_an_uninterrupted_run(sig, code, tmp_path, monkeypatch, capsys):
    assert run_script("train_classic.py", [*PPO_ARGS, "--run-dir", str(tmp_path / "full")], monkeypatch, capsys)[0] == 0
    broken = tmp_path / "broken"
    assert kill_after_first_checkpoint("train_classic.py", [*PPO_ARGS, "--run-dir", str(broken), "--save-every", "256"], broken, sig) == code
    assert not (broken / "summary.json").exists()
    exit_code, out, _ = run_script("train_classic.py", [*PPO_ARGS, "--run-dir", str(broken), "--save-every", "256", "--resume"],
                                   monkeypatch, capsys)
    assert exit_code == 0 and "resuming" in out
    assert comparable_metrics(broken) == comparable_metrics(tmp_path / "full")
    assert episodes(broken) == episodes(tmp_path / "full") and len(episodes(broken)) > 50
    for key in ("env_steps", "eval_return_mean", "eval_return_std"):
        assert final(broken)[key] == pytest.approx(final(tmp_path / "full")[key], abs=1e-4)


SAC_ARGS = ["--algo", "sac", "--env", "Pendulum-v1", "--seed", "4", "--total-timesteps", "3000", "--eval-every", "1000",
            "--eval-episodes", "3", "--hidden-sizes", "32", "32", "--batch-size", "32"]


def test_sac_killed_then_resumed_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """The replay buffer, the target critics, alpha and its optimiser, and the env mid-episode all come back."""
    assert run_script("train_classic.py", [*SAC_ARGS, "--run-dir", str(tmp_path / "full")], monkeypatch, capsys)[0] == 0
    broken = tmp_path / "broken"
    args = [*SAC_ARGS, "--run-dir", str(broken), "--save-every", "500"]
    assert kill_after_first_checkpoint("train_classic.py", args, broken, signal.SIGKILL) == -signal.SIGKILL
    exit_code, out, _ = run_script("train_classic.py", [*args, "--resume"], monkeypatch, capsys)
    assert exit_code == 0 and "resuming" in out
    assert comparable_metrics(broken) == comparable_metrics(tmp_path / "full") and episodes(broken) == episodes(tmp_path / "full")
    assert final(broken)["eval_return_mean"] == final(tmp_path / "full")["eval_return_mean"]


@pytest.mark.parametrize("module, env, fields", [
    (a2c, "CartPole-v1", dict(total_timesteps=4_000, eval_every=1_000)),
    (dqn, "CartPole-v1", dict(total_timesteps=3_000, eval_every=1_000, learning_starts=500, train_frequency=100, gradient_steps=20)),
    (vpg, "CartPole-v1", dict(total_timesteps=3_000, eval_every=1_000, episodes_per_epoch=2)),
    (ppo, "Pendulum-v1", dict(total_timesteps=4_096, eval_every=1_024, num_envs=4, num_steps=64)),  # real-valued actions replayed exactly
    (ppo, "Pendulum-v1", dict(total_timesteps=4_096, eval_every=1_024, num_envs=4, num_steps=64, normalize_obs=True,
                              normalize_reward=True)),  # the reward scale's running statistics are in the checkpoint
    (sac, "Pendulum-v1", dict(total_timesteps=2_400, eval_every=800, hidden_sizes=[32, 32], batch_size=32)),  # the replay
    (td3, "Pendulum-v1", dict(total_timesteps=2_400, eval_every=800, hidden_sizes=[32, 32], batch_size=32)),  # buffer too
], ids=["a2c", "dqn", "vpg", "ppo-continuous", "ppo-normalized", "sac", "td3"])
def test_resuming_from_an_earlier_checkpoint_replays_the_same_run(module, env, fields, tmp_path):
    config_cls = {a2c: a2c.A2CConfig, dqn: dqn.DQNConfig, vpg: vpg.VPGConfig, ppo: ppo.PPOConfig, sac: sac.SACConfig,
                  td3: td3.TD3Config}[module]
    cfg = config_cls(env=env, seed=2, eval_episodes=3, save_every=1_000, keep_checkpoints=10,
                     run_dir=str(tmp_path / "run"), **fields)
    first = run_training("algo", module.train, cfg)
    reference, reference_episodes = comparable_metrics(tmp_path / "run"), episodes(tmp_path / "run")
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    assert len(checkpoints) >= 2
    for later in checkpoints[1:]:  # as if the run had died right after its first checkpoint
        shutil.rmtree(later)
    cfg.resume = True
    second = run_training("algo", module.train, cfg)
    assert comparable_metrics(tmp_path / "run") == reference and episodes(tmp_path / "run") == reference_episodes
    assert second["eval_return_mean"] == first["eval_return_mean"]


def test_non_finite_loss_stops_with_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    code, _, err = run_script("train_classic.py", ["--algo", "a2c", "--env", "CartPole-v1", "--learning-rate", "1e30",
                                                   "--max-grad-norm", "1e30", "--save-every", "40", "--run-dir", str(tmp_path / "r")],
                              monkeypatch, capsys)
    message = err[err.index("error: "):].splitlines()[0]  # the progress bar shares stderr
    assert code == 1 and err.count("error") == 1 and "Traceback" not in err
    assert message.startswith("error: step ") and "non-finite" in message and message.endswith("step-40")
    assert issubclass(NonFiniteError, FloatingPointError)


def test_save_every_is_refused_by_algorithms_without_checkpoints(tmp_path, monkeypatch, capsys):
    code, _, err = run_script("train_classic.py", ["--algo", "reinforce", "--save-every", "100", "--run-dir", str(tmp_path / "r")],
                              monkeypatch, capsys)
    assert code == 2 and "accepted by ppo, trpo, a2c, a3c, vpg, dqn, sac, td3 and ddpg" in err


def test_resume_without_a_checkpoint_and_resume_with_overwrite_are_refused(tmp_path, monkeypatch, capsys):
    code, _, err = run_script("train_classic.py", ["--resume", "--run-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code == 2 and "found no checkpoint" in err
    code, _, err = run_script("train_classic.py", ["--resume", "--overwrite", "--run-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code == 2 and "pass one of them" in err


def test_resume_with_changed_settings_is_refused_and_leaves_the_run_as_it_was(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "r"
    args = ["--algo", "ppo", "--env", "CartPole-v1", "--total-timesteps", "512", "--save-every", "256", "--eval-every", "0",
            "--run-dir", str(run_dir)]
    assert run_script("train_classic.py", args, monkeypatch, capsys)[0] == 0
    saved = {path: path.read_bytes() for path in [run_dir / "config.json", *(run_dir / "checkpoints").rglob("*.*")]}
    code, _, err = run_script("train_classic.py", [*args, "--resume", "--hidden-sizes", "32", "32"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--hidden-sizes [32, 32] (saved: [64, 64])" in err and "start a new run in another --run-dir" in err
    assert {path: path.read_bytes() for path in saved} == saved  # the config and the checkpoints are as they were
    code, out, _ = run_script("train_classic.py", [*args[:4], "--total-timesteps", "1024", *args[6:], "--resume"],
                              monkeypatch, capsys)
    assert code == 0 and "resuming" in out  # a longer run is a continuation, not a change
