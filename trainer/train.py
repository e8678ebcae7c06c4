"""Stage two: train a student from a transfer set and (optionally) a soft-label store.

The recipe, top to bottom: ``train(config)`` builds the data (transfer set joined with the store
through sample_index), the student, and the optimizer; restores ``last.pt`` on ``--resume``; then
runs epochs of (batch -> replay teacher soft targets at T -> loss -> step), evaluating at T = 1
and checkpointing after each epoch. A teacher is never loaded or run here. Without a store the
same loop trains on hard labels; that is how teachers are trained.

Outputs in ``config.out``: config.json, metrics.jsonl (one line per epoch), curves.png,
last.pt (training state, for --resume) and model.pt (the final model, weights-only loadable).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from softlabels import faults
from softlabels.checkpoint import load_checkpoint, save_checkpoint
from softlabels.device import autocast, resolve_device
from softlabels.distributed import Dist, init_from_env, local_device, shutdown
from softlabels.errors import SoftLabelsError
from softlabels.join import withhold_labels
from softlabels.store import StoreReader
from softlabels.transfer import TransferSet, as_transfer
from softlabels.views.augment import augment_spec
from softlabels.views.dataset import StoredViews
from softlabels.vision.images import ImageTransfer
from trainer.build import build_loss, build_student, check_student, resolve_num_classes
from trainer.config import LOSSES, RunResult, TrainConfig
from trainer.data import (
    TargetSource,
    ViewRows,
    join,
    make_target_source,
    make_view_source,
    steps_per_epoch,
    views_per_epoch_rows,
)
from trainer.evaluate import evaluate
from trainer.report import format_table, plot_curves, write_metrics

CPU = torch.device("cpu")
__all__ = ["LOSSES", "RunResult", "TrainConfig", "format_table", "resolve_num_classes", "train"]

# --------------------------------------------------------------------------------------------
# Building blocks.


def _comparable(config: TrainConfig) -> dict[str, Any]:
    skip = ("resume", "overwrite", "progress", "device")  # a run may resume on another device
    return {k: v for k, v in asdict(config).items() if k not in skip}


def _prepare_out(config: TrainConfig) -> Path:
    return prepare_out(config.out, resume=config.resume, overwrite=config.overwrite)


def prepare_out(out: str | os.PathLike[str], *, resume: bool, overwrite: bool) -> Path:
    """The output folder, created: a non-empty one is refused unless the run resumes it or
    replaces it (``overwrite`` empties it)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SoftLabelsError(f"output {str(out)!r} is a file, not a folder: choose another path")
    if out.exists() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise SoftLabelsError(
                f"output folder {str(out)!r} is not empty; pass resume=True to continue that run or overwrite=True to replace it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------------------------
# The recipe.


def train(
    config: TrainConfig,
    *,
    store: StoreReader | None = None,
    eval_store: StoreReader | None = None,
    data: TransferSet | Any = None,
    eval_data: TransferSet | Any = None,
) -> RunResult:
    """Train one model. Objects given here (an opened store, a transfer set or Dataset) take the
    place of the config's strings, so a sweep or ``compare`` opens and verifies each store, and
    fingerprints each transfer set, once; a reader passed in is not closed here.

    Under ``torchrun`` this is distributed data-parallel: each rank reads only its shard of the
    store's chunks, takes batch_size / world rows per step, and gradients are averaged, so a step
    sees a global batch of ``batch_size`` as in a single process. Rank 0 evaluates, checkpoints
    and writes the outputs."""
    config.validate()
    data = as_transfer(config.transfer if data is None else data, config.split)
    if eval_data is None and config.eval_split:
        eval_data = as_transfer(config.transfer, config.eval_split)
    elif eval_data is not None:
        eval_data = as_transfer(eval_data, config.eval_split or "test")
    for images in (data, eval_data):
        if isinstance(images, ImageTransfer):
            images.progress = config.progress
    opened: list[StoreReader] = []
    try:
        store = _joined(store, config.store, data, opened)
        if store is not None:
            data = withhold_labels(data, store)  # the store's -1 rules
        if isinstance(data, ImageTransfer) and isinstance(eval_data, ImageTransfer):
            if not eval_data.explicit:  # evaluate on what training (and the teacher) saw
                eval_data.adopt(data.preprocess)
        eval_store = _joined(eval_store, config.eval_store, eval_data, opened)
        device = resolve_device(config.device)
        d = init_from_env(device)
        device = local_device(device, d)
        try:
            return _run(config, data, eval_data, store, eval_store, d, device)
        finally:
            shutdown(d)
    finally:
        for s in opened:
            s.close()


def _joined(
    store: StoreReader | None,
    path: str | None,
    data: TransferSet | None,
    opened: list[StoreReader],
) -> StoreReader | None:
    """The store joined with ``data``: the reader given, else the path opened (and recorded in
    ``opened`` for closing), else None."""
    if data is None or (store is None and path is None):
        return None
    if store is None:
        store = join(path, data)  # type: ignore[arg-type]
        opened.append(store)
        return store
    return join(store, data)


def _run(
    config: TrainConfig,
    data: TransferSet,
    eval_data: TransferSet | None,
    store: StoreReader | None,
    eval_store: StoreReader | None,
    d: Dist,
    device: torch.device,
) -> RunResult:
    if store is None and config.loss != "hinton":
        raise SoftLabelsError(f"loss {config.loss!r} needs a soft-label store (--store)")
    if store is not None and store.is_sparse and config.loss == "logits":
        raise SoftLabelsError(
            f"loss 'logits' (logit matching) needs the teacher's logit for every class, and "
            f"{store.path!r} is sparse (K ids per row): train from a dense store, or use the "
            f"'hinton' loss at a high temperature"
        )
    if config.estimator is not None:
        sparse = None if store is None else store.meta.sparse
        if sparse is None:
            raise SoftLabelsError(
                f"estimator {config.estimator!r} applies to sparse stores only; train from a "
                f"sparse store, or leave the estimator unset"
            )
        if config.estimator != "bucket" and not sparse.sample:
            raise SoftLabelsError(
                f"estimator {config.estimator!r} reweights sampled ids, and {store.path!r} "
                f"keeps its top {sparse.top_k} ids only: use 'bucket'"
            )
    if store is None and not data.has_labels:
        raise SoftLabelsError(
            f"transfer set {data.name!r} has no labels; give a store (--store) to train on "
            f"soft targets"
        )
    if config.batch_size % d.world:
        raise SoftLabelsError(
            f"batch size {config.batch_size} must divide evenly over {d.world} processes"
        )
    if store is not None and store.meta.num_chunks < d.world:
        raise SoftLabelsError(
            f"the store has {store.meta.num_chunks} chunk(s), fewer than the {d.world} processes; "
            f"regenerate it with smaller chunks (--chunk-rows)"
        )
    if config.views_per_epoch != 1 and (store is None or store.meta.views is None):
        raise SoftLabelsError(
            f"views per epoch ({config.views_per_epoch}) applies to a views store (generate "
            f"--views); this run's store holds none: leave it at 1"
        )
    if config.augment is not None and (store is None or store.meta.views is None):
        raise SoftLabelsError(
            f"an augmentation policy ({config.augment!r}) rebuilds the views of a views store "
            f"(generate --views); this run's store holds none: leave it out"
        )
    if eval_store is not None and eval_store.meta.views is not None:
        raise SoftLabelsError(
            f"{eval_store.path!r} holds augmented views; evaluate against a plain store of the "
            f"eval split (generate without views)"
        )
    num_classes = resolve_num_classes(config, data, store)
    torch.manual_seed(config.seed)
    model, arch = build_student(config, data.input_shape, num_classes)
    check_student(model, config.model, data, num_classes)  # before --out: a failure leaves none
    out = d.collective(lambda: _prepare_out(config) if d.is_main else Path(config.out))
    if d.is_main:
        (out / "config.json").write_text(json.dumps(_comparable(config), indent=2))

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = build_loss(config, store is not None)
    rank_batch = config.batch_size // d.world
    budget = int(config.memory_budget_mb * 2**20)
    temperature = loss_fn.target_temperature
    rows: TransferSet | ViewRows = data
    if store is not None and store.meta.views is not None:  # one stored view per sample
        policy = None if config.augment is None else augment_spec(config.augment)
        views = StoredViews(
            store, data, policy=policy, seed=config.seed, views_per_epoch=config.views_per_epoch
        )
        rows = ViewRows(views)
        source: TargetSource = make_view_source(
            store, views, temperature, rank_batch, config.seed, budget, d, config.estimator
        )
        per_rank = [views_per_epoch_rows(views, Dist(r, d.world)) for r in range(d.world)]
        steps = min(-(-n // rank_batch) for n in per_rank) if d.world > 1 else None
    else:
        source = make_target_source(
            store, temperature, len(data), rank_batch, config.seed, budget, d, config.estimator
        )
        steps = steps_per_epoch(store, len(data), rank_batch, d) if d.world > 1 else None
    labels_all = torch.from_numpy(rows.label_array()).to(device)
    teacher_eval = None
    if eval_store is not None and eval_data is not None and d.is_main:
        teacher_eval = eval_store.soft_targets(np.arange(len(eval_data)), 1.0)  # on the CPU

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if config.resume and (out / "last.pt").exists():
        state = load_checkpoint(out / "last.pt")
        if state["config"] != _comparable(config):
            raise SoftLabelsError(
                f"cannot resume {str(out)!r}: it was started with a different configuration"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
    net = model
    if d.world > 1:  # averages gradients
        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)

    for epoch in range(start_epoch, config.epochs):
        # ---- train one epoch
        train_loss, epoch_seconds = train_epoch(
            config,
            net,
            optimizer,
            loss_fn,
            source,
            rows,
            labels_all,
            epoch,
            max_steps=steps,
            device=device,
        )
        # ---- evaluate at T = 1 and checkpoint (rank 0)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "epoch_seconds": epoch_seconds,
        }
        if d.is_main:
            if eval_data is not None:
                metrics = evaluate(model, eval_data, teacher_eval)
                record.update({f"eval_{k}": v for k, v in metrics.items()})
            history.append(record)
            payload = {
                "arch": arch or {},
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "history": history,
                "config": _comparable(config),
            }
            save_checkpoint(out / "last.pt", payload)
            write_metrics(out, history)
            faults.point("epoch_end")
            if config.progress:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
                tqdm.write(json.dumps(shown))
        history = d.broadcast(history)

    model_path = out / "model.pt"
    if d.is_main:
        final = {
            "arch": arch or {},
            "model": model.state_dict(),
            "config": _comparable(config),
            "metrics": history[-1],
        }
        save_checkpoint(model_path, final)
        if config.save:
            save_checkpoint(config.save, final)
        plot_curves(out, history)
    d.barrier()
    return RunResult(config, history, str(config.save or model_path))


def train_epoch(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    source: TargetSource,
    data: TransferSet,
    labels: torch.Tensor,
    epoch: int,
    max_steps: int | None = None,
    device: torch.device = CPU,
) -> tuple[float, float]:
    """One pass over ``source``'s batches (at most ``max_steps``) on ``device``. Inputs and
    targets move there with the batch (pinned, non-blocking on CUDA); the student's forward pass
    runs under autocast at ``config.precision``. Returns (mean training loss, seconds)."""
    cuda = device.type == "cuda"
    model.train()
    seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
    desc = f"epoch {epoch + 1}/{config.epochs}"
    bar = tqdm(total=len(data), unit="samples", desc=desc, disable=not config.progress, leave=False)
    for step, (positions, target) in enumerate(source.batches(epoch)):
        if max_steps is not None and step >= max_steps:
            break
        x = torch.from_numpy(data.gather(positions))  # (B, *input_shape)
        if cuda:
            x = x.pin_memory().to(device, non_blocking=True)
            target = None if target is None else target.pin_memory().to(device, non_blocking=True)
        y = labels[torch.from_numpy(positions).to(labels.device)]  # (B,)
        with autocast(device, config.precision):
            logits = model(x)
        loss = loss_fn(logits.float(), target, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
        bar.update(len(y))
        if step % 20 == 0:
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", rate=f"{rate:.0f}/s")
    bar.close()
    return loss_sum / seen, time.perf_counter() - t0


def train_sweep(
    config: TrainConfig, temperatures: tuple[float, ...], **objects: Any
) -> list[RunResult]:
    """One student per temperature from the same store, each in ``out/T<t>``. The store is
    opened, verified and joined once for the whole sweep."""
    if len(temperatures) == 1:
        return [train(replace(config, temperature=temperatures[0]), **objects)]
    data = as_transfer(objects.pop("data", None) or config.transfer, config.split)
    opened: list[StoreReader] = []
    store = _joined(objects.pop("store", None), config.store, data, opened)
    if store is not None:
        data = withhold_labels(data, store)  # once for the sweep: one message
    try:
        return [
            train(
                replace(config, temperature=t, out=str(Path(config.out) / f"T{t:g}"), save=None),
                store=store,
                data=data,
                **objects,
            )
            for t in temperatures
        ]
    finally:
        for s in opened:
            s.close()
