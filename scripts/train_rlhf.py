#!/usr/bin/env python
"""Fine-tune a causal LM policy against a reward with GRPO (PPO with a critic: --algo ppo).

    python scripts/train_rlhf.py --algo grpo --run-dir runs/grpo            # default base model and reward
    python scripts/train_rlhf.py --algo grpo --reward length --target-words 8 --steps 100
    python scripts/train_rlhf.py --model runs/pretrain/model --reward my_rewards.py:politeness
    python scripts/train_rlhf.py --task arithmetic            # verifiable rewards: pass@1 and pass@8 before/after
    python scripts/train_rlhf.py --task                       # lists the tasks

--algo picks the algorithm (rlhf_toy/algorithms/: grpo, ppo, rloo, reinforce_pp) and its config; each of its fields is a flag
(see --algo ppo --help); --config FILE takes JSON or YAML, e.g. a run's config.json.
"""

import sys

from classic_rl.infra.cli import cli, load_config_file, parse_config, script_parser
from classic_rl.infra.errors import ConfigError
from rlhf_toy import tasks
from rlhf_toy.algorithms import config_for, other_algorithm_flag
from rlhf_toy.online import train


def first_pass(argv: list[str]) -> tuple[str, str | None]:
    """(--algo, --task) from the command line, else from --config FILE; the algorithm defaults to grpo
    and a task name of "" asks for the list."""
    first = script_parser(__doc__)
    first.add_argument("--algo")
    first.add_argument("--config")
    first.add_argument("--task", nargs="?", const="")
    known = first.parse_known_args([a for a in argv if a not in ("-h", "--help")])[0]
    saved = load_config_file(known.config) if known.config else {}
    return known.algo or saved.get("algo") or "grpo", known.task if known.task is not None else saved.get("task")


@cli
def main() -> None:
    argv = sys.argv[1:]
    algo, task = first_pass(argv)
    if task == "":
        print(tasks.listing())
        return
    config_cls = config_for(algo)
    if problem := other_algorithm_flag(algo, argv):
        raise ConfigError(problem)
    defaults = tasks.task_defaults(task, algo) if task else {}
    train(parse_config(config_cls, argv, defaults=defaults, description=f"{__doc__}\nalgo: {algo} ({config_cls.__name__})"))


if __name__ == "__main__":
    main()
