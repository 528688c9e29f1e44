"""classic_rl.infra: the dataclass CLI (flag forms, precedence, one-line errors) and Checkpoints (the one
schedule, atomic publication, keep-N, and restore: objects, plain values, logger rows, RNG last)."""

import ast
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from classic_rl.infra.checkpoints import Checkpoints, StopRequest
from classic_rl.infra.cli import config_field, parse_config, run_in_own_process
from classic_rl.infra.errors import ConfigError, TrainingInterrupted
from classic_rl.infra.metrics import RunLogger
from tests.conftest import ROOT


@dataclass
class Example:
    learning_rate: float = config_field(0.1, "Step size")
    hidden_sizes: list[int] = config_field([8, 8], "Layer widths")
    target_kl: float | None = config_field(None, "Stop early above this KL")
    anneal_lr: bool = config_field(True, "Decay the learning rate")
    overwrite: bool = config_field(False, "Replace an existing run")
    run_dir: str = config_field("runs/x", "Output folder")


@pytest.mark.parametrize("argv, expected", [
    ([], dict(learning_rate=0.1, hidden_sizes=[8, 8], target_kl=None, anneal_lr=True, overwrite=False)),
    (["--learning-rate", "0.5", "--hidden_sizes", "4", "2", "3"], dict(learning_rate=0.5, hidden_sizes=[4, 2, 3])),
    (["--overwrite"], dict(overwrite=True)),
    (["--overwrite", "true", "--anneal-lr", "false"], dict(overwrite=True, anneal_lr=False)),
    (["--no-anneal-lr"], dict(anneal_lr=False)),
    (["--no_anneal_lr"], dict(anneal_lr=False)),
    (["--target-kl", "0.02"], dict(target_kl=0.02)),
    (["--target-kl", "0.02", "--target_kl", "none"], dict(target_kl=None)),
])
def test_every_field_is_a_flag_in_kebab_and_snake_case(argv, expected):
    cfg = parse_config(Example, argv)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_flags_override_the_config_file_which_overrides_defaults_which_override_the_dataclass(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.3\nrun_dir: from-file\n")
    cfg = parse_config(Example, ["--config", str(path), "--run-dir", "from-flag"],
                       defaults={"learning_rate": 0.2, "target_kl": 0.01, "run_dir": "from-defaults"})
    assert (cfg.learning_rate, cfg.target_kl, cfg.run_dir, cfg.hidden_sizes) == (0.3, 0.01, "from-flag", [8, 8])


@pytest.mark.parametrize("text, message", [
    ("learning_rate: [1, 2]", "learning_rate is [1, 2]; accepted: float"),
    ("learning_rate: true", "learning_rate is True; accepted: float"),  # a bool is an int to Python, never a number here
    ("hidden_sizes: 8", "hidden_sizes is 8; accepted: a list of int"),
    ("hidden_sizes: [8, 2.5]", "hidden_sizes is [8, 2.5]; accepted: a list of int"),
    ("target_kl: [0.1]", "target_kl is [0.1]; accepted: float or null"),
    ("anneal_lr: 1", "anneal_lr is 1; accepted: bool"),
])
def test_config_file_values_of_the_wrong_type_are_one_config_error(text, message, tmp_path):
    path = tmp_path / "c.yaml"  # strings go through argparse's own conversion (a test above); these would not
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        parse_config(Example, ["--config", str(path)])
    assert str(err.value) == f"--config {path}: {message}"


def test_config_file_values_of_the_field_s_type_are_taken(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1\nhidden_sizes: [4, 2]\ntarget_kl: null\nanneal_lr: false\n")
    cfg = parse_config(Example, ["--config", str(path)], defaults={"target_kl": 0.02})
    assert (cfg.learning_rate, cfg.hidden_sizes, cfg.target_kl, cfg.anneal_lr) == (1, [4, 2], None, False)


@pytest.mark.parametrize("argv, message", [
    (["--learning-rate", "fast"], "argument --learning-rate/--learning_rate: invalid float value: 'fast' (see --help)"),
    (["--overwrite", "maybe"], "expected true or false, got 'maybe'"),
    (["--learn", "0.5"], "unrecognized arguments: --learn 0.5"),  # no prefix matching: a typo is an error
    (["--learning-rat", "0.5"], "unrecognized arguments: --learning-rat 0.5; did you mean --learning-rate? (see --help)"),
    (["--target_kl=0.1", "--hiden-sizes", "4"], "unrecognized arguments: --hiden-sizes 4; did you mean --hidden-sizes? (see --help)"),
])
def test_bad_flags_are_one_config_error(argv, message):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(Example, argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_help_lists_each_field_with_its_help_and_default():
    out = subprocess.run([sys.executable, "scripts/train_classic.py", "--algo", "ppo", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "--clip-coef CLIP_COEF, --clip_coef CLIP_COEF" in out
    assert "Policy ratio clip epsilon (default: 0.2)" in out and "--no-anneal-lr" in out
    assert "(default: [64, 64])" in out  # the preset's value, not the dataclass's


def test_classic_rl_does_not_import_transformers():
    code = "import sys, classic_rl.training, classic_rl.algos; print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout == "False\n"


def module_imports() -> dict[str, set[str]]:
    """Each module of the two packages and the package modules it imports (from its AST)."""
    graph = {}
    for path in [*ROOT.glob("classic_rl/**/*.py"), *ROOT.glob("rlhf_toy/**/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # every import, inside functions too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("classic_rl", "rlhf_toy"):
                graph[name] |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)} - {name}
    return graph


def test_no_import_cycles_and_classic_rl_never_imports_rlhf_toy():
    graph = module_imports()
    assert not [(m, d) for m, deps in graph.items() if m.startswith("classic_rl") for d in deps if d.startswith("rlhf_toy")]
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in graph.get(module, ()):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, dep])}"
            if dep in graph and dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])


class Counter:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_checkpoints_are_due_each_time_a_multiple_is_passed_and_after_ctrl_c(tmp_path):
    checkpoints = Checkpoints(tmp_path, every=100)
    due = [step for step in (64, 128, 192, 256, 320, 384) if checkpoints.due(step)]  # env steps jump by 64
    assert due == [128, 256, 320]
    assert not checkpoints.due(399)
    checkpoints.stop.requested = True
    assert checkpoints.due(399)
    assert not Checkpoints(tmp_path, every=0).due(10**6)


def test_save_keeps_the_newest_and_resume_restores_objects_values_and_rng_last(tmp_path):
    checkpoints = Checkpoints(tmp_path, every=1, keep=2)
    counter = Counter()
    checkpoints.track(counter=counter)
    for step in (1, 2, 3):
        counter.value = step * 10
        torch.manual_seed(step)
        random.seed(step)
        np.random.seed(step)
        checkpoints.save(step, lambda folder: (folder / "weights.txt").write_text("w"), note=f"at {step}",
                         tensor=torch.arange(3) * step)
    assert [p.name for p in checkpoints.complete()] == ["step-2", "step-3"]
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary folder is left behind
    expected_draws = (torch.rand(2), random.random(), np.random.rand())

    resumed = Checkpoints(tmp_path, every=1, resume=True)
    fresh = Counter()
    resumed.track(counter=fresh)
    torch.manual_seed(999)
    saved = resumed.restore()
    assert resumed.step == 3 and resumed.folder.name == "step-3" and (resumed.folder / "weights.txt").is_file()
    assert fresh.value == 30 and saved["note"] == "at 3" and saved["tensor"].tolist() == [0, 3, 6]
    torch.testing.assert_close(torch.rand(2), expected_draws[0])
    assert (random.random(), np.random.rand()) == expected_draws[1:]
    assert not resumed.due(3) and resumed.due(4)


def test_a_fresh_run_restores_nothing_and_resume_without_a_checkpoint_is_refused(tmp_path):
    fresh = Checkpoints(tmp_path)
    fresh.track(counter=Counter())
    assert fresh.restore() is None
    with pytest.raises(ConfigError, match="--resume found no checkpoint in .*; start the run with --save-every N"):
        Checkpoints(tmp_path, resume=True)


def test_save_if_due_stops_the_run_after_saving_when_ctrl_c_asked(tmp_path):
    checkpoints = Checkpoints(tmp_path, every=0)
    checkpoints.save_if_due(5)
    assert checkpoints.latest() is None
    checkpoints.stop.requested = True
    with pytest.raises(TrainingInterrupted, match="stopped at step 7; saved .*step-7; continue with --resume"):
        checkpoints.save_if_due(7)
    assert checkpoints.latest().name == "step-7"


def test_the_logger_as_checkpointed_drops_later_rows_and_continues_its_clock(tmp_path):
    logger = RunLogger(tmp_path)
    logger.log(1, {"loss": 1.0})
    logger.log_episodes(1, [{"return": 10.0, "length": 10}])
    state = logger.state_dict()
    logger.log(2, {"loss": 2.0})  # logged by the run that then crashed
    logger.log_episodes(2, [{"return": 20.0, "length": 20}, {"return": 30.0, "length": 5}])
    logger.close()
    resumed = RunLogger(tmp_path)
    resumed.load_state_dict({**state, "elapsed": 100.0})
    resumed.log(2, {"loss": 0.5})
    resumed.log_episodes(2, [{"return": 40.0, "length": 5}])
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}] and resumed.rows == rows
    saved = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert saved == resumed.episodes == [{"episode": 1, "step": 1, "return": 10.0, "length": 10.0},
                                         {"episode": 2, "step": 2, "return": 40.0, "length": 5.0}]
    assert resumed.recent_return(1) == 40.0 and resumed.recent_return() == 25.0
    assert 100.0 <= resumed.elapsed() < 110.0


def test_the_smoothed_training_curve_averages_each_episode_with_the_ones_before_it():
    from classic_rl.training import moving_average

    assert moving_average([1.0, 2.0, 6.0, 7.0], 2).tolist() == [1.0, 1.5, 4.0, 6.5]
    assert moving_average([1.0, 2.0, 6.0], 5).tolist() == [1.0, 1.5, 3.0] and len(moving_average([], 3)) == 0


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_script_whose_reader_stops_reading_exits_quietly(tmp_path, unbuffered):
    """`script RUN | head -1`: the closed pipe ends the script with status 1 and no traceback, whether stdout is
    unbuffered (the write fails inside main) or buffered (the flush fails at the end)."""
    row = {"prompt": "Compute 47 + 38.", "completion": " <answer> 85 </answer>", "reward": 1.0}
    (tmp_path / "eval_samples.json").write_text(json.dumps({"before": [row], "after": [row]}))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the script writes
    done = subprocess.run([sys.executable, str(ROOT / "scripts/arithmetic_breakdown.py"), str(tmp_path)], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")


def test_a_process_forked_under_the_ctrl_c_handler_leaves_ctrl_c_to_its_parent(capfd):
    """Async env workers are forked while the handler is installed and get the terminal's Ctrl-C too: each printed the
    "saving a checkpoint" message (17 times for 16 envs). The parent alone handles it and stops them."""
    with StopRequest() as stop:
        child = os.fork()
        if child == 0:
            os.kill(os.getpid(), signal.SIGINT)
            os._exit(1 if stop.requested else 0)
        _, status = os.waitpid(child, 0)
        assert not stop.requested
    assert os.waitstatus_to_exitcode(status) == 0 and "Ctrl-C" not in capfd.readouterr().err


PROBE_SCRIPT = """import json, os, sys
print("to stdout")
print("to stderr", file=sys.stderr)
json.dump({"cwd": os.getcwd(), "probe": os.environ.get("PROBE"), "argv": sys.argv[1:], "name": __name__}, open("probe.json", "w"))
sys.exit(int(sys.argv[1]))
"""


def test_a_script_run_in_its_own_process_sees_the_callers_folder_environment_and_flags_at_the_call(tmp_path, monkeypatch, capfd):
    """The comparison scripts' runs are forked from a server started at the first run: each run still gets the folder and
    environment its caller has when it asks (a relative --run-dir, a test's RLHF_TOY_HOME), and prints nothing."""
    script, first, second = tmp_path / "probe.py", tmp_path / "first", tmp_path / "second"
    script.write_text(PROBE_SCRIPT)
    first.mkdir(), second.mkdir()
    monkeypatch.chdir(first)
    run_in_own_process(script, ["0", "a"])  # starts the server (unless an earlier test did)
    monkeypatch.chdir(second)
    monkeypatch.setenv("PROBE", "set after the server started")
    run_in_own_process(script, ["0", "b"])
    seen = [json.loads((folder / "probe.json").read_text()) for folder in (first, second)]
    assert [s["cwd"] for s in seen] == [str(first), str(second)] and seen[1]["probe"] == "set after the server started"
    assert [s["argv"] for s in seen] == [["0", "a"], ["0", "b"]] and seen[0]["name"] == "__main__"
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize("code", ["2", "nan"])
def test_a_script_that_fails_in_its_own_process_raises_with_its_exit_code_and_stderr(code, tmp_path, monkeypatch):
    """sys.exit(2) (a ConfigError through cli) and an exception (int("nan"): exit 1 and its traceback) both reach the
    caller as one RuntimeError naming the command, the exit code and the end of the script's stderr."""
    (tmp_path / "probe.py").write_text(PROBE_SCRIPT)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match=f"probe.py {code} failed \\(exit {1 if code == 'nan' else 2}\\)") as raised:
        run_in_own_process(tmp_path / "probe.py", [code])
    assert "to stderr" in str(raised.value) and ("ValueError" in str(raised.value)) == (code == "nan")
