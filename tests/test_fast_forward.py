"""The speed work of rlhf_toy/generation/fast_forward.py against the plain versions it replaces (the prompt pass and the length
groups are checked on whole models in test_rlhf.py)."""

import pytest
import torch

from classic_rl import core
from rlhf_toy.generation import fast_forward


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32), torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_in_chunks_equal_one_log_softmax(monkeypatch, dtype):
    """Chunks of 2 rows over 5 (the last one short): the values and gradients of core's plain token_logprobs_and_entropy
    on the fp32 logits; bf16 logits get a bf16 gradient, that one rounded."""
    monkeypatch.setattr(fast_forward.ChunkedTokenLogprobs, "CHUNK_ELEMENTS", 2 * 7)
    torch.manual_seed(0)
    logits, tokens = (3 * torch.randn(5, 7)).to(dtype), torch.randint(0, 7, (5,))
    upstream, mask = torch.randn(5), t(1, 1, 0, 1, 1)
    chunked_logits, plain_logits = logits.clone().requires_grad_(), logits.float().requires_grad_()
    logp, entropy = fast_forward.token_logprobs_and_entropy(chunked_logits, tokens, mask, temperature=0.7)
    plain_logp, plain_entropy = core.token_logprobs_and_entropy(plain_logits, tokens, mask, temperature=0.7)
    close(logp, plain_logp)
    close(entropy, plain_entropy)
    close(fast_forward.token_logprobs(logits, tokens, mask, temperature=0.7), plain_logp)
    (logp * upstream).sum().backward()
    (plain_logp * upstream).sum().backward()
    assert chunked_logits.grad.dtype == dtype
    close(chunked_logits.grad, plain_logits.grad.to(dtype).float())


@pytest.mark.parametrize("uses", ["entropy", "both"])
def test_the_entropy_gradient_in_chunks_equals_autograds(monkeypatch, uses):
    """With entropy_grad (an entropy bonus) the chunked backward gives autograd's gradient of the entropy through one
    log-softmax, alone and added to the log-probs'; the temperature scales it."""
    monkeypatch.setattr(fast_forward.ChunkedTokenLogprobs, "CHUNK_ELEMENTS", 2 * 7)
    torch.manual_seed(1)
    logits, tokens, mask = 3 * torch.randn(5, 7), torch.randint(0, 7, (5,)), t(1, 1, 0, 1, 1)
    upstream_logp, upstream_entropy = torch.randn(5), torch.randn(5)
    chunked_logits, plain_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    for source, x in ((fast_forward, chunked_logits), (core, plain_logits)):
        logp, entropy = source.token_logprobs_and_entropy(x, tokens, mask, temperature=0.7, entropy_grad=True)
        ((entropy * upstream_entropy).sum() + (logp * upstream_logp).sum() * (uses == "both")).backward()
    assert plain_logits.grad[2].abs().sum() == 0 and plain_logits.grad.abs().sum() > 0  # the masked row has none
    close(chunked_logits.grad, plain_logits.grad)


@pytest.mark.parametrize("model_dir", ["nano_dir", "nano_llama_dir"])
def test_large_vocabularies_get_the_same_log_probs_from_hidden_states_without_whole_logits(model_dir, request, monkeypatch):
    """With the threshold at 0 every forward takes the projected path, in chunks of 7 rows: log-probs and entropies equal
    those of the whole logits, and so do the gradients (to float rounding)."""
    from rlhf_toy.generation.rollout import completion_logprobs, sample_rollout
    from rlhf_toy.generation.sampling import SamplingConfig
    from rlhf_toy.lm.models import load_model, load_tokenizer
    folder = request.getfixturevalue(model_dir)
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    torch.manual_seed(0)
    rollout = sample_rollout(model, tokenizer, [p for p in ["Describe a fox.", "Who lives in Redfern?"] for _ in range(4)],
                             SamplingConfig(max_new_tokens=12))
    results = []
    for large in (False, True):
        if large:
            monkeypatch.setattr(fast_forward, "LARGE_LOGITS_BYTES", 0)
            monkeypatch.setattr(fast_forward, "PROJECTION_CHUNK_BYTES", 4 * len(tokenizer) * 7)
        assert (fast_forward.projection_head(model, rollout.completion_mask.numel()) is not None) == large
        model.zero_grad()
        logp, entropy = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.completion_mask, 0.8, True)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        results.append((logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (whole_logp, whole_entropy, whole_grads), (projected_logp, projected_entropy, projected_grads) = results
    close(projected_logp, whole_logp, atol=1e-5)
    close(projected_entropy, whole_entropy, atol=1e-5)
    for projected, whole in zip(projected_grads, whole_grads, strict=True):
        close(projected, whole, atol=1e-5)
