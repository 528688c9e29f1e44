"""Causal-LM pretraining of the base policy on the project's corpus (nanoGPT's recipe, small).

    texts = stories/descriptions/facts + "Question: ...\\nAnswer: response" pairs, each + eos
    train a byte-level BPE on them; pack token streams into blocks of n_positions
    AdamW (decay on matrices and embeddings only), linear warmup then cosine, grad clipping
    every eval_every steps: held-out loss; at the end: save_pretrained(model + tokenizer)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_choice, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.infra.plots import plot_lines
from classic_rl.infra.run_folder import RunFields, start_run, write_json
from rlhf_toy import data
from rlhf_toy.agents import text_games
from rlhf_toy.agents.text_games import GAMES, game_rows
from rlhf_toy.agents.turns import text_messages
from rlhf_toy.chat import chatml, format_prompt
from rlhf_toy.distributed import in_processes, require_even_split
from rlhf_toy.lm.models import (
    ARCHITECTURES,
    MODEL_PRESETS,
    build_model,
    load_model,
    model_writer,
    num_parameters,
    train_tokenizer,
)
from rlhf_toy.precision import PRECISIONS, set_up_precision
from rlhf_toy.supervised import SupervisedRun, train_supervised

TRANSCRIPTS = ("calculator", *GAMES)  # the agent tasks with base models of their own


@dataclass
class PretrainConfig(RunFields):
    preset: str = config_field("tiny", f"Model size: {', '.join(MODEL_PRESETS)}")
    arch: str = config_field("gpt2", f"Architecture: {', '.join(ARCHITECTURES)} (both sample with the fast decoder)")
    seed: int = config_field(0, "Seeds python, numpy, torch and batch order")
    data_dir: str = config_field(str(data.DATA_DIR), "Folder with pretrain.jsonl and, optionally, sft.jsonl (scripts/make_data.py "
                                                     "writes the shipped ones)")
    arithmetic: bool = config_field(False, "Read arithmetic_sft.jsonl's worked solutions instead of the stories and answers, "
                                           "with every digit its own token (the arithmetic base model of --task arithmetic)")
    chat: bool = config_field(False, "Read the prompt/response pairs as conversations in ChatML, with its special tokens and "
                                     "chat template in the tokenizer (the built-in chat model of --task chat)")
    transcripts: str | None = config_field(None, f"Pretrain on an agent task's transcripts alone: {', '.join(TRANSCRIPTS)} (the "
                                                 "base model of --task NAME)")
    vocab_size: int = config_field(2048, "BPE vocabulary to ask for (a small corpus may yield fewer tokens)")
    n_positions: int = config_field(128, "Context length: the length of the packed training blocks, the longest row without packing")
    packing: bool = config_field(True, "Pack the texts into blocks of n_positions tokens, cutting them at the blocks' edges (TRL's "
                                       "SFTConfig packing); false: each text in a row of its own from position 0, as a prompt is seen "
                                       "when sampled, padded to the batch's longest")
    batch_size: int = config_field(32, "Blocks (rows, without packing) per optimizer step")
    max_steps: int = config_field(400, "Optimizer steps (tiny: held-out loss 1.498 after 400, 70 s in bf16 on a slow EPYC; bench/base-model-and-demo.md)")
    learning_rate: float = config_field(5e-3, "Peak AdamW learning rate (tiny models take a large one)")
    min_lr_ratio: float = config_field(0.0, "Cosine decays to learning_rate * this")
    warmup_steps: int = config_field(30, "Linear warmup steps")
    weight_decay: float = config_field(0.1, "AdamW weight decay on matrices and embeddings")
    grad_clip: float = config_field(1.0, "Global gradient-norm clip")
    val_fraction: float = config_field(0.05, "Share of documents held out for the validation loss")
    eval_every: int = config_field(200, "Evaluate held-out loss every this many steps")
    max_train_s: float | None = config_field(None, "Stop after the step that spends this many seconds of training (a budget of "
                                                   "wall time; the schedule still spans the steps)")
    precision: str = config_field("auto", "Training passes in fp32 or bf16 autocast; auto = bf16 where the CPU/GPU has "
                                          "bf16 units, else fp32 (held-out loss is always computed in fp32)")
    torch_threads: int = config_field(2, "torch.set_num_threads (matmuls of this size use both cores)")
    cpu: bool = config_field(False, "Train on CPU even when an accelerator is present")
    run_dir: str = config_field("runs/pretrain", "Output folder (model/ holds the save_pretrained model and tokenizer)")

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in MODEL_PRESETS:
            raise ConfigError(f"unknown --preset {self.preset!r}; accepted: {', '.join(MODEL_PRESETS)}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown --arch {self.arch!r}; accepted: {', '.join(ARCHITECTURES)}")
        require_choice(precision=(self.precision, PRECISIONS))
        if self.transcripts is not None:
            require_choice(transcripts=(self.transcripts, TRANSCRIPTS))
        require_positive(vocab_size=self.vocab_size, n_positions=self.n_positions, batch_size=self.batch_size,
                         max_steps=self.max_steps, learning_rate=self.learning_rate, grad_clip=self.grad_clip,
                         eval_every=self.eval_every, torch_threads=self.torch_threads, max_train_s=self.max_train_s)
        if not 0 < self.val_fraction < 1 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ConfigError("--val-fraction must be in (0, 1), --min-lr-ratio in [0, 1] and --warmup-steps >= 0")


GAME_TRANSCRIPTS = 8_000  # episodes of each game's corpus
# the share of each game's moves played at random. Taxi's episodes are twice as long and its moves six: at 0.3 a
# corpus episode took a shortest route one time in a hundred and the base model delivered by one 0.00 of the time
# (0.10 after 200 GRPO steps); at 0.1, 0.31 before and 0.94 after 50 steps (bench/agents.md)
GAME_EPSILON = {"frozenlake": 0.3, "maze": 0.3, "taxi": 0.1}


def training_texts(data_dir: str, arithmetic: bool = False, chat: bool = False, transcripts: str | None = None) -> list[str]:
    """Plain documents plus prompt/response pairs in the policy's template (the plain one, or with chat ChatML turns,
    each ended by its end-of-turn token); with arithmetic, the worked solutions alone (12,000 of them mixed into the
    stories left the tiny model unable to read the operands' digits, held-out pass@8 3%; 40,000 alone and 1200 steps:
    pass@8 91-94%); with transcripts, an agent task's alone: the calculator's from data/, a game's played here
    (text_games.transcripts, epsilon-greedy around the optimal policy, seeds apart from the task's)."""
    if transcripts in GAMES:
        rng = random.Random(0)
        return text_games.transcripts(transcripts, game_rows(transcripts, GAME_TRANSCRIPTS, 100_000, rng), GAME_EPSILON[transcripts], rng)
    def dialogues(name: str) -> list[str]:
        rows = data.load_rows(Path(data_dir) / f"{name}.jsonl", ["prompt", "response"])
        if chat:  # the calculator's turns as the template writes a tool call and its answer, others one answer each
            to_messages = tool_conversation if transcripts == "calculator" else answer_conversation
            return [chatml(to_messages(r["prompt"], r["response"])) for r in rows]
        return [f"{format_prompt(r['prompt'])} {r['response']}" for r in rows]

    if arithmetic or transcripts == "calculator":
        return dialogues("arithmetic_sft" if arithmetic else "calculator_sft")
    documents = [row["text"] for row in data.load_rows(Path(data_dir) / "pretrain.jsonl", ["text"])]
    if not (Path(data_dir) / "sft.jsonl").is_file():  # a folder of one's own documents (the shipped one has both)
        print(f"{data_dir} has no sft.jsonl: pretraining on the documents of pretrain.jsonl alone, no prompt/response pairs")
        return documents
    return documents + dialogues("sft")


def answer_conversation(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def tool_conversation(prompt: str, response: str) -> list[dict]:
    """A transcript with tool calls as a chat conversation: the call in an assistant turn, its answer a tool message."""
    return [{"role": "user", "content": prompt}, *text_messages(response)]


def cosine_with_warmup(step: int, cfg: PretrainConfig) -> float:
    """Learning-rate multiplier: linear warmup, then cosine down to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings (dim >= 2), none on biases and LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


class TokenRows:
    """Texts as rows of token ids: packed into blocks `[n, n_positions]`, or one text a row from position 0
    (data.pad_rows). batch(rows `[b]`) -> (input ids, labels `[b, L]`, -100 where no token is predicted)."""

    def __init__(self, token_lists: list[list[int]], tokenizer, n_positions: int, packing: bool):
        if packing:
            self.ids, self.lengths = data.pack(token_lists, tokenizer.eos_token_id, n_positions), None
        else:
            self.ids, self.lengths = data.pad_rows(token_lists, tokenizer.eos_token_id, tokenizer.pad_token_id, n_positions)

    def __len__(self) -> int:
        return len(self.ids)

    def num_tokens(self) -> int:
        return self.ids.numel() if self.lengths is None else int(self.lengths.sum())

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lengths is None:
            blocks = self.ids[rows]  # every token is predicted: the labels are the inputs
            return blocks, blocks
        return data.padded_batch(self.ids, self.lengths, rows)


@torch.inference_mode()
def heldout_loss(model, rows: TokenRows, batch_size: int, device) -> float:
    """Mean next-token loss over every predicted token of the held-out rows."""
    model.eval()
    total, count = 0.0, 0
    order = torch.arange(len(rows)) if rows.lengths is None else rows.lengths.argsort()  # like lengths together: less padding
    for chunk in order.split(batch_size):
        ids, labels = (t.to(device) for t in rows.batch(chunk))
        predicted = int((labels[:, 1:] != -100).sum())
        total, count = total + model(input_ids=ids, labels=labels).loss.item() * predicted, count + predicted
    model.train()
    return total / count


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train tokenizer and model; writes run_dir/{model/, config.json, metrics.jsonl, summary.json, loss.png}. In this
    process, or as one of several (accelerate launch), each taking its share of every batch of blocks; returns the
    summary (the main process's; {} on the others)."""
    return in_processes(run_pretraining, cfg)


def run_pretraining(cfg: PretrainConfig, accelerator) -> dict[str, Any]:
    texts = training_texts(cfg.data_dir, cfg.arithmetic, cfg.chat, cfg.transcripts)  # bad data is reported before the run folder is made
    require_even_split(cfg.batch_size, accelerator.num_processes, "--batch-size")
    run_dir, checkpoints = start_run(cfg, main_process=accelerator.is_main_process)
    accelerator.wait_for_everyone()  # the main process has checked and created the run folder
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(texts), generator=generator).tolist()
    n_val = max(1, int(len(texts) * cfg.val_fraction))
    tokenizer = train_tokenizer([texts[i] for i in order[n_val:]], cfg.vocab_size, split_digits=cfg.arithmetic or cfg.transcripts == "calculator",
                                chat=cfg.chat, tool_tags=cfg.transcripts == "calculator")
    encode = lambda idx: tokenizer([texts[i] for i in idx], add_special_tokens=False).input_ids  # noqa: E731
    train_rows = TokenRows(encode(order[n_val:]), tokenizer, cfg.n_positions, cfg.packing)
    val_rows = TokenRows(encode(order[:n_val]), tokenizer, cfg.n_positions, cfg.packing)

    model = (load_model(str(checkpoints.folder / "model")) if checkpoints.resumed
             else build_model(cfg.preset, tokenizer, cfg.n_positions, cfg.arch))
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=(0.9, 0.95), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, cfg))
    batches = data.ShuffledBatches(len(train_rows), cfg.batch_size, generator)
    logger = RunLogger(run_dir) if accelerator.is_main_process else None
    checkpoints.track(logger=logger, optimizer=optimizer, scheduler=scheduler, batches=batches)
    saved = checkpoints.restore() or {"train_s": 0.0}
    tokens_per_step = min(cfg.batch_size, len(train_rows)) * train_rows.num_tokens() / len(train_rows)  # on average
    precision = set_up_precision(cfg.precision, accelerator.device, model)
    trained, optimizer = accelerator.prepare(model.to(accelerator.device), optimizer)
    run = SupervisedRun(trained, optimizer, batches, checkpoints, logger, accelerator, precision, model_writer(model, tokenizer),
                        cfg.max_steps, cfg.grad_clip, cfg.eval_every, f"pretrain {cfg.preset}", scheduler, cfg.max_train_s,
                        rates=lambda step, s: {"train/tokens_per_s": step * tokens_per_step / s})

    def loss_of(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        ids, labels = (t.to(accelerator.device) for t in train_rows.batch(rows))
        return trained(input_ids=ids, labels=labels).loss, {}

    if accelerator.is_main_process:
        print(f"pretraining {cfg.arch} {cfg.preset}: {num_parameters(model) / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
              f"{train_rows.num_tokens():,} train / {val_rows.num_tokens():,} held-out tokens, device {accelerator.device}, {precision}, "
              f"{accelerator.num_processes} process(es)")
    train_s = train_supervised(run, loss_of, lambda: {"eval/loss": heldout_loss(model, val_rows, cfg.batch_size, accelerator.device)},
                               lambda m: {"loss": f"{m['train/loss']:.3f}", "tok_s": f"{m['train/tokens_per_s']:.0f}"}, saved["train_s"])
    return finish(cfg, model, tokenizer, logger, run_dir, tokens_per_step, train_s, precision) if accelerator.is_main_process else {}


def finish(cfg: PretrainConfig, model, tokenizer, logger: RunLogger, run_dir: Path, tokens_per_step: float, train_s: float,
           precision: str) -> dict[str, Any]:
    """Save the model; write summary.json and loss.png."""
    model_dir = run_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    val_loss = logger.series("eval/loss")[1][-1]
    steps = logger.rows[-1]["step"]  # max_steps, or fewer once max_train_s was spent
    summary = {"arch": cfg.arch, "preset": cfg.preset, "chat": cfg.chat, "transcripts": cfg.transcripts, "params": num_parameters(model), "vocab_size": len(tokenizer), "steps": steps,
               "train_tokens": round(steps * tokens_per_step), "val_loss": val_loss, "perplexity": math.exp(val_loss),
               "train_loss_final": logger.rows[-1]["train/loss"], "tokens_per_s": steps * tokens_per_step / train_s,
               "precision": precision, "wall_s": logger.elapsed(), "model_dir": "model"}
    write_json(run_dir / "summary.json", summary)
    plot_lines(run_dir / "loss.png", [("step", "loss", {"train": logger.series("train/loss"), "held-out": logger.series("eval/loss")})],
               f"pretraining {cfg.preset}")
    logger.close()
    return summary
