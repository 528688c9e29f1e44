"""Prompts and completions in TRL's two formats, and what the policy reads for each:

    standard         "Describe a bear."                                   the project's plain template (format_prompt)
    conversational   [{"role": "system", ...}, {"role": "user", ...}]     the tokenizer's chat template, with the
                                                                          generation prompt (apply_chat_template)

A conversational prompt's completion is the assistant turn; rewards receive it as TRL passes it,
`[{"role": "assistant", "content": text}]` (a multi-turn one: its turns with their tool_calls and the tool messages),
so a TRL reward function works unchanged. The turn ends at the
template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`, ...), which stops generation like eos.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2
from transformers import PreTrainedTokenizerBase

from classic_rl.infra.errors import ConfigError

Prompt = str | list[dict[str, str]]
Completion = str | list[dict[str, str]]

# ChatML, the template of Qwen and SmolLM2's instruct models: the built-in chat models' (PretrainConfig.chat), with Qwen
# 2.5's tool parts: an assistant's tool_calls in <tool_call> tags after its content, a tool message as a user turn in
# <tool_response> tags (one turn per tool message; Qwen 2.5 groups consecutive ones into one)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message['content'] }}"
    "\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}<tool_call>\n"
    "{\"name\": \"{{ call['function']['name'] }}\", \"arguments\": {{ call['function']['arguments'] | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
# Hermes's tool-call tags, as Qwen 2.5's chat template writes them (rlhf_toy/agents/turns.py)
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


def chatml(messages: list[dict[str, str]]) -> str:
    """A conversation rendered by CHATML_TEMPLATE without a tokenizer: the built-in chat model's pretraining texts are
    written before its tokenizer exists (tests check this equals that tokenizer's apply_chat_template)."""
    return chatml_template().render(messages=messages, add_generation_prompt=False)


@functools.cache
def chatml_template() -> jinja2.Template:
    """CHATML_TEMPLATE compiled once (a compile took 2.7 ms, a rendering 13 us: the chat models pretrain on 12,000-16,000 renderings), with transformers'
    settings: a newline right after a block tag is dropped."""
    return jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(CHATML_TEMPLATE)


def format_prompt(prompt: str) -> str:
    """The project's plain template for standard prompts: what a base model sees before it answers."""
    return f"Question: {prompt}\nAnswer:"


def is_conversational(value: Any) -> bool:
    """A list of messages (TRL's conversational format) rather than a string."""
    return isinstance(value, list)


def message_text(value: Prompt | Completion) -> str:
    """The text to show or to judge by a rule: a string itself, a conversation's last message's content."""
    return value[-1]["content"] if is_conversational(value) else value


def messages_problem(value: Any) -> str | None:
    """Why value is not a conversation (a non-empty list of {"role": str, "content": str}), or None."""
    if not isinstance(value, list) or not value:
        return "not a non-empty list of messages"
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            return f"a message {str(message)[:60]} lacks a string 'role' and 'content'"
    return None


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def require_chat_template(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], source: str) -> None:
    """A ConfigError when conversational prompts meet a tokenizer that cannot render them."""
    if any(map(is_conversational, prompts)) and not has_chat_template(tokenizer):
        raise ConfigError(f"{source} holds conversations (lists of messages) but the model's tokenizer has no chat template; "
                          "accepted: plain-text prompts for a base model, or a model with a chat template (e.g. the built-in chat model, "
                          "which conversational data gets when no --model is given)")


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The text the policy reads before it answers: the plain template, or the chat template with the generation prompt."""
    if is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return format_prompt(prompt)


def as_assistant_turn(completion: Completion) -> list[dict[str, str]]:
    """A completion as TRL passes it for a conversational prompt: `[{"role": "assistant", "content": text}]`."""
    return completion if is_conversational(completion) else [{"role": "assistant", "content": completion}]


def render_completion(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: Completion) -> str:
    """The text that follows render_prompt(prompt) when the model gives this completion, up to and including what ends
    it: " text" and eos for a standard prompt; the chat template's assistant turn, cut after its end-of-turn token, for
    a conversational one (TRL's DPO splits the rendered conversation at the rendered prompt the same way)."""
    if not is_conversational(prompt):
        return f" {message_text(completion).strip()}{tokenizer.eos_token}"
    prompt_text = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(prompt + as_assistant_turn(completion), tokenize=False)
    if not full.startswith(prompt_text):
        raise ConfigError("the tokenizer's chat template renders a prompt differently once an answer follows it, so prompt and "
                          "completion cannot be told apart; accepted: a template whose generation prompt is a prefix of the turn")
    turn, end = full[len(prompt_text):], end_of_turn_text(tokenizer)
    return turn[: turn.index(end) + len(end)] if end in turn else turn + tokenizer.eos_token


def end_of_turn_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """The special token the chat template writes right after an assistant message (`<|im_end|>`, `<|eot_id|>`, ...), or
    eos where the template writes none."""
    probe = "Probe answer."
    full = tokenizer.apply_chat_template([{"role": "user", "content": "Probe."}, {"role": "assistant", "content": probe}],
                                         tokenize=False)
    after = full[full.rindex(probe) + len(probe):]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special]
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids else tokenizer.eos_token


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The end-of-turn token id of a chat template ([] without a template): it stops generation like eos."""
    if not has_chat_template(tokenizer):
        return []
    return [tokenizer.convert_tokens_to_ids(end_of_turn_text(tokenizer))]
