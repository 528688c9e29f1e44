"""The teacher-forced forward's speed work, kept off the reading path: each piece gives the values of the plain
version it replaces (tests/test_fast_forward.py and test_rlhf.py check them against it), and rollout.py calls it.

    token_logprobs / token_logprobs_and_entropy   core's, computed over chunks of rows by a custom autograd function
    projected_token_logprobs                      the same from the last hidden states, without `[B, C, V]` logits
    PromptPass                                    the rows of a GRPO group share their prompt's forward pass
    length_groups                                 short and long completions run as two groups, each at its own length
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from classic_rl import core
from rlhf_toy.fsdp import is_sharded
from rlhf_toy.generation.fast_decode import cache_layout_is_known
from rlhf_toy.lm.models import distinct_prompts, position_ids


def token_logprobs(logits: Tensor, tokens: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """core.token_logprobs's values and gradient, computed in fp32 over chunks of rows (ChunkedTokenLogprobs)."""
    return core.aggregate(ChunkedTokenLogprobs.apply(logits, tokens, temperature, False, False)[0], mask, "none")


def token_logprobs_and_entropy(logits: Tensor, tokens: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                               entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """core.token_logprobs_and_entropy's values and gradients, computed over chunks of rows."""
    logp, entropy = ChunkedTokenLogprobs.apply(logits, tokens, temperature, True, entropy_grad)
    return core.aggregate(logp, mask, "none"), core.aggregate(entropy, mask, "none")


# Output heads that are one plain projection of the last hidden states (no soft-capping or logit scale after it)
PLAIN_HEAD_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
LARGE_LOGITS_BYTES = 256 * 2 ** 20  # fp32 logits of a forward above this go through projected_token_logprobs
PROJECTION_CHUNK_BYTES = 32 * 2 ** 20  # fp32 logits of one chunk of rows there


def projection_head(model, positions: int) -> torch.nn.Module | None:
    """The output head to project hidden states with, where the fp32 logits of `positions` positions would pass
    LARGE_LOGITS_BYTES (a 151k vocabulary at 64 x 64 tokens: 2.5 GB) and the head is a plain projection without adapters;
    else None (the logits are made whole, which is faster). A model wrapped for several processes (DDP) keeps the whole
    logits: its gradients are gathered for what runs inside its own forward."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or model.config.model_type not in PLAIN_HEAD_MODEL_TYPES or hasattr(head, "get_delta_weight"):
        return None
    return head if 4 * positions * head.weight.shape[0] > LARGE_LOGITS_BYTES else None


def projected_token_logprobs(hidden: Tensor, head: torch.nn.Module, tokens: Tensor, mask: Tensor | None, temperature: float,
                             with_entropy: bool, entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """(token log-probs, entropies or None) `[B, C]` of head(hidden `[B, C, H]`), as token_logprobs_and_entropy of the whole
    logits would give them, a chunk of rows at a time: each chunk's logits are recomputed in the backward (activation
    checkpointing) instead of kept, so the peak holds one chunk's logits, not `[B, C, V]`."""
    flat_hidden, flat_tokens = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)
    rows = max(1, PROJECTION_CHUNK_BYTES // (4 * head.weight.shape[0]))

    def chunk(h: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        return ChunkedTokenLogprobs.apply(head(h), t, temperature, with_entropy, entropy_grad)

    parts = [checkpoint(chunk, flat_hidden[i: i + rows], flat_tokens[i: i + rows], use_reentrant=False)
             for i in range(0, len(flat_tokens), rows)]
    logp = core.aggregate(torch.cat([p[0] for p in parts]).view(tokens.shape), mask, "none")
    return logp, core.aggregate(torch.cat([p[1] for p in parts]).view(tokens.shape), mask, "none") if with_entropy else None


class ChunkedTokenLogprobs(torch.autograd.Function):
    """Log-probs (and entropies) of tokens under logits `[..., V]`, a chunk of rows at a time.

    The plain way (log_softmax(logits.float()), gather, exp for the entropy) makes several fp32 `[N, V]`
    tensors and their gradients. At the demo's GRPO update ([64, 39, 1304] in bf16) that was 16 ms of
    forward and backward, mostly spent faulting in fresh pages for those tensors; chunks of ~2 MB are
    reused from the allocator while still in cache: 6 ms. Saves only the logits; the backward runs the
    log-softmax again. The entropy has a gradient with entropy_grad (an entropy bonus), else none.
    """
    CHUNK_ELEMENTS = 2 ** 19

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, temperature: float, with_entropy: bool,
                entropy_grad: bool) -> tuple[Tensor, Tensor | None]:
        flat_logits, flat_tokens = logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1, 1).long()
        logp = torch.empty(len(flat_logits), dtype=torch.float32, device=logits.device)
        entropy = torch.empty_like(logp) if with_entropy else None
        for rows in ChunkedTokenLogprobs.row_chunks(flat_logits):
            logp_all = torch.log_softmax(ChunkedTokenLogprobs.scaled_fp32(flat_logits[rows], temperature), dim=-1)
            logp[rows] = logp_all.gather(-1, flat_tokens[rows]).squeeze(-1)
            if with_entropy:
                entropy[rows] = -torch.linalg.vecdot(logp_all.exp(), logp_all)
        ctx.save_for_backward(flat_logits, flat_tokens)
        ctx.temperature, ctx.shape = temperature, tokens.shape
        ctx.set_materialize_grads(False)  # None for an output the loss does not use
        if with_entropy:
            entropy = entropy.view(tokens.shape)
            if not entropy_grad:
                ctx.mark_non_differentiable(entropy)
        return logp.view(tokens.shape), entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor | None, grad_entropy: Tensor | None) -> tuple[Tensor, None, None, None, None]:
        """With z = logits / temperature and p = softmax(z): d logp / dz = onehot(token) - p; dH / dz = -p (log p + H)."""
        flat_logits, flat_tokens = ctx.saved_tensors
        grad = torch.empty_like(flat_logits)
        for rows in ChunkedTokenLogprobs.row_chunks(flat_logits):
            z = ChunkedTokenLogprobs.scaled_fp32(flat_logits[rows], ctx.temperature)
            entropy_grad = None
            if grad_entropy is None:  # softmax in one pass: exp(log_softmax) took three (a bf16 [402, 1304] chunk: 175 against 338 us)
                probs = torch.softmax(z, dim=-1)
            else:
                logp_all = torch.log_softmax(z, dim=-1)
                probs = logp_all.exp()
                entropy = -torch.linalg.vecdot(probs, logp_all).unsqueeze(-1)
                entropy_grad = -probs * (logp_all + entropy) * (grad_entropy.reshape(-1, 1)[rows] / ctx.temperature)
            if grad_logp is None:
                grad[rows] = entropy_grad
                continue
            scale = grad_logp.reshape(-1, 1)[rows] / ctx.temperature
            logp_grad = probs.mul_(-scale).scatter_add_(-1, flat_tokens[rows], scale)  # in place: probs is not needed after
            grad[rows] = logp_grad if entropy_grad is None else logp_grad.add_(entropy_grad)
        return grad.view(*ctx.shape, -1), None, None, None, None

    @staticmethod
    def row_chunks(flat_logits: Tensor) -> list[slice]:
        rows = max(1, ChunkedTokenLogprobs.CHUNK_ELEMENTS // flat_logits.shape[1])
        return [slice(start, start + rows) for start in range(0, len(flat_logits), rows)]

    @staticmethod
    def scaled_fp32(logits: Tensor, temperature: float) -> Tensor:
        """logits / temperature `[rows, V]` in fp32, a new tensor."""
        z = logits.float()
        return z if temperature == 1 else z / temperature


@dataclass
class PromptPass:
    """The forward pass of each distinct prompt but its last token, which the rows that share the prompt (a GRPO group)
    read instead of running it again: per layer, keys and values `[U, heads, P - 1, head_dim]`, and row_prompt `[B]`,
    the distinct prompt of each row."""
    keys_values: list[tuple[Tensor, Tensor]]
    row_prompt: Tensor

    @staticmethod
    def of(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, **model_kwargs) -> PromptPass | None:
        """The prompt pass of a `[B, P + C]` batch, or None where it saves nothing (every row has its own prompt, a
        prompt or completion of one token), the cache's layout is not the one this reads, the model trains with
        activation checkpointing (under which transformers runs without a cache), or it is sharded (FSDP frees a block's
        parameters after its forward, and the backward through a second forward's graph would find them gone)."""
        prompt_ids, prompt_mask, row_prompt = distinct_prompts(input_ids[:, :prompt_length], attention_mask[:, :prompt_length])
        if len(prompt_ids) == len(input_ids) or prompt_length < 2 or input_ids.shape[1] - prompt_length < 2 or not cache_layout_is_known():
            return None
        if model.training and getattr(model, "is_activation_checkpointing", False):  # transformers then drops every cache
            return None
        if is_sharded(model):
            return None
        cache = DynamicCache()
        model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1], position_ids=position_ids(prompt_mask)[:, :-1],
              past_key_values=cache, use_cache=True, **model_kwargs)  # only its cache is read
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        return PromptPass([(layer.keys, layer.values) for layer in cache.layers], row_prompt)

    def rows(self, rows: Tensor) -> PromptPass:
        """The pass as rows `[b]` of the batch see it: the same keys and values, those rows' prompts."""
        return PromptPass(self.keys_values, self.row_prompt[rows])

    def cache(self) -> DynamicCache:
        """A cache of each row's prompt. index_select, not indexing: rows that share a prompt send their gradients back
        to one cache row, and index_select's backward (index_add_) sums them in a fixed order; that of `keys[rows]`
        (index_put_ with accumulate) adds them with parallel atomics on CPU once a tensor passes 32k elements, so runs
        with 2 threads and the same seed drifted apart in the last bits and then in their metrics."""
        return DynamicCache([(keys.index_select(0, self.row_prompt), values.index_select(0, self.row_prompt))
                             for keys, values in self.keys_values])


# The groups' shapes come from a small set: under bf16 on a CPU, oneDNN builds and caches a matmul for every new shape,
# and with lengths and splits left unrounded those caches held ~450 MB more at the end of the demo's 100 steps.
GROUP_ROWS_STEP, GROUP_LENGTH_STEP = 8, 8


def length_groups(completion_mask: Tensor, min_saving: float = 0.2) -> list[tuple[Tensor, int]]:
    """[(rows, length)]: the rows `[b]` of one or two groups and a length to run each at. Two when splitting the rows
    sorted by length (at a multiple of GROUP_ROWS_STEP, each group's longest completion rounded up to a multiple of
    GROUP_LENGTH_STEP) saves at least min_saving of the positions one group runs (each group costs a forward's fixed
    overhead); else one, at the longest completion, unrounded (completions of about one length pay no padding)."""
    exact, order = (core.last_valid_index(completion_mask) + 1).sort()  # through the last model token (multi-turn: past the env's)
    lengths = (exact + GROUP_LENGTH_STEP - 1) // GROUP_LENGTH_STEP * GROUP_LENGTH_STEP
    splits = torch.tensor(range(GROUP_ROWS_STEP, len(lengths), GROUP_ROWS_STEP), dtype=torch.long, device=lengths.device)  # rows[:k] short
    positions = splits * lengths[splits - 1] + (len(lengths) - splits) * lengths[-1]
    longest = int(lengths[-1])
    if len(positions) and positions.min() <= (1 - min_saving) * len(lengths) * longest:
        k = int(splits[positions.argmin()])
        return [(order[:k], int(lengths[k - 1])), (order[k:], longest)]
    return [(order, int(exact[-1]))]
