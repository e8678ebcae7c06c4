"""Tiny image sets drawn locally with PIL and numpy, and random-init vision models saved to
local weights files: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from softlabels.models import build_model

CLASSES = ("cat", "dog")


def draw_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3) noise images."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def image_folder(
    root: Path, n: int = 20, size: int = 16, *, seed: int = 0, suffix: str = ".png"
) -> tuple[Path, np.ndarray, np.ndarray]:
    """root/cat/00.png ... root/dog/19.png: image i goes to class i % 2, named by i. Returns
    root, the pixels and the labels in the folder's order (classes sorted, then names)."""
    from PIL import Image

    pixels = draw_images(n, size, seed)
    order = sorted(range(n), key=lambda i: (i % 2, f"{i:02d}"))
    for i in range(n):
        folder = root / CLASSES[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(folder / f"{i:02d}{suffix}")
    return root, pixels[order], np.array([i % 2 for i in order], dtype=np.int64)


def saved_model(path: Path, arch: dict, seed: int = 0) -> torch.nn.Module:
    """A random-init model of ``arch`` with its weights written to ``path`` (safetensors, or a
    plain state_dict for .pt); returned in eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return model


def image_teacher() -> torch.nn.Module:
    """A small seeded conv net over (B, 3, H, W) images, 2 classes, with BatchNorm."""
    torch.manual_seed(1)
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    )  # fmt: skip
