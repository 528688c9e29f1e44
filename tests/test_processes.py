"""Every trainer in several processes (accelerate launch, CPU, gloo): a run in 2 processes takes the steps a run in 1
takes on the same global batch and seed, writes the run folder once, and bad splits are one-line errors."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from classic_rl.infra.errors import ConfigError
from rlhf_toy.distributed import LAUNCHER_VARIABLES, process_share, summed_over_processes
from rlhf_toy.generation.rollout import sample_rollout
from rlhf_toy.generation.sampling import RowUniforms, SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer
from tests.conftest import ROOT, comparable_metrics, kill_after_first_checkpoint, run_script, script_command
from tests.test_rlhf import as_flags, small_config


def launch(script: str, args: list[str], num_processes: int) -> subprocess.CompletedProcess:
    """scripts/<script> in num_processes CPU processes through accelerate (torchrun, gloo), or with python for one."""
    return subprocess.run([*script_command(script, num_processes), *args, "--cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def online_flags(nano, run_dir, algo: str, fsdp: bool = False, **extra) -> list[str]:
    """A short online run whose update uses statistics of the whole batch: GRPO's batch-scaled advantages and DAPO
    normaliser; PPO's whitened advantages and rewards, its adaptive KL coefficient, its separate critic and (without
    --fsdp, which refuses it) the pretraining mix, a second forward of the policy before each backward; RLOO's
    leave-one-out baselines and whitened advantages; REINFORCE++-baseline's group means and token whitening."""
    own = {"grpo": dict(scale_rewards="batch", beta=0.04, num_iterations=2),
           "ppo": dict(whiten_rewards=True, target_kl=0.01, kl_horizon=64, **({} if fsdp else dict(ptx_coef=0.5, ptx_batch_size=2))),
           # RLOO's gradient is a sum over whole completions, whose rounding differs between 1 and 2 processes by a few
           # 1e-7; Adam moves a weight whose gradient is that noise by up to lr a step, so a smaller one (as DPO's below)
           "rloo": dict(normalize_advantages=True, beta=0.05, num_iterations=2, learning_rate=1e-4),
           "reinforce_pp": dict(init_kl_coef=0.05, max_epochs=2)}[algo]
    cfg = small_config(nano, run_dir.parent, algo=algo, prompts_per_step=4, num_generations=4, log_completions_every=0,
                       precision="fp32", run_dir=str(run_dir), **own, **extra)
    return as_flags(cfg)


def supervised_flags(nano, run_dir, script: str) -> list[str]:
    """3 steps of DPO, the reward model or pretraining; Adam at a learning rate of 1e-4, where the float rounding that
    differs between 1 and 2 processes moves no weight by 1e-5 (Adam's step is about lr in size whatever the gradient's,
    so a gradient that is rounding noise moves its weight by up to lr)."""
    root, common = nano[0], ["--run-dir", str(run_dir), "--precision", "fp32"]
    model, data = str(root / "run" / "model"), root / "data"
    return common + {
        "train_dpo.py": ["--model", model, "--preferences", str(data / "preferences_train.jsonl"), "--eval-preferences",
                         str(data / "preferences_eval.jsonl"), "--eval-prompts", str(data / "prompts_eval.jsonl"),
                         "--steps", "3", "--per-device-train-batch-size", "8", "--learning-rate", "1e-4", "--eval-every", "2",
                         "--eval-samples-per-prompt", "1", "--max-completion-length", "8"],
        "train_reward_model.py": ["--model", model, "--data-dir", str(data), "--steps", "3", "--batch-size", "8",
                                  "--learning-rate", "1e-4", "--eval-every", "2", "--spearman-samples", "8"],
        "pretrain.py": ["--preset", "nano", "--data-dir", str(data), "--vocab-size", "600", "--max-steps", "3",
                        "--batch-size", "8", "--warmup-steps", "1", "--eval-every", "2"],
    }[script]


TRAINERS = {  # name: (script, its flags given (nano, run_dir, the 2-process run's extra flags))
    "grpo": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "grpo")),
    "ppo": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "ppo")),
    "grpo, FSDP": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "grpo", fsdp=True)),
    "ppo, FSDP": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "ppo", fsdp=True)),
    "rloo": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "rloo")),
    "reinforce++-baseline": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "reinforce_pp")),
    "grpo, GDPO": ("train_rlhf.py", lambda nano, run_dir: online_flags(
        nano, run_dir, "grpo", reward="length,format", multi_objective_aggregation="normalize_then_sum")),
    "grpo, moving reference, FSDP": ("train_rlhf.py", lambda nano, run_dir: online_flags(
        nano, run_dir, "grpo", fsdp=True, sync_ref_model=True, ref_model_sync_steps=1)),
    "grpo, top-entropy fifth": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "grpo", top_entropy_quantile=0.2)),
    "grpo, LoRA, FSDP": ("train_rlhf.py", lambda nano, run_dir: online_flags(nano, run_dir, "grpo", fsdp=True, use_peft=True,
                                                                             learning_rate=1e-3)),
    **{name: (script, lambda nano, run_dir, script=script: supervised_flags(nano, run_dir, script))
       for name, script in (("dpo", "train_dpo.py"), ("reward model", "train_reward_model.py"), ("pretraining", "pretrain.py"),
                            ("dpo, FSDP", "train_dpo.py"), ("reward model, FSDP", "train_reward_model.py"))},
}


def saved_weights(run_dir) -> dict[str, torch.Tensor]:
    """The saved policy's weights: the whole model's, or under LoRA the adapters'."""
    folder = run_dir / "model"
    return load_file(folder / ("adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"))


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """run(script, flags, nano, monkeypatch, capsys): the folder of `flags` run to the end in this process, once per
    configuration (a trainer and its FSDP case share one). A 1-process run needs no launcher, and the start-up of a
    python is most of such a short run."""
    runs = {}

    def run(script: str, flags, nano, monkeypatch, capsys):
        key = (script, tuple(flags(nano, ROOT / "RUN")))
        if key not in runs:
            run_dir = tmp_path_factory.mktemp("1-process")
            code, _, err = run_script(script, [*flags(nano, run_dir), "--cpu"], monkeypatch, capsys)
            assert code == 0, err[-3000:]
            runs[key] = run_dir
        return runs[key]
    return run


@pytest.mark.parametrize("trainer", TRAINERS)
def test_two_processes_train_the_weights_one_process_trains(trainer, nano, tmp_path, one_process_run, monkeypatch, capsys):
    """Each process takes half of every batch; gradients, advantages, whitening and the KL controller's input are those
    of the whole batch, and sampling draws each completion's numbers from one stream, so the weights agree to float
    rounding after 3 steps (and moved)."""
    script, flags = TRAINERS[trainer]
    one_dir = one_process_run(script, flags, nano, monkeypatch, capsys)
    # with FSDP, the 2 processes shard the model (a 1-process run has nothing to shard over)
    extra = ["--fsdp"] if trainer.endswith("FSDP") else []
    result = launch(script, flags(nano, tmp_path / "2-process") + extra, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = saved_weights(one_dir), saved_weights(tmp_path / "2-process")
    assert one.keys() == two.keys()
    if trainer != "pretraining":  # pretraining starts from random weights; LoRA's B matrices from zero
        start = load_model(str(nano[0] / "run" / "model")).state_dict()
        moved = [(one[k] - start.get(k, torch.zeros_like(one[k]))).abs().max().item() for k in one if k in start or "lora_B" in k]
        assert max(moved) > 1e-4
    # nearly every weight agrees to 1e-7; the few whose gradient is rounding noise move by Adam up to lr a step either
    # way, and how far apart they end depends on the CPU's float rounding (max 1e-5 on a Xeon, 1.7e-5 on an EPYC). A
    # wrong reduction moves most weights apart by about as much as they moved (> 1e-4), which both bounds catch
    differences = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    assert differences.quantile(0.999).item() < 1e-6 and differences.max().item() < 1e-4
    summaries = [json.loads((run_dir / "summary.json").read_text()) for run_dir in (one_dir, tmp_path / "2-process")]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 3
    if "held_mb" in summaries[0]:  # an online run's weights and optimizer state per process: FSDP holds about half
        assert summaries[1]["held_mb"] < (0.6 if trainer.endswith("FSDP") and "LoRA" not in trainer else 1.01) * summaries[0]["held_mb"]
    metrics = [(run_dir / "metrics.jsonl").read_text().splitlines() for run_dir in (one_dir, tmp_path / "2-process")]
    assert len(metrics[0]) == len(metrics[1])  # the main process alone logs


def test_a_share_of_the_batch_samples_what_the_whole_batch_samples_for_its_rows(nano_dir):
    """RowUniforms: a row's sampling numbers do not depend on which other rows are sampled beside it."""
    policy, tokenizer = load_model(nano_dir).eval(), load_tokenizer(nano_dir)
    prompts = [p for p in ["Describe a fox.", "Tell me about Ada.", "Write about a cave.", "Hi."] for _ in range(2)]
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.2, top_k=40)
    whole = sample_rollout(policy, tokenizer, prompts, sampling, uniforms=RowUniforms(7, 0, 8, "cpu"))
    halves = [sample_rollout(policy, tokenizer, prompts[start:start + 4], sampling, uniforms=RowUniforms(7, start, 8, "cpu"))
              for start in (0, 4)]
    assert whole.completions == halves[0].completions + halves[1].completions
    assert len(set(whole.completions)) > 4  # the numbers differ from row to row
    other_seed = sample_rollout(policy, tokenizer, prompts, sampling, uniforms=RowUniforms(8, 0, 8, "cpu"))
    assert other_seed.completions != whole.completions


def test_in_one_process_statistics_of_the_whole_batch_are_this_processs():
    class OneProcess:
        num_processes, process_index = 1, 0

    assert summed_over_processes(OneProcess()) is None
    assert process_share(torch.arange(6), 1, 2).tolist() == [3, 4, 5]
    groups = [p for p in "abcd" for _ in range(3)]
    assert process_share(groups, 0, 2) == list("aaabbb") and process_share(groups, 1, 2) == list("cccddd")


def test_grpo_in_two_processes_writes_one_run_folder_and_checkpoints(nano, tmp_path):
    """Launched with the repository's accelerate config for two CPU processes."""
    cfg = small_config(nano, tmp_path, prompts_per_step=4, save_every=2)
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                             str(ROOT / "configs" / "accelerate" / "cpu_2_processes.yaml"), str(ROOT / "scripts" / "train_rlhf.py"),
                             *as_flags(cfg), "--cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 3]  # the main process alone logs (eval before, steps, eval after)
    assert result.stdout.count("before training: eval reward") == 1
    assert (run_dir / "checkpoints" / "step-2" / "model" / "model.safetensors").is_file()


def test_a_batch_that_does_not_split_over_the_processes_is_a_one_line_error(nano, tmp_path):
    result = launch("train_reward_model.py", supervised_flags(nano, tmp_path / "rm", "train_reward_model.py")
                    + ["--batch-size", "7"], 2)
    assert result.returncode != 0  # torchrun exits 1 when a process exits 2
    assert "error: --batch-size (at most the labels) is 7, which does not split over 2 processes; accepted: a multiple of 2" \
        in result.stderr
    assert not (tmp_path / "rm").exists()  # before the run folder


def test_the_orchestrating_loop_refuses_a_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_script("rlhf_loop.py", ["--run-dir", str(tmp_path / "loop")], monkeypatch, capsys)
    assert code == 2 and "rlhf_loop.py runs in one process, but was launched in 2" in err and err.count("\n") == 1


def test_a_launched_run_builds_a_missing_base_model_in_a_process_of_its_own(tmp_path, monkeypatch):
    """Pretraining inside the main process of a launched run would join the launcher's process group."""
    from rlhf_toy.lm import base_model
    started = []
    monkeypatch.setenv("RLHF_TOY_HOME", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(subprocess, "run", lambda command, env, check: started.append((command, env)))
    assert base_model.default_base_model(kind="chat") == str(tmp_path / f"base-tiny-chat-{base_model.CHAT_MODEL_VERSION}" / "model")
    (command, env), = started
    assert command[:2] == [sys.executable, "-c"] and "default_base_model('tiny', 'chat')" in command[2]
    assert not set(LAUNCHER_VARIABLES) & set(env) and env["RLHF_TOY_HOME"] == str(tmp_path)


def test_the_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: make check-gpu runs the check itself")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_gpu.py"), "--md", str(tmp_path / "g.md")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: no CUDA device here; accepted: a machine with one (make check-gpu), or --device cpu for a dry run")
    assert not (tmp_path / "g.md").exists()


@pytest.mark.slow
def test_the_gpu_checks_pass_on_cpu_and_write_the_table(tmp_path):
    """The dry run of make check-gpu: every check, in both precisions, on CPU, including 2 processes against 1."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_gpu.py"), "--device", "cpu", "--md", str(tmp_path / "g.md"),
                             "--json", str(tmp_path / "g.json")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "g.json").read_text())
    checks = {(row["check"], row["precision"]) for row in report["checks"]}
    assert {("GRPO", "bf16"), ("PPO with a critic", "fp32"), ("DPO", "bf16"), ("reward model", "fp32"),
            ("fast decoder vs generate", "fp32"), ("2 processes vs 1 (DDP)", "fp32"), ("2 processes vs 1 (FSDP)", "bf16")} <= checks
    assert all(row["status"] == "ok" for row in report["checks"])
    assert "| GRPO | bf16 | ok |" in (tmp_path / "g.md").read_text()


def test_an_fsdp_run_killed_and_resumed_writes_what_an_uninterrupted_one_does(nano, tmp_path):
    """Each process writes its shard of the optimizer state into the checkpoint; the resumed run reads them back. The
    reference moves every 3 optimizer steps (2 a step): its full weights are in the checkpoint and load back sharded."""
    def flags(run_dir, *extra):
        return [*online_flags(nano, run_dir, "grpo", fsdp=True, sync_ref_model=True, ref_model_sync_steps=3), "--steps", "6",
                "--save-every", "2", "--fsdp", *extra]

    straight = launch("train_rlhf.py", flags(tmp_path / "straight"), 2)
    assert straight.returncode == 0, straight.stderr[-3000:]
    code = kill_after_first_checkpoint("train_rlhf.py", flags(tmp_path / "killed", "--cpu"), tmp_path / "killed", signal.SIGKILL,
                                       num_processes=2)
    assert code != 0
    first = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*"))[0]
    assert {p.name for p in (tmp_path / "killed" / "checkpoints" / first / "optimizer").iterdir()} >= {
        ".metadata", "__0_0.distcp", "__1_0.distcp"}  # one shard per process
    resumed = launch("train_rlhf.py", flags(tmp_path / "killed", "--resume"), 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable_metrics(tmp_path / "killed") == comparable_metrics(tmp_path / "straight")


@pytest.mark.parametrize("name, processes, machines", [("cpu_2_processes", 2, 1), ("one_gpu", 1, 1), ("eight_gpus", 8, 1),
                                                       ("two_nodes", 16, 2)])
def test_the_accelerate_configs_in_the_repository_load(name, processes, machines):
    from accelerate.commands.config.config_args import load_config_from_file
    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (processes, machines, "no")


def test_fsdp_in_one_process_is_a_one_line_error(nano, tmp_path, monkeypatch, capsys):
    cfg = small_config(nano, tmp_path)
    code, _, err = run_script("train_rlhf.py", as_flags(cfg, fsdp=True), monkeypatch, capsys)
    assert code == 2 and err.strip() == (
        "error: --fsdp shards the model over the processes of a launched run, and this run has one; accepted: accelerate launch "
        "--multi_gpu --num_processes N (N >= 2) SCRIPT --fsdp, or no --fsdp")
    assert not (tmp_path / "run").exists()


def test_fsdp_refuses_what_it_does_not_serve_in_one_line(nano, tmp_path):
    """PPO's pretraining mix runs the policy twice before a backward; a merged copy of a sharded LoRA model is not made."""
    result = launch("train_rlhf.py", online_flags(nano, tmp_path / "ppo", "ppo") + ["--fsdp"], 2)
    assert result.returncode != 0
    assert "error: --ptx-coef runs the policy twice before each backward, which --fsdp does not serve" in result.stderr
    from rlhf_toy.fsdp import check_fsdp
    with pytest.raises(ConfigError, match="--save-merged-model with --fsdp: merge the saved adapters afterwards"):
        check_fsdp(small_config(nano, tmp_path, use_peft=True, save_merged_model=True, fsdp=True), 2)
