"""A3C: the shared RMSprop statistics really are shared across processes, asynchronous workers learn
CartPole, and a run stopped by Ctrl-C keeps its checkpoint and resumes from it."""

import json
import signal

import torch

from classic_rl.algos.a2c import rmsprop
from classic_rl.algos.a3c import CONTEXT, A3CConfig, SharedRMSprop, train
from classic_rl.nets import ActorCritic
from classic_rl.training import run_training
from tests.conftest import kill_after_first_checkpoint, run_script


def step_from_a_child(model, statistics, done):
    optimizer = statistics.optimizer(model, 0.01)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    done.set()


def test_a_step_in_another_process_moves_the_shared_weights_and_statistics_like_rmsprop():
    torch.manual_seed(0)
    model = ActorCritic(obs_dim=3, n_actions=2, hidden_sizes=[4]).share_memory()
    reference = ActorCritic(obs_dim=3, n_actions=2, hidden_sizes=[4])
    reference.load_state_dict(model.state_dict())
    statistics = SharedRMSprop(model)
    done = CONTEXT.Event()
    child = CONTEXT.Process(target=step_from_a_child, args=(model, statistics, done))
    child.start()
    child.join(timeout=60)
    assert done.is_set() and child.exitcode == 0
    plain = rmsprop(reference.parameters(), 0.01)  # the same step in this process, unshared
    for p in reference.parameters():
        p.grad = torch.ones_like(p)
    plain.step()
    for shared_p, plain_p in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(shared_p.detach(), plain_p.detach())
    assert all(state["step"].item() == 1 for state in statistics.state)
    torch.testing.assert_close(statistics.state[0]["square_avg"], plain.state[reference.actor[0].weight]["square_avg"])


def test_checkpointed_statistics_load_into_the_shared_tensors():
    model = ActorCritic(obs_dim=3, n_actions=2, hidden_sizes=[4]).share_memory()
    statistics = SharedRMSprop(model)
    shared_tensor = statistics.state[0]["square_avg"]
    saved = [{k: v + 2.0 for k, v in state.items()} for state in statistics.state]
    statistics.load_state_dict(saved)
    assert statistics.state[0]["square_avg"] is shared_tensor and shared_tensor.is_shared()
    assert torch.all(shared_tensor == 2.0) and statistics.state[0]["step"].item() == 2.0


def test_two_asynchronous_workers_learn_cartpole(tmp_path):
    cfg = A3CConfig(env="CartPole-v1", seed=1, num_workers=2, num_envs=4, total_timesteps=80_000, eval_every=10_000,
                    run_dir=str(tmp_path / "run"))
    summary = run_training("a3c", train, cfg)
    best = max(e["mean"] for e in summary["evaluations"])
    # random play: ~20. Asynchronous runs differ every time: in 6 runs the best evaluation was 396-500
    assert best >= 200, summary["evaluations"]
    assert summary["env_steps"] >= 80_000


def test_ctrl_c_saves_a_checkpoint_that_a_resumed_run_continues_from(tmp_path, monkeypatch, capsys):
    args = ["--algo", "a3c", "--env", "CartPole-v1", "--total-timesteps", "20000", "--eval-every", "10000",
            "--save-every", "3000", "--run-dir", str(tmp_path / "run")]
    assert kill_after_first_checkpoint("train_classic.py", args, tmp_path / "run", signal.SIGINT) == 130
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))[-1]
    saved_step = int(saved.name[5:])
    code, out, _ = run_script("train_classic.py", [*args, "--resume"], monkeypatch, capsys)
    assert code == 0 and f"from step-{saved_step}" in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] <= saved_step and rows[-1]["step"] >= 20_000
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["env_steps"] >= 20_000
