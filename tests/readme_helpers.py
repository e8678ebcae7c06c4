"""``module:function`` SPECs for tests/test_readme_claims.py and tests/test_readme.py, written
the way the README tells a user to write them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ShiftPolicy:
    """The README's minimal augmentation policy: ``sample`` and ``apply`` only (a brightness
    shift drawn uniformly from [-1, 1], added to every pixel)."""

    def sample(self, rng: np.random.Generator, input_shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=1).astype(np.float32)

    def apply(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        return (x + params[0]).astype(np.float32)


def shift_policy() -> ShiftPolicy:
    return ShiftPolicy()


def lazy_teacher() -> nn.Module:
    """A teacher whose first layer is an nn.LazyLinear: its input width is set by the first
    batch."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))


def lazy_teacher_of_three() -> nn.Module:
    """A lazy teacher with 3 outputs, for a 10-class transfer set: it must be refused."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))


def lazy_conv_teacher() -> nn.Module:
    """A lazy image teacher: its LazyConv2d fails on the first batch of flat (N, 64) rows."""
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(10))
