"""Stage one's compute path: inputs -> teachers on the device -> whole chunks of rows.

    DataLoader(workers, pinned memory)  one item per teacher batch; batches never cross a chunk
      -> x.to(device, non_blocking)      the next batch's copy overlaps this batch's forward
      -> each teacher under autocast     (B, C) logits, copied to float32
      -> logits to pinned host memory    non-blocking; consumed one batch later, so the copy
                                         overlaps the next forward pass
      -> a chunk's members (R, M, C)     combined in float64 -> Rows for the background writer

The batches are the same whatever the worker count, and each is computed alone, so the logits
are bitwise identical at any ``workers`` on the same device and precision.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from softlabels.device import autocast
from softlabels.ensemble import combined_logits
from softlabels.errors import NonFiniteLogitsError, SoftLabelsError, TeacherError
from softlabels.models import forward
from softlabels.schema import StoreMeta
from softlabels.store import Rows, StoreWriter
from softlabels.store.failures import disk_full_message, is_disk_full
from softlabels.teachers import Teacher
from softlabels.transfer import TransferSet

_WRITE_QUEUE_CHUNKS = 2  # chunks computed ahead of the writer: bounds memory


@dataclass(frozen=True)
class Runtime:
    """Where and how teachers run."""

    device: torch.device
    precision: str = "fp32"
    workers: int = 0


class _BatchInputs(Dataset):
    """Item k is the float32 inputs of teacher batch k, as one tensor (read in a worker)."""

    def __init__(self, transfer: TransferSet, bounds: list[tuple[int, int]]) -> None:
        self.transfer, self.bounds = transfer, bounds

    def __len__(self) -> int:
        return len(self.bounds)

    def __getitem__(self, k: int) -> torch.Tensor:
        return torch.from_numpy(self.transfer.take(*self.bounds[k]))


def teacher_batches(meta: StoreMeta, chunks: list[int], batch_size: int) -> list[tuple[int, int]]:
    """[b0, b1) of every teacher batch of ``chunks``, in order; no batch crosses a chunk."""
    bounds = []
    for chunk in chunks:
        start, stop = meta.chunk_bounds(chunk)
        bounds += [(b0, min(b0 + batch_size, stop)) for b0 in range(start, stop, batch_size)]
    return bounds


def forward_teachers(teachers: list[Teacher], x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """(B, M, C) float32 member logits of one batch, on the device."""
    with torch.inference_mode(), autocast(runtime.device, runtime.precision):
        outs = [
            forward(t.module, x, name=t.info.spec or t.info.name, error=TeacherError).float()
            for t in teachers
        ]
    sizes = {o.shape[1] for o in outs}
    if len(sizes) > 1:
        raise TeacherError(f"teachers returned different class counts {sorted(sizes)}")
    return torch.stack(outs, dim=1)


def compute_chunks(
    teachers: list[Teacher],
    transfer: TransferSet,
    meta: StoreMeta,
    chunks: list[int],
    batch_size: int,
    runtime: Runtime,
) -> Iterator[tuple[int, Rows]]:
    """(chunk, rows) for each of ``chunks`` in order: every teacher's logits, combined."""
    bounds = teacher_batches(meta, chunks, batch_size)
    cuda = runtime.device.type == "cuda"
    loader = DataLoader(
        _BatchInputs(transfer, bounds),
        batch_size=None,
        shuffle=False,
        num_workers=runtime.workers,
        pin_memory=cuda,
    )
    assembler = _ChunkAssembler(meta, teachers, transfer)
    in_flight: tuple[int, int, torch.Tensor, Any] | None = None  # (b0, b1, host logits, event)
    for (b0, b1), x in zip(bounds, loader, strict=True):
        logits = forward_teachers(teachers, x.to(runtime.device, non_blocking=cuda), runtime)
        if logits.shape != (b1 - b0, len(teachers), meta.num_classes):
            raise TeacherError(
                f"teachers returned shape {tuple(logits.shape)} for a batch of {b1 - b0}; "
                f"expected ({b1 - b0}, {len(teachers)}, {meta.num_classes})"
            )
        if cuda:  # start the copy back now; consume it after the next batch is launched
            host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(logits, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = logits, None
        if in_flight is not None:
            yield from assembler.add(*in_flight)
        in_flight = (b0, b1, host, event)
    if in_flight is not None:
        yield from assembler.add(*in_flight)


class _ChunkAssembler:
    """Collects batches into whole chunks and combines each chunk's members in float64."""

    def __init__(self, meta: StoreMeta, teachers: list[Teacher], transfer: TransferSet) -> None:
        self.meta, self.transfer = meta, transfer
        self.names = [t.info.name for t in teachers]
        self.members = len(teachers)
        self.weights = torch.tensor(meta.weights, dtype=torch.float64)
        self.chunk, self.buffer, self.filled = -1, np.empty(0), 0

    def add(self, b0: int, b1: int, host: torch.Tensor, event: Any) -> Iterator[tuple[int, Rows]]:
        if event is not None:
            event.synchronize()
        out = host.numpy()
        bad = ~np.isfinite(out).all(axis=2)  # (B, M)
        if bad.any():
            m = int(np.flatnonzero(bad.any(axis=0))[0])
            rows = (np.flatnonzero(bad[:, m]) + b0).tolist()
            raise NonFiniteLogitsError(
                f"teacher {self.names[m]!r} produced NaN or Inf logits at transfer rows "
                f"{rows[:20]}" + (f" and {len(rows) - 20} more" if len(rows) > 20 else "")
            )
        chunk = b0 // self.meta.chunk_rows
        start, stop = self.meta.chunk_bounds(chunk)
        if chunk != self.chunk:
            shape = (stop - start, self.members, self.meta.num_classes)
            self.chunk, self.buffer, self.filled = chunk, np.empty(shape, np.float32), 0
        self.buffer[b0 - start : b1 - start] = out
        self.filled += b1 - b0
        if self.filled == stop - start:
            yield chunk, self._rows(start, stop)

    def _rows(self, start: int, stop: int) -> Rows:
        members = self.buffer
        combined = combined_logits(
            torch.from_numpy(members).double(), self.weights, self.meta.combine
        )
        return Rows.dense(
            logits=combined.float().numpy(),
            member_logits=members if self.members > 1 else None,
            sample_index=np.arange(start, stop, dtype=np.int64),
            labels=self.transfer.label_array(start, stop),  # not the whole array per chunk
            start=start,
        ).replace(**self.transfer.row_arrays(start, stop))  # e.g. a views store's view_params


class BackgroundWriter:
    """Writes chunks on a thread while the main thread runs the teachers. Compression and file
    I/O release the GIL, so writing overlaps compute. The bounded queue caps memory."""

    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_WRITE_QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
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
        if self._error is None:
            return
        what = (
            disk_full_message(self._writer.path, self._error)
            if is_disk_full(self._error)
            else f"writing the store failed: {self._error}"
        )
        raise SoftLabelsError(
            f"{what}. Chunks committed so far are kept and the store is marked incomplete; fix "
            f"the cause (e.g. free disk space) and run the same command again with resume=True"
        ) from self._error
