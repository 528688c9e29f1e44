"""Classic PPO: environment contract, learning, save/load, the CLI and its bad-input errors."""

import copy
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from classic_rl import envs
from classic_rl.algos import ALGOS
from classic_rl.algos.ppo import PPOConfig, minibatch_indices, train, update_policy
from classic_rl.buffers import RolloutBuffer
from classic_rl.fast_mlp import FlatAdam, flatten_parameters
from classic_rl.infra.cli import parse_config
from classic_rl.nets import ActorCritic, ObsNormalizer, load_agent, save_agent
from classic_rl.presets import PRESETS, preset
from classic_rl.training import run_training
from tests.conftest import run_script

ROOT = Path(__file__).resolve().parents[1]


def test_same_step_autoreset_exposes_final_obs_of_truncated_episodes():
    vec = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync", max_episode_steps=3,
                       vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    obs, _ = vec.reset(seed=0)
    env0 = gym.make("CartPole-v1", max_episode_steps=3)  # replays env 0 to know its true last state
    expected, _ = env0.reset(seed=0)
    for _ in range(3):
        obs, _, terminated, truncated, infos = vec.step(np.zeros(2, dtype=np.int64))
        expected, *_ = env0.step(0)
    assert truncated.all() and not terminated.any()
    cut, final_obs = envs.truncation_bootstrap_obs(infos, terminated, truncated)
    assert cut.tolist() == [0, 1]
    np.testing.assert_allclose(final_obs[0], expected)  # the state the time limit cut off ...
    assert not np.allclose(obs[0], expected)  # ... not the new episode's first observation


def test_obs_normalizer_matches_statistics_of_all_batches():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 2, size=(50, 3)), rng.normal(-1, 0.5, size=(70, 3))
    norm = ObsNormalizer(3, enabled=True)
    norm.update(torch.tensor(a))
    norm.update(torch.tensor(b))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(norm.mean.numpy(), both.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.var.numpy(), both.var(0), rtol=1e-6)


def test_policy_round_trip_keeps_weights_and_normalisation(tmp_path):
    model = ActorCritic(4, 2, [16, 16], normalize_obs=True)
    model.obs_normalizer.update(torch.randn(100, 4) * 5 + 2)
    save_agent(model, tmp_path / "policy.safetensors")
    loaded = load_agent(tmp_path / "policy.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    obs = np.random.default_rng(1).normal(2, 5, size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs), model.act(obs))
    assert loaded.obs_normalizer.count.item() == pytest.approx(100, abs=1e-6)


@pytest.mark.parametrize("num_minibatches", [1, 4])
def test_minibatches_cover_the_rollout_once_each_epoch(num_minibatches):
    """Every sample exactly once per epoch, in equal minibatches; one minibatch is the rollout in order."""
    torch.manual_seed(0)
    minibatches = minibatch_indices(12, num_minibatches)
    order = torch.cat([torch.arange(12)[mb] for mb in minibatches])
    assert len(minibatches) == num_minibatches and {len(torch.arange(12)[mb]) for mb in minibatches} == {12 // num_minibatches}
    assert sorted(order.tolist()) == list(range(12))
    assert (order.tolist() == list(range(12))) == (num_minibatches == 1)  # several minibatches are shuffled


def plain_ppo_update(agent, obs, actions, old_logp, advantages, returns, cfg):
    """The update written out plainly: autograd through whole networks, torch's Adam and clip_grad_norm_,
    advantages whitened per minibatch (sample variance, as CleanRL), minibatches from torch.randperm as PPO draws them."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5, foreach=False)
    for _ in range(cfg.update_epochs):
        order = torch.arange(cfg.batch_size) if cfg.num_minibatches == 1 else torch.randperm(cfg.batch_size)
        for mb in order.split(cfg.batch_size // cfg.num_minibatches):
            logp_all = torch.log_softmax(agent.actor(obs[mb]), -1)
            logp = logp_all.gather(1, actions[mb, None]).squeeze(1)
            adv = (advantages[mb] - advantages[mb].mean()) / torch.sqrt(advantages[mb].var() + 1e-8)
            ratio = torch.exp(logp - old_logp[mb])
            policy_loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef) * adv).mean()
            value_loss = 0.5 * ((agent.critic(obs[mb]).squeeze(1) - returns[mb]) ** 2).mean()
            entropy = -(logp_all.exp() * logp_all).sum(1).mean()
            optimizer.zero_grad()
            (policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy).backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()


@pytest.mark.parametrize("num_minibatches", [1, 2])
def test_update_policy_takes_the_steps_of_ppo_written_out_plainly(num_minibatches):
    """Whitening, the clipped surrogate, the value loss, the entropy bonus, the gradient clip (active: max norm
    0.05) and Adam, through the hand-written backward, flat parameters and FlatAdam."""
    cfg = PPOConfig(num_envs=2, num_steps=8, num_minibatches=num_minibatches, update_epochs=3, learning_rate=0.01,
                    ent_coef=0.01, max_grad_norm=0.05, target_kl=None)
    torch.manual_seed(5)
    agent = ActorCritic(4, 3, [8, 8])
    plain = copy.deepcopy(agent)
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, 4, agent.distribution)
    buffer.obs.normal_()
    buffer.actions.random_(0, 3)
    buffer.logprobs.uniform_(-1.6, -0.6)  # ratios away from 1: both branches of the clip are taken
    advantages, returns = torch.randn(16) * 3 + 1, torch.randn(16)
    obs, actions, old_logp, _ = buffer.flat()
    torch.manual_seed(6)
    plain_ppo_update(plain, obs, actions, old_logp, advantages, returns, cfg)
    torch.manual_seed(6)
    update_policy(agent, FlatAdam(flatten_parameters(agent), lr=cfg.learning_rate, eps=1e-5), buffer, advantages, returns,
                  None, cfg, global_step=0)
    for (name, got), want in zip(agent.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_ppo_learns_cartpole(tmp_path):
    cfg = PPOConfig(**{**preset("ppo", "CartPole-v1"), "seed": 1, "target_return": 475,
                       "run_dir": str(tmp_path / "run")})
    summary = run_training("ppo", train, cfg)
    assert summary["eval_return_mean"] >= 475  # solved, not merely better than random (~20)
    assert summary["env_steps"] < cfg.total_timesteps  # stopped early at the target
    assert summary["solved_at_steps"] is None or summary["solved_at_steps"] <= summary["env_steps"]


def test_ppo_with_the_adaptive_kl_penalty_learns_cartpole_and_adapts_beta(tmp_path):
    cfg = PPOConfig(**{**preset("ppo", "CartPole-v1"), "seed": 1, "target_return": 475, "target_kl": None,
                       "kl_penalty": "adaptive", "run_dir": str(tmp_path / "run")})
    summary = run_training("ppo", train, cfg)
    # measured: 8,192; seeds 1-20 solve at a median 10,240 steps, 16 of them within 16,384 (4,096-28,672)
    assert summary["eval_return_mean"] >= 475 and summary["env_steps"] <= 16_384
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    betas = {r["losses/kl_coef"] for r in rows if "losses/kl_coef" in r}
    assert len(betas) > 1 and betas <= {2.0 ** k for k in range(-8, 9)}  # only doubled and halved from 1
    assert all(r["losses/clipfrac"] == 0 for r in rows if "losses/clipfrac" in r)  # the penalty replaces the clip


def test_a_fixed_kl_penalty_keeps_beta(tmp_path):
    cfg = PPOConfig(**{**preset("ppo", "CartPole-v1"), "seed": 1, "total_timesteps": 1_024, "target_kl": None,
                       "kl_penalty": "fixed", "kl_coef": 0.3, "run_dir": str(tmp_path / "run")})
    run_training("ppo", train, cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["losses/kl_coef"] for r in rows if "losses/kl_coef" in r} == {0.3}


def test_ppo_with_normalised_observations_and_value_clipping_learns(tmp_path):
    cfg = PPOConfig(**{**preset("ppo", "CartPole-v1"), "seed": 2, "target_return": 300, "normalize_obs": True,
                       "vf_clip": 10.0, "run_dir": str(tmp_path / "run")})
    summary = run_training("ppo", train, cfg)
    assert summary["eval_return_mean"] >= 300
    assert load_agent(tmp_path / "run" / "policy.safetensors").obs_normalizer.count.item() > 1000


@pytest.mark.parametrize("target_kl, epochs", [(None, 6), (1e-4, 2)])
def test_target_kl_stops_an_update_after_the_epoch_whose_kl_passed_it(tmp_path, target_kl, epochs):
    # An epoch's KL is measured on its minibatch before its step: ~0 in the first epoch (the policy that
    # collected the rollout), far above 1e-4 in the second after one Adam step of 0.05.
    cfg = PPOConfig(env="CartPole-v1", seed=1, num_envs=4, num_steps=16, num_minibatches=1, update_epochs=6,
                    learning_rate=0.05, anneal_lr=False, target_kl=target_kl, total_timesteps=128, eval_every=0,
                    run_dir=str(tmp_path / "run"))
    run_training("ppo", train, cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["losses/epochs"] for r in rows if "losses/epochs" in r] == [epochs, epochs]


def test_cli_writes_the_run_folder_and_evaluate_reloads_it(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts/train_classic.py"), "--algo", "ppo", "--env", "CartPole-v1",
           "--seed", "3", "--total-timesteps", "2048", "--eval-every", "1024", "--run-dir", str(run_dir)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    for name in ["config.json", "metrics.jsonl", "summary.json", "learning_curve.png", "policy.safetensors"]:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"algo", "env", "seed", "env_steps", "wall_s", "eval_return_mean", "eval_return_std",
            "solved_at_steps", "solved_at_s"} <= set(summary)
    assert summary["env_steps"] == 2048 and summary["seed"] == 3
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num_steps"] == 32 and config["total_timesteps"] == 2048  # preset, then the flag
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("losses/approx_kl" in r for r in rows) and any("eval/return_mean" in r for r in rows)
    # as on a headless machine: no display and no XDG_RUNTIME_DIR, where SDL printed "error: XDG_RUNTIME_DIR is invalid ..."
    headless = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "SDL_VIDEODRIVER")}
    video = subprocess.run([sys.executable, str(ROOT / "scripts/evaluate_classic.py"), str(run_dir), "--episodes", "3",
                            "--video"], check=True, capture_output=True, text=True, cwd=ROOT, env=headless)
    assert "greedy return" in video.stdout and (run_dir / "episode.gif").stat().st_size > 1000
    assert "error" not in video.stderr.lower(), video.stderr


def run_cli(script, args, monkeypatch, capsys):
    """(exit code, stderr) of a script run in-process."""
    code, _, err = run_script(script, args, monkeypatch, capsys)
    return code, err


@pytest.mark.parametrize("args, expected", [
    (["--algo", "ppg"], "unknown --algo 'ppg'; accepted: random_search, hill_climbing"),
    (["--env", "CartPole-v9"], "unknown env id 'CartPole-v9': did you mean CartPole-v1"),
    (["--env", "Blackjack-v1"], "ppo needs a flat Box observation space but Blackjack-v1 has Tuple"),
    (["--learning-rate", "-0.1"], "--learning-rate must be > 0"),
    (["--clip-coef", "0"], "--clip-coef must be > 0"),
    (["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "does not split into 4 minibatches"),
    (["--gae-lambda", "1.5"], "--gae-lambda in [0, 1]"),
    (["--num-envs", "many"], "invalid int value: 'many'"),
    (["--kl-penalty", "sometimes"], "unknown --kl-penalty 'sometimes'; accepted: none, fixed, adaptive"),
    (["--eval-mode", "best"], "unknown --eval-mode 'best'; accepted: greedy, sample"),
    (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, monkeypatch, capsys, tmp_path):
    code, err = run_cli("train_classic.py", [*args, "--run-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code == 2
    assert expected in err and err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten_without_flag(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    code, err = run_cli("train_classic.py", ["--run-dir", str(run_dir), "--total-timesteps", "256"], monkeypatch, capsys)
    assert code == 2 and "pass --overwrite" in err
    assert (run_dir / "summary.json").read_text() == "{}"


def test_config_file_sets_fields_and_rejects_unknown_ones(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 0.01, "lerning_rate": 0.1}))
    code, err = run_cli("train_classic.py", ["--config", str(bad), "--run-dir", str(tmp_path / "r")], monkeypatch, capsys)
    assert code == 2 and "unknown fields ['lerning_rate']" in err


def test_a_run_s_config_json_given_back_as_config_runs_the_same_settings(monkeypatch, capsys, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["--algo", "dqn", "--env", "Acrobot-v1", "--learning-rate", "0.002", "--total-timesteps", "600", "--eval-every", "0"]
    assert run_cli("train_classic.py", [*args, "--run-dir", str(first)], monkeypatch, capsys)[0] == 0
    code, err = run_cli("train_classic.py", ["--config", str(first / "config.json"), "--run-dir", str(second)], monkeypatch, capsys)
    assert code == 0, err  # its algo and env come from the file too
    saved = [json.loads((run / "config.json").read_text()) for run in (first, second)]
    assert {k: v for k, v in saved[0].items() if k != "run_dir"} == {k: v for k, v in saved[1].items() if k != "run_dir"}


def test_none_unsets_an_optional_field_that_a_preset_set():
    argv = ["--env", "CartPole-v1", "--vf-clip", "0.5"]
    assert parse_config(PPOConfig, argv, defaults=preset("ppo", "CartPole-v1")).target_kl == 0.03
    cfg = parse_config(PPOConfig, argv + ["--target-kl", "None", "--vf-clip", "none"], defaults=preset("ppo", "CartPole-v1"))
    assert cfg.target_kl is None and cfg.vf_clip is None


@pytest.mark.parametrize("algo, env", sorted(PRESETS))
def test_every_preset_builds_its_algorithms_config(algo, env):
    """A field misspelt in a preset would fail only when a user ran that (algo, env); here it fails at once."""
    config_cls, _ = ALGOS[algo]
    cfg = config_cls(**preset(algo, env), env=env)
    assert all(getattr(cfg, field) == value for field, value in PRESETS[(algo, env)].items())


def test_evaluate_rejects_a_folder_without_a_run(monkeypatch, capsys, tmp_path):
    code, err = run_cli("evaluate_classic.py", [str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "has no config.json" in err


def test_same_seed_twice_gives_identical_metrics(tmp_path):
    def learning_rows(name):
        cfg = PPOConfig(**{**preset("ppo", "CartPole-v1"), "seed": 4, "total_timesteps": 4096, "eval_every": 2048,
                           "normalize_obs": True, "run_dir": str(tmp_path / name)})
        run_training("ppo", train, cfg)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "charts/SPS"} for r in rows]

    assert learning_rows("a") == learning_rows("b")


def test_bench_classic_plots_every_algorithm(tmp_path, monkeypatch, capsys):
    """`--algos all --plot`: one colour per algorithm, however many there are (a 10-colour map once ran out at 11)."""
    from classic_rl.algos import ALGOS

    def result(algo, impl, hparams):
        run = {"seed": 1, "evaluations": [{"env_steps": 1000, "wall_s": 0.5, "mean": 20.0}, {"env_steps": 2000, "wall_s": 1.0, "mean": 480.0}]}
        return {"env": "CartPole-v1", "algo": algo, "impl": impl, "hparams": hparams, "runs": [run]}

    results = [result(algo, "ours", "preset") for algo in ALGOS] + [result("ppo", "sb3", "zoo"), result("dqn", "sb3", "zoo")]
    (tmp_path / "all.json").write_text(json.dumps({"results": results}))
    code, _, err = run_script("bench_classic.py", ["--replot", str(tmp_path / "all.json"), "--plot", str(tmp_path / "all.png")],
                              monkeypatch, capsys)
    assert code == 0, err
    assert len(ALGOS) > 10 and (tmp_path / "all.png").stat().st_size > 10_000


def test_bench_classic_merges_one_seed_per_file(tmp_path, monkeypatch, capsys):
    """`--merge`: seeds run one invocation each become one table, in seed order; a seed twice or another machine is refused."""
    def results_file(name, seed, machine="EPYC", solved_at=None):
        run = {"seed": seed, "solved": solved_at is not None, "steps_to_solve": solved_at, "s_to_solve": solved_at and solved_at / 1000,
               "final_eval": 210.0, "env_steps": 50_000, "wall_s": 50.0, "steps_per_s": 1000.0,
               "evaluations": [{"env_steps": 50_000, "wall_s": 50.0, "mean": 210.0}]}
        saved = {"threads": 1, "eval_episodes": 10, "machine": machine,
                 "results": [{"env": "LunarLander-v3", "algo": "ppo", "impl": "ours", "hparams": "preset", "runs": [run]}]}
        (tmp_path / name).write_text(json.dumps(saved))
        return str(tmp_path / name)

    seed3, seed1 = results_file("s3.json", 3, solved_at=30_000), results_file("s1.json", 1)
    out = ["--json", str(tmp_path / "all.json"), "--md", str(tmp_path / "all.md")]
    code, _, err = run_script("bench_classic.py", ["--merge", seed3, seed1, *out], monkeypatch, capsys)
    assert code == 0, err
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["machine"] == "EPYC" and [r["seed"] for r in merged["results"][0]["runs"]] == [1, 3]
    assert "| LunarLander-v3 | ppo | ours | our preset | 1/2 | 30,000 (30,000-30,000) | 30.0 (30.0-30.0) |" in (tmp_path / "all.md").read_text()
    for bad, message in ((results_file("again.json", 3), "repeats seed 3 of LunarLander-v3 ppo ours preset"),
                         (results_file("xeon.json", 2, machine="Xeon"), "merge runs of one setting and machine only")):
        code, _, err = run_script("bench_classic.py", ["--merge", seed1, seed3, bad, *out], monkeypatch, capsys)
        assert code == 2 and message in err


@pytest.mark.slow
def test_bench_classic_gives_sb3_our_preset_in_its_own_terms():
    """The identical-hyperparameters comparison: SB3's PPO built from our CartPole preset has our rollout, batch,
    epochs, learning rate, loss settings, KL stop (SB3 stops at 1.5 x its target_kl) and network."""
    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "bench_classic.py"))
    ours = PPOConfig(**preset("ppo", "CartPole-v1"))
    model, _ = bench["sb3_model"]("ppo", "CartPole-v1", bench["sb3_settings"]("ppo", "CartPole-v1", "ours", ours), seed=0)
    assert (model.n_envs, model.n_steps, model.batch_size, model.n_epochs) == (8, 32, 256, ours.update_epochs)
    assert 1.5 * model.target_kl == pytest.approx(ours.target_kl) and model.clip_range(1.0) == ours.clip_coef
    assert (model.gamma, model.gae_lambda, model.ent_coef, model.vf_coef, model.max_grad_norm) == \
        (ours.gamma, ours.gae_lambda, ours.ent_coef, ours.vf_coef, ours.max_grad_norm)
    ours_net = ActorCritic(4, 2, ours.hidden_sizes)
    assert sum(p.numel() for p in model.policy.parameters()) == sum(p.numel() for p in ours_net.parameters())
    assert model.policy.optimizer.defaults["eps"] == 1e-5  # Adam's eps, as ours (CleanRL's)


def test_reward_scaling_changes_what_the_critic_learns_not_the_returns_logged(tmp_path):
    """Pendulum, 2 updates of 4 x 256 steps: the first rollout acts with the same initial policy either way, so its 4
    episodes (200 steps each) are logged with the same raw returns; the critic's targets are scaled (the reward divided
    by the discounted return's std, ~ -8 per step against ~ -1), so its first value loss is far smaller, and the policies
    part after the first update."""
    def run(name, **extra):
        cfg = PPOConfig(env="Pendulum-v1", seed=4, total_timesteps=2_048, num_envs=4, num_steps=256, eval_every=2_048,
                        eval_episodes=2, run_dir=str(tmp_path / name), **extra)
        run_training("ppo", train, cfg)
        episodes = [json.loads(line) for line in (tmp_path / name / "episodes.jsonl").read_text().splitlines()]
        updates = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                   if "losses/value_loss" in line]
        return episodes, updates

    (raw_episodes, raw_updates), (scaled_episodes, scaled_updates) = run("raw"), run("scaled", normalize_reward=True)
    assert scaled_episodes[:4] == raw_episodes[:4] and all(e["return"] < -100 for e in raw_episodes[:4])
    assert scaled_episodes[4:] != raw_episodes[4:]
    assert scaled_updates[0]["losses/value_loss"] < raw_updates[0]["losses/value_loss"] / 10
