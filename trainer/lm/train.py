"""Stage two for language models: train a causal-LM student from a token store.

Data path: ``TokenTargetDataset`` (a token store joined with its sequences; targets at T read a
verified chunk at a time, so a store larger than memory streams) -> ``SequenceSampler`` (chunks
shuffled in groups, sequences shuffled within a group) -> ``collate_tokens`` (padded ids, the
attention mask, and labels and targets flattened to the real positions) -> the student's logits
(B, L, V) at the real positions -> ``HintonKD`` (the sparse or dense KD term at T plus the
next-token cross-entropy on the store's labels: row t predicts the token at t + 1), or with
``LMConfig.loss`` "reverse-kl" or "jsd", ``DivergenceKD`` (``trainer.divergences``). Padding never
enters a loss; with a loss mask (prompt tokens, ``TokenSequences.loss_mask``) the masked rows are
dropped from both terms. The student and each batch (ids, mask, labels and targets, dense or
``SparseTargets``; pinned and non-blocking on CUDA) go to ``LMConfig.device``; the forward pass
runs under autocast at ``LMConfig.precision`` and the loss is computed in float32.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from softlabels import faults
from softlabels.checkpoint import load_checkpoint, save_checkpoint
from softlabels.device import autocast, resolve_device
from softlabels.errors import MismatchError, SoftLabelsError
from softlabels.lm.dataset import (
    SequenceSampler,
    TokenBatch,
    TokenTargetDataset,
    check_token_store,
    collate_tokens,
    sequence_item,
    token_spec,
)
from softlabels.lm.models import CausalLM, check_context
from softlabels.lm.text import TokenSequences
from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader
from trainer.lm.chunked import ChunkedHeadLoss
from trainer.lm.objective import check_estimator, check_loss, estimator_for, kd_loss
from trainer.lm.schedule import check_schedule, groups, lr_scheduler, share
from trainer.lm.students import gpt_student
from trainer.lm.vocab import HeadFit, check_vocabulary
from trainer.modules import HintonKD
from trainer.sparse_losses import top1


@dataclass(frozen=True)
class LMConfig:
    temperature: float = 1.0
    alpha: float = 0.5  # weight of the next-token CE term; 1 - alpha on the KD term
    epochs: int = 1
    batch_size: int = 8  # sequences
    lr: float = 3e-3
    seed: int = 0
    kd: bool = True  # False: next-token cross-entropy only (the baseline)
    buffer_chunks: int = 8  # store chunks shuffled together (memory: their targets)
    cache_bytes: int = 1 << 31  # targets of every chunk kept across epochs when they fit
    chunk_rows: int = 4096  # without a store: the grouping of sequences, as a store's chunks
    estimator: str | None = None  # sparse stores: None (importance at T <= T_q, else bucket)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps; an absent device is an error
    precision: str = "fp32"  # the student's forward pass: fp32 or bf16 (autocast)
    # rows per chunk of the memory-lean loss (the head and the loss a chunk at a time, never the
    # full (rows, V) logits; transformers students with a plain linear head); 0: full logits
    loss_chunk_rows: int = 1024
    # the learning rate per optimizer step (trainer.lm.schedule): a linear warmup over
    # warmup_steps, then constant or cosine (down to min_lr_ratio * lr at the last step)
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    accumulation: int = 1  # batches per optimizer step (their rows weighted as one batch)
    # the KD term: "forward-kl" (HintonKD), "reverse-kl" or "jsd" (trainer.divergences);
    # jsd_beta is JSD's weight on the teacher (TRL's beta: 0 forward KL, 1 reverse KL)
    loss: str = "forward-kl"
    jsd_beta: float = 0.5


STUDENT_PRECISIONS = ("fp32", "bf16")
# what a checkpoint saved before schedules existed ran with
SCHEDULE_DEFAULTS = {"schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0}
SCHEDULE_DEFAULTS |= {"accumulation": 1}


def _comparable(config: LMConfig) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint (a run may resume on another device)."""
    return {k: v for k, v in asdict(config).items() if k != "device"}


def _model_device(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def _to_device(batch: TokenBatch, device: torch.device) -> TokenBatch:
    """``batch`` on ``device``: pinned and non-blocking on CUDA, unchanged on the CPU."""
    cuda = device.type == "cuda"

    def move(t: Any) -> Any:  # a tensor or SparseTargets (both have pin_memory and to)
        if t is None:
            return None
        return (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)

    return TokenBatch(*(move(t) for t in batch))


class _Sequences(Dataset):
    """Sequences without targets (cross-entropy alone), shaped as ``TokenTargetDataset``."""

    def __init__(self, seqs: TokenSequences, chunk_rows: int) -> None:
        self.seqs, self.labels = seqs, torch.from_numpy(seqs.next_tokens())
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, s: int) -> tuple[torch.Tensor, torch.Tensor, None, torch.Tensor]:
        a, b = int(self.seqs.offsets[s]), int(self.seqs.offsets[s + 1])
        ids, labels, keep = sequence_item(self.seqs, self.labels, a, b)
        return ids, labels, None, keep


def _cache_chunks(store: StoreReader, config: LMConfig) -> int:
    """Every chunk when all targets fit in ``config.cache_bytes`` (each chunk is then read and
    replayed once per run, not once per epoch); else enough for one shuffle group and its
    sequences' tails in the next chunk."""
    meta = store.meta
    per_row = 8 + (meta.sparse.k * 12 if meta.sparse is not None else meta.num_classes * 4)
    if meta.num_samples * per_row <= config.cache_bytes:
        return meta.num_chunks
    return 2 * config.buffer_chunks  # a group, and the chunks its sequences run into


def train_lm(
    student: nn.Module,
    store: StoreReader | None,
    seqs: TokenSequences,
    config: LMConfig,
    *,
    eval_seqs: TokenSequences | None = None,
    eval_store: StoreReader | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Train ``student`` on ``seqs`` from ``store``; per epoch, the mean training loss, its
    seconds and, with ``eval_seqs``, their perplexity and next-token accuracy (and, with
    ``eval_store``, a token store of ``eval_seqs``, agreement and KL with the teacher).
    ``store=None`` trains on next-token cross-entropy alone (a baseline). The sequences, and
    ``eval_seqs``, are cut as the store's were (its ``max_length`` and window mode); without a
    store, give them cut to the student's context. Every store is checked before the first
    step. The student is moved to ``config.device`` (and stays there), each batch with it; the
    forward pass runs under autocast at ``config.precision`` (fp32 or bf16), the loss in
    float32."""
    if config.precision not in STUDENT_PRECISIONS:
        raise SoftLabelsError(
            f"student precision must be one of {STUDENT_PRECISIONS}, got {config.precision!r}"
        )
    check_schedule(
        schedule=config.schedule,
        warmup_steps=config.warmup_steps,
        accumulation=config.accumulation,
        min_lr_ratio=config.min_lr_ratio,
    )
    device = resolve_device(config.device)
    student.to(device)
    if store is not None:
        spec = token_spec(store)
        seqs = seqs.window(spec.max_length, spec.window)
        if eval_seqs is not None:
            eval_seqs = eval_seqs.window(spec.max_length, spec.window)
        check_token_store(store, seqs)
        fit = check_vocabulary(student, store)
        check_estimator(store, config.estimator)
        check_loss(store, config)
    elif config.kd:
        raise SoftLabelsError("knowledge distillation needs a token store")
    else:
        fit = None
    if eval_store is not None:
        if eval_seqs is None:
            raise SoftLabelsError("an eval store needs the sequences it was made from")
        spec = token_spec(eval_store)
        eval_seqs = eval_seqs.window(spec.max_length, spec.window)
        check_token_store(eval_store, eval_seqs)
        check_vocabulary(student, eval_store)
    for what in (seqs, eval_seqs):
        if what is not None:
            check_context({"student": student}, int(what.lengths().max()), role="student")
    data: TokenTargetDataset | _Sequences = (
        TokenTargetDataset(
            store,
            seqs,
            temperature=config.temperature,
            estimator=estimator_for(store, config),
            cache_chunks=_cache_chunks(store, config),
        )
        if store is not None and config.kd
        else _Sequences(seqs, store.meta.chunk_rows if store is not None else config.chunk_rows)
    )
    sampler = SequenceSampler(data, buffer_chunks=config.buffer_chunks, seed=config.seed)
    loader = DataLoader(data, config.batch_size, sampler=sampler, collate_fn=collate_tokens)
    torch.manual_seed(config.seed)
    loss_fn = kd_loss(config)
    chunked = (
        ChunkedHeadLoss(loss_fn, chunk_rows=config.loss_chunk_rows, fit=fit)
        if config.loss_chunk_rows > 0 and isinstance(student, CausalLM) and student.head_is_linear()
        else None
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr)
    steps = -(-len(loader) // config.accumulation)  # optimizer steps per epoch (at most)
    scheduler = lr_scheduler(
        optimizer,
        total=steps * config.epochs,
        warmup_steps=config.warmup_steps,
        schedule=config.schedule,
        min_lr_ratio=config.min_lr_ratio,
    )
    history: list[dict[str, Any]] = []
    identity = {
        "config": _comparable(config),
        "store": None if store is None else list(store.meta.checksums or ()),
    }
    if checkpoint is not None and os.path.exists(checkpoint):
        history = _restore(checkpoint, identity, student, optimizer, scheduler)
    for epoch in range(len(history), config.epochs):
        student.train()
        sampler.set_epoch(epoch)
        t0, losses = time.perf_counter(), []
        # one optimizer step per group of config.accumulation batches (trainer.lm.schedule)
        for group in groups(loader, config.accumulation):
            # a batch whose every row predicts a prompt token takes no loss
            group = [batch for batch in group if len(batch.labels)]
            if not group:
                continue
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for batch in group:
                part_fn, factor = share(loss_fn, batch, group)
                batch = _to_device(batch, device)
                target = batch.target if fit is None else fit.target(batch.target)
                if chunked is not None:  # the head and the loss a chunk of rows at a time
                    with autocast(device, config.precision):
                        hidden = student.hidden_states(batch.ids, attention_mask=batch.mask)
                    rows = batch.select(hidden)  # (rows, H)
                    part = ChunkedHeadLoss(part_fn, chunk_rows=config.loss_chunk_rows, fit=fit)
                    loss = part(rows, student.head, target, batch.labels) * factor
                else:
                    with autocast(device, config.precision):
                        out = student(batch.ids, attention_mask=batch.mask)
                    logits = _fitted(batch.select(out).float(), fit, target)  # (rows, V)
                    loss = part_fn(logits, target, batch.labels) * factor
                loss.backward()
                step_loss += float(loss.detach())
            optimizer.step()
            scheduler.step()
            losses.append(step_loss)
        if not losses:
            raise SoftLabelsError(
                "no row takes a loss: every row predicts a prompt token (prompts longer than "
                "the windows?); use longer windows or shorter prompts"
            )
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        record["lr"] = float(scheduler.get_last_lr()[0])  # for the next step
        record["epoch_seconds"] = time.perf_counter() - t0
        if eval_seqs is not None:
            record.update(
                evaluate_lm(
                    student,
                    eval_seqs,
                    teacher=eval_store,
                    device=device,
                    precision=config.precision,
                )
            )
        history.append(record)
        if checkpoint is not None:
            payload = {"arch": {}, "model": student.state_dict(), "history": history}
            payload |= {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
            payload["scheduler"] = scheduler.state_dict()
            save_checkpoint(checkpoint, payload | identity)
            faults.point("epoch_end")
    return history


def _fitted(logits: torch.Tensor, fit: HeadFit | None, target: Any) -> torch.Tensor:
    """The student's logits over the ids its targets cover (padded heads: ``HeadFit``)."""
    if fit is None or target is None:
        return logits
    return fit.logits(logits, sparse=isinstance(target, SparseTargets))


def _restore(
    path: str | os.PathLike[str],
    identity: dict[str, Any],
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> list[dict[str, Any]]:
    """Load a ``train_lm`` checkpoint into ``student``, ``optimizer`` and ``scheduler``; its
    history."""
    state = load_checkpoint(path)
    for key, what in (("config", "training options"), ("store", "store")):
        saved = state.get(key)
        if key == "config" and isinstance(saved, dict):  # saved before these options existed
            defaults = {"precision": "fp32", "loss": "forward-kl", "jsd_beta": 0.5}
            saved = defaults | SCHEDULE_DEFAULTS | saved
        if saved != identity[key]:
            raise MismatchError(
                f"cannot resume from {str(path)!r}: that run used other {what}; start again "
                f"with the same ones, or replace the run (overwrite=True)"
            )
    student.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "scheduler" in state:  # saved before schedules existed: constant, nothing to restore
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return list(state["history"])


def _kl_estimator(store: StoreReader) -> str | None:
    return "bucket" if store.meta.sparse is not None else None


@torch.no_grad()
def evaluate_lm(
    student: nn.Module,
    seqs: TokenSequences,
    *,
    teacher: StoreReader | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Perplexity and next-token accuracy over every position that has a next token; with
    ``teacher``, a token store of ``seqs``: agreement (the student's top token is the teacher's)
    and KL(teacher || student) at T = 1, over the same positions (for a sparse store, KL over
    the stored ids plus the rest merged into one bucket: exact ids, no sampling noise, and a
    lower bound of the full KL). ``device``: where the student runs (moved there; None: where
    its parameters are); ``precision``: its forward pass (autocast), the metrics in float32."""
    if device is None:
        where = _model_device(student)
    else:
        where = resolve_device(device) if isinstance(device, str) else device
        student.to(where)
    student.eval()
    fit = None
    if teacher is not None:
        spec = token_spec(teacher)
        seqs = seqs.window(spec.max_length, spec.window)
        fit = check_vocabulary(student, teacher)
    check_context({"student": student}, int(seqs.lengths().max()), role="student")
    data: TokenTargetDataset | _Sequences = (
        _Sequences(seqs, 4096)
        if teacher is None
        else TokenTargetDataset(teacher, seqs, temperature=1.0, estimator=_kl_estimator(teacher))
    )
    kl_fn = HintonKD(0.0, temperature=1.0)
    nll, correct, agree, kl, count = 0.0, 0, 0, 0.0, 0
    for batch in DataLoader(data, batch_size, collate_fn=collate_tokens):
        if len(batch.labels) == 0:
            continue
        batch = _to_device(batch, where)
        with autocast(where, precision):
            out = student(batch.ids, attention_mask=batch.mask)
        logits = batch.select(out).float()
        known, target = batch.labels >= 0, batch.target
        logits, y = logits[known], batch.labels[known]
        if len(y) == 0:
            continue
        log_p = torch.log_softmax(logits, -1)
        nll += float(-log_p.gather(1, y[:, None]).sum())
        correct += int((log_p.argmax(1) == y).sum())
        if target is not None:
            target = target.take(known) if isinstance(target, SparseTargets) else target[known]
            target = target if fit is None else fit.target(target)
            best = top1(target) if isinstance(target, SparseTargets) else target.argmax(1)
            agree += int((log_p.argmax(1) == best).sum())
            kl += float(kl_fn(_fitted(logits, fit, target), target)) * len(y)
        count += len(y)
    if count == 0:
        raise SoftLabelsError("no position with a next token to evaluate on")
    out = {"eval_ppl": math.exp(nll / count), "eval_accuracy": correct / count}
    if teacher is not None:
        out |= {"teacher_agreement": agree / count, "teacher_kl": kl / count}
    return out


__all__ = ["LMConfig", "evaluate_lm", "gpt_student", "train_lm"]
