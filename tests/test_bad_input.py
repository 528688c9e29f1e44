"""Every script answers bad input with one line on stderr, `error: ...`, saying what was wrong and
what is accepted, exit status 2, no traceback, and leaves existing run folders as they were."""

import json
import shutil

import pytest

from tests.conftest import run_script

SCRIPTS = ["train_classic.py", "evaluate_classic.py", "bench_classic.py", "compare_critics.py", "run_tutorials.py", "make_data.py",
           "pretrain.py", "sample.py", "train_reward_model.py", "train_rlhf.py", "bench_rlhf.py", "compare_algorithms.py",
           "arithmetic_breakdown.py", "label.py", "rlhf_loop.py", "train_dpo.py", "compare_preferences.py", "compare_ppo_recipes.py",
           "bench_demo.py", "bench_precision.py"]
WITH_RUN_FOLDER_ARGUMENT = ("evaluate_classic.py", "arithmetic_breakdown.py")  # their first argument is an existing run


@pytest.fixture
def files(tmp_path, nano):
    """Paths for the cases: a file that is not JSON, a JSONL row without the needed field, a run
    folder that holds a file, a model folder with corrupt weights, and the nano model."""
    (tmp_path / "not_json.jsonl").write_text("this is not JSON\n")
    (tmp_path / "no_prompt.jsonl").write_text('{"text": "no prompt field"}\n')
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("earlier results")
    corrupt = tmp_path / "corrupt_model"
    shutil.copytree(nano[0] / "run" / "model", corrupt)
    (corrupt / "model.safetensors").write_text("not weights")
    (tmp_path / "classic_run").mkdir()
    (tmp_path / "classic_run" / "config.json").write_text('{"env": "CartPole-v1"}')
    (tmp_path / "classic_run" / "policy.safetensors").write_text("not weights")
    (tmp_path / "story_run").mkdir()  # a train_rlhf.py run of the default task
    (tmp_path / "story_run" / "config.json").write_text('{"algo": "grpo", "task": null}')
    row = {"prompt": "Describe a kind badger.", "completion": " A badger.", "reward": 0.5}
    (tmp_path / "story_run" / "eval_samples.json").write_text(json.dumps({"before": [row], "after": [row]}))
    (tmp_path / "dqn_run").mkdir()
    (tmp_path / "dqn_run" / "config.json").write_text('{"algo": "dqn", "env": "CartPole-v1"}')
    (tmp_path / "maze_run").mkdir()  # a tabular run on an env that renders text only
    (tmp_path / "maze_run" / "config.json").write_text('{"env": "Maze-v0"}')
    (tmp_path / "cut_run").mkdir()
    (tmp_path / "cut_run" / "eval_samples.json").write_text('{"before": []}')
    return {"dir": tmp_path, "nano": str(nano[0] / "run" / "model")}


CASES = {
    "unknown flag": [(s, ["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag") for s in SCRIPTS
                     if s not in WITH_RUN_FOLDER_ARGUMENT] + [(s, ["{dir}/classic_run", "--no-such-flag"],
                                                               "unrecognized arguments: --no-such-flag") for s in WITH_RUN_FOLDER_ARGUMENT],
    "wrong type": [
        ("train_classic.py", ["--learning-rate", "fast"], "invalid float value: 'fast'"),
        ("evaluate_classic.py", ["{dir}/classic_run", "--episodes", "ten"], "invalid int value: 'ten'"),
        ("bench_classic.py", ["--seeds", "three"], "invalid int value: 'three'"),
        ("compare_critics.py", ["--lambdas", "one"], "invalid float value: 'one'"),
        ("run_tutorials.py", ["--seeds", "first"], "invalid int value: 'first'"),
        ("compare_algorithms.py", ["--seeds", "first"], "invalid int value: 'first'"),
        ("make_data.py", ["--seed", "x"], "invalid int value: 'x'"),
        ("pretrain.py", ["--max-steps", "1.5"], "invalid int value: '1.5'"),
        ("sample.py", ["--n", "all"], "invalid int value: 'all'"),
        ("train_reward_model.py", ["--label-noise", "some"], "invalid float value: 'some'"),
        ("train_rlhf.py", ["--steps", "many"], "invalid int value: 'many'"),
        ("bench_rlhf.py", ["--learning-rate", "high"], "invalid float value: 'high'"),
        ("label.py", ["--n", "many"], "invalid int value: 'many'"),
        ("rlhf_loop.py", ["--steps", "many"], "invalid int value: 'many'"),
        ("train_dpo.py", ["--beta", "high"], "invalid float value: 'high'"),
        ("compare_preferences.py", ["--budget-s", "long"], "invalid float value: 'long'"),
        ("compare_preferences.py", ["--methods", "kto"], "invalid choice: 'kto' (choose from 'rm+grpo', 'rm+ppo', 'dpo', 'ipo')"),
        ("compare_ppo_recipes.py", ["--ptx-coef", "some"], "invalid float value: 'some'"),
    ],
    "unsupported combination": [
        ("train_classic.py", ["--algo", "dqn", "--eval-mode", "sample"], "--eval-mode sample draws actions from a policy's "
                                                                          "probabilities, and value-based agents (dqn, q_learning"),
        ("evaluate_classic.py", ["{dir}/dqn_run", "--eval-mode", "sample"], "value-based agents (dqn, q_learning, sarsa, value and "
                                                                            "policy iteration) and deterministic actors (td3, ddpg) "
                                                                            "have none; accepted: greedy"),
        ("evaluate_classic.py", ["{dir}/maze_run", "--video"], "--video needs an env that renders frames (rgb_array); Maze-v0 renders ['ansi']"),
    ],
    "unknown name": [
        ("train_classic.py", ["--algo", "ppg"], "unknown --algo 'ppg'; accepted: random_search"),
        ("train_classic.py", ["--env", "CartPol-v1"], "unknown env id 'CartPol-v1': did you mean CartPole-v1"),
        ("compare_critics.py", ["--algo", "ppo"], "argument --algo: invalid choice: 'ppo' (choose from 'vpg', 'a2c')"),
        ("train_classic.py", ["--preset", "tutorial-9"], "unknown --preset 'tutorial-9'; accepted: tutorial-000,"),
        ("run_tutorials.py", ["--presets", "tutorial-9"], "unknown --preset 'tutorial-9'; accepted: tutorial-000,"),
        ("bench_classic.py", ["--algos", "ppg"], "unknown --algos ['ppg']; accepted: all, random_search"),
        ("bench_classic.py", ["--same-hparams", "--algos", "a2c"], "--same-hparams runs SB3 on our settings, which it has for ppo, "
                                                                    "sac, td3, ddpg; got --algos a2c"),
        ("bench_classic.py", ["--same-hparams", "--override", "target_kl"], "--override takes FIELD=VALUE pairs (e.g. "
                                                                             "target_kl=none), got 'target_kl'"),
        ("bench_classic.py", ["--same-hparams", "--override", "kl_target=0.1"], "--override kl_target: not a setting of ppo"),
        ("bench_classic.py", ["--override", "target_kl=none"], "--override changes the preset both sides run under --same-hparams"),
        ("bench_classic.py", ["--impls", "trl"], "invalid choice: 'trl' (choose from 'ours', 'sb3')"),
        ("pretrain.py", ["--preset", "huge"], "unknown --preset 'huge'; accepted: nano, tiny, small"),
        ("pretrain.py", ["--arch", "mamba"], "unknown --arch 'mamba'; accepted: gpt2, llama"),
        ("sample.py", ["--model", "{nano}", "--reward", "politeness"], "unknown reward 'politeness'; accepted: length, format"),
        ("train_rlhf.py", ["--algo", "dpo"], "unknown --algo 'dpo'; accepted: grpo, ppo, rloo, reinforce_pp"),
        ("train_rlhf.py", ["--reward", "length,politeness"], "unknown reward 'politeness'"),
        ("train_rlhf.py", ["--task", "poetry"], "unknown --task 'poetry'; accepted: arithmetic"),
        ("compare_algorithms.py", ["--methods", "dpo"], "invalid choice: 'dpo' (choose from 'dapo', 'grpo'"),
        ("bench_rlhf.py", ["--impls", "ours", "openrlhf"], "unknown --impls ['openrlhf']; accepted: ours, trl, ppo"),
        ("bench_rlhf.py", ["--precisions", "fp32", "fp16"], "unknown --precisions ['fp16']; accepted: fp32, bf16"),
        ("train_rlhf.py", ["--precision", "half"], "unknown --precision 'half'; accepted: auto, fp32, bf16"),
        ("pretrain.py", ["--precision", "fp16"], "unknown --precision 'fp16'; accepted: auto, fp32, bf16"),
        ("train_reward_model.py", ["--precision", "fp8"], "unknown --precision 'fp8'; accepted: auto, fp32, bf16"),
    ],
    "invalid value": [
        ("train_classic.py", ["--gamma", "1.5"], "--gamma"),
        ("evaluate_classic.py", ["{dir}/classic_run", "--episodes", "0"], "--episodes must be > 0, got 0"),
        ("bench_classic.py", ["--seeds", "0"], "--seeds must be > 0, got 0"),
        ("compare_critics.py", ["--lambdas", "1.5"], "--gae-lambda in [0, 1], got 0.99 and 1.5"),
        ("pretrain.py", ["--batch-size", "0"], "--batch-size must be > 0, got 0"),
        ("sample.py", ["--model", "{nano}", "--temperature", "-1"], "--temperature >= 0"),
        ("train_reward_model.py", ["--label-noise", "0.7"], "--label-noise must be in [0, 0.5)"),
        ("train_rlhf.py", ["--num-generations", "1"], "--num-generations must be >= 2"),
        ("train_rlhf.py", ["--num-minibatches", "5"], "with 5 minibatch(es) does not split evenly"),
        ("bench_rlhf.py", ["--steps", "0"], "--steps must be > 0, got 0"),
        ("bench_demo.py", ["--repeats", "0"], "--repeats must be > 0, got 0"),
        ("bench_precision.py", ["--threads", "0"], "--threads must be > 0, got 0"),
        ("bench_precision.py", ["--model", "{dir}/none"], "model folder {dir}/none not found"),
        ("compare_algorithms.py", ["--budget-s", "0"], "--budget-s must be > 0, got 0.0"),
        ("compare_algorithms.py", ["--steps", "task", "--budget-s", "5"], "--steps trains for steps, --budget-s for seconds"),
        ("compare_algorithms.py", ["--steps", "many"], "--steps takes a number > 0 or 'task', got 'many'"),
        ("compare_preferences.py", ["--beta", "0"], "--beta must be > 0, got 0.0"),
        ("train_rlhf.py", ["--pass-at-k", "8"], "--pass-at-k 8 needs --eval-samples-per-prompt >= 8, got 2"),
        ("train_rlhf.py", ["--pass-at-k", "2"], "--pass-at-k counts answers the correct reward accepts; add correct to --reward"),
        ("train_rlhf.py", ["--sync-ref-model", "--ref-model-mixup-alpha", "1.5"], "--ref-model-mixup-alpha must be in (0, 1], got 1.5"),
        ("train_rlhf.py", ["--sync-ref-model", "--beta", "0"], "--sync-ref-model moves the reference model, which this run does not load"),
        ("train_rlhf.py", ["--sync-ref-model", "--use-peft"], "under --use-peft the reference is the policy with its adapters disabled"),
        ("train_dpo.py", ["--sync-ref-model", "--ref-model-sync-steps", "0"], "--ref-model-sync-steps must be >= 1, got 0"),
    ],
    "missing file": [
        ("train_classic.py", ["--config", "{dir}/none.yaml"], "cannot read --config {dir}/none.yaml"),
        ("evaluate_classic.py", ["{dir}/none"], "{dir}/none has no config.json"),
        ("arithmetic_breakdown.py", ["{dir}/none"], "{dir}/none/eval_samples.json not found"),
        ("bench_classic.py", ["--replot", "{dir}/none.json", "--plot", "{dir}/p.png"], "--replot needs an existing results JSON"),
        ("bench_classic.py", ["--merge", "{dir}/none.json"], "--merge {dir}/none.json: no such file"),
        ("pretrain.py", ["--data-dir", "{dir}"], "data file {dir}/pretrain.jsonl not found"),
        ("sample.py", ["--model", "{dir}/none"], "model folder {dir}/none not found (no config.json)"),
        ("train_reward_model.py", ["--data-dir", "{dir}"], "labels file {dir}/preferences_train.jsonl not found"),
        ("train_dpo.py", ["--preferences", "{dir}/none.jsonl"], "labels file {dir}/none.jsonl not found"),
        ("train_rlhf.py", ["--model", "{dir}/none"], "model folder {dir}/none not found"),
        ("train_rlhf.py", ["--reward", "rm:{dir}/none"], "reward model folder {dir}/none not found"),
        ("bench_rlhf.py", ["--model", "{dir}/none"], "model folder {dir}/none not found"),
    ],
    "malformed file": [
        ("train_classic.py", ["--config", "{dir}/not_json.jsonl"], "is not valid JSON"),
        ("evaluate_classic.py", ["{dir}/classic_run"], "policy.safetensors is not a readable .safetensors file"),
        ("bench_classic.py", ["--replot", "{dir}/not_json.jsonl", "--plot", "{dir}/p.png"], "is not a results JSON written by this script"),
        ("bench_classic.py", ["--merge", "{dir}/not_json.jsonl"], "--merge {dir}/not_json.jsonl is not a results JSON written by this script"),
        ("sample.py", ["--model", "{dir}/corrupt_model"], "cannot load model '{dir}/corrupt_model'"),
        ("sample.py", ["--model", "{nano}", "--prompts", "{dir}/no_prompt.jsonl"], "line 1 lacks a non-empty string field 'prompt'"),
        ("train_rlhf.py", ["--prompts", "{dir}/not_json.jsonl"], "line 1 is not valid JSON"),
        ("arithmetic_breakdown.py", ["{dir}/cut_run"], "{dir}/cut_run/eval_samples.json is not an eval_samples.json written by train_rlhf.py"),
    ],
    "another script's output": [
        ("arithmetic_breakdown.py", ["{dir}/story_run"], "'Describe a kind badger.' is not an arithmetic prompt"),
        ("evaluate_classic.py", ["{dir}/story_run"], "is not a config written by scripts/train_classic.py"),
        ("train_rlhf.py", ["--reward", "rm:{nano}"], "{nano} is not a reward model: it has 2 outputs, a reward model 1"),
    ],
    "taken run folder": [(s, ["--run-dir", "{dir}/taken"], "run dir {dir}/taken already holds files; pass --overwrite")
                         for s in ("train_classic.py", "pretrain.py", "train_reward_model.py", "train_rlhf.py", "compare_critics.py",
                                   "train_dpo.py")],
}


@pytest.mark.parametrize("script, args, message", [case for cases in CASES.values() for case in cases],
                         ids=[f"{kind}: {script} {' '.join(args)}" for kind, cases in CASES.items() for script, args, _ in cases])
def test_bad_input_gets_one_line_and_exit_2(script, args, message, files, monkeypatch, capsys):
    fill = lambda text: text.format(**files)  # noqa: E731
    if "--run-dir" not in args and script not in ("evaluate_classic.py", "bench_classic.py", "make_data.py", "sample.py",
                                                  "bench_rlhf.py", "run_tutorials.py", "compare_algorithms.py", "arithmetic_breakdown.py",
                                                  "label.py", "compare_preferences.py", "compare_ppo_recipes.py", "bench_demo.py",
                                                  "bench_precision.py"):
        args = [*args, "--run-dir", "{dir}/fresh"]
    monkeypatch.chdir(files["dir"])  # so that nothing a case wrongly writes lands in the repository
    code, _, err = run_script(script, [fill(a) for a in args], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and fill(message) in err, err
    assert not (files["dir"] / "fresh").exists()  # refused before any run folder was created
    assert (files["dir"] / "taken" / "keep.txt").read_text() == "earlier results"
