"""The online RLHF algorithms, one file each: its pseudo-code first, its config (TRL's names) and its update
built from classic_rl.core's math. The loop (rlhf_toy/online.py) drives each through base.OnlineAlgorithm.

Adding one (docs/design.md walks through it): a file here with a Config subclassing base.RLHFConfig (ALGO = its
name) and an OnlineAlgorithm subclass, and its line below; `train_rlhf.py --algo NAME` then takes it, each of
its fields a flag.
"""

from __future__ import annotations

import dataclasses

from classic_rl.infra.errors import require_choice
from rlhf_toy.algorithms.base import OnlineAlgorithm, RLHFConfig
from rlhf_toy.algorithms.grpo import GRPO
from rlhf_toy.algorithms.ppo import PPO
from rlhf_toy.algorithms.reinforce_pp import ReinforcePP
from rlhf_toy.algorithms.rloo import RLOO

ALGORITHMS: dict[str, type[OnlineAlgorithm]] = {
    "grpo": GRPO,
    "ppo": PPO,
    "rloo": RLOO,
    "reinforce_pp": ReinforcePP,
}


def algorithm_for(algo: str) -> type[OnlineAlgorithm]:
    """The algorithm of --algo, or a ConfigError listing the accepted names."""
    require_choice(algo=(algo, tuple(ALGORITHMS)))
    return ALGORITHMS[algo]


def config_for(algo: str) -> type[RLHFConfig]:
    """The config class of --algo, or a ConfigError listing the accepted names."""
    return algorithm_for(algo).Config


def other_algorithm_flag(algo: str, argv: list[str]) -> str | None:
    """The first flag in argv that belongs to another algorithm's config (e.g. --beta with --algo ppo)."""
    own = {f.name for f in dataclasses.fields(config_for(algo))}
    for other, algorithm in ALGORITHMS.items():
        foreign = {f.name for f in dataclasses.fields(algorithm.Config)} - own
        for arg in argv:
            name = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
            if arg.startswith("--") and name in foreign:
                return f"{arg.split('=', 1)[0]} is a setting of --algo {other}, not of --algo {algo} (see --algo {algo} --help)"
    return None
