#!/usr/bin/env python
"""Train a Bradley-Terry reward model on the rule-labelled preference pairs in data/.

    python scripts/train_reward_model.py --run-dir runs/rm                     # clean labels
    python scripts/train_reward_model.py --label-noise 0.1 --run-dir runs/rm-noisy
    python scripts/train_rlhf.py --reward rm:runs/rm/model --gold-reward length,format
    accelerate launch --multi_gpu --num_processes 2 scripts/train_reward_model.py --cpu   # 2 processes

Every field is a flag (see --help).
"""

import json

from classic_rl.infra.cli import cli, parse_config
from rlhf_toy.rewards.reward_model import RewardModelConfig, train_reward_model


@cli
def main() -> None:
    summary = train_reward_model(parse_config(RewardModelConfig, description=__doc__))
    if summary:  # the main process's
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
