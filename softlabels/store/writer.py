"""Writing a store: create it atomically, commit chunks, finalise.

Commit protocol (what makes resume and concurrent writers safe): a chunk's rows are written to
every array first; only then is its SHA-256 written to its own row of the commit journal
``_chunk_commits``. A chunk without a journal entry is not committed and is rewritten on resume.
Each journal row is its own Zarr chunk, so processes writing disjoint chunk ranges never touch
the same file. ``finalize`` copies the journal into the ``checksums`` attribute, deletes the
journal, and writes ``complete = true`` last.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from softlabels import faults, schema
from softlabels.errors import (
    IncompleteStoreError,
    MismatchError,
    StoreExistsError,
    StoreFormatError,
    StoreNotFoundError,
    TeacherError,
)
from softlabels.schema import StoreMeta
from softlabels.schema.digest import ATTR_ATTRIBUTES_SHA256, attributes_digest
from softlabels.schema.provenance import LAZY_SHA256
from softlabels.sparse.device import sparsify_torch
from softlabels.store import backends
from softlabels.store.lease import WriterLease
from softlabels.store.metadata import Backend, journal_committed, read_meta
from softlabels.store.reader import StoreReader
from softlabels.store.rows import Rows, chunk_checksum

# Fields two runs must share for one to resume (or be a no-op repeat of) the other.
RUN_FIELDS = (
    "num_samples",
    "num_classes",
    "class_names",
    "combine",
    "weights",
    "teachers",
    "transfer",
    "dtype",
    "chunk_rows",
    "runtime",
    "sparse",
    "tokens",
    "views",
)


class StoreWriter:
    """Creates or resumes a store, commits chunks, and finalises it.

    Several processes may hold a writer on one Zarr store at once (see ``attach``), each writing
    a disjoint set of chunks; exactly one of them calls ``finalize`` after all have committed.
    """

    def __init__(self, backend: Backend, meta: StoreMeta, lease: WriterLease | None) -> None:
        self._b = backend
        self.meta = meta
        self.path = backend.path  # where this writer writes
        self.target = backend.path  # where the store is published: path, or the store it replaces
        self.created = False  # True when this writer created the store (not resumed it)
        self.lease = lease  # None for a rank joining the writer that holds it

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        meta: StoreMeta,
        *,
        compress: bool = True,
        overwrite: bool = False,
        tool: str = "generate",
        lease: WriterLease | None = None,
    ) -> StoreWriter:
        """A new, empty, incomplete store at ``path``, built under a staging name and moved
        into place whole, so no reader or writer ever sees it half-created.

        ``tool`` names the command that writes it (``generate``, ``generate-lm``, ``combine``,
        ``convert``), recorded on the commit journal so that a reader of the store, should the
        writer die, says how to finish it. ``lease``: the store's writer lease, already taken;
        None takes it here (without waiting). The writer gives it back at ``finalize``/``close``.
        """
        meta = replace(meta, complete=False, checksums=None, attributes_sha256=None)
        meta.validate()
        _refuse_unhashed_teachers(meta)
        target = str(path)
        lease = lease or WriterLease.acquire(target)
        try:
            if backends.exists(path):
                if not overwrite:
                    raise StoreExistsError(
                        f"{target!r} already exists; pass overwrite=True to replace it"
                    )
                backends.check_is_store(path)  # never replace what is not a soft-label store
                path = backends.replacement_path(path)  # built beside it; swapped in at finalize
                if backends.exists(path):  # left by an earlier replacement that failed
                    backends.remove_store(path)
            _build(backends.staging_path(path), path, meta, compress=compress, tool=tool)
            writer = cls(backends.open_backend(path, "r+"), meta, lease)
        except BaseException:
            lease.release()
            raise
        writer.created = True
        writer.target = target
        return writer

    @classmethod
    def attach(
        cls,
        path: str | os.PathLike[str],
        meta: StoreMeta,
        *,
        verify: bool = True,
        lease: WriterLease | None = None,
        joined: bool = False,
    ) -> StoreWriter:
        """Open an existing incomplete store for writing; its metadata must match ``meta``.

        Committed chunks whose data no longer matches their journal entry are un-committed, so
        they are rewritten. ``lease`` as for ``create``; ``joined``: this process joins a writer
        that holds the lease (another rank of one distributed run), and takes none.
        """
        if not joined:
            lease = lease or WriterLease.acquire(path)
        try:
            if not backends.exists(path):
                raise StoreNotFoundError(f"nothing to resume at {str(path)!r}")
            backend = backends.open_backend(path, "r+")
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        try:
            existing = StoreMeta.from_attrs(backend.attrs())
            if existing.complete:
                raise StoreExistsError(f"{str(path)!r} is already complete; nothing to resume")
            check_same_run(existing, meta)
            if not backend.has(schema.COMMIT_JOURNAL):
                _restore_journal(backend, existing)
            read_meta(backend)  # every array is there, with its shape and dtype
        except BaseException:
            backend.close()
            if lease is not None:
                lease.release()
            raise
        writer = cls(backend, existing, lease)
        if verify:  # one process verifies; in a process group the other ranks skip it
            writer._drop_corrupt_commits()
        return writer

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store and give back the lease (the store stays as it is: resumable)."""
        self._b.close()
        if self.lease is not None:
            self.lease.release()

    def discard(self) -> None:
        """Delete the store this writer writes (a new store, or the replacement beside an old
        one) before giving back the lease: for a run that failed and cannot be resumed."""
        self._b.close()
        try:
            backends.remove_store(self.path)
        finally:
            self.close()

    def committed(self) -> np.ndarray:
        return journal_committed(self._b, self.meta)

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
        for name, arr in rows.arrays.items():
            self._b.write(name, start, arr)
            faults.point("chunk_array")
        digest = chunk_checksum(rows)
        self._b.flush()
        faults.point("chunk_data_written")
        entry = np.frombuffer(bytes.fromhex(digest), np.uint8)[None]
        self._b.write(schema.COMMIT_JOURNAL, chunk, entry)
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
        digest = attributes_digest(self._b.attrs())  # all but itself and complete
        self._b.update_attrs({ATTR_ATTRIBUTES_SHA256: digest})
        self._b.update_attrs({schema.ATTR_COMPLETE: True})
        self.meta = replace(self.meta, checksums=checksums, complete=True, attributes_sha256=digest)
        if self.target != self.path:  # a complete replacement: only now does the old one go
            self._b.close()
            faults.point("replace_complete")
            backends.swap_in(self.path, self.target)
            self.path = self.target
            self._b = backends.open_backend(self.path, "r")
        if self.lease is not None:
            self.lease.release()  # complete (and swapped in): another writer may come
        return self.meta

    def _cast(self, rows: Rows) -> Rows:
        """Exactly the layout's arrays, in their dtypes. A sparse store given dense rows keeps
        their sparse form (``softlabels.sparse.device``, on the CPU here: the definitions of
        ``softlabels.sparse.select``), computed the same way every time."""
        sp = self.meta.sparse
        if sp is not None and not rows.is_sparse:
            members = rows.all_member_logits()
            if members.shape[1] != self.meta.num_members:
                raise ValueError(
                    f"a sparse store keeps every member's logits: give member_logits of "
                    f"{self.meta.num_members} members, not {members.shape[1]}"
                )
            arrays = sparsify_torch(
                torch.from_numpy(members.astype(np.float32, copy=False)),
                rows.sample_index,
                weights=self.meta.weights,
                combine=self.meta.combine,
                spec=sp,
                dtype=self.meta.dtype,
            )
            rows = rows.replace(**arrays)
        if rows.is_sparse and sp is None:
            raise ValueError("sparse rows cannot be written to a dense store")
        arrays = {}
        for spec in schema.array_layout(self.meta):
            arr = rows.array(spec.name)
            if arr is None:
                raise ValueError(f"the rows have no {spec.name!r} array, which this store needs")
            if arr.shape[1:] != spec.shape[1:]:
                raise ValueError(
                    f"rows of {spec.name!r} have shape {arr.shape[1:]}, this store's "
                    f"{spec.shape[1:]}"
                )
            arrays[spec.name] = arr.astype(spec.dtype, copy=False)
        return Rows(arrays, rows.start)

    def _drop_corrupt_commits(self) -> None:
        reader = StoreReader(self._b, self.meta, allow_incomplete=True)
        zero = np.zeros((1, schema.DIGEST_BYTES), np.uint8)
        for chunk in map(int, np.flatnonzero(self.committed())):
            expected = bytes(self._b.read(schema.COMMIT_JOURNAL, chunk, chunk + 1)[0]).hex()
            try:
                ok = chunk_checksum(reader.read_chunk(chunk)) == expected
            except Exception:  # undecodable chunk bytes: rewrite it
                ok = False
            if not ok:
                self._b.write(schema.COMMIT_JOURNAL, chunk, zero)
        self._b.flush()


def _build(staging: str, path: str, meta: StoreMeta, *, compress: bool, tool: str) -> None:
    """Create the whole empty store under ``staging``, then move it to ``path``."""
    backend = backends.open_backend(staging, "w")
    try:
        backend.update_attrs(meta.to_attrs())
        for spec in schema.array_layout(meta, journal=True):
            backend.create(spec, compress)
        backend.set_array_attr(schema.COMMIT_JOURNAL, schema.JOURNAL_TOOL, tool)
        backend.flush()
        backend.close()
        faults.point("create_staged")
        backends.publish(staging, path)
    except BaseException:
        backend.close()
        backends.discard(staging)
        raise


def _restore_journal(backend: Backend, meta: StoreMeta) -> None:
    """A writer killed inside ``finalize`` after deleting the journal left every chunk committed
    and the digests in ``checksums``: rebuild the journal from them (``attach`` then re-verifies
    every chunk against it)."""
    if meta.checksums is None:
        raise StoreFormatError(
            f"{backend.path!r} has neither a commit journal nor checksums; it cannot be resumed: "
            f"regenerate it, replacing it (overwrite=True)"
        )
    journal_spec = schema.array_layout(meta, journal=True)[-1]
    backend.create(journal_spec, False)
    for chunk, digest in enumerate(meta.checksums):
        backend.write(
            schema.COMMIT_JOURNAL, chunk, np.frombuffer(bytes.fromhex(digest), np.uint8)[None]
        )
    backend.flush()


def check_same_run(existing: StoreMeta, wanted: StoreMeta) -> None:
    """Raise MismatchError naming every run field in which two stores' metadata differ, down to
    the differing leaf (``teachers[0].sha256``), with long values shortened."""
    a, b = existing.to_attrs(), wanted.to_attrs()
    if existing.class_names != wanted.class_names:  # not in a token store's attributes
        a[schema.ATTR_CLASS_NAMES] = list(existing.class_names)
        b[schema.ATTR_CLASS_NAMES] = list(wanted.class_names)
    diffs = [d for f in RUN_FIELDS for d in differences(a.get(f), b.get(f), f)]
    if diffs:
        raise MismatchError(
            "the existing store was written by a different run ("
            + "; ".join(diffs)
            + "); regenerate it, replacing it (overwrite=True), or choose another output path"
        )


def differences(a: object, b: object, path: str) -> list[str]:
    """'path: store has A, this run has B' for each leaf where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: store has {len(a)} entries, this run has {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    if a == b:
        return []
    return [f"{path}: store has {_short(a)}, this run has {_short(b)}"]


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse_unhashed_teachers(meta: StoreMeta) -> None:
    """A store never records a teacher whose weights were not hashed yet (a lazy module)."""
    lazy = [t.name for t in meta.teachers if t.sha256 == LAZY_SHA256]
    if lazy:
        raise TeacherError(
            f"teacher(s) {', '.join(lazy)} still have uninitialised lazy parameters, so their "
            f"weights cannot be hashed: run one forward pass over a batch of the transfer set "
            f"first (softlabels.teachers.initialise_lazy), then write the store"
        )
