#!/usr/bin/env python
"""Fine-tune a causal LM on preference pairs with DPO (no reward model, no sampling during training).

    python scripts/train_dpo.py --run-dir runs/dpo                             # shipped pairs, default base model
    python scripts/train_dpo.py --loss-type ipo --beta 1                       # IPO at a beta of its own (bench/preference-methods.md)
    python scripts/train_dpo.py --preferences runs/labels/pairs.jsonl --eval-preferences none   # your own labels
    accelerate launch --multi_gpu --num_processes 2 scripts/train_dpo.py --cpu   # 2 processes, each half of every batch

Field names follow TRL's DPOConfig (beta, loss_type, label_smoothing, per_device_train_batch_size);
summary.json has reward_before / reward_after (the rule judge on the eval prompts, as RL reports),
kl_final, wall_s and the held-out pair_accuracy of the implicit reward. Every field is a flag (--help).
"""

import json

from classic_rl.infra.cli import cli, parse_config
from rlhf_toy.algorithms.dpo import DPOConfig, train_dpo


@cli
def main() -> None:
    summary = train_dpo(parse_config(DPOConfig, description=__doc__))
    if summary:  # the main process's
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
