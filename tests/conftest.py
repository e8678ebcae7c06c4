from __future__ import annotations

import os
from pathlib import Path

import pytest

from softlabels.generate import generate

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYTHONPATH", str(ROOT))
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: one core per worker process
    import torch

    torch.set_num_threads(1)

ENSEMBLE = ("tests.helpers:teacher_a", "tests.helpers:teacher_b", "tests.helpers:teacher_c")


def pytest_configure(config: pytest.Config) -> None:
    """make test's second run sets ATEN_CPU_CAPABILITY=default to rerun the `bitwise` tests on
    ATen's plain kernels: refuse to run if this torch ignored it (the rerun would prove nothing)."""
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "")
    if asked.lower() == "default":
        import torch

        running = torch.backends.cpu.get_cpu_capability()
        if running != "DEFAULT":
            raise pytest.UsageError(
                f"ATEN_CPU_CAPABILITY={asked} asks for ATen's default kernels, but torch runs "
                f"its {running} kernels"
            )


def make_store(
    path: Path, *, teachers=ENSEMBLE, combine=None, split="train", chunk_rows=256, **kw
) -> Path:
    transfer = kw.pop("transfer", "digits")
    store = generate(
        list(teachers),
        transfer,
        str(path),
        split=split,
        combine=combine,
        chunk_rows=chunk_rows,
        progress=False,
        **kw,
    )
    store.close()
    return path


@pytest.fixture(params=["zarr", "h5"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory) -> Path:
    """An arithmetic three-teacher Zarr store over the digits training split (shared, read-only)."""
    return make_store(tmp_path_factory.mktemp("stores") / "digits.zarr")


@pytest.fixture(scope="session")
def digits_test_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("stores") / "digits-test.zarr", split="test")
