#!/usr/bin/env python
"""Screenshots of the labelling page for the README, taken in Debian's headless Chromium through Playwright: a pair of
completions (the first pair of data/preferences_eval.jsonl, as label.py --web shows one) and a pair of LunarLander clips
(two stretches of a random agent's episode, as train_from_preferences.py --labeller web shows them).

    python scripts/screenshot_labelling_pages.py --out docs        # docs/labelling_pairs.png, docs/labelling_clips.png
"""

import json
import tempfile
import threading
from pathlib import Path

import numpy as np

from classic_rl import envs
from classic_rl.infra.cli import cli, script_parser
from classic_rl.infra.errors import ConfigError
from classic_rl.labelling_page import LabellingPage
from rlhf_toy.data import DATA_DIR

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def clip_question(folder: Path) -> dict:
    """Two 50-step stretches of one random LunarLander episode (seed 3), rendered as the loop renders segments."""
    actions = np.random.default_rng(0).integers(0, 4, 400).tolist()
    for name, first_step in (("first.gif", 20), ("second.gif", 60)):
        envs.record_segment_gif("LunarLander-v3", {"seed": 3}, actions, first_step, 50, folder / name)
    return {"kind": "clips", "first": "first.gif", "second": "second.gif", "progress": "pair 3 of 40 this round (500 labels so far, "
            "2000 wanted)", "agreement": "the reward model agreed with 14 of your last 20 preferences",
            "criterion": "which clip shows the better LunarLander-v3 agent?"}


def pair_question() -> dict:
    row = json.loads((DATA_DIR / "preferences_eval.jsonl").read_text().splitlines()[0])
    return {"kind": "pair", "prompt": row["prompt"], "first": row["chosen"], "second": row["rejected"], "progress": "pair 7 of 50",
            "criterion": "prefer the shorter answer"}


def screenshot(question: dict, media: Path, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    page = LabellingPage(port=0, media_dir=media)
    threading.Thread(target=page.label, args=(question, lambda answer: None), daemon=True).start()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        tab = browser.new_page(viewport={"width": 1000, "height": 620 if question["kind"] == "clips" else 420})
        tab.goto(page.url)
        tab.wait_for_function("shown !== null && [...document.querySelectorAll('img')].every(i => i.complete)")
        tab.screenshot(path=str(path))
        browser.close()
    page.finish("", linger_s=0)


@cli
def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--out", default="docs", help="Folder the two PNGs are written to")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise ConfigError(f"no browser at {CHROMIUM}; accepted: Debian's chromium package (apt-get install chromium)")
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as media:
        screenshot(pair_question(), Path(media), out / "labelling_pairs.png")
        screenshot(clip_question(Path(media)), Path(media), out / "labelling_clips.png")
    print(f"wrote {out / 'labelling_pairs.png'} and {out / 'labelling_clips.png'}")


if __name__ == "__main__":
    main()
