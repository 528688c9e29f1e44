"""Batched sampling from a causal LM with a KV cache and left padding: rlhf_toy.fast_decode for GPT-2 and
Llama-family models, transformers' `generate` for the rest."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import torch
from transformers import (
    BatchEncoding,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError
from rlhf_toy.chat import Prompt, is_conversational, render_prompt
from rlhf_toy.generation.fast_decode import sample_fast, supports_fast_decode
from rlhf_toy.lm.models import evaluation_mode, stop_token_ids


@dataclass
class SamplingConfig:
    max_new_tokens: int = config_field(48, "Tokens to generate per completion at most")
    temperature: float = config_field(1.0, "Softmax temperature; 0 means greedy decoding")
    top_k: int = config_field(0, "Sample from the k most likely tokens only (0: no limit)")
    top_p: float = config_field(1.0, "Nucleus sampling: the smallest set of tokens with this much probability")

    def __post_init__(self):
        if self.max_new_tokens <= 0 or self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("sampling needs --max-new-tokens > 0, --temperature >= 0, --top-k >= 0 and --top-p in (0, 1]; "
                              f"got {self.max_new_tokens}, {self.temperature}, {self.top_k}, {self.top_p}")

    def generation_config(self, tokenizer: PreTrainedTokenizerBase, eos_token_ids: list[int],
                          with_logits: bool = False) -> GenerationConfig:
        """transformers' GenerationConfig stopping at any of eos_token_ids, for a generate whose tokens a ChooseToken
        processor picks (so generate itself decodes greedily, over scores that allow that token alone); with_logits
        also returns the raw logits of every step."""
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=False, return_dict_in_generate=with_logits, output_logits=with_logits,
            temperature=None, top_k=None, top_p=None, repetition_penalty=1.0, no_repeat_ngram_size=0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_token_ids)

    def chooser(self, uniforms: RowUniforms | None = None):
        """choose(logits `[b, V]`, rows `[b]`) -> tokens `[b]` for the decoders: next_tokens with the uniforms of those batch
        rows (default: fresh draws from torch's global generator)."""
        return lambda logits, rows: self.next_tokens(logits, None if uniforms is None else uniforms(rows))

    def next_tokens(self, logits: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """The next token `[B]` from raw logits `[B, V]`: argmax at temperature 0, else a sample of
        softmax(logits / T) after top-k / top-p filtering (transformers' warpers), as generate does.

        Sampling inverts the CDF with one uniform in [0, 1) per row, `[B, 1]` (default: drawn here): torch.multinomial
        (generate's choice) was a quarter of CPU decoding time here, the distribution is the same, and a row's token is
        then a function of its logits and its own number (RowUniforms)."""
        if self.temperature == 0:
            return logits.argmax(-1)
        scores = logits.float() if self.temperature == 1 else logits.float() / self.temperature
        if self.top_k:
            scores = TopKLogitsWarper(self.top_k)(None, scores)
        if self.top_p < 1:
            scores = TopPLogitsWarper(self.top_p)(None, scores)
        cdf = scores.softmax(-1).cumsum_(-1)
        if uniforms is None:
            uniforms = torch.rand(len(cdf), 1, device=cdf.device)
        uniform = uniforms.to(cdf) * cdf[:, -1:]
        # token i owns [cdf[i-1], cdf[i]): the first cdf above the draw, so a filtered token (an empty
        # interval) is never picked, not even by a draw of exactly 0
        return torch.searchsorted(cdf, uniform, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)


class RowUniforms:
    """The uniforms of sampling (SamplingConfig.next_tokens), one per row of the whole batch at each decoding step, from
    a generator of their own: a row draws the same numbers whichever process samples it and whichever rows still decode
    beside it, so N processes, each sampling its share (rows first_row.. of total_rows), draw the completions one process
    drawing them all would. A call is one decoding step."""

    def __init__(self, seed: int, first_row: int, total_rows: int, device):
        self.generator = torch.Generator(device).manual_seed(seed)
        self.first_row, self.total_rows, self.device = first_row, total_rows, device

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """`[b, 1]`: this step's numbers of the share's rows `[b]`."""
        every_row = torch.rand(self.total_rows, 1, generator=self.generator, device=self.device)
        return every_row[self.first_row + rows.to(self.device)]


def sample_sequences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: dict[str, torch.Tensor],
                     sampling: SamplingConfig, eos_token_ids: list[int], per_step=None, uniforms: RowUniforms | None = None,
                     fast_decoder: bool = True, choose=None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(sequences `[B, P + C]`, raw logits of each generated step `C x [B, V]`, or per_step(logits, tokens) of each step) for
    an encoded batch, stopping at any of eos_token_ids: models fast_decode supports decode with it (keeping
    only what per_step gives, step by step), others with transformers' generate. Both choose tokens with
    sampling.chooser(uniforms), so the two draw the same tokens from the same logits; fast_decoder=False samples with
    generate where the fast decoder would serve (to compare them). choose(logits `[b, V]`, rows `[b]`) -> tokens `[b]`, called
    once a step, replaces the chooser (a multi-turn rollout's, which puts an environment's tokens between the model's)."""
    choose = choose or sampling.chooser(uniforms)
    if fast_decoder and supports_fast_decode(model):
        return sample_fast(model, batch["input_ids"], batch["attention_mask"], sampling.max_new_tokens, choose,
                           eos_token_ids, tokenizer.pad_token_id, per_step)
    rows = torch.arange(len(batch["input_ids"]), device=batch["input_ids"].device)
    with neutral_generation_config(model):
        if per_step is None:
            out = model.generate(**batch, generation_config=sampling.generation_config(tokenizer, eos_token_ids, with_logits=True),
                                 logits_processor=LogitsProcessorList([ChooseToken(choose, rows)]))
            return out.sequences, out.logits
        recorder = StepRecorder(per_step)
        sequences = model.generate(**batch, generation_config=sampling.generation_config(tokenizer, eos_token_ids),
                                   logits_processor=LogitsProcessorList([recorder, ChooseToken(choose, rows)]))
    recorder.flush(sequences[:, -1])
    return sequences, tuple(recorder.values)


class ChooseToken(LogitsProcessor):
    """generate's next token chosen by choose(scores `[B, V]`, rows `[B]`) (SamplingConfig.chooser): the scores it returns
    allow that token alone, so generate's greedy pick is it. generate's own sampling would draw from torch's global
    generator through multinomial, which neither matches the fast decoder's draws nor splits over processes."""

    def __init__(self, choose, rows: torch.Tensor):
        self.choose, self.rows = choose, rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token = self.choose(scores, self.rows)
        return torch.full_like(scores, float("-inf")).scatter_(1, token[:, None], 0.0)


class StepRecorder(LogitsProcessor):
    """per_step(raw logits of a step, the token it chose) for every step of generate, keeping one step's logits at a time:
    generate's output_logits keeps them all (2.5 GB for 64 completions of 64 tokens over Qwen's 151k vocabulary). It runs first
    among generate's logits processors here, on the raw logits, and sees each step's token at the next call; flush the
    last one with the finished sequences' last column. It changes no score."""

    def __init__(self, per_step):
        self.per_step, self.values, self.pending = per_step, [], None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.flush(input_ids[:, -1])
        self.pending = scores  # ChooseToken after it returns a new tensor, so these stay raw
        return scores

    def flush(self, tokens: torch.Tensor) -> None:
        if self.pending is not None:
            self.values.append(self.per_step(self.pending, tokens))
            self.pending = None


# Fields of a model's generation_config.json that change which tokens generate samples (or how many).
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h", "repetition_penalty",
                   "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens",
                   "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "min_length", "min_new_tokens",
                   "exponential_decay_length_penalty", "renormalize_logits", "num_beams", "guidance_scale", "watermarking_config")


@contextlib.contextmanager
def neutral_generation_config(model: PreTrainedModel):
    """The block sees model.generation_config as transformers' defaults. generate fills every field its
    generation_config leaves None from the model's own, and None is the only way to say "off" for min_p, bad words,
    forced tokens and the rest: an instruct model whose generation_config.json sets a repetition penalty or min_p would
    be sampled from another distribution than the raw logits / temperature that the losses take log-probs of."""
    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield model
    finally:
        model.generation_config = own


def ignored_generation_settings(model: PreTrainedModel) -> dict:
    """The sampling settings of the model's generation_config that differ from transformers' defaults: the project
    samples with its own flags instead (neutral_generation_config), which a user of such a model should be told."""
    own, default = getattr(model, "generation_config", None), GenerationConfig()
    if own is None:
        return {}
    return {name: getattr(own, name) for name in SAMPLING_FIELDS if getattr(own, name, None) != getattr(default, name, None)}


def context_length(model: PreTrainedModel) -> int:
    config = getattr(model, "module", model).config  # a DDP wrapper holds the model as .module
    return getattr(config, "n_positions", None) or config.max_position_embeddings


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], max_new_tokens: int,
                   model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` / `attention_mask` `[B, P]` for prompts as the policy reads them (chat.render_prompt;
    a chat template writes its own special tokens, so none are added).

    Each distinct prompt is rendered and tokenized once (a GRPO batch repeats each num_generations times).
    Raises a ConfigError when prompt plus completion would not fit the model's context.
    """
    keys = [json.dumps(p) if is_conversational(p) else p for p in prompts]
    distinct = dict(zip(keys, prompts, strict=True))
    encoded = tokenizer([render_prompt(tokenizer, p) for p in distinct.values()], return_tensors="pt", padding=True,
                        add_special_tokens=not any(map(is_conversational, prompts)))
    index = {key: i for i, key in enumerate(distinct)}
    rows = torch.tensor([index[key] for key in keys])
    batch = BatchEncoding({key: value[rows] for key, value in encoded.items()})
    longest, context = batch["input_ids"].shape[1], context_length(model)
    if longest + max_new_tokens > context:
        raise ConfigError(f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
                          f"model's context of {context} tokens; accepted: max_new_tokens <= {context - longest}")
    return batch


@torch.inference_mode()
def generate_completions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], sampling: SamplingConfig,
             seed: int | None = None) -> list[str]:
    """One completion per prompt, decoded without special tokens."""
    batch = encode_prompts(tokenizer, prompts, sampling.max_new_tokens, model).to(model.device)
    if seed is not None:
        torch.manual_seed(seed)
    with evaluation_mode(model):
        sequences, _ = sample_sequences(model, tokenizer, batch, sampling, stop_token_ids(model, tokenizer))
    return tokenizer.batch_decode(sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
