"""Fault injection for the reliability tests (RELIABILITY.md). Inert unless the environment
variable SOFTLABELS_FAULT is set to one SPEC or several separated by commas. A SPEC is
``POINT:N[:ACTION]`` and acts the N-th time this process passes POINT (passes are counted per
POINT, once per pass however many SPECs name it; SPECs on the same pass act in the order given):

- ``POINT:N``             SIGKILL this process there.
- ``POINT:N:enospc``      raise a "no space left on device" OSError there instead.
- ``POINT:N:signal=PATH`` create the empty file PATH, then carry on.
- ``POINT:N:wait=PATH``   block there until PATH exists (polled every 10 ms), then carry on;
                          after SOFTLABELS_FAULT_TIMEOUT seconds (default 300) raise RuntimeError.

``signal`` and ``wait`` let a test synchronise with a child process on events instead of sleeps:
``chunk_committed:3:signal=/tmp/t/reached,chunk_committed:3:wait=/tmp/t/go`` pauses the writer
right after its third commit until the test, having seen ``reached``, creates ``go``. PATH must
not contain a comma. SOFTLABELS_FAULT_RANK=R limits every SPEC to the torchrun rank R.

Points: ``create_staged`` (a new store fully created under its staging name, not yet moved
to its path), ``chunk_array`` (after each array of a chunk is written, i.e. mid-chunk),
``chunk_data_written`` (all arrays written, journal entry not yet), ``chunk_committed``,
``finalize_checksums`` (checksums attribute written), ``finalize_journal_deleted`` (journal gone,
``complete`` not yet set), ``replace_complete`` (an overwrite's replacement complete beside the
old store, not yet swapped in), ``epoch_end`` (trainer: after an epoch's checkpoint).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

ENV = "SOFTLABELS_FAULT"
TIMEOUT_ENV = "SOFTLABELS_FAULT_TIMEOUT"
POLL_SECONDS = 0.01
_passes: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    specs = [s.split(":", 2) for s in spec.split(",") if s]
    if not any(s[0] == name for s in specs):
        return
    only_rank = os.environ.get(ENV + "_RANK")  # under torchrun: fault one rank only
    if only_rank is not None and os.environ.get("RANK", "0") != only_rank:
        return
    _passes[name] = _passes.get(name, 0) + 1
    for s in specs:
        target, when, action = (s + ["", ""])[:3]
        if target == name and _passes[name] == int(when or 1):
            _act(name, action)


def _act(name: str, action: str) -> None:
    kind, _, path = action.partition("=")
    if kind == "":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    elif kind == "signal" and path:
        Path(path).touch()
    elif kind == "wait" and path:
        wait_for(Path(path), float(os.environ.get(TIMEOUT_ENV, "300")), what=f"fault point {name}")
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} at {name}")


def wait_for(
    path: Path,
    timeout: float,
    *,
    what: str = "waiting",
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Return once ``path`` exists; raise RuntimeError after ``timeout`` seconds, or as soon as
    ``abort()`` (checked on every poll) returns a reason, e.g. that the process that was to
    create ``path`` has exited."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        reason = abort() if abort is not None else None
        if reason is not None and not path.exists():
            raise RuntimeError(f"{what}: {path} never appeared: {reason}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {path} did not appear within {timeout:g} s")
        time.sleep(POLL_SECONDS)
