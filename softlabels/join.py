"""The one check that a transfer set goes with a store (or with teachers of C classes).

Every path that pairs inputs with soft targets runs it: ``generate`` (teachers' C against the
transfer set), ``verify --transfer``, ``SoftTargetDataset`` and the trainer's join.
"""

from __future__ import annotations

import warnings

import numpy as np

from softlabels.errors import LabelsWithheldWarning, MismatchError
from softlabels.store import StoreReader
from softlabels.transfer import TransferSet
from softlabels.vision.images import ImageTransfer
from softlabels.vision.preprocess import Preprocess


def check_transfer(
    transfer: TransferSet, *, num_classes: int, store: StoreReader | None = None
) -> None:
    """Raise MismatchError naming every way ``transfer`` differs from what a store of
    ``num_classes`` classes (or ``store`` itself: split, size, fingerprint, labels) needs.

    Labels must be 0..C-1, or -1 for "no label". An image set whose preprocessing was not
    given takes the store's here, so stage two feeds the student what the teacher saw; one
    whose preprocessing was given must match it.
    """
    diffs = []
    if transfer.num_classes is not None and transfer.num_classes != num_classes:
        diffs.append(
            f"class count: {num_classes} classes, but transfer set {transfer.name!r} names "
            f"{transfer.num_classes}"
        )
    labels = transfer.labels
    if labels is not None and len(labels) and (labels.max() >= num_classes or labels.min() < -1):
        bad = np.flatnonzero((labels >= num_classes) | (labels < -1))[:10].tolist()
        diffs.append(
            f"labels: transfer labels must be 0..{num_classes - 1} (or -1 for none), but "
            f"positions {bad} hold {labels[bad].tolist()}"
        )
    if store is not None:
        diffs += _store_diffs(transfer, store)
    if diffs:
        where = f" store {store.path!r}" if store is not None else ""
        raise MismatchError(
            f"the transfer set {transfer.name!r} does not match the{where or ' teachers'} ("
            + "; ".join(diffs)
            + ")"
        )


def preprocess_diffs(transfer: TransferSet, store: StoreReader) -> list[str]:
    """For an image set: adopt the store's preprocessing if the set gives none, else name how
    the two differ. Every path that feeds a store's teacher or student the set's inputs runs
    it (through check_transfer, or alone where the fingerprint is not needed)."""
    if not isinstance(transfer, ImageTransfer):
        return []
    recorded = store.meta.transfer.preprocess
    return transfer.match_store(None if recorded is None else Preprocess.from_attr(recorded))


def _store_diffs(transfer: TransferSet, store: StoreReader) -> list[str]:
    meta = store.meta
    diffs = []
    diffs += preprocess_diffs(transfer, store)
    if transfer.split != meta.transfer.split:
        diffs.append(
            f"split: store has {meta.transfer.split!r}, transfer set is {transfer.split!r}"
        )
    if meta.views is not None and len(transfer) != meta.transfer.num_samples:
        diffs.append(
            f"N: store holds {meta.views.views_per_sample} views of each of "
            f"{meta.transfer.num_samples} samples, transfer set has {len(transfer)}"
        )
        return diffs
    if meta.views is None and len(transfer) != meta.num_samples:
        diffs.append(f"N: store has {meta.num_samples} rows, transfer set has {len(transfer)}")
        return diffs  # positions cannot be compared
    fingerprint = transfer.fingerprint()
    if fingerprint != meta.transfer.fingerprint:
        diffs.append(
            f"fingerprint: store was made from {meta.transfer.name!r} "
            f"({meta.transfer.fingerprint[:23]}...), these inputs are {fingerprint[:23]}..."
        )
    if transfer.labels is not None:
        stored, index = store.labels(), store.sample_index()
        mine = transfer.labels[index]
        differ = np.flatnonzero((stored >= 0) & (stored != mine))
        if len(differ):
            _blame_store_first(store, differ)
            positions = index[differ[:10]].tolist()
            diffs.append(
                f"labels: the store's labels differ from the transfer set's at positions "
                f"{positions} ({len(differ)} in all)"
            )
    return diffs


def _blame_store_first(store: StoreReader, rows: np.ndarray) -> None:
    """Before blaming the transfer set for labels that differ, check the store's chunks that
    hold them against their checksums: a damaged store (a chunk deleted or overwritten) raises
    ChecksumError naming the store instead."""
    for chunk in np.unique(rows // store.meta.chunk_rows)[:8]:
        store.read_verified_chunk(int(chunk))


def withhold_labels(transfer: TransferSet, store: StoreReader) -> TransferSet:
    """The store's labels rule: ``transfer`` with no label at the positions whose store rows
    all hold -1 ("no label"), whatever the transfer set says there, and a
    ``LabelsWithheldWarning`` saying how many. A store made from a partly labelled transfer set
    (10% of the labels known) then trains a student on that 10%, even when the transfer set
    given for training is the fully labelled one with the same inputs. ``transfer`` itself is
    returned when it withholds nothing (call ``check_transfer`` first: labels that differ are
    refused there)."""
    if transfer.labels is None:
        return transfer
    known = np.zeros(len(transfer), dtype=bool)
    stored, index = store.labels(), store.sample_index()
    known[index[stored >= 0]] = True
    withheld = (transfer.labels >= 0) & ~known
    n = int(withheld.sum())
    if n == 0:
        return transfer
    kept = int((transfer.labels >= 0).sum()) - n
    warnings.warn(
        LabelsWithheldWarning(
            f"the store {store.path!r} holds no label (-1) for {n} samples that the transfer "
            f"set {transfer.name!r} labels; the store's labels rule, so training uses the "
            f"{kept} labels the store holds and treats those {n} samples as unlabelled. To "
            f"train on those labels too, generate the store from a transfer set that has them"
        ),
        stacklevel=2,
    )
    return transfer.with_labels(np.where(withheld, -1, transfer.labels))
