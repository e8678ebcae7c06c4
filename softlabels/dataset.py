"""``SoftTargetDataset``: a store joined with its transfer set, for users' own training loops.

    ds = SoftTargetDataset("teachers.zarr", my_dataset, temperature=4.0)
    loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=2)
    for x, y, target in loader:  # (B, C) teacher log-probabilities at T = 4, or SparseTargets
        loss = HintonKD(0.1, temperature=4.0)(student(x), target, y)

Items are joined through the store's ``sample_index``, never by row order. Each DataLoader
worker opens its own handle on the store; the dataset pickles as paths and arrays, without the
open file. Targets are computed a whole chunk at a time and the last ``cache_chunks`` chunks
are kept, so for stores larger than memory use ``ChunkSampler``, which visits chunks in
shuffled groups and reads each chunk once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from softlabels.join import check_transfer
from softlabels.lm.dataset import TokenTargetDataset
from softlabels.lm.text import TokenSequences
from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader, open_store
from softlabels.targets import ChunkTargets, opened
from softlabels.transfer import as_transfer
from softlabels.views.dataset import ViewTargetDataset


def _holds_views(store: StoreReader | str) -> bool:
    if isinstance(store, StoreReader):
        return store.meta.views is not None
    with open_store(store) as reader:
        return reader.meta.views is not None


class SoftTargetDataset(ChunkTargets, Dataset):
    """Item i is ``(x_i, y_i, target_i)`` for transfer-set position i: the float32 input, the
    int label (-1 where unknown) and the teacher's log soft targets at ``temperature``: shape
    (C,) for a dense store; for a sparse store ``SparseTargets`` of K ids, their log-probs and
    the tail's log-mass, which the default collate batches (and the losses take as they come).

    store: a path, an fsspec URL, or an open ``StoreReader`` (not closed by the dataset).
    transfer: the transfer set the store was made from: a map-style Dataset of ``(x, y)`` or
        ``x``, a ``TransferSet``, or a SPEC string (its split is the store's). For a token
        store, its ``TokenSequences``: the dataset is then a ``TokenTargetDataset``, whose item
        s is sequence s (see ``softlabels.lm.dataset``).
    """

    def __new__(cls, store: Any = None, transfer: Any = None, **options: Any) -> Any:
        """With ``TokenSequences`` for ``transfer`` (a token store), a ``TokenTargetDataset``;
        for a views store, a ``ViewTargetDataset`` (one stored view per sample per epoch)."""
        if cls is SoftTargetDataset and isinstance(transfer, TokenSequences):
            dataset = TokenTargetDataset.__new__(TokenTargetDataset)
            dataset.__init__(store, transfer, **options)
            return dataset
        if cls is SoftTargetDataset and store is not None and _holds_views(store):
            views = ViewTargetDataset.__new__(ViewTargetDataset)
            views.__init__(store, transfer, **options)
            return views
        return super().__new__(cls)

    def __init__(
        self, store: StoreReader | str, transfer: Any, *, temperature: float, cache_chunks: int = 64
    ) -> None:
        with opened(store, temperature) as reader:
            self.meta = reader.meta
            self.transfer = as_transfer(transfer, reader.meta.transfer.split)
            check_transfer(self.transfer, num_classes=reader.meta.num_classes, store=reader)
            self.sample_index = reader.sample_index()  # store row -> position
        self.path, self.temperature, self.cache_chunks = reader.path, temperature, cache_chunks
        self.row_of = np.argsort(self.sample_index, kind="stable")  # position -> store row
        self.labels = self.transfer.label_array()
        self._init_cache(reader)

    def __len__(self) -> int:
        return self.meta.num_samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor | SparseTargets]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is outside the dataset's {len(self)} samples")
        row = int(self.row_of[i])
        chunk = row // self.meta.chunk_rows
        targets, r = self._chunk_targets(chunk), row - chunk * self.meta.chunk_rows
        target = targets.take(r) if isinstance(targets, SparseTargets) else targets[r]
        x = torch.from_numpy(self.transfer.take(i, i + 1)[0])
        return x, int(self.labels[i]), target


class ChunkSampler(Sampler[int]):
    """Positions of a ``SoftTargetDataset`` grouped by store chunk: each epoch the chunks are
    shuffled, taken ``buffer_chunks`` at a time, and the positions within a group shuffled.
    With ``buffer_chunks`` no larger than the dataset's ``cache_chunks`` every chunk is read
    once per epoch. Call ``set_epoch`` for a new order each epoch (as DistributedSampler)."""

    def __init__(self, dataset: SoftTargetDataset, *, buffer_chunks: int = 8, seed: int = 0):
        if buffer_chunks < 1:
            raise ValueError(f"buffer_chunks must be at least 1, got {buffer_chunks}")
        self.dataset, self.buffer_chunks, self.seed, self.epoch = dataset, buffer_chunks, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        meta = self.dataset.meta
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(meta.num_chunks)
        for g in range(0, len(order), self.buffer_chunks):
            rows = np.concatenate(
                [np.arange(*meta.chunk_bounds(int(c))) for c in order[g : g + self.buffer_chunks]]
            )
            yield from self.dataset.sample_index[rng.permutation(rows)].tolist()
