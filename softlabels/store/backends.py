"""The only code that knows Zarr, h5py or fsspec: where a store lives and how bytes move.

Every operation on a store's *location* (does it exist, delete it, create it atomically) goes
through this module, for local paths and fsspec URLs (memory://, s3://, http://) alike.

Atomic creation: a new store is built complete (attributes and every empty array) under a
hidden staging name beside the target, ``.NAME.creating-<token>.SUFFIX``, and then moved into
place. A local rename is atomic, so readers and later writers see either nothing or a whole,
valid, incomplete store. On object stores a move is a copy per object; readers treat a store
whose attributes arrived before its arrays as incomplete, never as corrupt.

Replacement (``overwrite``): the new store is built and finished under
``.NAME.replacing.SUFFIX`` beside the old one, which stays untouched until the new one is
complete; only then does ``swap_in`` put it in the old one's place. A run that fails leaves the
old store as it was.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from softlabels import schema
from softlabels.errors import (
    StoreExistsError,
    StoreFormatError,
    StoreNotFoundError,
)
from softlabels.store.failures import read_failure
from softlabels.store.hdf5 import HDF5Backend

ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")
STAGING_MARK = ".creating-"
REPLACING_MARK = ".replacing"
REPLACED_MARK = ".replaced"


def is_url(path: str | os.PathLike[str]) -> bool:
    """fsspec-style URLs (http://, s3://, memory://, ...) as opposed to local paths."""
    return "://" in str(path)


def store_kind(path: str | os.PathLike[str]) -> str:
    """'zarr' or 'hdf5', from the path's suffix."""
    suffix = PurePosixPath(str(path)).suffix.lower()
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise StoreFormatError(
        f"cannot tell the store type of {str(path)!r}: the path must end in .zarr (Zarr v3 "
        f"directory) or .h5/.hdf5 (HDF5 file)"
    )


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def exists(path: str | os.PathLike[str]) -> bool:
    """Is there anything at ``path`` (a store or not)?"""
    if is_url(path):
        fs, p = _fs(str(path))
        return bool(fs.exists(p))
    return os.path.lexists(path)


def _sibling(path: str | os.PathLike[str], mark: str) -> str:
    """The hidden sibling ``.STEM{mark}SUFFIX`` of ``path``."""
    text = str(path).rstrip("/")
    head, sep, name = text.rpartition("/" if is_url(text) else os.sep)
    suffix = PurePosixPath(name).suffix
    stem = name[: -len(suffix)] if suffix else name
    return f"{head}{sep}.{stem}{mark}{suffix}"


def staging_path(path: str | os.PathLike[str]) -> str:
    """A fresh hidden sibling of ``path`` with the same suffix, for building a store in."""
    return _sibling(path, f"{STAGING_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def replacement_path(path: str | os.PathLike[str]) -> str:
    """Where the store that will replace ``path`` is built (one name, so a rerun finds it)."""
    return _sibling(path, REPLACING_MARK)


def swap_in(replacement: str, path: str | os.PathLike[str]) -> None:
    """Put the complete store at ``replacement`` in the place of the store at ``path``.

    An HDF5 file is replaced in one atomic rename. A directory (Zarr) moves aside to a hidden
    ``.NAME.replaced`` first, then the replacement moves in, then the old one is deleted: a
    process killed between the two renames leaves both stores whole under their hidden names.
    """
    path = str(path)
    trash = _sibling(path, REPLACED_MARK)
    if is_url(path):
        fs, src = _fs(replacement)
        _, dst = _fs(path)
        _, old = _fs(trash)
        if fs.exists(old):
            fs.rm(old, recursive=True)
        fs.mv(dst, old, recursive=True)
        fs.mv(src, dst, recursive=True)
        fs.rm(old, recursive=True)
    elif os.path.isdir(replacement):
        discard(trash)
        os.rename(path, trash)
        os.rename(replacement, path)
        discard(trash)
    else:
        os.replace(replacement, path)


def publish(staging: str, path: str | os.PathLike[str]) -> None:
    """Move a fully built store from ``staging`` to ``path``, refusing to replace anything."""
    path = str(path)
    if is_url(path):
        fs, src = _fs(staging)
        _, dst = _fs(path)
        if fs.exists(dst):
            raise StoreExistsError(f"{path!r} appeared while the store was being created")
        fs.mv(src, dst, recursive=True)
    elif os.path.isdir(staging):
        os.rename(staging, path)  # fails if a non-empty directory appeared at path meanwhile
    else:
        os.link(staging, path)  # fails if a file appeared at path meanwhile: never clobbers
        os.unlink(staging)


def discard(path: str | os.PathLike[str]) -> None:
    """Delete whatever is at ``path`` without asking what it is: staging areas only."""
    if is_url(path):
        fs, p = _fs(str(path))
        if fs.exists(p):
            fs.rm(p, recursive=True)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def remove_store(path: str | os.PathLike[str]) -> None:
    """Delete a store, but only something that is recognisably a soft-label store."""
    check_is_store(path)
    discard(path)


def check_is_store(path: str | os.PathLike[str]) -> None:
    """Refuse (StoreExistsError) to replace or delete what is not a soft-label store."""
    try:
        backend = open_backend(path, "r")
        try:
            fmt = backend.attrs().get(schema.ATTR_FORMAT)
        finally:
            backend.close()
    except Exception:
        fmt = None
    if fmt != schema.FORMAT_NAME:
        raise StoreExistsError(
            f"{str(path)!r} exists but is not a soft-label store; refusing to delete it. Remove it "
            f"yourself or choose another output path"
        )


def open_backend(path: str | os.PathLike[str], mode: str) -> ZarrBackend | HDF5Backend:
    """Open ``path`` for reading ("r"), updating ("r+") or creating ("w", must not exist)."""
    kind = store_kind(path)
    if is_url(path) and kind != "zarr":
        raise StoreFormatError(
            f"{str(path)!r}: remote stores must be Zarr (one object per chunk); convert the HDF5 "
            f"file with `softlabels convert` and publish the .zarr"
        )
    if mode != "w" and not is_url(path) and not os.path.exists(path):
        raise StoreNotFoundError(
            f"no store at {str(path)!r}: check the path, or create it with `softlabels generate`"
        )
    cls = ZarrBackend if kind == "zarr" else HDF5Backend
    return cls(str(path), mode)


class ZarrBackend:
    def __init__(self, path: str, mode: str) -> None:
        import zarr

        self._zarr = zarr
        if mode == "r" and not is_url(path):
            check_contained(path)
        try:
            # use_consolidated=False: zarr.json files are the only metadata; remote reads open
            # each node's zarr.json by name and never need a directory listing.
            if mode == "w":
                self.group = zarr.open_group(path, mode="w-")
            else:
                self.group = zarr.open_group(path, mode=mode, use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreNotFoundError(f"no Zarr store at {path!r}") from exc
        except json.JSONDecodeError as exc:
            raise StoreFormatError(
                f"{path!r}: a zarr.json metadata file is not valid JSON ({exc}); the store is "
                f"damaged: regenerate it or fetch it again"
            ) from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreFormatError(f"{path!r} is not a readable Zarr v3 group: {exc}") from exc
        except Exception as exc:
            failure = read_failure(exc, "the metadata", path)
            if failure is not None:  # a network fault or permissions: the store may be fine
                raise failure from exc
            if isinstance(exc, OSError):
                raise StoreNotFoundError(f"cannot open the Zarr store at {path!r}: {exc}") from exc
            raise
        self.path = path
        self._arrays: dict[str, Any] = {}  # opening an array reads its zarr.json: do it once

    def _array(self, name: str) -> Any:
        if name not in self._arrays:
            try:
                self._arrays[name] = self.group[name]
            except KeyError:
                raise
            except Exception as exc:
                failure = read_failure(exc, f"the array {name!r}", self.path)
                if failure is not None:
                    raise failure from exc
                raise
        return self._arrays[name]

    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def update_attrs(self, values: dict[str, Any]) -> None:
        self.group.update_attributes(values)  # one write of zarr.json (attrs.update: one per key)

    def set_array_attr(self, name: str, key: str, value: str) -> None:
        self._array(name).attrs[key] = value

    def array_attr(self, name: str, key: str) -> str | None:
        value = self._array(name).attrs.get(key)
        return value if isinstance(value, str) else None

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

    def create(self, spec: schema.ArraySpec, compress: bool) -> None:
        from zarr.codecs import BloscCodec

        compressors = None
        if compress and spec.compressible:
            compressors = [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")]
        self.group.create_array(
            spec.name,
            shape=spec.shape,
            chunks=spec.chunks,
            dtype=spec.dtype,
            compressors=compressors,
            fill_value=0,
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
            # return_exceptions: every fetch finishes before one failure is raised, so no
            # failed task is left for asyncio to report (a screenful of noise on a network fault)
            return await asyncio.gather(
                *(self._array(n).async_array.getitem(rows) for n in names), return_exceptions=True
            )

        results = sync(fetch())
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [np.asarray(a) for a in results]

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

    def array_nbytes(self, name: str) -> int | None:
        """Bytes of the array's chunks and metadata on disk (None for a remote store)."""
        if is_url(self.path):
            return None
        return sum(p.stat().st_size for p in (Path(self.path) / name).rglob("*") if p.is_file())


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
