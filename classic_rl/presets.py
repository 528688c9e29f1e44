"""Tuned hyperparameters per (algo, env), like an RL-Zoo table. Anything not listed uses the
config dataclass defaults, which are sensible for any small discrete-action env."""

from __future__ import annotations

from typing import Any

PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("ppo", "CartPole-v1"): dict(total_timesteps=100_000, num_envs=8, num_steps=32, num_minibatches=1, update_epochs=20,
                                 learning_rate=1e-3, gamma=0.98, gae_lambda=0.8, ent_coef=0.0, eval_every=4_096),
    ("ppo", "LunarLander-v3"): dict(total_timesteps=1_000_000, num_envs=16, num_steps=256, num_minibatches=8,
                                    update_epochs=10, learning_rate=3e-4, gamma=0.999, gae_lambda=0.98, ent_coef=0.01,
                                    eval_every=25_000),
}


def preset(algo: str, env_id: str) -> dict[str, Any]:
    """The tuned fields for (algo, env_id), or {} to use the defaults."""
    return dict(PRESETS.get((algo, env_id), {}))
