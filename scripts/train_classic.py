#!/usr/bin/env python
"""Train a classic RL algorithm on a gymnasium env and write a run folder.

    python scripts/train_classic.py --algo ppo --env CartPole-v1 --seed 1 --run-dir runs/ppo-cartpole

Defaults come from classic_rl/presets.py for the (algo, env) pair; every field is a flag.
"""

import argparse
import json
import sys

from classic_rl.algos import ALGOS
from classic_rl.infra.cli import cli, parse_config
from classic_rl.infra.errors import ConfigError
from classic_rl.presets import preset
from classic_rl.training import run_training


@cli
def main() -> None:
    argv = sys.argv[1:]
    # --algo picks the config class and, with --env, the preset that sets its defaults.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--algo", default="ppo")
    first.add_argument("--env", default="CartPole-v1")
    known, rest = first.parse_known_args(argv)
    if known.algo not in ALGOS:
        raise ConfigError(f"unknown --algo {known.algo!r}; accepted: {', '.join(ALGOS)}")
    config_cls, train_fn = ALGOS[known.algo]
    cfg = parse_config(config_cls, rest + ["--env", known.env], defaults=preset(known.algo, known.env),
                               description=f"{__doc__}\nalgo: {known.algo} (accepted: {', '.join(ALGOS)})")
    summary = run_training(known.algo, train_fn, cfg)
    print(json.dumps(summary, indent=2))
    print(f"run folder: {cfg.run_dir}")


if __name__ == "__main__":
    main()
