"""Tokenizer and tiny GPT-2: build from scratch, or load any Hugging Face causal LM.

The default policy is a GPT2LMHeadModel of a few million parameters with a byte-level BPE
tokenizer trained on the project's corpus, both saved with `save_pretrained`, so the standard
`AutoModelForCausalLM` / `AutoTokenizer` calls load them like any hub model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import transformers
from peft import AutoPeftModelForCausalLM
from safetensors import SafetensorError
from tokenizers import ByteLevelBPETokenizer, pre_tokenizers
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from classic_rl.infra.errors import ConfigError
from rlhf_toy.chat import (
    CHATML_TEMPLATE,
    CHATML_TOKENS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    end_of_turn_ids,
)

EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"

# GPT2Config sizes. Parameter counts with the shipped corpus's 1,304-token vocabulary: nano 0.19M, tiny 0.98M, small 2.9M.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "nano": dict(n_layer=2, n_head=2, n_embd=64),
    "tiny": dict(n_layer=4, n_head=4, n_embd=128),
    "small": dict(n_layer=6, n_head=6, n_embd=192),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int, split_digits: bool = False, chat: bool = False,
                    tool_tags: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme) trained on texts, wrapped for transformers; split_digits keeps
    every digit its own token (as Llama's tokenizer does), so numbers are written digit by digit; chat adds
    ChatML's special tokens and chat template (the built-in chat model); tool_tags makes each of the tool-call tags
    one token, as Qwen 2.5's are (else BPE merges "</tool_call><tool_response>" across them, into "><").

    A corpus with a small word list can stop short of vocab_size (each word becomes one
    token), so callers size the model from len(tokenizer), not from vocab_size.
    Pads on the left, as batched generation needs.
    """
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    if split_digits:
        bpe._tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    specials = [EOS_TOKEN, PAD_TOKEN, *(CHATML_TOKENS if chat else ())]
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                        unk_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="left")
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": list(CHATML_TOKENS)})
        tokenizer.chat_template = CHATML_TEMPLATE
    if tool_tags:  # not special: they stay in decoded text, which the tools and rewards read
        tokenizer.add_tokens([TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE])
    return tokenizer


ARCHITECTURES = ("gpt2", "llama")


def build_model(preset: str, tokenizer: PreTrainedTokenizerBase, n_positions: int = 128, arch: str = "gpt2") -> PreTrainedModel:
    """A freshly initialised causal LM of the named size preset, sized to the tokenizer: GPT-2, or a Llama
    (RMSNorm, rotary positions, SwiGLU, grouped-query attention with half as many key/value heads)."""
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; accepted: {', '.join(MODEL_PRESETS)}")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; accepted: {', '.join(ARCHITECTURES)}")
    size = MODEL_PRESETS[preset]
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        width = size["n_embd"]
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=n_positions, hidden_size=width, num_hidden_layers=size["n_layer"],
            num_attention_heads=size["n_head"], num_key_value_heads=max(1, size["n_head"] // 2),
            intermediate_size=32 * round(8 / 3 * width / 32),  # SwiGLU's 8/3 expansion keeps GPT-2's 4x MLP compute
            tie_word_embeddings=True, **special))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, **size,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # tiny models on small data: no dropout
                        # GPT-2's tanh-approximate GELU as one fused PyTorch kernel: "gelu_new" computes the same
                        # function in five ops, and torch.tanh has no vectorised CPU kernel (43 us vs sigmoid's
                        # 7.5 us on [256, 64] here), which made it a tenth of an RLHF step.
                        activation_function="gelu_pytorch_tanh", **special)
    return with_loss_named(GPT2LMHeadModel(config))


def with_loss_named(model: PreTrainedModel) -> PreTrainedModel:
    """The model, its loss named for transformers where its class name does not say it: transformers picks the loss by
    class name, finds none in GPT2LMHeadModel's, warns "`loss_type=None` was set in the config but it is unrecognized"
    on the first loss, and uses the causal LM loss anyway. Naming that loss keeps the same loss and drops the warning."""
    if getattr(model, "loss_type", "") is None and model.config.model_type == "gpt2":
        model.loss_type = "ForCausalLM"
    return model


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding and a pad token, on purpose: GPT-2 ships without one, so reuse eos."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_tokenizer(name_or_dir: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    check_model_exists(name_or_dir)
    try:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code))
    except (OSError, ValueError) as err:  # no or malformed tokenizer files
        raise ConfigError(f"cannot load the tokenizer of {name_or_dir!r}: {str(err).splitlines()[0]}") from None


def load_model(name_or_dir: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """Any causal LM: a hub name (`gpt2`, `distilgpt2`, when a hub or local cache is reachable), a folder written by
    save_pretrained, or one of LoRA adapters (peft's adapter_config.json, whose base model it loads too)."""
    check_model_exists(name_or_dir)
    transformers.utils.logging.disable_progress_bar()  # a per-tensor bar for a 1M-parameter model is noise
    try:
        if is_adapter_folder(name_or_dir):
            return AutoPeftModelForCausalLM.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
        return with_loss_named(AutoModelForCausalLM.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code))
    except (OSError, ValueError, SafetensorError) as err:  # no weights, corrupt weights, or an unreadable config.json
        raise ConfigError(f"cannot load model {name_or_dir!r}: {str(err).splitlines()[0]}") from None


def is_adapter_folder(name_or_dir: str) -> bool:
    """A folder of LoRA adapters saved by peft (a --use-peft run's model/), not of a whole model."""
    return (Path(name_or_dir) / "adapter_config.json").is_file() and not (Path(name_or_dir) / "config.json").is_file()


def check_model_exists(name_or_dir: str) -> None:
    """A path-like name must be an existing model (or adapter) folder; a bare name goes to the hub."""
    looks_like_path = os.sep in name_or_dir or name_or_dir.startswith(".") or Path(name_or_dir).exists()
    if looks_like_path and not (Path(name_or_dir) / "config.json").is_file() and not is_adapter_folder(name_or_dir):
        raise ConfigError(f"model folder {name_or_dir} not found (no config.json); give a folder written by "
                          "save_pretrained (e.g. by scripts/pretrain.py) or a hub name such as gpt2")


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a completion: the tokenizer's eos, the model's generation_config eos ids (chat models list an
    end-of-turn token there too) and the end-of-turn token of the tokenizer's chat template (chat.end_of_turn_ids)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)  # None, an id or a list
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return list(dict.fromkeys([tokenizer.eos_token_id, *configured, *end_of_turn_ids(tokenizer)]))


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as generate computes them: `[B, T]`."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def distinct_prompts(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(ids `[U, P]`, mask `[U, P]`, row_prompt `[B]`): the distinct rows of a left-padded prompt batch
    and, for each row, the index of its prompt, so `ids[row_prompt]` is input_ids again. A GRPO
    batch repeats each prompt num_generations times; running only the distinct ones saves that work."""
    distinct, row_prompt = torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True)
    ids, mask = distinct.split(input_ids.shape[1], dim=1)
    return ids, mask, row_prompt


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module):
    """model.eval() inside the block (no dropout), then back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout of model set to probability 0 in place, as TRL's disable_dropout_in_model, and also the attention
    dropout that Llama-family layers keep as a float (`attention_dropout`) rather than a Dropout module. The model stays
    in train mode where it was (gradient checkpointing runs only there); its config.json is left as it was."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def num_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def model_writer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, state_dict: dict | None = None) -> Callable[[Path], None]:
    """write_files for Checkpoints.save: folder/model/ as save_pretrained (of state_dict where given: a sharded model's
    gathered weights), with the tokenizer, so a checkpoint's model loads like any other."""
    def write(folder: Path) -> None:
        model.save_pretrained(folder / "model", state_dict=state_dict)
        tokenizer.save_pretrained(folder / "model")

    return write
