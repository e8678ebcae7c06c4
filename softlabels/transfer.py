"""Transfer sets: the inputs a teacher labels in stage one and a student trains on in stage two.

A transfer SPEC (``load_transfer``) is one of:

    digits                               scikit-learn's load_digits, shipped with the package
    mnist:DIR | fashion-mnist:DIR | idx:DIR
                                         an IDX folder ({train,t10k}-{images,labels}-*-ubyte[.gz])
    PATH.npz                             arrays x (and optional y), or x_train/y_train/x_test/y_test
    PATH.h5 | PATH.hdf5 | PATH.zarr      arrays x (and optional y), or groups train/ and test/
    DIR                                  an image folder DIR/CLASS/xxx.png|jpg (or DIR/train/CLASS
                                         and DIR/test/CLASS); see softlabels.vision.images
    any of these two forms?KEY=VALUE,... an image set's preprocessing (resize, crop, mean, std,
                                         interpolation, timm=NAME, img_size) and convert=rgb
    module:function                      a callable returning a torch Dataset; called with
                                         split=... if it takes that argument

Every set yields float32 inputs in a fixed order and, where known, int64 labels. Its
fingerprint is the SHA-256 of the inputs' float32 little-endian bytes in that order; an image
set (a folder, or uint8 (N, H, W, 3) arrays x) fingerprints its decoded pixels instead.
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from softlabels.errors import SpecError
from softlabels.transfer_set import TransferSet as TransferSet
from softlabels.transfer_set import check_finite as check_finite

SPLITS = ("train", "test")
DIGITS_TEST_EVERY = 5  # digits test split: every 5th sample (positions 4, 9, 14, ...)
# fmt: off
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# fmt: on
_IDX_PREFIXES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": FASHION_CLASSES,
    "idx": None,
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def as_transfer(transfer: Any, split: str = "train") -> TransferSet:
    """A TransferSet from a TransferSet (returned as is), a transfer SPEC string, or a map-style
    torch Dataset whose items are ``(x, y)`` or ``x``."""
    if isinstance(transfer, TransferSet):
        return transfer
    if isinstance(transfer, str | os.PathLike):
        return load_transfer(str(transfer), split)
    if hasattr(transfer, "__len__") and hasattr(transfer, "__getitem__"):
        return from_dataset(transfer, name=type(transfer).__name__, split=split)
    raise SpecError(
        f"a transfer set must be a TransferSet, a SPEC string or a map-style Dataset; got "
        f"{type(transfer).__name__}"
    )


def from_dataset(dataset: Any, *, name: str, split: str) -> TransferSet:
    """A TransferSet over a map-style Dataset, read item by item; labels from ``(x, y)`` items."""
    if len(dataset) == 0:
        raise SpecError(f"transfer set {name!r} (split {split!r}) is empty")
    first = dataset[0]
    labels = None
    if isinstance(first, tuple | list) and len(first) >= 2:
        labels = np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)
    names = getattr(dataset, "classes", None)
    class_names = tuple(str(c) for c in names) if names is not None else None
    return TransferSet(
        name=name, split=split, inputs=None, labels=labels, class_names=class_names, dataset=dataset
    )


def load_transfer(spec: str, split: str = "train") -> TransferSet:
    """Resolve a transfer SPEC (see the module docstring) to a TransferSet."""
    if split not in SPLITS:
        raise SpecError(f"split must be one of {SPLITS}, got {split!r}")
    prefix, _, rest = spec.partition(":")
    if spec == "digits":
        return _digits(split)
    if prefix in _IDX_PREFIXES and rest:
        return _idx(spec, Path(rest), split, _IDX_PREFIXES[prefix])
    path, _, query = spec.partition("?")
    options = None
    if query:
        from softlabels.vision.images import parse_options

        options = parse_options(query, spec)
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return _npz(spec, path, split, options)
    if suffix in (".h5", ".hdf5", ".zarr"):
        return _array_pair(spec, path, split, options)
    if os.path.isdir(path):
        from softlabels.vision.images import load_folder

        return load_folder(spec, Path(path), split, options or {})
    if options is not None:
        raise SpecError(
            f"{spec!r}: ?options apply to image sets (an image folder, or a .npz/.h5/.zarr of "
            f"uint8 (N, H, W, 3) images), and {path!r} is neither"
        )
    if _MODULE_SPEC.match(spec):
        return _module_dataset(spec, split)
    raise SpecError(
        f"cannot understand transfer SPEC {spec!r}: use 'digits', 'fashion-mnist:DIR', 'mnist:DIR', "
        f"'idx:DIR', a .npz/.h5/.zarr path, an image folder, or 'module:function'"
    )


# --------------------------------------------------------------------------------------------
# Sources.


def _digits(split: str) -> TransferSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8) in [0, 1]
    y = bunch.target.astype(np.int64)
    is_test = np.arange(len(x)) % DIGITS_TEST_EVERY == DIGITS_TEST_EVERY - 1
    keep = is_test if split == "test" else ~is_test
    names = tuple(str(i) for i in range(10))
    return TransferSet(
        name="digits", split=split, inputs=x[keep], labels=y[keep], class_names=names
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000, type code, ndim, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise SpecError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise SpecError(f"{path} has unknown IDX type code 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise SpecError(f"{path} holds {len(body)} data bytes, but its header promises {expected}")
    return np.frombuffer(body, dtype).reshape(dims)


def _idx(spec: str, folder: Path, split: str, class_names: tuple[str, ...] | None) -> TransferSet:
    images_name, labels_name = _IDX_FILES[split]
    images, labels = _find(folder, images_name), _find(folder, labels_name)
    x = read_idx(images)
    x = (
        (x.astype(np.float32) / 255.0)[:, None]
        if x.dtype == np.uint8
        else x.astype(np.float32)[:, None]
    )
    y = read_idx(labels).astype(np.int64) if labels else None
    if class_names is None and y is not None:
        class_names = tuple(str(i) for i in range(int(y.max()) + 1))
    return TransferSet(name=spec, split=split, inputs=x, labels=y, class_names=class_names)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise SpecError(
        f"no {stem}[.gz] in {folder}; for Fashion-MNIST on Debian: apt-get install "
        f"dataset-fashion-mnist (a folder without the t10k files has no test split: train "
        f"without evaluation with --eval-split none)"
    )


def _npz(spec: str, path: str, split: str, options: dict[str, str] | None) -> TransferSet:
    if not os.path.isfile(path):
        raise SpecError(f"transfer file {path!r} does not exist")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    x, y = _pick_split(spec, split, arrays)
    names = tuple(str(c) for c in arrays["class_names"]) if "class_names" in arrays else None
    return _arrays(spec, path, split, x, y, names, options)


def _arrays(
    spec: str,
    path: str,
    split: str,
    x: np.ndarray,
    y: np.ndarray | None,
    names: tuple[str, ...] | None,
    options: dict[str, str] | None,
) -> TransferSet:
    """A transfer set of arrays: an image set for uint8 (N, H, W, 3), else float32 inputs."""
    from softlabels.vision.images import ArraySource, image_set, is_image_array

    if is_image_array(x):
        return image_set(spec, split, ArraySource(x, path), y, names, options or {})
    if options is not None:
        raise SpecError(
            f"{spec!r}: ?options apply to image sets, and its inputs are {x.dtype} {x.shape}, "
            f"not uint8 (N, H, W, 3) images"
        )
    return TransferSet(
        name=spec, split=split, inputs=x.astype(np.float32), labels=y, class_names=names
    )


def _array_pair(spec: str, path: str, split: str, options: dict[str, str] | None) -> TransferSet:
    if not os.path.exists(path):
        raise SpecError(f"transfer file {path!r} does not exist")
    if path.lower().endswith(".zarr"):
        import zarr

        root = zarr.open_group(path, mode="r")
        arrays = {k: np.asarray(v) for k, v in root.arrays()}
        for split_name in SPLITS:
            if split_name in set(root.group_keys()):
                for k, v in root[split_name].arrays():
                    arrays[f"{k}_{split_name}"] = np.asarray(v)
    else:
        import h5py

        arrays = {}
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
        arrays = {
            (f"{k.split('/')[1]}_{k.split('/')[0]}" if "/" in k else k): v
            for k, v in arrays.items()
        }
    x, y = _pick_split(spec, split, arrays)
    return _arrays(spec, path, split, x, y, None, options)


def _pick_split(
    spec: str, split: str, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    if f"x_{split}" in arrays:
        x, y = arrays[f"x_{split}"], arrays.get(f"y_{split}")
    elif "x" in arrays and split == "train":
        x, y = arrays["x"], arrays.get("y")
    elif "x" in arrays:
        raise SpecError(
            f"{spec!r} has a single split (array 'x'); it has no {split!r} split. Give the file "
            f"x_{split}/y_{split} arrays, or train without evaluation (--eval-split none)"
        )
    else:
        raise SpecError(f"{spec!r} has no array 'x' or 'x_{split}' (found: {sorted(arrays)})")
    if x.dtype.kind not in "fiu":
        raise SpecError(f"{spec!r}: inputs must be numeric, got dtype {x.dtype}")
    if y is not None and (y.dtype.kind not in "iu" or y.ndim != 1):
        raise SpecError(f"{spec!r}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    return x, None if y is None else y.astype(np.int64)


def _module_dataset(spec: str, split: str) -> TransferSet:
    fn = import_callable(spec)
    takes_split = "split" in inspect.signature(fn).parameters
    if not takes_split and split != "train":
        raise SpecError(
            f"{spec!r} takes no `split` argument, so it has only a training split and cannot "
            f"serve split {split!r}; add a split parameter to it, or train without evaluation "
            f"(--eval-split none)"
        )
    dataset = fn(split=split) if takes_split else fn()
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise SpecError(
            f"{spec!r} returned {type(dataset).__name__}, not a map-style torch Dataset"
        )
    return from_dataset(dataset, name=spec, split=split)


def import_callable(spec: str) -> Any:
    """Import ``module:function``. Only ever called on a SPEC the user typed, never on metadata."""
    if not _MODULE_SPEC.match(spec):
        raise SpecError(f"{spec!r} is not of the form module:function")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import module {module_name!r} from {spec!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SpecError(f"{module_name!r} has no callable {attr!r}")
    return fn
