"""``TransferSet``: an ordered, indexable set of (input, label) pairs, and its fingerprint.
``softlabels.transfer`` resolves transfer SPECs to these (and re-exports the class)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np

from softlabels.errors import SpecError
from softlabels.schema import FINGERPRINT_PREFIX

_FINGERPRINT_BLOCK = 4096


class TransferSet:
    """An ordered, indexable set of (input, label) pairs.

    ``inputs`` is an array of shape (N, *input_shape), or None for Dataset-backed sets, which
    are read item by item through ``take``.
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        inputs: np.ndarray | None,
        labels: np.ndarray | None,
        class_names: tuple[str, ...] | None,
        dataset: Any = None,
    ) -> None:
        self.name = name
        self.split = split
        self._inputs = inputs
        self._dataset = dataset
        self.labels = labels
        self.class_names = class_names
        self._fingerprint: str | None = None
        n = len(inputs) if inputs is not None else len(dataset)
        if n == 0:
            raise SpecError(f"transfer set {name!r} (split {split!r}) is empty")
        if labels is not None and len(labels) != n:
            raise SpecError(f"transfer set {name!r} has {n} inputs but {len(labels)} labels")
        if labels is not None and (labels < -1).any():
            bad = np.flatnonzero(labels < -1)[:10].tolist()
            raise SpecError(
                f"transfer set {name!r} has labels below -1 at positions {bad}; labels must be "
                f"0..C-1, or -1 for 'no label'"
            )
        if inputs is not None:
            check_finite(inputs, name, 0)
        self._n = n

    def __len__(self) -> int:
        return self._n

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.take(0, 1).shape[1:])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        return None

    def take(self, start: int, stop: int) -> np.ndarray:
        """float32 inputs for positions [start, stop)."""
        if self._inputs is not None:
            return np.ascontiguousarray(self._inputs[start:stop], dtype=np.float32)
        return np.stack([item_input(self._dataset[i]) for i in range(start, stop)])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """float32 inputs at arbitrary positions."""
        if self._inputs is not None:
            return np.ascontiguousarray(self._inputs[positions], dtype=np.float32)
        return np.stack([item_input(self._dataset[int(i)]) for i in positions])

    def label_array(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """int64 labels of positions [start, stop), -1 where the set has none."""
        stop = len(self) if stop is None else stop
        if self.labels is None:
            return np.full(stop - start, -1, dtype=np.int64)
        return self.labels[start:stop].astype(np.int64, copy=False)

    def with_labels(self, labels: np.ndarray) -> TransferSet:
        """The same inputs (and fingerprint) with other (N,) labels, -1 for none."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(self),):
            raise SpecError(f"expected {len(self)} labels for {self.name!r}, got {labels.shape}")
        new = copy.copy(self)
        new.labels = labels
        return new

    def policy_inputs(self, positions: np.ndarray) -> np.ndarray:
        """float32 inputs at ``positions`` as an augmentation policy takes them (here the inputs
        themselves; an image set gives its pixels, before normalisation)."""
        return self.gather(positions)

    def after_policy(self, views: np.ndarray) -> np.ndarray:
        """The inputs a teacher sees from views the policy made of ``policy_inputs`` (here the
        views themselves; an image set normalises them)."""
        return views

    def row_arrays(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Per-row store arrays beyond the targets, labels and positions for rows [start, stop)
        (a ``softlabels.views.ViewTransfer`` adds its views' parameters); none here."""
        return {}

    def fingerprint(self) -> str:
        """'sha256:<hex>' over the float32 little-endian input bytes, in order."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for start in range(0, len(self), _FINGERPRINT_BLOCK):
                block = self.take(start, min(start + _FINGERPRINT_BLOCK, len(self)))
                if self._inputs is None:  # array inputs were checked when loaded
                    check_finite(block, self.name, start)
                h.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
            self._fingerprint = FINGERPRINT_PREFIX + h.hexdigest()
        return self._fingerprint


def check_finite(inputs: np.ndarray, name: str, offset: int) -> None:
    """Refuse NaN or Inf inputs, naming the first positions that hold them."""
    flat = np.asarray(inputs).reshape(len(inputs), -1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        bad = (np.flatnonzero(~np.isfinite(flat).all(axis=1))[:10] + offset).tolist()
        raise SpecError(
            f"transfer set {name!r} holds NaN or Inf inputs at positions {bad}; clean or drop "
            f"those samples"
        )


def item_input(item: Any) -> np.ndarray:
    x = item[0] if isinstance(item, tuple | list) else item
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)
