"""Sampling for GPT-2 and Llama-family policies without per-token framework overhead.

Profiling the RLHF step showed generation at ~45% of the step, and inside it each decoding step
(32 sequences, one new token) spent ~4.5 ms in the layers of Python wrappers around a few small
matmuls. This loop keeps the model's own weights and maths (transformers runs the prompt through
`model(...)` once to fill the KV cache), then decodes with the same operations called directly,
writing keys and values into preallocated buffers instead of concatenating a growing cache.

    prefill   logits, cache = model(distinct prompts)             # transformers' forward, once per GRPO group
    repeat    token ~ softmax(filtered logits / T)                # the sampling of generate
              logits = lean.step(token, position, buffers)        # LeanGPT2: layer norm, attention, MLP
                                                                  # LeanLlama: RMSNorm, rotary attention (grouped
                                                                  # keys/values), SwiGLU
    until     every sequence has produced eos, or max_new_tokens

`tests/test_decoding.py` checks it against `model.generate` (the same greedy tokens and logits) and, while
sampling, against a teacher-forced forward, for both. Other architectures, and variants whose attention this
loop does not write out (GPT-2 without 1/sqrt(d) scaling, scaled or sliding-window rotary attention), use `generate`
itself (`supports_fast_decode` says which).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel
from transformers.activations import ACT2FN

from rlhf_toy.lm.models import distinct_prompts, position_ids


def supports_fast_decode(model: PreTrainedModel) -> bool:
    """True when a lean step computes what the model's own forward does (LeanGPT2.computes, LeanLlama.computes), LoRA
    adapters sit only on the block linears it merges them into, and the KV cache's per-layer tensors are readable."""
    lean = LEAN_STEPS.get(model.config.model_type)
    return (lean is not None and lean.computes(model.config) and adapters_only_on(model, lean.ADAPTABLE)
            and cache_layout_is_known())


def adapters_only_on(model: torch.nn.Module, adaptable: tuple[str, ...]) -> bool:
    """True unless LoRA adapters (peft) sit where the lean step would not apply them: the embeddings, the output head."""
    return all(name.rsplit(".", 1)[-1] in adaptable for name, module in model.named_modules() if hasattr(module, "get_delta_weight"))


def merged_weight(layer: torch.nn.Module) -> Tensor:
    """The layer's weight with its LoRA update (alpha / r) B A added, summed over its active adapters (peft's layout);
    the weight itself for a plain layer, or one whose adapters are disabled (a LoRA run's reference) or already merged."""
    if not hasattr(layer, "get_delta_weight") or layer.disable_adapters or layer.merged:
        return layer.weight
    return layer.weight + sum(layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A)


@functools.cache
def cache_layout_is_known() -> bool:
    """Whether transformers' DynamicCache still keeps one `layers[i].keys / .values` tensor `[B, heads, T, head_dim]`
    per layer, which the prefill hands to this loop. An upgrade that changes it turns fast decoding off (once,
    with a notice) and sampling goes through generate."""
    try:
        cache = DynamicCache()
        cache.update(torch.zeros(1, 1, 2, 1), torch.ones(1, 1, 2, 1), 0)
        layer = cache.layers[0]
        known = layer.keys.shape == (1, 1, 2, 1) and bool(layer.values.eq(1).all())
    except (AttributeError, IndexError, TypeError):
        known = False
    if not known:
        warnings.warn("rlhf_toy.generation.fast_decode: this transformers version's DynamicCache has no layers[i].keys/values; "
                      "sampling falls back to model.generate", stacklevel=2)
    return known


def decoding_activation(name: str):
    """The model's activation; GPT-2's tanh-approximate GELU written with a sigmoid, the same function
    (0.5 x (1 + tanh(z)) = x sigmoid(2 z)): torch's CPU tanh is scalar here and was 8% of sampling."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return tanh_gelu_by_sigmoid
    return ACT2FN[name]


def tanh_gelu_by_sigmoid(x: Tensor) -> Tensor:
    """x sigmoid(x (c + 0.044715 c x^2)) with c = 2 sqrt(2 / pi), as four ops: one new tensor, the rest in place."""
    return torch.addcmul(_GELU_C, x, x, value=_GELU_C3).mul_(x).sigmoid_().mul_(x)


_GELU_C, _GELU_C3 = torch.tensor(1.5957691216057308), 0.044715 * 1.5957691216057308  # c = 2 sqrt(2 / pi), 0.044715 c


@torch.inference_mode()
def sample_fast(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
                choose, eos_token_ids: list[int], pad_token_id: int, per_step=None) -> tuple[Tensor, list[Tensor]]:
    """(sequences `[B, P + C]`, raw logits of each step `C x [B, V]`), as generate's `sequences` and
    `logits` at every generated token up to and including each row's eos (a finished row's later logits are
    zeros: it is no longer computed); a row stops at any of eos_token_ids. choose(logits [b, V], rows [b]) -> tokens [b]
    picks the next token (sampling or greedy) for the rows still decoding, given by their index in the batch. per_step(logits [b, V], tokens [b]) -> `[b, ...]`,
    when given, is what each step keeps instead of its logits (a rollout keeps the chosen tokens' log-probs: `C x [B]`,
    not the `C x [B, V]` logits, 0.8 GB for 64 completions of 64 tokens over GPT-2's vocabulary)."""
    lean = LEAN_STEPS[model.config.model_type].of(model)
    batch, prompt_length = input_ids.shape
    prompt_ids, prompt_mask, row_prompt = distinct_prompts(input_ids, attention_mask)  # each prompt of a group once
    cache = DynamicCache()
    logits = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask), past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[row_prompt, -1]  # the vocabulary projection for the last position only
    total = prompt_length + max_new_tokens
    device = input_ids.device
    dtype = lean.cache_dtype(device)  # what the steps below compute keys and values in, whatever the prefill's cache holds
    keys, values = [], []
    # buffers holding each row's prompt keys and values; left uninitialised (zeroing them was 2 ms a rollout): a step reads
    # positions up to its own, and every one of those was written by the prefill or an earlier step
    for layer in cache.layers:
        for buffers, filled in ((keys, layer.keys), (values, layer.values)):
            buffers.append(filled.new_empty(batch, lean.kv_heads, total, lean.head_dim, dtype=dtype))
            buffers[-1][:, :, :prompt_length] = filled[row_prompt]
    # added to the attention scores: 0 where a row may attend, -inf on its left padding and on positions not yet written
    mask_bias = torch.full((batch, 1, 1, total), float("-inf"), device=device)
    mask_bias[:, 0, 0, :prompt_length].masked_fill_(attention_mask.bool(), 0.0)
    position = position_ids(attention_mask)[:, -1]
    rows = torch.arange(batch, device=device)  # the batch rows still decoding, in the buffers' order
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # per decoding row: it has produced an eos
    eos = torch.tensor(eos_token_ids, device=device)
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    step_logits = []
    for step in range(max_new_tokens):
        t = prompt_length + step
        token = torch.where(done, pad_token_id, choose(logits, rows))
        tokens[rows, step] = token
        kept = logits if per_step is None else per_step(logits, token)
        step_logits.append(kept if len(rows) == batch else kept.new_zeros(batch, *kept.shape[1:]).index_copy_(0, rows, kept))
        done |= torch.isin(token, eos)
        finished = int(done.sum())
        if finished == len(rows) or step == max_new_tokens - 1:
            break
        if 4 * finished >= len(rows):  # stop computing finished rows once they are a quarter of those left
            keep = (~done).nonzero().squeeze(1)
            rows, done, token, position, mask_bias = rows[keep], done[keep], token[keep], position[keep], mask_bias[keep]
            keys, values = [k.index_select(0, keep) for k in keys], [v.index_select(0, keep) for v in values]
        mask_bias[:, 0, 0, t] = 0.0
        position = position + 1
        logits = lean.step(token, position, t, keys, values, mask_bias)
    return torch.cat([input_ids, tokens[:, : step + 1]], dim=1), step_logits


def attend_one_query(q: Tensor, keys: Tensor, values: Tensor, mask_bias: Tensor, t: int) -> Tensor:
    """softmax(mask + q k^T / sqrt(head_dim)) v over positions 0..t, for one new query per row and head: q `[b, kv_heads,
    group, head_dim]` (group query heads share each key/value head; 1 without grouping), keys and values `[b, kv_heads, T,
    head_dim]`, mask_bias `[b, 1, 1, T]`; returns `[b, kv_heads, group, head_dim]`. Written out: SDPA's CPU kernel was 23%
    of sampling at these sizes."""
    scores = torch.add(mask_bias[..., : t + 1], torch.matmul(q, keys[:, :, : t + 1].transpose(-1, -2)), alpha=q.shape[-1] ** -0.5)
    return torch.matmul(scores.softmax(-1), values[:, :, : t + 1])


@dataclass
class LayerWeights:
    """One GPT-2 block's weights for the lean step: the layer norms' (weight, bias) and the linear layers' `[out, in]`
    copies (with any LoRA update merged) with their biases, since GPT-2's Conv1D keeps them `[in, out]` and at 64 rows torch's CPU matmul with that
    layout was up to 4x slower ([64, 128] @ [128, 128]: 61 us as addmm, 14 us as linear)."""
    ln_1: tuple[Tensor, Tensor]
    attn: tuple[Tensor, Tensor]
    attn_proj: tuple[Tensor, Tensor]
    ln_2: tuple[Tensor, Tensor]
    mlp_fc: tuple[Tensor, Tensor]
    mlp_proj: tuple[Tensor, Tensor]

    @staticmethod
    def of(block) -> LayerWeights:
        def linear(conv1d):  # under LoRA the adapters' update is merged in here, once per sampling call
            return merged_weight(conv1d).t().contiguous(), conv1d.bias
        return LayerWeights((block.ln_1.weight, block.ln_1.bias), linear(block.attn.c_attn), linear(block.attn.c_proj),
                            (block.ln_2.weight, block.ln_2.bias), linear(block.mlp.c_fc), linear(block.mlp.c_proj))


@dataclass
class LeanGPT2:
    """What the lean step reads of a GPT-2, gathered once per sampling call: its weights and its sizes (a
    transformers config attribute costs about a microsecond to read; 1.5 ms a rollout read per step)."""
    ADAPTABLE = ("c_attn", "c_proj", "c_fc")  # the block linears whose LoRA update LayerWeights merges in
    wte: Tensor
    wpe: Tensor
    layers: list[LayerWeights]
    ln_f: tuple[Tensor, Tensor]
    lm_head: torch.nn.Module
    width: int
    heads: int
    eps: float
    activation: Callable[[Tensor], Tensor]

    @staticmethod
    def computes(config) -> bool:
        """GPT-2 attention as step writes it (scaled by 1/sqrt(head_dim), no per-layer scaling or upcast reordering, no
        cross-attention) and an activation transformers knows."""
        return (getattr(config, "scale_attn_weights", False) and not getattr(config, "scale_attn_by_inverse_layer_idx", True)
                and not getattr(config, "reorder_and_upcast_attn", True) and not getattr(config, "add_cross_attention", False)
                and config.activation_function in ACT2FN)

    @staticmethod
    def of(model: PreTrainedModel) -> LeanGPT2:
        config, gpt = model.config, model.transformer
        return LeanGPT2(gpt.wte.weight, gpt.wpe.weight, [LayerWeights.of(block) for block in gpt.h], (gpt.ln_f.weight, gpt.ln_f.bias),
                        model.lm_head, config.n_embd, config.n_head, config.layer_norm_epsilon,
                        decoding_activation(config.activation_function))

    @property
    def kv_heads(self) -> int:
        return self.heads

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def cache_dtype(self, device: torch.device) -> torch.dtype:
        """Keys and values come out of one linear layer: bf16 under autocast."""
        return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else self.wte.dtype

    def step(self, token: Tensor, position: Tensor, t: int, keys: list[Tensor], values: list[Tensor], mask_bias: Tensor) -> Tensor:
        """Logits `[b, V]` after feeding token `[b]` at position `[b]`, writing its keys and values at index t of the
        per-layer buffers `[b, heads, T, head_dim]` (GPT-2's block: layer norm, attention, MLP, each with a residual)."""
        rows, width, heads, head_dim = len(token), self.width, self.heads, self.width // self.heads
        shape, eps, activation = (width,), self.eps, self.activation
        hidden = self.wte[token] + self.wpe[position]  # [b, D]
        for layer, k, v in zip(self.layers, keys, values, strict=True):
            q, k_new, v_new = F.linear(F.layer_norm(hidden, shape, *layer.ln_1, eps), *layer.attn).split(width, dim=-1)
            k[:, :, t] = k_new.view(rows, heads, head_dim)
            v[:, :, t] = v_new.view(rows, heads, head_dim)
            attended = attend_one_query(q.view(rows, heads, 1, head_dim), k, v, mask_bias, t)
            hidden = hidden + F.linear(attended.view(rows, width), *layer.attn_proj)
            x = F.layer_norm(hidden, shape, *layer.ln_2, eps)
            hidden = hidden + F.linear(activation(F.linear(x, *layer.mlp_fc)), *layer.mlp_proj)
        return self.lm_head(F.layer_norm(hidden, shape, *self.ln_f, eps))


def fused_linear(*linears: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight `[sum of outputs, in]`, bias or None) of linear layers reading the same input, stacked so one matmul computes
    them all (q, k, v; gate, up), with any LoRA update merged in; a layer without a bias adds zeros beside one with. A
    single layer's weight is its own, not a copy (a Qwen2 0.5B's o_proj and down_proj: 100M parameters a sampling call)."""
    if len(linears) == 1:
        return merged_weight(linears[0]), linears[0].bias
    weight = torch.cat([merged_weight(linear) for linear in linears])
    if all(linear.bias is None for linear in linears):
        return weight, None
    return weight, torch.cat([linear.weight.new_zeros(linear.out_features) if linear.bias is None else linear.bias for linear in linears])


@dataclass
class LlamaLayerWeights:
    """One Llama-family decoder layer's weights for the lean step: the RMSNorm gains and the fused linear layers."""
    input_norm: Tensor
    qkv: tuple[Tensor, Tensor | None]
    out: tuple[Tensor, Tensor | None]
    post_norm: Tensor
    gate_up: tuple[Tensor, Tensor | None]
    down: tuple[Tensor, Tensor | None]

    @staticmethod
    def of(layer) -> LlamaLayerWeights:
        attention, mlp = layer.self_attn, layer.mlp
        return LlamaLayerWeights(layer.input_layernorm.weight, fused_linear(attention.q_proj, attention.k_proj, attention.v_proj),
                                 fused_linear(attention.o_proj), layer.post_attention_layernorm.weight,
                                 fused_linear(mlp.gate_proj, mlp.up_proj), fused_linear(mlp.down_proj))


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding of x `[b, heads, head_dim]` with cos, sin `[b, 1, head_dim]` (transformers' rotate_half
    layout: the first half of each head pairs with the second)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


@dataclass
class LeanLlama:
    """What the lean step reads of a Llama-family model (Llama, Qwen2), gathered once per sampling call."""
    ADAPTABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    embed: Tensor
    layers: list[LlamaLayerWeights]
    norm: Tensor
    lm_head: torch.nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    inv_freq: Tensor  # the rotary frequencies `[head_dim / 2]`, the model's own buffer
    activation: Callable[[Tensor], Tensor]

    @staticmethod
    def computes(config) -> bool:
        """Rotary attention whose frequencies are fixed (step reads the model's inv_freq: the default, linear and Llama 3
        scalings; not those that change with the length or scale the tables, dynamic, YaRN, LongRoPE), over every position
        (no sliding window), one tensor-parallel slice, and an activation transformers knows."""
        rope = getattr(config, "rope_parameters", None) or {}
        return (rope.get("rope_type", "default") in ("default", "linear", "llama3") and not getattr(config, "use_sliding_window", False)
                and getattr(config, "pretraining_tp", 1) == 1 and config.hidden_act in ACT2FN)

    @staticmethod
    def of(model: PreTrainedModel) -> LeanLlama:
        config, decoder = model.config, model.get_decoder()  # under peft, model.model is the LoraModel's wrapped model
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return LeanLlama(decoder.embed_tokens.weight, [LlamaLayerWeights.of(layer) for layer in decoder.layers], decoder.norm.weight,
                         model.lm_head, config.num_attention_heads, config.num_key_value_heads, head_dim, config.rms_norm_eps,
                         decoder.rotary_emb.inv_freq, decoding_activation(config.hidden_act))

    def cache_dtype(self, device: torch.device) -> torch.dtype:
        """Keys leave the rotation in the hidden states' dtype (the rotary tables are fp32), even under autocast."""
        return self.embed.dtype

    def step(self, token: Tensor, position: Tensor, t: int, keys: list[Tensor], values: list[Tensor], mask_bias: Tensor) -> Tensor:
        """Logits `[b, V]` after feeding token `[b]` at position `[b]`, writing its rotated keys and its values at index t of
        the per-layer buffers `[b, kv_heads, T, head_dim]` (a Llama layer: RMSNorm, rotary attention, SwiGLU MLP, residuals)."""
        rows, heads, kv_heads, head_dim = len(token), self.heads, self.kv_heads, self.head_dim
        hidden = self.embed[token]  # [b, D]
        angles = (position[:, None].float() * self.inv_freq).repeat(1, 2)[:, None]  # [b, 1, head_dim]
        cos, sin = angles.cos().to(hidden.dtype), angles.sin().to(hidden.dtype)
        sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        for layer, k, v in zip(self.layers, keys, values, strict=True):
            q, k_new, v_new = F.linear(F.rms_norm(hidden, hidden.shape[-1:], layer.input_norm, self.eps), *layer.qkv).split(sizes, dim=-1)
            k[:, :, t] = rotate(k_new.view(rows, kv_heads, head_dim), cos, sin)
            v[:, :, t] = v_new.view(rows, kv_heads, head_dim)
            q = rotate(q.view(rows, heads, head_dim), cos, sin).view(rows, kv_heads, heads // kv_heads, head_dim)
            hidden = hidden + F.linear(attend_one_query(q, k, v, mask_bias, t).reshape(rows, heads * head_dim), *layer.out)
            gate, up = F.linear(F.rms_norm(hidden, hidden.shape[-1:], layer.post_norm, self.eps), *layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + F.linear(self.activation(gate) * up, *layer.down)
        return self.lm_head(F.rms_norm(hidden, hidden.shape[-1:], self.norm, self.eps))


# the lean step of each model type whose forward it writes out
LEAN_STEPS = {"gpt2": LeanGPT2, "llama": LeanLlama, "qwen2": LeanLlama}
