"""Faults that used to end in a traceback or in wrong advice (issue 22 §3): a full disk (HDF5,
training checkpoints), HTTP failures, absurd checkpoints, unreadable chunks, a deleted chunk,
and a killed `combine` or `convert`. Each must give one clear message that says what to do.

The disk-full tests write to a real, tiny tmpfs that the test mounts and unmounts; that needs
root (mount), so elsewhere they are skipped, saying why."""

from __future__ import annotations

import errno
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from softlabels.checkpoint import save_checkpoint
from softlabels.cli import main as softlabels_cli
from softlabels.errors import (
    ChecksumError,
    IncompleteStoreError,
    MismatchError,
    StoreReadError,
)
from softlabels.join import check_transfer
from softlabels.store import open_store
from softlabels.store.lease import lease_path
from softlabels.transfer import as_transfer
from softlabels.verify import verify_store
from tests.conftest import make_store
from tests.faults_campaign import ENV, ROOT
from tests.helpers import child_env
from trainer.cli import main as distill


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 96 KiB tmpfs: a real file system that fills up."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(where)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(where)], check=True)
            pytest.fail("a file on the full disk was left open")


def test_hdf5_on_a_full_disk_is_one_clean_message(tiny_disk):
    """It was a segfault (rc 139) after screens of h5py tracebacks."""
    out = tiny_disk / "s.h5"
    cmd = [sys.executable, "-m", "softlabels.cli", "generate", "--teacher"]
    cmd += ["tests.helpers:teacher_a", "--transfer", "digits", "--no-compress", "--quiet"]
    res = subprocess.run(
        [*cmd, "--out", str(out)],
        env=child_env(ENV),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the disk is full"), res.stderr
    assert "No space left on device" in lines[0] and "--resume" in lines[0]
    with open_store(out, allow_incomplete=True) as store:  # still a valid, resumable store
        assert not store.meta.complete
    assert not Path(lease_path(out)).exists()


def test_training_on_a_full_disk_is_one_clean_message(tiny_disk, digits_store):
    """It was a traceback from torch's zip writer, and last.pt.tmp was left behind."""
    out = tiny_disk / "run"
    args = ["train", "--store", str(digits_store), "--hidden", "512", "--epochs", "1"]
    res = CliRunner().invoke(distill, [*args, "--quiet", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "Error: cannot write the checkpoint" in res.output and "disk is full" in res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1, res.output
    assert not list(out.glob("*.tmp"))


# -- HTTP


class _Faulty(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; chunk objects (``/c/`` in the path) fail as ``mode`` says."""

    mode = "ok"

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        if "/c/" in self.path and self.mode == "error":
            self.send_error(503)
            return None
        return super().send_head()

    def copyfile(self, source, dest) -> None:  # type: ignore[no-untyped-def]
        if "/c/" in self.path and self.mode == "cut":  # dies mid-response
            data = source.read()
            dest.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().copyfile(source, dest)


@pytest.fixture
def server(digits_store) -> Iterator[tuple[str, type[_Faulty], http.server.HTTPServer]]:
    handler = type("Handler", (_Faulty,), {})
    serve = functools.partial(handler, directory=str(digits_store.parent))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), serve)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/{digits_store.name}"
    try:
        yield url, handler, srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.mark.parametrize("mode", ["cut", "error", "down"])
def test_http_failures_are_network_errors(server, mode):
    url, handler, srv = server
    with open_store(url) as store:
        handler.mode = mode
        if mode == "down":
            srv.shutdown()
            srv.server_close()
        with pytest.raises(StoreReadError) as err:
            store.read_verified_chunk(0)
    text = str(err.value)
    assert text.startswith(f"network error reading rows [0, 256) of {url!r}")
    assert "retry" in text and "corrupt" not in text and "checksum" not in text


def test_http_failure_on_the_command_line_is_one_line(server, capfd):
    url, handler, _ = server
    handler.mode = "cut"
    res = CliRunner().invoke(softlabels_cli, ["verify", url])
    assert res.exit_code == 1
    assert "[FAIL] readable: network error reading rows" in res.output, res.output
    assert "do not match" not in res.output
    assert capfd.readouterr().err.count("\n") <= 1  # no asyncio noise


# -- checkpoints


def test_an_absurd_checkpoint_as_teacher_is_refused_before_allocating(tmp_path):
    ckpt = tmp_path / "absurd.pt"
    arch = {"name": "mlp", "kwargs": {"in_shape": [1, 8, 8], "num_classes": 10}}
    arch["kwargs"]["hidden"] = [200000, 200000]
    save_checkpoint(ckpt, {"arch": arch, "model": {}})
    args = ["generate", "--teacher", str(ckpt), "--transfer", "digits"]
    res = CliRunner().invoke(softlabels_cli, [*args, "--out", str(tmp_path / "s.zarr")])
    assert res.exit_code == 1, res.output
    assert f"checkpoint {str(ckpt)!r}" in res.output
    assert "would have 40,015,200,010 parameters" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("damage", ["truncated", "wrong_file"])
def test_a_damaged_checkpoint_as_teacher_is_named(tmp_path, damage):
    ckpt = tmp_path / "t.pt"
    arch = {"name": "mlp", "kwargs": {"in_shape": [1, 8, 8], "num_classes": 10, "hidden": [8]}}
    save_checkpoint(ckpt, {"arch": arch, "model": {"w": torch.zeros(1000)}})
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello world\n")
    args = ["generate", "--teacher", str(ckpt), "--transfer", "digits"]
    res = CliRunner().invoke(softlabels_cli, [*args, "--out", str(tmp_path / "s.zarr")])
    assert res.exit_code == 1 and str(ckpt) in res.output, res.output
    assert "Traceback" not in res.output


# -- unreadable and missing chunks


def test_an_unreadable_chunk_is_reported_as_unreadable(tmp_path, digits_store, monkeypatch):
    copy = tmp_path / "s.zarr"
    shutil.copytree(digits_store, copy)
    chunk = copy / "logits" / "c" / "1" / "0"
    if os.geteuid() == 0:  # root reads through chmod: deny it where zarr reads the file
        import zarr.storage._local as local

        real = local._get

        def denied(path, *args):  # type: ignore[no-untyped-def]
            if Path(path) == chunk:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args)

        monkeypatch.setattr(local, "_get", denied)
    else:
        chunk.chmod(0)
    with open_store(copy) as store:
        store.read_verified_chunk(0)
        with pytest.raises(StoreReadError, match=r"rows \[256, 512\) .* permission denied"):
            store.read_verified_chunk(1)
    report = verify_store(str(copy))
    failed = {name: detail for name, ok, detail in report.checks if not ok}
    assert list(failed) == ["readable"] and "permission denied" in failed["readable"]


def test_a_deleted_labels_chunk_blames_the_store(tmp_path, digits_store):
    copy = tmp_path / "s.zarr"
    shutil.copytree(digits_store, copy)
    (copy / "labels" / "c" / "0").unlink()  # zarr reads it back as zeros
    with open_store(copy) as store:
        with pytest.raises(ChecksumError, match=r"chunk 0 of .* does not match its checksum"):
            check_transfer(as_transfer("digits", "train"), num_classes=10, store=store)
    args = ["train", "--store", str(copy), "--hidden", "8", "--epochs", "1", "--quiet"]
    res = CliRunner().invoke(distill, [*args, "--out", str(tmp_path / "run")])
    assert res.exit_code == 1, res.output
    assert "does not match its checksum" in res.output and "transfer set" not in res.output


def test_an_intact_store_still_blames_the_transfer_set(tmp_path, digits_store):
    """The check above must not hide a real mismatch: other labels are the transfer set's."""
    data = as_transfer("digits", "train")
    data.labels[:3] = (data.labels[:3] + 1) % 10  # type: ignore[index]
    with open_store(digits_store) as store:
        with pytest.raises(MismatchError, match=r"labels differ .* positions \[0, 1, 2\]"):
            check_transfer(data, num_classes=10, store=store)


# -- a killed combine or convert


@pytest.mark.parametrize("tool", ["combine", "convert"])
def test_a_killed_tool_advises_running_it_again(tmp_path, digits_store, tool):
    out = tmp_path / "out.zarr"
    if tool == "combine":
        other = make_store(tmp_path / "b.zarr", teachers=("tests.helpers:teacher_b",))
        args = ["combine", str(digits_store), str(other), "--combine", "arithmetic"]
        args += ["--out", str(out)]
    else:
        args = ["convert", str(digits_store), str(out)]
    env = child_env({**ENV, "SOFTLABELS_FAULT": "chunk_committed:2"})  # SIGKILL there
    killed = subprocess.run(
        [sys.executable, "-m", "softlabels.cli", *args], env=env, cwd=ROOT, timeout=300
    )
    assert killed.returncode == -9
    with pytest.raises(IncompleteStoreError) as err:
        open_store(out)
    text = str(err.value)
    assert f"it was being written by `softlabels {tool}`, which cannot resume" in text
    assert f"run the same `softlabels {tool}` again with overwrite=True" in text
    assert "generate" not in text and "resume=True" not in text
    res = CliRunner().invoke(softlabels_cli, ["verify", str(out)])
    assert f"`softlabels {tool}` again with --overwrite" in res.output, res.output
    res = CliRunner().invoke(softlabels_cli, [*args, "--overwrite"])  # takes over the lease
    assert res.exit_code == 0, res.output
    with open_store(out) as store:
        assert store.verify_checksums() == []
