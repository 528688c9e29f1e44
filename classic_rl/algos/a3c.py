"""Asynchronous advantage actor-critic, A3C (Mnih et al. 2016), Hogwild-style on CPU processes.

    shared: the actor-critic's parameters and RMSprop's statistics, in shared memory
    each of num_workers processes, with its own env copies, until total_timesteps:
        copy the shared parameters into its local network
        collect num_steps x num_envs transitions with the local network
        A, R = GAE(rewards, values, dones)          (gae_lambda=1: the n-step advantage, as in the paper)
        compute A2C's gradient on the local network (algos/a2c.py: the same loss)
        write it into the shared parameters' .grad and take a shared RMSprop step, without a lock
    the main process meanwhile evaluates the shared network, logs, and checkpoints it

A2C (algos/a2c.py) is the synchronous form: the same update from num_envs envs in lock-step.
A checkpoint holds the shared network and RMSprop statistics as the workers left them at that
moment (asynchronous runs do not replay exactly: a resumed run continues from the saved weights
and step count with fresh episodes).
"""

from __future__ import annotations

import queue
import signal
import time
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from classic_rl import distributions, envs
from classic_rl.algos.a2c import A2CConfig, gradient_of_the_rollout, rmsprop
from classic_rl.buffers import RolloutBuffer
from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.cli import config_field
from classic_rl.infra.errors import NonFiniteError, require_positive
from classic_rl.infra.metrics import RunLogger
from classic_rl.nets import ActorCritic
from classic_rl.training import Evaluator

# fork starts a worker in milliseconds and shares the parent's modules; spawn (macOS, Windows) re-imports them
CONTEXT = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


@dataclass
class A3CConfig(A2CConfig):
    num_workers: int = config_field(2, "Asynchronous worker processes, each with its own env copies")
    num_envs: int = config_field(1, "Environments per worker (the paper: 1)")

    def __post_init__(self):
        super().__post_init__()
        require_positive(num_workers=self.num_workers)


class SharedRMSprop:
    """RMSprop's per-parameter statistics in shared memory, so that every worker's step reads and updates
    the same ones (the paper's shared RMSprop). Checkpointable: loading copies into the shared tensors."""

    def __init__(self, model: ActorCritic):
        self.state = [{"step": torch.zeros(()).share_memory_(), "square_avg": torch.zeros_like(p).share_memory_()}
                      for p in model.parameters()]

    def optimizer(self, model: ActorCritic, learning_rate: float) -> torch.optim.RMSprop:
        """An RMSprop over model's (shared) parameters that uses the shared statistics."""
        optimizer = rmsprop(model.parameters(), learning_rate)
        for param, state in zip(model.parameters(), self.state, strict=True):
            optimizer.state[param] = state
        return optimizer

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        return [{k: v.clone() for k, v in state.items()} for state in self.state]

    def load_state_dict(self, saved: list[dict[str, torch.Tensor]]) -> None:
        for state, values in zip(self.state, saved, strict=True):
            for key, value in values.items():
                state[key].copy_(value)


def worker(rank: int, cfg: A3CConfig, shared: ActorCritic, statistics: SharedRMSprop, steps_done, stop, episodes) -> None:
    """One asynchronous learner: collect, compute the gradient locally, step the shared parameters."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    episodes.cancel_join_thread()  # exit without waiting for the main process to read the last episodes
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed + 1_000 * (rank + 1))
    vec_env = envs.make_vec_env(cfg.env, cfg.num_envs)
    local = ActorCritic(**shared.init_kwargs)
    optimizer = statistics.optimizer(shared, cfg.learning_rate)
    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, local.init_kwargs["obs_dim"], local.distribution)
    next_obs = local.normalize(vec_env.reset(seed=cfg.seed + 1_000 * (rank + 1) + steps_done.value)[0])
    try:
        while not stop.is_set() and steps_done.value < cfg.total_timesteps:
            local.load_state_dict(shared.state_dict())
            next_obs, finished = buffer.collect(local, vec_env, next_obs, cfg.gamma)
            for episode in finished:
                episodes.put(episode)
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = cfg.learning_rate * max(0.0, 1.0 - steps_done.value / cfg.total_timesteps)
            gradient_of_the_rollout(local, buffer, next_obs, cfg, steps_done.value)
            for shared_param, local_param in zip(shared.parameters(), local.parameters(), strict=True):
                shared_param.grad = local_param.grad
            optimizer.step()
            with steps_done.get_lock():
                steps_done.value += cfg.num_steps * cfg.num_envs
    except NonFiniteError as err:
        episodes.put(f"worker {rank}: {err}")
    finally:
        vec_env.close()


def train(cfg: A3CConfig, logger: RunLogger, evaluator: Evaluator, checkpoints: Checkpoints) -> tuple[ActorCritic, int]:
    """Start the workers, then evaluate, log and checkpoint the shared network until they finish."""
    obs_dim, action_kwargs = distributions.policy_spaces(cfg.env, "a3c")
    model = ActorCritic(obs_dim, hidden_sizes=cfg.hidden_sizes, shared=cfg.shared, **action_kwargs).share_memory()
    statistics = SharedRMSprop(model)
    checkpoints.track(model=model, optimizer=statistics)
    resumed = checkpoints.restore()
    steps_done, stop, episodes = CONTEXT.Value("q", resumed["global_step"] if resumed else 0), CONTEXT.Event(), CONTEXT.Queue()
    workers = [CONTEXT.Process(target=worker, args=(rank, cfg, model, statistics, steps_done, stop, episodes), daemon=True)
               for rank in range(cfg.num_workers)]
    for process in workers:
        process.start()
    progress = tqdm(total=cfg.total_timesteps, initial=steps_done.value, unit="step", desc=f"a3c {cfg.env}", mininterval=1.0)
    next_log = steps_done.value
    try:
        while any(process.is_alive() for process in workers):
            time.sleep(0.02)
            global_step = steps_done.value
            logger.log_episodes(global_step, drain_episodes(episodes))
            progress.update(global_step - progress.n)
            if global_step >= next_log:
                next_log = global_step + 1_000
                logger.log(global_step, {"charts/episodic_return": logger.recent_return(),
                                         "charts/SPS": global_step / logger.elapsed()})
            if evaluator.maybe_evaluate(global_step, model):
                break
            if checkpoints.due(global_step):
                checkpoints.save(global_step, global_step=global_step)
                checkpoints.stop_if_requested(global_step)
    finally:
        stop.set()
        for process in workers:
            process.join(timeout=10)
        progress.close()
    logger.log_episodes(steps_done.value, drain_episodes(episodes))
    return model, steps_done.value


def drain_episodes(episodes) -> list[dict[str, float]]:
    """Statistics of the episodes the workers finished since the last call; a worker's error is raised here."""
    finished = []
    while True:
        try:
            item = episodes.get_nowait()
        except queue.Empty:
            return finished
        if isinstance(item, str):
            raise NonFiniteError(item)
        finished.append(item)
