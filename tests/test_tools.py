from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from softlabels.errors import ChecksumError, MismatchError, StoreExistsError
from softlabels.store import open_store
from softlabels.summary import inspect_store
from softlabels.tools import combine_stores, convert_store
from softlabels.verify import verify_store
from tests.conftest import make_store
from tests.stores.build import _rechecksum
from tests.test_ensemble import direct_arithmetic


def test_inspect_values(digits_store):
    info = inspect_store(str(digits_store))
    with open_store(digits_store) as s:
        rows = s.read(0, s.meta.num_samples)
    acc = float((rows.logits.argmax(1) == rows.labels).mean())
    assert info["teacher_accuracy"] == pytest.approx(acc)
    assert info["member_accuracy"][1] == pytest.approx(
        float((rows.member_logits[:, 1].argmax(1) == rows.labels).mean())
    )
    p = direct_arithmetic(rows.member_logits, np.full(3, 1 / 3), 4.0)
    assert info["mean_entropy_nats"]["T=4"] == pytest.approx(
        float(-(p * np.log(p)).sum(1).mean()), rel=1e-5
    )
    assert info["arrays"]["member_logits"] == [1438, 3, 10]
    assert info["bytes_per_sample"] == pytest.approx(info["size_on_disk_bytes"] / 1438)
    assert info["complete"] and info["committed_chunks"] == info["num_chunks"] == 6
    json.dumps(info)


def test_verify_passes_a_good_store_with_rerun(digits_store):
    teachers = ("tests.helpers:teacher_a", "tests.helpers:teacher_b", "tests.helpers:teacher_c")
    report = verify_store(str(digits_store), transfer="digits", teachers=teachers, sample=32)
    assert report.ok, report.render()
    assert [name for name, _, _ in report.checks] == [
        "format",
        "complete",
        "attributes",
        "checksums",
        "sample_index",
        "labels",
        "finite",
        "transfer",
        "teachers",
    ]


def test_verify_detects_a_flipped_byte(tmp_path):
    path = make_store(tmp_path / "s.zarr", compress=False)
    chunk_file = path / "logits" / "c" / "2" / "0"
    data = bytearray(chunk_file.read_bytes())
    data[100] ^= 0xFF
    chunk_file.write_bytes(bytes(data))
    report = verify_store(str(path))
    assert not report.ok
    assert ("checksums", False, "chunks [2] do not match their recorded SHA-256") in report.checks


def test_verify_detects_wrong_transfer_and_teacher(digits_store):
    report = verify_store(
        str(digits_store),
        transfer="tests.helpers:tiny_dataset",
        teachers=("tests.helpers:teacher_a",) * 3,
    )
    details = {name: (ok, detail) for name, ok, detail in report.checks}
    assert (
        details["transfer"][0] is False
        and "N: store has 1438 rows, transfer set has 40" in details["transfer"][1]
    )
    assert details["teachers"][0] is False and "teacher 1" in details["teachers"][1]


def test_verify_reports_unreadable(tmp_path):
    report = verify_store(str(tmp_path / "none.zarr"))
    assert not report.ok and report.checks[0][0] == "format"


@pytest.mark.parametrize(("src_suffix", "dst_suffix"), [(".zarr", ".h5"), (".h5", ".zarr")])
def test_convert_is_lossless_both_ways(tmp_path, src_suffix, dst_suffix):
    src = make_store(tmp_path / f"a{src_suffix}", dtype="float16")
    dst = tmp_path / f"b{dst_suffix}"
    convert_store(str(src), str(dst))
    back = tmp_path / f"c{src_suffix}"
    convert_store(str(dst), str(back))
    with open_store(src) as a, open_store(dst) as b, open_store(back) as c:
        assert a.meta == b.meta == c.meta
        ra, rb = a.read(0, 1438), b.read(0, 1438)
        assert (
            ra.logits.tobytes() == rb.logits.tobytes()
            and ra.member_logits.tobytes() == rb.member_logits.tobytes()
        )
    with pytest.raises(StoreExistsError):
        convert_store(str(src), str(dst))


@pytest.mark.bitwise
def test_combine_pools_members(tmp_path):
    a = make_store(tmp_path / "a.zarr", teachers=("tests.helpers:teacher_a",))
    bc = make_store(
        tmp_path / "bc.h5", teachers=("tests.helpers:teacher_b", "tests.helpers:teacher_c")
    )
    out = tmp_path / "abc.zarr"
    combine_stores((str(a), str(bc)), str(out), combine="arithmetic", weights=(0.5, 0.5))
    direct = make_store(tmp_path / "direct.zarr", weights=(0.5, 0.25, 0.25))
    with open_store(out) as o, open_store(direct) as d:
        assert o.meta.weights == pytest.approx((0.5, 0.25, 0.25))
        assert [t.name for t in o.meta.teachers] == [t.name for t in d.meta.teachers]
        ro, rd = o.read(0, 1438), d.read(0, 1438)
        np.testing.assert_array_equal(ro.member_logits, rd.member_logits)
        np.testing.assert_array_equal(ro.logits, rd.logits)


def test_combine_refuses_mismatches(tmp_path, digits_store, digits_test_store):
    with pytest.raises(
        MismatchError, match="transfer fingerprints differ.*splits differ.*row counts differ"
    ):
        combine_stores(
            (str(digits_store), str(digits_test_store)),
            str(tmp_path / "x.zarr"),
            combine="geometric",
        )
    shuffled = make_store(tmp_path / "p.zarr", teachers=("tests.helpers:teacher_a",))
    g = zarr.open_group(str(shuffled), mode="r+")
    g["sample_index"][:2] = [1, 0]
    with pytest.raises(ChecksumError, match=r"p\.zarr': chunks \[0\] do not match"):
        combine_stores(
            (str(digits_store), str(shuffled)), str(tmp_path / "y.zarr"), combine="arithmetic"
        )
    _rechecksum(shuffled)  # a consistent store in another order: refused for its order
    with pytest.raises(MismatchError, match=r"sample order \(sample_index\) differs"):
        combine_stores(
            (str(digits_store), str(shuffled)), str(tmp_path / "y.zarr"), combine="arithmetic"
        )
    assert not Path(tmp_path / "y.zarr").exists()
