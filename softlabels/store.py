"""The store API: the seam between stage one and stage two.

``open_store`` returns a ``StoreReader``; ``StoreWriter`` creates, resumes and finalises a
store. Both speak to one of two private backends (Zarr v3 directory, HDF5 file) with the same
logical layout, described in FORMAT.md and named in ``softlabels.schema``.

Commit protocol (what makes resume and concurrent writers safe): a chunk's rows are written to
every array first; only then is its SHA-256 written to its own row of the commit journal
``_chunk_commits``. A chunk without a journal entry is not committed and is rewritten on resume.
Each journal row is its own Zarr chunk, so processes writing disjoint chunk ranges never touch
the same file. ``finalize`` copies the journal into the ``checksums`` attribute, deletes the
journal, and writes ``complete = true`` last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from softlabels import faults, schema
from softlabels.errors import (
    ChecksumError,
    IncompleteStoreError,
    MismatchError,
    StoreExistsError,
    StoreFormatError,
    StoreNotFoundError,
)
from softlabels.schema import StoreMeta

ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")
_DIGEST_BYTES = 32


@dataclass(frozen=True)
class Rows:
    """A contiguous block of store rows [start, stop). Arrays are numpy, as stored."""

    start: int
    logits: np.ndarray  # (R, C)
    member_logits: np.ndarray | None  # (R, M, C), or None for a single teacher
    sample_index: np.ndarray  # (R,) int64
    labels: np.ndarray  # (R,) int64, -1 where unknown

    @property
    def stop(self) -> int:
        return self.start + len(self.logits)


def store_kind(path: str | os.PathLike[str]) -> str:
    """'zarr' or 'hdf5', from the path's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise StoreFormatError(
        f"cannot tell the store type of {str(path)!r}: the path must end in .zarr (Zarr v3 "
        f"directory) or .h5/.hdf5 (HDF5 file)"
    )


def chunk_checksum(rows: Rows) -> str:
    """Hex SHA-256 over the chunk's arrays in CHECKSUM_ORDER, little-endian C-order bytes."""
    h = hashlib.sha256()
    for name in schema.CHECKSUM_ORDER:
        arr = _rows_array(rows, name)
        if arr is not None:
            h.update(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _rows_array(rows: Rows, name: str) -> np.ndarray | None:
    return {
        schema.LOGITS: rows.logits,
        schema.MEMBER_LOGITS: rows.member_logits,
        schema.SAMPLE_INDEX: rows.sample_index,
        schema.LABELS: rows.labels,
    }[name]


# --------------------------------------------------------------------------------------------
# Backends: the only code that knows Zarr or h5py.


class _ZarrBackend:
    def __init__(self, path: str, mode: str) -> None:
        import zarr

        self._zarr = zarr
        if mode == "r" and not is_url(path):
            check_contained(path)
        try:
            # use_consolidated=False: zarr.json files are the only metadata; remote reads open
            # each node's zarr.json by name and never need a directory listing.
            self.group = zarr.open_group(path, mode=mode, use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreNotFoundError(f"no Zarr store at {path!r}") from exc
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            raise StoreFormatError(f"{path!r} is not a readable Zarr v3 group: {exc}") from exc
        except OSError as exc:
            raise StoreNotFoundError(f"cannot open the Zarr store at {path!r}: {exc}") from exc
        self.path = path
        self._arrays: dict[str, Any] = {}  # opening an array reads its zarr.json: do it once

    def _array(self, name: str) -> Any:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def update_attrs(self, values: dict[str, Any]) -> None:
        self.group.attrs.update(values)

    def has(self, name: str) -> bool:
        try:  # a direct lookup of NAME/zarr.json: no listing, so it works over HTTP too
            node = self._array(name)
        except KeyError:
            return False
        return isinstance(node, self._zarr.Array)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._array(name).shape)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._array(name).dtype)

    def chunk_rows(self, name: str) -> int:
        return int(self._array(name).chunks[0])

    def create(
        self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, compress: bool
    ) -> None:
        from zarr.codecs import BloscCodec

        compressors = [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")] if compress else None
        self.group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, compressors=compressors, fill_value=0
        )

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array(name)[start:stop])

    def read_many(self, names: list[str], start: int, stop: int) -> list[np.ndarray]:
        """Rows [start, stop) of several arrays, fetched concurrently on Zarr's event loop (one
        round trip instead of one per array: a third less time locally, more over a network)."""
        import asyncio

        from zarr.core.sync import sync

        async def fetch() -> list[Any]:
            rows = slice(start, stop)
            return await asyncio.gather(*(self._array(n).async_array.getitem(rows) for n in names))

        return [np.asarray(a) for a in sync(fetch())]

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        self._array(name)[start : start + len(data)] = data

    def delete(self, name: str) -> None:
        self._arrays.pop(name, None)
        del self.group[name]

    def flush(self) -> None:
        pass  # every Zarr write is its own file, complete when write() returns

    def close(self) -> None:
        pass

    def nbytes_on_disk(self) -> int | None:
        if is_url(self.path):
            return None  # remote stores are not listed
        return sum(p.stat().st_size for p in Path(self.path).rglob("*") if p.is_file())


class _HDF5Backend:
    def __init__(self, path: str, mode: str) -> None:
        import h5py

        if mode == "r" and not os.path.isfile(path):
            raise StoreNotFoundError(f"no HDF5 store at {path!r}")
        try:
            self.file = h5py.File(path, {"r": "r", "r+": "r+", "w": "w-"}[mode])
        except FileExistsError as exc:
            raise StoreExistsError(f"{path!r} already exists") from exc
        except OSError as exc:
            raise StoreFormatError(
                f"{path!r} is not a readable HDF5 file ({exc}); if it was being written when the "
                f"writer died, HDF5 cannot recover it: regenerate with --overwrite"
            ) from exc
        self.path = path

    def attrs(self) -> dict[str, Any]:
        # Materialise first: h5py's items() generator holds its global lock while suspended, so
        # abandoning it half-way (a decode error below) would deadlock the next h5py call.
        raw = list(self.file.attrs.items())
        return {k: schema.decode_h5_attr(k, v) for k, v in raw}

    def update_attrs(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.file.attrs[key] = schema.encode_h5_attr(value)
        self.file.flush()

    def has(self, name: str) -> bool:
        import h5py

        return isinstance(self.file.get(name), h5py.Dataset)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.file[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self.file[name].dtype)

    def chunk_rows(self, name: str) -> int:
        chunks = self.file[name].chunks
        return int(chunks[0]) if chunks else int(self.file[name].shape[0])

    def create(
        self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, compress: bool
    ) -> None:
        opts: dict[str, Any] = (
            {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compress else {}
        )
        chunks = tuple(
            max(1, min(c, n)) for c, n in zip(chunks, shape, strict=True)
        )  # HDF5 caps chunks at shape
        self.file.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fillvalue=0, **opts)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.file[name][start:stop])

    def read_many(self, names: list[str], start: int, stop: int) -> list[np.ndarray]:
        return [self.read(n, start, stop) for n in names]

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        self.file[name][start : start + len(data)] = data

    def delete(self, name: str) -> None:
        del self.file[name]

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def nbytes_on_disk(self) -> int:
        return os.path.getsize(self.path)


def check_contained(path: str) -> None:
    """Refuse a Zarr directory with oversized metadata or links that lead outside it: a shared
    store must not make a reader open (or a writer touch) files elsewhere on the machine."""
    root = Path(path)
    meta_file = root / "zarr.json"
    if meta_file.is_file() and meta_file.stat().st_size > schema.MAX_ATTRS_BYTES:
        raise StoreFormatError(
            f"{path!r}: zarr.json is {meta_file.stat().st_size:,} bytes, over the "
            f"{schema.MAX_ATTRS_BYTES:,}-byte limit for store metadata; refusing to parse it"
        )
    real_root = root.resolve()
    for p in root.rglob("*"):
        if p.is_symlink() and not p.resolve().is_relative_to(real_root):
            raise StoreFormatError(
                f"{path!r} contains a link {str(p.relative_to(root))!r} pointing outside the store "
                f"({p.resolve()}); refusing to read it"
            )


def is_url(path: str | os.PathLike[str]) -> bool:
    """fsspec-style URLs (http://, s3://, memory://, ...) as opposed to local paths."""
    return "://" in str(path)


def _backend(path: str | os.PathLike[str], mode: str) -> _ZarrBackend | _HDF5Backend:
    kind = store_kind(path)
    if is_url(path) and kind != "zarr":
        raise StoreFormatError(
            f"{str(path)!r}: remote stores must be Zarr (one object per chunk); convert the HDF5 "
            f"file with `softlabels convert` and publish the .zarr"
        )
    if mode == "r" and not is_url(path) and not os.path.exists(path):
        raise StoreNotFoundError(
            f"no store at {str(path)!r}: check the path, or create it with `softlabels generate`"
        )
    cls = _ZarrBackend if kind == "zarr" else _HDF5Backend
    return cls(str(path), mode)


# --------------------------------------------------------------------------------------------
# Reading.


class StoreReader:
    """A validated, read-only view of a store. Use ``open_store`` to get one."""

    def __init__(self, backend: _ZarrBackend | _HDF5Backend, meta: StoreMeta) -> None:
        self._b = backend
        self.meta = meta
        self.path = backend.path
        self._committed: np.ndarray | None = None
        self._has_members = backend.has(schema.MEMBER_LOGITS)

    # -- context manager
    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    @property
    def kind(self) -> str:
        return store_kind(self.path)

    @property
    def has_members(self) -> bool:
        return self._has_members

    def array_shapes(self) -> dict[str, tuple[int, ...]]:
        names = [n for n in schema.CHECKSUM_ORDER if self._b.has(n)]
        return {n: self._b.shape(n) for n in names}

    def nbytes_on_disk(self) -> int:
        return self._b.nbytes_on_disk()

    def committed_chunks(self) -> np.ndarray:
        """(n_chunks,) bool: all True for a complete store; from the journal otherwise."""
        if self.meta.complete:
            return np.ones(self.meta.num_chunks, dtype=bool)
        if self._committed is None:
            self._committed = _journal_committed(self._b, self.meta)
        return self._committed

    def read(self, start: int, stop: int) -> Rows:
        """Rows [start, stop). For an incomplete store every touched chunk must be committed."""
        n = self.meta.num_samples
        if not 0 <= start <= stop <= n:
            raise IndexError(f"row range [{start}, {stop}) is outside the store's {n} rows")
        if not self.meta.complete:
            first, last = (
                start // self.meta.chunk_rows,
                max(start, stop - 1) // self.meta.chunk_rows,
            )
            pending = [c for c in range(first, last + 1) if not self.committed_chunks()[c]]
            if pending and stop > start:
                raise IncompleteStoreError(
                    f"rows [{start}, {stop}) touch uncommitted chunks {pending}"
                )
        names = [n for n in schema.CHECKSUM_ORDER if n != schema.MEMBER_LOGITS or self.has_members]
        try:
            arrays = dict(zip(names, self._b.read_many(names, start, stop), strict=True))
            return Rows(
                start=start,
                logits=arrays[schema.LOGITS],
                member_logits=arrays.get(schema.MEMBER_LOGITS),
                sample_index=arrays[schema.SAMPLE_INDEX],
                labels=arrays[schema.LABELS],
            )
        except Exception as exc:  # codec or I/O failure inside zarr/h5py: the bytes are bad
            raise StoreFormatError(
                f"cannot decode rows [{start}, {stop}) of {self.path!r} ({type(exc).__name__}: {exc}); "
                f"the store is corrupt: run `softlabels verify` and regenerate it"
            ) from exc

    def read_chunk(self, chunk: int) -> Rows:
        return self.read(*self.meta.chunk_bounds(chunk))

    def read_verified_chunk(self, chunk: int) -> Rows:
        """A chunk whose bytes match its checksum (its journal entry, for an incomplete store
        opened with allow_incomplete) and whose logits are all finite; raises otherwise."""
        rows = self.read_chunk(chunk)
        if self.meta.checksums is not None:
            expected = self.meta.checksums[chunk]
        else:
            expected = bytes(self._b.read(schema.COMMIT_JOURNAL, chunk, chunk + 1)[0]).hex()
        if chunk_checksum(rows) != expected:
            raise ChecksumError(
                f"chunk {chunk} of {self.path!r} does not match its checksum: the store is corrupt; "
                f"run `softlabels verify` and regenerate it"
            )
        bad = _nonfinite_rows(rows)
        if bad:
            raise StoreFormatError(f"{self.path!r} holds NaN or Inf logits at rows {bad[:10]}")
        return rows

    def iter_chunks(self) -> Iterator[Rows]:
        for chunk in range(self.meta.num_chunks):
            yield self.read_chunk(chunk)

    def sample_index(self) -> np.ndarray:
        """The whole (N,) sample_index, checked to be a permutation of 0..N-1."""
        index = self._b.read(schema.SAMPLE_INDEX, 0, self.meta.num_samples)
        check_sample_index(index, self.meta.num_samples)
        return index

    def labels(self) -> np.ndarray:
        return self._b.read(schema.LABELS, 0, self.meta.num_samples)

    def verify_checksums(self) -> list[int]:
        """Indices of chunks whose data no longer matches the recorded checksum (or cannot be
        decoded at all)."""
        return self.scan_chunks()[0]

    def scan_chunks(self) -> tuple[list[int], list[int]]:
        """One pass over every chunk: (chunks failing their checksum or undecodable, the first
        rows holding NaN or Inf logits)."""
        if self.meta.checksums is None:
            raise IncompleteStoreError("store has no checksums yet: it was never finalised")
        bad_sums: list[int] = []
        bad_rows: list[int] = []
        for chunk in range(self.meta.num_chunks):
            try:
                rows = self.read_chunk(chunk)
            except StoreFormatError:
                bad_sums.append(chunk)
                continue
            if chunk_checksum(rows) != self.meta.checksums[chunk]:
                bad_sums.append(chunk)
            bad_rows += _nonfinite_rows(rows)[: 10 - len(bad_rows)]
        return bad_sums, bad_rows


def _nonfinite_rows(rows: Rows) -> list[int]:
    """Store rows of ``rows`` whose logits or member logits hold NaN or Inf."""
    finite = np.isfinite(rows.logits).all(1)
    if rows.member_logits is not None:
        finite &= np.isfinite(rows.member_logits).all((1, 2))
    return (np.flatnonzero(~finite) + rows.start).tolist()


def check_sample_index(index: np.ndarray, num_samples: int) -> None:
    if index.shape != (num_samples,):
        raise StoreFormatError(f"sample_index has shape {index.shape}, expected ({num_samples},)")
    if len(index) and (index.min() < 0 or index.max() >= num_samples):
        bad = np.flatnonzero((index < 0) | (index >= num_samples))[:10]
        raise StoreFormatError(
            f"sample_index is out of range [0, {num_samples}) at rows {bad.tolist()}"
        )
    counts = np.bincount(index, minlength=num_samples)
    if (counts != 1).any():
        dup = np.flatnonzero(counts > 1)[:10]
        raise StoreFormatError(f"sample_index repeats transfer positions {dup.tolist()}")


def open_store(path: str | os.PathLike[str], *, allow_incomplete: bool = False) -> StoreReader:
    """Open and validate a store. Refuses incomplete stores unless ``allow_incomplete``."""
    backend = _backend(path, "r")
    try:
        meta = StoreMeta.from_attrs(backend.attrs())
        _check_arrays(backend, meta)
        if not meta.complete and not allow_incomplete:
            raise IncompleteStoreError(
                f"store {str(path)!r} is not complete (its writer did not finish); finish it with "
                f"`softlabels generate ... --resume`, or pass allow_incomplete to read committed chunks"
            )
    except Exception:
        backend.close()
        raise
    return StoreReader(backend, meta)


def _check_arrays(backend: _ZarrBackend | _HDF5Backend, meta: StoreMeta) -> None:
    n, c, m = meta.num_samples, meta.num_classes, meta.num_members
    expected: dict[str, tuple[tuple[int, ...], str]] = {
        schema.LOGITS: ((n, c), meta.dtype),
        schema.SAMPLE_INDEX: ((n,), "int64"),
        schema.LABELS: ((n,), "int64"),
    }
    if m > 1:
        expected[schema.MEMBER_LOGITS] = ((n, m, c), meta.dtype)
    elif backend.has(schema.MEMBER_LOGITS):
        raise StoreFormatError("store has member_logits but lists a single teacher")
    for name, (shape, dtype) in expected.items():
        if not backend.has(name):
            raise StoreFormatError(f"store is missing the array {name!r}")
        if backend.shape(name) != shape:
            raise StoreFormatError(
                f"array {name!r} has shape {backend.shape(name)}, expected {shape}"
            )
        if backend.dtype(name) != np.dtype(dtype):
            raise StoreFormatError(
                f"array {name!r} has dtype {backend.dtype(name)}, expected {dtype}"
            )


def _journal_committed(backend: _ZarrBackend | _HDF5Backend, meta: StoreMeta) -> np.ndarray:
    if not backend.has(schema.COMMIT_JOURNAL):
        # no journal: either never written, or deleted inside finalize after checksums were set
        return np.full(meta.num_chunks, meta.checksums is not None, dtype=bool)
    journal = backend.read(schema.COMMIT_JOURNAL, 0, meta.num_chunks)
    return journal.any(axis=1)


# --------------------------------------------------------------------------------------------
# Writing.


class StoreWriter:
    """Creates or resumes a store, commits chunks, and finalises it.

    Several processes may hold a writer on one Zarr store at once (see ``attach``), each writing
    a disjoint set of chunks; exactly one of them calls ``finalize`` after all have committed.
    """

    def __init__(self, backend: _ZarrBackend | _HDF5Backend, meta: StoreMeta) -> None:
        self._b = backend
        self.meta = meta
        self.path = backend.path

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        meta: StoreMeta,
        *,
        compress: bool = True,
        overwrite: bool = False,
    ) -> StoreWriter:
        if os.path.exists(path):
            if not overwrite:
                raise StoreExistsError(
                    f"{str(path)!r} already exists; pass --overwrite to replace it, or --resume to "
                    f"finish an interrupted run"
                )
            remove_store(path)
        meta = replace(meta, complete=False, checksums=None)
        meta.validate()
        backend = _backend(path, "w")
        try:
            backend.update_attrs(meta.to_attrs())
            n, c, m, rows = meta.num_samples, meta.num_classes, meta.num_members, meta.chunk_rows
            backend.create(schema.LOGITS, (n, c), (rows, c), meta.dtype, compress)
            if m > 1:
                backend.create(schema.MEMBER_LOGITS, (n, m, c), (rows, m, c), meta.dtype, compress)
            backend.create(schema.SAMPLE_INDEX, (n,), (rows,), "int64", compress)
            backend.create(schema.LABELS, (n,), (rows,), "int64", compress)
            backend.create(
                schema.COMMIT_JOURNAL,
                (meta.num_chunks, _DIGEST_BYTES),
                (1, _DIGEST_BYTES),
                "uint8",
                False,
            )
            backend.flush()
        except Exception:
            backend.close()
            remove_store(path)  # never leave a half-created store behind
            raise
        return cls(backend, meta)

    @classmethod
    def attach(
        cls, path: str | os.PathLike[str], meta: StoreMeta, *, verify: bool = True
    ) -> StoreWriter:
        """Open an existing incomplete store for writing; its metadata must match ``meta``.

        Committed chunks whose data no longer matches their journal entry are un-committed, so
        they are rewritten.
        """
        if not is_url(path) and not os.path.exists(path):
            raise StoreNotFoundError(f"nothing to resume at {str(path)!r}; run without --resume")
        backend = _backend(path, "r+")
        try:
            existing = StoreMeta.from_attrs(backend.attrs())
            if existing.complete:
                raise StoreExistsError(
                    f"{str(path)!r} is already complete; nothing to resume (use --overwrite to regenerate)"
                )
            _check_same_run(existing, meta)
            _check_arrays(backend, existing)
            if not backend.has(schema.COMMIT_JOURNAL):
                _restore_journal(backend, existing)
        except Exception:
            backend.close()
            raise
        writer = cls(backend, existing)
        if verify:  # one process verifies; in a process group the other ranks skip it
            writer._drop_corrupt_commits()
        return writer

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    def committed(self) -> np.ndarray:
        return _journal_committed(self._b, self.meta)

    def pending_chunks(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.committed())]

    def write_chunk(self, chunk: int, rows: Rows) -> str:
        """Write one whole chunk, then commit it. Returns its checksum."""
        start, stop = self.meta.chunk_bounds(chunk)
        if rows.start != start or rows.stop != stop:
            raise ValueError(
                f"chunk {chunk} spans rows [{start}, {stop}), got [{rows.start}, {rows.stop})"
            )
        rows = self._cast(rows)
        for name in schema.CHECKSUM_ORDER:
            arr = _rows_array(rows, name)
            if arr is not None:
                self._b.write(name, start, arr)
                faults.point("chunk_array")
        digest = chunk_checksum(rows)
        self._b.flush()
        faults.point("chunk_data_written")
        self._b.write(
            schema.COMMIT_JOURNAL, chunk, np.frombuffer(bytes.fromhex(digest), np.uint8)[None]
        )
        self._b.flush()
        faults.point("chunk_committed")
        return digest

    def finalize(self) -> StoreMeta:
        """Copy the journal into ``checksums``, drop it, and set ``complete`` last."""
        journal = self._b.read(schema.COMMIT_JOURNAL, 0, self.meta.num_chunks)
        missing = np.flatnonzero(~journal.any(axis=1))
        if len(missing):
            raise IncompleteStoreError(
                f"cannot finalise: chunks {missing[:20].tolist()} are not committed"
            )
        checksums = tuple(bytes(row).hex() for row in journal)
        self._b.update_attrs({schema.ATTR_CHECKSUMS: list(checksums)})
        faults.point("finalize_checksums")
        self._b.delete(schema.COMMIT_JOURNAL)
        self._b.flush()
        faults.point("finalize_journal_deleted")
        self._b.update_attrs({schema.ATTR_COMPLETE: True})
        self.meta = replace(self.meta, checksums=checksums, complete=True)
        return self.meta

    def _cast(self, rows: Rows) -> Rows:
        dtype = np.dtype(self.meta.dtype)
        members = (
            None if rows.member_logits is None else rows.member_logits.astype(dtype, copy=False)
        )
        return replace(
            rows,
            logits=rows.logits.astype(dtype, copy=False),
            member_logits=members if self.meta.num_members > 1 else None,
            sample_index=rows.sample_index.astype(np.int64, copy=False),
            labels=rows.labels.astype(np.int64, copy=False),
        )

    def _drop_corrupt_commits(self) -> None:
        reader = StoreReader(self._b, self.meta)
        for chunk in np.flatnonzero(self.committed()):
            start, stop = self.meta.chunk_bounds(int(chunk))
            expected = bytes(
                self._b.read(schema.COMMIT_JOURNAL, int(chunk), int(chunk) + 1)[0]
            ).hex()
            try:
                ok = chunk_checksum(reader.read(start, stop)) == expected
            except Exception:  # undecodable chunk bytes: rewrite it
                ok = False
            if not ok:
                self._b.write(
                    schema.COMMIT_JOURNAL, int(chunk), np.zeros((1, _DIGEST_BYTES), np.uint8)
                )
        self._b.flush()


def _restore_journal(backend: _ZarrBackend | _HDF5Backend, meta: StoreMeta) -> None:
    """A writer killed inside ``finalize`` after deleting the journal left every chunk committed
    and the digests in ``checksums``: rebuild the journal from them (``attach`` then re-verifies
    every chunk against it)."""
    if meta.checksums is None:
        raise StoreFormatError(
            f"{backend.path!r} has neither a commit journal nor checksums; regenerate it with --overwrite"
        )
    backend.create(
        schema.COMMIT_JOURNAL, (meta.num_chunks, _DIGEST_BYTES), (1, _DIGEST_BYTES), "uint8", False
    )
    journal = np.stack([np.frombuffer(bytes.fromhex(c), np.uint8) for c in meta.checksums])
    for chunk, row in enumerate(journal):
        backend.write(schema.COMMIT_JOURNAL, chunk, row[None])
    backend.flush()


_RESUME_FIELDS = (
    "num_samples",
    "num_classes",
    "class_names",
    "combine",
    "weights",
    "teachers",
    "transfer",
    "dtype",
    "chunk_rows",
)


def _check_same_run(existing: StoreMeta, wanted: StoreMeta) -> None:
    diffs = [
        f"{f}: store has {getattr(existing, f)!r}, this run has {getattr(wanted, f)!r}"
        for f in _RESUME_FIELDS
        if getattr(existing, f) != getattr(wanted, f)
    ]
    if diffs:
        raise MismatchError(
            "cannot resume: the existing store was written by a different run ("
            + "; ".join(diffs)
            + "). Use --overwrite to start again."
        )


def remove_store(path: str | os.PathLike[str]) -> None:
    """Delete a store, but only something that is recognisably a soft-label store."""
    path = Path(path)
    try:
        backend = _backend(path, "r")
        fmt = backend.attrs().get(schema.ATTR_FORMAT)
        backend.close()
    except Exception:
        fmt = None
    if fmt != schema.FORMAT_NAME:
        raise StoreExistsError(
            f"{str(path)!r} exists but is not a soft-label store; refusing to delete it. Remove it "
            f"yourself or choose another --out"
        )
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
