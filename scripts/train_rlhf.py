#!/usr/bin/env python
"""Fine-tune a causal LM policy against a reward with GRPO (PPO with a critic: --algo ppo).

    python scripts/train_rlhf.py --algo grpo --run-dir runs/grpo            # default base model and reward
    python scripts/train_rlhf.py --algo grpo --reward length --target-words 8 --steps 100
    python scripts/train_rlhf.py --model runs/pretrain/model --reward my_rewards.py:politeness

--algo picks the config (rlhf_toy/configs.py: GRPOConfig or PPOConfig); each of its fields is a flag
(see --algo ppo --help); --config FILE takes JSON or YAML, e.g. a run's config.json.
"""

import sys

from classic_rl.infra.cli import cli, load_config_file, parse_config, script_parser
from classic_rl.infra.errors import ConfigError
from rlhf_toy.configs import config_for, other_algorithm_flag
from rlhf_toy.trainer import train


def chosen_algo(argv: list[str]) -> str:
    """--algo from the command line, else from --config FILE, else grpo."""
    first = script_parser(__doc__)
    first.add_argument("--algo")
    first.add_argument("--config")
    known = first.parse_known_args([a for a in argv if a not in ("-h", "--help")])[0]
    return known.algo or (load_config_file(known.config).get("algo") if known.config else None) or "grpo"


@cli
def main() -> None:
    argv = sys.argv[1:]
    algo = chosen_algo(argv)
    config_cls = config_for(algo)
    if problem := other_algorithm_flag(algo, argv):
        raise ConfigError(problem)
    train(parse_config(config_cls, argv, description=f"{__doc__}\nalgo: {algo} ({config_cls.__name__})"))


if __name__ == "__main__":
    main()
