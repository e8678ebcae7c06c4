"""Image transfer sets: an image folder (``DIR/CLASS/xxx.png|jpg``, as torchvision's
ImageFolder lays it out) or a uint8 (N, H, W, 3) array in a .npz, Zarr or HDF5 file.

Images are decoded once, in a worker DataLoader with a progress bar, into memory as uint8
(N, h, w, 3) after the geometric part of their ``Preprocess`` (resize, centre crop); ``take``
normalises a slice to float32 (B, 3, h, w). Every image MUST decode to RGB: grayscale, CMYK,
palette or alpha images are refused, naming the file, unless the SPEC asks for ``convert=rgb``
(PIL's ``convert("RGB")`` on every image that is not RGB). A corrupt or truncated file, a
non-image file, an empty class folder or images of different sizes (without resize and crop)
are refused, naming the file, before anything is written.

The fingerprint covers the decoded pixels, whatever the preprocessing: SHA-256 over, in order,
each image's SHA-256 of ``"{H}x{W}|"`` and its (H, W, 3) uint8 bytes (FORMAT.md). Re-encoded
(pixel-changing) or reordered files change it; a folder and an array of the same pixels agree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from softlabels.errors import SpecError
from softlabels.schema import FINGERPRINT_PREFIX
from softlabels.transfer import TransferSet
from softlabels.vision.preprocess import Preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_DECODE_BATCH = 32
_WORKERS_FROM = 512  # folders of at least this many files decode in worker processes


class ImageSource(Protocol):
    def __len__(self) -> int: ...
    def load(self, i: int) -> np.ndarray: ...  # uint8 (H, W, 3); raises SpecError
    def describe(self, i: int) -> str: ...


class ArraySource:
    """Images already decoded: a uint8 (N, H, W, 3) array."""

    def __init__(self, array: np.ndarray, name: str) -> None:
        self.array, self.name = array, name

    def __len__(self) -> int:
        return len(self.array)

    def load(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[i])

    def describe(self, i: int) -> str:
        return f"image {i} of {self.name}"


class FileSource:
    """Image files, decoded with PIL; ``convert``: convert non-RGB images instead of refusing."""

    def __init__(self, files: Sequence[Path], *, convert: bool) -> None:
        self.files, self.convert = list(files), convert

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def load(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode != "RGB" and not self.convert:
                    raise SpecError(
                        f"{path} is a {img.mode!r} image ({_MODES.get(img.mode, 'not RGB')}); "
                        f"image transfer sets take RGB images: convert it, or add convert=rgb "
                        f"to the transfer SPEC (DIR?convert=rgb) to convert every non-RGB "
                        f"image with PIL's convert('RGB')"
                    )
                rgb = img.convert("RGB") if img.mode != "RGB" else img
                return np.asarray(rgb, dtype=np.uint8).copy()
        except UnidentifiedImageError as exc:
            raise SpecError(f"{path} is not an image PIL can read (corrupt?): {exc}") from None
        except OSError as exc:
            raise SpecError(
                f"{path} is truncated or corrupt: {exc}; replace or remove it"
            ) from None


_MODES = {"L": "grayscale", "LA": "grayscale with alpha", "CMYK": "CMYK", "P": "palette",
          "RGBA": "RGB with alpha", "I;16": "16-bit grayscale", "1": "black and white"}  # fmt: skip


def list_folder(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """The files, labels and class names of an image folder ``root/CLASS/xxx.png``: classes
    and files in sorted name order; names starting with '.' are skipped."""
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    classes = [p for p in entries if p.is_dir()]
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise SpecError(
            f"image folder {root} holds files outside class folders ({stray[0]}, ...); an "
            f"image folder holds one subfolder per class, images inside (a folder of IDX files "
            f"is given as idx:DIR, mnist:DIR or fashion-mnist:DIR)"
        )
    if not classes:
        raise SpecError(f"image folder {root} has no class subfolders (layout: {root}/CLASS/x.png)")
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        inside = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for p in inside:
            if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
                raise SpecError(
                    f"{p} is not an image file (a class folder holds only "
                    f"{'/'.join(IMAGE_SUFFIXES)} files): move it out of {folder}"
                )
        if not inside:
            raise SpecError(
                f"class folder {folder} is empty: every class needs at least one image (remove "
                f"the folder, or the class count changes)"
            )
        files += inside
        labels += [label] * len(inside)
    return files, np.array(labels, dtype=np.int64), tuple(p.name for p in classes)


def geometry(pixels: np.ndarray, pre: Preprocess, where: str) -> np.ndarray:
    """Resize (shorter side) then centre-crop uint8 (H, W, 3) pixels, as Preprocess says."""
    if pre.resize is not None:
        from PIL import Image

        h, w = pixels.shape[:2]
        short, long = min(h, w), max(h, w)
        size_long = int(pre.resize * long / short)
        new_h, new_w = (pre.resize, size_long) if h <= w else (size_long, pre.resize)
        if (new_h, new_w) != (h, w):
            resample = getattr(Image.Resampling, pre.interpolation.upper())
            img = Image.fromarray(pixels).resize((new_w, new_h), resample=resample)
            pixels = np.asarray(img, dtype=np.uint8)
    if pre.crop is not None:
        h, w = pixels.shape[:2]
        if pre.crop > min(h, w):
            raise SpecError(
                f"{where} is {h}x{w} (after resize), smaller than the {pre.crop}-pixel centre "
                f"crop: give a resize of at least {pre.crop}"
            )
        top, left = int(round((h - pre.crop) / 2.0)), int(round((w - pre.crop) / 2.0))
        pixels = pixels[top : top + pre.crop, left : left + pre.crop]
    return np.ascontiguousarray(pixels)


def pixel_digest(pixels: np.ndarray) -> bytes:
    """SHA-256 of one image's ``"{H}x{W}|"`` header and uint8 (H, W, 3) bytes."""
    h = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}|".encode())
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.digest()


class _Decode:
    """One image per item: (position, preprocessed pixels, digest, error message or None).
    Errors travel as text so the main process raises them cleanly, naming the file."""

    def __init__(self, source: ImageSource, pre: Preprocess) -> None:
        self.source, self.pre = source, pre

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, Any, bytes, str | None]:
        try:
            pixels = self.source.load(i)
            if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
                raise SpecError(f"{self.source.describe(i)} is not uint8 (H, W, 3) pixels")
            return (
                i,
                geometry(pixels, self.pre, self.source.describe(i)),
                pixel_digest(pixels),
                None,
            )
        except SpecError as exc:
            return i, None, b"", str(exc)
        except Exception as exc:  # PIL's DecompressionBombError, a failing custom source...
            where = self.source.describe(i)
            return i, None, b"", f"cannot read {where}: {type(exc).__name__}: {exc}"


def _items(batch: list[Any]) -> list[Any]:
    return batch


class ImageTransfer(TransferSet):
    """An image transfer set. ``explicit``: the preprocessing was given (in the SPEC); when
    it was not, pairing with a store adopts the store's (``match_store``).
    ``workers`` and ``progress`` steer decoding (0 workers: the main process)."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        source: ImageSource,
        labels: np.ndarray | None,
        class_names: tuple[str, ...] | None,
        preprocess: Preprocess,
        explicit: bool,
    ) -> None:
        super().__init__(
            name=name,
            split=split,
            inputs=None,
            labels=labels,
            class_names=class_names,
            dataset=range(len(source)),
        )
        self.source, self.preprocess, self.explicit = source, preprocess, explicit
        many = isinstance(source, FileSource) and len(source) >= _WORKERS_FROM
        self.workers = min(4, os.cpu_count() or 1) if many else 0
        self.progress = True
        self._pixels: np.ndarray | None = None
        self._digests: list[bytes] | None = None

    def pixels(self) -> np.ndarray:
        """uint8 (N, h, w, 3): every image after resize and crop, before normalisation."""
        if self._pixels is None:
            self._pixels, self._digests = self._decode()
        return self._pixels

    def take(self, start: int, stop: int) -> np.ndarray:
        return self.preprocess.normalise(self.pixels()[start:stop])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return self.preprocess.normalise(self.pixels()[np.asarray(positions)])

    def policy_inputs(self, positions: np.ndarray) -> np.ndarray:
        """float32 (B, 3, h, w) pixel values 0..255 after resize and crop: an augmentation
        policy (views stores) works on the image before normalisation."""
        chosen = self.pixels()[np.asarray(positions)]
        return np.ascontiguousarray(chosen.transpose(0, 3, 1, 2), dtype=np.float32)

    def after_policy(self, views: np.ndarray) -> np.ndarray:
        return self.preprocess.normalise_chw(views)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self.pixels()
            assert self._digests is not None
            self._fingerprint = (
                FINGERPRINT_PREFIX + hashlib.sha256(b"".join(self._digests)).hexdigest()
            )
        return self._fingerprint

    def adopt(self, preprocess: Preprocess) -> None:
        """Take ``preprocess`` (a store's, or the training set's for its eval split); the
        images are decoded again only if resize or crop change."""
        if preprocess.geometric != self.preprocess.geometric:
            self._pixels = None
        self.preprocess = preprocess

    def match_store(self, recorded: Preprocess | None) -> list[str]:
        """Differences between this set's preprocessing and a store's (which it adopts when
        none was given)."""
        if recorded is None:
            return ["preprocessing: the store records none (it was not made from images)"]
        if not self.explicit:
            self.adopt(recorded)
            return []
        diffs = self.preprocess.differences(recorded)
        if not diffs:
            return []
        return [
            "preprocessing differs from what the teacher saw (here vs store: "
            + ", ".join(diffs)
            + "); give the store's, or leave the ?options off the transfer SPEC to take them"
        ]

    def _decode(self) -> tuple[np.ndarray, list[bytes]]:
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        n = len(self.source)
        loader = DataLoader(
            _Decode(self.source, self.preprocess),
            batch_size=_DECODE_BATCH,
            num_workers=self.workers,
            collate_fn=_items,
        )
        pixels: np.ndarray | None = None
        digests: list[bytes] = [b""] * n
        with tqdm(total=n, unit="images", desc="decoding", disable=not self.progress) as bar:
            for batch in loader:
                for i, image, digest, error in batch:
                    if error is not None:
                        raise SpecError(error)
                    if pixels is None:
                        pixels = np.empty((n, *image.shape), dtype=np.uint8)
                    elif image.shape != pixels.shape[1:]:
                        raise SpecError(
                            f"images differ in size: {self.source.describe(0)} is "
                            f"{pixels.shape[1]}x{pixels.shape[2]}, {self.source.describe(i)} is "
                            f"{image.shape[0]}x{image.shape[1]}; give resize= and crop= in the "
                            f"transfer SPEC to bring them to one size"
                        )
                    pixels[i], digests[i] = image, digest
                bar.update(len(batch))
        assert pixels is not None  # a set is never empty
        return pixels, digests


# --------------------------------------------------------------------------------------------
# SPECs: PATH[?KEY=VALUE,...]

PREPROCESS_KEYS = ("timm", "img_size", "resize", "crop", "mean", "std", "interpolation")
OPTION_KEYS = (*PREPROCESS_KEYS, "convert")


def parse_options(query: str, spec: str) -> dict[str, str]:
    """The ``?key=value,...`` options of an image transfer SPEC."""
    options: dict[str, str] = {}
    for pair in query.split(","):
        key, eq, value = pair.partition("=")
        if not eq or key not in OPTION_KEYS:
            raise SpecError(
                f"{spec!r}: {pair!r} is not one of the image options {', '.join(OPTION_KEYS)} "
                f"(as KEY=VALUE, comma-separated)"
            )
        options[key] = value
    if options.get("convert", "rgb") != "rgb":
        raise SpecError(f"{spec!r}: convert takes 'rgb' only, got {options['convert']!r}")
    return options


def image_set(
    spec: str,
    split: str,
    source: ImageSource,
    labels: np.ndarray | None,
    class_names: tuple[str, ...] | None,
    options: dict[str, str],
) -> ImageTransfer:
    from softlabels.vision.preprocess import parse_preprocess

    return ImageTransfer(
        name=spec,
        split=split,
        source=source,
        labels=labels,
        class_names=class_names,
        preprocess=parse_preprocess(options, spec),
        explicit=any(k in options for k in PREPROCESS_KEYS),
    )


def load_folder(spec: str, root: Path, split: str, options: dict[str, str]) -> ImageTransfer:
    """An image folder: ``root/CLASS/...`` is the train split, unless ``root`` holds
    ``train/`` and ``test/`` image folders."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        root = root / split
        if not root.is_dir():
            raise SpecError(
                f"image folder {root.parent} has no {split!r} split ({root} is missing); train "
                f"without evaluation (--eval-split none), or add it"
            )
    elif split != "train":
        raise SpecError(
            f"image folder {root} has a single split (class folders at its top); it has no "
            f"{split!r} split: lay it out as {root}/train/CLASS and {root}/test/CLASS, or train "
            f"without evaluation (--eval-split none)"
        )
    files, labels, classes = list_folder(root)
    source = FileSource(files, convert="convert" in options)
    return image_set(spec, split, source, labels, classes, options)


def is_image_array(x: np.ndarray) -> bool:
    return x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3
