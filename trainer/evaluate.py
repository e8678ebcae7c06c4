"""Held-out evaluation at T = 1: accuracy, NLL, expected calibration error, and where a store
covers the split, top-1 agreement with the teacher and KL(teacher || student)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softlabels.ensemble import replay_log_probs
from softlabels.store import StoreReader
from softlabels.transfer import TransferSet
from trainer.data import InMemoryTargets

ECE_BINS = 15


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> float:
    """sum_b (|b| / n) * |accuracy(b) - confidence(b)| over equal-width confidence bins."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += float(
                in_bin.float().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
            )
    return ece


def classification_metrics(log_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, nll and ece of (N, C) log-probabilities against labels (rows with -1 skipped)."""
    known = labels >= 0
    log_probs, labels = log_probs[known], labels[known]
    return {
        "accuracy": float((log_probs.argmax(1) == labels).float().mean()),
        "nll": float(F.nll_loss(log_probs, labels)),
        "ece": expected_calibration_error(log_probs.exp(), labels),
    }


@torch.no_grad()
def predict_log_probs(model: nn.Module, data: TransferSet, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    out = [
        F.log_softmax(
            model(torch.from_numpy(data.take(s, min(s + batch_size, len(data))))).float(), dim=1
        )
        for s in range(0, len(data), batch_size)
    ]
    return torch.cat(out)


def teacher_log_probs(
    store: StoreReader, temperature: float = 1.0, targets: InMemoryTargets | None = None
) -> torch.Tensor:
    """(N, C) log soft targets of the stored teacher, in transfer-position order. Pass
    ``targets`` when the store is already loaded."""
    targets = targets or InMemoryTargets(store, batch_size=1, seed=0)
    members = None if targets.members is None else torch.from_numpy(targets.members)
    weights = torch.tensor(store.meta.weights, dtype=torch.float32)
    return replay_log_probs(
        torch.from_numpy(targets.logits), members, store.meta.combine, weights, temperature
    )


def evaluate(
    model: nn.Module, data: TransferSet, teacher: torch.Tensor | None = None
) -> dict[str, float]:
    """Metrics of ``model`` on ``data``; ``teacher`` is (N, C) teacher log-probs at T = 1."""
    log_probs = predict_log_probs(model, data)
    metrics = classification_metrics(log_probs, torch.from_numpy(data.label_array()))
    if teacher is not None:
        metrics["teacher_agreement"] = float(
            (log_probs.argmax(1) == teacher.argmax(1)).float().mean()
        )
        metrics["kl_to_teacher"] = float(
            F.kl_div(log_probs, teacher, reduction="batchmean", log_target=True)
        )
    return metrics


def member_metrics(targets: InMemoryTargets, labels: torch.Tensor) -> list[dict[str, float]]:
    """Each ensemble member's metrics from its stored logits; ``labels`` by transfer position."""
    members = targets.members if targets.members is not None else targets.logits[:, None, :]
    return [
        classification_metrics(F.log_softmax(torch.from_numpy(members[:, m]), dim=1), labels)
        for m in range(members.shape[1])
    ]
