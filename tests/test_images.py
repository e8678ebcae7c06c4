"""Image transfer sets: an image folder and uint8 (N, H, W, 3) arrays, their recorded
preprocessing, a fingerprint over decoded pixels, and bad input refused naming the file."""

from __future__ import annotations

import hashlib
import shutil

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

import softlabels
from softlabels.cli import main as softlabels_cli
from softlabels.errors import MismatchError, SpecError
from softlabels.join import check_transfer
from softlabels.transfer import load_transfer
from softlabels.vision.images import ImageTransfer
from softlabels.vision.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from tests import vision_helpers as vh
from trainer.cli import main as distill_cli

TEACHER = "tests.vision_helpers:image_teacher"


def _load(spec: str, split: str = "train") -> ImageTransfer:
    data = load_transfer(spec, split)
    assert isinstance(data, ImageTransfer)
    data.progress = False
    return data


def _fingerprint(pixels: np.ndarray) -> str:
    """FORMAT.md's rule, written out: SHA-256 over each image's SHA-256 of "HxW|" + bytes."""
    digests = b"".join(
        hashlib.sha256(f"{p.shape[0]}x{p.shape[1]}|".encode() + p.tobytes()).digest()
        for p in pixels
    )
    return "sha256:" + hashlib.sha256(digests).hexdigest()


def test_an_image_folder_is_a_transfer_set(tmp_path):
    root, pixels, labels = vh.image_folder(tmp_path / "imgs")
    data = _load(f"{root}?mean=0.5/0.25/0.125,std=0.5/0.5/2")
    assert data.class_names == vh.CLASSES and len(data) == 20 and data.input_shape == (3, 16, 16)
    np.testing.assert_array_equal(data.labels, labels)
    mean, std = np.array([0.5, 0.25, 0.125]), np.array([0.5, 0.5, 2.0])
    expected = ((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2)  # float64, by hand
    np.testing.assert_allclose(data.take(0, 20), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.gather(np.array([7, 2])), expected[[7, 2]], atol=1e-6)
    assert data.fingerprint() == _fingerprint(pixels)


def test_centre_crop_and_nearest_resize_by_hand(tmp_path):
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(1, 6, 8, 3)
    np.savez(tmp_path / "one.npz", x=image)
    cropped = _load(f"{tmp_path / 'one.npz'}?crop=4").pixels()
    np.testing.assert_array_equal(cropped[0], image[0, 1:5, 2:6])  # top round(2/2), left 4/2
    small = _load(f"{tmp_path / 'one.npz'}?resize=3,interpolation=nearest").pixels()
    # shorter side 6 -> 3, longer 8 -> int(3 * 8 / 6) = 4; nearest samples pixel centres
    np.testing.assert_array_equal(small[0], image[0][[1, 3, 5]][:, [1, 3, 5, 7]])


def test_a_timm_data_config_is_taken_as_numbers():
    pytest.importorskip("timm")
    from softlabels.vision.preprocess import parse_preprocess

    pre = parse_preprocess({"timm": "resnet18", "img_size": "32"}, "x")
    # resnet18's config: crop_pct 0.95, bicubic, ImageNet statistics; floor(32 / 0.95) = 33
    assert pre == Preprocess(
        resize=33, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
    )


def test_the_fingerprint_covers_decoded_pixels_in_order(tmp_path):
    root, pixels, _ = vh.image_folder(tmp_path / "imgs")
    base = _load(str(root)).fingerprint()
    assert _load(f"{root}?crop=8").fingerprint() == base  # preprocessing is recorded apart
    np.savez(tmp_path / "same.npz", x=pixels)
    assert _load(str(tmp_path / "same.npz")).fingerprint() == base  # same pixels, same print
    Image.open(root / "cat" / "00.png").save(root / "cat" / "00.png", compress_level=0)
    assert _load(str(root)).fingerprint() == base  # re-encoded losslessly: same pixels
    a, b = root / "cat" / "00.png", root / "cat" / "02.png"  # reorder: swap two files
    shutil.move(a, tmp_path / "t.png"), shutil.move(b, a), shutil.move(tmp_path / "t.png", b)
    assert _load(str(root)).fingerprint() not in (base, None)
    shutil.move(a, tmp_path / "t.png"), shutil.move(b, a), shutil.move(tmp_path / "t.png", b)
    Image.open(a).convert("RGB").save(root / "cat" / "00.jpg", quality=90)  # lossy re-encode
    a.unlink()
    assert _load(str(root)).fingerprint() != base


def test_uint8_arrays_in_hdf5_and_zarr_are_image_sets(tmp_path):
    x = vh.draw_images(6, 8)
    with h5py.File(tmp_path / "i.h5", "w") as f:
        f["x"], f["y"] = x, np.arange(6) % 2
    root = zarr.open_group(str(tmp_path / "i.zarr"), mode="w")
    root.create_array("x", data=x)
    for spec in (tmp_path / "i.h5", tmp_path / "i.zarr"):
        assert _load(str(spec)).fingerprint() == _fingerprint(x)
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32))
    with pytest.raises(SpecError, match=r"\?options apply to image sets"):
        load_transfer(f"{tmp_path / 'f.npz'}?crop=4")


def test_worker_decoding_matches_the_main_process(tmp_path):
    root, pixels, _ = vh.image_folder(tmp_path / "imgs", n=40)
    data = _load(f"{root}?resize=12,crop=10")
    data.workers = 2
    serial = _load(f"{root}?resize=12,crop=10")
    serial.workers = 0
    np.testing.assert_array_equal(data.pixels(), serial.pixels())
    assert data.fingerprint() == serial.fingerprint() == _fingerprint(pixels)


def test_stage_two_feeds_the_student_what_the_teacher_saw(tmp_path):
    root, _, _ = vh.image_folder(tmp_path / "imgs")
    seen = f"{root}?resize=20,crop=16,mean=imagenet,std=imagenet"
    store = tmp_path / "s.zarr"
    softlabels.generate([TEACHER], seen, store, progress=False).close()
    with softlabels.open_store(store) as reader:
        assert reader.meta.transfer.preprocess == {
            "resize": 20, "crop": 16, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "interpolation": "bilinear",
        }  # fmt: skip
        plain = _load(str(root))  # no options: takes the store's preprocessing
        check_transfer(plain, num_classes=2, store=reader)
        np.testing.assert_array_equal(plain.take(0, 20), _load(seen).take(0, 20))
        other = _load(f"{root}?resize=20,crop=12,mean=imagenet,std=imagenet")
        with pytest.raises(MismatchError, match=r"preprocessing differs.*crop 12 vs 16"):
            check_transfer(other, num_classes=2, store=reader)
    run = ["train", "--store", str(store), "--epochs", "1", "--eval-split", "none", "--quiet",
           "--model", "cnn", "--channels", "4", "--fc", "8"]  # fmt: skip
    res = CliRunner().invoke(
        distill_cli, [*run, "--transfer", str(root), "--out", str(tmp_path / "a")]
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        distill_cli, [*run, "--transfer", f"{root}?crop=16", "--out", str(tmp_path / "b")]
    )
    assert res.exit_code != 0 and "resize None vs 20" in res.output, res.output


def test_an_eval_split_takes_the_training_preprocessing(tmp_path):
    vh.image_folder(tmp_path / "imgs" / "train")
    vh.image_folder(tmp_path / "imgs" / "test", n=6, seed=1)
    res = CliRunner().invoke(
        distill_cli,
        ["train", "--transfer", f"{tmp_path / 'imgs'}?resize=12,crop=8", "--model", "cnn",
         "--channels", "4", "--fc", "8", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with pytest.raises(SpecError, match="has no 'test' split"):
        _load(str(tmp_path / "imgs" / "train"), "test")


def _corrupt(root):
    (root / "cat" / "bad.jpg").write_bytes(b"GIF? no: random bytes, not a JPEG")
    return root / "cat" / "bad.jpg"


def _truncated(root):
    path = root / "cat" / "cut.jpg"
    Image.fromarray(vh.draw_images(1, 16)[0]).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:200])
    return path


def _grayscale(root):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "dog" / "gray.png")
    return root / "dog" / "gray.png"


def _cmyk(root):
    Image.new("CMYK", (16, 16), (0, 50, 100, 0)).save(root / "dog" / "print.jpg")
    return root / "dog" / "print.jpg"


def _empty_class(root):
    (root / "zebra").mkdir()
    return root / "zebra"


def _not_an_image(root):
    (root / "cat" / "notes.txt").write_text("not an image")
    return root / "cat" / "notes.txt"


def _stray_file(root):
    (root / "README.txt").write_text("class folders only at the top")
    return root / "README.txt"


def _other_size(root):
    Image.fromarray(vh.draw_images(1, 12)[0]).save(root / "dog" / "small.png")
    return root / "dog" / "small.png"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_corrupt, "is not an image PIL can read"),
        (_truncated, "is truncated or corrupt"),
        (_grayscale, "is a 'L' image (grayscale)"),
        (_cmyk, "is a 'CMYK' image (CMYK)"),
        (_empty_class, "is empty"),
        (_not_an_image, "is not an image file"),
        (_other_size, "images differ in size"),
        (_stray_file, "holds files outside class folders"),
    ],
)
def test_bad_input_is_refused_naming_the_file_and_nothing_is_written(tmp_path, make, message):
    root, _, _ = vh.image_folder(tmp_path / "imgs")
    culprit = make(root)
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(
        softlabels_cli,
        ["generate", "--teacher", TEACHER, "--transfer", str(root), "--out", str(out), "--quiet"],
    )
    assert res.exit_code != 0 and message in res.output, res.output
    assert str(culprit) in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_convert_rgb_converts_grayscale_and_cmyk(tmp_path):
    root, _, _ = vh.image_folder(tmp_path / "imgs", n=2)
    _grayscale(root), _cmyk(root)
    data = _load(f"{root}?convert=rgb")
    names = [p.name for p in data.source.files]
    gray = data.pixels()[names.index("gray.png")]
    np.testing.assert_array_equal(gray, np.zeros((16, 16, 3), np.uint8))  # L=0 -> (0, 0, 0)
    cmyk = data.pixels()[names.index("print.jpg")]
    expected = np.asarray(Image.open(root / "dog" / "print.jpg").convert("RGB"))
    np.testing.assert_array_equal(cmyk, expected)
    assert tuple(cmyk[0, 0]) != (0, 0, 0)


def test_verify_reruns_a_timm_teacher_on_the_folder_with_the_stores_preprocessing(tmp_path):
    pytest.importorskip("timm")
    root, _, _ = vh.image_folder(tmp_path / "imgs", n=8, size=32)
    arch = {"name": "timm", "kwargs": {"model": "resnet10t", "num_classes": 2}}
    vh.saved_model(tmp_path / "w.safetensors", arch)
    spec = f"timm:resnet10t,num_classes=2,weights={tmp_path / 'w.safetensors'}"
    out = str(tmp_path / "s.zarr")
    seen = f"{root}?resize=36,crop=32,mean=imagenet,std=imagenet"
    res = CliRunner().invoke(
        softlabels_cli,
        ["generate", "--teacher", spec, "--transfer", seen, "--out", out, "--quiet"],
    )
    assert res.exit_code == 0, res.output
    # the plain folder takes the store's preprocessing in the teacher re-run too
    res = CliRunner().invoke(
        softlabels_cli, ["verify", out, "--transfer", str(root), "--teacher", spec]
    )
    assert res.exit_code == 0 and "max rel. error 0 " in res.output, res.output
    res = CliRunner().invoke(softlabels_cli, ["inspect", out])
    assert "preprocess      resize=36, crop=32, mean=[0.485, 0.456, 0.406]" in res.output
