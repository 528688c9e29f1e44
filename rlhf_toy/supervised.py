"""The supervised training loop under pretraining, the reward model and DPO: one behaviour for accelerate,
precision, gradient clipping, the non-finite guard, evaluation, checkpoints, time budgets and timing.

    for step in start..steps:
        rows = batches.next()                                   # the order is checkpointed
        loss, metrics = loss_of(rows)                           # under autocast, one context a step
        backward; clip the gradient norm to max_grad_norm
        a non-finite loss or gradient: put the batch back, save the last good weights, stop
        optimizer step (and the scheduler's)
        train_s += the step's seconds (evaluation and checkpoints are not training)
        every eval_every steps, at the last one and when max_train_s is spent: metrics |= evaluate()
        log; checkpoint when due (or stop on Ctrl-C)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from classic_rl.infra.checkpoints import Checkpoints
from classic_rl.infra.errors import NonFiniteError, check_finite
from classic_rl.infra.metrics import RunLogger
from rlhf_toy.data import ShuffledBatches
from rlhf_toy.precision import autocast


@dataclass
class SupervisedRun:
    """What one supervised run's loop needs. `model` and `optimizer` as accelerate prepared them (or not, for a model
    that must stay whole in each process: pretraining); write_model(folder) saves the model into a checkpoint;
    rates(step, train_s) gives the metrics that depend on the training seconds so far (tokens per second)."""
    model: Any
    optimizer: Any
    batches: ShuffledBatches
    checkpoints: Checkpoints
    logger: RunLogger
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


def train_supervised(run: SupervisedRun, loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
                     evaluate: Callable[[], dict[str, float]], bar: Callable[[dict[str, float]], dict[str, str]],
                     train_s: float = 0.0) -> float:
    """Steps checkpoints.step + 1 .. run.steps (fewer once max_train_s is spent); returns the training seconds, counted
    on from train_s (a resumed run's). loss_of(rows `[b]`) -> (loss, metrics) of a batch of the training rows;
    evaluate() -> held-out metrics; bar(metrics) -> the progress bar's fields."""
    checkpoints = run.checkpoints
    progress = tqdm(range(checkpoints.step + 1, run.steps + 1), initial=checkpoints.step, total=run.steps, desc=run.desc,
                    mininterval=1.0)
    with checkpoints.stop:
        for step in progress:
            start = time.perf_counter()
            metrics = take_step(run, step, loss_of, train_s)
            train_s += time.perf_counter() - start
            metrics.update(run.rates(step, train_s))
            out_of_time = run.max_train_s is not None and train_s >= run.max_train_s
            if step % run.eval_every == 0 or step == run.steps or out_of_time:
                metrics.update(evaluate())
            run.logger.log(step, metrics)
            progress.set_postfix(bar(metrics), refresh=False)
            checkpoints.save_if_due(step, run.write_model, train_s=train_s)
            if out_of_time:
                break
    progress.close()
    return train_s


def take_step(run: SupervisedRun, step: int, loss_of, train_s: float) -> dict[str, float]:
    """One optimizer step on the next batch; returns its metrics with the loss, the gradient norm and the learning rate."""
    rows = run.batches.next()
    with autocast(run.precision, run.accelerator.device):  # one context a step: its bf16 weight copies follow each update
        loss, metrics = loss_of(rows)
    run.accelerator.backward(loss)
    grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), run.max_grad_norm)
    save_last_good = functools.partial(run.checkpoints.save, write_files=run.write_model, train_s=train_s)
    check_finite_before_step(step, run.batches, save_last_good, train_loss=loss, grad_norm=grad_norm)
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {**metrics, "train/loss": loss.item(), "train/grad_norm": float(grad_norm),
            "train/lr": run.optimizer.param_groups[0]["lr"]}


def check_finite_before_step(step: int, batches: ShuffledBatches, save, **values) -> None:
    """check_finite on a step's loss and gradient norm, called before the optimizer step: on a
    NaN or inf the step is not taken, its batch goes back to `batches`, and save(step - 1) -> folder
    writes the last good weights, which the NonFiniteError names."""
    try:
        check_finite(step, **values)
    except NonFiniteError as err:
        batches.put_back()
        raise NonFiniteError(f"{err}; saved the last good weights to {save(step - 1)}") from None
