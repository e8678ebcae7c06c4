"""Stores read over fsspec URLs: a local HTTP server on 127.0.0.1, and memory://."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from softlabels.errors import StoreFormatError
from softlabels.store import open_store
from softlabels.summary import inspect_store
from softlabels.tools import combine_stores
from softlabels.verify import verify_store
from tests.conftest import make_store
from trainer.train import TrainConfig, train


class _Handler(SimpleHTTPRequestHandler):
    served: list[str] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        _Handler.served.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory, digits_store):
    root = tmp_path_factory.mktemp("www")
    shutil.copytree(digits_store, root / "digits.zarr")
    make_store(root / "single.zarr", teachers=("tests.helpers:teacher_c",))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_http_reads_only_what_it_needs(server, digits_store):
    _Handler.served.clear()
    with open_store(f"{server}/digits.zarr") as remote, open_store(digits_store) as local:
        assert remote.meta == local.meta
        rows = remote.read_chunk(3)
        np.testing.assert_array_equal(rows.member_logits, local.read_chunk(3).member_logits)
    chunk_files = [p for p in _Handler.served if "/c/" in p]
    assert chunk_files and all("/c/3" in p for p in chunk_files), chunk_files
    assert not any(p.endswith("/") for p in _Handler.served), "no directory listing is needed"


def test_http_inspect_verify_train(server, tmp_path):
    url = f"{server}/digits.zarr"
    info = inspect_store(url)
    assert info["complete"] and info["size_on_disk_bytes"] is None
    assert verify_store(url, transfer="digits").ok
    run = train(
        TrainConfig(out=str(tmp_path / "run"), store=url, hidden=(8,), epochs=1, progress=False)
    )
    assert run.final["epoch"] == 1


def test_combine_across_urls(server, tmp_path):
    local = make_store(tmp_path / "a.zarr", teachers=("tests.helpers:teacher_a",))
    meta = combine_stores(
        (str(local), f"{server}/single.zarr"), str(tmp_path / "ac.zarr"), combine="geometric"
    )
    assert [t.name for t in meta.teachers] == ["tests.helpers:teacher_a", "tests.helpers:teacher_c"]


def test_memory_url_round_trip(digits_store):
    from softlabels.tools import convert_store

    convert_store(str(digits_store), "memory://stores/digits.zarr")
    with open_store("memory://stores/digits.zarr") as s:
        assert s.meta.complete and s.verify_checksums() == []


def test_missing_remote_and_remote_hdf5(server):
    with pytest.raises(FileNotFoundError):
        open_store(f"{server}/nothing.zarr")
    with pytest.raises(StoreFormatError, match="remote stores must be Zarr"):
        open_store(f"{server}/x.h5")
