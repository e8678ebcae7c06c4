"""Stage one: run the teacher(s) over a transfer set once and write a soft-label store.

Data path: TransferSet.take(rows of one chunk) -> each teacher, batch by batch -> member logits
(R, M, C) -> combined logits at T = 1 -> a background writer thread -> StoreWriter.write_chunk.
Batches never cross a chunk boundary, so a resumed run feeds the teachers exactly the same
batches as an uninterrupted one and its logits are bitwise identical.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from softlabels import __version__, schema
from softlabels.distributed import Dist, init_from_env, shutdown
from softlabels.ensemble import combined_logits, normalise_weights
from softlabels.errors import (
    MismatchError,
    NonFiniteLogitsError,
    SoftLabelsError,
    StoreExistsError,
    TeacherError,
)
from softlabels.join import check_transfer
from softlabels.models import forward
from softlabels.schema import StoreMeta, TransferInfo
from softlabels.store import (
    Rows,
    StoreReader,
    StoreWriter,
    backends,
    check_same_run,
    open_store,
    remove_store,
    store_kind,
)
from softlabels.teachers import Teacher, as_teacher
from softlabels.transfer import TransferSet, as_transfer

DEFAULT_CHUNK_ROWS = 4096
_WRITE_QUEUE_CHUNKS = 2  # chunks computed ahead of the writer: bounds memory


@dataclass(frozen=True)
class GenerateOptions:
    """How ``generate`` combines, stores and batches. See ``generate`` for each field."""

    combine: str | None = None
    weights: tuple[float, ...] | None = None
    split: str = "train"
    dtype: str = "float32"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    batch_size: int = 256
    compress: bool = True
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self, num_teachers: int) -> None:
        if num_teachers < 1:
            raise SoftLabelsError("give at least one teacher")
        if self.batch_size < 1:
            raise SoftLabelsError(f"batch size must be at least 1, got {self.batch_size}")
        if self.chunk_rows < 1:
            raise SoftLabelsError(f"chunk rows must be at least 1, got {self.chunk_rows}")
        if self.dtype not in schema.DTYPES:
            raise SoftLabelsError(f"dtype must be one of {schema.DTYPES}, got {self.dtype!r}")
        if self.resume and self.overwrite:
            raise SoftLabelsError("resume and overwrite contradict each other; pick one")
        if self.combine is not None and self.combine not in schema.COMBINE_RULES:
            raise SoftLabelsError(
                f"combine must be one of {schema.COMBINE_RULES}, got {self.combine!r}"
            )
        if num_teachers > 1 and self.combine == schema.COMBINE_SINGLE:
            raise SoftLabelsError("combine 'single' needs exactly one teacher")


def generate(
    teachers: Sequence[nn.Module | str],
    transfer: Any,
    out: str | os.PathLike[str],
    *,
    combine: str | None = None,
    weights: Sequence[float] | None = None,
    split: str = "train",
    dtype: str = "float32",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    batch_size: int = 256,
    compress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> StoreReader:
    """Run the teacher(s) over a transfer set once and write their logits to a store at ``out``
    (PATH.zarr, PATH.h5, or a Zarr fsspec URL). Returns the finished store, opened: close it, or
    use it in a ``with`` block.

    teachers: ``nn.Module`` objects (put in eval mode; recorded as ``spec: null`` with their
        class name and weights hash) or teacher SPEC strings. Each maps a float32 batch
        (B, *input_shape) to logits (B, C).
    transfer: a map-style torch Dataset of ``(x, y)`` or ``x``, a ``TransferSet``, or a SPEC.
    combine: "single", "arithmetic" or "geometric"; default single for one teacher, arithmetic
        for several. weights: per teacher, normalised to sum 1 (default uniform).
    split: the SPEC's split to label ("train" or "test"). dtype: "float32" or "float16".
    chunk_rows: rows per stored chunk (clipped to N). batch_size: teacher batch (never crosses a
        chunk, so a resumed run computes bitwise-identical logits).
    resume: finish an interrupted store; create it if absent; do nothing if it is complete and
        was made from the same teachers and inputs (refuse one made from others).
    overwrite: replace an existing store.

    Under ``torchrun`` each rank computes the chunks c with c % world == rank and writes them
    into the one Zarr store; rank 0 creates (or checks) the store first and finalises it last.
    """
    opts = GenerateOptions(
        combine=combine,
        weights=None if weights is None else tuple(weights),
        split=split,
        dtype=dtype,
        chunk_rows=chunk_rows,
        batch_size=batch_size,
        compress=compress,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    opts.validate(len(teachers))
    store_kind(out)
    out = str(out)
    d = init_from_env()
    try:
        if d.world > 1 and store_kind(out) != "zarr":
            raise SoftLabelsError(
                "distributed generation writes Zarr: write PATH.zarr, then `softlabels convert "
                "PATH.zarr PATH.h5` for an HDF5 copy"
            )
        loaded = [as_teacher(t) for t in teachers]
        data = as_transfer(transfer, split)
        meta = build_meta(opts, loaded, data, probe_num_classes(loaded, data))
        writer = d.collective(lambda: _open_writer(out, meta, opts) if d.is_main else None)
        if d.broadcast(writer is not None):  # else a complete, matching store is already there
            if not d.is_main:
                writer = StoreWriter.attach(out, meta, verify=False)
            assert writer is not None
            with writer:
                d.collective(lambda: _write_pending(opts, writer, loaded, data, d))
                d.collective(lambda: writer.finalize() if d.is_main else None)
    finally:
        shutdown(d)
    return open_store(out)


def _open_writer(out: str, meta: StoreMeta, opts: GenerateOptions) -> StoreWriter | None:
    """A writer on a new or resumed store; None when ``resume`` finds it already complete."""
    if opts.resume and backends.exists(out):
        with open_store(out, allow_incomplete=True) as existing:
            if existing.meta.complete:
                check_same_run(existing.meta, meta)
                return None
        return StoreWriter.attach(out, meta)
    try:
        return StoreWriter.create(out, meta, compress=opts.compress, overwrite=opts.overwrite)
    except StoreExistsError as exc:
        raise StoreExistsError(
            f"{exc}, or finish an interrupted run with --resume (resume=True)"
        ) from exc


def _write_pending(
    opts: GenerateOptions, writer: StoreWriter, teachers: list[Teacher], data: TransferSet, d: Dist
) -> None:
    meta = writer.meta
    pending = d.take(np.array(writer.pending_chunks(), dtype=np.int64)).tolist()
    rows_left = sum(stop - start for start, stop in map(meta.chunk_bounds, pending))
    desc = "teacher logits" if d.world == 1 else f"teacher logits (rank {d.rank}/{d.world})"
    bar = tqdm(total=rows_left, unit="samples", desc=desc, disable=not opts.progress)
    try:
        with bar, _BackgroundWriter(writer) as background:
            for chunk in pending:
                rows = compute_chunk(teachers, data, meta, chunk, opts.batch_size)
                background.put(chunk, rows)
                bar.update(len(rows))
    except TeacherError:
        # The same inputs fail the same way on --resume, so a partial store is no use: a store
        # created by this run is removed (one resumed from an earlier run is kept as it was).
        if writer.created and d.world == 1:
            writer.close()
            remove_store(writer.path)
        raise


def probe_num_classes(teachers: list[Teacher], transfer: TransferSet) -> int:
    """Run every teacher on two inputs; check each returns (batch, C) with one C for all, and
    that the transfer set's classes and labels fit C."""
    x = torch.from_numpy(transfer.take(0, min(2, len(transfer))))
    sizes = [_forward(t, x).shape[1] for t in teachers]
    if len(set(sizes)) > 1:
        detail = ", ".join(f"{t.info.name}: {c}" for t, c in zip(teachers, sizes, strict=True))
        raise MismatchError(f"ensemble members disagree on the number of classes ({detail})")
    c = sizes[0]
    if c < 2:
        raise TeacherError(f"teachers output {c} class(es); a soft-label store needs at least 2")
    check_transfer(transfer, num_classes=c)
    return c


def build_meta(
    opts: GenerateOptions, teachers: list[Teacher], transfer: TransferSet, num_classes: int
) -> StoreMeta:
    combine = opts.combine or (
        schema.COMBINE_SINGLE if len(teachers) == 1 else schema.COMBINE_ARITHMETIC
    )
    names = transfer.class_names or tuple(str(i) for i in range(num_classes))
    return StoreMeta(
        num_samples=len(transfer),
        num_classes=num_classes,
        class_names=tuple(names),
        combine=combine,
        weights=normalise_weights(opts.weights, len(teachers)),
        teachers=tuple(t.info for t in teachers),
        transfer=TransferInfo(
            name=transfer.name,
            split=transfer.split,
            num_samples=len(transfer),
            fingerprint=transfer.fingerprint(),
        ),
        dtype=opts.dtype,
        chunk_rows=min(opts.chunk_rows, len(transfer)),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        producer=f"softlabels {__version__}",
    )


def compute_chunk(
    teachers: list[Teacher], transfer: TransferSet, meta: StoreMeta, chunk: int, batch_size: int
) -> Rows:
    """All store rows of one chunk: member logits batch by batch, combined in float64."""
    start, stop = meta.chunk_bounds(chunk)
    weights = torch.tensor(meta.weights, dtype=torch.float64)
    members = np.empty((stop - start, len(teachers), meta.num_classes), dtype=np.float32)
    for b0 in range(start, stop, batch_size):
        b1 = min(b0 + batch_size, stop)
        x = torch.from_numpy(transfer.take(b0, b1))
        for m, t in enumerate(teachers):
            out = _forward(t, x)
            if out.shape != (b1 - b0, meta.num_classes):
                raise TeacherError(
                    f"teacher {t.info.name!r} returned shape {tuple(out.shape)} for a batch of "
                    f"{b1 - b0}; expected ({b1 - b0}, {meta.num_classes})"
                )
            bad = ~torch.isfinite(out).all(dim=1)
            if bad.any():
                rows = (torch.nonzero(bad).flatten() + b0).tolist()
                raise NonFiniteLogitsError(
                    f"teacher {t.info.name!r} produced NaN or Inf logits at transfer rows {rows[:20]}"
                    + (f" and {len(rows) - 20} more" if len(rows) > 20 else "")
                )
            members[b0 - start : b1 - start, m] = out.numpy()
    member_t = torch.from_numpy(members)
    logits = combined_logits(member_t.double(), weights, meta.combine).float().numpy()
    return Rows(
        logits=logits,
        member_logits=members if len(teachers) > 1 else None,
        sample_index=np.arange(start, stop, dtype=np.int64),
        labels=transfer.label_array(start, stop),  # not the whole array per chunk
        start=start,
    )


def _forward(teacher: Teacher, x: torch.Tensor) -> torch.Tensor:
    name = teacher.info.spec or teacher.info.name
    with torch.inference_mode():
        return forward(teacher.module, x, name=name, error=TeacherError).float()


class _BackgroundWriter:
    """Writes chunks on a thread while the main thread runs the teachers. Compression and file
    I/O release the GIL, so writing overlaps compute. The bounded queue caps memory."""

    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_WRITE_QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    def __enter__(self) -> _BackgroundWriter:
        self._thread.start()
        return self

    def put(self, chunk: int, rows: Rows) -> None:
        self._raise_if_failed()
        self._queue.put((chunk, rows))

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise_if_failed()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_chunk(*item)
                except BaseException as exc:  # re-raised on the main thread
                    self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise SoftLabelsError(
                f"writing the store failed: {self._error}. Chunks committed so far are kept and the "
                f"store is marked incomplete; fix the cause (e.g. free disk space) and rerun with --resume"
            ) from self._error
