"""Stage one: run the teacher(s) over a transfer set once and write a soft-label store.

Data path: TransferSet.take(rows of one chunk) -> each teacher, batch by batch -> member logits
(R, M, C) -> combined logits at T = 1 -> a background writer thread -> StoreWriter.write_chunk.
Batches never cross a chunk boundary, so a resumed run feeds the teachers exactly the same
batches as an uninterrupted one and its logits are bitwise identical.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from softlabels import __version__, schema
from softlabels.device import check_precision, resolve_device, runtime_record
from softlabels.distributed import Dist, init_from_env, local_device, shutdown
from softlabels.ensemble import normalise_weights
from softlabels.errors import (
    MismatchError,
    SoftLabelsError,
    SparseValueRangeError,
    StoreExistsError,
    TeacherError,
)
from softlabels.join import check_transfer
from softlabels.pipeline import BackgroundWriter, Runtime, compute_chunks, forward_teachers
from softlabels.schema import SparseSpec, StoreMeta, TransferInfo
from softlabels.store import (
    StoreReader,
    StoreWriter,
    backends,
    check_same_run,
    open_store,
    store_kind,
)
from softlabels.store.lease import WriterLease
from softlabels.teachers import Teacher, as_teacher, initialise_lazy
from softlabels.transfer import TransferSet, as_transfer
from softlabels.views.augment import Policy, augment_spec
from softlabels.views.transfer import ViewTransfer
from softlabels.vision.images import ImageTransfer

DEFAULT_CHUNK_ROWS = 4096


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
    device: str = "auto"
    precision: str = "fp32"
    workers: int = 0
    sparse: SparseSpec | None = None
    views: int | None = None  # views per sample, with an augmentation policy
    view_seed: int = 0
    lease_wait: float = 0.0  # seconds to wait for another writer of the store to finish
    tool: str = "generate"  # the command writing the store, recorded for readers' advice

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
        if self.workers < 0:
            raise SoftLabelsError(f"workers must be >= 0, got {self.workers}")
        if self.views is not None and self.views < 1:
            raise SoftLabelsError(f"views per sample must be at least 1, got {self.views}")
        if self.view_seed < 0:
            raise SoftLabelsError(f"the view seed must be >= 0, got {self.view_seed}")
        if not self.lease_wait >= 0:
            raise SoftLabelsError(f"lease_wait must be >= 0 seconds, got {self.lease_wait}")
        check_precision(self.precision)
        check_sparse(self.sparse, self.dtype, None)


def check_sparse(sparse: SparseSpec | None, dtype: str, num_classes: int | None) -> None:
    """Refuse sparse options that cannot make a store (num_classes None: not known yet)."""
    if sparse is None:
        return
    problems = sparse.problems(num_classes if num_classes is not None else 2**31)
    if sparse.value_step is not None and dtype != "float32":
        problems.append(
            "fixed-point values (value_step) replace the float dtype: keep dtype float32, or "
            "store floats with value_step None (--value-step 0)"
        )
    if problems:
        raise SoftLabelsError("sparse store options: " + "; ".join(problems))


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
    device: str = "auto",
    precision: str = "fp32",
    workers: int = 0,
    sparse: SparseSpec | None = None,
    augment: Policy | str | None = None,
    views: int | None = None,
    view_seed: int = 0,
    lease_wait: float = 0.0,
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
    lease_wait: when another writer is writing ``out`` (it holds the store's writer lease),
        wait up to this many seconds for it to finish before refusing (default: refuse at once).
    device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N" or "mps"; an absent device is
        an error. Teachers given as modules are moved there. precision: the teachers' forward
        pass, "fp32", "bf16" or "fp16" (autocast); logits are stored from float32 copies.
    workers: DataLoader worker processes reading the transfer set (0: the main process).
    sparse: a ``SparseSpec`` (top_k, sample, ...) to write a sparse store (format version 2):
        each row keeps K ids, the members' logits there and a tail summary. None: dense.
    augment, views, view_seed: an augmentation policy (``softlabels.views.augment``, or its SPEC such
        as "rrc-flip") and V, to write a
        views store (format version 4): its rows are V views of every sample (row r is view
        r % V of sample r // V), each drawn from (view_seed, sample, view) alone, with the
        drawn parameters stored per row. Give both augment and views, or neither.

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
        device=device,
        precision=precision,
        workers=workers,
        sparse=sparse,
        views=views,
        view_seed=view_seed,
        lease_wait=lease_wait,
    )
    opts.validate(len(teachers))
    if (augment is None) != (views is None):
        raise SoftLabelsError(
            "a views store needs both an augmentation policy (augment, --augment) and the "
            "number of views per sample (views, --views); give both or neither"
        )
    store_kind(out)
    out = str(out)
    device = resolve_device(opts.device)
    d = init_from_env(device)
    try:
        if d.world > 1 and store_kind(out) != "zarr":
            raise SoftLabelsError(
                "distributed generation writes Zarr: write PATH.zarr, then `softlabels convert "
                "PATH.zarr PATH.h5` for an HDF5 copy"
            )
        runtime = Runtime(local_device(device, d), opts.precision, opts.workers)
        loaded = [as_teacher(t) for t in teachers]
        for t in loaded:
            t.module.to(runtime.device)
        data = as_transfer(transfer, split)
        if isinstance(data, ImageTransfer):
            data.progress = opts.progress
            data.workers = opts.workers or data.workers
        if augment is not None and opts.views is not None:
            policy = augment_spec(augment) if isinstance(augment, str) else augment
            data = ViewTransfer(data, policy, views=opts.views, seed=opts.view_seed)
        probe = torch.from_numpy(data.take(0, min(2, len(data)))).to(runtime.device)
        loaded = [initialise_lazy(t, probe) for t in loaded]
        meta = build_meta(
            opts, loaded, data, probe_num_classes(loaded, probe, data, runtime), runtime
        )
        write_store(out, meta, opts, d, lambda w: _write_pending(opts, w, loaded, data, d, runtime))
    finally:
        shutdown(d)
    return open_store(out)


def write_store(
    out: str,
    meta: StoreMeta,
    opts: GenerateOptions,
    d: Dist,
    write: Callable[[StoreWriter], None],
) -> None:
    """Open the writer on rank 0 (a new store, a replacement built beside an old one, or a
    resumed one), attach every other rank to where it writes, ``write`` the pending chunks on
    every rank, and finalise on rank 0. Nothing happens when a complete, matching store is
    already there."""
    writer = d.collective(lambda: _open_writer(out, meta, opts) if d.is_main else None)
    path = d.broadcast(None if writer is None else writer.path)
    if path is None:
        return
    if not d.is_main:
        writer = StoreWriter.attach(path, meta, verify=False, joined=True)
    assert writer is not None
    with writer:
        try:
            d.collective(lambda: write(writer))
        except (TeacherError, SparseValueRangeError):
            # The same inputs fail the same way on --resume, so a partial store is no use: a
            # store created by this run is removed (one resumed from an earlier run is kept as
            # it was; the store an overwrite would replace is untouched).
            if writer.created and d.world == 1:
                writer.discard()
            raise
        d.collective(lambda: writer.finalize() if d.is_main else None)


def _open_writer(out: str, meta: StoreMeta, opts: GenerateOptions) -> StoreWriter | None:
    """A writer on a new or resumed store; None when ``resume`` finds it already complete.
    The store's writer lease is taken first, so what is found is not being written."""
    lease = WriterLease.acquire(out, wait=opts.lease_wait)
    try:
        if opts.resume and backends.exists(out):
            with open_store(out, allow_incomplete=True) as existing:
                if existing.meta.complete:
                    check_same_run(existing.meta, meta)
                    lease.release()
                    return None
            return StoreWriter.attach(out, meta, lease=lease)
        return StoreWriter.create(
            out, meta, compress=opts.compress, overwrite=opts.overwrite, tool=opts.tool, lease=lease
        )
    except StoreExistsError as exc:
        lease.release()
        if opts.overwrite:  # the path holds something that is not a store: no resume hint
            raise
        raise StoreExistsError(
            f"{exc.args[0]}, or finish an interrupted run with resume=True"
        ) from exc
    except BaseException:
        lease.release()  # idempotent: create and attach give it back themselves on failure
        raise


def _write_pending(
    opts: GenerateOptions,
    writer: StoreWriter,
    teachers: list[Teacher],
    data: TransferSet,
    d: Dist,
    runtime: Runtime,
) -> None:
    meta = writer.meta
    pending = d.take(np.array(writer.pending_chunks(), dtype=np.int64)).tolist()
    rows_left = sum(stop - start for start, stop in map(meta.chunk_bounds, pending))
    desc = "teacher logits" if d.world == 1 else f"teacher logits (rank {d.rank}/{d.world})"
    bar = tqdm(total=rows_left, unit="samples", desc=desc, disable=not opts.progress)
    with bar, BackgroundWriter(writer) as background:
        for chunk, rows in compute_chunks(teachers, data, meta, pending, opts.batch_size, runtime):
            background.put(chunk, rows)
            bar.update(len(rows))


def probe_num_classes(
    teachers: list[Teacher], x: torch.Tensor, transfer: TransferSet, runtime: Runtime
) -> int:
    """Run every teacher on ``x`` (the transfer set's first inputs); check each returns
    (batch, C) with one C for all, and that the transfer set's classes and labels fit C."""
    sizes = [forward_teachers([t], x, runtime).shape[2] for t in teachers]
    if len(set(sizes)) > 1:
        detail = ", ".join(f"{t.info.name}: {c}" for t, c in zip(teachers, sizes, strict=True))
        raise MismatchError(f"ensemble members disagree on the number of classes ({detail})")
    c = sizes[0]
    if c < 2:
        raise TeacherError(f"teachers output {c} class(es); a soft-label store needs at least 2")
    check_transfer(transfer, num_classes=c)
    return c


def build_meta(
    opts: GenerateOptions,
    teachers: list[Teacher],
    transfer: TransferSet,
    num_classes: int,
    runtime: Runtime,
) -> StoreMeta:
    combine = opts.combine or (
        schema.COMBINE_SINGLE if len(teachers) == 1 else schema.COMBINE_ARITHMETIC
    )
    names = transfer.class_names or tuple(str(i) for i in range(num_classes))
    check_sparse(opts.sparse, opts.dtype, num_classes)
    views = transfer.spec() if isinstance(transfer, ViewTransfer) else None
    base = transfer.base if isinstance(transfer, ViewTransfer) else transfer  # what was viewed
    return StoreMeta(
        num_samples=len(transfer),
        num_classes=num_classes,
        class_names=tuple(names),
        combine=combine,
        weights=normalise_weights(opts.weights, len(teachers)),
        teachers=tuple(t.info for t in teachers),
        transfer=TransferInfo(
            name=base.name,
            split=base.split,
            num_samples=len(base),
            fingerprint=base.fingerprint(),
            preprocess=base.preprocess.to_attr() if isinstance(base, ImageTransfer) else None,
        ),
        dtype=opts.dtype,
        chunk_rows=min(opts.chunk_rows, len(transfer)),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        producer=f"softlabels {__version__}",
        runtime=runtime_record(runtime.device, runtime.precision),
        sparse=opts.sparse,
        views=views,
    )
