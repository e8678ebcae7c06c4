"""Store tools that write: ``convert`` (Zarr <-> HDF5, lossless) and ``combine`` (pool the
members of stores made separately into one ensemble store). Both go chunk by chunk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace

import numpy as np
import torch
from tqdm import tqdm

from softlabels import __version__, schema
from softlabels.ensemble import combined_logits, normalise_weights
from softlabels.errors import ChecksumError, MismatchError, SoftLabelsError, StoreExistsError
from softlabels.generate import check_sparse
from softlabels.schema import SparseSpec, StoreMeta
from softlabels.store import (
    Rows,
    StoreReader,
    StoreWriter,
    backends,
    open_store,
    store_kind,
)
from softlabels.store.lease import WriterLease


def convert_store(
    src: str,
    dst: str,
    *,
    overwrite: bool = False,
    compress: bool = True,
    sparse: SparseSpec | None = None,
    progress: bool = False,
    lease_wait: float = 0.0,
) -> StoreMeta:
    """Copy a complete store between Zarr and HDF5 (or to the same kind), losslessly: the
    destination's checksums must equal the source's.

    With ``sparse``, sparsify a dense store instead: from a float32 store the result is what
    ``generate(..., sparse=sparse)`` writes from the same teachers. ``lease_wait``: seconds to
    wait for another writer of ``dst`` to finish (default: refuse at once)."""
    store_kind(dst)
    if str(src) == str(dst) or (
        not backends.is_url(src) and os.path.abspath(src) == os.path.abspath(dst)
    ):
        raise SoftLabelsError("convert: source and destination are the same path")
    with open_store(src) as source:
        meta = source.meta
        if sparse is not None:
            if source.is_sparse:
                raise SoftLabelsError(
                    f"{src!r} is already sparse; sparsify from the dense store it came from"
                )
            dtype = "float32" if sparse.value_step is not None else meta.dtype
            check_sparse(sparse, dtype, meta.num_classes)
            sparse = sparse.resolved(tokens=meta.tokens is not None)
            meta = replace(meta, sparse=sparse, dtype=dtype, producer=f"softlabels {__version__}")
        with _fresh_writer(
            dst, meta, compress=compress, overwrite=overwrite, tool="convert", wait=lease_wait
        ) as writer:
            chunks = source.iter_chunks() if sparse is None else _verified_chunks(source)
            bar = tqdm(total=meta.num_samples, unit="rows", desc="convert", disable=not progress)
            with bar:
                for chunk, rows in enumerate(chunks):
                    writer.write_chunk(chunk, rows)
                    bar.update(len(rows))
            meta = writer.finalize()
        if sparse is not None:
            return meta
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
    sparse: SparseSpec | None = None,
    lease_wait: float = 0.0,
) -> StoreMeta:
    """Pool the members of stores made separately on one transfer set into one ensemble store.

    Each input contributes its members (its ``member_logits``, or its ``logits`` for a single
    teacher). ``weights`` are per input store; a member's weight is its store's weight times its
    weight inside that store. ``sparse`` writes dense inputs as a sparse store. Sparse inputs
    pool only where that is exact: see ``_check_sparse_combinable``. Token stores combine only
    with token stores cut the same way (equal ``tokens`` attributes, input_ids and positions),
    whose ``tokens`` attribute and per-row arrays the result keeps. ``lease_wait``: seconds to
    wait for another writer of ``out`` to finish (default: refuse at once).
    """
    if len(paths) < 2:
        raise SoftLabelsError("combine needs at least two stores")
    if combine not in (schema.COMBINE_ARITHMETIC, schema.COMBINE_GEOMETRIC):
        raise SoftLabelsError(f"--combine must be arithmetic or geometric, got {combine!r}")
    if backends.exists(out) and not overwrite:
        raise StoreExistsError(f"{out!r} already exists; pass overwrite=True to replace it")
    stores = [open_store(p) for p in paths]
    try:
        for st in stores:  # a corrupt input must not come out with fresh, valid checksums
            bad = st.verify_checksums()
            if bad:
                raise ChecksumError(
                    f"{st.path!r}: chunks {bad[:10]} do not match their checksums; regenerate it"
                )
        _check_combinable(stores)
        if any(st.is_sparse for st in stores):
            _check_sparse_combinable(stores, combine, sparse)
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
        if sparse is not None:
            dtype = "float32" if sparse.value_step is not None else meta.dtype
            check_sparse(sparse, dtype, meta.num_classes)
            if first.sparse is not None and sparse.selection is None:
                sparse = replace(sparse, selection=first.sparse.selection)  # pooled as they are
            meta = replace(
                meta, sparse=sparse.resolved(tokens=meta.tokens is not None), dtype=dtype
            )
        w = torch.tensor(meta.weights, dtype=torch.float64)
        with _fresh_writer(
            out, meta, compress=compress, overwrite=overwrite, tool="combine", wait=lease_wait
        ) as writer:
            for chunk in range(meta.num_chunks):
                start, stop = meta.chunk_bounds(chunk)
                parts = [s.read(start, stop) for s in stores]
                tokens = _token_arrays(parts, stores)
                if meta.sparse is not None and parts[0].is_sparse:
                    writer.write_chunk(chunk, _pool_sparse(parts, start).replace(**tokens))
                    continue
                members = np.concatenate([_members(p) for p in parts], axis=1).astype(np.float32)
                logits = (
                    combined_logits(torch.from_numpy(members).double(), w, combine).float().numpy()
                )
                labels = np.max(np.stack([p.labels for p in parts]), axis=0)
                rows = Rows.dense(logits, members, parts[0].sample_index, labels, start=start)
                writer.write_chunk(chunk, rows.replace(**tokens))
            return writer.finalize()
    finally:
        for s in stores:
            s.close()


@contextmanager
def _fresh_writer(
    path: str, meta: StoreMeta, *, compress: bool, overwrite: bool, tool: str, wait: float
) -> Iterator[StoreWriter]:
    """A new store for a tool that cannot resume: if writing it fails, the half-written store
    is removed (under the writer lease), so nothing incomplete is left at ``path``."""
    lease = WriterLease.acquire(path, wait=wait)
    writer = StoreWriter.create(
        path, meta, compress=compress, overwrite=overwrite, tool=tool, lease=lease
    )
    try:
        yield writer
    except BaseException:
        writer.discard()  # the new store, or the replacement beside an old one
        raise
    writer.close()


def _token_arrays(parts: list[Rows], stores: list[StoreReader]) -> dict[str, np.ndarray]:
    """A token store's per-row input_ids and position, or a views store's view_params and view,
    the same in every input (empty for a plain store). The combined store is removed when this
    refuses mid-way."""
    out: dict[str, np.ndarray] = {}
    for name in (schema.INPUT_IDS, schema.POSITION, schema.VIEW_PARAMS, schema.VIEW):
        first = parts[0].array(name)
        if first is None:
            continue
        for part, store in zip(parts[1:], stores[1:], strict=True):
            differ = np.flatnonzero((part.arrays[name] != first).reshape(len(first), -1).any(1))
            if len(differ):
                raise MismatchError(
                    f"cannot combine {stores[0].path!r} with {store.path!r}: per-row {name} "
                    f"differs (first at row {parts[0].start + int(differ[0])}); they were not "
                    f"made from the same token sequences or views"
                )
        out[name] = first
    return out


def _token_diffs(a: StoreReader, b: StoreReader) -> list[str]:
    """How the ``tokens`` attributes of two stores differ: one a token store and the other
    not, or each TokenSpec field that differs."""
    ta, tb = a.meta.tokens, b.meta.tokens
    if (ta is None) != (tb is None):
        token, other = (a, b) if ta is not None else (b, a)
        return [f"{token.path!r} is a token store and {other.path!r} is not"]
    if ta is None or tb is None or ta == tb:
        return []
    return [
        f"tokens.{f.name} differs ({getattr(ta, f.name)!r} vs {getattr(tb, f.name)!r})"
        for f in fields(ta)
        if getattr(ta, f.name) != getattr(tb, f.name)
    ]


def _members(rows: Rows) -> np.ndarray:
    return rows.member_logits if rows.member_logits is not None else rows.logits[:, None, :]


def _verified_chunks(source: StoreReader) -> Iterator[Rows]:
    for chunk in range(source.meta.num_chunks):
        yield source.read_verified_chunk(chunk)


def _pool_sparse(parts: list[Rows], start: int) -> Rows:
    """Sparse rows with the same ids in every part: their members side by side (each part's
    member tails only: a geometric input's tail of its own mean logits is not a member's)."""
    pooled = {schema.ID_GAPS: parts[0].arrays[schema.ID_GAPS]}
    members = [p.arrays[schema.VALUES].shape[1] for p in parts]
    pooled[schema.TAIL] = np.concatenate(
        [p.arrays[schema.TAIL][:, :m] for p, m in zip(parts, members, strict=True)], axis=1
    )
    for name in (schema.VALUES, schema.VALUE_OFFSETS):
        if name in parts[0].arrays:
            pooled[name] = np.concatenate([p.arrays[name] for p in parts], axis=1)
    pooled[schema.SAMPLE_INDEX] = parts[0].sample_index
    pooled[schema.LABELS] = np.max(np.stack([p.labels for p in parts]), axis=0)
    return Rows(pooled, start)


def _check_sparse_combinable(
    stores: list[StoreReader], combine: str, sparse: SparseSpec | None
) -> None:
    """Pooling sparse stores is exact only when every row has the same ids in every input and
    nothing depends on the ensemble's weights: an arithmetic ensemble of top-k stores made with
    the same options. Anything else is refused, with what to do instead."""
    specs = {st.meta.sparse for st in stores}
    why = None
    if None in specs:
        why = "some inputs are dense and some sparse"
    elif len(specs) > 1:
        why = "the inputs were sparsified with different options"
    elif combine != schema.COMBINE_ARITHMETIC:
        why = "a geometric ensemble needs the tail of its mean logits, which no input holds"
    elif next(iter(specs)).sample:  # type: ignore[union-attr]
        why = "sampled ids and their probabilities depend on each input's own ranking"
    elif sparse is not None and sparse not in specs:
        why = "--top-k options differ from the inputs' own"
    else:
        for chunk in range(stores[0].meta.num_chunks):
            start, stop = stores[0].meta.chunk_bounds(chunk)
            ids = [st.read(start, stop).arrays[schema.ID_GAPS] for st in stores]
            if any(not np.array_equal(ids[0], other) for other in ids[1:]):
                why = f"the inputs keep different ids (first in rows [{start}, {stop}))"
                break
    if why:
        raise MismatchError(
            f"cannot pool these sparse stores exactly: {why}. Combine the dense stores and "
            f"sparsify the result (--top-k), or generate the ensemble in one run"
        )


def _check_combinable(stores: list[StoreReader]) -> None:
    a = stores[0]
    for b in stores[1:]:
        diffs = _token_diffs(a, b)
        if b.meta.views != a.meta.views:  # same policy, seed and V: then the same view_params
            diffs.append("views attributes differ (views stores combine only with the same views)")
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
