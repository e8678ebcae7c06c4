"""A block of store rows, and the chunk checksum over it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from softlabels import schema


@dataclass(frozen=True)
class Rows:
    """Store rows as numpy arrays, as stored. A chunk read or written is the contiguous block
    [start, start + R); rows gathered from several places (a training batch, a shuffled buffer)
    keep ``start = -1``: ``sample_index`` is what identifies them."""

    logits: np.ndarray  # (R, C) combined teacher logits at T = 1
    member_logits: np.ndarray | None  # (R, M, C), or None for a single teacher
    sample_index: np.ndarray  # (R,) int64 transfer-set positions
    labels: np.ndarray  # (R,) int64, -1 where unknown
    start: int = -1  # first store row of a contiguous block, -1 for gathered rows

    def __len__(self) -> int:
        return len(self.sample_index)

    @property
    def stop(self) -> int:
        return self.start + len(self)

    def array(self, name: str) -> np.ndarray | None:
        """The array called ``name`` in the schema (None: member_logits of a single teacher)."""
        return {
            schema.LOGITS: self.logits,
            schema.MEMBER_LOGITS: self.member_logits,
            schema.SAMPLE_INDEX: self.sample_index,
            schema.LABELS: self.labels,
        }[name]

    def take(self, idx: np.ndarray) -> Rows:
        """The rows at ``idx`` (a gathered block)."""
        members = None if self.member_logits is None else self.member_logits[idx]
        return Rows(self.logits[idx], members, self.sample_index[idx], self.labels[idx])

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        """Rows of several blocks, in order, as one gathered block."""
        members = None
        if parts[0].member_logits is not None:
            members = np.concatenate([p.member_logits for p in parts])  # type: ignore[misc]
        return Rows(
            np.concatenate([p.logits for p in parts]),
            members,
            np.concatenate([p.sample_index for p in parts]),
            np.concatenate([p.labels for p in parts]),
        )


def chunk_checksum(rows: Rows) -> str:
    """Hex SHA-256 over the chunk's arrays in CHECKSUM_ORDER, little-endian C-order bytes."""
    h = hashlib.sha256()
    for name in schema.CHECKSUM_ORDER:
        arr = rows.array(name)
        if arr is not None:
            h.update(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def nonfinite_rows(rows: Rows) -> list[int]:
    """Store rows of a contiguous block whose logits or member logits hold NaN or Inf."""
    finite = np.isfinite(rows.logits).all(1)
    if rows.member_logits is not None:
        finite &= np.isfinite(rows.member_logits).all((1, 2))
    return (np.flatnonzero(~finite) + rows.start).tolist()
