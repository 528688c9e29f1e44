"""One rollout batch for RLHF: sample completions with the KV cache, then everything the losses
need as `[B, C]` tensors over completion tokens (C = longest completion in the batch).

    input_ids        [B, P + C]  left-padded prompt, then the completion padded after its eos
    attention_mask   [B, P + C]  1 on real prompt tokens and on completion tokens up to eos
    completion_mask  [B, C]      1 on generated tokens up to and including the first eos
    sampling_logprobs [B, C]     log pi_sampler(token) at the sampling temperature, from the sampler's own logits
    ref_logprobs     [B, C]      a reference's, one batched forward (evaluation's KL; None without a reference)

In a multi-turn rollout (episodes: rlhf_toy/agents/turns.py) the completion holds the environment's tokens between the
model's turns: attention_mask is 1 on them, completion_mask 0, so the losses never see them.

Log-probs are always of logits / temperature, in sampling and in training. The sampler's are only a
check: the updates take the old and reference log-probs from the trainer's own forward, in its own
precision and mode (trainer_forward), as TRL does, so that the ratio is exactly 1 where it must be.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from classic_rl import core
from rlhf_toy.agents.turns import TurnTaker, plain_text
from rlhf_toy.chat import Completion, Prompt, is_conversational, message_text, render_completion
from rlhf_toy.generation import fast_forward
from rlhf_toy.generation.fast_forward import PromptPass, length_groups
from rlhf_toy.generation.sampling import (
    RowUniforms,
    SamplingConfig,
    context_length,
    encode_prompts,
    sample_sequences,
)
from rlhf_toy.lm.models import evaluation_mode, position_ids, stop_token_ids


@dataclass
class Rollout:
    prompts: list[Prompt]
    completions: list[str]  # the decoded texts; a multi-turn chat rollout's messages as agents.turns.plain_text writes them
    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    sampling_logprobs: Tensor
    ref_logprobs: Tensor | None
    is_truncated: Tensor  # [B] bool: no eos within max_new_tokens
    episodes: list | None = None  # a multi-turn rollout's, one per row (their tool calls, their rewards)
    completion_messages: list | None = None  # a multi-turn chat rollout's: each row's assistant turns and tool messages

    @property
    def reward_completions(self) -> list:
        """The completions as TRL passes them to reward functions: a multi-turn chat rollout's as lists of messages
        (assistant turns with their tool_calls, tool messages), any other's as texts (made turns for a chat prompt)."""
        return self.completions if self.completion_messages is None else self.completion_messages

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1] - self.completion_mask.shape[1]

    @property
    def completion_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_length:]

    @property
    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(1)


def completion_states(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, read,
                      prompt_pass: PromptPass | None = None, **model_kwargs) -> tuple[Tensor, ...]:
    """The per-position outputs read(model output) -> (`[rows, T, ...]`, ...) at the positions before each
    completion token, each `[B, C, ...]`; model_kwargs go to every model call this makes.

    Rows with the same prompt (a GRPO group) share its forward pass (PromptPass; prompt_pass, for these rows,
    where the caller ran it already): the rest (the prompt's last token, then the completion) runs per row, so
    its outputs need no concatenating. Same outputs to float rounding; with 8 completions of 24 tokens per
    13-token prompt it is 30% fewer FLOPs in the forward and the backward.
    """
    completion_length = input_ids.shape[1] - prompt_length
    positions = position_ids(attention_mask)
    prompt_pass = prompt_pass or PromptPass.of(model, input_ids, attention_mask, prompt_length, **model_kwargs)
    if prompt_pass is None:
        out = model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=positions[:, :-1], use_cache=False,
                    **model_kwargs)  # one pass over everything: no cache to keep
        return tuple(x[:, -completion_length:] for x in read(out))
    tail = model(input_ids=input_ids[:, prompt_length - 1:-1], attention_mask=attention_mask[:, :-1],
                 position_ids=positions[:, prompt_length - 1:-1], past_key_values=prompt_pass.cache(), use_cache=True, **model_kwargs)
    return read(tail)


def completion_logits(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                      return_hidden: bool = False, prompt_pass: PromptPass | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Teacher-forced logits that predict each completion token: `[B, C, V]`, in the dtype the model computes in
    (bf16 under autocast); core.token_logprobs turns them into log-probs at a sampling temperature.

    return_hidden also gives the last hidden states at the same positions `[B, C, H]` (the state
    before each completion token, which a shared-trunk value head reads). Rows that share a prompt
    share its forward pass (completion_states).
    """
    def read(out):
        return (out.logits, out.hidden_states[-1]) if return_hidden else (out.logits,)

    logits, *hidden = completion_states(model, input_ids, attention_mask, prompt_length, read, prompt_pass,
                                        output_hidden_states=return_hidden, logits_to_keep=input_ids.shape[1] - prompt_length)  # no vocabulary projection of the prompt
    return (logits, hidden[0]) if return_hidden else logits


def completion_logprobs(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor,
                        temperature: float = 1.0, with_entropy: bool = False, entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """(token log-probs `[B, C]` of the completions at temperature, their entropies or None, with a gradient only with
    entropy_grad): core.token_logprobs of completion_logits, zero where completion_mask is.

    With a large vocabulary (fast_forward.projection_head) the log-probs come from the last hidden states a chunk of
    rows at a time, without `[B, C, V]` logits. Rows run in two groups, shorter and longer completions, each cut to its own longest one, when that saves at
    least a fifth of the positions (length_groups): GRPO's completions are often mostly half as long as the
    longest. Every group reads one PromptPass of the whole batch. Same values to float rounding: positions past a
    row's completion are masked, and the completion part is padded on the right where a group's rounded length
    passes C.
    """
    width = completion_mask.shape[1]
    groups = length_groups(completion_mask)
    padding = max(length for _, length in groups) - width
    if padding > 0:
        input_ids, attention_mask, completion_mask = (F.pad(x, (0, padding)) for x in (input_ids, attention_mask, completion_mask))
    prompt_length = input_ids.shape[1] - completion_mask.shape[1]
    logp = completion_mask.new_zeros(completion_mask.shape)
    entropy = torch.zeros_like(logp) if with_entropy else None
    prompt_pass = PromptPass.of(model, input_ids, attention_mask, prompt_length, logits_to_keep=1)  # only its cache is read
    head = fast_forward.projection_head(model, completion_mask.numel())
    for rows, length in groups:
        end = prompt_length + length
        rows_pass = prompt_pass.rows(rows) if prompt_pass else None
        tokens, mask = input_ids[rows, prompt_length:end], completion_mask[rows, :length]
        if head is not None:  # a large vocabulary: no [B, C, V] logits
            (hidden,) = completion_states(model, input_ids[rows, :end], attention_mask[rows, :end], prompt_length,
                                          lambda out: (out.hidden_states[-1],), rows_pass, output_hidden_states=True, logits_to_keep=1)
            group_logp, group_entropy = fast_forward.projected_token_logprobs(hidden, head, tokens, mask, temperature, with_entropy,
                                                                                 entropy_grad)
        else:
            logits = completion_logits(model, input_ids[rows, :end], attention_mask[rows, :end], prompt_length, prompt_pass=rows_pass)
            group_logp, group_entropy = (fast_forward.token_logprobs_and_entropy(logits, tokens, mask, temperature, entropy_grad)
                                         if with_entropy
                                         else (fast_forward.token_logprobs(logits, tokens, mask, temperature), None))
        logp[rows, :length] = group_logp
        if with_entropy:
            entropy[rows, :length] = group_entropy
    return logp[:, :width], (entropy[:, :width] if with_entropy else None)


def completion_mask_from_ids(completion_ids: Tensor, eos_token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """(mask `[B, C]`, is_truncated `[B]`): tokens up to and including the first of any eos id are valid."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(1), torch.full_like(has_eos, completion_ids.shape[1], dtype=torch.long))
    steps = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    return (steps[None, :] <= first_eos[:, None]).float(), ~has_eos


def completion_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: Completion) -> list[int]:
    """The token ids that follow the prompt's for this completion, up to and including what ends it: the text and eos
    after a standard prompt, the assistant turn to its end-of-turn token after a conversational one."""
    if is_conversational(prompt):
        return tokenizer(render_completion(tokenizer, prompt, completion), add_special_tokens=False)["input_ids"]
    return tokenizer(" " + message_text(completion).strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_completions(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], completions: list[Completion],
                       model: PreTrainedModel) -> tuple[Tensor, Tensor, Tensor]:
    """Given completions in the rollout layout (input_ids, attention_mask `[B, P + C]`, completion_mask
    `[B, C]`): the prompt left-padded as the policy reads it, then the completion and what ends it
    (completion_token_ids), cut to fit the model's context (a completion cut short loses its end, as a
    truncated sample has none)."""
    batch = encode_prompts(tokenizer, prompts, 1, model)
    room = context_length(model) - batch["input_ids"].shape[1]
    eos = tokenizer.eos_token_id
    tails = [completion_token_ids(tokenizer, p, c)[:room] for p, c in zip(prompts, completions, strict=True)]
    width = max(map(len, tails))
    completion_ids = torch.tensor([t + [eos] * (width - len(t)) for t in tails])
    completion_mask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for t in tails])
    return (torch.cat([batch["input_ids"], completion_ids], dim=1), torch.cat([batch["attention_mask"], completion_mask.long()], dim=1),
            completion_mask)


def sequence_logprobs(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> Tensor:
    """log pi(completion | prompt) summed over each completion's tokens `[B]` (temperature 1), the log-prob
    DPO compares; rows with the same prompt share its forward pass."""
    return completion_logprobs(model, input_ids, attention_mask, completion_mask)[0].sum(1)


@torch.no_grad()
def trainer_forward(forward, minibatches: list[Tensor]) -> tuple[Tensor, ...]:
    """forward(rows) -> per-token tensors `[b, C]` for each minibatch's rows `[b]`, put back in batch order `[B, C]`.

    The old and reference log-probs (and PPO's old values) come from the very forward the update runs, on the same
    rows as its first pass, in its precision and mode: with the policy unchanged its ratio is then exactly 1 and its
    KL to an identical reference exactly 0, bit for bit. The sampler's fp32 log-probs, or a forward over the whole
    batch (other matmul shapes), differ in the last bits, and in bf16 by far more."""
    parts = [forward(rows) for rows in minibatches]
    order = torch.cat(minibatches)
    stitched = []
    for pieces in zip(*parts, strict=True):
        whole = torch.cat(pieces)
        stitched.append(torch.empty_like(whole).index_copy_(0, order.to(whole.device), whole))
    return tuple(stitched)


def sampler_mismatch(trainer_logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """TRL's sampling/sampling_logp_difference/{mean,max}: |log pi_trainer - log pi_sampler| over the valid tokens, the
    gap between the distribution the tokens were drawn from and the one the loss assumes (float rounding in fp32;
    bf16's rounding, a dropout left on, or sampling settings of the sampler's own otherwise)."""
    gap = (trainer_logprobs - sampling_logprobs).abs()[mask.bool()]
    if not len(gap):  # every completion masked out (mask_truncated_completions): the same keys on every process
        gap = mask.new_zeros(1)
    return {"sampling/sampling_logp_difference/mean": gap.mean().item(), "sampling/sampling_logp_difference/max": gap.max().item()}


@torch.inference_mode()
def sample_rollout(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], sampling: SamplingConfig,
                   ref_model: PreTrainedModel | None = None, uniforms: RowUniforms | None = None, episodes: list | None = None) -> Rollout:
    """Sample one completion per prompt (repeat prompts for groups), with the sampler's log-probs, and with ref_model
    the reference's (fp32, eval mode), for evaluation's KL; the trainer takes both from its own forward instead.
    uniforms: the sampling's random numbers (a multi-process run's share of the batch's; default: torch's generator).
    episodes: one per prompt (Agent.start), for a multi-turn rollout."""
    batch = encode_prompts(tokenizer, prompts, sampling.max_new_tokens, policy).to(policy.device)
    eos_token_ids, temperature = stop_token_ids(policy, tokenizer), sampling.temperature or 1.0
    turns = None
    if episodes is not None:
        turns = TurnTaker(sampling.chooser(uniforms), tokenizer, episodes, eos_token_ids, any(map(is_conversational, prompts)))
        eos_token_ids = turns.stop_ids
    with evaluation_mode(policy):
        sequences, step_logprobs = sample_sequences(policy, tokenizer, batch, sampling, eos_token_ids,
                                                    per_step=functools.partial(core.token_logprobs, temperature=temperature),
                                                    uniforms=uniforms, choose=turns)
    prompt_length = batch["input_ids"].shape[1]
    completion_ids = sequences[:, prompt_length:]
    written, is_truncated = completion_mask_from_ids(completion_ids, eos_token_ids)  # every token up to the end
    completion_mask = written if turns is None else written * (1.0 - turns.env_mask(written.shape[1]).to(written))
    # log-probs step by step keep memory at [B, V], not [B, C, V]
    sampling_logprobs = torch.stack(step_logprobs, dim=1) * completion_mask
    input_ids = sequences
    attention_mask = torch.cat([batch["attention_mask"], written.long()], dim=1)
    ref_logprobs = None
    if ref_model is not None:
        with evaluation_mode(ref_model):
            ref_logprobs, _ = completion_logprobs(ref_model, input_ids, attention_mask, completion_mask, temperature)
    messages = turns.completion_messages(completion_ids) if turns is not None and turns.chat is not None else None
    # the texts shown and logged: a chat rollout's turns as a standard completion writes them, not the template's scaffold
    completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True) if messages is None else list(map(plain_text, messages))
    return Rollout(prompts, completions, input_ids, attention_mask, completion_mask, sampling_logprobs, ref_logprobs, is_truncated,
                   episodes, messages)
