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
