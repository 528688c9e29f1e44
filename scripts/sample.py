#!/usr/bin/env python
"""Print completions of a causal LM, or two models side by side on the same prompts and seed, or chat with one.

    python scripts/sample.py --model runs/pretrain/model --n 5
    python scripts/sample.py --compare runs/pretrain/model runs/grpo/model --n 8
    python scripts/sample.py --chat                      # turn by turn in the terminal, with the built-in chat model
    python scripts/sample.py --chat --model runs/demo-chat/model --system "Answer inside <answer> tags."

With no --model (and no --compare) the built-in base model is used, built on first use: the chat model for --chat or
for a prompts file of conversations, else the default one.
"""

import argparse
import textwrap

import torch

from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from rlhf_toy.chat import message_text, require_chat_template
from rlhf_toy.data import DATA_DIR, load_prompts
from rlhf_toy.generation.sampling import SamplingConfig, generate_completions
from rlhf_toy.lm.base_model import default_base_model, kind_for
from rlhf_toy.lm.models import load_model, load_tokenizer
from rlhf_toy.rewards.functions import resolve_reward


def parse_args() -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--model", help="Model folder or hub name (default: the cached default base model)")
    parser.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"), help="Two models to show side by side")
    parser.add_argument("--prompts", default=str(DATA_DIR / "prompts_eval.jsonl"), help="JSONL with a prompt field, or .txt, one per line")
    parser.add_argument("--n", type=int, default=5, help="How many prompts (from the top of the file)")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed (the same for both models in --compare)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--reward", help="Also score each completion, e.g. length,format (see train_rlhf.py --reward)")
    parser.add_argument("--target-words", type=int, default=12, help="Target of the length reward")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow a hub model's own code to run (off by default)")
    parser.add_argument("--chat", action="store_true", help="Chat turn by turn in the terminal (the model needs a chat template); "
                                                            "an empty line or end of input ends it, /reset starts over")
    parser.add_argument("--system", help="With --chat: a system message that opens the conversation")
    return parser.parse_args()


def chat(model, tokenizer, sampling: SamplingConfig, system: str | None, read_line=input, show=print) -> list[dict]:
    """A conversation, turn by turn: each user line is appended, the model answers through its chat template (its
    end-of-turn token ends the answer), and its answer is appended. Returns the conversation."""
    require_chat_template(tokenizer, [[{"role": "user", "content": ""}]], "--chat")
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    while True:
        try:
            line = read_line("you> ").strip()
        except EOFError:
            line = ""
        if not line:
            return messages
        if line == "/reset":
            messages = list(opening)
            continue
        messages.append({"role": "user", "content": line})
        answer = generate_completions(model, tokenizer, [messages], sampling)[0].strip()
        messages.append({"role": "assistant", "content": answer})
        show(f"model> {answer}")


@cli
def main() -> None:
    args = parse_args()
    if args.n <= 0:
        raise ConfigError(f"--n must be > 0, got {args.n}")
    if args.model and args.compare:
        raise ConfigError("give either --model or --compare DIR_A DIR_B, not both")
    if args.chat and args.compare:
        raise ConfigError("--chat talks to one model; accepted: --chat with --model DIR (or none: the built-in chat model)")
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    torch.set_num_threads(2)
    if args.chat:
        name = args.model or default_base_model(kind="chat")
        chat(load_model(name, args.trust_remote_code).eval(), load_tokenizer(name, args.trust_remote_code), sampling, args.system)
        return
    prompts = load_prompts(args.prompts)[: args.n]
    reward = resolve_reward(args.reward, target_words=args.target_words) if args.reward else None
    names = args.compare or [args.model or default_base_model(kind=kind_for(prompts))]
    columns = []
    for name in names:
        model, tokenizer = load_model(name, args.trust_remote_code).eval(), load_tokenizer(name, args.trust_remote_code)
        completions = generate_completions(model, tokenizer, prompts, sampling, seed=args.seed)
        scores = reward(prompts, completions) if reward else [None] * len(prompts)
        columns.append((name, completions, scores))
    for name, _, scores in columns:
        if reward:
            print(f"mean reward ({args.reward}) of {name}: {sum(scores) / len(scores):.3f}")
    for i, prompt in enumerate(prompts):
        print(f"[{i}] {message_text(prompt)}")
        for name, completions, scores in columns:
            label = (f"{name}: " if len(columns) > 1 else "") + (f"[{scores[i]:.2f}] " if reward else "")
            print(textwrap.indent(textwrap.fill(label + completions[i].strip(), 100), "    "))
        print()


if __name__ == "__main__":
    main()
