"""scripts/label.py: answers through a scripted stdin, continuing a file, a killed session, the simulated
labeller; and the reward model trained on what it wrote (ties, pointwise scores)."""

import io
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from classic_rl.core import bradley_terry_loss
from classic_rl.infra.errors import ConfigError
from rlhf_toy.data import load_preferences, to_labels
from rlhf_toy.rewards.functions import answer_text
from rlhf_toy.rewards.labelling import LabelFile, SimulatedLabeller, pair_key
from rlhf_toy.rewards.reward_model import RewardModelConfig, held_out_accuracy, train_reward_model
from tests.conftest import ROOT, run_script


def label(args, answers, nano_dir, tmp_path, monkeypatch, capsys):
    """Run label.py in-process on the nano model with `answers` as its stdin; (exit code, stdout, rows)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(a + "\n" for a in answers)))
    out = tmp_path / "labels.jsonl"
    code, stdout, stderr = run_script("label.py", ["--model", nano_dir, "--out", str(out), *args], monkeypatch, capsys)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return code, stdout + stderr, rows


def test_answers_ties_skips_and_bad_keys_become_rows(nano_dir, tmp_path, monkeypatch, capsys):
    code, out, rows = label(["--n", "3", "--criterion", "prefer the shorter answer"], ["x", "1", "2", "s", "T", ""],
                            nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 0
    assert "'x' is not an answer; accepted: 1, 2, t, s, q" in out and "prefer the shorter answer" in out
    assert [r["outcome"] for r in rows] == ["preferred", "preferred", "skipped", "tie"]
    shown = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("  [2] ")]
    assert rows[1]["chosen"].startswith(shown[1][:20])  # "2" chose the second completion shown
    assert rows[0]["criterion"] == "prefer the shorter answer" and rows[0]["labeller"].startswith("human:")
    assert len({pair_key(r["prompt"], r["chosen"], r["rejected"]) for r in rows}) == 4
    assert '"labelled": 3' in out  # the tie counts, the skip does not


def test_quit_and_continue_never_repeats_a_pair(nano_dir, tmp_path, monkeypatch, capsys):
    code, _, first = label(["--n", "4"], ["1", "q"], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 0 and len(first) == 1
    code, out, rows = label(["--n", "4"], ["2", "1"], nano_dir, tmp_path, monkeypatch, capsys)  # then end of input
    assert "1 of 4 labels already there; continuing" in out
    assert rows[0] == first[0] and len(rows) == 3
    assert len({pair_key(r["prompt"], r["chosen"], r["rejected"]) for r in rows}) == 3
    code, out, rows = label(["--n", "3"], [], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 0 and len(rows) == 3 and "3 of 3 labels" in out


def test_pointwise_scores_each_completion(nano_dir, tmp_path, monkeypatch, capsys):
    code, out, rows = label(["--pointwise", "--n", "2"], ["3", "9", "s", "5"], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 0 and "'9' is not an answer; accepted: 1, 2, 3, 4, 5, s, q" in out
    assert [(r["score"], r["outcome"]) for r in rows] == [(3, "scored"), (None, "skipped"), (5, "scored")]
    assert load_preferences(tmp_path / "labels.jsonl")[0] == "pointwise"


def test_a_file_of_the_other_kind_is_refused(nano_dir, tmp_path, monkeypatch, capsys):
    label(["--n", "1"], ["1"], nano_dir, tmp_path, monkeypatch, capsys)
    code, out, _ = label(["--n", "2", "--pointwise"], ["3"], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 2 and "holds pairwise labels" in out and len(out.strip().splitlines()) == 1


def test_label_noise_needs_a_simulated_labeller(nano_dir, tmp_path, monkeypatch, capsys):
    code, out, _ = label(["--label-noise", "0.1"], [], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 2 and "give --simulate REWARD" in out


def test_a_line_cut_off_by_a_kill_is_dropped_and_the_rest_kept(tmp_path):
    path = tmp_path / "labels.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "outcome": "preferred"}
    path.write_text(json.dumps(good) + "\n" + '{"prompt": "q", "chosen": "a", "rej')
    file = LabelFile(path, pointwise=False)
    assert file.repaired and file.rows == [good] and path.read_text() == json.dumps(good) + "\n"
    path.write_text("not json\n" + json.dumps(good) + "\n")
    with pytest.raises(ConfigError, match="labels.jsonl:1 is not JSON"):
        LabelFile(path, pointwise=False)


def start_labelling(nano_dir, out):
    """label.py in its own process, with Ctrl-C's default meaning restored: a shell without job control starts background
    commands with SIGINT ignored, which Python then keeps ignoring (no KeyboardInterrupt), and pytest may run in one."""
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "label.py"), "--model", nano_dir, "--out", str(out), "--n", "5"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_rows(out, n: int, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (out.exists() and len(out.read_text().splitlines()) >= n):
        assert process.poll() is None and time.monotonic() < deadline, "label.py ended or stalled"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_or_interrupted_session_keeps_every_answer(nano_dir, tmp_path, sig):
    out = tmp_path / "labels.jsonl"
    process = start_labelling(nano_dir, out)
    process.stdin.write("1\n2\n")
    process.stdin.flush()
    wait_for_rows(out, 2, process)
    time.sleep(0.3)  # waiting at the third question
    process.send_signal(sig)
    process.wait(timeout=30)  # before closing its stdin (communicate does): an end of input would be a normal quit
    output = process.communicate(timeout=30)[0]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["outcome"] == "preferred" for r in rows)
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "2 labels are saved in" in output and "Traceback" not in output


def test_simulated_labeller_prefers_the_higher_reward_and_flips_at_the_noise_rate():
    row = {"prompt": "Describe a fox."}
    exact = SimulatedLabeller("brevity", 0.0, seed=0)
    assert exact.judge_pair(row, "a b c", "a b") == ("2", [1 - 3 / 40, 1 - 2 / 40])
    assert exact.judge_pair(row, "a b", "c d")[0] == "tie"
    assert exact.judge_one(row, "") == 5 and exact.judge_one(row, " ".join(["w"] * 40)) == 1
    noisy = SimulatedLabeller("brevity", 0.3, seed=0)
    flips = sum(noisy.judge_pair(row, "a b c", "a b")[0] == "1" for _ in range(1000))
    assert 250 < flips < 350


def test_simulated_labelling_writes_scores_and_follows_the_rule(nano_dir, tmp_path, monkeypatch, capsys):
    code, _, rows = label(["--simulate", "brevity", "--n", "12"], [], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 0 and len(rows) == 12 and rows[0]["labeller"] == "simulate:brevity"
    for r in rows:
        words = len(answer_text(r["chosen"]).split()), len(answer_text(r["rejected"]).split())
        assert words[0] < words[1] if r["outcome"] == "preferred" else words[0] == words[1]
        assert r["score_chosen"] >= r["score_rejected"]


def test_bradley_terry_with_a_tie_by_hand():
    # a preferred pair with margin 1 and a tie with margin 2:
    # ( -log s(1)  +  -(log s(2) + log s(-2)) / 2 ) / 2, s = sigmoid
    s = torch.sigmoid
    expected = (-torch.log(s(torch.tensor(1.0))) - (torch.log(s(torch.tensor(2.0))) + torch.log(s(torch.tensor(-2.0)))) / 2) / 2
    loss = bradley_terry_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx(expected.item())


def test_pointwise_accuracy_is_concordance_of_differently_scored_pairs():
    rows = [{"prompt": "p", "completion": c, "score": s} for c, s in (("a", 1), ("b", 3), ("c", 5), ("d", 5))]
    labels, _ = to_labels("pointwise", rows)
    assert labels.target.tolist() == [-1.0, 0.0, 1.0, 1.0]

    class FixedScores(torch.nn.Module):  # scores a=0, b=2, c=1, d=3: of the 5 pairs with different scores, b>c is wrong
        device = torch.device("cpu")

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.tensor([[0.0], [2.0], [1.0], [3.0]])})()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rlhf_toy.rewards.reward_model.sequence_texts", lambda tok, prompts, texts: texts)
        mp.setattr("rlhf_toy.rewards.reward_model.score_texts", lambda model, tok, texts: model(None, None).logits.squeeze(-1))
        assert held_out_accuracy(FixedScores(), None, labels) == pytest.approx(4 / 5)


def test_a_reward_model_whose_held_out_labels_rank_nothing_reports_no_accuracy(nano, nano_dir, tmp_path):
    """Two scored completions: one trains, the one held out has no other to be ordered against (it ended in an IndexError)."""
    rows = [{"prompt": "Describe a kind badger.", "completion": c, "score": s, "outcome": "scored"} for c, s in (("A badger.", 4), ("No.", 2))]
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = train_reward_model(RewardModelConfig(model=nano_dir, data_dir=str(nano[0] / "data"), preferences=str(tmp_path / "scores.jsonl"),
                                                   steps=2, spearman_samples=8, run_dir=str(tmp_path / "rm")))
    assert summary["eval_labels"] == 1 and summary["eval_accuracy"] is None
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["eval_accuracy"] is None


@pytest.mark.parametrize("pointwise", [False, True])
def test_reward_model_learns_from_simulated_labels(nano, nano_dir, tmp_path, monkeypatch, capsys, pointwise):
    args = ["--simulate", "brevity", "--n", "120", *(["--pointwise"] if pointwise else [])]
    code, _, _ = label(args, [], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 0
    summary = train_reward_model(RewardModelConfig(
        model=nano_dir, data_dir=str(nano[0] / "data"), preferences=str(tmp_path / "labels.jsonl"), gold_reward="brevity",
        steps=60, batch_size=16, learning_rate=1e-3, eval_every=30, spearman_samples=32, run_dir=str(tmp_path / "rm")))
    assert summary["labels"] == ("pointwise" if pointwise else "pairwise") and summary["eval_labels"] == 24
    # measured on these labels over reward-model seeds 0-3 (pairs, many differing by one word): held-out accuracy 0.61-0.86,
    # Spearman with the rule 0.59-0.77; scores (seed 0): 0.94 and 0.82. The bounds sit under that spread, far above chance
    assert summary["eval_accuracy"] > 0.55 and summary["spearman"] > 0.5


def test_the_whole_loop_with_a_simulated_labeller(nano_dir, tmp_path, monkeypatch, capsys):
    """label (a rule preferring shorter answers) -> reward model -> GRPO: the policy moves toward the criterion."""
    run_dir = tmp_path / "loop"
    code, out, err = run_script("rlhf_loop.py", ["--model", nano_dir, "--simulate", "brevity", "--n", "40", "--rm-steps", "30",
                                                 "--steps", "12", "--run-dir", str(run_dir)], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["labels"] == 40 and len((run_dir / "labels.jsonl").read_text().splitlines()) == 40
    assert summary["rm_spearman"] > 0.5
    assert summary["judge_after"] > summary["judge_before"] and summary["words_after"] < summary["words_before"]
    assert "| prompt | before | RM | judge | after | RM | judge |" in (run_dir / "samples.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--simulate", "politeness"], "unknown reward 'politeness'"),
    (["--n", "0"], "--n must be > 0"),
    (["--simulate", "brevity", "--label-noise", "0.5"], "--label-noise must be in [0, 0.5)"),
    (["--prompts", "missing.jsonl"], "missing.jsonl not found"),
    (["--model", "no/such/folder"], "no/such/folder"),
    (["--agree-with", "no/bob.jsonl"], "--agree-with: no file no/bob.jsonl; accepted: label files other labellers wrote"),
    (["--agree-with", "pyproject.toml", "--pointwise"], "--agree-with compares answers to pairs; accepted: pair files"),
    (["--web", "--simulate", "brevity"], "--web shows the pairs to a person and --simulate answers them by a rule"),
])
def test_bad_label_flags_are_one_line_errors_and_write_nothing(args, message, tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels.jsonl"
    code, _, err = run_script("label.py", ["--out", str(out), *args], monkeypatch, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_loop_refuses_an_unknown_judge_before_labelling(tmp_path, monkeypatch, capsys):
    code, _, err = run_script("rlhf_loop.py", ["--judge", "kindness", "--run-dir", str(tmp_path / "loop")], monkeypatch, capsys)
    assert code == 2 and "unknown reward 'kindness'" in err and not (tmp_path / "loop").exists()


def test_agreement_counts_the_same_answers_to_the_pairs_both_labellers_labelled(tmp_path):
    from rlhf_toy.rewards.labelling import agreement

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": prompt, "chosen": c, "rejected": r, "outcome": o}) + "\n" for prompt, c, r, o in rows))
        return LabelFile(path, pointwise=False)

    mine = write("alice.jsonl", [("p1", "a", "b", "preferred"), ("p2", "c", "d", "tie"), ("p3", "e", "f", "preferred"),
                                 ("p4", "g", "h", "skipped")])
    bob = write("bob.jsonl", [("p1", "a", "b", "preferred"), ("p2", "d", "c", "preferred"), ("p4", "g", "h", "preferred")])
    carol = write("carol.jsonl", [("p1", "b", "a", "preferred"), ("p3", "f", "e", "tie")])
    # p1: bob agrees, carol not; p2: bob not (a preference against a tie); p3: carol not; p4: alice skipped it
    assert agreement(mine, [bob, carol]) == "you and the other labellers agree on 1 of 4 answers to pairs you both labelled"
    assert agreement(mine, []) == ""


def test_the_terminal_shows_agreement_with_another_labeller(nano_dir, tmp_path, monkeypatch, capsys):
    bob = tmp_path / "bob.jsonl"
    assert run_script("label.py", ["--model", nano_dir, "--out", str(bob), "--n", "3", "--simulate", "brevity"], monkeypatch,
                      capsys)[0] == 0
    code, out, rows = label(["--n", "3", "--agree-with", str(bob)], ["1", "1", "1"], nano_dir, tmp_path, monkeypatch, capsys)
    assert code == 0 and len(rows) == 3
    assert re.search(r"you and the other labellers agree on [01] of 1 answers to pairs you both labelled", out)
