"""The stores in tests/stores/build.py: `softlabels verify` flags each one, and the trainer and
the CLI refuse each one with a clear error, never a traceback.

``EXPECTED`` pins, per store: the exact error class the trainer raises, the key part of its
message (a regex; the CLI prints the same message after "Error: "), the checks `softlabels
verify` fails with the key part of each detail, and whether `softlabels inspect` can open it.
Each store is checked against the transfer set it was made from (``transfer_of``): the dense
stores' 3 classes or the sparse stores' 40."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from softlabels.cli import main as softlabels
from softlabels.errors import (
    ChecksumError,
    IncompleteStoreError,
    SoftLabelsError,
    StoreFormatError,
)
from softlabels.store import open_store
from softlabels.verify import verify_store
from tests.stores.build import CASES, ROW, SPARSE_CONTROLS, build_all, transfer_of
from trainer.cli import main as distill
from trainer.train import TrainConfig, train

SAME = "same as the trainer's message"  # verify's "format" detail is the open error itself


def not_sparse(name: str, problem: str) -> str:
    """The trainer's message for a sparse store whose rows hold exactly one ``problem``."""
    return rf"^'[^']*/{re.escape(name)}' is not a valid sparse store: {problem}; regenerate it$"


# name: (class, trainer message, {failed verify check: detail}, inspect opens it)
EXPECTED: dict[str, tuple[type[SoftLabelsError], str, dict[str, str], bool]] = {
    "attrs_not_json.h5": (
        StoreFormatError,
        r"^HDF5 attribute 'teachers' is not valid JSON: Expecting property name",
        {"format": SAME},
        False,
    ),
    "attrs_wrong_types.zarr": (
        StoreFormatError,
        r"^store root attributes are malformed: num_classes must be an integer >= 2, got '3'$",
        {"format": SAME},
        False,
    ),
    "complete_without_checksums.zarr": (
        StoreFormatError,
        r"^invalid store metadata: store is marked complete but carries no checksums$",
        {"format": SAME},
        False,
    ),
    "dense_with_layout.zarr": (
        StoreFormatError,
        r"^a version-1 store must not carry a 'layout' attribute$",
        {"format": SAME},
        False,
    ),
    "duplicate_index.zarr": (
        StoreFormatError,
        r"^sample_index repeats transfer positions \[3\]$",
        {"sample_index": SAME, "transfer": SAME},
        True,
    ),
    "flipped_byte.zarr": (
        ChecksumError,
        r"^chunk 1 of '[^']*/flipped_byte\.zarr' does not match its checksum: the store is "
        r"corrupt; run `softlabels verify` and regenerate it$",
        {"checksums": r"^chunks \[1\] do not match their recorded SHA-256"},
        True,
    ),
    "flipped_byte_compressed.zarr": (
        ChecksumError,
        r"^chunk 0 of '[^']*/flipped_byte_compressed\.zarr' does not match its checksum: the "
        r"store is corrupt; run `softlabels verify` and regenerate it$",
        {"checksums": r"^chunks \[0\] do not match their recorded SHA-256"},
        True,
    ),
    "edited_attributes.zarr": (
        StoreFormatError,
        r"^the attributes of '[^']*/edited_attributes\.zarr' were changed after it was written: "
        r"they no longer match their SHA-256 \(attributes_sha256\), so its targets cannot be "
        r"trusted; restore the original store or regenerate it$",
        {"format": SAME},
        False,
    ),
    "future_version.zarr": (
        StoreFormatError,
        r"^store format version 7 is not supported by this reader \(it reads versions 1, 2, 3, "
        r"4, 5, 6\); "
        r"upgrade softlabels or regenerate the store$",
        {"format": SAME},
        False,
    ),
    "huge_attrs.zarr": (
        StoreFormatError,
        r"^'[^']*/huge_attrs\.zarr': zarr\.json is [\d,]+ bytes, over the 67,108,864-byte "
        r"limit for store metadata; refusing to parse it$",
        {"format": SAME},
        False,
    ),
    "incomplete.zarr": (
        IncompleteStoreError,
        r"^store '[^']*/incomplete\.zarr' is not complete \(its writer did not finish\); finish "
        r"it by running the same `softlabels generate` again with (resume=True|--resume);",
        {
            "complete": r"^incomplete: every one of its 3 chunks is committed, but its writer stopped"
        },
        True,
    ),
    "link_outside_array.zarr": (
        StoreFormatError,
        r"^'[^']*/link_outside_array\.zarr' contains a link 'labels' pointing outside the store "
        r"\([^)]*/outside-array\); refusing to read it$",
        {"format": SAME},
        False,
    ),
    "link_outside_chunk.zarr": (
        StoreFormatError,
        r"^'[^']*/link_outside_chunk\.zarr' contains a link 'logits/c/0/0' pointing outside the "
        r"store \([^)]*/outside-secret\.bin\); refusing to read it$",
        {"format": SAME},
        False,
    ),
    "missing_array.zarr": (
        StoreFormatError,
        r"^store is missing the array 'labels'$",
        {"format": SAME},
        False,
    ),
    "nan_logits.zarr": (
        StoreFormatError,
        r"^'[^']*/nan_logits\.zarr' holds NaN or Inf logits at rows \[3\]$",
        {"finite": r"^non-finite logits at rows \[3\]"},
        True,
    ),
    "out_of_range_index.h5": (
        StoreFormatError,
        r"^sample_index is out of range \[0, 20\) at rows \[7\]$",
        {"sample_index": SAME, "transfer": SAME},
        True,
    ),
    "shape_mismatch.h5": (
        StoreFormatError,
        r"^array 'sample_index' has shape \(17,\), expected \(20,\)$",
        {"format": SAME},
        False,
    ),
    "sparse_as_version_1.zarr": (
        StoreFormatError,
        r"^a version-1 store must not carry a 'layout' attribute$",
        {"format": SAME},
        False,
    ),
    "sparse_attr_every_class.zarr": (
        StoreFormatError,
        r"^invalid store metadata: top_k \+ sample = 40 must be below the 40 classes \(keep every "
        r"class: use a dense store\)$",
        {"format": SAME},
        False,
    ),
    "sparse_attr_k.zarr": (
        StoreFormatError,
        r"^store root attributes are malformed: sparse\.k and sparse\.policy must be 7 and "
        r"'top\+sample'$",
        {"format": SAME},
        False,
    ),
    "sparse_attr_tail_kind.zarr": (
        StoreFormatError,
        r"^store root attributes are malformed: sparse\.tail\.kind must be 'log-partition', got "
        r"\{'kind': 'histogram'",
        {"format": SAME},
        False,
    ),
    "sparse_id_out_of_range.h5": (
        StoreFormatError,
        not_sparse("sparse_id_out_of_range.h5", r"ids >= num_classes 40 at rows \[7\]"),
        {"sparse": r"^ids >= num_classes 40 at rows \[7\]$"},
        True,
    ),
    "sparse_inclusion_zero.zarr": (
        StoreFormatError,
        not_sparse(
            "sparse_inclusion_zero.zarr", r"inclusion probabilities outside \(0, 1\] at rows \[7\]"
        ),
        {"sparse": r"^inclusion probabilities outside \(0, 1\] at rows \[7\]$"},
        True,
    ),
    "sparse_negative_id.zarr": (
        StoreFormatError,
        not_sparse("sparse_negative_id.zarr", r"negative ids at rows \[7\]"),
        {"sparse": r"^negative ids at rows \[7\]$"},
        True,
    ),
    "sparse_sampled_above_top.zarr": (
        StoreFormatError,
        not_sparse(
            "sparse_sampled_above_top.zarr",
            r"sampled ids ranking above the top ids at rows \[7\]",
        ),
        {"sparse": r"^sampled ids ranking above the top ids at rows \[7\]$"},
        True,
    ),
    "sparse_sampled_repeats_top.zarr": (
        StoreFormatError,
        not_sparse(
            "sparse_sampled_repeats_top.zarr", r"sampled ids repeating top ids at rows \[7\]"
        ),
        {"sparse": r"^sampled ids repeating top ids at rows \[7\]$"},
        True,
    ),
    "sparse_tail_above_top.zarr": (
        StoreFormatError,
        not_sparse(
            "sparse_tail_above_top.zarr",
            r"tail summaries \(group 0\) no logits could produce at rows \[7\]",
        ),
        {"sparse": r"^tail summaries \(group 0\) no logits could produce at rows \[7\]$"},
        True,
    ),
    "sparse_tail_infinite.zarr": (
        StoreFormatError,
        r"^'[^']*/sparse_tail_infinite\.zarr' holds NaN or Inf values in its sparse arrays at "
        r"rows \[7\]$",
        {
            "finite": r"^non-finite values at rows \[7\]$",
            "sparse": r"^tail summaries \(group 0\) no logits could produce at rows \[7\]$",
        },
        True,
    ),
    "sparse_tail_not_convex.zarr": (
        StoreFormatError,
        not_sparse(
            "sparse_tail_not_convex.zarr",
            r"tail summaries \(group 0\) no logits could produce at rows \[7\]",
        ),
        {"sparse": r"^tail summaries \(group 0\) no logits could produce at rows \[7\]$"},
        True,
    ),
    "sparse_unsorted_ids.zarr": (
        StoreFormatError,
        not_sparse(
            "sparse_unsorted_ids.zarr",
            r"ids not strictly ascending within a segment at rows \[7\]",
        ),
        {"sparse": r"^ids not strictly ascending within a segment at rows \[7\]$"},
        True,
    ),
    "sparse_without_layout.zarr": (
        StoreFormatError,
        r"^store layout None is not 'dense' or 'sparse' \(version 2 stores name it\)$",
        {"format": SAME},
        False,
    ),
    "truncated.h5": (
        StoreFormatError,
        r"^'[^']*/truncated\.h5' is not a readable HDF5 file \(.*truncated file.*\); if it was "
        r"being written when the writer died, HDF5 cannot recover it: regenerate it, replacing "
        r"it \((overwrite=True|--overwrite)\)$",
        {"format": SAME},
        False,
    ),
    "wrong_format.zarr": (
        StoreFormatError,
        r"^not a soft-label store: attribute 'format' is 'safetensors', expected 'softlabels'$",
        {"format": SAME},
        False,
    ),
    "zarr_json_garbage.zarr": (
        StoreFormatError,
        r"^'[^']*/zarr_json_garbage\.zarr': a zarr\.json metadata file is not valid JSON "
        r"\(Expecting property name enclosed in double quotes.*the store is damaged",
        {"format": SAME},
        False,
    ),
}


def test_every_case_is_pinned():
    assert set(EXPECTED) == set(CASES)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    return out, build_all(out)


def test_the_valid_controls_pass(stores, tmp_path):
    out, paths = stores
    for name in ("valid.zarr", "valid.h5", *SPARSE_CONTROLS):
        report = verify_store(str(paths[name]), transfer=str(out / transfer_of(name)))
        assert report.ok, report.render()
        with open_store(paths[name]) as store:
            assert store.is_sparse == (name in SPARSE_CONTROLS)
            assert len(store.load()) == store.meta.num_samples
        run = train(
            TrainConfig(
                out=str(tmp_path / name),
                transfer=str(out / transfer_of(name)),
                store=str(paths[name]),
                eval_split=None,
                hidden=(4,),
                epochs=1,
                batch_size=8,
                progress=False,
            )
        )
        assert run.final["epoch"] == 1


@pytest.mark.parametrize("name", sorted(CASES))
def test_verify_flags_it(stores, name):
    out, paths = stores
    report = verify_store(str(paths[name]), transfer=str(out / transfer_of(name)))
    assert not report.ok, report.render()
    _, message, checks, _ = EXPECTED[name]
    failed = {check: detail for check, ok, detail in report.checks if not ok}
    assert set(failed) == set(checks), report.render()
    for check, pattern in checks.items():
        assert re.search(message if pattern is SAME else pattern, failed[check]), report.render()


@pytest.mark.parametrize("name", sorted(n for n in CASES if "sparse" in EXPECTED[n][2]))
def test_the_reader_refuses_the_damaged_sparse_chunk(stores, name):
    """Impossible sparse rows open (inspect describes them) but are refused once read: the
    damaged chunk, and any positions in it, with the trainer's message; the other chunk reads."""
    _, paths = stores
    cls, message, _, _ = EXPECTED[name]
    with open_store(paths[name]) as store:
        damaged = ROW // store.meta.chunk_rows
        for read in (
            lambda: store.read_verified_chunk(damaged),
            lambda: store.soft_targets(np.array([ROW]), 2.0),
            store.load,
        ):
            with pytest.raises(SoftLabelsError) as info:
                read()
            assert type(info.value) is cls and re.search(message, str(info.value)), info.value
        for chunk in range(store.meta.num_chunks):
            if chunk != damaged:
                store.read_verified_chunk(chunk)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trainer_refuses_it(stores, tmp_path, name):
    out, paths = stores
    config = TrainConfig(
        out=str(tmp_path / "run"),
        transfer=str(out / transfer_of(name)),
        store=str(paths[name]),
        eval_split=None,
        hidden=(4,),
        epochs=1,
        batch_size=8,
        progress=False,
    )
    cls, message, _, _ = EXPECTED[name]
    with pytest.raises(SoftLabelsError) as info:
        train(config)
    assert type(info.value) is cls, repr(info.value)
    assert re.search(message, str(info.value)), str(info.value)
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_errors_are_clean(stores, tmp_path, name):
    out, paths = stores
    runner = CliRunner()
    res = runner.invoke(
        distill,
        [
            "train",
            "--transfer",
            str(out / transfer_of(name)),
            "--store",
            str(paths[name]),
            "--eval-split",
            "none",
            "--hidden",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--quiet",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    _, message, _, opens = EXPECTED[name]
    assert res.exit_code == 1 and res.output.startswith("Error: "), res.output
    assert "Traceback" not in res.output
    assert re.search(message, res.output.removeprefix("Error: ").rstrip("\n")), res.output
    res = runner.invoke(softlabels, ["inspect", str(paths[name])])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if opens:  # inspect describes the store; it does not verify the data
        assert res.exit_code == 0 and str(paths[name]) in res.output, res.output
    else:
        assert res.exit_code == 1, res.output
        assert re.search(message, res.output.removeprefix("Error: ").rstrip("\n")), res.output
