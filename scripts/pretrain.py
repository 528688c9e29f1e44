#!/usr/bin/env python
"""Pretrain the base policy (tokenizer + tiny GPT-2) on the project's corpus.

    python scripts/pretrain.py --preset tiny --seed 0 --run-dir runs/pretrain-tiny
    accelerate launch --multi_gpu --num_processes 2 scripts/pretrain.py --cpu   # 2 processes, each half of every batch

Writes RUN_DIR/model/, which AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load.
"""

import json

from classic_rl.infra.cli import cli, parse_config
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain


@cli
def main() -> None:
    cfg = parse_config(PretrainConfig, description=__doc__)
    summary = pretrain(cfg)
    if summary:  # the main process's
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
