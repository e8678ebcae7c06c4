"""Write the committed test vectors tests/vectors/tiny.zarr, tiny.h5 and tiny-sparse.zarr.

    .venv/bin/python tests/vectors/make_vectors.py

Every value here is literal, so the two stores are the same on every machine; FORMAT.md
("Test vectors") lists their exact bytes and checksums, and tests/test_vectors.py pins them.
Rerun this only when the format changes, and then update FORMAT.md and the test's literals by
hand (the script prints the values to copy).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from softlabels.schema import SparseSpec, StoreMeta, TeacherInfo, TransferInfo
from softlabels.sparse.select import uniforms
from softlabels.store import Rows, StoreWriter, chunk_checksum, open_store
from softlabels.teachers import weights_sha256
from softlabels.transfer import TransferSet

HERE = Path(__file__).resolve().parent

# ---- the transfer set: X5 = arange(20) / 4 as (5, 1, 2, 2) float32 ------------------------
X5 = (np.arange(20, dtype=np.float32) / 4).reshape(5, 1, 2, 2)

# ---- the teacher: nn.Linear(4, 3) with literal weights; member b is the same in float64 -----
LINEAR_WEIGHT = [
    [0.5, -1.0, 0.25, 2.0],
    [-0.5, 1.5, 0.0, -2.0],
    [1.0, 0.125, -0.75, 0.5],
]
LINEAR_BIAS = [0.1, -0.2, 0.3]  # not exact in binary: pins float32 rounding too

# ---- the store rows: N=5, M=2, C=3, geometric combine with weights (0.5, 0.5) ----------------
MEMBER_LOGITS = [  # (N, M, C)
    [[1.0, -1.0, 0.5], [2.0, 0.0, -0.5]],
    [[0.25, 3.0, -2.0], [0.75, 1.0, -1.0]],
    [[-1.5, 0.0, 4.0], [-0.5, 1.0, 2.0]],
    [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]],
    [[2.5, -0.25, 1.0], [1.5, 0.25, -3.0]],
]
LOGITS = [  # (N, C): 0.5 * member a + 0.5 * member b, exact in float32
    [1.5, -0.5, 0.0],
    [0.5, 2.0, -1.5],
    [-1.0, 0.5, 3.0],
    [0.5, -1.0, 0.25],
    [2.0, 0.0, -1.0],
]
SAMPLE_INDEX = [3, 0, 4, 1, 2]
LABELS = [2, 0, 1, -1, 1]
CHUNK_ROWS = 2


def linear(dtype: torch.dtype = torch.float32) -> nn.Module:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(LINEAR_WEIGHT))
        layer.bias.copy_(torch.tensor(LINEAR_BIAS))
    return layer.to(dtype)


def transfer_set(inputs: np.ndarray) -> TransferSet:
    return TransferSet(
        name="vectors", split="test", inputs=inputs, labels=None, class_names=("a", "b", "c")
    )


def meta() -> StoreMeta:
    return StoreMeta(
        num_samples=5,
        num_classes=3,
        class_names=("a", "b", "c"),
        combine="geometric",
        weights=(0.5, 0.5),
        teachers=(
            TeacherInfo(
                name="linear-f32",
                spec="vectors:linear_f32",
                architecture=None,
                sha256=weights_sha256(linear(torch.float32)),
            ),
            TeacherInfo(
                name="linear-f64",
                spec="vectors:linear_f64",
                architecture=None,
                sha256=weights_sha256(linear(torch.float64)),
            ),
        ),
        transfer=TransferInfo(
            name="vectors", split="test", num_samples=5, fingerprint=transfer_set(X5).fingerprint()
        ),
        dtype="float32",
        chunk_rows=CHUNK_ROWS,
        created_at="2026-01-01T00:00:00+00:00",
        producer="softlabels test vectors",
    )


def chunk_rows(chunk: int, dtype: str = "float32", members: bool = True) -> Rows:
    start, stop = chunk * CHUNK_ROWS, min((chunk + 1) * CHUNK_ROWS, len(LOGITS))
    return Rows.dense(
        start=start,
        logits=np.array(LOGITS[start:stop], dtype=dtype),
        member_logits=np.array(MEMBER_LOGITS[start:stop], dtype=dtype) if members else None,
        sample_index=np.array(SAMPLE_INDEX[start:stop], dtype=np.int64),
        labels=np.array(LABELS[start:stop], dtype=np.int64),
    )


def write(path: Path) -> StoreMeta:
    m = meta()
    with StoreWriter.create(path, m, compress=False, overwrite=True) as writer:
        for chunk in range(m.num_chunks):
            writer.write_chunk(chunk, chunk_rows(chunk))
        return writer.finalize()


# ---- the sparse vector: N=4, C=8, one teacher, top 2 + 2 sampled, fixed point, step 1/4 -----
SPARSE_LOGITS = [  # (N, C), every value a multiple of 1/4: exact in the fixed-point encoding
    [3.0, -1.0, 0.5, 2.25, -0.75, 1.5, 0.0, -2.0],
    [-0.5, 1.0, 4.0, 0.25, 1.75, -1.25, 2.5, 0.75],
    [0.0, 0.0, 1.0, -3.0, 0.5, 2.0, -0.25, 1.25],
    [1.5, 2.75, -1.0, 0.0, 3.5, 0.25, -0.5, 1.0],
]
SPARSE_SAMPLE_INDEX = [2, 0, 3, 1]
SPARSE_SPEC = SparseSpec(
    top_k=2,
    sample=2,
    proposal_temperature=2.0,
    seed=7,
    tail_temperatures=(1.0, 4.0),
    value_step=0.25,
)


def sparse_meta() -> StoreMeta:
    return StoreMeta(
        num_samples=4,
        num_classes=8,
        class_names=tuple("abcdefgh"),
        combine="single",
        weights=(1.0,),
        teachers=(TeacherInfo(name="literal", spec=None, architecture=None, sha256="0" * 64),),
        transfer=TransferInfo(
            name="vectors", split="train", num_samples=4, fingerprint="sha256:" + "0" * 64
        ),
        dtype="float32",
        chunk_rows=CHUNK_ROWS,
        created_at="2026-01-01T00:00:00+00:00",
        producer="softlabels test vectors",
        sparse=SPARSE_SPEC,
    )


def write_sparse(path: Path) -> StoreMeta:
    """The sparse vector: dense rows in, the writer sparsifies them."""
    m = sparse_meta()
    with StoreWriter.create(path, m, compress=False, overwrite=True) as writer:
        for chunk in range(m.num_chunks):
            start, stop = m.chunk_bounds(chunk)
            logits = np.array(SPARSE_LOGITS[start:stop], dtype=np.float32)
            index = np.array(SPARSE_SAMPLE_INDEX[start:stop], dtype=np.int64)
            labels = np.full(stop - start, -1, dtype=np.int64)
            writer.write_chunk(chunk, Rows.dense(logits, None, index, labels, start=start))
        return writer.finalize()


# ---- the float16 sparse vector: the same shape, float values stored as float16 ---------------
# Not multiples of 1/4: float16 rounds them. Row 0's ids 3 and 5 (2.3 and 2.3004) round to the
# same float16 (2.30078125), so the ranking on the decoded logits ties and takes id 3, the lower,
# where the raw logits would take id 5.
SPARSE_F16_LOGITS = [
    [3.1, -1.0, 0.55, 2.3, -0.7, 2.3004, 0.1, -2.2],
    [-0.45, 1.1, 4.05, 0.3, 1.7, -1.3, 2.6, 0.7],
    [0.1, 0.05, 1.15, -3.1, 0.45, 2.05, -0.2, 1.3],
    [1.45, 2.8, -1.1, 0.03, 3.55, 0.2, -0.55, 1.05],
]
SPARSE_F16_SPEC = SparseSpec(
    top_k=2,
    sample=2,
    proposal_temperature=2.0,
    seed=7,
    tail_temperatures=(1.0, 4.0),
    value_step=None,
)


def sparse_f16_meta() -> StoreMeta:
    return replace(sparse_meta(), dtype="float16", sparse=SPARSE_F16_SPEC)


def write_sparse_f16(path: Path) -> StoreMeta:
    """The float16 sparse vector: float32 dense rows in, the writer rounds and sparsifies."""
    m = sparse_f16_meta()
    with StoreWriter.create(path, m, compress=False, overwrite=True) as writer:
        for chunk in range(m.num_chunks):
            start, stop = m.chunk_bounds(chunk)
            logits = np.array(SPARSE_F16_LOGITS[start:stop], dtype=np.float32)
            index = np.array(SPARSE_SAMPLE_INDEX[start:stop], dtype=np.int64)
            labels = np.full(stop - start, -1, dtype=np.int64)
            writer.write_chunk(chunk, Rows.dense(logits, None, index, labels, start=start))
        return writer.finalize()


def main() -> None:
    for name in ("tiny.zarr", "tiny.h5"):
        final = write(HERE / name)
        print(f"{name}: checksums {list(final.checksums or ())}")
    for chunk in range(3):
        print(f"chunk {chunk} float16: {chunk_checksum(chunk_rows(chunk, 'float16'))}")
        print(f"chunk {chunk} single:  {chunk_checksum(chunk_rows(chunk, members=False))}")
    print("fingerprint X5[:2]:", transfer_set(X5[:2]).fingerprint())
    print("fingerprint X5:    ", transfer_set(X5).fingerprint())
    print("weights float32:   ", weights_sha256(linear(torch.float32)))
    print("weights float64:   ", weights_sha256(linear(torch.float64)))
    final = write_sparse(HERE / "tiny-sparse.zarr")
    print(f"tiny-sparse.zarr: checksums {list(final.checksums or ())}")
    with open_store(HERE / "tiny-sparse.zarr") as s:
        rows = s.read(0, 4)
        for name, array in rows.arrays.items():
            print(f"{name}: {array.tolist()}")
    print("uniforms(7, [0, 1, 2, 3]):", uniforms(7, np.arange(4)).tolist())
    final = write_sparse_f16(HERE / "tiny-sparse-f16.zarr")
    print(f"tiny-sparse-f16.zarr: checksums {list(final.checksums or ())}")
    with open_store(HERE / "tiny-sparse-f16.zarr") as s:
        rows = s.read(0, 4)
        for name, array in rows.arrays.items():
            print(f"{name}: {array.tolist()}")
        print("values as <f2 hex:", rows.arrays["values"].astype("<f2").tobytes().hex())


if __name__ == "__main__":
    main()
