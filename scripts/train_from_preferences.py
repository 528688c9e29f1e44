#!/usr/bin/env python
"""Train a classic-control policy from a labeller's preferences between clips of its behaviour, never from the env's
reward (Christiano et al. 2017); the env's return is logged and evaluated as the gold score.

    python scripts/train_from_preferences.py --env CartPole-v1 --max-labels 200 --label-noise 0.1 --run-dir runs/pref-cartpole
    python scripts/train_from_preferences.py --env LunarLander-v3 --max-labels 2000 --queries uniform

PPO by default (--algo a2c or trpo also fit); the algorithm's fields take its preset for the env (classic_rl/presets.py),
the loop's its own (PREFERENCE_PRESETS in classic_rl/preferences.py), and every field is a flag. The run folder is train_classic.py's plus labels.jsonl (every comparison), labels.png and
reward_vs_gold.png (the learned reward against the env's on the same segments).
"""

import argparse
import json
import sys

from classic_rl.infra.cli import cli, parse_config
from classic_rl.preferences import PREFERENCE_PRESETS, TRAINERS, preference_config, run_from_preferences
from classic_rl.presets import preset


@cli
def main() -> None:
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--algo", default="ppo")
    first.add_argument("--env", default="CartPole-v1")
    known, rest = first.parse_known_args(sys.argv[1:])
    config_cls = preference_config(known.algo)
    cfg = parse_config(config_cls, rest + ["--env", known.env], defaults=preset(known.algo, known.env) | PREFERENCE_PRESETS.get(known.env, {}) | {"run_dir": "runs/preferences"},
                       read_by_script=("algo",), description=f"{__doc__}\n--algo: one of {', '.join(TRAINERS)}")
    summary = run_from_preferences(known.algo, cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "evaluations"}, indent=2))
    print(f"{'env steps':>10} {'labels':>7} {'seconds':>8}  the env's return (greedy eval, never optimised)")
    for evaluation in summary["evaluations"]:
        print(f"{evaluation['env_steps']:>10,} {evaluation['labels_used']:>7} {evaluation['wall_s']:>8.1f}  {evaluation['mean']:.1f}")
    print(f"run folder: {cfg.run_dir}")


if __name__ == "__main__":
    main()
