"""Teachers and datasets that tests pass as ``module:function`` SPECs (tests.helpers:NAME),
``wait_for_signal`` for tests that synchronise with a child through a fault point's signal file,
and what bitwise comparisons need (below).

Bitwise promises hold for the same batches, on the same machine, with the same thread settings,
and nothing more: MKL, oneDNN and ATen pick other kernels (another summation order) for other
batch shapes, CPU capabilities and thread counts. So a test compares floats bitwise only where
both sides ran the same batches (``teacher_batches``, ``forward_in_batches``) with the same
threads (``torch_threads``, ``child_env``); anywhere else it allows ``FLOAT32``'s tolerance.
Tests of a bitwise promise are marked ``bitwise``; ``make test`` runs them a second time under
ATEN_CPU_CAPABILITY=default, so a kernel-dependent assumption fails there."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from softlabels import faults


def wait_for_signal(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Block until the child ``proc`` creates ``path`` (``SOFTLABELS_FAULT=POINT:N:signal=PATH``);
    fail at once if it exits first, or after ``timeout`` seconds."""

    def exited() -> str | None:
        return None if proc.poll() is None else f"the child exited with {proc.returncode}"

    faults.wait_for(path, timeout, what="test", abort=exited)


# float32 logits computed through other batches (or threads) differ in summation order only:
# a few float32 ulps, far below any real difference (another row, teacher or temperature).
FLOAT32 = {"rtol": 1e-5, "atol": 1e-6}


def teacher_batches(n: int, chunk_rows: int, batch_size: int = 256) -> list[tuple[int, int]]:
    """[b0, b1) of the batches a writer runs its teachers on over ``n`` rows: ``batch_size``
    rows at a time, never crossing a chunk of ``chunk_rows`` (softlabels.generate's contract,
    written out here rather than taken from the code under test)."""
    return [
        (b0, min(b0 + batch_size, start + chunk_rows, n))
        for start in range(0, n, chunk_rows)
        for b0 in range(start, min(start + chunk_rows, n), batch_size)
    ]


def forward_in_batches(
    modules: Sequence[nn.Module], x: torch.Tensor, bounds: Sequence[tuple[int, int]]
) -> np.ndarray:
    """(N, M, C) float32 logits of ``modules`` on ``x``, run batch by batch through ``bounds``
    (``teacher_batches``): bitwise what a writer that ran those batches stored."""
    with torch.no_grad():
        return torch.cat(
            [torch.stack([m(x[b0:b1]) for m in modules], dim=1) for b0, b1 in bounds]
        ).numpy()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` torch (intra-op) threads, as a child started with
    OMP_NUM_THREADS=n computes (torchrun's ranks here), then restore the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child process that must compute as this one does (a killed run that this
    process resumes or compares with): this process's torch thread count (conftest.py sets one
    per xdist worker; a child would otherwise take one per core)."""
    threads = str(torch.get_num_threads())
    return {**env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


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
    """Sleeps 50 ms a batch. Only for the fault campaign's random-moment kills (make reliability),
    which need a run long enough to land mid-run; no test may use it (tests kill at fault points)."""

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


class _Student(nn.Module):
    """A small MLP with dropout, so that a resumed run must restore the RNG state."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def student() -> nn.Module:
    return _Student()


class _SlowStudent(_Student):
    """``student`` sleeping 20 ms per training batch, so that the fault campaign's random-moment
    kills (make reliability) land mid-epoch. No test may use it (tests kill at fault points)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(0.02)
        return super().forward(x)


def slow_student() -> nn.Module:
    return _SlowStudent()


def unsplit_dataset() -> TinyDataset:
    """A module:function transfer set that takes no split: it has a training split only."""
    return TinyDataset("train")


def wide_teacher() -> nn.Module:
    """A 300-class teacher on digits inputs with spread-out logits (sparse stores need C > K)."""
    torch.manual_seed(7)
    layer = nn.Linear(64, 300)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    return nn.Sequential(nn.Flatten(), layer).eval()


def wide_teacher_b() -> nn.Module:
    torch.manual_seed(8)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300)).eval()


class _Unnamed(torch.utils.data.Dataset):
    """The digits split without class names, so that it pairs with the 300-class teachers."""

    def __init__(self, split: str) -> None:
        from softlabels.transfer import load_transfer

        data = load_transfer("digits", split)
        self.x, self.y = data.take(0, len(data)), data.label_array()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.y[i])


def wide_digits(split: str = "train") -> _Unnamed:
    return _Unnamed(split)


def _batchnorm_net(seed: int) -> nn.Module:
    """The issue's reproduction: Conv2d, BatchNorm2d (a 0-dim int64 buffer) and a LazyLinear
    that only the first batch initialises. Running statistics are set away from (0, 1), so a
    train-mode forward (batch statistics) differs from the eval-mode one."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].num_batches_tracked.fill_(7)
    return net


def batchnorm_teacher() -> nn.Module:
    return _batchnorm_net(11)


def batchnorm_student() -> nn.Module:
    return _batchnorm_net(12)


def reseal(path) -> None:
    """After a test edits a store's attributes or checksums on purpose, recompute its
    ``attributes_sha256`` as a producer would (stores written before the digest stay without)."""
    import json as _json

    import h5py
    import zarr

    from softlabels.schema.digest import ATTR_ATTRIBUTES_SHA256, attributes_digest

    if isinstance(path, zarr.Group):  # an opened group, as the tests that edit one have
        group = path
    elif Path(path).suffix == ".zarr":
        group = zarr.open_group(str(path), mode="r+")
    else:
        group = None
    if group is not None:
        attrs = dict(group.attrs)
        if ATTR_ATTRIBUTES_SHA256 in attrs:
            group.attrs[ATTR_ATTRIBUTES_SHA256] = attributes_digest(attrs)
        return
    with h5py.File(Path(path), "r+") as f:
        attrs = {k: _json.loads(v) for k, v in f.attrs.items()}
        if ATTR_ATTRIBUTES_SHA256 in attrs:
            f.attrs[ATTR_ATTRIBUTES_SHA256] = _json.dumps(attributes_digest(attrs))
