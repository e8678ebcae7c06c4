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
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from softlabels import faults
from softlabels.checkpoint import load_checkpoint, save_checkpoint
from softlabels.distributed import Dist, init_from_env, shutdown
from softlabels.ensemble import replay_log_probs
from softlabels.errors import SoftLabelsError
from softlabels.models import build_model
from softlabels.store import StoreReader
from softlabels.transfer import TransferSet, import_callable, load_transfer
from trainer import losses
from trainer.data import (
    Shard,
    TargetBatch,
    TargetSource,
    make_target_source,
    open_joined_store,
    steps_per_epoch,
)
from trainer.evaluate import evaluate, teacher_log_probs

LOSSES = ("hinton", "soft_ce", "logits", "soft_only")


@dataclass(frozen=True)
class TrainConfig:
    out: str
    transfer: str = "digits"
    split: str = "train"
    eval_split: str | None = "test"
    store: str | None = None  # None: train on hard labels (teachers, baselines)
    eval_store: str | None = None  # store over the eval split: agreement and KL to the teacher
    model: str = "mlp"  # mlp | cnn | module:function
    hidden: tuple[int, ...] = (128,)
    channels: tuple[int, ...] = (32, 64)
    fc: int = 128
    dropout: float = 0.0
    loss: str = "hinton"
    temperature: float = 4.0
    alpha: float = 0.1  # weight of the hard-label CE term
    beta: float | None = None  # weight of the T^2 KL term; None means 1 - alpha
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    memory_budget_mb: float = 1024.0
    save: str | None = None  # extra copy of the final model, e.g. data/digits/teacher1.pt
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    @property
    def kd_weight(self) -> float:
        return 1.0 - self.alpha if self.beta is None else self.beta

    def validate(self) -> None:
        try:
            losses.check_temperature(self.temperature)
            losses.check_weight("alpha", self.alpha)
            losses.check_weight("beta", self.kd_weight)
        except ValueError as exc:
            raise SoftLabelsError(f"{exc} (set with --temperature, --alpha, --beta)") from exc
        if self.loss not in LOSSES:
            raise SoftLabelsError(f"--loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise SoftLabelsError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SoftLabelsError(f"--lr must be a finite number > 0, got {self.lr}")
        if not self.memory_budget_mb > 0:
            raise SoftLabelsError(f"--memory-budget-mb must be > 0, got {self.memory_budget_mb}")
        if self.resume and self.overwrite:
            raise SoftLabelsError("--resume and --overwrite contradict each other; pick one")
        if self.store is None and self.loss == "soft_only":
            raise SoftLabelsError("--loss soft_only needs --store")


@dataclass(frozen=True)
class RunResult:
    config: TrainConfig
    history: list[dict[str, Any]]
    model_path: str

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]

    @property
    def epoch_seconds(self) -> float:
        """Median training time of an epoch (evaluation excluded)."""
        return float(np.median([h["epoch_seconds"] for h in self.history]))


# --------------------------------------------------------------------------------------------
# Building blocks.


def architecture(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int
) -> dict[str, Any] | None:
    """The JSON-able architecture of a built-in model, or None for module:function."""
    common = {"in_shape": list(input_shape), "num_classes": num_classes, "dropout": config.dropout}
    if config.model == "mlp":
        return {"name": "mlp", "kwargs": {**common, "hidden": list(config.hidden)}}
    if config.model == "cnn":
        return {
            "name": "cnn",
            "kwargs": {**common, "channels": list(config.channels), "fc": config.fc},
        }
    return None


def build_student(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, dict | None]:
    arch = architecture(config, input_shape, num_classes)
    if arch is not None:
        return build_model(arch), arch
    module = import_callable(config.model)()
    if not isinstance(module, nn.Module):
        raise SoftLabelsError(
            f"--model {config.model!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module, None


def batch_loss(
    config: TrainConfig,
    store: StoreReader | None,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    batch: TargetBatch,
) -> torch.Tensor:
    if store is None or batch.logits is None:
        return losses.hard_cross_entropy(student_logits, labels)
    logits = torch.from_numpy(batch.logits)
    if config.loss == "logits":
        return losses.logit_matching(student_logits, logits)
    members = None if batch.member_logits is None else torch.from_numpy(batch.member_logits)
    weights = torch.tensor(store.meta.weights, dtype=torch.float32)
    teacher = replay_log_probs(logits, members, store.meta.combine, weights, config.temperature)
    if config.loss == "soft_ce":
        return losses.soft_cross_entropy(student_logits, teacher, config.temperature)
    if config.loss == "soft_only":
        return losses.kd_kl(student_logits, teacher, config.temperature)
    return losses.hinton_loss(
        student_logits, labels, teacher, config.temperature, config.alpha, config.kd_weight
    )


def _comparable(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(config).items() if k not in ("resume", "overwrite", "progress")}


def _prepare_out(config: TrainConfig) -> Path:
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.resume:
        if not config.overwrite:
            raise SoftLabelsError(
                f"output folder {str(out)!r} is not empty; pass --resume to continue that run or --overwrite to replace it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------------------------
# The recipe.


def train(config: TrainConfig) -> RunResult:
    """Train one model. Under ``torchrun`` this is distributed data-parallel: each rank reads only
    its shard of the store's chunks, takes batch_size / world rows per step, and gradients are
    averaged, so a step sees a global batch of ``batch_size`` as in a single process. Rank 0
    evaluates, checkpoints and writes the outputs."""
    config.validate()
    data = load_transfer(config.transfer, config.split)
    eval_data = load_transfer(config.transfer, config.eval_split) if config.eval_split else None
    store = open_joined_store(config.store, data) if config.store else None
    eval_store = (
        open_joined_store(config.eval_store, eval_data) if config.eval_store and eval_data else None
    )
    d = init_from_env()
    try:
        return _run(config, data, eval_data, store, eval_store, d)
    finally:
        for s in (store, eval_store):
            if s is not None:
                s.close()
        shutdown(d)


def _run(
    config: TrainConfig,
    data: TransferSet,
    eval_data: TransferSet | None,
    store: StoreReader | None,
    eval_store: StoreReader | None,
    d: Dist,
) -> RunResult:
    if store is None and not data.has_labels:
        raise SoftLabelsError(
            f"transfer set {data.name!r} has no labels; give --store to train on soft targets"
        )
    if config.batch_size % d.world:
        raise SoftLabelsError(
            f"--batch-size {config.batch_size} must divide evenly over {d.world} processes"
        )
    if store is not None and store.meta.num_chunks < d.world:
        raise SoftLabelsError(
            f"the store has {store.meta.num_chunks} chunk(s), fewer than the {d.world} processes; "
            f"regenerate it with a smaller --chunk-rows"
        )
    num_classes = (
        store.meta.num_classes if store else (data.num_classes or int(data.labels.max()) + 1)
    )
    out = d.collective(lambda: _prepare_out(config) if d.is_main else Path(config.out))
    if d.is_main:
        (out / "config.json").write_text(json.dumps(_comparable(config), indent=2))

    torch.manual_seed(config.seed)
    model, arch = build_student(config, data.input_shape, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    shard, rank_batch = Shard(d.rank, d.world), config.batch_size // d.world
    budget = int(config.memory_budget_mb * 2**20)
    source = make_target_source(store, len(data), rank_batch, config.seed, budget, shard)
    steps = steps_per_epoch(store, len(data), rank_batch, shard) if d.world > 1 else None
    labels_all = torch.from_numpy(data.label_array())
    teacher_eval = teacher_log_probs(eval_store) if eval_store is not None and d.is_main else None

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
    net = DistributedDataParallel(model) if d.world > 1 else model  # averages gradients

    for epoch in range(start_epoch, config.epochs):
        # ---- train one epoch
        train_loss, epoch_seconds = train_epoch(
            config, net, optimizer, source, data, labels_all, store, epoch, max_steps=steps
        )
        # ---- evaluate at T = 1 and checkpoint (rank 0)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "epoch_seconds": epoch_seconds,
        }
        if d.is_main:
            if eval_data is not None:
                record.update(
                    {f"eval_{k}": v for k, v in evaluate(model, eval_data, teacher_eval).items()}
                )
            history.append(record)
            payload = {"arch": arch or {}, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                       "rng": torch.get_rng_state(), "epoch": epoch + 1, "history": history, "config": _comparable(config)}  # fmt: skip
            save_checkpoint(out / "last.pt", payload)
            _write_metrics(out, history)
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
        _plot(out, history)
    d.barrier()
    return RunResult(config, history, str(config.save or model_path))


def train_epoch(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    source: TargetSource,
    data: TransferSet,
    labels: torch.Tensor,
    store: StoreReader | None,
    epoch: int,
    max_steps: int | None = None,
) -> tuple[float, float]:
    """One pass over ``source``'s batches (at most ``max_steps``). Returns (mean training loss,
    seconds)."""
    model.train()
    seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
    desc = f"epoch {epoch + 1}/{config.epochs}"
    bar = tqdm(total=len(data), unit="samples", desc=desc, disable=not config.progress, leave=False)
    for step, batch in enumerate(source.batches(epoch)):
        if max_steps is not None and step >= max_steps:
            break
        x = torch.from_numpy(data.gather(batch.positions))  # (B, *input_shape)
        y = labels[batch.positions]  # (B,)
        loss = batch_loss(config, store, model(x), y, batch)
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


def train_sweep(config: TrainConfig, temperatures: tuple[float, ...]) -> list[RunResult]:
    """One student per temperature from the same store, each in ``out/T<t>``."""
    if len(temperatures) == 1:
        return [train(replace(config, temperature=temperatures[0]))]
    return [
        train(replace(config, temperature=t, out=str(Path(config.out) / f"T{t:g}"), save=None))
        for t in temperatures
    ]


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    tmp.replace(out / "metrics.jsonl")


def _plot(out: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    if "eval_nll" in history[0]:
        ax1.plot(epochs, [h["eval_nll"] for h in history], label="eval NLL")
        ax2.plot(epochs, [h["eval_accuracy"] for h in history], label="eval accuracy")
        ax2.set_ylabel("accuracy")
        ax2.legend()
    ax1.set_xlabel("epoch")
    ax2.set_xlabel("epoch")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A fixed-width table of named metric dicts (accuracy, nll, ece, epoch_seconds)."""
    lines = [f"{'model':<28} {'accuracy':>9} {'NLL':>8} {'ECE':>7} {'epoch s':>8}"]
    for name, m in rows:
        secs = f"{m['epoch_seconds']:.3f}" if m.get("epoch_seconds") is not None else "-"
        lines.append(
            f"{name:<28} {m['accuracy']:>9.2%} {m['nll']:>8.4f} {m['ece']:>7.4f} {secs:>8}"
        )
    return "\n".join(lines)
