"""Stage two for views stores: each epoch, every sample takes one of its stored views (or
several), whose input is rebuilt from the sample's input and the view's stored parameters.

    views = StoredViews(store, transfer)            the store's views joined with the transfer
    rows = views.rows(epoch)                        (N,) the row each sample takes this epoch
    x = views.inputs(rows[:8])                      their inputs, rebuilt from view_params
    ds = SoftTargetDataset("views.zarr", transfer, temperature=4.0)   # a ViewTargetDataset
    ds.set_epoch(epoch)                             before each epoch's DataLoader pass

Which view sample s takes in epoch e (draw k) depends on (seed, e, k, s) only, never on the
batch size, the DataLoader's workers or the world size; and a row's input depends on the
sample's input and the row's stored parameters only. So every (input, target) pair is
bit-identical whatever the batch layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from softlabels import schema
from softlabels.errors import SoftLabelsError
from softlabels.join import check_transfer
from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader
from softlabels.targets import ChunkTargets, opened
from softlabels.transfer import TransferSet, as_transfer
from softlabels.views.augment import Policy
from softlabels.views.transfer import load_views_policy, rebuild_views


def view_choice(seed: int, epoch: int, draw: int, num_samples: int, views: int) -> np.ndarray:
    """(N,) the view each sample takes in ``epoch`` (draw ``draw``): uniform over 0..V-1, from
    a generator seeded by (seed, epoch, draw) alone."""
    return np.random.default_rng([seed, epoch, draw]).integers(0, views, size=num_samples)


class StoredViews:
    """A views store's rows joined with its base transfer set.

    store: an open views store; transfer: the base transfer set it was made from (checked by
    fingerprint); policy: for a ``module:function`` policy, the object its SPEC builds (a
    built-in policy is rebuilt from the store's ``views`` attribute)."""

    def __init__(
        self,
        store: StoreReader,
        transfer: Any,
        *,
        policy: Policy | None = None,
        seed: int = 0,
        views_per_epoch: int = 1,
    ) -> None:
        spec = store.meta.views
        if spec is None:
            raise SoftLabelsError(f"{store.path!r} holds no views (no 'views' attribute)")
        if views_per_epoch < 1:
            raise SoftLabelsError(f"views per epoch must be at least 1, got {views_per_epoch}")
        self.base: TransferSet = as_transfer(transfer, store.meta.transfer.split)
        check_transfer(self.base, num_classes=store.meta.num_classes, store=store)
        self.policy = load_views_policy(store.meta, policy)
        self.views, self.seed, self.per_epoch = spec.views_per_sample, seed, views_per_epoch
        self.params = _whole_params(store)
        self.base_labels = self.base.label_array()

    @property
    def num_samples(self) -> int:
        return len(self.base)

    def rows(self, epoch: int) -> np.ndarray:
        """(N * views_per_epoch,) store rows: draw k of sample s at index k * N + s."""
        n = self.num_samples
        return np.concatenate(
            [
                np.arange(n) * self.views + view_choice(self.seed, epoch, k, n, self.views)
                for k in range(self.per_epoch)
            ]
        )

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """(R, *input_shape) float32: the rows' views rebuilt from their stored parameters."""
        rows = np.asarray(rows, dtype=np.int64)
        return rebuild_views(self.base, self.policy, rows // self.views, self.params[rows])

    def labels(self, rows: np.ndarray) -> np.ndarray:
        return self.base_labels[np.asarray(rows) // self.views]


def _whole_params(store: StoreReader) -> np.ndarray:
    """(R, P) float32 view_params of every row, from verified chunks."""
    parts = [
        store.read_verified_chunk(c).arrays[schema.VIEW_PARAMS]
        for c in range(store.meta.num_chunks)
    ]
    return np.concatenate(parts)


class ViewTargetDataset(ChunkTargets, Dataset):
    """Item i of epoch e is ``(x, y, target)`` for draw i // N of sample i % N: its view's
    input rebuilt from the stored parameters, the sample's label and the view's soft targets at
    ``temperature``. Call ``set_epoch`` before each epoch (as with DistributedSampler); items
    depend on (seed, epoch, i) alone, so any batch size, worker count or sampler gives the same
    pairs.

    store: a path, an fsspec URL, or an open ``StoreReader`` (not closed by the dataset).
    """

    def __init__(
        self,
        store: StoreReader | str,
        transfer: Any,
        *,
        temperature: float,
        seed: int = 0,
        views_per_epoch: int = 1,
        policy: Policy | None = None,
        cache_chunks: int = 64,
        estimator: str | None = None,
    ) -> None:
        with opened(store, temperature) as reader:
            self.views = StoredViews(
                reader, transfer, policy=policy, seed=seed, views_per_epoch=views_per_epoch
            )
        self.meta, self.path = reader.meta, reader.path
        self.temperature, self.cache_chunks, self.estimator = temperature, cache_chunks, estimator
        self.epoch, self._rows = 0, self.views.rows(0)
        self._init_cache(reader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._rows = epoch, self.views.rows(epoch)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor | SparseTargets]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is outside the dataset's {len(self)} items")
        row = int(self._rows[i])
        chunk = row // self.meta.chunk_rows
        targets, r = self._chunk_targets(chunk), row - chunk * self.meta.chunk_rows
        target = targets.take(r) if isinstance(targets, SparseTargets) else targets[r]
        x = torch.from_numpy(self.views.inputs(np.array([row]))[0])
        return x, int(self.views.labels(np.array([row]))[0]), target


__all__ = ["StoredViews", "ViewTargetDataset", "view_choice"]
