"""A block of store rows, and the chunk checksum over it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from softlabels import schema


@dataclass(frozen=True)
class Rows:
    """Store rows as numpy arrays, as stored, by their schema names (``schema.array_layout``).

    A dense block holds ``logits``, ``member_logits`` (several teachers only), ``sample_index``
    and ``labels``; a sparse block holds ``id_gaps``, ``values``, ``tail`` and the rest of the
    sparse layout instead of the logits. A chunk read or written is the contiguous block
    [start, start + R); rows gathered from several places (a training batch, a shuffled buffer)
    keep ``start = -1``: ``sample_index`` is what identifies them."""

    arrays: dict[str, np.ndarray] = field(repr=False)
    start: int = -1  # first store row of a contiguous block, -1 for gathered rows

    @classmethod
    def dense(
        cls,
        logits: np.ndarray,
        member_logits: np.ndarray | None,
        sample_index: np.ndarray,
        labels: np.ndarray,
        start: int = -1,
    ) -> Rows:
        """Dense rows: combined logits (R, C), member logits (R, M, C) or None for a single
        teacher, transfer positions (R,) and labels (R,), -1 where unknown."""
        arrays = {schema.LOGITS: logits}
        if member_logits is not None:
            arrays[schema.MEMBER_LOGITS] = member_logits
        arrays.update({schema.SAMPLE_INDEX: sample_index, schema.LABELS: labels})
        return cls(arrays, start)

    def __len__(self) -> int:
        return len(self.sample_index)

    @property
    def stop(self) -> int:
        return self.start + len(self)

    @property
    def is_sparse(self) -> bool:
        return schema.ID_GAPS in self.arrays

    @property
    def logits(self) -> np.ndarray:
        """(R, C) combined logits of a dense block."""
        if schema.LOGITS not in self.arrays:
            raise TypeError("these rows are sparse: they hold no dense logits")
        return self.arrays[schema.LOGITS]

    @property
    def member_logits(self) -> np.ndarray | None:
        return self.arrays.get(schema.MEMBER_LOGITS)

    @property
    def sample_index(self) -> np.ndarray:
        return self.arrays[schema.SAMPLE_INDEX]

    @property
    def labels(self) -> np.ndarray:
        return self.arrays[schema.LABELS]

    def array(self, name: str) -> np.ndarray | None:
        """The array called ``name`` in the schema, or None where this block has none."""
        return self.arrays.get(name)

    def all_member_logits(self) -> np.ndarray:
        """(R, M, C) member logits of a dense block (a single teacher's are its logits)."""
        members = self.member_logits
        return self.logits[:, None, :] if members is None else members

    def take(self, idx: np.ndarray) -> Rows:
        """The rows at ``idx`` (a gathered block)."""
        return Rows({name: a[idx] for name, a in self.arrays.items()})

    def replace(self, **arrays: np.ndarray) -> Rows:
        return Rows({**self.arrays, **arrays}, self.start)

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        """Rows of several blocks, in order, as one gathered block."""
        return Rows(
            {name: np.concatenate([p.arrays[name] for p in parts]) for name in parts[0].arrays}
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
    """Store rows of a contiguous block where a floating-point array holds NaN or Inf."""
    finite = np.ones(len(rows), dtype=bool)
    for arr in rows.arrays.values():
        if arr.dtype.kind == "f":
            finite &= np.isfinite(arr.reshape(len(rows), -1)).all(axis=1)
    return (np.flatnonzero(~finite) + rows.start).tolist()
