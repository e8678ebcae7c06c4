"""Fault injection for the reliability tests (RELIABILITY.md). SOFTLABELS_FAULT_RANK=R limits
the fault to the torchrun rank R. Inert unless the environment
variable SOFTLABELS_FAULT is set, as ``POINT:N`` (SIGKILL this process the N-th time it passes
POINT) or ``POINT:N:enospc`` (raise a "no space left on device" OSError there instead).

Points: ``chunk_array`` (after each array of a chunk is written, i.e. mid-chunk),
``chunk_data_written`` (all arrays written, journal entry not yet), ``chunk_committed``,
``finalize_checksums`` (checksums attribute written), ``finalize_journal_deleted`` (journal gone,
``complete`` not yet set), ``epoch_end`` (trainer: after an epoch's checkpoint).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "SOFTLABELS_FAULT"
_passes: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    only_rank = os.environ.get(ENV + "_RANK")  # under torchrun: fault one rank only
    if only_rank is not None and os.environ.get("RANK", "0") != only_rank:
        return
    when, _, action = rest.partition(":")
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != int(when or 1):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    os.kill(os.getpid(), signal.SIGKILL)
