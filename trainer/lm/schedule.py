"""``train-lm``'s learning-rate schedule and gradient accumulation.

Schedule: a linear warmup over ``warmup_steps`` optimizer steps (step s < warmup at (s + 1) /
(warmup + 1) of the learning rate), then "constant" (the learning rate as given) or "cosine"
(down to ``min_lr_ratio`` times it once the run's last step is taken).

Accumulation: one optimizer step takes ``accumulation`` batches (micro-batches), each run
forward and backward on its own, so memory is one micro-batch's. A step's loss is the loss of
the micro-batches' rows taken together: ``HintonKD`` is alpha * CE (a mean over labelled rows)
+ beta * T^2 * KL (a mean over rows), so micro-batch i is weighted alpha * labelled_i /
labelled and beta * rows_i / rows (``HardCE``: labelled_i / labelled), and the accumulated
gradient equals one batch of the same sequences' up to float rounding. Any other loss module
is weighted rows_i / rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from softlabels.errors import SoftLabelsError
from trainer.divergences import DivergenceKD
from trainer.modules import HardCE, HintonKD

SCHEDULES = ("constant", "cosine")


def check_schedule(*, schedule: str, warmup_steps: int, accumulation: int, min_lr_ratio: float):
    """Refuse schedule options that mean nothing, naming the valid ones."""
    if schedule not in SCHEDULES:
        raise SoftLabelsError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps < 0:
        raise SoftLabelsError(f"warmup steps must be >= 0, got {warmup_steps}")
    if accumulation < 1:
        raise SoftLabelsError(f"accumulation must be at least 1 batch, got {accumulation}")
    if not 0 <= min_lr_ratio <= 1:
        raise SoftLabelsError(f"the cosine floor must be in [0, 1], got {min_lr_ratio}")


def lr_factor(
    step: int, *, total: int, warmup_steps: int, schedule: str, min_lr_ratio: float = 0.0
) -> float:
    """The learning rate at optimizer step ``step`` (0-based) of ``total``, over the base one."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total: int,
    warmup_steps: int,
    schedule: str,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping ``lr_factor`` once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            total=total,
            warmup_steps=warmup_steps,
            schedule=schedule,
            min_lr_ratio=min_lr_ratio,
        ),
    )


def groups(batches: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` batches that hold a row taking a loss (the last list may
    be shorter)."""
    group: list[Any] = []
    for batch in batches:
        if len(batch.labels) == 0:  # every row of these sequences predicts a prompt token
            continue
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def share(loss_fn: nn.Module, batch: Any, group: list[Any]) -> tuple[nn.Module, float]:
    """The loss module for ``batch``'s part of ``group``'s step, and a factor on its value (see
    the module docstring); (loss_fn, 1.0) for a group of one batch."""
    if len(group) == 1:
        return loss_fn, 1.0
    rows = sum(len(b.labels) for b in group)
    labelled = sum(int((b.labels >= 0).sum()) for b in group)
    mine, mine_labelled = len(batch.labels), int((batch.labels >= 0).sum())
    ce_share = mine_labelled / labelled if labelled else 0.0
    if isinstance(loss_fn, HintonKD):
        scaled = HintonKD(
            loss_fn.alpha * ce_share,
            loss_fn.beta * mine / rows,
            temperature=loss_fn.temperature,
        )
        return scaled, 1.0
    if isinstance(loss_fn, HardCE):
        return loss_fn, ce_share
    if isinstance(loss_fn, DivergenceKD):  # w_kd * KD + w_ce * CE as factor * DivergenceKD(a)
        w_kd, w_ce = (1 - loss_fn.alpha) * mine / rows, loss_fn.alpha * ce_share
        if w_kd + w_ce == 0:
            return loss_fn, 0.0
        scaled_kd = DivergenceKD(
            w_ce / (w_kd + w_ce),
            temperature=loss_fn.temperature,
            divergence=loss_fn.kind,
            beta=loss_fn.jsd_beta,
        )
        return scaled_kd, w_kd + w_ce
    return loss_fn, mine / rows
