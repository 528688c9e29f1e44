"""Batched sampling from a causal LM with transformers' `generate` (KV cache, left padding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from classic_rl.runs import ConfigError, config_field
from rlhf_toy.models import format_prompt


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

    def generation_config(self, tokenizer: PreTrainedTokenizerBase, with_logits: bool = False) -> GenerationConfig:
        """transformers' GenerationConfig; with_logits also returns the raw logits of every step."""
        greedy = self.temperature == 0
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=not greedy,
            return_dict_in_generate=with_logits, output_logits=with_logits,
            temperature=None if greedy else self.temperature, top_k=None if greedy else self.top_k,
            top_p=None if greedy else self.top_p,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def context_length(model: PreTrainedModel) -> int:
    config = model.config
    return getattr(config, "n_positions", None) or config.max_position_embeddings


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int,
                   model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` / `attention_mask` `[B, P]` for prompts in the chat template.

    Raises a ConfigError when prompt plus completion would not fit the model's context.
    """
    batch = tokenizer([format_prompt(p) for p in prompts], return_tensors="pt", padding=True)
    longest, context = batch["input_ids"].shape[1], context_length(model)
    if longest + max_new_tokens > context:
        raise ConfigError(f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
                          f"model's context of {context} tokens; accepted: max_new_tokens <= {context - longest}")
    return batch


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], sampling: SamplingConfig,
             seed: int | None = None) -> list[str]:
    """One completion per prompt, decoded without special tokens."""
    batch = encode_prompts(tokenizer, prompts, sampling.max_new_tokens, model).to(model.device)
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(**batch, generation_config=sampling.generation_config(tokenizer))
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
