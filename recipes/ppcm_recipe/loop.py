"""The training loop: CE + lambda * L_U (paper Eq. (1)) through accelerate, one optimiser
update per ``grad_accum`` batches, checkpoints between updates and at each epoch's end."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .build import sync_batchnorm_stats
from .checkpoints import TrainState, save_checkpoint
from .data import EpochBatchSampler, _sample_seed
from .metrics import MetricsLog


@dataclass
class TrainingRun:
    """Everything the loop needs, built by ``recipes/train.py``."""

    cfg: dict
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    ema: Any
    mixup: Any
    criterion: Callable
    penalty_weight: float
    train_set: Any
    state: TrainState
    log: MetricsLog
    checkpoints: Path
    steps_per_epoch: int  # batches per process and epoch
    updates_per_epoch: int
    evaluate: Callable[[Any], dict]
    device_transform: Callable | None = None  # data.encrypt_on=device: DeviceEncrypt


def make_loader(dataset, batch_sampler, workers: int):
    if hasattr(dataset, "batches"):  # PredecodedImages: batches cut from one array, in-process
        return dataset.batches(batch_sampler)
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=False
    )


def train(run: TrainingRun) -> float:
    """Train until ``train.epochs`` (or ``train.max_steps``); returns the start time."""
    cfg, tr, state, acc = run.cfg, run.cfg["train"], run.state, run.accelerator
    started = time.time()
    bar = tqdm(
        total=tr["epochs"] * run.updates_per_epoch,
        initial=state.global_step,
        disable=not acc.is_main_process,
        desc="train",
    )
    done = tr["max_steps"] is not None and state.global_step >= tr["max_steps"]
    while state.epoch < tr["epochs"] and not done:
        run.train_set.epoch = state.epoch
        sampler = EpochBatchSampler(
            len(run.train_set),
            tr["batch_size"],
            cfg["seed"],
            state.epoch,
            acc.num_processes,
            acc.process_index,
            start=state.step_in_epoch,
            multiple_of=tr["grad_accum"],
        )
        run.model.train()
        for x, y in make_loader(run.train_set, sampler, cfg["data"]["num_workers"]):
            losses = _step(run, x, y)
            state.step_in_epoch += 1
            if not acc.sync_gradients:
                continue
            state.global_step += 1
            run.scheduler.step_update(num_updates=state.global_step)
            if run.ema is not None:
                run.ema.update(acc.unwrap_model(run.model), step=state.global_step)
            bar.update(1)
            done = tr["max_steps"] is not None and state.global_step >= tr["max_steps"]
            if state.global_step % tr["log_every"] == 0 or done:
                lr = run.optimizer.param_groups[0]["lr"]
                elapsed = round(time.time() - started, 1)
                position = {"step": state.global_step, "epoch": state.epoch}
                run.log.write({**position, **losses, "lr": lr, "elapsed_s": elapsed})
            if done:
                break
            between = state.step_in_epoch < run.steps_per_epoch
            if state.global_step % tr["checkpoint_every"] == 0 and between:
                save_checkpoint(acc, run.checkpoints, state.global_step, tr["keep_checkpoints"])
        if done:
            break
        _end_epoch(run)
    bar.close()
    sync_batchnorm_stats(acc, run.model)
    return started


def _step(run: TrainingRun, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One batch: forward, CE + lambda * L_U, backward, (accumulated) optimiser step."""
    acc, state = run.accelerator, run.state
    x, y = x.to(acc.device), y.to(acc.device)
    if run.device_transform is not None:
        x = run.device_transform(x)
    # RNG state per step, not a stream: mixup and dropout draw the same numbers in a resumed
    # run as in an uninterrupted one
    step_seed = _sample_seed(run.cfg["seed"], state.epoch, state.step_in_epoch, acc.process_index)
    np.random.seed(step_seed % 2**32)
    torch.manual_seed(step_seed)
    if run.mixup is not None:
        x, y = run.mixup(x, y)
    with acc.accumulate(run.model):
        with acc.autocast():
            ce = run.criterion(run.model(x), y)
        lam = run.penalty_weight
        penalty = acc.unwrap_model(run.model).permutation_penalty() if lam else x.new_zeros(())
        loss = ce + lam * penalty
        acc.backward(loss)
        if acc.sync_gradients and run.cfg["train"]["clip_grad"]:
            acc.clip_grad_norm_(run.model.parameters(), run.cfg["train"]["clip_grad"])
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return {
        "loss": float(loss.detach()),
        "ce": float(ce.detach()),
        "penalty": float(penalty.detach()),
    }


def _end_epoch(run: TrainingRun) -> None:
    acc, state = run.accelerator, run.state
    sync_batchnorm_stats(acc, run.model)
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    if run.cfg["eval"]["every_epoch"]:
        if acc.is_main_process:
            result = run.evaluate(acc.unwrap_model(run.model))
            run.log.write({"step": state.global_step, "epoch": state.epoch, "eval": result})
        acc.wait_for_everyone()
    tr = run.cfg["train"]
    save_checkpoint(acc, run.checkpoints, state.global_step, tr["keep_checkpoints"])
