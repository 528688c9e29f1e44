"""The supervised training loop under pretraining, the reward model and DPO: one behaviour for accelerate,
precision, gradient clipping, the non-finite guard, evaluation, checkpoints, time budgets and timing.

    for step in start..steps:
        rows = this process's share of batches.next()           # the order is checkpointed
        loss, metrics = loss_of(rows)                           # under autocast, one context a step
        backward (DDP averages the shares' gradients); clip the gradient norm to max_grad_norm
        a non-finite loss or gradient: put the batch back, save the last good weights, stop
        optimizer step (and the scheduler's)
        train_s += the step's seconds (evaluation and checkpoints are not training)
        on the main process, every eval_every steps, at the last one and when max_train_s is spent: metrics |= evaluate()
        log (the main process); checkpoint when due (or stop on Ctrl-C)

In N processes every process draws the same batch and trains on its 1/N of the rows: a loss that is a mean over
rows then gives the gradient one process would get from the whole batch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.errors import NonFiniteError, check_finite
from classic_rl.infra.metrics import RunLogger
from rlhf_toy.data import ShuffledBatches
from rlhf_toy.distributed import (
    any_process,
    clip_gradients,
    metrics_over_processes,
    process_share,
    require_even_split,
    save_if_due,
    trained_modules,
)
from rlhf_toy.fsdp import full_parameters, save_sharded_checkpoint
from rlhf_toy.precision import autocast


@dataclass
class SupervisedRun:
    """What one supervised run's loop needs. `model` and `optimizer` as distributed.prepare_training gave them; `logger` the main
    process's (None on the others); write_model(folder) saves the model into a checkpoint; rates(step, train_s) gives
    the metrics that depend on the training seconds so far (tokens per second)."""
    model: Any
    optimizer: Any
    batches: ShuffledBatches
    checkpoints: Checkpoints
    logger: RunLogger | None
    accelerator: Any
    precision: str
    write_model: Callable
    steps: int
    max_grad_norm: float
    eval_every: int
    desc: str
    scheduler: Any = None
    max_train_s: float | None = None
    rates: Callable[[int, float], dict[str, float]] = field(default=lambda step, train_s: {})
    sharded: bool = False  # --fsdp: every process writes checkpoints, and evaluation sees the full parameters
    evaluated: tuple = ()  # other models evaluation runs (DPO's reference), whose parameters are gathered with the model's
    saved_modules: dict = field(default_factory=dict)  # frozen models that checkpoints hold too (a moving reference), by name


def train_supervised(run: SupervisedRun, loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
                     evaluate: Callable[[], dict[str, float]], bar: Callable[[dict[str, float]], dict[str, str]],
                     train_s: float = 0.0) -> float:
    """Steps checkpoints.step + 1 .. run.steps (fewer once max_train_s is spent); returns the training seconds, counted
    on from train_s (a resumed run's). loss_of(rows `[b]`) -> (loss, metrics) of a batch of the training rows;
    evaluate() -> held-out metrics, on the main process only; bar(metrics) -> the progress bar's fields."""
    checkpoints, accelerator, main = run.checkpoints, run.accelerator, run.accelerator.is_main_process
    require_even_split(run.batches.batch_size, accelerator.num_processes, "the batch size")
    progress = tqdm(range(checkpoints.step + 1, run.steps + 1), initial=checkpoints.step, total=run.steps, desc=run.desc,
                    mininterval=1.0, disable=not main)
    with checkpoints.stop:
        for step in progress:
            start = time.perf_counter()
            metrics = take_step(run, step, loss_of, train_s)
            train_s += time.perf_counter() - start
            metrics.update(run.rates(step, train_s))
            out_of_time = any_process(accelerator, main and run.max_train_s is not None and train_s >= run.max_train_s)
            if step % run.eval_every == 0 or step == run.steps or out_of_time:
                with full_parameters(run.model, *run.evaluated):
                    if main:
                        metrics.update(evaluate())
            if main:
                run.logger.log(step, metrics)
                progress.set_postfix(bar(metrics), refresh=False)
            save_if_due(accelerator, checkpoints, step, functools.partial(save_checkpoint, run, step, train_s), every_process=run.sharded)
            if out_of_time:
                break
    progress.close()
    return train_s


def take_step(run: SupervisedRun, step: int, loss_of, train_s: float) -> dict[str, float]:
    """One optimizer step on this process's share of the next batch; returns its metrics (averaged over the processes)
    with the loss, the gradient norm and the learning rate."""
    accelerator = run.accelerator
    rows = process_share(run.batches.next(), accelerator.process_index, accelerator.num_processes)
    with autocast(run.precision, accelerator.device):  # one context a step: its bf16 weight copies follow each update
        loss, metrics = loss_of(rows)
    accelerator.backward(loss)
    grad_norm = clip_gradients(accelerator, run.model.parameters(), run.max_grad_norm)
    saves = run.sharded or accelerator.is_main_process  # a non-finite gradient norm is every process's (they share it)
    check_finite_before_step(step, run.batches, functools.partial(save_checkpoint, run, train_s=train_s) if saves else None,
                             train_loss=loss, grad_norm=grad_norm)
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return metrics_over_processes(accelerator, {**metrics, "train/loss": loss.item(), "train/grad_norm": float(grad_norm),
                                                "train/lr": run.optimizer.param_groups[0]["lr"]})


def save_checkpoint(run: SupervisedRun, step: int, train_s: float) -> Path | None:
    """checkpoints/step-N/ with the model, the optimizer and the tracked state: written by the main process, or with
    --fsdp by every process (fsdp.save_sharded_checkpoint). Returns the folder (None on the other processes)."""
    if not run.sharded:
        return run.checkpoints.save(step, run.write_model, optimizer=run.optimizer, train_s=train_s)
    return save_sharded_checkpoint(run.accelerator, run.checkpoints, step, trained_modules(run.model), run.optimizer,
                                   run.write_model, run.saved_modules, train_s=train_s)


def check_finite_before_step(step: int, batches: ShuffledBatches, save, **values) -> None:
    """check_finite on a step's loss and gradient norm, called before the optimizer step: on a
    NaN or inf the step is not taken, its batch goes back to `batches`, and save(step - 1) -> folder
    writes the last good weights, which the NonFiniteError names (save None: another process writes them)."""
    try:
        check_finite(step, **values)
    except NonFiniteError as err:
        batches.put_back()
        if save is None:
            raise
        raise NonFiniteError(f"{err}; saved the last good weights to {save(step - 1)}") from None
