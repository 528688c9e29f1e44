#!/usr/bin/env python
"""Be the human in RLHF: judge pairs of the model's own completions in the terminal or in the browser.

    python scripts/label.py --n 50 --criterion "prefer the shorter answer"   # you answer 1 / 2 / t / s / q
    python scripts/label.py --web --port 8000 --n 50                         # the same at http://127.0.0.1:8000/
    python scripts/label.py --pointwise --n 40                               # you score each completion 1-5
    python scripts/label.py --simulate brevity --label-noise 0.1 --n 50      # a rule answers for you
    python scripts/train_reward_model.py --preferences runs/labels/pairs.jsonl --run-dir runs/my-rm

Every answer is appended to --out and fsynced at once (on the page: before it says "saved"): quit with q,
Ctrl-C or by closing the terminal, and running the same command again continues where you stopped without showing a pair
twice. Rows follow data/preferences_*.jsonl, plus labeller, time and model (rlhf_toy/rewards/labelling.py).
"""

import json

from classic_rl.infra.cli import cli, parse_config
from rlhf_toy.rewards.labelling import LabelConfig, run_labelling


@cli
def main() -> None:
    summary = run_labelling(parse_config(LabelConfig, description=__doc__))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
