"""Stage one: run the teacher(s) over a transfer set once and write a soft-label store.

Data path: TransferSet.take(rows of one chunk) -> each teacher, batch by batch -> member logits
(R, M, C) -> combined logits at T = 1 -> a background writer thread -> StoreWriter.write_chunk.
Batches never cross a chunk boundary, so a resumed run feeds the teachers exactly the same
batches as an uninterrupted one and its logits are bitwise identical.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from softlabels import __version__, schema
from softlabels.distributed import Dist, init_from_env, shutdown
from softlabels.ensemble import combined_logits, normalise_weights
from softlabels.errors import MismatchError, NonFiniteLogitsError, SoftLabelsError, TeacherError
from softlabels.schema import StoreMeta, TransferInfo
from softlabels.store import Rows, StoreWriter, store_kind
from softlabels.teachers import Teacher, load_teacher
from softlabels.transfer import TransferSet, load_transfer

DEFAULT_CHUNK_ROWS = 4096
_WRITE_QUEUE_CHUNKS = 2  # chunks computed ahead of the writer: bounds memory


@dataclass(frozen=True)
class GenerateConfig:
    teachers: tuple[str, ...]
    transfer: str
    out: str
    split: str = "train"
    combine: str | None = None  # None: "single" for one teacher, "arithmetic" for several
    weights: tuple[float, ...] | None = None
    dtype: str = "float32"
    batch_size: int = 256
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    compress: bool = True
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not self.teachers:
            raise SoftLabelsError("give at least one --teacher")
        if self.batch_size < 1:
            raise SoftLabelsError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.chunk_rows < 1:
            raise SoftLabelsError(f"--chunk-rows must be at least 1, got {self.chunk_rows}")
        if self.dtype not in schema.DTYPES:
            raise SoftLabelsError(f"--dtype must be one of {schema.DTYPES}, got {self.dtype!r}")
        if self.resume and self.overwrite:
            raise SoftLabelsError("--resume and --overwrite contradict each other; pick one")
        if self.combine is not None and self.combine not in schema.COMBINE_RULES:
            raise SoftLabelsError(
                f"--combine must be one of {schema.COMBINE_RULES}, got {self.combine!r}"
            )
        if len(self.teachers) > 1 and self.combine == schema.COMBINE_SINGLE:
            raise SoftLabelsError("--combine single needs exactly one --teacher")
        store_kind(self.out)


def generate(config: GenerateConfig) -> StoreMeta:
    """Write (or finish, with ``resume``) the store described by ``config``. Returns its metadata.

    Under ``torchrun`` each rank runs the teachers on the chunks c with c % world == rank and
    writes them straight into the one Zarr store; rank 0 creates (or verifies, on resume) the
    store first and finalises it after every rank has committed.
    """
    config.validate()
    d = init_from_env()
    try:
        if d.world > 1 and store_kind(config.out) != "zarr":
            raise SoftLabelsError(
                "distributed generation writes Zarr: use --out PATH.zarr, then `softlabels convert "
                "PATH.zarr PATH.h5` for an HDF5 copy"
            )
        teachers = [load_teacher(spec) for spec in config.teachers]
        transfer = load_transfer(config.transfer, config.split)
        num_classes = probe_num_classes(teachers, transfer)
        meta = build_meta(config, teachers, transfer, num_classes)
        writer = d.collective(lambda: _open_writer(config, meta) if d.is_main else None)
        if not d.is_main:
            writer = StoreWriter.attach(config.out, meta, verify=False)
        with writer:
            d.collective(lambda: _write_pending(config, writer, teachers, transfer, d))
            return d.collective(lambda: writer.finalize() if d.is_main else writer.meta)
    finally:
        shutdown(d)


def _open_writer(config: GenerateConfig, meta: StoreMeta) -> StoreWriter:
    if config.resume:
        return StoreWriter.attach(config.out, meta)
    return StoreWriter.create(
        config.out, meta, compress=config.compress, overwrite=config.overwrite
    )


def _write_pending(
    config: GenerateConfig,
    writer: StoreWriter,
    teachers: list[Teacher],
    transfer: TransferSet,
    d: Dist,
) -> None:
    meta = writer.meta
    pending = [c for c in writer.pending_chunks() if c % d.world == d.rank]
    rows_left = sum(stop - start for start, stop in map(meta.chunk_bounds, pending))
    desc = "teacher logits" if d.world == 1 else f"teacher logits (rank {d.rank}/{d.world})"
    bar = tqdm(total=rows_left, unit="samples", desc=desc, disable=not config.progress)
    with bar, _BackgroundWriter(writer) as background:
        for chunk in pending:
            rows = compute_chunk(teachers, transfer, meta, chunk, config.batch_size)
            background.put(chunk, rows)
            bar.update(len(rows.logits))


def probe_num_classes(teachers: list[Teacher], transfer: TransferSet) -> int:
    """Run every teacher on two inputs; check each returns (batch, C) with one C for all."""
    x = torch.from_numpy(transfer.take(0, min(2, len(transfer))))
    sizes = []
    for t in teachers:
        out = _forward(t, x)
        sizes.append(out.shape[1])
    if len(set(sizes)) > 1:
        detail = ", ".join(f"{t.info.name}: {c}" for t, c in zip(teachers, sizes, strict=True))
        raise MismatchError(f"ensemble members disagree on the number of classes ({detail})")
    c = sizes[0]
    if c < 2:
        raise TeacherError(f"teachers output {c} class(es); a soft-label store needs at least 2")
    if transfer.num_classes is not None and transfer.num_classes != c:
        raise MismatchError(
            f"teachers output {c} classes but transfer set {transfer.name!r} has {transfer.num_classes}"
        )
    if transfer.labels is not None and len(transfer.labels) and transfer.labels.max() >= c:
        raise MismatchError(
            f"transfer labels reach {int(transfer.labels.max())}, but teachers output only {c} classes"
        )
    return c


def build_meta(
    config: GenerateConfig, teachers: list[Teacher], transfer: TransferSet, num_classes: int
) -> StoreMeta:
    combine = config.combine or (
        schema.COMBINE_SINGLE if len(teachers) == 1 else schema.COMBINE_ARITHMETIC
    )
    names = transfer.class_names or tuple(str(i) for i in range(num_classes))
    return StoreMeta(
        num_samples=len(transfer),
        num_classes=num_classes,
        class_names=tuple(names),
        combine=combine,
        weights=normalise_weights(config.weights, len(teachers)),
        teachers=tuple(t.info for t in teachers),
        transfer=TransferInfo(
            name=transfer.name,
            split=transfer.split,
            num_samples=len(transfer),
            fingerprint=transfer.fingerprint(),
        ),
        dtype=config.dtype,
        chunk_rows=config.chunk_rows,
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
        start=start,
        logits=logits,
        member_logits=members if len(teachers) > 1 else None,
        sample_index=np.arange(start, stop, dtype=np.int64),
        labels=transfer.label_array(start, stop),  # not the whole array per chunk
    )


def _forward(teacher: Teacher, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = teacher.module(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TeacherError(
            f"teacher {teacher.info.name!r} must return logits of shape (batch, classes); for a batch "
            f"of {x.shape[0]} it returned {shape}"
        )
    return out.float()


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
