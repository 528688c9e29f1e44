"""Multi-turn rollouts: the model writes, an environment answers with tokens the model did not write, the model writes
again, until it ends its completion, the environment ends the episode or the turn limit is reached.

    episodes = [Agent.episode() for each row];  prompt += episode.reset(**row)     (TRL's environment_factory.reset)
    decode   one token a step for every row, with the fast decoder or generate, through TurnTaker as the chooser:
                 a row with environment tokens queued takes the next of them                      (env_mask 1)
                 else the sampled token; once the turn's text ends in one of the episode's stop strings,
                 reply = episode.respond(turn) is tokenized and queued, then eos if the episode is over
    masks    completion_mask: the model's tokens alone, so no loss, KL or entropy term sees the environment's;
             attention_mask: every token up to the end, so the model reads the environment's answers

Two kinds of episode: ToolCalling, TRL's `tools=` and `environment_factory=` (the model writes Hermes / Qwen 2.5 tool
calls, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, answered by `<tool_response>...</tool_response>`),
and text games (rlhf_toy/agents/text_games.py), whose moves are words parsed from the model's turn.

A conversational prompt's tool calls go through the chat template, as TRL's do (ChatTurns): the model ends its turn
with the template's end-of-turn token; the call's answer is a {"role": "tool"} message rendered by the template,
with the generation prompt of the next assistant turn (Qwen 2.5: `<|im_start|>user <tool_response>...`); the model's
end-of-turn tokens are trained, the template's text is not. The decoders then stop at a terminal token the
environment writes after the last turn, since the end-of-turn token no longer ends a completion. Reward functions then
receive each completion as TRL does, its messages: assistant turns (with tool_calls) and tool messages.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from classic_rl.infra.errors import ConfigError
from rlhf_toy.chat import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    end_of_turn_ids,
)


class Episode:
    """One rollout row's environment. stop_strings end a model turn; respond(turn text) -> the text appended after it
    (which may set done: the completion then ends after that text); get_reward() -> the episode's reward, for the
    `environment` reward. tool_calls and tool_failures count the calls and those that failed."""

    stop_strings: tuple[str, ...] = ()

    def __init__(self):
        self.done, self.tool_calls, self.tool_failures = False, 0, 0

    def reset(self, **row) -> str | None:
        """The episode's first observation, appended to the prompt (None: nothing), from the prompt row's columns."""
        return None

    def respond(self, turn: str) -> str:
        raise NotImplementedError

    def get_reward(self) -> float:
        raise ConfigError(f"{type(self).__name__} has no get_reward(); accepted with the environment reward: an environment "
                          "that defines get_reward() (TRL's environment_factory protocol)")


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A tool call as the model writes it: Hermes's format, which Qwen 2.5's chat template renders and TRL parses."""
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments})}{TOOL_CALL_CLOSE}"


def tool_response_text(content: str) -> str:
    return f"{TOOL_RESPONSE_OPEN}{content}{TOOL_RESPONSE_CLOSE}"


def parse_tool_call(turn: str) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of the last tool call in a turn; a ValueError, in one line, for anything else."""
    body = turn.rsplit(TOOL_CALL_OPEN, 1)[-1].split(TOOL_CALL_CLOSE, 1)[0] if TOOL_CALL_OPEN in turn else None
    try:
        call = json.loads(body) if body is not None else None
    except json.JSONDecodeError:
        call = None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(call.get("arguments", {}), dict):
        raise ValueError('the tool call is not {"name": NAME, "arguments": {...}} between <tool_call> and </tool_call>')
    return call["name"], call.get("arguments", {})


def assistant_message(text: str) -> dict[str, Any]:
    """A model turn as TRL's parse_response gives it for Qwen 2.5's template: a tool call moved into tool_calls, the text
    outside it the content (stripped); a turn without a well-formed call is all content."""
    try:
        name, arguments = parse_tool_call(text)
    except ValueError:
        return {"role": "assistant", "content": text.strip()}
    before, _, rest = text.rpartition(TOOL_CALL_OPEN)
    content = before + rest.split(TOOL_CALL_CLOSE, 1)[-1]
    return {"role": "assistant", "content": content.strip(),
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def text_messages(text: str) -> list[dict[str, Any]]:
    """A standard completion's turns as a chat completion's messages (plain_text's inverse): the text before each
    <tool_response> an assistant turn, parsed as TRL parses one, the response a tool message named by its call ("tool"
    after a malformed one, as ToolCalling names it), the rest the last turn."""
    messages, rest = [], text
    while TOOL_RESPONSE_OPEN in rest and TOOL_RESPONSE_CLOSE in rest:
        turn, rest = rest.split(TOOL_RESPONSE_OPEN, 1)
        content, rest = rest.split(TOOL_RESPONSE_CLOSE, 1)
        call = assistant_message(turn)
        name = call["tool_calls"][0]["function"]["name"] if "tool_calls" in call else "tool"
        messages += [call, {"role": "tool", "name": name, "content": content}]
    return [*messages, assistant_message(rest)]


def plain_text(messages: list[dict[str, Any]]) -> str:
    """A multi-turn chat completion written as a standard prompt's completion is: each call in Hermes's text, its tool's
    answer right after it in <tool_response> tags, a space before each later turn."""
    text = ""
    for message in messages:
        if message["role"] == "tool":
            text += tool_response_text(message["content"])
            continue
        calls = "".join(tool_call_text(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", []))
        text += (" " if text else "") + " ".join(part for part in (message["content"], calls) if part)
    return text


class ToolCalling(Episode):
    """TRL's tools and environment_factory: the model calls tools (plain functions, and the public methods of the
    environment instance) by name; each call's result, or its error in one line, is the tool response. After
    max_calls calls, a further call ends the completion unanswered (TRL's max_tool_calling_iterations)."""

    stop_strings = (TOOL_CALL_CLOSE,)

    def __init__(self, tools: list[Callable], environment: Any = None, max_calls: int | None = None):
        super().__init__()
        self.environment, self.max_calls = environment, max_calls
        methods = [] if environment is None else [getattr(environment, name) for name in public_methods(type(environment))]
        self.tools = {fn.__name__: fn for fn in [*tools, *methods]}

    def reset(self, **row) -> str | None:
        if self.environment is None:
            return None
        observation = self.environment.reset(**row)
        if observation is not None and not isinstance(observation, str):
            raise ConfigError(f"{type(self.environment).__name__}.reset() returned {type(observation).__name__}; accepted: a "
                              "str (the observation as text, appended to the prompt) or None")
        return observation

    def respond(self, turn: str) -> str:
        message = self.call(turn)
        return "" if message is None else tool_response_text(message["content"])

    def call(self, turn: str) -> dict[str, str] | None:
        """The turn's tool call run: TRL's tool message {"role": "tool", "name", "content"} (the result, or the error in
        one line); None past max_calls, which ends the episode."""
        if self.max_calls is not None and self.tool_calls >= self.max_calls:
            self.done = True
            return None
        self.tool_calls += 1
        name = "tool"
        try:
            name, arguments = parse_tool_call(turn)
            if name not in self.tools:
                raise ValueError(f"no tool named {name!r}; the tools: {', '.join(self.tools)}")
            result = self.tools[name](**arguments)
        except Exception as err:  # the model's bad call, or a tool that raised: the model reads the error, as in TRL
            self.tool_failures += 1
            result = f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
        self.done = bool(getattr(self.environment, "done", False))
        return {"role": "tool", "name": name, "content": str(result)}

    def get_reward(self) -> float:
        if not callable(getattr(self.environment, "get_reward", None)):
            return super().get_reward()
        return float(self.environment.get_reward())


def public_methods(cls: type) -> list[str]:
    """The methods of an environment class that are tools: every public one but reset and get_reward (TRL's rule)."""
    return [name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")]


@dataclass
class Agent:
    """How a run's rollouts go multi-turn: tools (TRL's `tools=`), an environment factory (TRL's `environment_factory=`:
    a class whose instances have reset(), tools as methods and get_reward(), or one of Episode's), and the turn limit."""
    tools: list[Callable] = field(default_factory=list)
    environment_factory: Callable | None = None
    max_tool_calling_iterations: int | None = None

    def episode(self) -> Episode:
        made = self.environment_factory() if self.environment_factory is not None else None
        if isinstance(made, Episode):
            return made
        return ToolCalling(self.tools, made, self.max_tool_calling_iterations)

    def start(self, prompts: list, columns: dict[str, list]) -> tuple[list, list[Episode]]:
        """(the prompts with each episode's first observation appended, the episodes): one per row, reset with the row's
        columns (a conversation's observation joins its last message, as TRL's does)."""
        episodes = [self.episode() for _ in prompts]
        started = []
        for i, (prompt, episode) in enumerate(zip(prompts, episodes, strict=True)):
            observation = episode.reset(**{name: values[i] for name, values in columns.items()})
            started.append(prompt if observation is None else with_observation(prompt, observation))
        return started, episodes


def with_observation(prompt, observation: str):
    if isinstance(prompt, list):  # a conversation: the last message's content grows
        return [*prompt[:-1], {**prompt[-1], "content": f"{prompt[-1]['content']}\n{observation}"}]
    return f"{prompt}\n{observation}"


def tool_statistics(episodes: list[Episode]) -> dict[str, float]:
    """TRL's tools/call_frequency (tool calls per completion) and tools/failure_frequency (the share of calls that failed)."""
    calls, failures = sum(e.tool_calls for e in episodes), sum(e.tool_failures for e in episodes)
    return {"tools/call_frequency": calls / max(1, len(episodes)), "tools/failure_frequency": failures / calls if calls else 0.0}


class ChatTurns:
    """A chat template's side of a multi-turn rollout: the text that follows the model's end-of-turn token when a tool
    answers (TRL's _get_tool_suffix_ids: a dummy conversation with and without the tool message), and the terminal
    token the environment writes after the last turn (an eos or pad id that no turn ends with)."""

    def __init__(self, tokenizer, eos_token_ids: list[int]):
        self.tokenizer = tokenizer
        self.end_of_turn_ids = set(end_of_turn_ids(tokenizer))
        self.end_of_turn = min(self.end_of_turn_ids)
        others = [i for i in [*eos_token_ids, tokenizer.pad_token_id] if i is not None and i not in self.end_of_turn_ids]
        if not others:
            raise ConfigError("the tokenizer's end-of-turn token is also its eos and pad token, so a multi-turn chat rollout "
                              "cannot tell a turn's end from the completion's; accepted: a tokenizer with a pad token of its own")
        self.terminal = others[0]

    def tool_turn(self, message: dict[str, str]) -> list[int]:
        """The ids after the model's end-of-turn token that show it the tool message and open its next turn."""
        dummy = [{"role": "user", "content": "dummy"},
                 {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": message["name"],
                                                                                                       "arguments": {}}}]}]
        prefix = self.tokenizer.apply_chat_template(dummy, tokenize=False)
        full = self.tokenizer.apply_chat_template([*dummy, message], tokenize=False, add_generation_prompt=True)
        if not full.startswith(prefix):
            raise ConfigError("the tokenizer's chat template renders an assistant turn differently once a tool message follows "
                              "it; accepted: a template whose conversation so far is a prefix of the next turn's")
        end = self.tokenizer.convert_ids_to_tokens(self.end_of_turn)
        after_end = prefix[prefix.rindex(end) + len(end):] if end in prefix else ""  # ChatML's newline after <|im_end|>
        return self.tokenizer(after_end + full[len(prefix):], add_special_tokens=False)["input_ids"]


class TurnTaker:
    """The chooser of a multi-turn rollout (sample_sequences' choose): for each row still decoding, the next of the
    environment's queued tokens, or else the sampled token, with which the model's turn may end and the row's episode
    answer. env_steps[row] lists the decoding steps whose token the environment wrote. stop_ids: what the decoders stop
    at (the eos ids, or with chat turns the terminal token alone)."""

    def __init__(self, choose, tokenizer, episodes: list[Episode], eos_token_ids: list[int], conversational: bool = False):
        self.choose, self.tokenizer, self.episodes = choose, tokenizer, episodes
        self.chat = ChatTurns(tokenizer, eos_token_ids) if conversational and end_of_turn_ids(tokenizer) else None
        self.stop_ids = eos_token_ids if self.chat is None else [self.chat.terminal]
        self.ends = set(self.stop_ids)
        # what the environment writes when it ends an episode: eos, or the closed turn and the terminal token
        self.closing = [self.stop_ids[0]] if self.chat is None else [self.chat.end_of_turn, self.chat.terminal]
        self.pieces = token_pieces(tokenizer)
        self.finished = [False] * len(episodes)  # the decoders may still ask for a row after its eos: it is padding
        self.queued = [deque() for _ in episodes]
        self.turn = [[] for _ in episodes]  # the token ids of each row's turn so far
        self.turn_text = [""] * len(episodes)
        self.env_steps = [[] for _ in episodes]
        self.tool_turns = [[] for _ in episodes]  # per row (step of the model's end-of-turn, tool message, its ids' count)
        self.turn_open = [False] * len(episodes)  # the model has written since the last tool turn
        self.step = 0

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        tokens = self.choose(logits, rows)
        chosen = tokens.tolist()
        for i, row in enumerate(rows.tolist()):
            if self.finished[row]:
                continue
            if self.queued[row]:
                chosen[i] = self.queued[row].popleft()
                self.env_steps[row].append(self.step)
            else:
                self.take(row, chosen[i])
            self.finished[row] = chosen[i] in self.ends
        self.step += 1
        return torch.tensor(chosen, dtype=tokens.dtype, device=tokens.device)

    def take(self, row: int, token: int) -> None:
        """The model wrote token on row: at the end of a turn, queue the episode's answer (and eos when it is over)."""
        piece = self.pieces[token] if token < len(self.pieces) else ""
        self.turn_open[row] = True
        self.turn[row].append(token)
        self.turn_text[row] += piece
        episode, tail = self.episodes[row], self.turn_text[row]
        if self.chat is not None and token in self.chat.end_of_turn_ids:
            self.end_chat_turn(row, episode)
            return
        if self.chat is not None and isinstance(episode, ToolCalling):
            return  # a chat model's tool call is answered when its turn ends
        # a stop string this token completed, even if the token runs past it (a BPE merge across the stop's end)
        if not any(stop in tail[-len(stop) - len(piece):] for stop in episode.stop_strings):
            return
        reply = episode.respond(self.tokenizer.decode(self.turn[row]))
        self.queued[row].extend(self.tokenizer(reply, add_special_tokens=False)["input_ids"] if reply else [])
        if episode.done:
            self.queued[row].extend(self.closing)
        self.turn[row], self.turn_text[row] = [], ""

    def end_chat_turn(self, row: int, episode: Episode) -> None:
        """A chat model ended its turn: a tool call in it is answered as a tool message and the model's next turn opened;
        any other turn was the answer, and the terminal token ends the completion."""
        called = isinstance(episode, ToolCalling) and TOOL_CALL_CLOSE in self.turn_text[row]
        message = episode.call(self.tokenizer.decode(self.turn[row])) if called else None
        if message is None:
            self.queued[row].append(self.chat.terminal)
        else:
            tool_turn = self.chat.tool_turn(message)
            self.queued[row].extend(tool_turn)
            self.tool_turns[row].append((self.step, message, len(tool_turn)))
            self.turn_open[row] = False
            if episode.done:
                self.queued[row].extend(self.closing)
        self.turn[row], self.turn_text[row] = [], ""

    def completion_messages(self, completion_ids: torch.Tensor) -> list[list[dict[str, Any]]]:
        """Each row's completion `[B, C]` as TRL passes a multi-turn chat completion to reward functions: its assistant
        turns (a tool call parsed into tool_calls) with the tool messages between them, and the last turn, if the model
        wrote one, even cut short by the token budget."""
        conversations = []
        for row, ids in enumerate(completion_ids.tolist()):
            messages, start = [], 0
            for end, tool_message, length in self.tool_turns[row]:
                messages += [self.assistant_turn(ids[start:end + 1]), tool_message]
                start = end + 1 + length
            conversations.append(messages + [self.assistant_turn(ids[start:])] if self.turn_open[row] else messages)
        return conversations

    def assistant_turn(self, ids: list[int]) -> dict[str, Any]:
        return assistant_message(self.tokenizer.decode(ids, skip_special_tokens=True))

    def env_mask(self, width: int) -> torch.Tensor:
        """`[B, width]`: 1 at the completion positions the environment wrote."""
        mask = torch.zeros(len(self.episodes), width)
        for row, steps in enumerate(self.env_steps):
            mask[row, [s for s in steps if s < width]] = 1.0
        return mask


@functools.lru_cache(maxsize=4)
def token_pieces(tokenizer) -> list[str]:
    """Each token id's text on its own (exact for ASCII, which the stop strings are), computed once per tokenizer."""
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
