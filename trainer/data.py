"""Batch sources that feed the trainer: transfer positions and the teacher's soft targets at T.

A source yields ``(positions, targets)``: (B,) int64 transfer-set positions and the soft
targets at the run's temperature ((B, C) float32 log-probabilities, or ``SparseTargets`` of K
ids per row from a sparse store), or None when training on hard labels. The trainer
fetches inputs and labels by the same positions, so an input can never be paired with another
sample's target. Every target comes from ``StoreReader.soft_targets``, the seam to stage one.

* ``InMemoryTargets`` loads the store once (``StoreReader.load`` verifies every chunk and keeps
  it, so a sweep over temperatures reads it once) and computes the targets at T once per run:
  an epoch then costs what in-memory logits cost.
* ``StreamingTargets`` never holds more than a few chunks: each epoch it shuffles the chunk
  order, reads ``buffer_chunks`` chunks at a time on a background thread that also computes
  their targets (prefetching the next buffer while the current one is consumed), and shuffles
  rows within the buffer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from softlabels.distributed import Dist
from softlabels.errors import SoftLabelsError
from softlabels.join import check_transfer
from softlabels.sparse import SparseTargets
from softlabels.store import Rows, StoreReader, open_store
from softlabels.transfer import TransferSet
from softlabels.views.dataset import StoredViews

Targets = torch.Tensor | SparseTargets  # (B, C) log p_T from a dense store, or sparse targets
Batch = tuple[np.ndarray, Targets | None]
SINGLE = Dist()  # one process: every chunk and position


def join(store: StoreReader | str, transfer: TransferSet) -> StoreReader:
    """Open ``store`` (a path, URL or open reader) for training on ``transfer``, refusing every
    mismatch with a message that says what differs: completeness, split, N, fingerprint, class
    count, labels. A reader passed in is returned (checked), not reopened."""
    reader = open_store(store) if isinstance(store, str) else store
    try:
        if reader.meta.tokens is not None:
            raise SoftLabelsError(
                f"{reader.path!r} is a token store (its rows are token positions of a language "
                f"model's sequences): train language-model students from it with "
                f"trainer.train_lm (distill train-lm)"
            )
        check_transfer(transfer, num_classes=reader.meta.num_classes, store=reader)
    except Exception:
        if reader is not store:
            reader.close()
        raise
    return reader


def store_nbytes_in_memory(store: StoreReader) -> int:
    """Bytes of the loaded rows and their targets: float32 logits (+ member_logits) and targets
    for a dense store; for a sparse one, K entries per row (ids, values, targets) plus tails."""
    m = store.meta
    if m.sparse is not None:
        per_entry = 8 + 4 + 8 * m.num_members + 8  # ids, target, values as stored and decoded
        tails = 8 * (m.num_members + 1) * len(m.sparse.tail_temperatures)
        return m.num_samples * (m.sparse.k * per_entry + tails + 32)
    return m.num_samples * m.num_classes * 4 * (2 + (m.num_members if m.num_members > 1 else 0))


def take(targets: Targets, idx: torch.Tensor | slice) -> Targets:
    """The rows ``idx`` of dense or sparse targets."""
    return targets.take(idx) if isinstance(targets, SparseTargets) else targets[idx]


def cat(parts: list[Targets]) -> Targets:
    if isinstance(parts[0], SparseTargets):
        return SparseTargets.cat(parts)  # type: ignore[arg-type]
    return torch.cat(parts)  # type: ignore[arg-type]


def _batches(positions: np.ndarray, targets: Targets | None, b: int) -> Iterator[Batch]:
    for s in range(0, len(positions), b):
        yield positions[s : s + b], None if targets is None else take(targets, slice(s, s + b))


def shard_positions(store: StoreReader, shard: Dist) -> np.ndarray:
    """Transfer positions of the rows in this rank's chunks, in store order."""
    chunks = shard.take(np.arange(store.meta.num_chunks))
    rows = np.concatenate([np.arange(*store.meta.chunk_bounds(int(c))) for c in chunks])
    return store.sample_index()[rows]


class HardLabelSource:
    """No store: shuffled positions only (teachers and hard-label baselines)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, shard: Dist = SINGLE) -> None:
        self.positions = shard.take(np.arange(num_samples))
        self.batch_size, self.seed = batch_size, seed

    def batches(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        order = self.positions[rng.permutation(len(self.positions))]
        return _batches(order, None, self.batch_size)


class InMemoryTargets:
    """This rank's targets at ``temperature``, computed once; shuffled positions each epoch."""

    def __init__(
        self,
        store: StoreReader,
        temperature: float,
        batch_size: int,
        seed: int,
        shard: Dist = SINGLE,
        estimator: str | None = None,
    ) -> None:
        self.batch_size, self.seed = batch_size, seed
        store.load()  # verified once, kept by the reader
        self.positions = np.sort(shard_positions(store, shard))
        self.targets = store.soft_targets(self.positions, temperature, estimator=estimator)

    def batches(self, epoch: int) -> Iterator[Batch]:
        order = torch.from_numpy(
            np.random.default_rng([self.seed, epoch]).permutation(len(self.positions))
        )
        return _batches(self.positions[order.numpy()], take(self.targets, order), self.batch_size)


class StreamingTargets:
    """Chunk-aware streaming: shuffled chunk order, shuffle within a buffer, background prefetch.

    Peak memory is about 3 * buffer_chunks chunks: the buffer in use, the one queued, and the
    one being read.
    """

    def __init__(
        self,
        store: StoreReader,
        temperature: float,
        batch_size: int,
        seed: int,
        buffer_chunks: int,
        shard: Dist = SINGLE,
        estimator: str | None = None,
    ) -> None:
        self.store, self.temperature, self.estimator = store, temperature, estimator
        self.batch_size, self.seed, self.shard = batch_size, seed, shard
        self.buffer_chunks = max(1, buffer_chunks)

    def batches(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        order = self.shard.take(rng.permutation(self.store.meta.num_chunks))
        groups = [
            order[i : i + self.buffer_chunks] for i in range(0, len(order), self.buffer_chunks)
        ]
        buffers = (
            (rows.sample_index, targets)
            for rows, targets in _prefetch(self.store, groups, self.temperature, self.estimator)
        )
        return shuffled_batches(buffers, rng, self.batch_size)


def shuffled_batches(
    buffers: Iterator[tuple[np.ndarray, Targets]], rng: np.random.Generator, b: int
) -> Iterator[Batch]:
    """Batches of ``b`` from each buffer of (ids, targets) in a random order, the leftover of a
    buffer topped up from the next one, so every batch but the last is full."""
    carry: list[Batch] = []  # fewer than b rows left over from the last buffer
    for ids, targets in buffers:
        perm = torch.from_numpy(rng.permutation(len(ids)))
        start = 0
        if carry:  # top the leftover up to a full batch from this buffer
            start = min(b - len(carry[0][0]), len(perm))
            head = perm[:start]
            carry = [_join(carry[0], (ids[head.numpy()], take(targets, head)))]
            if len(carry[0][0]) == b:
                yield carry.pop()
        stop = start + (len(perm) - start) // b * b
        for s in range(start, stop, b):  # index per batch: no shuffled copy of the buffer
            idx = perm[s : s + b]
            yield ids[idx.numpy()], take(targets, idx)
        if stop < len(perm):
            tail = perm[stop:]
            rest = (ids[tail.numpy()], take(targets, tail))
            carry = [_join(carry[0], rest) if carry else rest]
    yield from carry


def _join(a: Batch, b: Batch) -> Batch:
    assert a[1] is not None and b[1] is not None
    return np.concatenate([a[0], b[0]]), cat([a[1], b[1]])


def _prefetch(
    store: StoreReader, groups: list[np.ndarray], temperature: float, estimator: str | None
) -> Iterator[tuple[Rows, Targets]]:
    """Read and verify each group of chunks on a thread, one group ahead; compute its targets
    here, once per buffer (torch ops on two threads at once contend for one OpenMP pool: the
    reading thread stays numpy- and codec-only)."""
    q: queue.Queue[Rows | BaseException | None] = queue.Queue(1)

    def work() -> None:
        try:
            for group in groups:
                q.put(Rows.concat([store.read_verified_chunk(int(c)) for c in group]))
            q.put(None)
        except BaseException as exc:
            q.put(exc)

    thread = threading.Thread(target=work, name="store-prefetch", daemon=True)
    thread.start()
    while (item := q.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item, store.soft_targets(item, temperature, estimator=estimator)
    thread.join()


class ViewRows:
    """A views store's rows as the trainer's data: ``gather(rows)`` rebuilds the rows' views
    from their stored parameters; ``label_array()`` is per row (the sample's label)."""

    def __init__(self, views: StoredViews) -> None:
        self.views = views
        self.name = views.base.name

    def __len__(self) -> int:
        return views_per_epoch_rows(self.views)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self.views.inputs(rows)

    def label_array(self) -> np.ndarray:
        return np.repeat(self.views.base_labels, self.views.views)


def drawn_rows(views: StoredViews, samples: np.ndarray, epoch: int) -> np.ndarray:
    """The store rows ``samples`` take in ``epoch``: each sample's ``views.per_epoch`` draws."""
    drawn = views.rows(epoch).reshape(views.per_epoch, views.num_samples)
    return drawn[:, samples].ravel()


def views_per_epoch_rows(views: StoredViews, shard: Dist = SINGLE) -> int:
    """Rows this rank trains on per epoch: views_per_epoch of each of its samples."""
    return len(shard.take(np.arange(views.num_samples))) * views.per_epoch


class ViewTargets:
    """This rank's samples, each taking ``views.per_epoch`` stored views per epoch (drawn by
    ``StoredViews.rows``, which no batch layout changes), with every row's targets at
    ``temperature`` computed once; rows shuffled each epoch."""

    def __init__(
        self,
        store: StoreReader,
        views: StoredViews,
        temperature: float,
        batch_size: int,
        seed: int,
        shard: Dist = SINGLE,
        estimator: str | None = None,
    ) -> None:
        self.views, self.batch_size, self.seed = views, batch_size, seed
        self.samples = shard.take(np.arange(views.num_samples))
        every = np.arange(views.num_samples)  # positions: each gives its V rows, store order
        self.targets = store.soft_targets(every, temperature, estimator=estimator)

    def batches(self, epoch: int) -> Iterator[Batch]:
        rows = drawn_rows(self.views, self.samples, epoch)
        rows = rows[np.random.default_rng([self.seed, epoch]).permutation(len(rows))]
        return _batches(rows, take(self.targets, torch.from_numpy(rows)), self.batch_size)


class StreamingViewTargets:
    """``ViewTargets`` for a views store larger than the memory budget: each epoch the drawn
    rows are read ``buffer_chunks`` chunks at a time, in a shuffled chunk order, on a
    background thread, and shuffled within each buffer; never more than about three buffers
    of rows and their targets are held. The drawn rows are ``StoredViews.rows(epoch)``, as in
    memory, so each (input, target) pair is the same; only the batch order differs."""

    def __init__(
        self,
        store: StoreReader,
        views: StoredViews,
        temperature: float,
        batch_size: int,
        seed: int,
        buffer_chunks: int,
        shard: Dist = SINGLE,
        estimator: str | None = None,
    ) -> None:
        self.store, self.views, self.temperature = store, views, temperature
        self.batch_size, self.seed, self.estimator = batch_size, seed, estimator
        self.buffer_chunks = max(1, buffer_chunks)
        self.samples = shard.take(np.arange(views.num_samples))

    def batches(self, epoch: int) -> Iterator[Batch]:
        # sorted, so each chunk's drawn rows are one slice; a row drawn twice is trained twice
        rows = np.sort(drawn_rows(self.views, self.samples, epoch))
        chunk_rows = self.store.meta.chunk_rows
        rng = np.random.default_rng([self.seed, epoch])
        chunks = np.unique(rows // chunk_rows)
        chunks = chunks[rng.permutation(len(chunks))]
        step = self.buffer_chunks
        groups = [np.sort(chunks[i : i + step]) for i in range(0, len(chunks), step)]
        read = _prefetch(self.store, groups, self.temperature, self.estimator)
        buffers = (
            self._drawn_in(rows, group, targets)
            for group, (_, targets) in zip(groups, read, strict=True)
        )
        return shuffled_batches(buffers, rng, self.batch_size)

    def _drawn_in(
        self, rows: np.ndarray, group: np.ndarray, targets: Targets
    ) -> tuple[np.ndarray, Targets]:
        """The drawn ``rows`` (sorted) in this buffer's chunks (``group``, ascending), with
        their targets (``targets``: those of every row of the chunks, in store order)."""
        meta = self.store.meta
        mine, where, held = [], [], 0
        for c in group:
            a, b = meta.chunk_bounds(int(c))
            part = rows[np.searchsorted(rows, a) : np.searchsorted(rows, b)]
            mine.append(part)
            where.append(part - a + held)  # its rows' places among the group's rows
            held += b - a
        index = torch.from_numpy(np.concatenate(where))
        return np.concatenate(mine), take(targets, index)


def make_view_source(
    store: StoreReader,
    views: StoredViews,
    temperature: float,
    batch_size: int,
    seed: int,
    memory_budget_bytes: int,
    shard: Dist = SINGLE,
    estimator: str | None = None,
) -> ViewTargets | StreamingViewTargets:
    """A views store's targets: in memory when they fit the budget, streamed otherwise."""
    if store_nbytes_in_memory(store) / shard.world <= memory_budget_bytes:
        return ViewTargets(store, views, temperature, batch_size, seed, shard, estimator)
    chunks = buffer_chunks_for(store, memory_budget_bytes)
    return StreamingViewTargets(
        store, views, temperature, batch_size, seed, chunks, shard, estimator
    )


TargetSource = (
    HardLabelSource | InMemoryTargets | StreamingTargets | ViewTargets | StreamingViewTargets
)


def make_target_source(
    store: StoreReader | None,
    temperature: float | None,
    num_samples: int,
    batch_size: int,
    seed: int,
    memory_budget_bytes: int,
    shard: Dist = SINGLE,
    estimator: str | None = None,
) -> TargetSource:
    """In memory when the loaded store fits the budget, streamed otherwise."""
    if store is None or temperature is None:
        return HardLabelSource(num_samples, batch_size, seed, shard)
    need = store_nbytes_in_memory(store) / shard.world
    if need <= memory_budget_bytes:
        return InMemoryTargets(store, temperature, batch_size, seed, shard, estimator)
    buffer_chunks = buffer_chunks_for(store, memory_budget_bytes)
    return StreamingTargets(store, temperature, batch_size, seed, buffer_chunks, shard, estimator)


def buffer_chunks_for(store: StoreReader, memory_budget_bytes: float) -> int:
    """Chunks per streaming buffer so that the three buffers alive at once (one being consumed,
    one queued, one being read) fit the budget."""
    chunk_bytes = store_nbytes_in_memory(store) / store.meta.num_chunks
    return max(1, int(memory_budget_bytes // (3 * chunk_bytes)))


def steps_per_epoch(
    store: StoreReader | None, num_samples: int, batch_size: int, shard: Dist
) -> int:
    """Batches every rank can take each epoch: the smallest shard's count, so that ranks stay in
    step (DDP needs the same number of backward passes on every rank)."""
    if store is None:
        rows = [len(Dist(r, shard.world).take(np.arange(num_samples))) for r in range(shard.world)]
    else:
        rows = shard.rows_per_rank(store.meta.chunk_rows, store.meta.num_samples)
    return min(-(-n // batch_size) for n in rows)
