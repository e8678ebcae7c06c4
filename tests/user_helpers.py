"""Teachers, students and datasets written the way a user would, for tests/test_user_data.py.

They are passed as ``module:function`` SPECs (tests.user_helpers:NAME) and work on scikit-learn's
wine set: 13 float features, 3 classes. Weights are seeded, so every call returns the same model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

WINE_FEATURES = 13
WINE_CLASSES = 3


def wine_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Wine, standardised: (178, 13) float32 inputs and (178,) int64 labels 0..2."""
    from sklearn.datasets import load_wine

    bunch = load_wine()
    x = bunch.data.astype(np.float64)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return x, bunch.target.astype(np.int64)


def _linear(seed: int, n_in: int = WINE_FEATURES, n_out: int = WINE_CLASSES) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out).eval()


def wine_teacher() -> nn.Module:
    """A 13 -> 3 linear teacher."""
    return _linear(1)


def wine_teacher_b() -> nn.Module:
    """Another 13 -> 3 linear teacher (different weights)."""
    return _linear(2)


def wine_teacher_c() -> nn.Module:
    """A third 13 -> 3 linear teacher: same shapes as the others, other weights."""
    return _linear(6)


def wine_teacher_f64() -> nn.Module:
    """A 13 -> 3 teacher left in float64, as a user who built it from numpy might."""
    return _linear(1).double()


class _TinyCNN(nn.Module):
    """An image teacher: Conv2d over (B, 1, H, W) inputs. Fails on flat (B, 13) tabular rows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, WINE_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(z)


def cnn_teacher() -> nn.Module:
    return _TinyCNN().eval()


def student_5_outputs() -> nn.Module:
    """A student with the right input width but 5 outputs (wine has 3 classes)."""
    return _linear(4, n_out=5)


def student_7_inputs() -> nn.Module:
    """A student that takes 7 features (wine has 13)."""
    return _linear(5, n_in=7)


class WineDataset(torch.utils.data.Dataset):
    """Wine's first 60 rows as (x, y) items."""

    def __init__(self) -> None:
        x, y = wine_arrays()
        self.x, self.y = x[:60], y[:60]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.y[i])


def wine_dataset() -> WineDataset:
    """A module:function transfer set that takes no ``split``: it has a training split only."""
    return WineDataset()
