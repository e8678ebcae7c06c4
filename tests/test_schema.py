from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from softlabels import schema
from softlabels.errors import StoreFormatError
from softlabels.schema import StoreMeta, TeacherInfo, TransferInfo

FORMAT_MD = (Path(__file__).resolve().parent.parent / "FORMAT.md").read_text()


def meta(**kw) -> StoreMeta:
    base = StoreMeta(
        num_samples=10,
        num_classes=3,
        class_names=("a", "b", "c"),
        combine="arithmetic",
        weights=(0.5, 0.5),
        teachers=(
            TeacherInfo("t1", "m:f", None, "0" * 64),
            TeacherInfo("t2", "m:g", None, "1" * 64),
        ),
        transfer=TransferInfo("digits", "train", 10, "sha256:" + "2" * 64),
        dtype="float32",
        chunk_rows=4,
        created_at="2026-01-01T00:00:00+00:00",
        producer="softlabels test",
    )
    return replace(base, **kw)


def test_every_schema_name_is_in_format_md():
    names = [
        schema.LOGITS,
        schema.MEMBER_LOGITS,
        schema.SAMPLE_INDEX,
        schema.LABELS,
        schema.COMMIT_JOURNAL,
        schema.ID_GAPS,
        schema.VALUES,
        schema.VALUE_OFFSETS,
        schema.TAIL,
        schema.INCLUSION_LOG_SCALE,
        schema.ATTR_LAYOUT,
        schema.ATTR_SPARSE,
        schema.LAYOUT_DENSE,
        schema.LAYOUT_SPARSE,
        schema.TAIL_KIND,
        schema.PROPOSAL_KIND,
        schema.INPUT_IDS,
        schema.POSITION,
        schema.ATTR_TOKENS,
    ]
    names += list(schema.REQUIRED_ATTRS) + list(schema.COMBINE_RULES) + list(schema.DTYPES)
    for name in names:
        assert f"`{name}`" in FORMAT_MD or f'"{name}"' in FORMAT_MD, name
    assert f"MUST be `{schema.FORMAT_VERSION}`" in FORMAT_MD
    assert f"`format_version` `{schema.SPARSE_FORMAT_VERSION}`" in FORMAT_MD
    assert f'MUST be `"{schema.FORMAT_NAME}"`' in FORMAT_MD


def test_attrs_round_trip():
    m = meta(checksums=("a" * 64,) * 3, complete=True)
    assert StoreMeta.from_attrs(m.to_attrs()) == m
    assert m.num_chunks == 3 and m.chunk_bounds(2) == (8, 10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"combine": "median"}, "combine 'median' is not one of"),
        ({"dtype": "float64"}, "dtype 'float64'"),
        ({"weights": (0.7, 0.7)}, "must be non-negative and sum to 1"),
        ({"weights": (1.0,)}, "1 weights for 2 teachers"),
        ({"combine": "single"}, "combine 'single' with 2 teacher"),
        ({"class_names": ("a",)}, "1 class names for 3 classes"),
        ({"checksums": ("x",)}, "1 checksums for 3 chunks"),
        ({"complete": True}, "marked complete but carries no checksums"),
    ],
)
def test_invalid_metadata(change, message):
    with pytest.raises(StoreFormatError, match=message):
        StoreMeta.from_attrs(meta(**change).to_attrs())


def test_not_a_store_and_missing_keys():
    with pytest.raises(StoreFormatError, match="not a soft-label store"):
        StoreMeta.from_attrs({"format": "other"})
    attrs = meta().to_attrs()
    del attrs["teachers"]
    with pytest.raises(StoreFormatError, match="missing root attributes: teachers"):
        StoreMeta.from_attrs(attrs)
    attrs = meta().to_attrs()
    attrs["num_classes"] = "3"
    with pytest.raises(StoreFormatError, match="num_classes must be an integer"):
        StoreMeta.from_attrs(attrs)


def test_h5_attr_codec():
    assert schema.decode_h5_attr("k", schema.encode_h5_attr({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(StoreFormatError, match="not JSON text"):
        schema.decode_h5_attr("k", 3)
