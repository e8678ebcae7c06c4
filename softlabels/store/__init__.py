"""The store API: the seam between stage one and stage two.

``open_store`` returns a ``StoreReader`` whose ``soft_targets(rows, T)`` is the one thing stage
two asks of a store; ``StoreWriter`` creates, resumes and finalises a store. Both speak to one of
two backends (Zarr v3 directory, HDF5 file) with the same logical layout, described in
FORMAT.md and named in ``softlabels.schema``.

    backends.py   where a store lives: exists, remove, atomic create; Zarr, fsspec URLs
    hdf5.py       the HDF5 backend (refuses a write that would not fit: HDF5 cannot recover)
    lease.py      the writer lease: one writer at a time, holder named, stale ones taken over
    failures.py   what a failure to move bytes means (disk full, network, permissions), and
                  how to finish an incomplete store
    rows.py       a block of rows and its chunk checksum
    reader.py     open_store, StoreReader (validation, reading, soft targets)
    writer.py     StoreWriter (create, attach for resume, commit, finalize)
"""

from softlabels.store.backends import is_url, remove_store, store_kind
from softlabels.store.reader import StoreReader, check_sample_index, open_store
from softlabels.store.rows import Rows, chunk_checksum
from softlabels.store.writer import StoreWriter, check_same_run

__all__ = [
    "Rows",
    "StoreReader",
    "StoreWriter",
    "check_same_run",
    "check_sample_index",
    "chunk_checksum",
    "is_url",
    "open_store",
    "remove_store",
    "store_kind",
]
