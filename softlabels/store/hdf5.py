"""The HDF5 backend: one file per store, written by one process (h5py).

HDF5 cannot recover from a failed write: its metadata cache is left inconsistent, every later
call fails, and closing the file can crash the process. So a write that might not fit on the
disk is refused before HDF5 starts it (``check_free_space``), which leaves the file a valid,
resumable store and the user one clean "disk full" message.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Any

import numpy as np

from softlabels import schema
from softlabels.errors import (
    StoreBusyError,
    StoreExistsError,
    StoreFormatError,
    StoreNotFoundError,
    StoreReadError,
)
from softlabels.store.failures import writer_note


class HDF5Backend:
    def __init__(self, path: str, mode: str) -> None:
        import h5py

        if mode == "r" and not os.path.isfile(path):
            raise StoreNotFoundError(f"no HDF5 store at {path!r}")
        try:
            self.file = h5py.File(path, {"r": "r", "r+": "r+", "w": "w-"}[mode])
        except FileExistsError as exc:
            raise StoreExistsError(f"{path!r} already exists") from exc
        except OSError as exc:
            busy = writer_note(path)
            if busy:  # HDF5 locks a file while it is written: this is not damage
                raise StoreBusyError(f"{path!r} cannot be opened now{busy}") from exc
            if not os.access(path, os.R_OK):
                raise StoreReadError(
                    f"{path!r} cannot be read: permission denied; fix its permissions"
                ) from exc
            raise StoreFormatError(
                f"{path!r} is not a readable HDF5 file ({exc}); if it was being written when the "
                f"writer died, HDF5 cannot recover it: regenerate it, replacing it "
                f"(overwrite=True)"
            ) from exc
        self.path = path

    def attrs(self) -> dict[str, Any]:
        # Materialise first: h5py's items() generator holds its global lock while suspended, so
        # abandoning it half-way (a decode error below) would deadlock the next h5py call.
        raw = list(self.file.attrs.items())
        if schema.ATTR_FORMAT not in {k for k, _ in raw}:
            return {}  # an HDF5 file, but not a store: the caller says so
        return {k: schema.decode_h5_attr(k, v) for k, v in raw}

    def update_attrs(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.file.attrs[key] = schema.encode_h5_attr(value)
        self.file.flush()

    def set_array_attr(self, name: str, key: str, value: str) -> None:
        self.file[name].attrs[key] = value

    def array_attr(self, name: str, key: str) -> str | None:
        value = self.file[name].attrs.get(key)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        return value if isinstance(value, str) else None

    def has(self, name: str) -> bool:
        import h5py

        return isinstance(self.file.get(name), h5py.Dataset)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.file[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self.file[name].dtype)

    def create(self, spec: schema.ArraySpec, compress: bool) -> None:
        opts: dict[str, Any] = {}
        if compress and spec.compressible:
            opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        chunks = tuple(max(1, min(c, n)) for c, n in zip(spec.chunks, spec.shape, strict=True))
        self.file.create_dataset(
            spec.name, shape=spec.shape, chunks=chunks, dtype=spec.dtype, fillvalue=0, **opts
        )

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.file[name][start:stop])

    def read_many(self, names: list[str], start: int, stop: int) -> list[np.ndarray]:
        return [self.read(n, start, stop) for n in names]

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        # HDF5 cannot recover from a failed write (its cache is left inconsistent: later calls
        # fail, and closing the file can crash the process), so a write that would not fit is
        # refused before HDF5 starts it, and the file stays a valid, resumable store.
        check_free_space(self.path, data.nbytes)
        try:
            self.file[name][start : start + len(data)] = data
        except Exception:
            self._broken = True
            raise

    def delete(self, name: str) -> None:
        del self.file[name]

    def flush(self) -> None:
        try:
            self.file.flush()
        except Exception:
            self._broken = True
            raise

    def close(self) -> None:
        if not getattr(self, "_broken", False):
            self.file.close()
            return
        try:  # after a failed write, closing reports the same failure again: it is known
            self.file.close()
        except Exception:
            pass

    def nbytes_on_disk(self) -> int:
        return os.path.getsize(self.path)

    def array_nbytes(self, name: str) -> int:
        """Bytes of the array's stored (compressed) chunks."""
        return int(self.file[name].id.get_storage_size())


HDF5_FREE_MARGIN = 1 << 20  # bytes left free for HDF5's own metadata (chunk index, heaps)


def check_free_space(path: str, nbytes: int) -> None:
    """Raise ENOSPC when the file system holding ``path`` has no room for ``nbytes`` more (at
    most that many, written uncompressed, plus ``HDF5_FREE_MARGIN``)."""
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    need = nbytes + nbytes // 64 + HDF5_FREE_MARGIN
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: {free:,} bytes free, a chunk needs up to {need:,}",
            path,
        )
