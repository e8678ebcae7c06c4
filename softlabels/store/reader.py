"""Reading a store: ``open_store`` validates it and returns a ``StoreReader``.

``StoreReader.soft_targets`` is the seam between the stages: the teacher's log soft targets at
any temperature, replayed exactly for every combine rule. Stage two asks for nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

from softlabels import schema
from softlabels.ensemble import replay_log_probs
from softlabels.errors import (
    ChecksumError,
    IncompleteStoreError,
    StoreFormatError,
)
from softlabels.schema import StoreMeta
from softlabels.sparse import replay as sparse_replay
from softlabels.sparse.replay import SparseTargets
from softlabels.store.backends import open_backend, store_kind
from softlabels.store.checks import check_labels as check_labels
from softlabels.store.checks import check_sample_index as check_sample_index
from softlabels.store.checks import (
    check_token_rows,
    check_view_index,
    token_edge_problems,
    token_problems,
)
from softlabels.store.failures import finish_advice, journal_tool, read_failure, writer_note
from softlabels.store.metadata import Backend, journal_committed, read_meta
from softlabels.store.rows import Rows, chunk_checksum, nonfinite_rows
from softlabels.views.transfer import check_view_rows, view_row_problems


class StoreReader:
    """A validated, read-only view of a store. Use ``open_store`` to get one; it is a context
    manager, and it pickles as its path (a DataLoader worker reopens it)."""

    def __init__(self, backend: Backend, meta: StoreMeta, *, allow_incomplete: bool) -> None:
        self._b = backend
        self.meta = meta
        self.path = backend.path
        self.allow_incomplete = allow_incomplete
        self._committed: np.ndarray | None = None
        self._has_members = backend.has(schema.MEMBER_LOGITS)
        self._row_of: np.ndarray | None = None  # transfer position -> store row
        self._loaded: Rows | None = None  # every row, verified, in transfer-position order
        self._checked: dict[str, np.ndarray] = {}  # whole sample_index / labels, once checked
        self._weights = torch.tensor(meta.weights, dtype=torch.float32)

    # -- context manager and pickling
    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    def __reduce__(self) -> tuple[object, tuple[str, bool]]:
        return _reopen, (self.path, self.allow_incomplete)

    # -- description
    @property
    def kind(self) -> str:
        return store_kind(self.path)

    @property
    def has_members(self) -> bool:
        return self._has_members

    @property
    def is_sparse(self) -> bool:
        return self.meta.sparse is not None

    @property
    def writing_tool(self) -> str | None:
        """The command writing an incomplete store (``generate``, ``combine``...), if recorded."""
        return None if self.meta.complete else journal_tool(self._b)

    def array_names(self) -> list[str]:
        """The data arrays of this store's layout, in checksum order."""
        return [spec.name for spec in schema.array_layout(self.meta)]

    def array_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self._b.shape(n) for n in self.array_names()}

    def array_nbytes(self) -> dict[str, int | None]:
        """Stored (compressed) bytes of each data array, where the backend can tell."""
        return {n: self._b.array_nbytes(n) for n in self.array_names()}

    def nbytes_on_disk(self) -> int | None:
        return self._b.nbytes_on_disk()

    def committed_chunks(self) -> np.ndarray:
        """(n_chunks,) bool: all True for a complete store; from the journal otherwise."""
        if self.meta.complete:
            return np.ones(self.meta.num_chunks, dtype=bool)
        if self._committed is None:
            self._committed = journal_committed(self._b, self.meta)
        return self._committed

    # -- the seam
    def soft_targets(
        self,
        rows: Rows | np.ndarray,
        temperature: float,
        *,
        member: int | None = None,
        estimator: str | None = None,
    ) -> torch.Tensor | SparseTargets:
        """The teacher's log soft targets at ``temperature``.

        Dense store: (R, C) float32 log-probabilities. Sparse store: ``SparseTargets`` (ids,
        log-probabilities on them, log-mass of every other id), never C columns per row;
        ``estimator`` picks how sampled ids stand in for the tail (``softlabels.sparse.replay``;
        None: the store's default).

        ``rows`` is a block read from this store (``read``, ``read_chunk``, ``read_rows``,
        ``load``), or an int array of R transfer-set positions, read here (through
        ``sample_index``, whatever the stored row order) and returned in that order. An int array
        means transfer positions in every layout: in a token store a position is a token; in a
        views store, which holds V views of each position, each position gives its V rows in
        view order (R * V rows). For store rows, pass ``read_rows(rows)``. ``member=None``
        gives the stored teacher (an ensemble replayed exactly for its combine rule: arithmetic
        from its members' own logits, geometric and single teachers from ``logits``); ``member=m``
        gives ensemble member m alone.
        """
        if not isinstance(rows, Rows):
            rows = self.rows_at(np.asarray(rows, dtype=np.int64))
        if member is not None and not 0 <= member < self.meta.num_members:
            raise IndexError(f"member {member} of a {self.meta.num_members}-teacher store")
        if self.is_sparse:
            decoded = sparse_replay.decode(rows.arrays, self.meta)
            return sparse_replay.replay(
                decoded, self.meta, temperature, member=member, estimator=estimator
            )
        if estimator is not None:
            raise ValueError(
                f"estimator {estimator!r} applies to sparse stores; {self.path!r} is dense"
            )
        if member is not None:
            z = rows.logits if rows.member_logits is None else rows.member_logits[:, member]
            return torch.log_softmax(torch.from_numpy(z).float() / temperature, dim=-1)
        members = None
        if rows.member_logits is not None:
            members = torch.from_numpy(rows.member_logits).float()
        logits = torch.from_numpy(rows.logits).float()
        return replay_log_probs(logits, members, self.meta.combine, self._weights, temperature)

    # -- reading rows
    def read(self, start: int, stop: int) -> Rows:
        """Rows [start, stop). For an incomplete store every touched chunk must be committed."""
        n = self.meta.num_samples
        if not 0 <= start <= stop <= n:
            raise IndexError(f"row range [{start}, {stop}) is outside the store's {n} rows")
        if not self.meta.complete and stop > start:
            first, last = start // self.meta.chunk_rows, (stop - 1) // self.meta.chunk_rows
            pending = [c for c in range(first, last + 1) if not self.committed_chunks()[c]]
            if pending:
                raise IncompleteStoreError(
                    f"rows [{start}, {stop}) touch uncommitted chunks {pending}"
                )
        names = self.array_names()
        try:
            arrays = dict(zip(names, self._b.read_many(names, start, stop), strict=True))
        except Exception as exc:  # codec or I/O failure inside zarr/h5py
            failure = read_failure(exc, f"rows [{start}, {stop})", self.path)
            if failure is not None:  # the bytes could not be fetched: not a corrupt store
                raise failure from exc
            raise StoreFormatError(
                f"cannot decode rows [{start}, {stop}) of {self.path!r} ({type(exc).__name__}: "
                f"{exc}); the store is corrupt: run `softlabels verify` and regenerate it"
            ) from exc
        return Rows(arrays, start)

    def read_chunk(self, chunk: int) -> Rows:
        return self.read(*self.meta.chunk_bounds(chunk))

    def read_verified_chunk(self, chunk: int) -> Rows:
        """A chunk whose bytes match its checksum (its journal entry, for an incomplete store)
        and whose logits are all finite; raises otherwise."""
        rows = self.read_chunk(chunk)
        if self.meta.checksums is not None:
            expected = self.meta.checksums[chunk]
        else:
            expected = bytes(self._b.read(schema.COMMIT_JOURNAL, chunk, chunk + 1)[0]).hex()
        if chunk_checksum(rows) != expected:
            raise ChecksumError(
                f"chunk {chunk} of {self.path!r} does not match its checksum: the store is "
                f"corrupt; run `softlabels verify` and regenerate it"
            )
        bad = nonfinite_rows(rows)
        if bad:
            what = "values in its sparse arrays" if self.is_sparse else "logits"
            raise StoreFormatError(f"{self.path!r} holds NaN or Inf {what} at rows {bad[:10]}")
        check_labels(rows.labels, self.meta.num_classes, offset=rows.start)
        if self.is_sparse:
            decoded = sparse_replay.decode(rows.arrays, self.meta)
            sparse_replay.check(decoded, self.meta, rows.start, self.path)
        if self.meta.tokens is not None:
            check_token_rows(rows, self.meta.num_classes, self.path, self.meta.num_samples)
        if self.meta.views is not None:
            check_view_rows(rows.start, rows.arrays, self.meta.views, self.path)
        return rows

    def iter_chunks(self) -> Iterator[Rows]:
        for chunk in range(self.meta.num_chunks):
            yield self.read_chunk(chunk)

    def load(self) -> Rows:
        """Every row, checksum-verified, in transfer-position order (row i is position i; in a
        views store, store order: row r is view r % V of sample r // V). Read once and kept:
        later calls, and ``soft_targets`` of positions, reuse it."""
        if self._loaded is None:
            rows = Rows.concat([self.read_verified_chunk(c) for c in range(self.meta.num_chunks)])
            self._check_index(rows.sample_index)
            self._loaded = rows.take(np.argsort(rows.sample_index, kind="stable"))
        return self._loaded

    def rows_at(self, positions: np.ndarray) -> Rows:
        """The rows of transfer positions ``positions``, in that order (verified chunks), joined
        through ``sample_index``. In a views store each position gives its V rows, in view order
        (R * V rows)."""
        keys = self._position_keys(np.asarray(positions, dtype=np.int64))
        if self._loaded is not None:
            return self._loaded.take(keys)
        if self._row_of is None:
            self._row_of = np.argsort(self.sample_index(), kind="stable")
        return self.read_rows(self._row_of[keys])

    def _position_keys(self, positions: np.ndarray) -> np.ndarray:
        """Indices into the rows sorted by position (stable): position p's V rows are
        p * V .. p * V + V - 1 (V = 1 outside a views store). Out-of-range positions raise."""
        views = 1 if self.meta.views is None else self.meta.views.views_per_sample
        count = self.meta.num_samples // views
        outside = positions[(positions < 0) | (positions >= count)]
        if len(outside):
            raise IndexError(
                f"transfer positions {outside[:10].tolist()} are outside the store's {count} "
                f"positions (0..{count - 1})"
            )
        if views == 1:
            return positions
        return (positions[:, None] * views + np.arange(views)).reshape(-1)

    def read_rows(self, rows: np.ndarray) -> Rows:
        """Store rows ``rows`` (any order, repeats allowed), in that order, from verified
        chunks. Rows are not positions: join them to inputs through their ``sample_index``."""
        rows = np.asarray(rows, dtype=np.int64)
        n = self.meta.num_samples
        outside = rows[(rows < 0) | (rows >= n)]
        if len(outside):
            raise IndexError(f"rows {outside[:10].tolist()} are outside the store's {n} rows")
        chunks = rows // self.meta.chunk_rows
        parts, where = [], []
        for c in np.unique(chunks):
            block = self.read_verified_chunk(int(c))
            sel = np.flatnonzero(chunks == c)
            parts.append(block.take(rows[sel] - block.start))
            where.append(sel)
        if not parts:
            return self.read(0, 0)
        gathered = Rows.concat(parts)
        return gathered.take(np.argsort(np.concatenate(where), kind="stable"))

    def sample_index(self) -> np.ndarray:
        """The whole (N,) sample_index, checked to be a permutation of 0..N-1 (read-only); in a
        views store, checked to be r // V at every row r."""
        return self._whole(schema.SAMPLE_INDEX, self._check_index)

    def _check_index(self, index: np.ndarray) -> None:
        if self.meta.views is None:
            check_sample_index(index, self.meta.num_samples)
        else:
            check_view_index(index, self.meta.views.views_per_sample, self.path)

    def labels(self) -> np.ndarray:
        """The whole (N,) labels array, checked to hold only -1..C-1 (read-only)."""
        return self._whole(schema.LABELS, lambda a: check_labels(a, self.meta.num_classes))

    def _whole(self, name: str, check: Callable[[np.ndarray], None]) -> np.ndarray:
        """A whole (N,) array, read and checked once for a complete store (joins, datasets and
        shards all ask for these)."""
        if name in self._checked:
            return self._checked[name]
        array = self._read_committed(name)
        check(array)
        array.setflags(write=False)
        if self.meta.complete:
            self._checked[name] = array
        return array

    def _read_committed(self, name: str) -> np.ndarray:
        if not self.meta.complete and not self.committed_chunks().all():
            done = int(self.committed_chunks().sum())
            raise IncompleteStoreError(
                f"{self.path!r} is incomplete: {done} of {self.meta.num_chunks} chunks were "
                f"committed before its writer stopped; {finish_advice(journal_tool(self._b))}"
                f"{writer_note(self.path)}"
            )
        try:
            return self._b.read(name, 0, self.meta.num_samples)
        except Exception as exc:  # codec or I/O failure inside zarr/h5py
            failure = read_failure(exc, f"the array {name!r}", self.path)
            if failure is not None:  # the bytes could not be fetched: not a corrupt store
                raise failure from exc
            raise StoreFormatError(
                f"cannot decode the array {name!r} of {self.path!r} ({type(exc).__name__}: "
                f"{exc}); the store is corrupt: run `softlabels verify` and regenerate it"
            ) from exc

    def scan_chunks(self) -> tuple[list[int], list[int], list[str], list[str]]:
        """One pass over every chunk: (chunks failing their checksum or undecodable, the first
        rows holding NaN or Inf values, for a sparse store what makes rows impossible, and for a
        token or views store what breaks its row layout: the shift convention, or the views)."""
        if self.meta.checksums is None:
            raise IncompleteStoreError("store has no checksums yet: it was never finalised")
        bad_sums: list[int] = []
        bad_rows: list[int] = []
        sparse_problems: list[str] = []
        layout: list[str] = []
        previous: Rows | None = None  # the chunk before, for the shift across its edge
        for chunk in range(self.meta.num_chunks):
            try:
                rows = self.read_chunk(chunk)
            except StoreFormatError:
                bad_sums.append(chunk)
                previous = None
                continue
            if chunk_checksum(rows) != self.meta.checksums[chunk]:
                bad_sums.append(chunk)
            bad_rows += nonfinite_rows(rows)[: 10 - len(bad_rows)]
            if self.is_sparse:
                sparse_problems += sparse_replay.problems(
                    sparse_replay.decode(rows.arrays, self.meta), self.meta, rows.start
                )
            if self.meta.views is not None:
                a = rows.arrays
                layout += view_row_problems(
                    rows.start,
                    a[schema.SAMPLE_INDEX],
                    a[schema.VIEW],
                    a[schema.VIEW_PARAMS],
                    self.meta.views,
                )
            if self.meta.tokens is not None:
                layout += [
                    f"chunk {chunk}: {p}"
                    for p in token_problems(rows, self.meta.num_classes, self.meta.num_samples)
                ]
                if previous is not None:
                    layout += token_edge_problems(previous, rows)
                previous = rows
        return bad_sums, bad_rows, sparse_problems, layout

    def verify_checksums(self) -> list[int]:
        """Indices of chunks whose data no longer matches the recorded checksum."""
        return self.scan_chunks()[0]


def _reopen(path: str, allow_incomplete: bool) -> StoreReader:
    return open_store(path, allow_incomplete=allow_incomplete)


def open_store(path: str | os.PathLike[str], *, allow_incomplete: bool = False) -> StoreReader:
    """Open and validate the store at a local path or fsspec URL. Refuses an incomplete store
    (its writer did not finish) unless ``allow_incomplete``: then only committed chunks read."""
    backend = open_backend(path, "r")
    try:
        meta = read_meta(backend)
        if not meta.complete and not allow_incomplete:
            raise IncompleteStoreError(
                f"store {str(path)!r} is not complete (its writer did not finish); "
                f"{finish_advice(journal_tool(backend))}; `softlabels inspect` and "
                f"`softlabels verify` show how far it got{writer_note(str(path))}"
            )
    except Exception:
        backend.close()
        raise
    return StoreReader(backend, meta, allow_incomplete=allow_incomplete)
