#!/usr/bin/env python
"""Fine-tune a causal LM policy against a reward with GRPO (PPO with a critic: --algo ppo).

    python scripts/train_rlhf.py --algo grpo --run-dir runs/grpo            # default base model and reward
    python scripts/train_rlhf.py --algo grpo --reward length --target-words 8 --steps 100
    python scripts/train_rlhf.py --model runs/pretrain/model --reward my_rewards.py:politeness

Every field of RLHFConfig is a flag (see --help); --config FILE takes JSON or YAML.
"""

from classic_rl.runs import cli, parse_dataclass_args
from rlhf_toy.trainer import RLHFConfig, train


@cli
def main() -> None:
    train(parse_dataclass_args(RLHFConfig, description=__doc__))


if __name__ == "__main__":
    main()
