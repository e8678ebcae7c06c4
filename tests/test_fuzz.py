"""Fuzzing the store reader with hypothesis: random metadata, shapes and dtypes must give a
valid store or a SoftLabelsError, never another exception."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softlabels import schema
from softlabels.errors import SoftLabelsError
from softlabels.schema import StoreMeta, TeacherInfo, TransferInfo
from softlabels.store import open_store

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def base_meta(n: int = 10, c: int = 3, m: int = 2) -> StoreMeta:
    return StoreMeta(
        num_samples=n,
        num_classes=c,
        class_names=tuple("abcdefgh"[:c]),
        combine="arithmetic" if m > 1 else "single",
        weights=tuple([1.0 / m] * m),
        teachers=tuple(TeacherInfo(f"t{i}", "x", None, "0" * 64) for i in range(m)),
        transfer=TransferInfo("t", "train", n, "sha256:" + "0" * 64),
        dtype="float32",
        chunk_rows=4,
        created_at="now",
        producer="fuzz",
        checksums=("0" * 64,) * ((n + 3) // 4),
        complete=True,
    )


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(schema.REQUIRED_ATTRS + ("extra",)), value=json_values)
def test_mutated_attrs_never_crash(key, value):
    attrs = base_meta().to_attrs()
    attrs[key] = value
    try:
        meta = StoreMeta.from_attrs(attrs)
    except SoftLabelsError:
        return
    meta.validate()


@settings(max_examples=100, deadline=None)
@given(attrs=st.dictionaries(st.sampled_from(schema.REQUIRED_ATTRS), json_values))
def test_random_attrs_never_crash(attrs):
    try:
        StoreMeta.from_attrs(attrs)
    except SoftLabelsError:
        pass


array_spec = st.tuples(
    st.lists(st.integers(0, 12), min_size=1, max_size=3),
    st.sampled_from(["float32", "float16", "float64", "int64", "int8", "uint8", "bool"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 12),
    c=st.integers(2, 5),
    m=st.integers(1, 3),
    arrays=st.dictionaries(
        st.sampled_from([schema.LOGITS, schema.MEMBER_LOGITS, schema.SAMPLE_INDEX, schema.LABELS]),
        array_spec,
        max_size=4,
    ),
    complete=st.booleans(),
)
def test_random_store_layouts_never_crash(n, c, m, arrays, complete):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.zarr"
        meta = replace(base_meta(n, c, m), complete=complete)
        g = zarr.open_group(str(path), mode="w")
        g.attrs.update(meta.to_attrs())
        for name, (shape, dtype) in arrays.items():
            g.create_array(
                name,
                shape=tuple(shape),
                dtype=dtype,
                chunks=tuple(max(1, s) for s in shape),
                fill_value=0,
            )
            if np.prod(shape) > 0:
                g[name][...] = np.ones(shape, dtype=dtype)
        try:
            with open_store(path, allow_incomplete=True) as s:
                s.read(0, s.meta.num_samples)
                s.sample_index()
                for k in range(s.meta.num_chunks):
                    try:
                        s.read_verified_chunk(k)
                    except SoftLabelsError:
                        pass
        except SoftLabelsError:
            pass
