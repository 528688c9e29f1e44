"""Conversations in TRL's format: prompts rendered as apply_chat_template renders them, completions that end at the
template's end-of-turn token, rewards that receive assistant turns, conversational data files, and GRPO, PPO, DPO, the
reward model, label.py and sample.py --chat on a tiny chat model."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from classic_rl.infra.errors import ConfigError
from rlhf_toy.chat import (
    CHATML_TEMPLATE,
    chatml,
    end_of_turn_ids,
    end_of_turn_text,
    render_completion,
    render_prompt,
)
from rlhf_toy.data import load_preferences, load_prompt_rows, write_jsonl
from rlhf_toy.generation.rollout import completion_mask_from_ids, encode_completions, sample_rollout
from rlhf_toy.generation.sampling import SamplingConfig, encode_prompts
from rlhf_toy.lm.models import load_model, load_tokenizer, stop_token_ids
from rlhf_toy.rewards.functions import format_reward, resolve_reward
from tests.conftest import run_script, step_rows

CONVERSATION = [{"role": "system", "content": "Answer inside <answer> tags."}, {"role": "user", "content": "Describe a fox."}]
LLAMA3_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
                   "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer(nano_chat_dir):
    return load_tokenizer(nano_chat_dir)


def test_a_rendered_prompt_is_apply_chat_templates_tokens(chat_tokenizer, nano_chat_dir):
    model = load_model(nano_chat_dir)
    other = [{"role": "user", "content": "Who lives in Redfern?"}]
    batch = encode_prompts(chat_tokenizer, [CONVERSATION, other, CONVERSATION], 8, model)
    for row, messages in zip(batch["input_ids"], [CONVERSATION, other, CONVERSATION], strict=True):
        want = chat_tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        real = row[-len(want):].tolist()  # left padding before it
        assert real == want and (row[: len(row) - len(want)] == chat_tokenizer.pad_token_id).all()
    assert render_prompt(chat_tokenizer, "Describe a fox.") == "Question: Describe a fox.\nAnswer:"  # plain prompts as before


def test_the_chat_models_pretraining_texts_are_its_templates_rendering(chat_tokenizer):
    conversation = [*CONVERSATION, {"role": "assistant", "content": "<answer> A red fox. </answer>"}]
    assert chatml(conversation) == chat_tokenizer.apply_chat_template(conversation, tokenize=False)
    assert chat_tokenizer.chat_template == CHATML_TEMPLATE


def test_the_chatml_template_writes_tool_calls_and_answers_as_qwen_2_5s_does(chat_tokenizer):
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "2 * 3"}}}
    conversation = [{"role": "user", "content": "Compute 2 * 3."}, {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "name": "calculator", "content": "6"}, {"role": "assistant", "content": "Sure.", "tool_calls": [call, call]}]
    assert chatml(conversation) == chat_tokenizer.apply_chat_template(conversation, tokenize=False) == (
        "<|im_start|>user\nCompute 2 * 3.<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 * 3"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n6\n</tool_response><|im_end|>\n"
        '<|im_start|>assistant\nSure.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 * 3"}}\n</tool_call>'
        '\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 * 3"}}\n</tool_call><|im_end|>\n')


def test_the_end_of_turn_token_is_read_from_the_template(chat_tokenizer):
    assert end_of_turn_text(chat_tokenizer) == "<|im_end|>"
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(chat_tokenizer) == [im_end]
    llama3 = AutoTokenizer.from_pretrained(chat_tokenizer.name_or_path)
    llama3.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    llama3.chat_template = LLAMA3_TEMPLATE
    assert end_of_turn_text(llama3) == "<|eot_id|>"
    llama3.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # writes no special token: eos ends a turn
    assert end_of_turn_text(llama3) == llama3.eos_token


def test_generation_stops_at_the_end_of_turn_token(chat_tokenizer, nano_chat_dir):
    model = load_model(nano_chat_dir)
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(model, chat_tokenizer) and chat_tokenizer.eos_token_id in stop_token_ids(model, chat_tokenizer)
    ids = torch.tensor([[5, 6, im_end, 7, 8], [5, 6, 7, 8, 9]])
    mask, truncated = completion_mask_from_ids(ids, stop_token_ids(model, chat_tokenizer))
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]] and truncated.tolist() == [False, True]
    torch.manual_seed(0)
    rollout = sample_rollout(model, chat_tokenizer, [CONVERSATION] * 8, SamplingConfig(max_new_tokens=40))
    ended = ~rollout.is_truncated
    assert ended.any(), "the chat model ends some answers within 40 tokens"
    last = rollout.completion_ids.gather(1, (rollout.completion_lengths.long() - 1).clamp(min=0)[:, None]).squeeze(1)
    assert (last[ended] == im_end).any() and torch.isin(last[ended], torch.tensor([im_end, chat_tokenizer.eos_token_id])).all()
    assert "<|im_end|>" not in "".join(rollout.completions)


def test_a_completion_is_the_assistant_turn_up_to_its_end(chat_tokenizer, nano_chat_dir):
    assert render_completion(chat_tokenizer, CONVERSATION, "A red fox.") == "A red fox.<|im_end|>"
    assert render_completion(chat_tokenizer, CONVERSATION, [{"role": "assistant", "content": "A red fox."}]) == "A red fox.<|im_end|>"
    assert render_completion(chat_tokenizer, "Describe a fox.", "A red fox.") == " A red fox.<|endoftext|>"
    input_ids, attention_mask, completion_mask = encode_completions(chat_tokenizer, [CONVERSATION], ["A red fox."],
                                                                    load_model(nano_chat_dir))
    full = chat_tokenizer.apply_chat_template([*CONVERSATION, {"role": "assistant", "content": "A red fox."}])["input_ids"]
    assert input_ids[0].tolist() == full[:-1]  # the template's "\n" after <|im_end|> is not the answer's
    assert completion_mask[0].tolist() == [1.0] * len(chat_tokenizer("A red fox.<|im_end|>", add_special_tokens=False)["input_ids"])


def test_rewards_receive_assistant_turns_as_trl_passes_them(tmp_path):
    received = []
    (tmp_path / "rewards.py").write_text("SEEN = []\ndef spy(prompts, completions, **columns):\n"
                                         "    SEEN.append((prompts, completions))\n    return [1.0] * len(completions)\n")
    reward = resolve_reward(f"{tmp_path / 'rewards.py'}:spy,format")
    totals, components = reward.score([CONVERSATION], ["<answer> A red fox. </answer>"])
    received = reward.functions[f"{tmp_path / 'rewards.py'}:spy"].__globals__["SEEN"]
    assert received == [([CONVERSATION], [[{"role": "assistant", "content": "<answer> A red fox. </answer>"}]])]
    assert components["format"] == [1.0] and totals == [1.0]
    assert format_reward(["Describe a fox."], ["<answer> A red fox. </answer>"]) == [1.0]  # plain text as before
    assert reward.score(["Describe a fox."], ["x"])[1]["format"] == [0.0]


@pytest.mark.parametrize("lines, message", [
    ([{"prompt": [{"role": "user", "content": "a"}]}, {"prompt": "b"}],
     "line 2 gives 'prompt' as a string but line 1 as a conversation; accepted: one format per file"),
    ([{"prompt": [{"role": "user"}]}], "line 1 has a field 'prompt' that is a message {'role': 'user'} lacks a string 'role' and 'content'"),
    ([{"prompt": []}], "line 1 has a field 'prompt' that is not a non-empty list of messages"),
])
def test_a_bad_conversational_file_is_one_line_naming_the_line(tmp_path, lines, message):
    write_jsonl(tmp_path / "p.jsonl", lines)
    with pytest.raises(ConfigError, match="line") as err:
        load_prompt_rows(tmp_path / "p.jsonl")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_conversational_preferences_load_with_assistant_turns(tmp_path):
    row = {"prompt": CONVERSATION, "chosen": [{"role": "assistant", "content": "<answer> A fox. </answer>"}],
           "rejected": [{"role": "assistant", "content": "no"}]}
    write_jsonl(tmp_path / "pairs.jsonl", [row, row])
    kind, rows = load_preferences(tmp_path / "pairs.jsonl")
    assert kind == "pairwise" and rows[0]["chosen"] == row["chosen"] and rows[0]["prompt"] == CONVERSATION


def chat_args(root, algo: str, run_dir) -> list[str]:
    data = root / "data"
    return ["--algo", algo, "--prompts", str(data / "prompts_chat_train.jsonl"), "--eval-prompts", str(data / "prompts_chat_eval.jsonl"),
            "--steps", "2", "--prompts-per-step", "2", "--num-generations", "4", "--max-completion-length", "12",
            "--eval-samples-per-prompt", "1", "--log-completions-every", "0", "--run-dir", str(run_dir)]


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_online_algorithms_train_a_chat_model_on_conversations(algo, nano, nano_chat_dir, tmp_path, monkeypatch, capsys):
    code, out, err = run_script("train_rlhf.py", [*chat_args(nano[0], algo, tmp_path / "run"), "--model", nano_chat_dir],
                                monkeypatch, capsys)
    assert code == 0, err
    assert len(step_rows(tmp_path / "run")) == 2
    samples = json.loads((tmp_path / "run" / "eval_samples.json").read_text())["after"]
    assert samples[0]["prompt"][0]["role"] == "user" and isinstance(samples[0]["completion"], str)
    assert "Describe" in out or "Who" in out or "Write" in out or "Tell" in out  # prompts shown as text, not as a list


def test_conversations_for_a_model_without_a_template_are_one_line(nano, nano_dir, tmp_path, monkeypatch, capsys):
    code, _, err = run_script("train_rlhf.py", [*chat_args(nano[0], "grpo", tmp_path / "run"), "--model", nano_dir], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds conversations (lists of messages) but the model's tokenizer has no chat template" in err


def test_label_dpo_and_reward_model_on_a_chat_models_conversations(nano, nano_chat_dir, tmp_path, monkeypatch, capsys):
    """label.py writes conversational pairs (chosen / rejected as assistant turns), and DPO and the reward model learn them."""
    data, pairs = nano[0] / "data", tmp_path / "pairs.jsonl"
    code, _, err = run_script("label.py", ["--model", nano_chat_dir, "--prompts", str(data / "prompts_chat_train.jsonl"), "--simulate",
                                           "length,format", "--n", "12", "--max-completion-length", "16", "--out", str(pairs)],
                              monkeypatch, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
    code, _, err = run_script("train_dpo.py", ["--model", nano_chat_dir, "--preferences", str(pairs), "--eval-prompts",
                                               str(data / "prompts_chat_eval.jsonl"), "--steps", "2", "--eval-every", "2",
                                               "--eval-samples-per-prompt", "1", "--run-dir", str(tmp_path / "dpo")], monkeypatch, capsys)
    assert code == 0, err
    assert 0 <= json.loads((tmp_path / "dpo" / "summary.json").read_text())["pair_accuracy"] <= 1
    code, _, err = run_script("train_reward_model.py", ["--model", nano_chat_dir, "--preferences", str(pairs), "--data-dir", str(data),
                                                        "--steps", "2", "--eval-every", "2", "--spearman-samples", "8",
                                                        "--run-dir", str(tmp_path / "rm")], monkeypatch, capsys)
    assert code == 0, err
    scores = resolve_reward(f"rm:{tmp_path / 'rm' / 'model'}")([CONVERSATION, CONVERSATION], ["<answer> A fox. </answer>", "no"])
    assert len(scores) == 2 and scores[0] != scores[1]


def test_sample_chat_keeps_the_conversation_turn_by_turn(nano_chat_dir, nano_dir):
    from scripts.sample import chat
    model, tokenizer = load_model(nano_chat_dir), load_tokenizer(nano_chat_dir)
    lines, shown = iter(["Describe a fox.", "And a bear?", ""]), []
    torch.manual_seed(0)
    messages = chat(model, tokenizer, SamplingConfig(max_new_tokens=12), "Be brief.", lambda _: next(lines), shown.append)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[3]["content"] == "And a bear?" and len(shown) == 2 and shown[0].startswith("model> ")
    with pytest.raises(ConfigError, match="no chat template"):
        chat(load_model(nano_dir), load_tokenizer(nano_dir), SamplingConfig(max_new_tokens=4), None, lambda _: "hi", print)
