"""Build a folder of deliberately broken or malicious soft-label stores.

    python -m tests.stores.build OUT_DIR

Every store is built from one small valid store (20 rows, 3 classes, 2 teachers, chunks of 8
rows) over ``OUT_DIR/transfer.npz``, then damaged in one way. Where a case must get past the
checksums to test a deeper check (NaN logits, a bad sample_index), the checksums are recomputed,
as a malicious producer would. ``CASES`` maps each store name to what is wrong with it; the
tests require `softlabels verify` to flag every one and the trainer to refuse every one with a
clear error.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import zarr

from softlabels.schema import MAX_ATTRS_BYTES, StoreMeta, TeacherInfo, TransferInfo
from softlabels.store import Rows, StoreWriter, chunk_checksum, open_store
from softlabels.transfer import load_transfer

N, C, M, CHUNK = 20, 3, 2, 8


def build_valid(out: Path, name: str, *, compress: bool = True) -> Path:
    transfer = load_transfer(str(out / "transfer.npz"))
    meta = StoreMeta(
        num_samples=N,
        num_classes=C,
        class_names=("a", "b", "c"),
        combine="arithmetic",
        weights=(0.5, 0.5),
        teachers=(
            TeacherInfo("t1", "evil_module:teacher", None, "1" * 64),
            TeacherInfo("t2", "t2.pt", None, "2" * 64),
        ),
        transfer=TransferInfo(transfer.name, "train", N, transfer.fingerprint()),
        dtype="float32",
        chunk_rows=CHUNK,
        created_at="2026-11-21T00:00:00+00:00",
        producer="tests.stores.build",
    )
    rng = np.random.default_rng(0)
    members = rng.normal(size=(N, M, C)).astype(np.float32)
    logits = np.log(np.exp(members).mean(1) / np.exp(members).sum(2).mean(1, keepdims=True)).astype(
        np.float32
    )
    labels = transfer.label_array()
    path = out / name
    with StoreWriter.create(path, meta, compress=compress, overwrite=True) as w:
        for k in range(meta.num_chunks):
            a, b = meta.chunk_bounds(k)
            w.write_chunk(
                k, Rows.dense(logits[a:b], members[a:b], np.arange(a, b), labels[a:b], start=a)
            )
        w.finalize()
    return path


def _rechecksum(path: Path) -> None:
    """Recompute checksums after editing data, as a malicious producer would."""
    with open_store(path, allow_incomplete=True) as s:
        sums = [chunk_checksum(s.read_chunk(k)) for k in range(s.meta.num_chunks)]
    if path.suffix == ".zarr":
        zarr.open_group(str(path), mode="r+").attrs["checksums"] = sums
    else:
        with h5py.File(path, "r+") as f:
            f.attrs["checksums"] = json.dumps(sums)


def _edit_array(path: Path, name: str, fn: Callable[[np.ndarray], None]) -> None:
    if path.suffix == ".zarr":
        arr = zarr.open_group(str(path), mode="r+")[name]
        data = arr[:]
        fn(data)
        arr[:] = data
    else:
        with h5py.File(path, "r+") as f:
            data = f[name][:]
            fn(data)
            f[name][:] = data
    _rechecksum(path)


def _set_attr(path: Path, key: str, value) -> None:
    zarr.open_group(str(path), mode="r+").attrs[key] = value


def flipped_byte(out: Path) -> Path:
    p = build_valid(out, "flipped_byte.zarr", compress=False)
    f = p / "logits" / "c" / "1" / "0"
    data = bytearray(f.read_bytes())
    data[5] ^= 0x40
    f.write_bytes(bytes(data))
    return p


def flipped_byte_compressed(out: Path) -> Path:
    p = build_valid(out, "flipped_byte_compressed.zarr")
    f = p / "member_logits" / "c" / "0" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return p


def truncated_h5(out: Path) -> Path:
    p = build_valid(out, "truncated.h5")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def missing_array(out: Path) -> Path:
    p = build_valid(out, "missing_array.zarr")
    shutil.rmtree(p / "labels")
    return p


def shape_mismatch(out: Path) -> Path:
    p = build_valid(out, "shape_mismatch.h5")
    with h5py.File(p, "r+") as f:
        del f["sample_index"]
        f.create_dataset("sample_index", data=np.arange(N - 3, dtype=np.int64))
    return p


def nan_logits(out: Path) -> Path:
    p = build_valid(out, "nan_logits.zarr")
    _edit_array(p, "member_logits", lambda a: a.__setitem__((3, 1, 2), np.nan))
    return p


def future_version(out: Path) -> Path:
    p = build_valid(out, "future_version.zarr")
    _set_attr(p, "format_version", 3)
    return p


def wrong_format(out: Path) -> Path:
    p = build_valid(out, "wrong_format.zarr")
    _set_attr(p, "format", "safetensors")
    return p


def attrs_not_json_h5(out: Path) -> Path:
    p = build_valid(out, "attrs_not_json.h5")
    with h5py.File(p, "r+") as f:
        f.attrs["teachers"] = "[{'name': 'not json'"
    return p


def zarr_json_garbage(out: Path) -> Path:
    p = build_valid(out, "zarr_json_garbage.zarr")
    (p / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {')
    return p


def attrs_wrong_types(out: Path) -> Path:
    p = build_valid(out, "attrs_wrong_types.zarr")
    _set_attr(p, "num_classes", "3")
    return p


def huge_attrs(out: Path) -> Path:
    p = build_valid(out, "huge_attrs.zarr")
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["padding"] = "x" * (MAX_ATTRS_BYTES + 1024)
    (p / "zarr.json").write_text(json.dumps(meta))
    return p


def duplicate_index(out: Path) -> Path:
    p = build_valid(out, "duplicate_index.zarr")
    _edit_array(p, "sample_index", lambda a: a.__setitem__(4, 3))
    return p


def out_of_range_index(out: Path) -> Path:
    p = build_valid(out, "out_of_range_index.h5")
    _edit_array(p, "sample_index", lambda a: a.__setitem__(7, 10**6))
    return p


def complete_without_checksums(out: Path) -> Path:
    p = build_valid(out, "complete_without_checksums.zarr")
    _set_attr(p, "checksums", None)
    return p


def incomplete(out: Path) -> Path:
    p = build_valid(out, "incomplete.zarr")
    _set_attr(p, "complete", False)
    return p


def link_outside_chunk(out: Path) -> Path:
    p = build_valid(out, "link_outside_chunk.zarr", compress=False)
    secret = out / "outside-secret.bin"
    secret.write_bytes(b"\x00" * (CHUNK * C * 4))
    chunk = p / "logits" / "c" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to(secret.resolve())
    return p


def link_outside_array(out: Path) -> Path:
    p = build_valid(out, "link_outside_array.zarr")
    elsewhere = out / "outside-array"
    shutil.move(str(p / "labels"), elsewhere)
    (p / "labels").symlink_to(elsewhere.resolve(), target_is_directory=True)
    return p


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "flipped_byte.zarr": (flipped_byte, "a flipped byte in an uncompressed chunk"),
    "flipped_byte_compressed.zarr": (
        flipped_byte_compressed,
        "a flipped byte in a compressed chunk",
    ),
    "truncated.h5": (truncated_h5, "an HDF5 file cut in half"),
    "missing_array.zarr": (missing_array, "the labels array deleted"),
    "shape_mismatch.h5": (shape_mismatch, "sample_index shorter than logits"),
    "nan_logits.zarr": (nan_logits, "a NaN member logit, checksums recomputed"),
    "future_version.zarr": (future_version, "format_version 3"),
    "wrong_format.zarr": (wrong_format, "format name of another tool"),
    "attrs_not_json.h5": (attrs_not_json_h5, "an HDF5 attribute that is not JSON"),
    "zarr_json_garbage.zarr": (zarr_json_garbage, "zarr.json cut off mid-object"),
    "attrs_wrong_types.zarr": (attrs_wrong_types, "num_classes as a string"),
    "huge_attrs.zarr": (huge_attrs, f"zarr.json over {MAX_ATTRS_BYTES // 2**20} MiB"),
    "duplicate_index.zarr": (
        duplicate_index,
        "sample_index with a duplicate, checksums recomputed",
    ),
    "out_of_range_index.h5": (
        out_of_range_index,
        "sample_index out of range, checksums recomputed",
    ),
    "complete_without_checksums.zarr": (
        complete_without_checksums,
        "complete flag set, checksums null",
    ),
    "incomplete.zarr": (incomplete, "complete flag false"),
    "link_outside_chunk.zarr": (
        link_outside_chunk,
        "a chunk file that is a symlink outside the store",
    ),
    "link_outside_array.zarr": (
        link_outside_array,
        "an array folder that is a symlink outside the store",
    ),
}


def build_all(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.savez(
        out / "transfer.npz",
        x=rng.random((N, 4), dtype=np.float32),
        y=rng.integers(0, C, N),
        class_names=np.array(["a", "b", "c"]),
    )
    stores = {
        "valid.zarr": build_valid(out, "valid.zarr"),
        "valid.h5": build_valid(out, "valid.h5"),
    }
    for name, (fn, _) in CASES.items():
        stores[name] = fn(out)
    return stores


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/stores/built")
    for name in build_all(target):
        print(f"{name:34} {CASES.get(name, (None, 'valid control'))[1]}")
