#!/usr/bin/env python
"""Pretrain the base policy (tokenizer + tiny GPT-2) on the project's corpus.

    python scripts/pretrain.py --preset tiny --seed 0 --run-dir runs/pretrain-tiny

Writes RUN_DIR/model/, which AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load.
"""

import json

from classic_rl.infra.cli import cli, parse_config
from rlhf_toy.distributed import require_one_process
from rlhf_toy.lm.pretrain import PretrainConfig, pretrain


@cli
def main() -> None:
    require_one_process("pretrain.py")
    cfg = parse_config(PretrainConfig, description=__doc__)
    summary = pretrain(cfg)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
