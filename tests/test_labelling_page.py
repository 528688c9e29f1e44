"""The labelling page (classic_rl/labelling_page.py) as a person uses it: a real headless Chromium (Debian's, driven by
Playwright) labels pairs of completions (scripts/label.py --web) and clips of an agent (train_from_preferences.py
--labeller web) with the keys, and what the page showed as saved is on disk, a killed server included. The server's own
contract is tested without a browser."""

import json
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from classic_rl.infra.errors import ConfigError
from tests.conftest import ROOT

pytest.importorskip("fastapi", reason="the labelling page needs the web extra (FastAPI, uvicorn): pip install -e '.[web]'")
from classic_rl.labelling_page import LabellingPage, require_free_port  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# the flags a closed network needs (without them Chromium keeps calling Google's hosts at every start)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_an_answer_is_saved_before_the_page_hears_it_was_taken_and_bad_answers_are_refused():
    page, saved, answers = LabellingPage(port=0), [], []
    assert get(page.url + "api/question")["status"] == "waiting"
    asking = threading.Thread(target=lambda: answers.append(page.label(
        {"kind": "pair", "prompt": "p", "first": "a", "second": "b", "progress": "pair 1 of 1"}, save=saved.append)))
    asking.start()
    while get(page.url + "api/question")["status"] != "question":
        pass
    shown = get(page.url + "api/question")["question"]
    assert shown["first"] == "a" and shown["keys"] == {"1": "1", "2": "2", "t": "tie", "s": "skip", "q": "quit"}
    code, body = post(page.url + "api/answer", {"id": shown["id"], "answer": "3"})
    assert code == 409 and body["detail"] == "'3' is not an answer to this question; accepted: 1, 2, tie, skip, quit"
    assert post(page.url + "api/answer", {"id": shown["id"] + 1, "answer": "1"})[0] == 409  # not the question shown
    code, body = post(page.url + "api/answer", {"id": shown["id"], "answer": "tie"})
    asking.join(timeout=10)
    assert code == 200 and body["saved"] and saved == ["tie"] and answers == ["tie"]
    page.finish("all done", linger_s=0)


def test_a_busy_port_is_one_line():
    with pytest.raises(ConfigError, match=r"^--port \d+: 127.0.0.1:\d+ cannot be served .*; accepted: a free port, or 0 for any$"):
        page = LabellingPage(port=0)
        try:
            require_free_port(page.port)
        finally:
            page.finish("", linger_s=0)


@pytest.fixture
def browser_page():
    """A Playwright page in Debian's headless Chromium; skipped, saying why, where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's Chromium (apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        yield browser.new_page(viewport={"width": 1100, "height": 800})
        browser.close()


def start(script: str, args: list[str]) -> tuple[subprocess.Popen, str]:
    """scripts/<script> in its own process; (the process, the page's address it printed)."""
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if match := re.search(r"labelling page: (http://127\.0\.0\.1:\d+/)", line):
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining what it prints
            return process, match.group(1)
    raise AssertionError(f"{script} exited with {process.wait()} before serving its page")


def answer_with_key(page, key: str, question_number: int) -> None:
    """Wait for the question_number-th question, press key, wait until the page says it is saved."""
    page.wait_for_function(f"shown !== null && shown.id === {question_number}", timeout=60_000)
    page.keyboard.press(key)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('saved')", timeout=30_000)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_completion_pairs_labelled_in_the_browser_survive_a_killed_server_and_resume(nano_dir, tmp_path, browser_page):
    out = tmp_path / "alice.jsonl"
    args = ["--web", "--port", "0", "--model", nano_dir, "--out", str(out), "--n", "3", "--labeller", "alice"]
    process, url = start("label.py", args)
    browser_page.goto(url)
    answer_with_key(browser_page, "1", 1)
    answer_with_key(browser_page, "2", 2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    saved = rows(out)
    assert [r["outcome"] for r in saved] == ["preferred", "preferred"] and all(r["labeller"] == "alice" for r in saved)

    process, url = start("label.py", args)  # the same command continues where the killed one stopped
    browser_page.goto(url)
    browser_page.wait_for_function("shown !== null", timeout=60_000)
    assert browser_page.locator("#progress").inner_text() == "pair 3 of 3"
    shown = [browser_page.locator(".side").nth(i).inner_text() for i in range(2)]
    answer_with_key(browser_page, "t", 1)
    assert process.wait(timeout=60) == 0
    saved = rows(out)
    assert len(saved) == 3 and saved[2]["outcome"] == "tie"
    assert [saved[2]["chosen"], saved[2]["rejected"]] == [text.split("\n", 1)[1] for text in shown]  # a tie keeps the order
    browser_page.wait_for_function("document.getElementById('status').textContent.includes('3 of 3 labels saved')")


def test_clips_of_an_agent_labelled_in_the_browser_train_the_reward_model(tmp_path, browser_page):
    run = tmp_path / "run"
    args = ["--labeller", "web", "--port", "0", "--env", "CartPole-v1", "--max-labels", "4", "--total-timesteps", "4096",
            "--label-every", "1024", "--initial-label-fraction", "0.5", "--reward-steps", "10", "--eval-every", "4096",
            "--eval-episodes", "2", "--run-dir", str(run)]
    process, url = start("train_from_preferences.py", args)
    browser_page.goto(url)
    browser_page.wait_for_function("shown !== null", timeout=60_000)
    assert browser_page.locator(".side img").count() == 2
    browser_page.wait_for_function("[...document.querySelectorAll('.side img')].every(img => img.complete && img.naturalWidth > 0)")
    for number, key in enumerate(["1", "2", "t", "s"], 1):
        answer_with_key(browser_page, key, number)
    browser_page.wait_for_function("shown !== null && shown.id === 5", timeout=60_000)  # the next round wants the skipped one
    browser_page.keyboard.press("q")  # enough: training goes on with 3 labels
    browser_page.wait_for_function("document.getElementById('status').textContent.startsWith('labelling stopped')")
    assert process.wait(timeout=120) == 0
    answers = rows(run / "answers.jsonl")
    assert [a["answer"] for a in answers] == ["1", "2", "tie", "skip"]  # a quit is no answer
    labels = rows(run / "labels.jsonl")
    assert [label["mu"] for label in labels] == [1.0, 0.0, 0.5]  # the skipped pair is no label
    summary = json.loads((run / "summary.json").read_text())
    assert summary["labels_used"] == 3 and summary["labeller"] == "web"
    assert len(list((run / "clips").glob("*.gif"))) == 10  # two clips for each of the five pairs shown
