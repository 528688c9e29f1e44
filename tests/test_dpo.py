"""DPO: its losses by hand, the teacher-forced log-probs against the sampler's own, a short learning run
on the nano model, and its bad inputs."""

import json
import math

import pytest
import torch

from rlhf_toy.algorithms.dpo import DPOConfig, dpo_loss, train_dpo
from rlhf_toy.generation.rollout import encode_completions, sample_rollout, sequence_logprobs
from rlhf_toy.generation.sampling import SamplingConfig
from rlhf_toy.lm.models import load_model, load_tokenizer
from tests.conftest import run_script

# policy and reference log-probs of two pairs: h = (pc - rc) - (pr - rr) = (-2 + 3) - (-5 + 4) = 2 and (-1 + 1) - (-1 + 3) = -2
PC, PR, RC, RR = torch.tensor([-2.0, -1.0]), torch.tensor([-5.0, -1.0]), torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -3.0])


def log_sigmoid(x: float) -> float:
    return -math.log(1 + math.exp(-x))


def test_sigmoid_loss_by_hand():
    # beta 0.5: -log sigmoid(0.5 * 2) and -log sigmoid(0.5 * -2), averaged
    expected = -(log_sigmoid(1.0) + log_sigmoid(-1.0)) / 2
    assert dpo_loss(PC, PR, RC, RR, beta=0.5).item() == pytest.approx(expected)


def test_label_smoothing_by_hand_robust_as_trl_and_cdpo_under_its_own_name():
    eps = 0.2  # beta h = 1 and -1
    # TRL's sigmoid ignores label_smoothing: the plain sigmoid loss whatever eps is
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=eps).item() == pytest.approx(-(log_sigmoid(1.0) + log_sigmoid(-1.0)) / 2)
    # robust (TRL): (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps) per pair
    robust = [(-(1 - eps) * log_sigmoid(b) + eps * log_sigmoid(-b)) / (1 - 2 * eps) for b in (1.0, -1.0)]
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="robust", label_smoothing=eps).item() == pytest.approx(sum(robust) / 2)
    # cDPO: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h) per pair
    cdpo = [-(1 - eps) * log_sigmoid(b) - eps * log_sigmoid(-b) for b in (1.0, -1.0)]
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="cdpo", label_smoothing=eps).item() == pytest.approx(sum(cdpo) / 2)
    assert robust[0] != pytest.approx(cdpo[0])  # on one pair; over these two pairs their sums happen to agree


def test_label_smoothing_is_refused_where_the_loss_has_none():
    from classic_rl.infra.errors import ConfigError
    with pytest.raises(ConfigError, match="--label-smoothing is the epsilon of --loss-type robust or cdpo; --loss-type sigmoid takes none"):
        DPOConfig(label_smoothing=0.1)


def test_ipo_loss_by_hand():
    # beta 0.25: (h - 1 / (2 * 0.25))^2 = (2 - 2)^2 = 0 and (-2 - 2)^2 = 16
    assert dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="ipo").item() == pytest.approx(8.0)


def test_encoded_completions_score_as_the_sampler_did(nano_dir):
    """Sampled completions re-encoded from their text: the sequence log-prob equals a plain forward's over the
    whole sequence, and where the text tokenizes back to the sampled tokens, the sampler's own log-probs."""
    tokenizer, model = load_tokenizer(nano_dir), load_model(nano_dir).eval()
    prompts = ["Describe a cold wolf.", "Tell me about Mina.", "Describe a cold wolf.", "Write about the forest."] * 4
    torch.manual_seed(0)
    rollout = sample_rollout(model, tokenizer, prompts, SamplingConfig(max_new_tokens=60))
    input_ids, attention_mask, completion_mask = encode_completions(tokenizer, prompts, rollout.completions, model)
    with torch.no_grad():
        logps = sequence_logprobs(model, input_ids, attention_mask, completion_mask)
        plain = torch.log_softmax(model(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=(attention_mask.cumsum(1) - 1).clamp(min=0)).logits[:, :-1], -1)
    completion_length = completion_mask.shape[1]
    targets = input_ids[:, -completion_length:]
    by_hand = (plain[:, -completion_length:].gather(-1, targets.unsqueeze(-1)).squeeze(-1) * completion_mask).sum(1)
    torch.testing.assert_close(logps, by_hand, atol=1e-4, rtol=1e-4)
    same_tokens = [i for i in range(len(prompts)) if not rollout.is_truncated[i] and completion_mask[i].sum() == rollout.completion_mask[i].sum()
                   and torch.equal(targets[i][completion_mask[i].bool()], rollout.completion_ids[i][rollout.completion_mask[i].bool()])]
    # left out: samples cut off at max_new_tokens (no eos; their text gains one) and the nano model's stray bytes,
    # which decode to U+FFFD and encode back as other tokens (2 of the 8 that end)
    assert len(same_tokens) >= 2
    torch.testing.assert_close(logps[same_tokens], rollout.sampling_logprobs[same_tokens].sum(1), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def short_dpo(request, nano, tmp_path_factory):
    data = nano[0] / "data"
    run_dir = tmp_path_factory.mktemp("dpo") / "run"
    summary = train_dpo(DPOConfig(model=str(nano[0] / "run" / "model"), preferences=str(data / "preferences_train.jsonl"),
                                  eval_preferences=str(data / "preferences_eval.jsonl"), eval_prompts=str(data / "prompts_eval.jsonl"),
                                  steps=40, eval_every=20, learning_rate=1e-3, precision=request.param, run_dir=str(run_dir)))
    return run_dir, summary


def test_dpo_learns_the_held_out_preferences(short_dpo):
    """In fp32 and in bf16 autocast."""
    run_dir, summary = short_dpo
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # at the reference every implicit reward is 0: no pair is ranked yet; 40 steps of the rule-ranked pairs generalise
    assert rows[0]["rewards/accuracies"] == 0.0 and rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert summary["pair_accuracy"] > 0.75 and rows[-1]["rewards/margins"] > 0
    assert summary["kl_final"] > 0 and summary["wall_s"] > 0  # the nano model never writes the tags: the judge barely moves
    assert {"reward_before", "reward_after", "kl_final", "wall_s", "pair_accuracy"} <= set(summary)
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "curves.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--loss-type", "hinge"], "unknown --loss-type 'hinge'; accepted: sigmoid, robust, cdpo, ipo"),
    (["--loss-type", "ipo", "--label-smoothing", "0.1"], "takes none"),
    (["--label-smoothing", "0.5"], "must be in [0, 0.5)"),
    (["--beta", "0"], "--beta must be > 0"),
    (["--precision", "fp8"], "unknown --precision 'fp8'; accepted: auto, fp32, bf16"),
])
def test_bad_dpo_flags_are_one_line_errors(args, message, monkeypatch, capsys, tmp_path):
    code, _, err = run_script("train_dpo.py", [*args, "--run-dir", str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_dpo_refuses_pointwise_scores(tmp_path, monkeypatch, capsys):
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"prompt": "p", "completion": c, "score": s}) + "\n" for c, s in (("a", 1), ("b", 5))))
    code, _, err = run_script("train_dpo.py", ["--preferences", str(scores), "--eval-preferences", "none",
                                               "--run-dir", str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 2 and "DPO learns from pairs" in err


def test_dpo_stops_when_its_budget_of_wall_time_is_spent(nano, tmp_path):
    data = nano[0] / "data"
    summary = train_dpo(DPOConfig(model=str(nano[0] / "run" / "model"), preferences=str(data / "preferences_train.jsonl"),
                                  eval_preferences=str(data / "preferences_eval.jsonl"), eval_prompts=str(data / "prompts_eval.jsonl"),
                                  steps=1000, max_train_s=1e-9, eval_samples_per_prompt=1, run_dir=str(tmp_path / "run")))
    assert summary["steps"] == 1 and 0 <= summary["pair_accuracy"] <= 1
