"""Padded heads: a student whose output head differs from the store's teachers' only above the
tokenizer's vocabulary size U (a head padded to a multiple of 64 or 128, as Qwen2.5 and Llama
releases ship) distils over the tokenizer's ids 0..U-1.

Both distributions are conditioned on "the next token is one of the tokenizer's ids", which
commutes with the temperature:

* dense targets: log p_T restricted to ids < U, renormalised (log p - logsumexp over ids < U);
* sparse targets: stored ids >= U lose their mass, and the rest (the kept ids and the tail
  bucket) is renormalised by the mass kept. The tail's share on padded ids is not stored, so
  it stays in the bucket: exact when the teacher puts no mass on ids it was never trained to
  emit (a trained padded head), and off by at most that mass otherwise;
* the student's logits: its first U (dense targets), or, for sparse targets, its first U with
  the padded ids the targets may name set to ``PAD_LOGIT`` (probability 0 in float32).

The next-token cross-entropy is unchanged (labels are tokenizer ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softlabels.errors import MismatchError
from softlabels.lm.dataset import token_spec
from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader

PAD_LOGIT = -1.0e4  # exp(PAD_LOGIT - anything real) is 0 in float32: no mass, no inf - inf

Target = torch.Tensor | SparseTargets


@dataclass(frozen=True)
class HeadFit:
    """KD over the tokenizer's ``vocab`` ids of a student head of ``student`` rows and a store
    of ``teacher`` classes, both at least ``vocab`` (see the module docstring)."""

    vocab: int
    teacher: int
    student: int

    def logits(self, z: torch.Tensor, *, sparse: bool) -> torch.Tensor:
        """(N, student) -> (N, vocab) for dense targets, (N, teacher) for sparse ones."""
        z = z[:, : self.vocab]
        if not sparse or self.teacher == self.vocab:
            return z
        pad = z.new_full((len(z), self.teacher - self.vocab), PAD_LOGIT)
        return torch.cat([z, pad], dim=1)

    def target(self, target: Target | None) -> Target | None:
        """The targets conditioned on ids < vocab, renormalised (dense: (N, vocab))."""
        if target is None or self.teacher == self.vocab:
            return target
        if not isinstance(target, SparseTargets):
            kept = target[:, : self.vocab]
            return kept - torch.logsumexp(kept, dim=1, keepdim=True)
        ids, log_p, log_tail = target
        before = torch.logsumexp(torch.cat([log_p, log_tail[:, None]], 1), dim=1)
        log_p = log_p.masked_fill(ids >= self.vocab, float("-inf"))
        after = torch.logsumexp(torch.cat([log_p, log_tail[:, None]], 1), dim=1)
        shift = (after - before)[:, None]  # log of the mass kept
        return SparseTargets(ids, log_p - shift, log_tail - shift[:, 0])


def check_vocabulary(student: nn.Module, store: StoreReader) -> HeadFit | None:
    """The student must read the store's longest sequence, and its head have the store's
    teachers' size, or differ from it only above the tokenizer's vocabulary (padded heads:
    then the ``HeadFit`` to apply, else None): one forward pass of that length, untrained."""
    spec = token_spec(store)
    length = spec.max_length
    device = next(student.parameters(), torch.empty(0)).device
    ids = torch.zeros((1, length), dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            probe = student(ids, attention_mask=torch.ones((1, length), device=device))
    except (IndexError, RuntimeError, ValueError) as exc:
        raise MismatchError(
            f"the student cannot read sequences of {length} tokens, the store's max_length "
            f"({type(exc).__name__}: {exc}); give it a context of at least {length}"
        ) from exc
    ours, theirs = int(probe.shape[-1]), store.meta.num_classes
    if ours == theirs:
        return None
    vocab = spec.tokenizer_vocab_size
    if vocab is not None and min(ours, theirs) >= vocab:
        return HeadFit(vocab=vocab, teacher=theirs, student=ours)
    known = (
        f"the tokenizer has {vocab} ids"
        if vocab is not None
        else "the store does not record the tokenizer's size (pre-tokenised input)"
    )
    raise MismatchError(
        f"the student predicts {ours} tokens and the store's teachers {theirs}, and {known}: "
        f"heads may differ only in padding above the tokenizer's vocabulary; give the student "
        f"the teachers' vocabulary size"
    )
