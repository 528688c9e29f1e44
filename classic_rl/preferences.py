"""Deep RL from human preferences (Christiano et al. 2017) on classic-control envs: the policy never sees the env's
reward; a reward model fitted to a labeller's comparisons of pairs of short clips of its own behaviour stands in for it.

    pool        the last pool_steps env steps of the policy's rollouts: (s, a), the env's reward, episode ends
    every label_every env steps, while labels_used < labels_due(step):
        candidates  query_candidates x n pairs of segments of segment_length steps from the pool; a segment may run
                    past its episode's termination, and the rest is the absorbing state (worth 0 to the env)
        queries     the n pairs the ensemble's members disagree on most (std over k of P_k[1 > 2]), or n at random
        labels      the labeller's answer to each: mu = 1 (first better), 0 (second), 1/2 (a tie)
        fit         reward_steps Adam steps; member k minimises its bootstrap-weighted Bradley-Terry loss over all labels,
                        P_k[1 > 2] = sigmoid(R_k(1) - R_k(2)),  R_k(segment) = sum_t r_k(s_t, a_t) + n_absorbing b_k
                    (--reward-sees-end: r_k(s_t, a_t, whether step t ended the episode))
    the policy's reward  r(s, a) = mean_k (r_k(s, a) - b_k) / scale
        (zero at the absorbing state, so ending an episode is worth what the labels say; scale: the root mean square
         over the pool. --reward-zero mean whitens it over the pool instead, as Christiano et al.: a shifted reward
         changes what termination is worth, which is what their envs without termination did not mind)
    the env's own return is logged and evaluated as the gold score, never optimised

The policy learns with an unchanged on-policy algorithm (PPO by default): the reward model is a vector-env wrapper
between the env's episode statistics (which keep the gold return) and the algorithm. The segments, their replay as
clips and the labellers are in classic_rl/clips.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, make_dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from classic_rl import core, envs
from classic_rl.algos import a2c, ppo, trpo
from classic_rl.clips import (
    EpisodeTracker,
    SegmentPool,
    Segments,
    SimulatedClipLabeller,
    WebClipLabeller,
    astuple_shallow,
    step_features,
)
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import ConfigError, require_choice, require_layer_widths, require_positive
from classic_rl.infra.metrics import JsonLines, RunLogger
from classic_rl.infra.plots import plot_lines, plot_scatter
from classic_rl.infra.run_folder import write_json
from classic_rl.training import crossed, run_training

TRAINERS = {"ppo": (ppo.PPOConfig, ppo.train), "a2c": (a2c.A2CConfig, a2c.train), "trpo": (trpo.TRPOConfig, trpo.train)}
LABELLERS = ("simulated", "web")
QUERIES = ("disagreement", "uniform")
REWARD_ZEROS = ("absorbing", "mean")
# Per env, over the algorithm's own preset: LunarLander's rollouts are 16 x 256 steps and it trains for 1M, so a label
# round every 8k steps (62 rounds, all labels in by 500k) instead of every 2k (244 rounds of refitting). The learned
# reward's errors add up over the horizon: at PPO's gamma of 0.999 (1,000 steps) a small reward for staying aloft
# outweighs a landing, and two seeds of three hovered; at 0.99, with the reward model reading whether a step ended
# the episode (a landing and a crash then differ where they end), seeds 1-3 landed (bench/classic-preferences.md).
# CartPole: every label by 50k steps as with PPO's 100k budget, but the learning rate annealed over 200k; at 100k a
# seed could still be climbing when the rate reached 0 (2 of 3 seeds at 500 on an EPYC), at 200k 3 of 3 reached it.
PREFERENCE_PRESETS = {"LunarLander-v3": dict(max_labels=2000, label_every=8192, gamma=0.99, reward_sees_end=True),
                      "CartPole-v1": dict(total_timesteps=200_000, labels_until=0.25)}


@dataclass
class PreferenceFields:
    """What the preference loop adds to its algorithm's config."""

    max_labels: int = config_field(200, "Comparisons the labeller is asked for over the whole run")
    labeller: str = config_field("simulated", f"Who answers: {', '.join(LABELLERS)} (simulated prefers the segment with the "
                                              "higher env return; web: you, at a page of clips on 127.0.0.1:--port)")
    port: int = config_field(8000, "Port of --labeller web's page (0: any free port; the address is printed)")
    label_noise: float = config_field(0.1, "Share of the simulated labeller's answers that are wrong (flipped; a tie stays one)")
    label_temperature: float = config_field(0.0, "Boltzmann temperature of the simulated labeller in units of return: "
                                                 "P[first] = sigmoid((R1 - R2) / T); 0 always prefers the higher return")
    reward_zero: str = config_field("absorbing", f"Where the policy's reward is 0: {', '.join(REWARD_ZEROS)} (absorbing: after a "
                                                 "termination, so ending an episode is worth what the labels say; mean: the "
                                                 "pool's mean, Christiano et al.'s whitening)")
    reward_sees_end: bool = config_field(False, "The reward model also reads whether the step ended its episode (a landing "
                                                "and a crash can then differ at the step that ends them): r(s, a, end)")
    queries: str = config_field("disagreement", f"Which candidate pairs are labelled: {', '.join(QUERIES)}")
    query_candidates: int = config_field(10, "Candidate pairs drawn per pair labelled")
    segment_length: int = config_field(25, "Env steps per segment (clip)")
    label_every: int = config_field(2048, "Env steps between label rounds (the reward model is refitted after each)")
    initial_label_fraction: float = config_field(0.25, "Share of max_labels asked in the first round")
    labels_until: float = config_field(0.5, "Share of total_timesteps by which every label has been asked (the rest "
                                            "come at a rate falling as 1 / sqrt(step))")
    pool_steps: int = config_field(4096, "Recent env steps that segments are drawn from")
    ensemble_size: int = config_field(3, "Reward models in the ensemble (each on its own bootstrap of the labels)")
    reward_hidden_sizes: list[int] = config_field([64, 64], "Hidden layers of each reward model")
    reward_lr: float = config_field(1e-3, "Adam learning rate of the reward models")
    reward_steps: int = config_field(100, "Reward-model Adam steps after each label round")
    reward_batch_size: int = config_field(64, "Labelled pairs per reward-model step")

    def __post_init__(self):
        super().__post_init__()
        require_positive(max_labels=self.max_labels, query_candidates=self.query_candidates, segment_length=self.segment_length,
                         label_every=self.label_every, pool_steps=self.pool_steps, ensemble_size=self.ensemble_size,
                         reward_lr=self.reward_lr, reward_steps=self.reward_steps, reward_batch_size=self.reward_batch_size,
                         labels_until=self.labels_until)
        require_choice(labeller=(self.labeller, LABELLERS), queries=(self.queries, QUERIES),
                       reward_zero=(self.reward_zero, REWARD_ZEROS))
        require_layer_widths(self.reward_hidden_sizes)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0-65535 (0: any free port), got {self.port}")
        if not 0 <= self.label_noise < 0.5:
            raise ConfigError(f"--label-noise must be in [0, 0.5) (at 0.5 labels carry no signal), got {self.label_noise}")
        if not 0 < self.initial_label_fraction <= 1:
            raise ConfigError(f"--initial-label-fraction must be in (0, 1], got {self.initial_label_fraction}")
        if self.label_temperature < 0:
            raise ConfigError(f"--label-temperature must be >= 0 (0: always the higher return), got {self.label_temperature}")
        per_env = self.pool_steps // self.num_envs
        if per_env < self.segment_length or self.label_every // self.num_envs < self.segment_length:
            raise ConfigError(f"--pool-steps and --label-every must hold a segment of {self.segment_length} steps in each of "
                              f"the {self.num_envs} envs: at least {self.segment_length * self.num_envs} each")


def preference_config(algo: str) -> type:
    """The config of `algo` trained from preferences: its own fields and PreferenceFields."""
    if algo not in TRAINERS:
        raise ConfigError(f"--algo {algo} cannot train from preferences; accepted: {', '.join(TRAINERS)} (on-policy: "
                          "each rollout is scored by the reward model as it is collected)")
    return make_dataclass(f"{algo.upper()}FromPreferencesConfig", [], bases=(PreferenceFields, TRAINERS[algo][0]))


class RewardEnsemble(nn.Module):
    """K reward models r_k(s, a), MLPs with leaky-ReLU hidden layers run as one batched product per layer, and
    K rewards b_k of the absorbing state."""

    def __init__(self, feature_dim: int, hidden_sizes: list[int], members: int):
        super().__init__()
        sizes = [feature_dim, *hidden_sizes, 1]
        bounds = [1 / math.sqrt(n_in) for n_in in sizes[:-1]]  # nn.Linear's default initialisation, per member
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-b, b))
                                        for n_in, n_out, b in zip(sizes[:-1], sizes[1:], bounds, strict=True))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(members, 1, n_out).uniform_(-b, b))
                                       for n_out, b in zip(sizes[1:], bounds, strict=True))
        self.absorbing = nn.Parameter(torch.zeros(members))

    def forward(self, features: Tensor) -> Tensor:
        """r_k(s, a) `[K, ...]` of features `[..., F]`."""
        h = features.reshape(1, -1, features.shape[-1]).expand(len(self.absorbing), -1, -1)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(bias, h, weight)
            if i < len(self.weights) - 1:
                h = F.leaky_relu(h, 0.01)
        return h.reshape(len(self.absorbing), *features.shape[:-1])

    def segment_returns(self, segments: Segments) -> Tensor:
        """R_k of each segment `[K, S]`: its real steps' rewards plus b_k for each absorbing step."""
        rewards = self(segments.features)
        real = segments.real.to(rewards.dtype)
        return (rewards * real).sum(-1) + (1 - real).sum(-1) * self.absorbing[:, None]

    def pair_returns(self, first: Segments, second: Segments) -> tuple[Tensor, Tensor]:
        """(R_k(first), R_k(second)), each `[K, P]`, from one forward pass."""
        both = self.segment_returns(Segments.cat([first, second]))
        return both[:, : len(first)], both[:, len(first):]

    def policy_reward(self, features: Tensor) -> Tensor:
        """mean_k (r_k(s, a) - b_k) `[...]`: the absorbing state's reward is zero."""
        return (self(features) - self.absorbing.view(-1, *[1] * (features.dim() - 1))).mean(0)


def disagreement(first: Tensor, second: Tensor) -> Tensor:
    """Std over the members of P_k[first > second] `[P]`, from segment returns `[K, P]`."""
    return torch.sigmoid(first - second).std(0) if len(first) > 1 else torch.zeros(first.shape[1])


class PreferenceFeedback:
    """The loop's state: the pool of recent steps, the labelled pairs, the reward ensemble and its optimiser.
    LearnedReward hands it every env step; it runs a label round when one is due and scores the step."""

    def __init__(self, cfg: PreferenceFields, logger: RunLogger):
        observation_space, self.action_space = envs.env_spaces(cfg.env)
        feature_dim = step_features(observation_space.sample()[None], np.asarray([self.action_space.sample()]), self.action_space).shape[1]
        feature_dim += cfg.reward_sees_end
        self.cfg, self.logger = cfg, logger
        self.rng = np.random.default_rng([cfg.seed, 43])  # its own stream: the policy starts as a run on the env's reward would
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 43)
            self.ensemble = RewardEnsemble(feature_dim, cfg.reward_hidden_sizes, cfg.ensemble_size)
        self.optimizer = torch.optim.Adam(self.ensemble.parameters(), lr=cfg.reward_lr)
        self.pool = SegmentPool(cfg.pool_steps // cfg.num_envs, cfg.num_envs, feature_dim)
        self.episodes = EpisodeTracker(cfg.num_envs, keep_actions=cfg.labeller == "web")
        self.labeller = (WebClipLabeller(cfg.env, cfg.segment_length, cfg.max_labels, cfg.port, logger.run_dir, self.episodes)
                         if cfg.labeller == "web" else SimulatedClipLabeller(cfg.label_noise, cfg.label_temperature, self.rng))
        self.first = self.second = Segments.empty(cfg.segment_length, feature_dim)
        self.mu, self.bootstrap = torch.zeros(0), torch.zeros(cfg.ensemble_size, 0)
        self.label_rows = JsonLines(logger.run_dir / "labels.jsonl")
        self.offset, self.scale, self.env_steps, self.last_obs, self.labelling_over = 0.0, 1.0, 0, None, False

    @property
    def labels_used(self) -> int:
        return len(self.mu)

    def wrap(self, vec_env: gym.vector.VectorEnv) -> LearnedReward:
        return LearnedReward(vec_env, self)

    def labels_due(self, env_steps: int) -> int:
        """Labels asked for by env_steps: initial_label_fraction at once, the rest by labels_until of the run, at a rate
        falling as 1 / sqrt(step) (the policy changes fastest early; Christiano et al.'s rate falls as 1 / step)."""
        cfg = self.cfg
        progress = min(1.0, env_steps / (cfg.labels_until * cfg.total_timesteps))
        share = cfg.initial_label_fraction + (1 - cfg.initial_label_fraction) * math.sqrt(progress)
        return min(cfg.max_labels, math.ceil(cfg.max_labels * share))

    def observe(self, features: np.ndarray, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> None:
        """One step of every env into the pool; a label round when one is due."""
        self.pool.add(features, rewards, terminated, truncated, self.episodes.origins())
        self.episodes.advance(terminated | truncated)
        before, self.env_steps = self.env_steps, self.env_steps + len(rewards)
        due = crossed(before, self.env_steps, self.cfg.label_every) and not self.labelling_over
        if due and self.labels_used < self.labels_due(self.env_steps):
            self.label_round(self.labels_due(self.env_steps) - self.labels_used)

    @torch.no_grad()
    def reward(self, features: np.ndarray) -> np.ndarray:
        """The policy's reward `[N]` for N (s, a): 0 until the first labels."""
        if not self.labels_used:
            return np.zeros(len(features))
        return ((self.ensemble.policy_reward(torch.from_numpy(features)) - self.offset) / self.scale).double().numpy()

    @torch.no_grad()
    def label_round(self, wanted: int) -> None:
        """Choose `wanted` pairs from fresh candidates, ask the labeller, refit the ensemble, log the round."""
        candidates = self.pool.sample(2 * wanted * self.cfg.query_candidates, self.cfg.segment_length, self.rng)
        pairs = len(candidates) // 2
        first, second = candidates[0: 2 * pairs: 2], candidates[1: 2 * pairs: 2]
        with torch.no_grad():
            first_returns, second_returns = self.ensemble.pair_returns(first, second)
        spread = disagreement(first_returns, second_returns)
        chosen = spread.topk(min(wanted, pairs)).indices if self.cfg.queries == "disagreement" else torch.arange(min(wanted, pairs))
        predicted = torch.sigmoid(first_returns - second_returns).mean(0)[chosen]  # the ensemble's P[first is better]
        mu = torch.from_numpy(self.labeller.judge(first[chosen], second[chosen], predicted, self.labels_used)).float()
        self.labelling_over = self.labeller.quit
        self.episodes.forget_all_but(set(self.pool.origins[..., 0].ravel().tolist()) | set(self.episodes.ids.tolist()))
        chosen, mu = chosen[~mu.isnan()], mu[~mu.isnan()]  # skipped pairs are no labels
        if not len(mu):
            return
        accuracy = core.ranking_accuracy(first_returns.mean(0)[chosen], second_returns.mean(0)[chosen], mu)
        self.add_labels(first[chosen], second[chosen], mu, spread[chosen])
        loss = self.fit()
        self.rescale()
        self.logger.log(self.env_steps, {
            "preferences/labels_used": self.labels_used, "preferences/reward_loss": loss,
            "preferences/new_label_accuracy": accuracy, "preferences/ties": (mu == 0.5).float().mean().item(),
            "preferences/disagreement": spread[chosen].mean().item(), "preferences/reward_scale": self.scale,
            "preferences/reward_offset": self.offset,
            "preferences/gold_correlation": gold_correlation(self.ensemble.segment_returns(candidates).mean(0).numpy(),
                                                             candidates.gold_returns.numpy())})

    def add_labels(self, first: Segments, second: Segments, mu: Tensor, spread: Tensor) -> None:
        """Keep the labelled pairs, each with a Poisson(1) count per member (an online bootstrap), and write them down."""
        self.first, self.second = Segments.cat([self.first, first]), Segments.cat([self.second, second])
        self.mu = torch.cat([self.mu, mu])
        self.bootstrap = torch.cat([self.bootstrap, torch.from_numpy(self.rng.poisson(1.0, (self.cfg.ensemble_size, len(mu)))).float()], 1)
        self.label_rows.append([{"env_step": self.env_steps, "first_return": float(a), "second_return": float(b), "mu": float(m),
                                 "disagreement": float(s)}
                                for a, b, m, s in zip(first.gold_returns, second.gold_returns, mu, spread, strict=True)])

    @torch.enable_grad()  # label rounds run inside the algorithm's rollout, under no_grad
    def fit(self) -> float:
        """reward_steps Adam steps of every member on minibatches of all labels; the last step's loss."""
        for _ in range(self.cfg.reward_steps):
            batch = torch.from_numpy(self.rng.integers(0, self.labels_used, min(self.cfg.reward_batch_size, self.labels_used)))
            first_returns, second_returns = self.ensemble.pair_returns(self.first[batch], self.second[batch])
            loss = core.bradley_terry_loss(first_returns, second_returns, self.mu[batch], mask=self.bootstrap[:, batch])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def rescale(self) -> None:
        """The policy's reward over the pool about 1 in size: divided by its root mean square (reward_zero absorbing), or
        whitened (mean)."""
        rewards = self.ensemble.policy_reward(self.pool.real_features())
        self.offset = rewards.mean().item() if self.cfg.reward_zero == "mean" else 0.0
        self.scale = max((rewards - self.offset).square().mean().sqrt().item(), 1e-6)

    def state_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble.state_dict(), "optimizer": self.optimizer.state_dict(), "pool": self.pool.state_dict(),
                "first": astuple_shallow(self.first), "second": astuple_shallow(self.second), "mu": self.mu, "bootstrap": self.bootstrap,
                "offset": self.offset, "scale": self.scale, "env_steps": self.env_steps, "last_obs": torch.from_numpy(self.last_obs),
                "rng": self.rng.bit_generator.state, "label_rows": len(self.label_rows.rows), "episodes": self.episodes.state_dict(),
                "labelling_over": self.labelling_over}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ensemble.load_state_dict(state["ensemble"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.pool.load_state_dict(state["pool"])
        self.first, self.second = Segments(*state["first"]), Segments(*state["second"])
        self.mu, self.bootstrap, self.offset, self.scale = state["mu"], state["bootstrap"], state["offset"], state["scale"]
        self.env_steps = state["env_steps"]
        self.last_obs = state["last_obs"].numpy()
        self.rng.bit_generator.state = state["rng"]
        self.label_rows.truncate(state["label_rows"])
        self.episodes.load_state_dict(state["episodes"])
        self.labelling_over = state["labelling_over"]


def gold_correlation(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Pearson correlation between the ensemble's mean segment returns `[S]` and the env's (NaN when either is constant)."""
    if len(gold) < 2 or predicted.std() == 0 or gold.std() == 0:
        return float("nan")
    return float(np.corrcoef(predicted, gold)[0, 1])


class LearnedReward(gym.vector.VectorWrapper):
    """The env's rewards replaced by the reward model's; every step also goes to PreferenceFeedback's pool. Wrapped
    outside the episode statistics, so logged training returns stay the env's own (the gold score)."""

    def __init__(self, env: gym.vector.VectorEnv, feedback: PreferenceFeedback):
        super().__init__(env)
        self.feedback = feedback

    def reset(self, **kwargs):
        obs, infos = self.env.reset(**kwargs)
        self.feedback.last_obs = obs
        if self.feedback.episodes.keep_actions:
            self.feedback.episodes.begin(range(self.num_envs), self.env.unwrapped.get_attr("episode_start"))
        return obs, infos

    def step(self, actions):
        features = step_features(self.feedback.last_obs, actions, self.feedback.action_space)
        tracker = self.feedback.episodes
        if tracker.keep_actions:
            tracker.record(actions)
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        if self.feedback.cfg.reward_sees_end:
            features = np.concatenate([features, terminated[:, None].astype(np.float32)], axis=1)
        self.feedback.observe(features, rewards, terminated, truncated)
        if tracker.keep_actions and (terminated | truncated).any():  # the new episodes' starts, after the autoreset
            tracker.begin(np.flatnonzero(terminated | truncated), self.env.unwrapped.get_attr("episode_start"))
        self.feedback.last_obs = obs
        return obs, self.feedback.reward(features), terminated, truncated, infos


def run_from_preferences(algo: str, cfg: PreferenceFields) -> dict[str, Any]:
    """Train `algo` on the reward model and write its run folder (run_training's, plus labels.jsonl and the reward model
    against the env's return in reward_vs_gold.png); returns the summary with the loop's figures added."""
    loops: list[PreferenceFeedback] = []

    def train_fn(cfg, logger, evaluator, checkpoints):
        loops.append(PreferenceFeedback(cfg, logger))
        checkpoints.track(preferences=loops[0])
        return TRAINERS[algo][1](cfg, logger, evaluator, checkpoints, wrap_env=loops[0].wrap)

    try:
        summary = run_training(algo, train_fn, cfg)
    finally:
        if loops:  # the page (labeller web) says training is over and stops serving
            loops[0].labeller.close(f"training is over, with {loops[0].labels_used} labels; the run is in {cfg.run_dir}")
    feedback = loops[0]
    segments = feedback.pool.sample(500, cfg.segment_length, np.random.default_rng(cfg.seed))
    with torch.no_grad():
        predicted = feedback.ensemble.segment_returns(segments).mean(0).numpy()
    run_dir = feedback.logger.run_dir
    save_file(feedback.ensemble.state_dict(), run_dir / "reward_model.safetensors")
    plot_scatter(run_dir / "reward_vs_gold.png", segments.gold_returns.numpy(), predicted, "env return of a segment",
                 "reward model's return", f"{cfg.env}: the learned reward against the env's, {len(segments)} recent segments")
    plot_lines(run_dir / "labels.png", [("env steps", "labels used", {"labels": feedback.logger.series("preferences/labels_used")})],
               f"{algo} from preferences on {cfg.env} (seed {cfg.seed})")
    label_steps, label_counts = feedback.logger.series("preferences/labels_used")
    for evaluation in summary["evaluations"]:  # labels given by then, beside the env's return
        evaluation["labels_used"] = int(label_counts[np.searchsorted(label_steps, evaluation["env_steps"], "right") - 1]
                                        if label_steps and label_steps[0] <= evaluation["env_steps"] else 0)
    summary |= {"gold_return_final": summary["eval_return_mean"], "labels_used": feedback.labels_used, "labeller": cfg.labeller,
                "label_noise": cfg.label_noise, "queries": cfg.queries, "max_labels": cfg.max_labels,
                "reward_gold_correlation": gold_correlation(predicted, segments.gold_returns.numpy())}
    write_json(run_dir / "summary.json", summary)
    return summary
