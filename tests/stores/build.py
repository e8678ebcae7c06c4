"""Build a folder of deliberately broken or malicious soft-label stores.

    python -m tests.stores.build OUT_DIR

Every dense store is built from one small valid store (20 rows, 3 classes, 2 teachers, chunks of
8 rows) over ``OUT_DIR/transfer.npz``, every sparse one (format version 2) from one small valid
sparse store (12 rows, 40 classes, 1 teacher, chunks of 6 rows, the top 4 ids and 3 sampled ones
per row) over ``OUT_DIR/transfer_sparse.npz``, then damaged in one way. Where a case must get
past the checksums to test a deeper check (NaN logits, a bad sample_index, impossible sparse
ids or tails), the checksums are recomputed, as a malicious producer would. ``CASES`` maps each
store name to what is wrong with it, ``transfer_of`` names the transfer set it was made from;
the tests require `softlabels verify` to flag every one and the trainer to refuse every one with
a clear error.
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

from softlabels.schema import MAX_ATTRS_BYTES, SparseSpec, StoreMeta, TeacherInfo, TransferInfo
from softlabels.store import Rows, StoreWriter, chunk_checksum, open_store
from softlabels.transfer import load_transfer
from tests.helpers import reseal

N, C, M, CHUNK = 20, 3, 2, 8
TRANSFER = "transfer.npz"
# Sparse stores: a single teacher, so group 0 of the tail is the ranking group.
SN, SC, SCHUNK, TOP_K, SAMPLE = 12, 40, 6, 4, 3
SPARSE_TRANSFER = "transfer_sparse.npz"
ROW = 7  # the row a sparse case damages (in chunk 1, so a chunk's offset must be added)
T4 = 2  # the index of the anchor temperature 4 in the default (1, 2, 4, 8)


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
    reseal(path)  # and the attributes' SHA-256, as that producer would


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
    """Edit an attribute as a malicious producer would: its SHA-256 recomputed, so the deeper
    check it is meant to reach is the one that refuses it (``edited_attributes`` does not)."""
    zarr.open_group(str(path), mode="r+").attrs[key] = value
    reseal(path)


def edited_attributes(out: Path) -> Path:
    p = build_valid(out, "edited_attributes.zarr")
    zarr.open_group(str(p), mode="r+").attrs["combine"] = "geometric"  # was arithmetic
    return p


def build_sparse(out: Path, name: str) -> Path:
    """A valid sparse store (top 4 + 3 sampled ids, fixed-point values), sparsified by the
    writer. Four classes per row stand 4 above the rest, so every tail summary lies well below
    the bound its smallest top logit sets (a case may raise a tail without crossing it)."""
    transfer = load_transfer(str(out / SPARSE_TRANSFER))
    meta = StoreMeta(
        num_samples=SN,
        num_classes=SC,
        class_names=tuple(f"c{i}" for i in range(SC)),
        combine="single",
        weights=(1.0,),
        teachers=(TeacherInfo("t", "t.pt", None, "3" * 64),),
        transfer=TransferInfo(transfer.name, "train", SN, transfer.fingerprint()),
        dtype="float32",
        chunk_rows=SCHUNK,
        created_at="2026-11-21T00:00:00+00:00",
        producer="tests.stores.build",
        sparse=SparseSpec(top_k=TOP_K, sample=SAMPLE, seed=5),
    )
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(SN, SC)).astype(np.float32)
    hot = np.argsort(rng.random((SN, SC)), axis=1)[:, :TOP_K]
    logits[np.arange(SN)[:, None], hot] += 4.0
    labels = transfer.label_array()
    path = out / name
    with StoreWriter.create(path, meta, overwrite=True) as w:
        for k in range(meta.num_chunks):
            a, b = meta.chunk_bounds(k)
            w.write_chunk(k, Rows.dense(logits[a:b], None, np.arange(a, b), labels[a:b], start=a))
        w.finalize()
    return path


def _ids(gaps: np.ndarray) -> np.ndarray:
    """FORMAT.md's ids: the cumulative sum of each segment's gaps (top, then sampled)."""
    g = gaps.astype(np.int64)
    return np.concatenate([np.cumsum(g[:, :TOP_K], 1), np.cumsum(g[:, TOP_K:], 1)], 1)


def _gaps(ids: np.ndarray) -> np.ndarray:
    gaps = ids.copy()
    gaps[:, 1:TOP_K] = np.diff(ids[:, :TOP_K], axis=1)
    gaps[:, TOP_K + 1 :] = np.diff(ids[:, TOP_K:], axis=1)
    return gaps.astype(np.int32)


def _edit_ids(path: Path, fn: Callable[[np.ndarray], None]) -> None:
    """Edit row ROW's ids (K,) in place, re-encode them as gaps, recompute the checksums: only
    the ids ``fn`` touches change."""

    def edit(gaps: np.ndarray) -> None:
        ids = _ids(gaps)
        fn(ids[ROW])
        gaps[:] = _gaps(ids)

    _edit_array(path, "id_gaps", edit)


def _edit_sparse_attr(path: Path, fn: Callable[[dict], None]) -> None:
    group = zarr.open_group(str(path), mode="r+")
    sparse = json.loads(json.dumps(group.attrs["sparse"]))
    fn(sparse)
    group.attrs["sparse"] = sparse


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
    _set_attr(p, "format_version", 7)
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


def sparse_negative_id(out: Path) -> Path:
    p = build_sparse(out, "sparse_negative_id.zarr")
    _edit_ids(p, lambda ids: ids.__setitem__(0, -1))  # the row's first gap is -1
    return p


def sparse_id_out_of_range(out: Path) -> Path:
    p = build_sparse(out, "sparse_id_out_of_range.h5")
    _edit_ids(p, lambda ids: ids.__setitem__(TOP_K - 1, SC))  # the largest top id is C
    return p


def sparse_unsorted_ids(out: Path) -> Path:
    p = build_sparse(out, "sparse_unsorted_ids.zarr")
    _edit_ids(p, lambda ids: ids.__setitem__([1, 2], ids[[2, 1]]))  # a negative gap in column 2
    return p


def sparse_sampled_repeats_top(out: Path) -> Path:
    def repeat(ids: np.ndarray) -> None:
        top = ids[:TOP_K]
        below = top[top < ids[TOP_K + 1]]  # keeps the sampled segment ascending
        assert below.size, "pick another ROW"
        ids[TOP_K] = below[-1]

    p = build_sparse(out, "sparse_sampled_repeats_top.zarr")
    _edit_ids(p, repeat)
    return p


def sparse_sampled_above_top(out: Path) -> Path:
    p = build_sparse(out, "sparse_sampled_above_top.zarr")
    # code 0 decodes to the row's largest logit: the first sampled id now outranks a top id
    _edit_array(p, "values", lambda a: a.__setitem__((ROW, 0, TOP_K), 0))
    return p


def sparse_inclusion_zero(out: Path) -> Path:
    p = build_sparse(out, "sparse_inclusion_zero.zarr")
    _edit_array(p, "inclusion_log_scale", lambda a: a.__setitem__(ROW, -1e30))  # pi = 0
    return p


def sparse_tail_not_convex(out: Path) -> Path:
    p = build_sparse(out, "sparse_tail_not_convex.zarr")
    _edit_array(p, "tail", lambda a: a.__setitem__((ROW, 0, T4), a[ROW, 0, T4] + 2.0))
    return p


def sparse_tail_infinite(out: Path) -> Path:
    p = build_sparse(out, "sparse_tail_infinite.zarr")
    # -inf at every anchor ("no mass outside the ids", with 33 ids outside): read as any one
    # finite stand-in, the row would look convex and below its ceiling
    _edit_array(p, "tail", lambda a: a.__setitem__((ROW, 0), -np.inf))
    return p


def sparse_tail_above_top(out: Path) -> Path:
    p = build_sparse(out, "sparse_tail_above_top.zarr")
    _edit_array(p, "tail", lambda a: a.__setitem__((ROW, 0), a[ROW, 0] + 50.0))  # still convex
    return p


def sparse_attr_k(out: Path) -> Path:
    p = build_sparse(out, "sparse_attr_k.zarr")
    _edit_sparse_attr(p, lambda sp: sp.__setitem__("k", TOP_K))
    return p


def sparse_attr_tail_kind(out: Path) -> Path:
    p = build_sparse(out, "sparse_attr_tail_kind.zarr")
    _edit_sparse_attr(p, lambda sp: sp["tail"].__setitem__("kind", "histogram"))
    return p


def sparse_attr_every_class(out: Path) -> Path:
    p = build_sparse(out, "sparse_attr_every_class.zarr")
    _edit_sparse_attr(p, lambda sp: sp.update(top_k=SC - SAMPLE, k=SC))
    return p


def sparse_without_layout(out: Path) -> Path:
    p = build_sparse(out, "sparse_without_layout.zarr")
    del zarr.open_group(str(p), mode="r+").attrs["layout"]
    return p


def sparse_as_version_1(out: Path) -> Path:
    p = build_sparse(out, "sparse_as_version_1.zarr")
    _set_attr(p, "format_version", 1)
    return p


def dense_with_layout(out: Path) -> Path:
    p = build_valid(out, "dense_with_layout.zarr")
    _set_attr(p, "layout", "dense")
    return p


SPARSE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "sparse_negative_id.zarr": (sparse_negative_id, "a negative id, checksums recomputed"),
    "sparse_id_out_of_range.h5": (
        sparse_id_out_of_range,
        "an id equal to num_classes, checksums recomputed",
    ),
    "sparse_unsorted_ids.zarr": (
        sparse_unsorted_ids,
        "two top ids swapped (a negative gap), checksums recomputed",
    ),
    "sparse_sampled_repeats_top.zarr": (
        sparse_sampled_repeats_top,
        "a sampled id equal to a top id, checksums recomputed",
    ),
    "sparse_sampled_above_top.zarr": (
        sparse_sampled_above_top,
        "a sampled id's logit above the top ids', checksums recomputed",
    ),
    "sparse_inclusion_zero.zarr": (
        sparse_inclusion_zero,
        "an inclusion log-scale of -1e30 (pi = 0), checksums recomputed",
    ),
    "sparse_tail_not_convex.zarr": (
        sparse_tail_not_convex,
        "one anchor's tail raised by 2: not convex, checksums recomputed",
    ),
    "sparse_tail_infinite.zarr": (
        sparse_tail_infinite,
        "a row's tails all -inf, checksums recomputed",
    ),
    "sparse_tail_above_top.zarr": (
        sparse_tail_above_top,
        "a row's tails raised by 50: outside logits above the top, checksums recomputed",
    ),
    "sparse_attr_k.zarr": (sparse_attr_k, "sparse.k not top_k + sample"),
    "sparse_attr_tail_kind.zarr": (sparse_attr_tail_kind, "an unknown sparse.tail.kind"),
    "sparse_attr_every_class.zarr": (
        sparse_attr_every_class,
        "sparse.top_k + sample equal to num_classes",
    ),
    "sparse_without_layout.zarr": (sparse_without_layout, "format_version 2 without layout"),
    "sparse_as_version_1.zarr": (sparse_as_version_1, "a sparse store marked format_version 1"),
}

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
    "future_version.zarr": (future_version, "format_version 7"),
    "edited_attributes.zarr": (
        edited_attributes,
        "combine edited by hand, the attributes' SHA-256 not recomputed",
    ),
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
    "dense_with_layout.zarr": (dense_with_layout, "a version-1 store carrying layout"),
    **SPARSE_CASES,
}
SPARSE_CONTROLS = ("valid_sparse.zarr", "valid_sparse.h5")


def transfer_of(name: str) -> str:
    """The file, in OUT_DIR, of the transfer set the store ``name`` was made from."""
    return SPARSE_TRANSFER if name in SPARSE_CASES or name in SPARSE_CONTROLS else TRANSFER


def build_all(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.savez(
        out / TRANSFER,
        x=rng.random((N, 4), dtype=np.float32),
        y=rng.integers(0, C, N),
        class_names=np.array(["a", "b", "c"]),
    )
    np.savez(
        out / SPARSE_TRANSFER,
        x=rng.random((SN, 4), dtype=np.float32),
        y=rng.integers(0, SC, SN),
        class_names=np.array([f"c{i}" for i in range(SC)]),
    )
    stores = {
        "valid.zarr": build_valid(out, "valid.zarr"),
        "valid.h5": build_valid(out, "valid.h5"),
        **{name: build_sparse(out, name) for name in SPARSE_CONTROLS},
    }
    for name, (fn, _) in CASES.items():
        stores[name] = fn(out)
    return stores


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/stores/built")
    for name in build_all(target):
        print(f"{name:34} {CASES.get(name, (None, 'valid control'))[1]}")
