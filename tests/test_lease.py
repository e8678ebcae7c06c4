"""One writer at a time: the writer lease (softlabels/store/lease.py, FORMAT.md "Writer lease").

A first writer runs in a child process, paused at a fault point (its signal file says it got
there; it carries on when the test creates its go file): no sleeps. While it is paused, a second
writer is refused, names the first, and leaves its store alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner

from softlabels.cli import main as softlabels_cli
from softlabels.errors import IncompleteStoreError, StoreBusyError
from softlabels.store import StoreWriter, open_store
from softlabels.store.lease import WriterLease, lease_path
from tests.conftest import make_store
from tests.faults_campaign import ENV, ROOT
from tests.helpers import child_env, wait_for_signal

GEN = ["--teacher", "tests.helpers:teacher_a", "--transfer", "digits", "--chunk-rows", "256"]


def _generate(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "softlabels.cli", "generate", *GEN, "--out", str(out), *extra]


def _paused(tmp_path: Path, cmd: list[str], point: str, tag: str = "a") -> subprocess.Popen:
    """Start ``cmd``; return once it has reached ``point`` (it waits there for go-TAG)."""
    reached, go = tmp_path / f"reached-{tag}", tmp_path / f"go-{tag}"
    spec = f"{point}:signal={reached},{point}:wait={go}"
    env = child_env({**ENV, "SOFTLABELS_FAULT": spec})
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    wait_for_signal(reached, proc)
    return proc


def _finish(proc: subprocess.Popen, tmp_path: Path, tag: str = "a") -> str:
    (tmp_path / f"go-{tag}").touch()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


def _no_journal(path: Path) -> bool:
    return not (path / "_chunk_commits").exists()


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_overwrite_while_another_writes_is_refused_and_harms_nothing(tmp_path, suffix):
    """Issue 22 §2: a `generate --overwrite` started during another `generate` deleted the live
    store. Now it stops before touching anything, naming the holder."""
    out = tmp_path / f"s{suffix}"
    first = _paused(tmp_path, _generate(out, "--quiet"), "chunk_committed:2")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(
        softlabels_cli, ["generate", *GEN, "--out", str(out), "--overwrite", "--quiet"]
    )
    assert res.exit_code == 1, res.output
    assert f"process {first.pid} on host {socket.gethostname()!r}" in res.output
    assert "is being written by another writer" in res.output and "--lease-wait" in res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created or deleted
    # a reader is told the store is being written (HDF5 locks it: not "regenerate it")
    expected = StoreBusyError if suffix == ".h5" else IncompleteStoreError
    with pytest.raises(expected, match=rf"being written now by process {first.pid} on host"):
        open_store(out)
    _finish(first, tmp_path)
    with open_store(out) as store:  # the first writer's store, complete and sound
        assert store.verify_checksums() == []
    assert not Path(lease_path(out)).exists()  # a complete store has no lease beside it


def test_two_resumes_at_once_leave_one_clean_store(tmp_path):
    """A killed run leaves a stale lease; one --resume takes it over; a second --resume at the
    same time is refused; the finished store has no stray _chunk_commits."""
    out = tmp_path / "s.zarr"
    env = child_env({**ENV, "SOFTLABELS_FAULT": "chunk_committed:2"})  # SIGKILL there
    killed = subprocess.Popen(_generate(out, "--quiet"), env=env, cwd=ROOT)
    assert killed.wait(timeout=300) == -9
    stale = json.loads(Path(lease_path(out)).read_text())  # left behind by the kill
    assert stale["pid"] == killed.pid and stale["host"] == socket.gethostname()
    first = _paused(tmp_path, _generate(out, "--resume", "--quiet"), "chunk_committed:1")
    held = json.loads(Path(lease_path(out)).read_text())
    assert held["pid"] == first.pid and held["token"] != stale["token"]  # taken over
    res = CliRunner().invoke(
        softlabels_cli, ["generate", *GEN, "--out", str(out), "--resume", "--quiet"]
    )
    assert res.exit_code == 1 and f"process {first.pid}" in res.output, res.output
    _finish(first, tmp_path)
    assert _no_journal(out) and not Path(lease_path(out)).exists()
    res = CliRunner().invoke(  # now a no-op: the store is complete
        softlabels_cli, ["generate", *GEN, "--out", str(out), "--resume", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    with open_store(out) as store:
        assert store.verify_checksums() == [] and store.meta.complete
    assert _no_journal(out)


def test_a_second_writer_asked_to_wait_waits_then_replaces(tmp_path):
    out = tmp_path / "s.zarr"
    first = _paused(tmp_path, _generate(out, "--quiet"), "chunk_committed:1")
    waiting = tmp_path / "waiting"
    second_env = child_env({**ENV, "SOFTLABELS_FAULT": f"lease_wait:1:signal={waiting}"})
    second = subprocess.Popen(
        _generate(out, "--overwrite", "--lease-wait", "300", "--quiet"),
        env=second_env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_signal(waiting, second)  # it found the lease held and is waiting
    assert second.poll() is None
    _finish(first, tmp_path)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    with open_store(out) as store:
        assert store.verify_checksums() == [] and store.meta.complete
    assert not Path(lease_path(out)).exists()


def test_lease_on_an_fsspec_url(tmp_path):
    """memory:// in one process: the second writer is refused while the first holds the lease;
    the first finishes untouched, and its lease is gone."""
    url = f"memory://lease-{os.getpid()}/s.zarr"
    make_store(tmp_path / "ref.zarr", teachers=("tests.helpers:teacher_a",))
    with open_store(tmp_path / "ref.zarr") as ref:
        meta, rows = ref.meta, [ref.read_chunk(c) for c in range(ref.meta.num_chunks)]
    writer = StoreWriter.create(url, meta)
    fs = fsspec.filesystem("memory")
    assert fs.exists(lease_path(url).removeprefix("memory://"))
    with pytest.raises(StoreBusyError, match=rf"process {os.getpid()} on host"):
        StoreWriter.create(url, meta, overwrite=True)
    with pytest.raises(StoreBusyError):
        StoreWriter.attach(url, meta)
    for c, r in enumerate(rows):
        writer.write_chunk(c, r)
    final = writer.finalize()
    writer.close()
    assert final.checksums == meta.checksums
    assert not fs.exists(lease_path(url).removeprefix("memory://"))
    with open_store(url) as store:
        np.testing.assert_array_equal(store.read_chunk(0).logits, rows[0].logits)


def test_a_lease_from_another_host_is_not_taken_over(tmp_path):
    """A lease whose holder ran elsewhere cannot be checked: refused, with how to clear it."""
    out = tmp_path / "s.zarr"
    holder = {"host": "elsewhere", "pid": 1, "started_at": "2026-01-01T00:00:00+00:00"}
    Path(lease_path(out)).write_text(json.dumps({**holder, "command": "x", "token": "t"}))
    with pytest.raises(StoreBusyError) as err:
        make_store(out)
    text = str(err.value)
    assert "process 1 on host 'elsewhere'" in text and "since 2026-01-01T00:00:00+00:00" in text
    assert f"delete its lease file {lease_path(out)!r}" in text and not out.exists()


def test_a_killed_local_holder_is_taken_over_and_released(tmp_path):
    out = tmp_path / "s.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that has exited on this host
    holder = {"host": socket.gethostname(), "pid": dead.pid, "started_at": "then"}
    Path(lease_path(out)).write_text(json.dumps({**holder, "command": "x", "token": "t"}))
    make_store(out, teachers=("tests.helpers:teacher_a",))
    assert not Path(lease_path(out)).exists()
    lease = WriterLease.acquire(out)  # free again
    lease.release()
    assert not Path(lease_path(out)).exists()
