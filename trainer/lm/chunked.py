"""A memory-lean KD loss for language models: the student's output head and the loss, a chunk of
rows at a time, never the full (rows, V) logits.

    loss = ChunkedHeadLoss(HintonKD(0.5, temperature=2.0), chunk_rows=1024)
    value = loss(hidden, head, target, labels)   # hidden: (rows, H) at the loss positions

The forward pass computes, chunk by chunk, the chunk's logits (chunk, V), its share of the loss
and the gradients of that share with respect to the hidden rows and the head's parameters (as
fused linear cross-entropy does), then frees the logits; backward only scales those gradients.
Peak memory is one chunk's logits and their gradient, plus a gradient the size of the head.

Shares. ``HintonKD`` is alpha * CE (a mean over the labelled rows) + beta * T^2 * KL (a mean over
all rows), so chunk c is weighted alpha * n_lab(c) / n_lab and beta * n(c) / n: the chunked
loss, and its gradients, equal the unchunked ones up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from softlabels.sparse import SparseTargets
from trainer.divergences import DivergenceKD
from trainer.lm.vocab import HeadFit
from trainer.losses import IGNORE_LABEL, hard_cross_entropy, hinton_loss
from trainer.modules import HardCE, HintonKD
from trainer.sparse_losses import sparse_hinton_loss

ChunkLoss = Callable[[torch.Tensor, int, int], torch.Tensor]


class ChunkedHeadLoss(nn.Module):
    """``loss_fn(head(hidden), target, labels)`` computed ``chunk_rows`` rows at a time.

    loss_fn: ``HintonKD`` or ``DivergenceKD`` (dense or sparse targets), or ``HardCE`` (no
    target).
    fit: for a student head padded differently from the teachers', the ``HeadFit`` applied to
    each chunk's logits (``target`` already fitted).
    forward(hidden (N, H), head (an ``nn.Linear`` H -> V), target (N, V) log-probabilities,
    ``SparseTargets`` or None, labels (N,) int64, -1 for none) -> the scalar loss.
    """

    def __init__(
        self,
        loss_fn: HintonKD | DivergenceKD | HardCE,
        *,
        chunk_rows: int = 1024,
        fit: HeadFit | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(loss_fn, HintonKD | DivergenceKD | HardCE):
            raise TypeError(
                f"ChunkedHeadLoss takes HintonKD, DivergenceKD or HardCE, not {type(loss_fn)}"
            )
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.loss_fn, self.chunk_rows, self.fit = loss_fn, chunk_rows, fit

    def forward(
        self,
        hidden: torch.Tensor,
        head: nn.Linear,
        target: torch.Tensor | SparseTargets | None,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        share = _shares(self.loss_fn, target, labels)
        if self.fit is not None and target is not None:  # padded heads: the tokenizer's ids
            fit, sparse, plain = self.fit, isinstance(target, SparseTargets), share

            def share(logits: torch.Tensor, a: int, b: int) -> torch.Tensor:
                return plain(fit.logits(logits, sparse=sparse), a, b)

        return _ChunkedHead.apply(hidden, head.weight, head.bias, share, self.chunk_rows)


def _shares(
    loss_fn: HintonKD | DivergenceKD | HardCE,
    target: torch.Tensor | SparseTargets | None,
    labels: torch.Tensor,
) -> ChunkLoss:
    """The loss of rows [a, b) from their logits, weighted as its share of the whole batch."""
    n = len(labels)
    labelled = int((labels != IGNORE_LABEL).sum())
    if isinstance(loss_fn, HardCE):

        def ce(logits: torch.Tensor, a: int, b: int) -> torch.Tensor:
            part = int((labels[a:b] != IGNORE_LABEL).sum())
            return hard_cross_entropy(logits, labels[a:b]) * (part / max(labelled, 1))

        return ce
    if target is None:
        raise ValueError(f"{type(loss_fn).__name__} needs a target")
    if isinstance(loss_fn, DivergenceKD):
        return _divergence_shares(loss_fn, target, labels)
    t, alpha, beta = loss_fn.temperature, loss_fn.alpha, loss_fn.beta

    def kd(logits: torch.Tensor, a: int, b: int) -> torch.Tensor:
        part = int((labels[a:b] != IGNORE_LABEL).sum())
        wa, wb = alpha * part / max(labelled, 1), beta * (b - a) / n
        if isinstance(target, SparseTargets):
            return sparse_hinton_loss(logits, labels[a:b], target.take(slice(a, b)), t, wa, wb)
        return hinton_loss(logits, labels[a:b], target[a:b], t, wa, wb)

    return kd


def _divergence_shares(
    loss_fn: DivergenceKD, target: torch.Tensor | SparseTargets, labels: torch.Tensor
) -> ChunkLoss:
    """``DivergenceKD``'s shares: alpha CE over the chunk's labelled rows (weighted by their
    part of the batch's), and (1 - alpha) T^2 D summed over the chunk's rows, over all rows."""
    n, labelled = len(labels), int((labels != IGNORE_LABEL).sum())

    def share(logits: torch.Tensor, a: int, b: int) -> torch.Tensor:
        part = int((labels[a:b] != IGNORE_LABEL).sum())
        rows = target.take(slice(a, b)) if isinstance(target, SparseTargets) else target[a:b]
        loss = loss_fn.rows(logits, rows).sum() * ((1 - loss_fn.alpha) / n)
        if loss_fn.alpha > 0 and part:
            ce = hard_cross_entropy(logits, labels[a:b])
            loss = loss + ce * (loss_fn.alpha * part / labelled)
        return loss

    return share


class _ChunkedHead(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        share: ChunkLoss,
        chunk_rows: int,
    ) -> torch.Tensor:
        grad_h = torch.zeros_like(hidden)
        grad_w = torch.zeros_like(weight)
        grad_b = None if bias is None else torch.zeros_like(bias)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight.detach().requires_grad_()
        b = None if bias is None else bias.detach().requires_grad_()
        params = [w] if b is None else [w, b]
        for a in range(0, len(hidden), chunk_rows):
            stop = min(a + chunk_rows, len(hidden))
            with torch.enable_grad():
                h = hidden[a:stop].detach().requires_grad_()
                loss = share(F.linear(h, w, b).float(), a, stop)  # (chunk, V) freed below
                grads = torch.autograd.grad(loss, [h, *params])
            grad_h[a:stop] = grads[0]
            grad_w += grads[1]
            if grad_b is not None:
                grad_b += grads[2]
            total += loss.detach()
        ctx.save_for_backward(grad_h, grad_w, *(() if grad_b is None else (grad_b,)))
        ctx.has_bias = grad_b is not None
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        grad_b = saved[2] * grad if ctx.has_bias else None
        return saved[0] * grad, saved[1] * grad, grad_b, None, None
