"""Store tools that write: ``convert`` (Zarr <-> HDF5, lossless) and ``combine`` (pool the
members of stores made separately into one ensemble store). Both go chunk by chunk."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from softlabels import __version__, schema
from softlabels.ensemble import combined_logits, normalise_weights
from softlabels.errors import MismatchError, SoftLabelsError, StoreExistsError
from softlabels.schema import StoreMeta
from softlabels.store import Rows, StoreReader, StoreWriter, backends, open_store, store_kind


def convert_store(
    src: str, dst: str, *, overwrite: bool = False, compress: bool = True
) -> StoreMeta:
    """Copy a complete store between Zarr and HDF5 (or to the same kind), losslessly: the
    destination's checksums must equal the source's."""
    store_kind(dst)
    if str(src) == str(dst) or (
        not backends.is_url(src) and os.path.abspath(src) == os.path.abspath(dst)
    ):
        raise SoftLabelsError("convert: source and destination are the same path")
    with open_store(src) as source:
        writer = StoreWriter.create(dst, source.meta, compress=compress, overwrite=overwrite)
        with writer:
            for chunk, rows in enumerate(source.iter_chunks()):
                writer.write_chunk(chunk, rows)
            meta = writer.finalize()
        if meta.checksums != source.meta.checksums:
            raise MismatchError(
                f"conversion of {src!r} was not lossless: checksums differ; {dst!r} is unreliable"
            )
    return meta


def combine_stores(
    paths: tuple[str, ...],
    out: str,
    *,
    combine: str,
    weights: tuple[float, ...] | None = None,
    overwrite: bool = False,
    compress: bool = True,
) -> StoreMeta:
    """Pool the members of stores made separately on one transfer set into one ensemble store.

    Each input contributes its members (its ``member_logits``, or its ``logits`` for a single
    teacher). ``weights`` are per input store; a member's weight is its store's weight times its
    weight inside that store.
    """
    if len(paths) < 2:
        raise SoftLabelsError("combine needs at least two stores")
    if combine not in (schema.COMBINE_ARITHMETIC, schema.COMBINE_GEOMETRIC):
        raise SoftLabelsError(f"--combine must be arithmetic or geometric, got {combine!r}")
    if backends.exists(out) and not overwrite:
        raise StoreExistsError(
            f"{out!r} already exists; replace it with --overwrite (overwrite=True)"
        )
    stores = [open_store(p) for p in paths]
    try:
        _check_combinable(stores)
        store_weights = normalise_weights(weights, len(stores))
        member_weights = tuple(
            sw * w for s, sw in zip(stores, store_weights, strict=True) for w in s.meta.weights
        )
        first = stores[0].meta
        meta = replace(
            first,
            combine=combine,
            weights=normalise_weights(member_weights, len(member_weights)),
            teachers=tuple(t for s in stores for t in s.meta.teachers),
            # the least precise input's dtype: float16 members are float16-exact, no more
            dtype="float16" if any(s.meta.dtype == "float16" for s in stores) else "float32",
            producer=f"softlabels {__version__}",
        )
        w = torch.tensor(meta.weights, dtype=torch.float64)
        with StoreWriter.create(out, meta, compress=compress, overwrite=overwrite) as writer:
            for chunk in range(meta.num_chunks):
                start, stop = meta.chunk_bounds(chunk)
                parts = [s.read(start, stop) for s in stores]
                members = np.concatenate([_members(p) for p in parts], axis=1).astype(np.float32)
                logits = (
                    combined_logits(torch.from_numpy(members).double(), w, combine).float().numpy()
                )
                labels = np.max(np.stack([p.labels for p in parts]), axis=0)
                rows = Rows.dense(logits, members, parts[0].sample_index, labels, start=start)
                writer.write_chunk(chunk, rows)
            return writer.finalize()
    finally:
        for s in stores:
            s.close()


def _members(rows: Rows) -> np.ndarray:
    return rows.member_logits if rows.member_logits is not None else rows.logits[:, None, :]


def _check_combinable(stores: list[StoreReader]) -> None:
    a = stores[0]
    for b in stores[1:]:
        diffs = []
        if b.meta.transfer.fingerprint != a.meta.transfer.fingerprint:
            diffs.append("transfer fingerprints differ")
        if b.meta.transfer.split != a.meta.transfer.split:
            diffs.append(f"splits differ ({a.meta.transfer.split!r} vs {b.meta.transfer.split!r})")
        if b.meta.num_samples != a.meta.num_samples:
            diffs.append(f"row counts differ ({a.meta.num_samples} vs {b.meta.num_samples})")
        if b.meta.num_classes != a.meta.num_classes:
            diffs.append(f"class counts differ ({a.meta.num_classes} vs {b.meta.num_classes})")
        elif not np.array_equal(b.sample_index(), a.sample_index()):
            diffs.append("sample order (sample_index) differs")
        if not diffs:
            la, lb = a.labels(), b.labels()
            both = (la >= 0) & (lb >= 0)
            if (la[both] != lb[both]).any():
                diffs.append("labels differ")
        if diffs:
            raise MismatchError(f"cannot combine {a.path!r} with {b.path!r}: " + "; ".join(diffs))
