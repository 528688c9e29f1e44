"""Arithmetic with verifiable rewards: worked solutions, the correct and think rewards against hand
cases, pass@k against a hand computation, and dataset columns reaching reward functions."""

import json
import random

import pytest

from classic_rl.infra.cli import parse_config
from classic_rl.infra.errors import ConfigError
from rlhf_toy.algorithms.grpo import GRPOConfig
from rlhf_toy.algorithms.ppo import PPOConfig
from rlhf_toy.data import split_columns
from rlhf_toy.online import train
from rlhf_toy.rewards.functions import correct_reward, parse_answer_number, resolve_reward, think_reward
from rlhf_toy.tasks import task_defaults
from rlhf_toy.tasks.arithmetic import (
    column_steps,
    make_problem,
    parse_prompt,
    pass_at_k,
    solve,
    worked_solution,
)
from tests.conftest import run_script


@pytest.mark.parametrize("a, op, b, steps, result", [
    (47, "+", 38, ["7 + 8 = 15", "4 + 3 + 1 = 8"], 85),
    (52, "-", 38, ["12 - 8 = 4", "5 - 1 - 3 = 1"], 14),
    (305, "-", 98, ["15 - 8 = 7", "10 - 1 - 9 = 0", "3 - 1 - 0 = 2"], 207),
    (27, "+", 873, ["7 + 3 = 10", "2 + 7 + 1 = 10", "0 + 8 + 1 = 9"], 900),
    (999, "+", 1, ["9 + 1 = 10", "9 + 0 + 1 = 10", "9 + 0 + 1 = 10"], 1000),
])
def test_worked_steps_by_hand(a, op, b, steps, result):
    assert column_steps(a, op, b) == (steps, result)


def test_every_worked_solution_is_right_unless_it_slips():
    rng = random.Random(0)
    problems = [make_problem(rng) for _ in range(3000)]
    assert all(column_steps(*p)[1] == solve(*p) >= 0 for p in problems)
    assert {len(str(a)) for a, _, _ in problems} == {2, 3} and {op for _, op, _ in problems} == {"+", "-"}
    slipped = [column_steps(*p, mistake_at=0, rng=rng)[1] != solve(*p) for p in problems]
    assert sum(slipped) > 0.9 * len(problems)
    text = worked_solution(47, "+", 38, rng, mistake_rate=0.0, no_think_rate=0.0)
    assert text == "<think> 7 + 8 = 15 , 4 + 3 + 1 = 8 </think> <answer> 85 </answer>"
    assert worked_solution(47, "+", 38, rng, mistake_rate=0.0, no_think_rate=1.0).startswith("<answer> ")


@pytest.mark.parametrize("completion, score", [
    ("<think> 7 + 8 = 15 , 4 + 3 + 1 = 8 </think> <answer> 85 </answer>", 1.0),  # right
    ("<answer>85</answer>", 1.0),  # right without thinking: correct scores the answer only
    ("<answer> +85. </answer>", 1.0),  # a sign and a full stop are allowed
    ("<answer> 86 </answer>", 0.0),  # wrong
    ("85", 0.0),  # no answer tags
    ("<answer> 85 apples </answer>", 0.0),  # junk in the answer
    ("<answer> 8 5 </answer>", 0.0),  # not one number
    ("<answer> 84 </answer> <answer> 85 </answer>", 0.0),  # several answers: the first counts
    ("<answer> 85", 0.0),  # unclosed
])
def test_correct_reward_by_hand(completion, score):
    assert correct_reward(["Compute 47 + 38."], [completion], answer=["85"]) == [score]


def test_correct_reward_reads_signs_and_commas_and_needs_the_answer_column():
    assert parse_answer_number("<answer> - 14 </answer>") == -14 and parse_answer_number("<answer>1,085</answer>") == 1085
    assert parse_answer_number("<answer>1,08</answer>") is None
    with pytest.raises(ConfigError, match="needs an `answer` column"):
        correct_reward(["p"], ["<answer> 1 </answer>"])


@pytest.mark.parametrize("completion, score", [
    ("<think> 7 + 8 = 15 </think> <answer> 15 </answer>", 1.0),
    ("<think> 7 + 8 = 15 </think>\n<answer>15</answer>", 1.0),
    ("So: <think> 7 + 8 </think> <answer> 15 </answer>", 0.5),  # text outside
    ("<think> </think> <answer> 15 </answer>", 0.5),  # empty thinking
    ("<think> 7 + 8 = 15 </think>", 0.25),  # thinks, no answer
    ("<answer> 15 </answer>", 0.0),
    ("<answer> 15 </answer> <think> late </think>", 0.25),  # wrong order: only the think pair counts
])
def test_think_reward_by_hand(completion, score):
    assert think_reward(["p"], [completion]) == [score]


def test_pass_at_k_against_a_hand_computation():
    # 5 samples, 2 correct: P(2 drawn without replacement are both wrong) = C(3,2) / C(5,2) = 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8) and pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(16, 2, 8) == pytest.approx(1 - (14 * 13 * 12 * 11 * 10 * 9 * 8 * 7) / (16 * 15 * 14 * 13 * 12 * 11 * 10 * 9))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_dataset_columns_reach_reward_functions_as_keyword_lists():
    prompts, columns = split_columns([{"prompt": "Compute 1 + 2.", "answer": "3"}, {"prompt": "Compute 5 - 4.", "answer": "1"}])
    assert prompts == ["Compute 1 + 2.", "Compute 5 - 4."] and columns == {"answer": ["3", "1"]}
    reward = resolve_reward("correct,think", [0.8, 0.2])
    totals, components = reward.score(prompts, ["<think> 1 + 2 = 3 </think> <answer> 3 </answer>", "<answer> 2 </answer>"], **columns)
    assert totals == pytest.approx([1.0, 0.0]) and components == {"correct": [1.0, 0.0], "think": [1.0, 0.0]}
    assert split_columns(["a plain prompt"]) == (["a plain prompt"], {})


def test_held_out_problems_appear_nowhere_else_and_the_corpus_is_right_only_sometimes():
    from rlhf_toy.corpus import generate_corpus
    from rlhf_toy.rewards.functions import correct_reward

    splits = generate_corpus(0, {"arithmetic_eval": 100, "arithmetic_train": 2000, "arithmetic_sft": 4000})
    held_out = {row["prompt"] for row in splits["arithmetic_eval"]}
    assert len(held_out) == 100
    assert not held_out & {row["prompt"] for row in splits["arithmetic_train"] + splits["arithmetic_sft"]}
    worked = splits["arithmetic_sft"]
    answers = [str(solve(*parse_prompt(row["prompt"]))) for row in worked]
    right = correct_reward([], [row["response"] for row in worked], answer=answers)
    thinking = think_reward([], [row["response"] for row in worked])
    assert 0.55 < sum(right) / len(worked) < 0.75 and 0.75 < sum(thinking) / len(worked) < 0.85


def test_task_arithmetic_measures_pass_at_k_before_during_and_after(nano, nano_arithmetic_dir, tmp_path, monkeypatch, capsys):
    data = nano[0] / "data"
    args = ["--task", "arithmetic", "--model", nano_arithmetic_dir, "--prompts", str(data / "arithmetic_train.jsonl"),
            "--eval-prompts", str(data / "arithmetic_eval.jsonl"), "--steps", "4", "--eval-every", "2", "--prompts-per-step", "2",
            "--num-generations", "4", "--max-completion-length", "32", "--log-completions-every", "0", "--run-dir", str(tmp_path / "run")]
    code, out, err = run_script("train_rlhf.py", args, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["task"] == "arithmetic" and config["reward"] == "correct,think" and config["eval_samples_per_prompt"] == 8
    assert summary["k"] == 8 and all(0 <= summary[f"pass_at_{n}_{when}"] <= 1 for n in ("1", "k") for when in ("before", "after"))
    assert summary["pass_at_1_before"] <= summary["pass_at_k_before"] and summary["pass_at_1_after"] <= summary["pass_at_k_after"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/pass_at_1" in r] == [0, 2, 4]
    assert (tmp_path / "run" / "pass_at_k.png").is_file() and "pass@1" in out


def test_a_task_sets_its_defaults_per_algorithm_and_flags_still_win():
    grpo, ppo = task_defaults("arithmetic", "grpo"), task_defaults("arithmetic", "ppo")
    assert grpo["steps"] == 200 and ppo["steps"] == 360 and "by_algo" not in grpo and grpo["reward"] == ppo["reward"]
    assert parse_config(PPOConfig, ["--steps", "7"], defaults=ppo).steps == 7


def test_grpo_learns_the_think_layout_on_the_nano_arithmetic_model(nano, nano_arithmetic_dir, tmp_path):
    data = nano[0] / "data"
    cfg = GRPOConfig(model=nano_arithmetic_dir, prompts=str(data / "arithmetic_train.jsonl"), eval_prompts=str(data / "arithmetic_eval.jsonl"),
                     reward="think", steps=40, prompts_per_step=4, num_generations=8, max_completion_length=32, learning_rate=3e-3,
                     eval_samples_per_prompt=4, log_completions_every=0, torch_threads=1, run_dir=str(tmp_path / "run"))
    summary = train(cfg)
    assert summary["reward_after"] >= summary["reward_before"] + 0.1, summary


def test_parse_prompt_reads_the_task_s_prompts_and_refuses_others():
    assert parse_prompt("Compute 47 + 38.") == (47, "+", 38) and parse_prompt("Compute 195 - 52.") == (195, "-", 52)
    for other in ("Tell me about Jovi.", "Compute 3 * 4.", "Compute 47 + 38", "Compute -3 + 4."):
        with pytest.raises(ValueError, match="is not an arithmetic prompt"):
            parse_prompt(other)
