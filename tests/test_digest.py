"""The attributes digest (softlabels.schema.digest, FORMAT.md "Attributes digest"): a literal
vector, and every hand edit the integrity issue found is refused by readers, verify and
training, on Zarr and HDF5; a store written before the digest still reads, reported as
unprotected."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import pytest
import zarr

from softlabels.dataset import SoftTargetDataset
from softlabels.errors import StoreFormatError
from softlabels.schema import SparseSpec
from softlabels.schema.digest import attributes_digest, canonical_attributes
from softlabels.store import open_store
from softlabels.verify import verify_store
from tests.conftest import make_store
from tests.test_vectors import ATTRS, VECTORS

ROOT = Path(__file__).resolve().parents[1]
# FORMAT.md's tiny store attributes (complete, checksums set), canonical JSON then SHA-256
VECTOR_DIGEST = "3a9134b04b640b3b0cc147cfc73d08121eb144e7a950094521bb335b7695c126"


def test_the_literal_vector_and_format_md_agree():
    text = canonical_attributes(ATTRS).decode()
    assert text.startswith('{"checksums":["b02e965e') and '"complete"' not in text
    assert '"weights":[0.5,0.5]' in text and ", " not in text and '": ' not in text
    assert attributes_digest(ATTRS) == VECTOR_DIGEST
    assert (
        attributes_digest({**ATTRS, "complete": False, "attributes_sha256": "x"}) == VECTOR_DIGEST
    )
    section = (ROOT / "FORMAT.md").read_text().split("\n## Attributes digest\n", 1)[1]
    assert f"`{VECTOR_DIGEST}`" in section.split("\n## ", 1)[0]


def _edit_zarr(path: Path, edit) -> None:
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update(edit(dict(group.attrs)))


EDITS = {  # the reproductions: each changes what a reader computes
    "value step": (True, lambda a: {"sparse": {**a["sparse"], "values": {"encoding": "fixed", "step": 0.125}}}),
    "proposal temperature": (True, lambda a: {"sparse": {**a["sparse"], "proposal": {**a["sparse"]["proposal"], "temperature": 2.0}}}),
    "weights": (False, lambda a: {"weights": [0.9, 0.1]}),
    "combine": (False, lambda a: {"combine": "geometric"}),
    "class names": (False, lambda a: {"class_names": [f"c{i}" for i in range(10)]}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(EDITS))
def test_a_hand_edit_of_the_attributes_is_refused_everywhere(tmp_path, name):
    sparse, edit = EDITS[name]
    two = ("tests.helpers:teacher_a", "tests.helpers:teacher_b")
    spec = SparseSpec(top_k=4, sample=2) if sparse else None
    path = make_store(tmp_path / "s.zarr", teachers=two, sparse=spec)
    with open_store(path) as store:
        assert store.meta.attributes_sha256 is not None
    _edit_zarr(path, edit)
    message = re.escape("were changed after it was written")
    with pytest.raises(StoreFormatError, match=message):
        open_store(path)
    with pytest.raises(StoreFormatError, match=message):
        SoftTargetDataset(str(path), "digits", temperature=2.0)
    report = verify_store(path)
    assert not report.ok and "changed after it was written" in report.render()


def test_hdf5_attributes_are_covered_too(tmp_path):
    path = make_store(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["combine"] = json.dumps("geometric")
    with pytest.raises(StoreFormatError, match="were changed after it was written"):
        open_store(path)


def test_a_store_written_before_the_digest_reads_and_verify_says_it_is_unprotected():
    report = verify_store(VECTORS / "tiny.zarr")
    detail = dict((name, (ok, text)) for name, ok, text in report.checks)["attributes"]
    assert report.ok and detail[0] and detail[1].startswith("unprotected")
