#!/usr/bin/env python
"""Train a classic RL algorithm on a gymnasium env and write a run folder.

    python scripts/train_classic.py --algo ppo --env CartPole-v1 --seed 1 --run-dir runs/ppo-cartpole
    python scripts/train_classic.py --preset tutorial-000      # a tutorial's own experiment
    python scripts/train_classic.py --preset                   # lists the tutorial presets

Defaults come from classic_rl/presets.py for the (algo, env) pair, or from the tutorial preset
(classic_rl/tutorials.py); every field is a flag and overrides them.
"""

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

from classic_rl import tutorials
from classic_rl.algos import ALGOS
from classic_rl.infra.cli import cli, load_config_file, parse_config
from classic_rl.infra.errors import ConfigError
from classic_rl.infra.run_folder import write_json
from classic_rl.presets import preset
from classic_rl.training import run_training


def choose(known: argparse.Namespace) -> tuple[str, str, tutorials.Tutorial | None]:
    """(algo, env, tutorial or None) from --algo, --env and --preset, else from --config FILE (a run's config.json
    names both)."""
    if known.preset is None:
        saved = load_config_file(known.config) if known.config else {}
        algo = known.algo or saved.get("algo") or "ppo"
        if algo not in ALGOS:
            raise ConfigError(f"unknown --algo {algo!r}; accepted: {', '.join(ALGOS)}")
        return algo, known.env or saved.get("env") or "CartPole-v1", None
    chosen = tutorials.tutorial(known.preset)
    for flag, given, fixed in (("algo", known.algo, chosen.algo), ("env", known.env, chosen.fields["env"])):
        if given not in (None, fixed):
            raise ConfigError(f"--preset {known.preset} runs {fixed}; drop --{flag} {given} (other flags may change the recipe)")
    return chosen.algo, chosen.fields["env"], chosen


@cli
def main() -> None:
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--algo", default=None)
    first.add_argument("--env", default=None)
    first.add_argument("--preset", nargs="?", const="", default=None)
    first.add_argument("--config", default=None)
    known, rest = first.parse_known_args(sys.argv[1:])
    if known.preset == "":
        print(tutorials.listing())
        return
    algo, env, chosen = choose(known)
    if chosen:  # a tutorial's own env version (CartPole-v0: 200-step episodes) is chosen on purpose; gymnasium's advice is noise
        warnings.filterwarnings("ignore", message=rf".*The environment {re.escape(env)} is out of date", category=DeprecationWarning)
    name = known.preset
    config_cls, train_fn = ALGOS[algo]
    defaults = preset(algo, env) | (chosen.fields | {"run_dir": f"runs/{name}"} if chosen else {})
    argv = rest + ["--env", env] + (["--config", known.config] if known.config else [])
    cfg = parse_config(config_cls, argv, defaults=defaults, read_by_script=("algo",),
                       description=f"{__doc__}\nalgo: {algo} (accepted: {', '.join(ALGOS)})\n"
                                   f"--preset NAME: one of {', '.join(tutorials.TUTORIALS)}")
    summary = run_training(algo, train_fn, cfg)
    if chosen:
        summary["tutorial"] = tutorials.report(name, cfg, summary)
        write_json(Path(cfg.run_dir) / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "evaluations"}, indent=2))
    if chosen:
        print(f"{name} (tutorial {chosen.source}): the tutorial reports {chosen.reported}\n"
              f"  this run: {summary['tutorial']['measured_text']}\n  figures: {', '.join(summary['tutorial']['figures'])}")
    print(f"run folder: {cfg.run_dir}")


if __name__ == "__main__":
    main()
