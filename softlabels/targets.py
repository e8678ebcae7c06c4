"""What the three datasets share: the store opened for a constructor, and targets at T a whole
chunk at a time through each process's own store handle. ``softlabels.dataset`` (classifier
stores), ``softlabels.lm.dataset`` (token stores) and ``softlabels.views.dataset`` (views
stores) build on it; it imports none of them."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from softlabels.errors import MismatchError
from softlabels.sparse import SparseTargets
from softlabels.store import StoreReader, open_store


@contextmanager
def opened(store: StoreReader | str, temperature: float) -> Iterator[StoreReader]:
    """For a dataset's constructor: ``temperature`` checked, then the reader of ``store`` (an
    open reader, or a path or URL opened here and closed again if the constructor fails)."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    reader = store if isinstance(store, StoreReader) else open_store(store)
    try:
        problem = reader.meta.sparse and reader.meta.sparse.replay_problem(temperature)
        if problem:
            raise MismatchError(f"{reader.path!r}: {problem}")
        yield reader
    except BaseException:
        if reader is not store:
            reader.close()
        raise


class ChunkTargets:
    """Targets at ``temperature`` a whole store chunk at a time, the last ``cache_chunks`` kept,
    through this process's own store handle (a forked DataLoader worker opens its own; the
    object pickles without the open file). Users set ``path``, ``temperature``,
    ``cache_chunks`` and call ``_init_cache(reader)``."""

    path: str
    temperature: float
    cache_chunks: int
    estimator: str | None = None  # for a sparse store (``softlabels.sparse.replay``)

    def _init_cache(self, reader: StoreReader | None) -> None:
        self._reader, self._pid = reader, os.getpid()
        self._cache: OrderedDict[int, torch.Tensor | SparseTargets] = OrderedDict()

    def _chunk_targets(self, chunk: int) -> torch.Tensor | SparseTargets:
        if chunk in self._cache:
            self._cache.move_to_end(chunk)
            return self._cache[chunk]
        rows = self._store().read_verified_chunk(chunk)
        targets = self._store().soft_targets(rows, self.temperature, estimator=self.estimator)
        self._cache[chunk] = targets
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return targets

    def _store(self) -> StoreReader:
        """This process's own handle (a forked worker must not share its parent's file)."""
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = open_store(self.path), os.getpid()
            self._cache.clear()
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"], state["_cache"] = None, OrderedDict()
        return state
