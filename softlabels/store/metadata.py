"""Opening checks of a store: its root attributes (validated, and against their digest), its
arrays against ``schema.array_layout``, and which chunks its commit journal records."""

from __future__ import annotations

from typing import Any

import numpy as np

from softlabels import schema
from softlabels.errors import IncompleteStoreError, StoreFormatError
from softlabels.schema import StoreMeta
from softlabels.schema.digest import ATTR_ATTRIBUTES_SHA256, attributes_digest
from softlabels.store.backends import HDF5Backend, ZarrBackend
from softlabels.store.failures import finish_advice, journal_tool

Backend = ZarrBackend | HDF5Backend


def read_meta(backend: Backend) -> StoreMeta:
    """The validated metadata of an opened backend, after checking its arrays against it."""
    attrs = backend.attrs()
    if not attrs:
        raise StoreFormatError(
            f"{backend.path!r} is not a softlabels store (it has no store attributes)"
        )
    meta = StoreMeta.from_attrs(attrs)
    check_attributes_digest(attrs, backend.path)
    check_arrays(backend, meta)
    return meta


def check_attributes_digest(attrs: dict[str, Any], path: str) -> None:
    """Refuse a store whose root attributes no longer hash to its ``attributes_sha256`` (a
    store written before the digest has none, and reads as before)."""
    recorded = attrs.get(ATTR_ATTRIBUTES_SHA256)
    if recorded is None:
        return
    if recorded != attributes_digest(attrs):
        raise StoreFormatError(
            f"the attributes of {path!r} were changed after it was written: they no longer "
            f"match their SHA-256 (attributes_sha256), so its targets cannot be trusted; "
            f"restore the original store or regenerate it"
        )


def check_arrays(backend: Backend, meta: StoreMeta) -> None:
    """Every array of ``schema.array_layout(meta)`` exists with its shape and dtype."""
    layout = schema.array_layout(meta)
    if meta.num_members == 1 and backend.has(schema.MEMBER_LOGITS):
        raise StoreFormatError("store has member_logits but lists a single teacher")
    for spec in layout:
        if not backend.has(spec.name):
            if not meta.complete:  # attributes arrive first when a store is moved object by object
                raise IncompleteStoreError(
                    f"{backend.path!r} is still being created (array {spec.name!r} is not there "
                    f"yet); wait for its writer, or if it died, "
                    f"{finish_advice(journal_tool(backend))}"
                )
            raise StoreFormatError(f"store is missing the array {spec.name!r}")
        if backend.shape(spec.name) != spec.shape:
            raise StoreFormatError(
                f"array {spec.name!r} has shape {backend.shape(spec.name)}, expected {spec.shape}"
            )
        if backend.dtype(spec.name) != np.dtype(spec.dtype):
            raise StoreFormatError(
                f"array {spec.name!r} has dtype {backend.dtype(spec.name)}, expected {spec.dtype}"
            )


def journal_committed(backend: Backend, meta: StoreMeta) -> np.ndarray:
    if not backend.has(schema.COMMIT_JOURNAL):
        # no journal: either never written, or deleted inside finalize after checksums were set
        return np.full(meta.num_chunks, meta.checksums is not None, dtype=bool)
    journal = backend.read(schema.COMMIT_JOURNAL, 0, meta.num_chunks)
    return journal.any(axis=1)
