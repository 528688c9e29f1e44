"""The base policy: corpus, tokenizer, nano pretraining, save/load, batched generation, sample.py."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_toy import corpus
from rlhf_toy.chat import format_prompt
from rlhf_toy.data import DATA_DIR, load_prompts, pad_rows, padded_batch
from rlhf_toy.generation.sampling import SamplingConfig, generate_completions
from rlhf_toy.lm.models import load_model, load_tokenizer, train_tokenizer
from rlhf_toy.lm.pretrain import PretrainConfig, TokenRows, heldout_loss, pretrain
from tests.conftest import SMALL, comparable_metrics, run_script


def test_corpus_is_deterministic_and_leaves_room_for_the_format_reward():
    a, b = corpus.generate_corpus(3, SMALL), corpus.generate_corpus(3, SMALL)
    assert a == b and a != corpus.generate_corpus(4, SMALL)
    responses = [r["response"] for r in corpus.generate_corpus(0, {"sft": 4000})["sft"]]
    formatted = sum(r.startswith(corpus.OPEN_TAG) and r.endswith(corpus.CLOSE_TAG) for r in responses) / len(responses)
    assert 0.05 <= formatted <= 0.20
    lengths = sorted(len(r.split()) for r in responses)
    assert lengths[len(lengths) // 10] <= 5 and lengths[9 * len(lengths) // 10] >= 30  # lengths vary widely


def test_shipped_data_is_what_the_generator_writes():
    for name, rows in corpus.generate_corpus(0).items():
        shipped = [json.loads(line) for line in (DATA_DIR / f"{name}.jsonl").read_text().splitlines()]
        assert shipped == rows, f"data/{name}.jsonl is stale: run scripts/make_data.py"


def test_tokenizer_round_trip_and_padding(tmp_path):
    texts = [r["text"] for r in corpus.generate_corpus(0, SMALL)["pretrain"]]
    tokenizer = train_tokenizer(texts, vocab_size=500)
    sample = format_prompt("Tell me about Ada.") + " <answer> Ada the baker lived in Ashford. </answer>"
    assert tokenizer.decode(tokenizer(sample).input_ids) == sample
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(sample).input_ids == tokenizer(sample).input_ids
    assert loaded.padding_side == "left" and loaded.pad_token_id != loaded.eos_token_id
    batch = loaded(["a fox", "the old fox lived near"], padding=True)
    assert batch["attention_mask"][0][0] == 0 and batch["input_ids"][0][0] == loaded.pad_token_id


def test_nano_pretraining_loss_falls(nano):
    root, summary = nano
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]["train/loss"]
    assert summary["val_loss"] < first - 1.5, (first, summary["val_loss"])
    assert {"val_loss", "perplexity", "tokens_per_s", "params", "wall_s"} <= set(summary)
    assert (root / "run" / "loss.png").is_file()


def test_saved_model_reloads_with_auto_classes_and_same_logits(nano):
    root, _ = nano
    model_dir = root / "run" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(format_prompt("Tell me about Ada."), return_tensors="pt").input_ids
    logits = model(ids).logits
    model.save_pretrained(root / "copy")
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(root / "copy")(ids).logits, logits, rtol=0, atol=0)


def test_batched_generation_with_padding_equals_one_by_one(nano):
    root, _ = nano
    model_dir = str(root / "run" / "model")
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    prompts = ["Tell me about Ada.", "What happened to the lantern in Ashford?", "Describe a fox."]
    greedy = SamplingConfig(max_new_tokens=20, temperature=0)
    batched = generate_completions(model, tokenizer, prompts, greedy)
    assert batched == [generate_completions(model, tokenizer, [p], greedy)[0] for p in prompts]
    assert any(c.strip() for c in batched)


def run_sample(args, monkeypatch, capsys):
    code, out, err = run_script("sample.py", args, monkeypatch, capsys)
    return code, SimpleNamespace(out=out, err=err)


def test_sample_compare_shows_both_models_per_prompt(nano, monkeypatch, capsys):
    root, _ = nano
    model_dir = str(root / "run" / "model")
    code, out, _ = run_script("sample.py", ["--compare", model_dir, model_dir, "--n", "2"], monkeypatch, capsys)
    assert code == 0
    assert out.count(f"{model_dir}: ") == 4 and "[1]" in out


@pytest.mark.parametrize("content, expected", [
    ("", "is empty"),
    ('{"prompt": "ok"}\n{"prompt": "broken"\n', "line 2 is not valid JSON"),
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', "line 2 lacks a non-empty string field 'prompt'"),
])
def test_sample_rejects_bad_prompt_files(content, expected, nano, tmp_path, monkeypatch, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    code, captured = run_sample(["--model", str(nano[0] / "run" / "model"), "--prompts", str(path)], monkeypatch, capsys)
    assert code == 2 and expected in captured.err and captured.err.count("\n") == 1


def test_sample_rejects_missing_model_and_too_many_new_tokens(nano, tmp_path, monkeypatch, capsys):
    code, captured = run_sample(["--model", str(tmp_path / "missing")], monkeypatch, capsys)
    assert code == 2 and "not found (no config.json)" in captured.err
    code, captured = run_sample(["--model", str(nano[0] / "run" / "model"), "--max-new-tokens", "500"], monkeypatch, capsys)
    assert code == 2 and "exceeds the model's context of 128 tokens" in captured.err


def test_text_prompt_files_hold_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("Tell me about Ada.\n\nDescribe a fox.\n")
    assert load_prompts(path) == ["Tell me about Ada.", "Describe a fox."]


def test_a_folder_of_one_s_own_documents_pretrains_without_prompt_response_pairs(tmp_path, capsys):
    (tmp_path / "pretrain.jsonl").write_text("".join(json.dumps({"text": f"Robot {i} likes tea."}) + "\n" for i in range(2000)))
    summary = pretrain(PretrainConfig(preset="nano", data_dir=str(tmp_path), vocab_size=300, n_positions=32, batch_size=8, max_steps=4,
                                      warmup_steps=1, eval_every=4, run_dir=str(tmp_path / "run")))
    assert "no sft.jsonl: pretraining on the documents of pretrain.jsonl alone" in capsys.readouterr().out
    assert summary["steps"] == 4 and load_model(str(tmp_path / "run" / "model")).num_parameters() > 0


def test_pretraining_resumed_from_a_checkpoint_ends_like_an_uninterrupted_run(nano, tmp_path):
    fields = dict(preset="nano", data_dir=str(nano[0] / "data"), vocab_size=600, batch_size=8, max_steps=12, warmup_steps=2,
                  eval_every=4, run_dir=str(tmp_path / "run"), save_every=4, keep_checkpoints=5)
    straight = pretrain(PretrainConfig(**fields))
    reference = comparable_metrics(tmp_path / "run")
    for later in ("step-8", "step-12"):  # as if the run had died just after step 4's checkpoint
        shutil.rmtree(tmp_path / "run" / "checkpoints" / later)
    resumed = pretrain(PretrainConfig(**fields, resume=True))
    assert comparable_metrics(tmp_path / "run") == reference
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], abs=1e-6)


def test_pad_rows_puts_each_text_in_a_row_of_its_own_and_labels_leave_the_padding_out():
    ids, lengths = pad_rows([[5, 6], [7], [8, 9, 10, 11]], eos_id=1, pad_id=0, max_length=4)
    assert ids.tolist() == [[5, 6, 1, 0], [7, 1, 0, 0], [8, 9, 10, 11]] and lengths.tolist() == [3, 2, 4]  # the last cut
    batch, labels = padded_batch(ids, lengths, torch.tensor([0, 1]))
    assert batch.tolist() == [[5, 6, 1], [7, 1, 0]]  # cut to the batch's longest row
    assert labels.tolist() == [[5, 6, 1], [7, 1, -100]]


def test_the_held_out_loss_of_unpacked_rows_is_each_texts_own_loss_whatever_the_padding(nano):
    """Texts of different lengths batched two at a time: the loss over the batches' real tokens is the token-weighted mean of
    each text's loss computed alone (its eos predicted, from position 0)."""
    model_dir = str(nano[0] / "run" / "model")
    model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    texts = [format_prompt("Tell me about Ada.") + " Ada the baker.", "a fox", "the old fox lived near the lake in Ashford"]
    token_lists = tokenizer(texts, add_special_tokens=False).input_ids
    alone = []
    with torch.inference_mode():
        for tokens in token_lists:
            ids = torch.tensor([[*tokens, tokenizer.eos_token_id]])
            alone.append((model(input_ids=ids, labels=ids).loss.item() * len(tokens), len(tokens)))
    rows = TokenRows(token_lists, tokenizer, 64, packing=False)
    assert rows.num_tokens() == sum(n + 1 for _, n in alone)
    expected = sum(loss for loss, _ in alone) / sum(n for _, n in alone)
    assert heldout_loss(model, rows, batch_size=2, device=torch.device("cpu")) == pytest.approx(expected, rel=1e-5)


def test_pretraining_without_packing_learns_from_rows_that_start_at_position_0(nano, tmp_path):
    summary = pretrain(PretrainConfig(preset="nano", data_dir=str(nano[0] / "data"), vocab_size=600, batch_size=8, packing=False,
                                      max_steps=30, warmup_steps=3, eval_every=30, learning_rate=5e-3, run_dir=str(tmp_path / "run")))
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["train/loss"]
    assert summary["val_loss"] < first - 1.0
    assert summary["train_tokens"] < 30 * 8 * 128  # rows as long as their texts, not blocks of n_positions
