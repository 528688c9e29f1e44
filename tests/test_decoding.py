"""Sampling: the fast decoder (GPT-2's and Llama's lean steps) against transformers' generate and a teacher-forced
forward, its fallbacks, stop tokens, and the inverse-CDF sampler."""

import copy
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from classic_rl import core
from rlhf_toy.generation import fast_decode
from rlhf_toy.generation.fast_decode import sample_fast, supports_fast_decode
from rlhf_toy.generation.rollout import completion_mask_from_ids
from rlhf_toy.generation.sampling import RowUniforms, SamplingConfig, encode_prompts, sample_sequences
from rlhf_toy.lm.models import load_model, load_tokenizer, position_ids, stop_token_ids
from tests.conftest import max_difference_while_decoding

PROMPTS = ["Describe a fox.", "Tell me about Ada and the lake in 8 words.", "Hi."]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def policy_and_tokenizer(request):
    """A nano GPT-2 and a nano Llama (rotary positions, RMSNorm, SwiGLU, grouped-query attention): each lean step."""
    model_dir = request.getfixturevalue("nano_dir" if request.param == "gpt2" else "nano_llama_dir")
    return load_model(model_dir).eval(), load_tokenizer(model_dir)


def generate_greedy(policy, tokenizer, batch, max_new_tokens):
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0)
    config = greedy.generation_config(tokenizer, stop_token_ids(policy, tokenizer), with_logits=True)
    with torch.inference_mode():
        return policy.generate(**batch, generation_config=config)


def fast_greedy(policy, tokenizer, batch, max_new_tokens):
    with torch.inference_mode():
        return sample_fast(policy, batch["input_ids"], batch["attention_mask"], max_new_tokens,
                           SamplingConfig(temperature=0).chooser(), stop_token_ids(policy, tokenizer), tokenizer.pad_token_id)


def pad_is_eos(tokenizer):
    """A copy of tokenizer that pads with eos, as GPT-2's hub tokenizer does."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.mark.parametrize("pad", ["own pad token", "pad is eos"])
def test_fast_decode_matches_generate_token_for_token_and_logit_for_logit(pad, policy_and_tokenizer):
    policy, tokenizer = policy_and_tokenizer
    tokenizer = pad_is_eos(tokenizer) if pad == "pad is eos" else tokenizer
    batch = encode_prompts(tokenizer, PROMPTS, 16, policy)
    assert supports_fast_decode(policy) and batch["attention_mask"].min() == 0  # left padding is exercised
    reference = generate_greedy(policy, tokenizer, batch, 16)
    sequences, logits = fast_greedy(policy, tokenizer, batch, 16)
    assert torch.equal(sequences, reference.sequences)
    assert len(logits) == len(reference.logits)
    completion = sequences[:, batch["input_ids"].shape[1]:]
    assert max_difference_while_decoding(logits, reference.logits, completion, stop_token_ids(policy, tokenizer)) < 1e-4


def test_fast_decode_stops_at_any_eos_id_of_the_generation_config(policy_and_tokenizer):
    policy, tokenizer = copy.deepcopy(policy_and_tokenizer[0]), policy_and_tokenizer[1]
    batch = encode_prompts(tokenizer, PROMPTS, 16, policy)
    free_run = fast_greedy(policy, tokenizer, batch, 16)[0][:, batch["input_ids"].shape[1]:]
    end_of_turn = int(free_run[0, 2])  # what row 0 says third becomes an end-of-turn token
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    assert stop_token_ids(policy, tokenizer) == [tokenizer.eos_token_id, end_of_turn]
    sequences, _ = fast_greedy(policy, tokenizer, batch, 16)
    completion = sequences[:, batch["input_ids"].shape[1]:]
    first_stop = int(torch.isin(completion[0], torch.tensor([tokenizer.eos_token_id, end_of_turn])).float().argmax())
    assert first_stop <= 2 and (completion[0, first_stop + 1:] == tokenizer.pad_token_id).all()
    assert torch.equal(sequences, generate_greedy(policy, tokenizer, batch, 16).sequences)


def test_fast_decode_while_sampling_gives_the_logits_of_a_teacher_forced_forward(policy_and_tokenizer):
    policy, tokenizer = policy_and_tokenizer
    batch = encode_prompts(tokenizer, PROMPTS * 2, 20, policy)  # repeated prompts: the shared prefill is exercised
    stops = torch.tensor([tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(".")])  # rows end at a full stop too
    torch.manual_seed(0)
    with torch.inference_mode():
        sequences, logits = sample_fast(policy, batch["input_ids"], batch["attention_mask"], 20,
                                        SamplingConfig(temperature=1.3, top_k=50).chooser(), stops.tolist(), tokenizer.pad_token_id)
        prompt_length = batch["input_ids"].shape[1]
        completion = sequences[:, prompt_length:]
        valid = torch.cat([batch["attention_mask"], torch.ones_like(completion)], dim=1)
        forward = policy(input_ids=sequences, attention_mask=valid, position_ids=position_ids(valid)).logits
    assert len(set(map(tuple, completion.tolist()))) > 3  # sampled: the repeated prompts got different completions
    lengths = completion_mask_from_ids(completion, stops.tolist())[0].sum(1)
    assert lengths.min() < 10 and lengths.max() == 20  # rows finished early: the loop dropped them and went on
    for t, step_logits in enumerate(logits):
        alive = ~torch.isin(completion[:, :t], stops).any(1)  # rows not finished before t
        torch.testing.assert_close(step_logits[alive], forward[alive, prompt_length - 1 + t], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_model_the_lean_step_does_not_compute_falls_back_to_generate(arch, nano_dir, nano_llama_dir):
    model_dir, variant = {"gpt2": (nano_dir, dict(scale_attn_weights=False)),  # attention logits not / sqrt(head_dim)
                          "llama": (nano_llama_dir, dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}))}[arch]  # rotary tables scaled
    tokenizer, policy = load_tokenizer(model_dir), AutoModelForCausalLM.from_pretrained(model_dir, **variant).eval()
    batch = encode_prompts(tokenizer, PROMPTS, 12, policy)
    reference = generate_greedy(policy, tokenizer, batch, 12)
    lean = fast_greedy(policy, tokenizer, batch, 12)[1]
    assert max((a - b).abs().max().item() for a, b in zip(lean, reference.logits, strict=False)) > 1e-2  # it would be wrong
    assert not supports_fast_decode(policy)
    sequences, _ = sample_sequences(policy, tokenizer, batch, SamplingConfig(max_new_tokens=12, temperature=0),
                                    stop_token_ids(policy, tokenizer))
    assert torch.equal(sequences, reference.sequences)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=16, temperature=1.3, top_k=50),
                                      SamplingConfig(max_new_tokens=16, temperature=0.8, top_p=0.9)])
def test_the_fast_decoder_and_generate_draw_the_same_tokens_from_the_same_numbers(sampling, policy_and_tokenizer):
    """Both choose with SamplingConfig.chooser (generate through the ChooseToken processor), so sampling, not only greedy
    decoding, gives the same completions on either path."""
    policy, tokenizer = policy_and_tokenizer
    batch = encode_prompts(tokenizer, PROMPTS * 2, 16, policy)
    eos = stop_token_ids(policy, tokenizer)
    with torch.inference_mode():
        fast, _ = sample_sequences(policy, tokenizer, batch, sampling, eos, uniforms=RowUniforms(3, 0, 6, "cpu"))
        generated, _ = sample_sequences(policy, tokenizer, batch, sampling, eos, uniforms=RowUniforms(3, 0, 6, "cpu"),
                                        fast_decoder=False)
    assert torch.equal(fast, generated)
    assert len({tuple(row) for row in fast[:, batch["input_ids"].shape[1]:].tolist()}) >= 4  # the rows draw numbers of their own


def test_an_unknown_cache_layout_turns_fast_decoding_off_once_with_a_notice(policy_and_tokenizer, monkeypatch):
    class CacheWithoutLayers(fast_decode.DynamicCache):
        layers = property(lambda self: (_ for _ in ()).throw(AttributeError("layers")))

    fast_decode.cache_layout_is_known.cache_clear()
    monkeypatch.setattr(fast_decode, "DynamicCache", CacheWithoutLayers)
    try:
        with pytest.warns(UserWarning, match="sampling falls back to model.generate"):
            assert not supports_fast_decode(policy_and_tokenizer[0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the notice comes once
            assert not supports_fast_decode(policy_and_tokenizer[0])
    finally:
        fast_decode.cache_layout_is_known.cache_clear()


def test_next_tokens_samples_the_softmax_and_respects_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).expand(20_000, 4)
    torch.manual_seed(0)
    counts = torch.bincount(SamplingConfig(temperature=1.0).next_tokens(logits), minlength=4).float() / 20_000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015), counts
    assert set(SamplingConfig(top_k=2).next_tokens(logits).tolist()) == {0, 1}
    assert set(SamplingConfig(top_p=0.5).next_tokens(logits).tolist()) == {0}
    assert set(SamplingConfig(temperature=0).next_tokens(logits).tolist()) == {0}


def test_next_tokens_never_picks_a_filtered_token_even_for_a_uniform_draw_of_zero(monkeypatch):
    logits = torch.tensor([[0.0, 2.0, 1.0, 3.0]])  # top-k 2 filters tokens 0 and 2
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.zeros(*shape))
    assert SamplingConfig(top_k=2).next_tokens(logits).item() == 1  # the first token with probability
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, 1 - 1e-7))
    assert SamplingConfig(top_k=2).next_tokens(logits).item() == 3


@pytest.mark.parametrize("name", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_the_decoding_activation_is_the_models_own_function(name):
    """The sigmoid form of the tanh-approximate GELU is the same function: equal to float32 rounding on [-8, 8]."""
    from transformers.activations import ACT2FN
    x = torch.linspace(-8, 8, 10_001)
    assert (fast_decode.decoding_activation(name)(x) - ACT2FN[name](x)).abs().max() < 2e-6


def test_the_generate_fallback_keeps_each_steps_log_probs_not_its_logits(nano_dir):
    """A model the lean step does not compute samples through generate: the sampler's log-probs, recorded step by step by a
    logits processor, are those of generate's own raw logits and of a teacher-forced forward, and every step's token is
    the one generate chose."""
    from rlhf_toy.generation.rollout import completion_logprobs, sample_rollout
    policy, tokenizer = AutoModelForCausalLM.from_pretrained(nano_dir, scale_attn_weights=False).eval(), load_tokenizer(nano_dir)
    assert not supports_fast_decode(policy)
    batch = encode_prompts(tokenizer, PROMPTS, 10, policy)
    sampling = SamplingConfig(max_new_tokens=10, temperature=0.7)
    torch.manual_seed(5)
    sequences, logprobs = sample_sequences(policy, tokenizer, batch, sampling, stop_token_ids(policy, tokenizer),
                                           per_step=lambda logits, tokens: core.token_logprobs(logits, tokens, temperature=0.7))
    torch.manual_seed(5)
    plain, raw = sample_sequences(policy, tokenizer, batch, sampling, stop_token_ids(policy, tokenizer))
    assert torch.equal(sequences, plain) and len(logprobs) == len(raw)
    for t, logits in enumerate(raw):
        torch.testing.assert_close(logprobs[t], core.token_logprobs(logits, plain[:, batch["input_ids"].shape[1] + t], temperature=0.7))
    torch.manual_seed(5)
    rollout = sample_rollout(policy, tokenizer, PROMPTS, sampling)
    forward, _ = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.completion_mask, 0.7)
    torch.testing.assert_close(rollout.sampling_logprobs, forward, atol=1e-4, rtol=0)


def test_a_qwen2_with_biases_on_its_queries_keys_and_values_decodes_as_generate_does(nano_dir):
    """Qwen2 is a Llama with biases on q, k and v: one built small from its config (random weights, random biases) gives
    generate's greedy tokens and logits through the lean Llama step."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tokenizer = load_tokenizer(nano_dir)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    policy = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in policy.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.normal_(0, 0.5)
    assert supports_fast_decode(policy) and policy.model.layers[0].self_attn.o_proj.bias is None
    batch = encode_prompts(tokenizer, PROMPTS, 16, policy)
    reference = generate_greedy(policy, tokenizer, batch, 16)
    sequences, logits = fast_greedy(policy, tokenizer, batch, 16)
    assert torch.equal(sequences, reference.sequences)
    completion = sequences[:, batch["input_ids"].shape[1]:]
    assert max_difference_while_decoding(logits, reference.logits, completion, stop_token_ids(policy, tokenizer)) < 1e-4
