"""On-policy experience from vector envs, collected the same way for A2C and PPO."""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import Tensor

from classic_rl import core, envs
from classic_rl.nets import ActorCritic


class RolloutBuffer:
    """`num_steps` x `num_envs` transitions from an ActorCritic and the GAE advantages over them.

    Per-step tensors are `[T, N]` (observations `[T, N, obs_dim]`, already normalised as the
    policy saw them). A time-limit cut adds gamma * V(final obs) to that step's reward, so the
    episode end is not treated as failure; `dones` marks every episode end.
    """

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int):
        self.obs = torch.zeros(num_steps, num_envs, obs_dim)
        self.actions = torch.zeros(num_steps, num_envs, dtype=torch.long)
        self.logprobs, self.rewards, self.dones, self.values = (torch.zeros(num_steps, num_envs) for _ in range(4))

    @torch.no_grad()
    def collect(self, agent: ActorCritic, vec_env: gym.vector.VectorEnv, next_obs: Tensor, gamma: float) -> tuple[Tensor, list[dict[str, float]]]:
        """Fill the buffer starting from next_obs; returns the observation after the last step and the
        statistics of every episode that finished meanwhile (see envs.finished_episodes).

        Each step works in numpy, through views of the buffer's tensors: it moves a few [num_envs]
        rows, where numpy's indexing costs a tenth of torch's."""
        obs, actions, logprobs, rewards, dones, values = (x.numpy() for x in (self.obs, self.actions, self.logprobs,
                                                                              self.rewards, self.dones, self.values))
        finished, sample = [], agent.sampler()
        for step in range(len(obs)):
            obs[step] = next_obs.numpy()
            actions[step], logprobs[step], values[step] = sample(obs[step])
            raw_obs, reward, terminated, truncated, infos = vec_env.step(actions[step])
            rewards[step] = reward
            cut, final_obs = envs.truncation_bootstrap_obs(infos, terminated, truncated)
            if cut.size:
                rewards[step, cut] += gamma * agent.get_value(agent.normalize(final_obs)).numpy()
            dones[step] = terminated | truncated
            next_obs = agent.normalize(raw_obs, update=True)
            finished += envs.finished_episodes(infos, reward)
        return next_obs, finished

    @torch.no_grad()
    def advantages(self, agent: ActorCritic, next_obs: Tensor, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
        """(advantages, returns), both `[T * N]`: GAE along time, bootstrapped from V(next_obs)."""
        advantages, returns = core.gae(self.rewards.T, self.values.T, self.dones.T, agent.get_value(next_obs), gamma, gae_lambda)
        return advantages.T.reshape(-1), returns.T.reshape(-1)

    def flat(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(observations `[T * N, obs_dim]`, actions, log-probs, values `[T * N]`) in the advantages' order."""
        return self.obs.reshape(-1, self.obs.shape[-1]), self.actions.reshape(-1), self.logprobs.reshape(-1), self.values.reshape(-1)
