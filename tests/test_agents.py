"""Language models as agents: multi-turn rollouts (the environment's tokens masked out of every loss), tool calls,
the calculator, the text games, and bad input."""

import json

import pytest
import torch
from accelerate import Accelerator

from classic_rl import core
from classic_rl.infra.errors import ConfigError
from rlhf_toy.agents.registry import resolve_agent
from rlhf_toy.agents.text_games import GridGame, make_game, optimal_success_rate, shortest_moves
from rlhf_toy.agents.tools import calculator
from rlhf_toy.agents.turns import (
    Agent,
    ChatTurns,
    Episode,
    ToolCalling,
    assistant_message,
    parse_tool_call,
    plain_text,
    text_messages,
    tool_call_text,
    tool_statistics,
)
from rlhf_toy.algorithms import algorithm_for, config_for
from rlhf_toy.algorithms.ppo import PPOConfig, advantages_and_returns
from rlhf_toy.data import DATA_DIR, load_prompt_rows
from rlhf_toy.generation import rollout as rollout_module
from rlhf_toy.generation import sampling as sampling_module
from rlhf_toy.generation.rollout import Rollout, completion_logprobs, sample_rollout
from rlhf_toy.generation.sampling import RowUniforms, SamplingConfig, encode_prompts
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain
from rlhf_toy.online import train
from rlhf_toy.rewards.functions import BUILTIN_REWARDS, CombinedReward
from rlhf_toy.tasks import task_defaults
from rlhf_toy.tasks.calculator import failure_mode, transcript
from tests.conftest import run_script


@pytest.fixture(scope="module")
def policy_and_tokenizer(nano_dir):
    return load_model(nano_dir).eval(), load_tokenizer(nano_dir)


def two_turn_rollout(tokenizer, turns: list[tuple[str, str, str]]) -> tuple[Rollout, list[list[slice]]]:
    """A rollout built by hand, one row per (model turn 1, environment's answer, model turn 2) of one prompt, and for each
    row the slices of its completion that each model turn and the environment's answer occupy."""
    prompt = "Compute 12 * 3."
    batch = encode_prompts(tokenizer, [prompt] * len(turns), 32, type("M", (), {"config": type("C", (), {"n_positions": 128})()})())
    rows, spans = [], []
    for first, answer, second in turns:
        parts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (first, answer, second)]
        parts[2] = parts[2] + [tokenizer.eos_token_id]
        edges = [0, len(parts[0]), len(parts[0]) + len(parts[1]), sum(map(len, parts))]
        spans.append([slice(edges[i], edges[i + 1]) for i in range(3)])
        rows.append(sum(parts, []))
    width = max(map(len, rows))
    completion_ids = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in rows])
    written = torch.tensor([[1.0] * len(row) + [0.0] * (width - len(row)) for row in rows])
    completion_mask = written.clone()
    for row, (_, env, _) in enumerate(spans):
        completion_mask[row, env] = 0.0
    input_ids = torch.cat([batch["input_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([batch["attention_mask"], written.long()], dim=1)
    rollout = Rollout([prompt] * len(turns), ["?"] * len(turns), input_ids, attention_mask, completion_mask,
                      torch.zeros_like(completion_mask), None, torch.zeros(len(turns), dtype=torch.bool))
    return rollout, spans


@pytest.mark.parametrize("algo", ["grpo", "ppo", "rloo", "reinforce_pp"])
def test_the_environments_tokens_give_no_loss_or_gradient_and_every_model_turn_does(algo, nano_dir, policy_and_tokenizer,
                                                                                    monkeypatch):
    _, tokenizer = policy_and_tokenizer
    # every row in one forward, so one logits tensor holds each row's every position (the grouping is tested elsewhere)
    monkeypatch.setattr(rollout_module, "length_groups", lambda mask: [(torch.arange(len(mask)), mask.shape[1])])
    policy = load_model(nano_dir)
    rollout, spans = two_turn_rollout(tokenizer, [
        (' <tool_call>{"name": "calculator"', "<tool_response>36</tool_response>", " <answer> 36 </answer>"),
        (" <answer> 30", " </answer> the fox", " is wrong")])
    cfg = config_for(algo)(num_generations=2, prompts_per_step=1, max_completion_length=32, **({"num_ppo_epochs": 1} if algo == "ppo" else {}))
    cfg.minibatch_orders = lambda n: [(torch.arange(n),)] * cfg.passes  # rows in batch order, as the logits are read below
    algorithm = algorithm_for(algo)(cfg, policy, lambda: load_model(nano_dir), tokenizer)
    logits_with_grad = []
    policy.lm_head.register_forward_hook(lambda _m, _i, out: out.retain_grad() or logits_with_grad.append(out) if out.requires_grad else None)
    optimizer = torch.optim.SGD([p for m in [policy, *algorithm.modules()] for p in m.parameters()], lr=0.0)
    rewards = torch.tensor([1.0, 0.0])
    algorithm.update(policy, load_model(nano_dir).eval(), optimizer, Accelerator(cpu=True), rollout, rewards, rewards[:, None])

    # one gradient step: one forward of the completions with a gradient (beside the shared prompt's, one position a prompt)
    (logits,) = [out for out in logits_with_grad if out.shape[:2] == rollout.completion_mask.shape]
    per_position = logits.grad.abs().sum(-1)  # [B, C]: how much each completion position's prediction moves the loss
    for row, (first, env, second) in enumerate(spans):
        assert per_position[row, env].eq(0).all()  # the environment's tokens: no term of the loss, no gradient
        assert per_position[row, first].gt(0).all() and per_position[row, second].gt(0).all()  # every model turn's: all of them


def test_gae_runs_across_the_turns_over_the_model_tokens_alone():
    """A completion of 3 model tokens with 2 environment tokens after the first equals one of 3 contiguous tokens."""
    cfg = PPOConfig(gamma=0.9, lam=0.8)
    scores, kl = torch.tensor([2.0]), torch.tensor([[0.1, 0.0, 0.0, 0.2, 0.3]])
    values = torch.tensor([[0.5, 9.0, 9.0, 1.0, 1.5]])  # the environment's positions hold values no term may read
    holey = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]])
    adv, ret = advantages_and_returns(scores, values, kl, holey, 0.5, cfg)
    packed_adv, packed_ret = advantages_and_returns(scores, values[:, [0, 3, 4]], kl[:, [0, 3, 4]], torch.ones(1, 3), 0.5, cfg)
    torch.testing.assert_close(adv[:, [0, 3, 4]], packed_adv)
    torch.testing.assert_close(ret[:, [0, 3, 4]], packed_ret)
    # by hand: r = (-0.05, -0.1, -0.15 + 2); deltas with V = (0.5, 1, 1.5) and V after the end 0
    r, v = [-0.05, -0.1, 1.85], [0.5, 1.0, 1.5]
    deltas = [r[0] + 0.9 * v[1] - v[0], r[1] + 0.9 * v[2] - v[1], r[2] - v[2]]
    a2 = deltas[2]
    a1 = deltas[1] + 0.72 * a2
    a0 = deltas[0] + 0.72 * a1
    torch.testing.assert_close(ret[0, [0, 3, 4]], torch.tensor([a0 + v[0], a1 + v[1], a2 + v[2]]))


def test_last_valid_index_and_valid_first_by_hand():
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert core.last_valid_index(mask).tolist() == [2, 1, 0]
    assert core.valid_first(mask).tolist() == [[0, 2, 1, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    rewards = core.token_rewards(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, 4), mask, 0.1)
    assert rewards.tolist() == [[0, 0, 1, 0], [0, 2, 0, 0], [3, 0, 0, 0]]


class Echo(Episode):
    """Answers every turn ending in "." with " [ok]", and ends the episode at its second answer."""
    stop_strings = (".",)

    def respond(self, turn: str) -> str:
        self.tool_calls += 1
        self.done = self.tool_calls == 2
        return " [ok]"


@pytest.mark.parametrize("fast", [True, False])
def test_a_multi_turn_rollout_puts_the_environments_answers_between_the_turns_and_masks_them(fast, nano_dir, policy_and_tokenizer,
                                                                                             monkeypatch):
    policy, tokenizer = policy_and_tokenizer
    if not fast:
        monkeypatch.setattr(sampling_module, "supports_fast_decode", lambda _model: False)
    episodes = [Echo() for _ in range(6)]
    torch.manual_seed(0)
    rollout = sample_rollout(policy, tokenizer, ["Tell me about Ada."] * 6, SamplingConfig(64), episodes=episodes)
    answer = tokenizer(" [ok]", add_special_tokens=False)["input_ids"]
    for row, episode in enumerate(episodes):
        ids, mask = rollout.completion_ids[row].tolist(), rollout.completion_mask[row]
        env = [j for j in range(len(ids)) if mask[j] == 0 and rollout.attention_mask[row, rollout.prompt_length + j] == 1]
        if episode.done:  # two answers, each right after a model token that ends in ".", then an eos the model did not write
            assert [ids[j] for j in env] == answer + answer + [tokenizer.eos_token_id]
            assert rollout.completions[row].count("[ok]") == 2 and not rollout.is_truncated[row]
        assert all(mask[j] == 1 for j in range(env[0])) if env else True
    logp, _ = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
    torch.testing.assert_close(logp, rollout.sampling_logprobs, atol=2e-5, rtol=0)  # the model's tokens: as the sampler drew them
    assert any(e.done for e in episodes)


def test_both_decoders_draw_the_same_multi_turn_rollout(policy_and_tokenizer, monkeypatch):
    policy, tokenizer = policy_and_tokenizer

    def rollout():
        uniforms = RowUniforms(3, 0, 4, "cpu")  # a row's draws whichever rows still decode beside it (the decoders differ there)
        return sample_rollout(policy, tokenizer, ["Tell me about Ada."] * 4, SamplingConfig(48), uniforms=uniforms,
                              episodes=[Echo() for _ in range(4)])

    fast = rollout()
    monkeypatch.setattr(sampling_module, "supports_fast_decode", lambda _model: False)
    slow = rollout()
    assert fast.completions == slow.completions and torch.equal(fast.completion_mask, slow.completion_mask)


def mul(a: int, b: int) -> int:
    """Multiplies.

    Args:
        a: a factor
        b: the other
    """
    return a * b


class ScriptedModel:
    """A chooser that writes each row's script of token ids, whatever the logits (the model's side of a rollout by hand)."""

    def __init__(self, scripts: list[list[int]]):
        self.scripts = [list(script) for script in scripts]

    def __call__(self, logits, rows):
        return torch.tensor([self.scripts[row].pop(0) if self.scripts[row] else 0 for row in rows.tolist()])


@pytest.mark.parametrize("fast", [True, False])
def test_a_chat_models_tool_call_is_answered_through_its_chat_template(fast, nano_chat_dir, monkeypatch):
    """TRL's multi-turn chat rollout: the model ends its turn after the call, the tool's answer is a tool message the
    template renders, and the model's next turn follows the generation prompt; what the policy reads is the template's
    rendering of the whole conversation."""
    policy, tokenizer = load_model(nano_chat_dir).eval(), load_tokenizer(nano_chat_dir)
    if not fast:
        monkeypatch.setattr(sampling_module, "supports_fast_decode", lambda _model: False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    call = tool_call_text("mul", {"a": 2, "b": 3})  # short: the nano tokenizer spends a token on most characters
    written_by_model = [tokenizer(call, add_special_tokens=False)["input_ids"] + [end], tokenizer("6", add_special_tokens=False)["input_ids"] + [end]]
    tool_turn = ChatTurns(tokenizer, [tokenizer.eos_token_id]).tool_turn({"role": "tool", "name": "mul", "content": "6"})
    script = written_by_model[0] + [0] * len(tool_turn) + written_by_model[1]  # the chooser draws at the environment's steps too
    monkeypatch.setattr(SamplingConfig, "chooser", lambda self, uniforms=None: ScriptedModel([script]))
    prompt = [{"role": "user", "content": "Compute 2 * 3."}]
    episodes = Agent([mul]).start([prompt], {})[1]
    rollout = sample_rollout(policy, tokenizer, [prompt], SamplingConfig(104), episodes=episodes)
    conversation = [*prompt, {"role": "assistant", "content": call}, {"role": "tool", "content": "6"},
                    {"role": "assistant", "content": "6"}]
    terminal = tokenizer.decode([tokenizer.eos_token_id])
    written = rollout.attention_mask[0].bool()
    assert tokenizer.decode(rollout.input_ids[0][written]) == tokenizer.apply_chat_template(conversation, tokenize=False).rstrip("\n") + terminal
    assert episodes[0].tool_calls == 1 and episodes[0].tool_failures == 0 and not rollout.is_truncated[0]
    model_tokens = rollout.completion_ids[0][rollout.completion_mask[0].bool()].tolist()
    assert model_tokens == sum(written_by_model, [])  # both end-of-turn tokens trained; the tool turn and the terminal token not
    assert rollout.completion_messages == [[  # what reward functions receive, as TRL passes a multi-turn completion
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "mul", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "name": "mul", "content": "6"}, {"role": "assistant", "content": "6"}]]


def test_reward_functions_receive_a_chat_rollouts_turns_as_messages_even_a_turn_cut_short(nano_chat_dir, monkeypatch):
    """Three rows: a tool call then the answer; the answer at once; an answer the token budget cuts. A TRL reward
    function reads the messages; a built-in rule reads the last one."""
    tokenizer = load_tokenizer(nano_chat_dir)
    turns = ChatTurns(tokenizer, [tokenizer.eos_token_id])

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    end, call = turns.end_of_turn, tool_call_text("mul", {"a": 2, "b": 3})
    tool_turn = turns.tool_turn({"role": "tool", "name": "mul", "content": "6"})
    answer = "<answer>6</answer>"
    scripts = [ids(call) + [end] + [0] * len(tool_turn) + ids(answer) + [end], ids(answer) + [end], ids("7") * 200]
    monkeypatch.setattr(SamplingConfig, "chooser", lambda self, uniforms=None: ScriptedModel(scripts))
    prompts = [[{"role": "user", "content": "Compute 2 * 3."}]] * 3
    rollout = sample_rollout(load_model(nano_chat_dir).eval(), tokenizer, prompts, SamplingConfig(106),
                             episodes=Agent([mul]).start(prompts, {})[1])
    cut = rollout.completion_messages[2][0]["content"]
    assert rollout.completion_messages == [
        [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "mul", "arguments": {"a": 2, "b": 3}}}]},
         {"role": "tool", "name": "mul", "content": "6"}, {"role": "assistant", "content": answer}],
        [{"role": "assistant", "content": answer}],
        [{"role": "assistant", "content": cut}]]
    assert set(cut) == {"7"} and rollout.is_truncated.tolist() == [False, False, True]
    seen = []

    def turns_taken(prompts, completions, **columns):
        seen.extend(completions)
        return [float(sum(m["role"] == "assistant" for m in c)) for c in completions]

    reward = CombinedReward({"turns": turns_taken, "correct": BUILTIN_REWARDS["correct"]}, [1.0, 1.0])
    components = reward.score(prompts, rollout.reward_completions, answer=["6", "6", "6"])[1]
    assert seen == rollout.completion_messages and components["turns"] == [2.0, 1.0, 1.0]
    assert components["correct"] == [1.0, 1.0, 0.0]  # the rule judges the last assistant turn, not the tool's answer


def test_a_turn_is_parsed_as_trl_parses_it_a_well_formed_call_into_tool_calls_anything_else_into_content():
    call = tool_call_text("mul", {"a": 2, "b": 3})
    assert assistant_message(f" Let me multiply. {call} ") == {
        "role": "assistant", "content": "Let me multiply.", "tool_calls": [{"type": "function", "function": {"name": "mul", "arguments": {"a": 2, "b": 3}}}]}
    for text in ('<tool_call>{"name": mul}</tool_call>', "<tool_call>", " 6 "):
        assert assistant_message(text) == {"role": "assistant", "content": text.strip()}


QWEN_TOOL_TEMPLATE = (  # Qwen 2.5's chat template, its tool parts: the call inside the assistant turn, the answer in a user turn
    "{% for message in messages %}{% if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n{% elif message.tool_calls %}<|im_start|>assistant{% for c in message.tool_calls %}"
    "\n<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_the_tool_turn_is_what_the_chat_template_writes_after_the_call_and_a_template_that_rewrites_the_past_is_one_line(nano_chat_dir):
    tokenizer = load_tokenizer(nano_chat_dir)
    tokenizer.chat_template = QWEN_TOOL_TEMPLATE
    turns = ChatTurns(tokenizer, [tokenizer.eos_token_id])
    answer = tokenizer.decode(turns.tool_turn({"role": "tool", "name": "calculator", "content": "36"}))
    assert answer == "\n<|im_start|>user\n<tool_response>\n36\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert turns.terminal == tokenizer.eos_token_id != turns.end_of_turn
    tokenizer.chat_template = "{% for m in messages | reverse %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    with pytest.raises(ConfigError, match="renders an assistant turn differently once a tool message follows it"):
        turns.tool_turn({"role": "tool", "name": "calculator", "content": "36"})


def test_tool_calls_are_parsed_run_and_answered_and_their_failures_are_one_line():
    def broken(x: int) -> str:
        raise RuntimeError("disk on fire\nTraceback lines the model never sees")

    episode = ToolCalling([calculator, broken], max_calls=4)
    respond = episode.respond
    assert respond(tool_call_text("calculator", {"expression": "12 * (3 + 4) - 5"})) == "<tool_response>79</tool_response>"
    assert respond(tool_call_text("broken", {"x": 1})) == "<tool_response>error: RuntimeError: disk on fire</tool_response>"
    assert respond(tool_call_text("search", {"q": "fox"})).startswith("<tool_response>error: ValueError: no tool named 'search'")
    assert respond('<tool_call>{"name": calculator}</tool_call>').startswith("<tool_response>error: ValueError: the tool call is not")
    assert (episode.tool_calls, episode.tool_failures, episode.done) == (4, 3, False)
    assert respond(tool_call_text("calculator", {"expression": "1 + 1"})) == "" and episode.done  # past the limit: the end
    assert tool_statistics([episode, ToolCalling([])]) == {"tools/call_frequency": 2.0, "tools/failure_frequency": 0.75}
    assert parse_tool_call('I will call <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>') == ("f", {"a": 1})


def test_the_calculator_and_the_ways_an_answer_goes_wrong_by_hand():
    assert calculator("(1244 + 102) * 41") == str((1244 + 102) * 41) and calculator("-3 * 4") == "-12"
    for bad in ("2 ** 10", "__import__('os')", "1 / 2", "12 *"):
        with pytest.raises(ValueError, match="calculator"):
            calculator(bad)
    call = tool_call_text("calculator", {"expression": "347 * 29"})
    right, wrong_arg = call + "<tool_response>10063</tool_response> <answer> 10063 </answer>", call.replace("347", "374")
    cases = {right: "right", "<answer> 10062 </answer>": "no call, wrong guess",
             wrong_arg + "<tool_response>10846</tool_response> <answer> 10846 </answer>": "wrong argument",
             call + "<tool_response>10063</tool_response> <answer> 10036 </answer>": "misread result",
             '<tool_call>{"name": "calculator", "arguments": {"expression": 347 * 29}}</tool_call><tool_response>error: ValueError: '
             'the tool call is not JSON</tool_response> <answer> 1 </answer>': "failed call",
             call + "<tool_response>10063</tool_response>": "no answer"}
    for completion, mode in cases.items():
        assert failure_mode("Compute 347 * 29.", completion, "10063") == mode, completion


def test_the_calculator_transcripts_call_it_right_sometimes_and_badly_often():
    import random
    rng = random.Random(0)
    modes = [failure_mode(f"Compute {e}.", transcript(e, rng, 0.5, 0.25), calculator(e))
             for e in (f"{rng.randint(100, 9999)} * {rng.randint(11, 99)}" for _ in range(2000))]
    share = {mode: modes.count(mode) / len(modes) for mode in set(modes)}
    assert 0.5 < share["right"] < 0.56 and 0.18 < share["wrong argument"] < 0.26 and 0.2 < share["no call, wrong guess"] < 0.25


def test_the_calculator_transcripts_as_conversations_turn_back_into_the_transcripts():
    responses = [row["response"] for row in load_prompt_rows(DATA_DIR / "calculator_sft.jsonl")]
    conversations = [text_messages(response) for response in responses]
    assert all(plain_text(c) == response for c, response in zip(conversations, responses, strict=True))
    kinds = {tuple(m["role"] + ("+call" if "tool_calls" in m else "") for m in c) for c in conversations}
    assert kinds == {("assistant",), ("assistant+call", "tool", "assistant"), ("assistant", "tool", "assistant")}
    malformed = next(c for c in conversations if len(c) == 3 and "tool_calls" not in c[0])  # a call TRL would not parse
    assert malformed[0]["content"].startswith("<tool_call>") and malformed[1]["name"] == "tool"
    assert malformed[1]["content"].startswith("error: ValueError: the tool call is not")


def test_the_maze_as_a_text_game_by_hand():
    game = GridGame("maze")  # the bottom rows: ".####..." (48-55) above "......#G" (56-63)
    assert game.reset(start=54).endswith(".####... ......#G. You are on 54.")  # the maze's layout, then the player's square
    assert game.respond(" up") == " 54" and not game.done  # a wall above: the player stays
    assert game.respond("right") == " 55"
    assert game.respond(" down") == " 63 goal" and game.done
    assert game.get_reward() == pytest.approx(shortest_moves("maze", 54) / 3) == pytest.approx(2 / 3)  # 2 moves were enough
    game.reset(start=55)
    assert game.respond(" down") == " 63 goal" and game.get_reward() == 1.0  # a shortest path
    game.reset(start=55)
    assert game.respond(" jump") == " illegal" and game.done and game.get_reward() == 0.0


def test_taxi_as_a_text_game_by_hand():
    game = make_game("taxi")  # seed 0: the taxi in row 3, column 0 (15), a wall on its east; the passenger at B
    assert game.reset(seed=0).endswith("Y|.:.|B:.. The taxi is on 15, the passenger on 23, going to 20.")
    wasted = [(" east", " 15"), (" pickup", " no")]  # into the wall; nobody to pick up: two moves that change nothing
    to_passenger = [(" north", " 10"), (" east", " 11"), (" east", " 12"), (" east", " 13"), (" south", " 18"), (" south", " 23"),
                    (" pickup", " aboard")]
    to_destination = [(" north", " 18"), (" north", " 13"), (" west", " 12"), (" west", " 11"), (" west", " 10"), (" south", " 15"),
                      (" south", " 20")]
    for move, answer in wasted + to_passenger + to_destination:
        assert game.respond(move) == answer and not game.done, move
    assert game.respond(" dropoff") == " delivered goal" and game.done
    assert shortest_moves("taxi", game.start) == 15 and game.get_reward() == pytest.approx(15 / 17)
    game.reset(seed=0)
    game.env.unwrapped.s = game.state = game.env.unwrapped.encode(4, 3, 4, 2)  # at B with the passenger aboard, going to Y
    assert game.respond(" dropoff") == " dropped" and game.where() == "The taxi is on 23, the passenger on 23, going to 20."
    assert game.respond(" left") == " illegal" and game.done and game.get_reward() == 0.0  # the grid games' moves are not Taxi's


def test_a_text_game_runs_out_of_time_at_its_move_limit():
    game = make_game("taxi")
    game.reset(seed=0)
    answers = [game.respond(" east") for _ in range(30)]  # into the wall, 30 times: Taxi's limit here (gymnasium's is 200)
    assert answers[-2:] == [" 15", " 15 time"] and game.done and game.get_reward() == 0.0


def test_value_iteration_wins_frozenlake_three_quarters_of_the_shipped_eval_episodes():
    rows = load_prompt_rows(DATA_DIR / "frozenlake_eval.jsonl")
    assert len(rows) == 1000 and 0.72 < optimal_success_rate("frozenlake", rows) < 0.78
    assert optimal_success_rate("maze", load_prompt_rows(DATA_DIR / "maze_eval.jsonl")[:50]) == 1.0
    assert optimal_success_rate("taxi", load_prompt_rows(DATA_DIR / "taxi_eval.jsonl")[:50]) == 1.0


class NumberObservation:
    """A user environment (TRL's protocol) whose reset returns a number, not text."""

    def reset(self, **_):
        return 7

    def poke(self, times: int) -> str:
        """Pokes.

        Args:
            times: how often
        """
        return "ouch" * times


def test_a_user_environments_methods_are_its_tools_and_a_non_text_observation_is_one_line():
    agent = resolve_agent("calculator", "tests.test_agents:NumberObservation", 3)
    assert sorted(agent.episode().tools) == ["calculator", "poke"]
    with pytest.raises(ConfigError, match="NumberObservation.reset\\(\\) returned int; accepted: a str"):
        agent.start(["hi"], {})
    assert Agent().start(["hi"], {})[0] == ["hi"]


@pytest.mark.parametrize("args, message", [
    (["--task", "calculator", "--max-tool-calling-iterations", "0"], "--max-tool-calling-iterations must be >= 1, got 0"),
    (["--tools", "abacus"], "unknown --tools 'abacus'; accepted: calculator, FILE.py:NAME"),
    (["--environment-factory", "chess"], "unknown --environment-factory 'chess'; accepted: frozenlake, maze, taxi"),
    (["--reward", "environment"], "--reward environment reads each rollout's environment; add --environment-factory"),
    (["--environment-factory", "tests.test_agents:NumberObservation"], "returned int; accepted: a str"),
])
def test_bad_agent_input_is_one_line_and_exit_2(args, message, nano_dir, tmp_path, monkeypatch, capsys):
    code, _, err = run_script("train_rlhf.py", ["--model", nano_dir, "--steps", "1", "--run-dir", str(tmp_path / "run"), *args],
                              monkeypatch, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_the_task_list_names_the_agent_tasks(monkeypatch, capsys):
    code, _, err = run_script("train_rlhf.py", ["--task", "nope"], monkeypatch, capsys)
    assert code == 2 and all(task in err for task in ("calculator", "frozenlake", "maze", "taxi"))
    assert json.loads((DATA_DIR / "maze_eval.jsonl").read_text().splitlines()[0])["start"] >= 0


@pytest.fixture(scope="module")
def maze_run(nano, tmp_path_factory):
    """A nano model pretrained for seconds on maze transcripts, then 40 GRPO steps on the maze: (run folder, summary)."""
    root = nano[0]
    if not (root / "maze" / "summary.json").is_file():
        pretrain(PretrainConfig(preset="nano", data_dir=str(root / "data"), transcripts="maze", vocab_size=400, batch_size=16,
                                max_steps=300, n_positions=256, warmup_steps=10, learning_rate=3e-3, min_lr_ratio=0.1, eval_every=50,
                                run_dir=str(root / "maze"), overwrite=True))
    run_dir = tmp_path_factory.mktemp("maze") / "run"
    fields = {**task_defaults("maze", "grpo"), "model": str(root / "maze" / "model"), "prompts": str(root / "data" / "maze_train.jsonl"),
              "eval_prompts": str(root / "data" / "maze_eval.jsonl"), "steps": 40, "prompts_per_step": 4, "num_generations": 4,
              "max_completion_length": 64, "eval_samples_per_prompt": 2, "eval_every": 0, "learning_rate": 1e-3,
              "log_completions_every": 0, "run_dir": str(run_dir)}
    return run_dir, train(config_for("grpo")(**fields))


@pytest.mark.slow  # 30 s: pretraining and 40 GRPO steps (make test-slow)
def test_grpo_teaches_a_language_model_the_maze_through_its_turns(maze_run):
    _, summary = maze_run
    assert summary["optimal_success_rate"] == 1.0
    assert summary["success_rate_after"] > summary["success_rate_before"] + 0.2, summary
    assert summary["tool_calls_per_problem"] == summary["tool_calls_per_problem_after"] > 0 and 0 <= summary["tool_failure_rate_after"] < 0.1


@pytest.mark.slow
def test_a_q_table_and_the_language_model_on_the_same_episodes(maze_run, monkeypatch, capsys):
    run_dir, summary = maze_run
    code, out, _ = run_script("compare_game_agents.py", ["--lm-run", str(run_dir), "--q-learning-steps", "20000"], monkeypatch, capsys)
    table = json.loads((run_dir / "agents.json").read_text())
    assert code == 0 and [row["method"] for row in table["rows"]] == [
        "value iteration (the env's model)", "Q-learning (epsilon-greedy)", "language model, before RL", "language model, after GRPO",
        "language model, before RL, greedy", "language model, after GRPO, greedy"]
    assert table["rows"][0]["success_rate"] == 1.0 and table["rows"][3]["success_rate"] == summary["success_rate_after"]
    assert all(0 <= row["success_rate"] <= 1 for row in table["rows"][4:]) and table["rows"][5]["env_steps"] == table["rows"][3]["env_steps"]
    assert table["rows"][3]["env_steps"] > 40 * 16  # 40 steps of 16 episodes, each at least a move
    assert "| value iteration (the env's model) | 1.000 | 0 |" in out


@pytest.mark.parametrize("task", ["calculator", "calculator-chat"])
def test_the_calculator_tasks_report_pass_at_1_with_and_without_the_tool_and_how_answers_went_wrong(task, nano, tmp_path, monkeypatch, capsys):
    """The task's whole path on a nano model pretrained for seconds on the transcripts (as conversations for the chat
    task): summary.json's keys, failure modes that add up, and samples written as standard completions."""
    root = nano[0]
    model = root / task / "model"
    if not (model / "config.json").is_file():
        pretrain(PretrainConfig(preset="nano", data_dir=str(root / "data"), transcripts="calculator", chat=task == "calculator-chat",
                                vocab_size=400, batch_size=16, max_steps=60, warmup_steps=10, learning_rate=3e-3, eval_every=60,
                                run_dir=str(root / task), overwrite=True))
    data = root / "data" / task.replace("-", "_")
    args = ["--task", task, "--model", str(model), "--prompts", f"{data}_train.jsonl", "--eval-prompts", f"{data}_eval.jsonl",
            "--steps", "2", "--prompts-per-step", "2", "--num-generations", "2", "--eval-samples-per-prompt", "2", "--pass-at-k", "2",
            "--eval-every", "0", "--log-completions-every", "0", "--run-dir", str(tmp_path / "run")]
    code, _, err = run_script("train_rlhf.py", args, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"pass_at_1_before", "pass_at_1_after", "pass_at_1_no_tool_after", "tool_calls_per_problem"} <= summary.keys()
    for when in ("before", "after", "no_tool_after"):
        assert sum(summary[f"failure_modes_{when}"].values()) == pytest.approx(1.0)
    samples = json.loads((tmp_path / "run" / "eval_samples.json").read_text())["after"]
    assert len(samples) == 32 and not any("<|im_" in row["completion"] for row in samples)
    assert all(isinstance(row["prompt"], list) == (task == "calculator-chat") for row in samples)
