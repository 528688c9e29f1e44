"""Reward rules on hand-picked strings, user rewards from files and modules, and contract errors."""

import math

import pytest

from classic_rl.infra.errors import ConfigError
from rlhf_toy.rewards.functions import RewardFunctionError, format_reward, length_reward, resolve_reward


def test_length_reward_by_hand():
    prompts = ["Describe a fox.", "Describe a fox in 4 words.", "Describe a fox.", "Describe a fox."]
    completions = [
        "one two three four five six",                      # 6 words, target 12: 1 - 6/12 = 0.5
        "<answer> one two three four five </answer>",       # 5 words inside tags, target 4 from the prompt: 0.75
        " ".join(["w"] * 12),                               # exactly 12: 1.0
        " ".join(["w"] * 30),                               # 30 words: 1 - 18/12 < 0, floored: 0.0
    ]
    assert length_reward(prompts, completions, target_words=12) == [0.5, 0.75, 1.0, 0.0]
    assert length_reward(prompts[:1], [" ".join(["w"] * 12)]) == [1.0]  # 12 words is the default target


def test_length_reward_counts_the_first_answer_and_small_stated_targets():
    completions = ["<answer> a b </answer> c d </answer>",       # up to the first closing tag: 2 words
                   "<answer> a <answer> b c </answer>",          # after the first opening tag: a, <answer>, b, c
                   "a b"]
    prompts = ["Describe a fox in 2 words.", "Describe a fox in 4 words.", "Describe a fox in 1 words."]
    assert length_reward(prompts, completions) == [1.0, 1.0, 0.0]  # 2 words for a target of 1: 1 - 1/1
    with pytest.raises(ValueError):
        length_reward(["one prompt"], ["two", "completions"])


def test_format_reward_by_hand():
    completions = [
        "<answer> The fox ran. </answer>",        # exact: 1
        "  <answer>The fox ran.</answer>\n",      # surrounding white space is fine: 1
        "Sure! <answer> The fox. </answer>",     # tags with text outside: 0.5
        "<answer> The fox ran.",                  # opening tag only: 0.25
        "The fox ran.",                           # no tags: 0
        "<answer>  </answer>",                    # empty answer: tags present, nothing inside -> 0.5
        "</answer> The fox <answer>",             # tags in the wrong order: opening tag only -> 0.25
        "Hi </answer> then <answer>",             # a closing tag only before the first opening one: 0.25
        "<answer> a </answer> b <answer>",        # closed after the first opening tag, text outside: 0.5
        "<answer> a <answer> b </answer>",        # a second opening tag inside: not exact, closed after the first: 0.5
    ]
    assert format_reward([""] * len(completions), completions) == [1.0, 1.0, 0.5, 0.25, 0.0, 0.5, 0.25, 0.25, 0.5, 0.5]


def test_default_reward_is_the_mean_of_length_and_format_with_components():
    reward = resolve_reward("length,format", target_words=4)
    totals, components = reward.score(["Describe a fox."] * 2, ["<answer> a b c d </answer>", "a b"])
    assert components == {"length": [1.0, 0.5], "format": [1.0, 0.0]}
    assert totals == [1.0, 0.25]


def test_weights_scale_components():
    reward = resolve_reward("length,format", weights=[0.8, 0.2], target_words=2)
    assert reward(["p"], ["a b"]) == [pytest.approx(0.8)]


USER_FILE = '''
def brevity(prompts, completions, **columns):
    return [1.0 / (1 + len(c.split())) for c in completions]

def wrong_count(prompts, completions, **columns):
    return [1.0]

def gives_nan(prompts, completions, **columns):
    return [0.5, float("nan")]

def gives_none(prompts, completions, **columns):
    return [0.5, None]

def gives_text(prompts, completions, **columns):
    return ["high", 0.1]

def gives_bool(prompts, completions, **columns):
    return [0.5, True]

def gives_number(prompts, completions, **columns):
    return 0.5

def uses_columns(prompts, completions, answer, **columns):
    return [float(a in c) for a, c in zip(answer, completions)]

def divides_by_zero(prompts, completions, **columns):
    return [len(c) / 0 for c in completions]

def takes_completions_only(completions):
    return [0.0 for c in completions]
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def test_user_reward_from_a_file_and_from_a_module(user_file, monkeypatch):
    reward = resolve_reward(f"{user_file}:brevity")
    assert reward(["p", "p"], ["one", "one two three"]) == [0.5, 0.25]
    monkeypatch.syspath_prepend(str(user_file.parent))
    assert resolve_reward("my_rewards:brevity")(["p"], ["one"]) == [0.5]
    assert resolve_reward(f"{user_file}:uses_columns")(["p", "p"], ["a fox", "a dog"], answer=["fox", "fox"]) == [1.0, 0.0]


def test_a_missing_function_in_a_reward_file_is_named(user_file):
    with pytest.raises(ConfigError, match=f"{user_file} has no function or class 'politeness'"):
        resolve_reward(f"{user_file}:politeness")


def test_a_reward_file_in_a_folder_whose_name_holds_a_colon(tmp_path):
    path = tmp_path / "run:3" / "my_rewards.py"  # only the last colon separates the function
    path.parent.mkdir()
    path.write_text(USER_FILE)
    assert resolve_reward(f"{path}:brevity")(["p"], ["one"]) == [0.5]


@pytest.mark.parametrize("function, message", [
    ("wrong_count", "reward '{file}:wrong_count' returned 1 values for 2 completions"),
    ("gives_nan", "returned nan at index 1; expected a finite number"),
    ("gives_none", "returned None at index 1"),
    ("gives_text", "returned 'high' at index 0"),
    ("gives_bool", "returned True at index 1"),
    ("gives_number", "reward '{file}:gives_number' returned float, expected a list of 2 numbers"),
])
def test_broken_reward_functions_are_named_with_the_first_bad_index(function, message, user_file):
    reward = resolve_reward(f"{user_file}:{function}")
    with pytest.raises(RewardFunctionError, match=message.format(file=user_file).replace("(", r"\(").replace("[", r"\[")):
        reward(["p", "p"], ["a", "b"])


def test_a_reward_function_that_raises_is_named_with_the_line_that_raised(user_file):
    reward = resolve_reward(f"{user_file}:divides_by_zero")
    line = USER_FILE.splitlines().index("    return [len(c) / 0 for c in completions]") + 1
    with pytest.raises(RewardFunctionError) as caught:
        reward(["p"], ["a"])
    assert str(caught.value) == f"reward '{user_file}:divides_by_zero' raised ZeroDivisionError: division by zero ({user_file}, line {line})"


def test_a_reward_function_without_trl_s_signature_is_refused_when_loaded(user_file):
    with pytest.raises(ConfigError, match=r"takes \(completions\); accepted: \(prompts, completions, \*\*columns\)"):
        resolve_reward(f"{user_file}:takes_completions_only")


@pytest.mark.parametrize("spec, message", [
    ("lenght", "unknown reward 'lenght'; accepted: length, format, think, correct, brevity, environment, FILE.py:FUNCTION, package.module:function or rm:DIR"),
    ("", "--reward is empty; accepted: a comma list of length, format, think, correct, brevity, environment, FILE.py:FUNCTION, package.module:function or rm:DIR"),
    ("missing_file.py:fn", "file missing_file.py not found \\(from --reward"),
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("length,format,length", "--reward names length more than once; accepted: each reward once"),
])
def test_unknown_rewards_list_what_exists(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_reward(spec)


def test_weights_must_match_rewards():
    with pytest.raises(ConfigError, match=r"--reward-weights has 1 values for 2 rewards \(length, format\)"):
        resolve_reward("length,format", weights=[1.0])
    assert not math.isnan(resolve_reward("format")(["p"], ["x"])[0])


def test_brevity_by_hand():
    # 1 - words / 40 of the answer text, floored at 0: 4 words inside tags -> 0.9; 50 words -> 0; nothing -> 1
    scores = resolve_reward("brevity")(["p"] * 3, ["<answer> a b c d </answer>", " ".join(["w"] * 50), ""])
    assert scores == pytest.approx([0.9, 0.0, 1.0])
