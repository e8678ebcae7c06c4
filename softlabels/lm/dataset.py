"""``TokenTargetDataset``: a token store joined with its sequences, for users' own LM loops.

    ds = SoftTargetDataset("lm.zarr", sequences, temperature=2.0)  # a TokenTargetDataset
    loader = DataLoader(ds, batch_size=8, sampler=SequenceSampler(ds), collate_fn=collate_tokens)
    for batch in loader:
        logits = batch.select(student(batch.ids, attention_mask=batch.mask))  # (rows, V)
        loss = HintonKD(0.5, temperature=2.0)(logits, batch.target, batch.labels)

Item s is sequence s: its token ids (L,), labels (L,) (the next token, -1 at the end), the
teacher's targets at T for its L rows (``SparseTargets`` of K ids, or (L, V) log-probs) and its
loss mask (L,) (False on prompt tokens, where the sequences carry a loss mask).
Targets are read lazily, a verified store chunk at a time (the last ``cache_chunks`` kept), and
a sequence crossing a chunk edge is joined from both chunks; so a store larger than memory
streams. ``SequenceSampler`` visits the chunks in shuffled groups, so each chunk is read once
per epoch. ``collate_tokens`` pads ids to the longest sequence and flattens labels and targets to the
positions that take a loss, row-major, which is the order ``TokenBatch.select`` takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from softlabels.errors import MismatchError, SoftLabelsError
from softlabels.lm.sources import check_loss_mask
from softlabels.lm.text import TokenSequences
from softlabels.schema import TokenSpec
from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader
from softlabels.targets import ChunkTargets, opened

Target = torch.Tensor | SparseTargets


def token_spec(reader: StoreReader) -> TokenSpec:
    """The store's ``tokens`` attribute; a classifier store is refused."""
    if reader.meta.tokens is None:
        raise SoftLabelsError(
            f"{reader.path!r} is not a token store (no 'tokens' attribute): make one with "
            f"generate-lm, or pass a transfer set (not token sequences) for a classifier store"
        )
    return reader.meta.tokens


def check_token_store(reader: StoreReader, seqs: TokenSequences) -> None:
    """``reader`` must be a token store made from exactly ``seqs`` (already windowed as the
    store's), its rows in token order; each difference is named."""
    meta, spec = reader.meta, token_spec(reader)
    if seqs.tokenizer is not None and spec.tokenizer not in (None, seqs.tokenizer):
        raise MismatchError(
            f"the sequences were tokenised by another tokenizer ({seqs.tokenizer}) than the "
            f"store's ({spec.tokenizer}): use the store's tokenizer"
        )
    made, given = spec.add_special_tokens, seqs.add_special_tokens
    if None not in (made, given) and made != given:
        raise MismatchError(
            f"{reader.path!r} was made from text encoded "
            f"{'with' if made else 'without'} the tokenizer's special tokens, and these sequences "
            f"{'with' if given else 'without'} them: encode them as the store's were"
        )
    if seqs.num_tokens != meta.num_samples:
        raise MismatchError(
            f"the sequences hold {seqs.num_tokens} tokens and {reader.path!r} {meta.num_samples} "
            f"rows: they are not the store's sequences (other text, or other windows)"
        )
    if seqs.fingerprint() != meta.transfer.fingerprint:
        raise MismatchError(
            f"the sequences are not the ones {reader.path!r} was made from (fingerprints differ: "
            f"a shifted or reordered text, another tokenizer, or other windows or packing)"
        )
    if not np.array_equal(reader.sample_index(), np.arange(meta.num_samples)):
        raise MismatchError(f"{reader.path!r}: token rows are not in token order")
    check_loss_mask(spec.loss_mask, seqs, reader.path)


def sequence_item(
    seqs: TokenSequences, labels: torch.Tensor, a: int, b: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows a..b-1: ids, labels and the loss mask (False on prompt tokens)."""
    ids = torch.from_numpy(seqs.ids[a:b].copy())
    keep = (
        torch.ones(b - a, dtype=torch.bool)
        if seqs.loss_mask is None
        else torch.from_numpy(seqs.loss_mask[a:b].copy())
    )
    return ids, labels[a:b], keep


class TokenTargetDataset(ChunkTargets, Dataset):
    """Sequence s of ``sequences`` (windowed as the store's) with its rows' targets at T.

    store: a path, an fsspec URL, or an open ``StoreReader`` (not closed by the dataset).
    estimator: for a sparse store, how sampled ids stand in for the tail ("bucket",
        "importance" or "ht"; None: importance at T <= the store's proposal temperature, bucket
        above it; ``softlabels.sparse.replay``).
    """

    def __init__(
        self,
        store: StoreReader | str,
        sequences: TokenSequences,
        *,
        temperature: float,
        cache_chunks: int = 16,
        estimator: str | None = None,
    ) -> None:
        with opened(store, temperature) as reader:
            spec = token_spec(reader)
            seqs = sequences.window(spec.max_length, spec.window)
            check_token_store(reader, seqs)
        self.meta, self.seqs = reader.meta, seqs
        self.path, self.temperature, self.cache_chunks = reader.path, temperature, cache_chunks
        self.estimator = estimator
        self.labels = torch.from_numpy(seqs.next_tokens())
        self.chunk_rows = reader.meta.chunk_rows
        self._init_cache(reader)

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, s: int) -> tuple[torch.Tensor, torch.Tensor, Target, torch.Tensor]:
        if not 0 <= s < len(self):
            raise IndexError(f"index {s} is outside the dataset's {len(self)} sequences")
        a, b = int(self.seqs.offsets[s]), int(self.seqs.offsets[s + 1])
        ids, labels, keep = sequence_item(self.seqs, self.labels, a, b)
        return ids, labels, self.rows(a, b), keep

    def rows(self, a: int, b: int) -> Target:
        """The targets of rows a..b-1, joined across chunk edges."""
        size = self.meta.chunk_rows
        parts = []
        for chunk in range(a // size, (b - 1) // size + 1):
            lo = chunk * size
            part = self._chunk_targets(chunk)
            piece = slice(max(a, lo) - lo, min(b, lo + size) - lo)
            parts.append(part.take(piece) if isinstance(part, SparseTargets) else part[piece])
        if len(parts) == 1:
            return parts[0]
        return SparseTargets.cat(parts) if isinstance(parts[0], SparseTargets) else torch.cat(parts)


class SequenceSampler(Sampler[int]):
    """Sequences of a ``TokenTargetDataset`` grouped by the chunk holding their first row: each
    epoch the chunks are shuffled, taken ``buffer_chunks`` at a time, and the sequences within a
    group shuffled. With ``buffer_chunks`` below the dataset's ``cache_chunks`` every chunk is
    read at most twice per epoch (a sequence's tail may sit in the next chunk). Call
    ``set_epoch`` for a new order each epoch."""

    def __init__(self, dataset: Any, *, buffer_chunks: int = 8, seed: int = 0):
        if buffer_chunks < 1:
            raise ValueError(f"buffer_chunks must be at least 1, got {buffer_chunks}")
        self.dataset, self.buffer_chunks, self.seed, self.epoch = dataset, buffer_chunks, seed, 0
        starts = dataset.seqs.offsets[:-1] // dataset.chunk_rows
        num_chunks = -(-dataset.seqs.num_tokens // dataset.chunk_rows)
        self.bounds = np.searchsorted(starts, np.arange(num_chunks + 1))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.bounds) - 1)
        for g in range(0, len(order), self.buffer_chunks):
            group = [
                np.arange(self.bounds[c], self.bounds[c + 1])
                for c in order[g : g + self.buffer_chunks]
            ]
            yield from rng.permutation(np.concatenate(group)).tolist()


class TokenBatch(NamedTuple):
    """A batch of sequences: ``ids`` (B, L) padded with 0, the attention ``mask`` (B, L), and
    ``loss`` (B, L), the positions that take a loss (real tokens, prompt tokens left out where
    the sequences carry a loss mask); ``labels`` (rows,) and ``target`` (rows, ...) are those
    positions', row-major, which is the order ``select(logits)`` takes."""

    ids: torch.Tensor
    mask: torch.Tensor
    loss: torch.Tensor
    labels: torch.Tensor
    target: Any

    def select(self, logits: Any) -> torch.Tensor:
        """The student's (B, L, V) logits at the loss positions: (rows, V). A transformers
        model's output (a ``ModelOutput`` with ``.logits``) is taken as it comes."""
        if not isinstance(logits, torch.Tensor):
            logits = getattr(logits, "logits", logits)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
            raise TypeError(
                "select takes the student's (batch, length, vocabulary) logits, or a transformers "
                f"output holding them as .logits; got {type(logits).__name__}"
            )
        return logits[self.loss]


def collate_tokens(batch: list[tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor]]) -> TokenBatch:
    """Items (ids, labels, target, loss mask) to one ``TokenBatch``."""
    longest = max(len(item[0]) for item in batch)
    ids = torch.zeros((len(batch), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    loss = torch.zeros((len(batch), longest), dtype=torch.bool)
    for i, (seq, _, _, keep) in enumerate(batch):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        loss[i, : len(seq)] = keep
    labels = torch.cat([y[keep] for _, y, _, keep in batch])
    targets = [_take(t, keep) for _, _, t, keep in batch]
    if targets[0] is None:
        target = None
    elif isinstance(targets[0], SparseTargets):
        target = SparseTargets.cat(targets)
    else:
        target = torch.cat(targets)
    return TokenBatch(ids, mask, loss, labels, target)


def _take(target: Any, keep: torch.Tensor) -> Any:
    if target is None or bool(keep.all()):
        return target
    return target.take(keep) if isinstance(target, SparseTargets) else target[keep]
