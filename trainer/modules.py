"""The losses as modules for training loops: ``loss(student_logits, target, labels=None)``.

``target`` is what ``StoreReader.soft_targets`` and ``SoftTargetDataset`` give: (B, C) teacher
log-probabilities at the module's ``target_temperature`` from a dense store, or
``SparseTargets`` from a sparse one (``trainer.sparse_losses``). Labels are (B,) int64, -1 for
none.
"""

from __future__ import annotations

import torch
from torch import nn

from softlabels.sparse import SparseTargets
from trainer.losses import (
    IGNORE_LABEL,
    check_temperature,
    check_weight,
    hard_cross_entropy,
    hinton_loss,
    logit_matching,
    soft_cross_entropy,
)
from trainer.sparse_losses import sparse_hinton_loss, sparse_soft_cross_entropy

Target = torch.Tensor | SparseTargets


class HintonKD(nn.Module):
    """alpha * CE(y, q_1) + beta * T^2 * KL(p_T || q_T), batchmean; beta defaults to 1 - alpha.

    target: (B, C) teacher log-probabilities at ``temperature``; labels: (B,) int64, -1 for
    none (needed when alpha > 0).
    """

    def __init__(self, alpha: float, beta: float | None = None, *, temperature: float) -> None:
        super().__init__()
        beta = 1.0 - alpha if beta is None else beta
        check_weight("alpha", alpha)
        check_weight("beta", beta)
        check_temperature(temperature)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.target_temperature = temperature  # the T its target must be taken at

    def forward(
        self,
        student_logits: torch.Tensor,
        target: Target,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.alpha > 0 and labels is None:
            raise ValueError(f"HintonKD with alpha={self.alpha} needs labels (use -1 for none)")
        if labels is None:
            labels = torch.full(student_logits.shape[:1], IGNORE_LABEL, dtype=torch.long)
        if isinstance(target, SparseTargets):
            return sparse_hinton_loss(
                student_logits, labels, target, self.temperature, self.alpha, self.beta
            )
        return hinton_loss(student_logits, labels, target, self.temperature, self.alpha, self.beta)


class SoftCE(nn.Module):
    """T^2 * H(p_T, q_T), batchmean: soft-label cross-entropy (same gradient as KL).

    target: (B, C) teacher log-probabilities at ``temperature``; labels are ignored.
    """

    def __init__(self, *, temperature: float) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = self.target_temperature = temperature

    def forward(
        self,
        student_logits: torch.Tensor,
        target: Target,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(target, SparseTargets):
            return sparse_soft_cross_entropy(student_logits, target, self.temperature)
        return soft_cross_entropy(student_logits, target, self.temperature)


class LogitMatching(nn.Module):
    """Caruana's logit matching on centred logits, batchmean.

    target: (B, C) teacher logits, or teacher log-probabilities at T = 1 (the same after
    centring); labels are ignored.
    """

    target_temperature = 1.0

    def forward(
        self,
        student_logits: torch.Tensor,
        target: Target,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(target, SparseTargets):
            raise ValueError(
                "logit matching needs the teacher's logit for every class, and a sparse store "
                "keeps K of them: train from a dense store, or use HintonKD at a high T"
            )
        return logit_matching(student_logits, target)


class HardCE(nn.Module):
    """CE(y, q_1) over labelled rows: the hard-label baseline (no target)."""

    target_temperature = None

    def forward(
        self,
        student_logits: torch.Tensor,
        target: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("HardCE needs labels")
        return hard_cross_entropy(student_logits, labels)
