"""The writer lease: one writer at a time on a store.

A writer (``generate``, ``generate-lm``, ``combine``, ``convert``, and ``StoreWriter`` used
directly) takes the lease before its first write, and before an overwrite deletes or replaces
anything; it gives the lease back after finalisation (and after an overwrite's swap), or when it
stops. The lease is a small JSON file beside the store, ``.NAME.lease`` (``NAME`` with its
suffix), created exclusively: ``O_CREAT | O_EXCL`` on a local path, mode ``"xb"`` through fsspec
for a URL (atomic where the filesystem implements it, e.g. local and memory; best effort on
object stores that do not). It names its holder: host, pid, the process's start time and the
command, so a second writer is told who holds the store.

A lease whose holder ran on this host and whose process is gone (killed) is stale, and the next
writer takes it over, as a resumed run takes over a killed run's store. A lease from another host
cannot be checked from here: the error says to delete the file once that writer is known dead.
Readers ignore the lease; a complete store has none left beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass

from softlabels import faults
from softlabels.errors import StoreBusyError

LEASE_SUFFIX = ".lease"
POLL_SECONDS = 0.05
MAX_LEASE_BYTES = 4096


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as recorded in its file."""

    host: str
    pid: int
    started_at: str  # ISO 8601 UTC: when the lease was taken
    command: str
    token: str  # unique per lease: tells a lease from a later one by the same process
    process_start: str | None = None  # /proc/PID/stat start ticks where there is a /proc

    def describe(self) -> str:
        return (
            f"process {self.pid} on host {self.host!r} ({self.command}), writing since "
            f"{self.started_at}"
        )

    def is_stale(self) -> bool:
        """True when the holder is known to be gone: it ran on this host and its process has
        exited (or its pid now belongs to a later process). False when alive or unknowable."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # someone else's live process
        start = _process_start(self.pid)
        return None not in (start, self.process_start) and start != self.process_start


def lease_path(path: str | os.PathLike[str]) -> str:
    """``.NAME.lease`` beside the store at ``path`` (NAME keeps its suffix)."""
    text = str(path).rstrip("/")
    head, sep, name = text.rpartition("/" if "://" in text else os.sep)
    return f"{head}{sep}.{name}{LEASE_SUFFIX}"


def current_holder(path: str | os.PathLike[str]) -> Holder | None:
    """The live holder of the store's lease, or None (no lease, or a stale one)."""
    holder = _read(lease_path(path))
    return None if holder is None or holder.is_stale() else holder


class WriterLease:
    """A held lease. Use ``acquire``; ``release`` gives it back (idempotent)."""

    def __init__(self, store: str, path: str, holder: Holder) -> None:
        self.store = store
        self.path = path
        self.holder = holder
        self.held = True

    @classmethod
    def acquire(cls, store: str | os.PathLike[str], *, wait: float = 0.0) -> WriterLease:
        """Take the lease of the store at ``store``; when another live writer holds it, wait up
        to ``wait`` seconds for it to be given back, then raise StoreBusyError naming it."""
        store = str(store)
        path = lease_path(store)
        mine = Holder(
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            command=" ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:3]),
            token=secrets.token_hex(8),
            process_start=_process_start(os.getpid()),
        )
        deadline = time.monotonic() + wait
        while True:
            if _create(path, mine):
                return cls(store, path, mine)
            other = _read(path)
            if other is not None and other.is_stale():
                _take_over(path, other)
                continue
            if other is not None:  # None: it vanished (released) or is being written: retry
                faults.point("lease_wait")
                if time.monotonic() >= deadline:
                    raise StoreBusyError(_busy_message(store, path, other, wait))
            time.sleep(POLL_SECONDS)

    def release(self) -> None:
        """Delete the lease file if it is still this lease."""
        if not self.held:
            return
        self.held = False
        current = _read(self.path)
        if current is not None and current.token == self.holder.token:
            _remove(self.path)

    def __enter__(self) -> WriterLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _busy_message(store: str, path: str, other: Holder, wait: float) -> str:
    waited = f" (waited {wait:g} s)" if wait > 0 else ""
    return (
        f"{store!r} is being written by another writer{waited}: {other.describe()}. Two writers "
        f"on one store would damage it, so this one stops before touching it. Wait for that "
        f"writer to finish, or ask this one to wait for it (lease_wait=SECONDS). If that writer "
        f"is dead (it ran on another host, so this one cannot tell), delete its lease file "
        f"{path!r} and run again"
    )


def _create(path: str, holder: Holder) -> bool:
    """Create the lease file exclusively; False if it already exists."""
    data = json.dumps(asdict(holder), sort_keys=True).encode()
    if "://" in path:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        fs.makedirs(fs._parent(p), exist_ok=True)
        try:
            with fs.open(p, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # as the store would be
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def _read(path: str) -> Holder | None:
    """The holder recorded at ``path``; None if there is no file. An unparsable file (being
    written this instant, or damaged) reads as a holder that cannot be checked."""
    try:
        if "://" in path:
            import fsspec

            fs, p = fsspec.core.url_to_fs(path)
            raw = fs.cat_file(p)
        else:
            with open(path, "rb") as f:
                raw = f.read(MAX_LEASE_BYTES + 1)
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(raw)
        return Holder(
            host=str(fields["host"]),
            pid=int(fields["pid"]),
            started_at=str(fields["started_at"]),
            command=str(fields.get("command", "")),
            token=str(fields["token"]),
            process_start=fields.get("process_start"),
        )
    except (ValueError, KeyError, TypeError):
        if not raw:
            return None  # created, contents not written yet: look again
        return Holder("unknown", -1, "an unknown time", "unreadable lease file", "?")


def _take_over(path: str, stale: Holder) -> None:
    """Remove a stale lease, unless it changed since it was read (another writer took it)."""
    current = _read(path)
    if current is not None and current.token == stale.token:
        _remove(path)


def _remove(path: str) -> None:
    if "://" in path:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        try:
            fs.rm(p)
        except FileNotFoundError:
            pass
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name
