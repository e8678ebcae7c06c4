"""What went wrong when a store's bytes would not move, said so the user can act on it.

A failure to *read* bytes (permission denied, a network fault, an I/O error) is not a corrupt
store, and a full disk is not a bug: each gets its own one-line reason and advice, instead of
"the store is corrupt, regenerate it" or a traceback. And an unfinished store says how to
finish it: by resuming the command that was writing it (``generate``, ``generate-lm``), or by
running it again (``combine``, ``convert``, which cannot resume).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

from softlabels.errors import StoreReadError

RESUMABLE_TOOLS = ("generate", "generate-lm")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_network_error(exc: BaseException) -> bool:
    """An HTTP or connection failure (aiohttp, a dropped connection, a timeout) anywhere in the
    exception's chain."""
    for e in _chain(exc):
        module = type(e).__module__ or ""
        if module.startswith(("aiohttp", "requests", "urllib3", "botocore", "aiobotocore")):
            return True
        if isinstance(e, ConnectionError | TimeoutError):
            return True
    return False


def os_error(exc: BaseException) -> OSError | None:
    """The first OSError with an errno in the chain (h5py hides its errno in the text)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno is not None:
            return e
        if isinstance(e, OSError) and "errno = 28" in str(e):  # HDF5: "errno = 28, ..."
            return OSError(errno.ENOSPC, "No space left on device")
    return None


def is_disk_full(exc: BaseException) -> bool:
    e = os_error(exc)
    if e is not None and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any("No space left on device" in str(x) for x in _chain(exc))


def read_failure(exc: BaseException, what: str, path: str) -> StoreReadError | None:
    """A StoreReadError saying why ``what`` of the store at ``path`` could not be read, when
    ``exc`` is a failure to fetch bytes rather than bytes that do not decode; else None."""
    if is_network_error(exc):
        return StoreReadError(
            f"network error reading {what} of {path!r} ({_brief(exc)}); the store itself may be "
            f"fine: check that the server is up and retry"
        )
    e = os_error(exc)
    if e is None:
        return None
    if e.errno in (errno.EACCES, errno.EPERM):
        return StoreReadError(
            f"{what} of {path!r} cannot be read: permission denied ({e.filename or e}); the "
            f"store's files must be readable by this user: fix their permissions"
        )
    if e.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
        return None  # a missing piece: the checksum or the layout check says what it means
    return StoreReadError(
        f"{what} of {path!r} cannot be read: {e.strerror or e} (errno {e.errno}); check the disk "
        f"or file system the store is on"
    )


def disk_full_message(path: str, exc: BaseException) -> str:
    return (
        f"the disk is full: writing {path!r} failed with 'No space left on device' "
        f"({_brief(exc)}); free some space (or write somewhere else) and run again"
    )


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def finish_advice(tool: str | None) -> str:
    """How to finish a store its writer left incomplete, given the command that wrote it."""
    if tool in (None, *RESUMABLE_TOOLS):
        command = tool or "generate"
        return f"finish it by running the same `softlabels {command}` again with resume=True"
    return (
        f"it was being written by `softlabels {tool}`, which cannot resume: run the same "
        f"`softlabels {tool}` again with overwrite=True"
    )


def writer_note(path: str) -> str:
    """' It is being written now by ...' when a live writer holds the store's lease."""
    from softlabels.store.lease import current_holder

    try:
        holder = current_holder(path)
    except Exception:  # an unreachable lease says nothing either way
        return ""
    if holder is None:
        return ""
    return f"; it is being written now by {holder.describe()}: wait for it to finish"


def journal_tool(backend: Any) -> str | None:
    """The command recorded on an incomplete store's journal, or None."""
    from softlabels import schema

    try:
        if not backend.has(schema.COMMIT_JOURNAL):
            return None
        return backend.array_attr(schema.COMMIT_JOURNAL, schema.JOURNAL_TOOL)
    except Exception:
        return None
