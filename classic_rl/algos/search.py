"""Random search and hill climbing over the weights of a linear policy: the baselines a newcomer
starts from, and the yardstick every gradient method should beat.

The policy acts greedily, a = argmax(s W + b); a candidate's score is its mean return over
`episodes_per_candidate` fresh episodes (their steps count towards total_timesteps).

    random search:  repeat: draw W, b ~ N(0, init_std^2); keep the best-scoring candidate
    hill climbing:  repeat: W' = W_best + noise_std * N(0, 1)   (likewise b)
                    if score(W') >= score(W_best): W_best <- W'; noise_std /= 2    (exploit)
                    else:                                          noise_std *= 2    (explore)
                    noise_std stays within [min_noise_std, max_noise_std]  (adaptive noise scaling)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from classic_rl import envs
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import SoftmaxPolicy
from classic_rl.training import ClassicConfig, Evaluator


@dataclass
class SearchConfig(ClassicConfig):
    total_timesteps: int = config_field(500_000, "Env steps to spend on scoring candidates")
    eval_every: int = config_field(10_000, "Evaluate the best candidate every this many env steps")
    episodes_per_candidate: int = config_field(5, "Episodes (run side by side) that score one candidate")
    init_std: float = config_field(1.0, "Standard deviation of random-search draws and of hill climbing's start")
    noise_std: float = config_field(0.5, "Hill climbing: initial perturbation scale")
    min_noise_std: float = config_field(1e-3, "Hill climbing: smallest perturbation scale")
    max_noise_std: float = config_field(2.0, "Hill climbing: largest perturbation scale")

    def __post_init__(self):
        super().__post_init__()
        require_positive(episodes_per_candidate=self.episodes_per_candidate, init_std=self.init_std,
                         noise_std=self.noise_std, min_noise_std=self.min_noise_std)
        if not self.min_noise_std <= self.noise_std <= self.max_noise_std:
            raise ConfigError(f"need --min-noise-std <= --noise-std <= --max-noise-std, got "
                              f"{self.min_noise_std}, {self.noise_std}, {self.max_noise_std}")
        envs.check_spaces(self.env, "search methods")


def _search(cfg: SearchConfig, logger: RunLogger, evaluator: Evaluator, hill_climbing: bool) -> tuple[SoftmaxPolicy, int]:
    obs_dim, n_actions = envs.check_spaces(cfg.env, "search methods")
    rng = np.random.default_rng(cfg.seed)
    best, candidate = SoftmaxPolicy(obs_dim, n_actions, "linear"), SoftmaxPolicy(obs_dim, n_actions, "linear")
    best_score, noise_std, global_step, candidates = -np.inf, cfg.noise_std, 0, 0
    while global_step < cfg.total_timesteps:
        with torch.no_grad():
            for param, best_param in zip(candidate.parameters(), best.parameters(), strict=True):
                draw = torch.as_tensor(rng.standard_normal(param.shape))
                # the first candidate of hill climbing is a random start, like every random-search draw
                if hill_climbing and candidates > 0:
                    param.copy_(best_param + noise_std * draw)
                else:
                    param.copy_(cfg.init_std * draw)
        returns, lengths = envs.run_episodes(candidate.act, cfg.env, cfg.episodes_per_candidate, seed=int(rng.integers(2**31)))
        score, candidates = float(returns.mean()), candidates + 1
        global_step += int(lengths.sum())
        logger.log_episodes(global_step, [{"return": r, "length": n} for r, n in zip(returns, lengths, strict=True)])
        improved = score >= best_score
        if improved:
            best.load_state_dict(candidate.state_dict())
            best_score = score
        if hill_climbing:
            noise_std = float(np.clip(noise_std / 2 if improved else noise_std * 2, cfg.min_noise_std, cfg.max_noise_std))
        logger.log(global_step, {"charts/episodic_return": score, "search/best_score": best_score,
                                 "search/candidates": candidates, "search/noise_std": noise_std})
        if evaluator.maybe_evaluate(global_step, best):
            break
    return best, global_step


def train_random_search(cfg: SearchConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[SoftmaxPolicy, int]:
    return _search(cfg, logger, evaluator, hill_climbing=False)


def train_hill_climbing(cfg: SearchConfig, logger: RunLogger, evaluator: Evaluator) -> tuple[SoftmaxPolicy, int]:
    return _search(cfg, logger, evaluator, hill_climbing=True)
