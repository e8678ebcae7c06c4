"""Teachers and datasets that tests pass as ``module:function`` SPECs (tests.helpers:NAME)."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def _linear(seed: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes)).eval()


def teacher_a() -> nn.Module:
    return _linear(1)


def teacher_b() -> nn.Module:
    return _linear(2)


def teacher_c() -> nn.Module:
    return _linear(3)


def teacher_11_classes() -> nn.Module:
    return _linear(4, classes=11)


class _NaNAt(nn.Module):
    """Linear teacher whose output is NaN for inputs whose first pixel sum marks them."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        out[x.flatten(1).sum(1) > 25] = float("nan")
        return out


def nan_teacher() -> nn.Module:
    return _NaNAt()


class _Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10].sum(1)  # (B,), not (B, C)


def bad_shape_teacher() -> nn.Module:
    return _Flat()


class _Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return self.inner(x)


def slow_teacher() -> nn.Module:
    return _Slow()


class TinyDataset(torch.utils.data.Dataset):
    classes = [str(i) for i in range(10)]

    def __init__(self, split: str) -> None:
        rng = np.random.default_rng(0 if split == "train" else 1)
        self.x = rng.random((40, 1, 8, 8), dtype=np.float32)
        self.y = rng.integers(0, 10, 40)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.y[i])


def tiny_dataset(split: str = "train") -> TinyDataset:
    return TinyDataset(split)


class _SlowStudent(nn.Module):
    """A small MLP that sleeps 20 ms per training batch, so that kills land mid-epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(0.02)
        return self.net(x)


def slow_student() -> nn.Module:
    return _SlowStudent()
