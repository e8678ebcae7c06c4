"""Held-out evaluation at T = 1: accuracy, NLL, expected calibration error, and where a store
covers the split, top-1 agreement with the teacher and KL(teacher || student)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader
from softlabels.transfer import TransferSet
from trainer.losses import IGNORE_LABEL
from trainer.sparse_losses import sparse_kl, top1

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


def classification_metrics(
    log_probs: torch.Tensor, labels: torch.Tensor
) -> dict[str, float | None]:
    """accuracy, nll and ece of (N, C) log-probabilities against labels (rows with -1 skipped);
    None for each when no row has a label (accuracy does not apply)."""
    known = labels >= 0
    if not known.any():
        return {"accuracy": None, "nll": None, "ece": None}
    log_probs, labels = log_probs[known], labels[known]
    return {
        "accuracy": float((log_probs.argmax(1) == labels).float().mean()),
        "nll": float(F.nll_loss(log_probs, labels)),
        "ece": expected_calibration_error(log_probs.exp(), labels),
    }


@torch.no_grad()
def predict_log_probs(model: nn.Module, data: TransferSet, batch_size: int = 1024) -> torch.Tensor:
    """(N, C) log-probabilities at T = 1, on the CPU (the model runs on its own device)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    out = []
    for s in range(0, len(data), batch_size):
        x = torch.from_numpy(data.take(s, min(s + batch_size, len(data)))).to(device)
        out.append(F.log_softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out)


def evaluate(
    model: nn.Module, data: TransferSet, teacher: torch.Tensor | SparseTargets | None = None
) -> dict[str, float | None]:
    """Metrics of ``model`` on ``data``; ``teacher`` is the teacher's targets at T = 1 ((N, C)
    log-probabilities, or sparse targets)."""
    log_probs = predict_log_probs(model, data)
    metrics = classification_metrics(log_probs, torch.from_numpy(data.label_array()))
    if isinstance(teacher, SparseTargets):  # KL over the stored ids plus the tail bucket
        metrics["teacher_agreement"] = float((log_probs.argmax(1) == top1(teacher)).float().mean())
        metrics["kl_to_teacher"] = float(sparse_kl(log_probs, teacher))
    elif teacher is not None:
        metrics["teacher_agreement"] = float(
            (log_probs.argmax(1) == teacher.argmax(1)).float().mean()
        )
        metrics["kl_to_teacher"] = float(
            F.kl_div(log_probs, teacher, reduction="batchmean", log_target=True)
        )
    return metrics


def teacher_metrics(store: StoreReader, labels: torch.Tensor) -> dict[str, object]:
    """Each member's and the stored teacher's metrics at T = 1, from the store alone (rows by
    transfer position; ``labels`` in the same order)."""
    rows = store.load()  # every row, by transfer position; read once for every member
    return {
        "members": [
            _metrics(store.soft_targets(rows, 1.0, member=m), labels)
            for m in range(store.meta.num_members)
        ],
        "ensemble": _metrics(store.soft_targets(rows, 1.0), labels),
        "combine": store.meta.combine,
    }


def _metrics(
    targets: torch.Tensor | SparseTargets, labels: torch.Tensor
) -> dict[str, float | None]:
    """Dense targets: accuracy, NLL and ECE. Sparse targets: accuracy (top-1 of the stored ids)
    and NLL where every labelled row's label is stored (the tail is not split by class)."""
    if not isinstance(targets, SparseTargets):
        return classification_metrics(targets, labels)
    known = labels != IGNORE_LABEL
    if not known.any():
        return {"accuracy": None, "nll": None, "ece": None}
    hit = targets.ids[known] == labels[known][:, None]
    nll = None
    if hit.any(1).all():
        nll = float(-targets.log_probs[known][hit].mean())
    accuracy = float((top1(targets)[known] == labels[known]).float().mean())
    return {"accuracy": accuracy, "nll": nll, "ece": None}
