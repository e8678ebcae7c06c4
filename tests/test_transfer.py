from __future__ import annotations

import gzip
import hashlib
import struct

import h5py
import numpy as np
import pytest
import zarr

from softlabels.errors import SpecError
from softlabels.transfer import load_transfer, read_idx


def write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_digits_splits():
    train, test = load_transfer("digits"), load_transfer("digits", "test")
    assert len(train) == 1438 and len(test) == 359
    assert train.input_shape == (1, 8, 8) and float(train.take(0, 1438).max()) == 1.0
    assert test.labels[:5].tolist() == [4, 9, 4, 9, 4]  # digits positions 4, 9, 14, ... cycle 0-9


def test_fingerprint_is_sha256_of_float32_inputs():
    ts = load_transfer("digits", "test")
    want = hashlib.sha256(ts.take(0, len(ts)).astype("<f4").tobytes()).hexdigest()
    assert ts.fingerprint() == "sha256:" + want


def test_idx_folder(tmp_path):
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([3, 1, 2], dtype=np.uint8))
    ts = load_transfer(f"fashion-mnist:{tmp_path}")
    np.testing.assert_allclose(ts.take(0, 3)[:, 0], images / 255.0, atol=1e-7)
    assert ts.labels.tolist() == [3, 1, 2] and ts.class_names[9] == "Ankle boot"
    with pytest.raises(SpecError, match="no t10k-images-idx3-ubyte"):
        load_transfer(f"fashion-mnist:{tmp_path}", "test")


def test_idx_rejects_truncated(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x01\x02")
    with pytest.raises(SpecError, match="holds 2 data bytes, but its header promises 10"):
        read_idx(path)


def test_npz_and_array_pairs(tmp_path):
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.testing.assert_array_equal(load_transfer(str(tmp_path / "d.npz")).take(0, 6), x)
    with pytest.raises(SpecError, match="no 'test' split"):
        load_transfer(str(tmp_path / "d.npz"), "test")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["train/x"], f["train/y"], f["test/x"] = x, y, x[:2]
    assert len(load_transfer(str(tmp_path / "d.h5"), "test")) == 2
    assert load_transfer(str(tmp_path / "d.h5")).labels.tolist() == y.tolist()
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("x", data=x)
    assert load_transfer(str(tmp_path / "d.zarr")).labels is None


def test_module_dataset():
    ts = load_transfer("tests.helpers:tiny_dataset", "test")
    assert len(ts) == 40 and ts.split == "test" and ts.labels is not None and ts.num_classes == 10


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "cannot understand transfer SPEC"),
        ("missing.npz", "does not exist"),
        ("no_such_module:fn", "cannot import module"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(SpecError, match=message):
        load_transfer(spec)


def test_empty_transfer_set(tmp_path):
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 3), np.float32))
    with pytest.raises(SpecError, match="is empty"):
        load_transfer(str(tmp_path / "e.npz"))


def test_function_without_split_cannot_serve_the_test_split(tmp_path):
    """It used to return its training data for split='test', so evaluation ran on training data."""
    assert len(load_transfer("tests.helpers:unsplit_dataset", "train")) == 40
    with pytest.raises(SpecError, match="takes no `split` argument.*--eval-split none"):
        load_transfer("tests.helpers:unsplit_dataset", "test")
    from trainer.train import TrainConfig, train

    config = TrainConfig(
        out=str(tmp_path / "r"),
        transfer="tests.helpers:unsplit_dataset",
        hidden=(4,),
        epochs=1,
        progress=False,
    )
    with pytest.raises(SpecError, match="--eval-split none"):
        train(config)
    assert train(TrainConfig(**{**config.__dict__, "eval_split": None})).final["epoch"] == 1
