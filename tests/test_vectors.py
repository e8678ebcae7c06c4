"""Test vectors: literal bytes and digests that pin the store format (FORMAT.md, "Test vectors").

Every expected value here is a literal, never the output of the function under test: a checksum
compared with the function that made it cannot fail. The committed stores tests/vectors/tiny.zarr
and tests/vectors/tiny.h5 were written by tests/vectors/make_vectors.py; FORMAT.md lists the same
literals, and ``test_format_md_lists_these_literals`` keeps the two from drifting.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from torch import nn

from softlabels import schema
from softlabels.store import Rows, chunk_checksum, open_store
from softlabels.teachers import weights_sha256
from softlabels.transfer import TransferSet

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"
STORES = ("tiny.zarr", "tiny.h5")

# ---- the literal values (FORMAT.md lists the same) -----------------------------------------
LOGITS = [[1.5, -0.5, 0.0], [0.5, 2.0, -1.5], [-1.0, 0.5, 3.0], [0.5, -1.0, 0.25], [2.0, 0.0, -1.0]]
MEMBER_LOGITS = [
    [[1.0, -1.0, 0.5], [2.0, 0.0, -0.5]],
    [[0.25, 3.0, -2.0], [0.75, 1.0, -1.0]],
    [[-1.5, 0.0, 4.0], [-0.5, 1.0, 2.0]],
    [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]],
    [[2.5, -0.25, 1.0], [1.5, 0.25, -3.0]],
]
SAMPLE_INDEX = [3, 0, 4, 1, 2]
LABELS = [2, 0, 1, -1, 1]
ARRAYS = {
    "logits": LOGITS,
    "member_logits": MEMBER_LOGITS,
    "sample_index": SAMPLE_INDEX,
    "labels": LABELS,
}
DTYPES = {"logits": "<f4", "member_logits": "<f4", "sample_index": "<i8", "labels": "<i8"}
# The order a chunk's arrays are hashed in (FORMAT.md "Checksums and fingerprints").
ORDER = ("logits", "member_logits", "sample_index", "labels")

# (start, stop, little-endian bytes of each array's rows in ORDER, SHA-256 of their concatenation)
CHUNKS = (
    (
        0,
        2,
        {
            "logits": "0000c03f000000bf000000000000003f000000400000c0bf",
            "member_logits": "0000803f000080bf0000003f0000004000000000000000bf"
            "0000803e00004040000000c00000403f0000803f000080bf",
            "sample_index": "03000000000000000000000000000000",
            "labels": "02000000000000000000000000000000",
        },
        "b02e965e1c89498b54fb555f4a02cfb364de73dd27a01e4deacc276c1279e255",
    ),
    (
        2,
        4,
        {
            "logits": "000080bf0000003f000040400000003f000080bf0000803e",
            "member_logits": "0000c0bf0000000000008040000000bf0000803f00000040"
            "0000000000000000000000000000803f000000c00000003f",
            "sample_index": "04000000000000000100000000000000",
            "labels": "0100000000000000ffffffffffffffff",
        },
        "5195a668d2667f19f1d1400019071b89595b14d157b521e9fbd82a4e41cab683",
    ),
    (
        4,
        5,
        {
            "logits": "0000004000000000000080bf",
            "member_logits": "00002040000080be0000803f0000c03f0000803e000040c0",
            "sample_index": "0200000000000000",
            "labels": "0100000000000000",
        },
        "3957c344de5e0411d9b29fa0dbb78c75fa11f9af6f6a55430a8c09ca5632901f",
    ),
)
CHECKSUMS = tuple(c[3] for c in CHUNKS)
CHECKSUMS_FLOAT16 = (
    "77618f7b844072f4cc3473dbf3399fd71a0209785052548e29d03dcc976f34d8",
    "3362c12a95a682b00fe2504379b3d1b20f204aff48f5c73c853cafd74e0b9cf1",
    "437b1cb0f83330f8d0c2865e99aa877147ff4d941e63b922484fd2ea1f5e7404",
)
CHUNK0_LOGITS_FLOAT16 = "003e00b800000038004000be"
CHECKSUMS_SINGLE = (
    "40a2d27e5dfac5a4333a7020aad3791f259a13987a8e582ffe510c4ec82573ee",
    "25d0e97e5c327c615bed39f7a9be133bbd32035ded934adb1a15bc3f6225f645",
    "9f03ccdd99ad042d03a3f0cbef761e180abce08c5054b61f6999110cfad5c0ba",
)

# Transfer set X = arange(20) / 4 as (5, 1, 2, 2) float32; X[:2] is written out in full.
X2 = [[[[0.0, 0.25], [0.5, 0.75]]], [[[1.0, 1.25], [1.5, 1.75]]]]
X2_BYTES = "000000000000803e0000003f0000403f0000803f0000a03f0000c03f0000e03f"
FINGERPRINT_X2 = "sha256:4d116713db1fcd25655501d0ab20ccaef04a2fda35cd2d71480429addcdfb102"
FINGERPRINT_X = "sha256:f02bb6ac930ad950af48c1ef5cd7dbf144aaefb6ef25d69e2de5c0cec6a4faed"

# Teacher nn.Linear(4, 3) with literal weights; linear-f64 is the same module .double().
LINEAR_WEIGHT = [[0.5, -1.0, 0.25, 2.0], [-0.5, 1.5, 0.0, -2.0], [1.0, 0.125, -0.75, 0.5]]
LINEAR_BIAS = [0.1, -0.2, 0.3]
WEIGHTS_PREIMAGE = {
    "float32": [
        ("utf8", "bias|torch.float32|(3,)|"),
        ("bytes", "cdcccc3dcdcc4cbe9a99993e"),
        ("utf8", "weight|torch.float32|(3, 4)|"),
        (
            "bytes",
            "0000003f000080bf0000803e00000040000000bf0000c03f"
            "00000000000000c00000803f0000003e000040bf0000003f",
        ),
    ],
    "float64": [
        ("utf8", "bias|torch.float64|(3,)|"),
        ("bytes", "000000a09999b93f000000a09999c9bf000000403333d33f"),
        ("utf8", "weight|torch.float64|(3, 4)|"),
        (
            "bytes",
            "000000000000e03f000000000000f0bf000000000000d03f0000000000000040"
            "000000000000e0bf000000000000f83f000000000000000000000000000000c0"
            "000000000000f03f000000000000c03f000000000000e8bf000000000000e03f",
        ),
    ],
}
WEIGHTS_PREIMAGE |= {
    "batchnorm": [
        ("utf8", "bias|torch.float32|(2,)|"),
        ("bytes", "0000803e00000000"),
        ("utf8", "num_batches_tracked|torch.int64|()|"),  # a 0-dim integer buffer
        ("bytes", "0300000000000000"),
        ("utf8", "running_mean|torch.float32|(2,)|"),
        ("bytes", "0000003f000080bf"),
        ("utf8", "running_var|torch.float32|(2,)|"),
        ("bytes", "000000400000803e"),
        ("utf8", "weight|torch.float32|(2,)|"),
        ("bytes", "0000c03f000000bf"),
    ],
    "bfloat16": [
        ("utf8", "bias|torch.bfloat16|(3,)|"),
        ("bytes", "cd3d4dbe9a3e"),
        ("utf8", "weight|torch.bfloat16|(3, 4)|"),
        ("bytes", "003f80bf803e004000bfc03f000000c0803f003e40bf003f"),
    ],
    "float16": [
        ("utf8", "bias|torch.float16|(3,)|"),
        ("bytes", "662e66b2cd34"),
        ("utf8", "weight|torch.float16|(3, 4)|"),
        ("bytes", "003800bc0034004000b8003e000000c0003c003000ba0038"),
    ],
}
WEIGHTS_TITLES = {
    "float32": "nn.Linear(4, 3)",
    "float64": "nn.Linear(4, 3).double()",
    "batchnorm": "nn.BatchNorm1d(2)",
    "bfloat16": "nn.Linear(4, 3).bfloat16()",
    "float16": "nn.Linear(4, 3).half()",
}
WEIGHTS_SHA256 = {
    "float32": "12de8d401b6fa02cd06715246385558648320241979abb3add35f82083921ba5",
    "float64": "288a6eb214b06e458caf46c3aad494f11b1bc5a0c3376f3d160eaf5ec801cf37",
    "batchnorm": "e13bbd6503b0bbfa219167a56f83865250da60e57c0f9cdf6332268d33e89fa6",
    "bfloat16": "e05eb7043905756e538be2119713c43fae18658c5669b25097df042ef42de3b3",
    "float16": "3753e45d4323177f7f7413a8eb18b3c7db99ad84440113f5b71306318103dc0e",
    "tied": "7863297e629c8a88a85cd2e96371f583082d9174022c5e63fa36440f92d73b94",
}

ATTRS = {
    "format": "softlabels",
    "format_version": 1,
    "num_samples": 5,
    "num_classes": 3,
    "class_names": ["a", "b", "c"],
    "combine": "geometric",
    "weights": [0.5, 0.5],
    "teachers": [
        {
            "name": "linear-f32",
            "spec": "vectors:linear_f32",
            "architecture": None,
            "sha256": "12de8d401b6fa02cd06715246385558648320241979abb3add35f82083921ba5",
        },
        {
            "name": "linear-f64",
            "spec": "vectors:linear_f64",
            "architecture": None,
            "sha256": "288a6eb214b06e458caf46c3aad494f11b1bc5a0c3376f3d160eaf5ec801cf37",
        },
    ],
    "transfer": {
        "name": "vectors",
        "split": "test",
        "num_samples": 5,
        "fingerprint": "sha256:f02bb6ac930ad950af48c1ef5cd7dbf144aaefb6ef25d69e2de5c0cec6a4faed",
    },
    "dtype": "float32",
    "chunk_rows": 2,
    "checksums": [
        "b02e965e1c89498b54fb555f4a02cfb364de73dd27a01e4deacc276c1279e255",
        "5195a668d2667f19f1d1400019071b89595b14d157b521e9fbd82a4e41cab683",
        "3957c344de5e0411d9b29fa0dbb78c75fa11f9af6f6a55430a8c09ca5632901f",
    ],
    "created_at": "2026-01-01T00:00:00+00:00",
    "producer": "softlabels test vectors",
    "complete": True,
}

DIGESTS = {
    "chunk 0": CHECKSUMS[0],
    "chunk 1": CHECKSUMS[1],
    "chunk 2": CHECKSUMS[2],
    "chunk 0, float16": CHECKSUMS_FLOAT16[0],
    "chunk 1, float16": CHECKSUMS_FLOAT16[1],
    "chunk 2, float16": CHECKSUMS_FLOAT16[2],
    "chunk 0, single teacher": CHECKSUMS_SINGLE[0],
    "chunk 1, single teacher": CHECKSUMS_SINGLE[1],
    "chunk 2, single teacher": CHECKSUMS_SINGLE[2],
    "transfer X[:2]": FINGERPRINT_X2,
    "transfer X": FINGERPRINT_X,
    **{f"weights {key}": digest for key, digest in WEIGHTS_SHA256.items()},
}


def literal_rows(chunk: int, float_dtype: str = "<f4", members: bool = True) -> Rows:
    start, stop = CHUNKS[chunk][:2]
    return Rows.dense(
        start=start,
        logits=np.array(LOGITS[start:stop], dtype=float_dtype),
        member_logits=np.array(MEMBER_LOGITS[start:stop], dtype=float_dtype) if members else None,
        sample_index=np.array(SAMPLE_INDEX[start:stop], dtype=float_dtype[0] + "i8"),
        labels=np.array(LABELS[start:stop], dtype=float_dtype[0] + "i8"),
    )


def linear(dtype: torch.dtype) -> nn.Module:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(LINEAR_WEIGHT))
        layer.bias.copy_(torch.tensor(LINEAR_BIAS))
    return layer.to(dtype)


def hashed(preimage_hex: list[str]) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in preimage_hex)).hexdigest()


# ---- (1) chunk_checksum on literal rows ------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_chunk_checksum_of_literal_rows(chunk):
    assert chunk_checksum(literal_rows(chunk)) == CHECKSUMS[chunk]
    # values, not their in-memory byte order, are hashed
    assert chunk_checksum(literal_rows(chunk, ">f4")) == CHECKSUMS[chunk]
    # the stored dtype's bytes: float16 rows hash 2-byte values
    assert chunk_checksum(literal_rows(chunk, "<f2")) == CHECKSUMS_FLOAT16[chunk]
    # a single teacher has no member_logits, which then contributes nothing
    assert chunk_checksum(literal_rows(chunk, members=False)) == CHECKSUMS_SINGLE[chunk]


@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_literal_bytes_hash_to_literal_checksums(chunk):
    """The listed bytes are the literal values' little-endian bytes, and hash to the checksums."""
    start, stop, hexes, digest = CHUNKS[chunk]
    for name in ORDER:
        got = np.ascontiguousarray(ARRAYS[name][start:stop], DTYPES[name]).tobytes().hex()
        assert got == hexes[name], name
    assert hashed([hexes[name] for name in ORDER]) == digest
    single = hashed([hexes["logits"], hexes["sample_index"], hexes["labels"]])
    assert single == CHECKSUMS_SINGLE[chunk]
    if chunk == 0:
        assert np.array(LOGITS[:2], "<f2").tobytes().hex() == CHUNK0_LOGITS_FLOAT16


def test_checksum_order_is_the_documented_one():
    dense = tuple(n for n in schema.CHECKSUM_ORDER if n in ORDER)
    assert dense == ORDER and schema.CHECKSUM_ORDER[-2:] == (schema.SAMPLE_INDEX, schema.LABELS)
    text = (ROOT / "FORMAT.md").read_text()
    full = re.search(r"The full order, over every layout,.*?: (.*?) \(`softlabels", text, re.S)
    names = tuple(re.findall(r"`(\w+)`", full.group(1)))
    assert names == schema.CHECKSUM_ORDER


# ---- (2) and (3) the committed stores ----------------------------------------------------------


@pytest.mark.parametrize("name", STORES)
def test_committed_store_opens_with_literal_checksums_and_values(name):
    with open_store(VECTORS / name) as s:
        assert s.meta.complete
        assert s.meta.checksums == CHECKSUMS
        assert s.meta.transfer.fingerprint == FINGERPRINT_X
        assert [t.sha256 for t in s.meta.teachers] == [
            WEIGHTS_SHA256["float32"],
            WEIGHTS_SHA256["float64"],
        ]
        rows = s.read(0, 5)
        assert s.verify_checksums() == []
    for array_name in ORDER:
        got = getattr(rows, array_name)
        assert got.dtype == np.dtype(DTYPES[array_name]), array_name
        np.testing.assert_array_equal(got, np.array(ARRAYS[array_name], DTYPES[array_name]))


def _plain_read(name: str) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """Attributes, arrays and node names read with zarr or h5py alone, as FORMAT.md shows."""
    path = VECTORS / name
    if name.endswith(".zarr"):
        g = zarr.open_group(str(path), mode="r")
        return dict(g.attrs), {n: g[n][:] for n in ORDER}, sorted(g.keys())
    with h5py.File(path, "r") as f:
        attrs = {k: json.loads(v) for k, v in f.attrs.items()}
        return attrs, {n: f[n][:] for n in ORDER}, sorted(f.keys())


@pytest.mark.parametrize("name", STORES)
def test_committed_store_plain_reads(name):
    attrs, arrays, nodes = _plain_read(name)
    assert attrs == ATTRS
    assert nodes == sorted(ORDER)  # a complete store has no commit journal
    for array_name in ORDER:
        expected = np.array(ARRAYS[array_name], DTYPES[array_name])
        assert arrays[array_name].dtype == expected.dtype
        np.testing.assert_array_equal(arrays[array_name], expected)
    # independent of softlabels: hashlib over the little-endian bytes, in checksum order
    for start, stop, hexes, digest in CHUNKS:
        h = hashlib.sha256()
        for array_name in ORDER:
            data = np.ascontiguousarray(arrays[array_name][start:stop], DTYPES[array_name])
            assert data.tobytes().hex() == hexes[array_name]
            h.update(data.tobytes())
        assert h.hexdigest() == digest


def _make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", STORES)
def test_writer_reproduces_the_vectors(tmp_path, name):
    """StoreWriter (create / write_chunk / finalize) still writes these checksums and values."""
    final = _make_vectors().write(tmp_path / name)
    assert final.checksums == CHECKSUMS
    with open_store(tmp_path / name) as s:
        rows = s.read(0, 5)
    for array_name in ORDER:
        expected = np.array(ARRAYS[array_name], DTYPES[array_name])
        np.testing.assert_array_equal(getattr(rows, array_name), expected)


# ---- (4) transfer fingerprint and weights hash -------------------------------------------------


def _transfer(inputs: np.ndarray) -> TransferSet:
    return TransferSet(name="vectors", split="test", inputs=inputs, labels=None, class_names=None)


def test_transfer_fingerprint():
    x2 = np.array(X2, dtype=np.float32)
    assert x2.shape == (2, 1, 2, 2)
    assert x2.astype("<f4").tobytes().hex() == X2_BYTES
    assert "sha256:" + hashed([X2_BYTES]) == FINGERPRINT_X2
    assert _transfer(x2).fingerprint() == FINGERPRINT_X2
    # the fingerprint is over float32 values, whatever dtype or byte order the inputs arrive in
    assert _transfer(x2.astype(">f4")).fingerprint() == FINGERPRINT_X2
    assert _transfer(x2.astype(np.float64)).fingerprint() == FINGERPRINT_X2
    x = (np.arange(20, dtype=np.float32) / 4).reshape(5, 1, 2, 2)
    np.testing.assert_array_equal(x[:2], x2)
    assert _transfer(x).fingerprint() == FINGERPRINT_X


def batchnorm() -> nn.Module:
    layer = nn.BatchNorm1d(2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.5, -0.5]))
        layer.bias.copy_(torch.tensor([0.25, 0.0]))
        layer.running_mean.copy_(torch.tensor([0.5, -1.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.25]))
        layer.num_batches_tracked.fill_(3)
    return layer


WEIGHTS_MODULES = {
    "float32": lambda: linear(torch.float32),
    "float64": lambda: linear(torch.float64),
    "batchnorm": batchnorm,
    "bfloat16": lambda: linear(torch.bfloat16),
    "float16": lambda: linear(torch.float16),
}


@pytest.mark.parametrize("key", list(WEIGHTS_MODULES))
def test_weights_sha256(key):
    preimage = WEIGHTS_PREIMAGE[key]
    as_hex = [v.encode().hex() if kind == "utf8" else v for kind, v in preimage]
    assert hashed(as_hex) == WEIGHTS_SHA256[key]
    module = WEIGHTS_MODULES[key]()
    state = sorted(module.state_dict().items())
    assert [kind for kind, _ in preimage] == ["utf8", "bytes"] * len(state)
    for (name, tensor), (_, header), (_, values) in zip(
        state, preimage[::2], preimage[1::2], strict=True
    ):
        assert header == f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|"
        as_bytes = tensor.detach().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert as_bytes.hex() == values
    assert weights_sha256(module) == WEIGHTS_SHA256[key]


def test_weights_sha256_of_a_view_and_of_tied_weights():
    strided = linear(torch.float32)
    with torch.no_grad():
        strided.weight = nn.Parameter(strided.weight.detach().t().contiguous().t())
    assert not strided.weight.is_contiguous()
    assert weights_sha256(strided) == WEIGHTS_SHA256["float32"]
    tied = nn.Module()
    tied.a = tied.b = linear(torch.float32)
    assert tied.a.weight.data_ptr() == tied.b.weight.data_ptr()
    assert weights_sha256(tied) == WEIGHTS_SHA256["tied"]


# ---- (5) FORMAT.md lists exactly these literals ----------------------------------------------


def _section() -> str:
    text = (ROOT / "FORMAT.md").read_text()
    assert "\n## Test vectors\n" in text
    section = text.split("\n## Test vectors\n", 1)[1]
    return section.split("\n## ", 1)[0]


def test_format_md_lists_these_literals():
    section = _section()
    table = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", section, flags=re.M))
    assert table == DIGESTS

    arrays, attrs = (json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, flags=re.S))
    assert arrays == ARRAYS
    assert attrs == ATTRS

    blocks = {}
    for block in re.findall(r"```text\n(.*?)```", section, flags=re.S):
        header, *lines = block.strip().split("\n")
        blocks[header] = [tuple(line.split(" ", 1)) for line in lines]
    expected = {
        f"chunk {k}: rows [{start}, {stop}), {len(''.join(hexes.values())) // 2} bytes": [
            *((name, hexes[name]) for name in ORDER),
            ("sha256", digest),
        ]
        for k, (start, stop, hexes, digest) in enumerate(CHUNKS)
    }
    expected["transfer X[:2]: shape (2, 1, 2, 2), 32 bytes"] = [
        ("float32", X2_BYTES),
        ("sha256", FINGERPRINT_X2.removeprefix("sha256:")),
    ]
    for key, title in WEIGHTS_TITLES.items():
        expected[f"weights {key}: {title}"] = [
            *WEIGHTS_PREIMAGE[key],
            ("sha256", WEIGHTS_SHA256[key]),
        ]
    assert blocks == expected
    assert f"`{CHUNK0_LOGITS_FLOAT16}`" in section
    # no ```python block here: tests/test_store.py runs exactly the three earlier ones
    assert "```python" not in section


# ---- the sparse vector (FORMAT.md, "Sparse test vector") ----------------------------------------


def _sparse_vector() -> dict:
    text = (ROOT / "FORMAT.md").read_text()
    section = text.split("\n## Sparse test vector\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    return json.loads(block)


SPARSE_CHECKSUMS = [
    "7c24dabae8af4f664151458c69dee160c9707f77762fd13396b3319fe563163a",
    "a19b4496e7194892ba4a712f85e68a3c0db7c8f5e26ed46ea819ee15c6cc47fd",
]


def test_sparse_vector_committed_store_holds_the_listed_arrays():
    vector = _sparse_vector()
    assert vector["checksums"] == SPARSE_CHECKSUMS
    assert vector["arrays"]["id_gaps"][0] == [0, 3, 2, 3]  # row 0: top ids 0, 3; sampled 2, 5
    with open_store(VECTORS / "tiny-sparse.zarr") as s:
        assert list(s.meta.checksums) == SPARSE_CHECKSUMS
        assert s.meta.sparse.to_attr() == vector["sparse"]
        rows = s.read(0, 4)
        assert {k: v.tolist() for k, v in rows.arrays.items()} == vector["arrays"]
    plain = zarr.open_group(str(VECTORS / "tiny-sparse.zarr"), mode="r")
    assert plain.attrs["format_version"] == 2 and plain.attrs["layout"] == "sparse"


@pytest.mark.bitwise
def test_sparse_vector_is_what_the_writer_makes_from_the_logits(tmp_path):
    from softlabels.schema import SparseSpec
    from softlabels.sparse.select import uniforms

    vector = _sparse_vector()
    spec = vector["sparse"]
    np.testing.assert_array_equal(
        uniforms(spec["proposal"]["seed"], np.array(vector["sample_index"])), vector["uniforms"]
    )
    make = _make_vectors()
    assert make.SPARSE_LOGITS == vector["logits"] and make.SPARSE_SPEC == SparseSpec.from_attr(spec)
    final = make.write_sparse(tmp_path / "again.zarr")
    assert list(final.checksums) == SPARSE_CHECKSUMS


# ---- the float16 sparse vector (FORMAT.md, "Sparse float16 test vector") -----------------------


def _sparse_f16_vector() -> dict:
    text = (ROOT / "FORMAT.md").read_text()
    section = text.split("\n## Sparse float16 test vector\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    return json.loads(block)


SPARSE_F16_CHECKSUMS = [
    "8ceb1f86516d7adcf4f6c8f5202fd634b0aef098a46a174fe170e42f56d77107",
    "60a29f73a88e803996fa9eb5a48062bfd99a35a94078e4afb4a7eed971a8e75a",
]


def test_sparse_f16_vector_committed_store_holds_the_listed_arrays():
    vector = _sparse_f16_vector()
    assert vector["checksums"] == SPARSE_F16_CHECKSUMS
    arrays = vector["arrays"]
    values = np.asarray(arrays["values"], dtype=np.float64)
    # every listed value is a float16, and the listed bytes are those values
    np.testing.assert_array_equal(values.astype(np.float16).astype(np.float64), values)
    assert values.astype("<f2").tobytes().hex() == vector["values_f2"]
    with open_store(VECTORS / "tiny-sparse-f16.zarr") as s:
        assert s.meta.dtype == "float16" and list(s.meta.checksums) == SPARSE_F16_CHECKSUMS
        assert s.meta.sparse.to_attr() == vector["sparse"]
        rows = s.read(0, 4)
        assert rows.arrays["values"].dtype == np.float16
        assert rows.arrays["values"].tobytes().hex() == vector["values_f2"]
        assert {k: v.tolist() for k, v in rows.arrays.items()} == arrays
        assert [chunk_checksum(s.read_chunk(c)) for c in range(2)] == SPARSE_F16_CHECKSUMS


def test_sparse_f16_vector_ranks_the_decoded_logits_ties_to_the_lower_id():
    """Row 0: 2.3 (id 3) and 2.3004 (id 5) are one float16; the stored top ids are 0 and 3, the
    raw logits' top two 0 and 5."""
    vector = _sparse_f16_vector()
    raw = np.asarray(vector["logits"], dtype=np.float32)
    decoded = raw.astype(np.float16).astype(np.float64)
    gaps = np.asarray(vector["arrays"]["id_gaps"])
    top = np.cumsum(gaps[:, :2], axis=1)
    stored_top = np.sort(np.argsort(-decoded, axis=1, kind="stable")[:, :2], axis=1)
    np.testing.assert_array_equal(top, stored_top)
    assert top[0].tolist() == [0, 3]
    assert np.sort(np.argsort(-raw[0], kind="stable")[:2]).tolist() == [0, 5]
    # the tails are over the decoded logits of the ids in neither segment
    ids = np.concatenate([top, np.cumsum(gaps[:, 2:], axis=1)], axis=1)
    for r in range(4):
        rest = np.setdiff1d(np.arange(8), ids[r])
        want = [t * np.log(np.exp(decoded[r, rest] / t).sum()) for t in (1.0, 4.0)]
        np.testing.assert_allclose(vector["arrays"]["tail"][r][0], want, rtol=2e-7)


@pytest.mark.bitwise
def test_sparse_f16_vector_is_what_the_writer_makes_from_the_logits(tmp_path):
    from softlabels.schema import SparseSpec

    vector = _sparse_f16_vector()
    make = _make_vectors()
    assert make.SPARSE_F16_LOGITS == vector["logits"]
    assert make.SPARSE_F16_SPEC == SparseSpec.from_attr(vector["sparse"])
    final = make.write_sparse_f16(tmp_path / "again.zarr")
    assert list(final.checksums) == SPARSE_F16_CHECKSUMS


# ---- the raw selection vector (FORMAT.md, "Raw selection test vector") -------------------------

RAW_ID_GAPS = [[1, 4], [1, 2]]  # row 0: ids 1 and 5, the raw top two (decoded: 1 and 2)


def _raw_vector() -> dict:
    text = (ROOT / "FORMAT.md").read_text()
    section = text.split("\n## Raw selection test vector\n", 1)[1].split("\n## ", 1)[0]
    return json.loads(section.split("```json\n", 1)[1].split("\n```", 1)[0])


@pytest.mark.parametrize("implementation", ["numpy", "torch"])
def test_raw_selection_vector_is_what_both_writers_make(implementation):
    from softlabels.schema import SparseSpec
    from softlabels.sparse.device import sparsify_torch
    from softlabels.sparse.select import sparsify

    vector = _raw_vector()
    assert vector["arrays"]["id_gaps"] == RAW_ID_GAPS
    spec = SparseSpec.from_attr(vector["sparse"])
    assert spec.raw and spec.to_attr() == vector["sparse"]
    z = np.asarray(vector["logits"], dtype=np.float32)[:, None, :]
    run = sparsify if implementation == "numpy" else sparsify_torch
    z_in = z if implementation == "numpy" else torch.from_numpy(z)
    got = run(z_in, np.arange(2), weights=(1.0,), combine="single", spec=spec, dtype="float32")
    for name in ("id_gaps", "values", "value_offsets"):
        assert got[name].tolist() == vector["arrays"][name], name
    want = np.asarray(vector["arrays"]["tail"], dtype=np.float64)
    if implementation == "numpy":  # the float64 sums, stored as float32: exactly the listed
        assert got["tail"].tolist() == vector["arrays"]["tail"]
    bound = 2.0**-16 * (np.array([1.0, 4.0]) + np.abs(want))
    assert (np.abs(got["tail"] - want) <= bound).all()
    # by hand: row 0's tail at T = 1 is log of the sum of exp over ids 0, 2, 3, 4, 6, 7
    outside = np.asarray(vector["logits"][0], dtype=np.float32)[[0, 2, 3, 4, 6, 7]]
    assert abs(np.log(np.exp(outside.astype(np.float64)).sum()) - want[0, 0, 0]) < 1e-6
