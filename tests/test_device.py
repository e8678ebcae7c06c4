"""Devices, precision and stage one's input pipeline, as far as a CPU-only machine can test them:
the options and their errors, worker counts (bitwise equal), bf16 on the CPU, provenance."""

from __future__ import annotations

import pytest
import torch
import zarr
from click.testing import CliRunner

from softlabels.cli import main as softlabels_cli
from softlabels.device import DeviceError, autocast, resolve_device
from softlabels.store import open_store
from softlabels.verify import rerun_tolerance, verify_store
from tests.conftest import make_store
from trainer.cli import main as distill_cli
from trainer.train import TrainConfig, train

ONE = ("tests.helpers:teacher_a",)


def test_resolve_device_never_falls_back_silently():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU visible to PyTorch"):
            resolve_device("cuda")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="unknown device 'tpu9'.*auto | cpu | cuda"):
        resolve_device("tpu9")


def test_cli_refuses_an_absent_device_with_one_paragraph(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    runner = CliRunner()
    out = str(tmp_path / "s.zarr")
    res = runner.invoke(
        softlabels_cli,
        ["generate", "--teacher", ONE[0], "--transfer", "digits", "--out", out, "--device", "cuda"],
    )
    assert res.exit_code == 1 and "no CUDA GPU" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "s.zarr").exists()
    res = runner.invoke(
        distill_cli,
        ["train", "--out", str(tmp_path / "r"), "--device", "cuda", "--epochs", "1", "--quiet"],
    )
    assert res.exit_code == 1 and "no CUDA GPU" in res.output
    res = runner.invoke(softlabels_cli, ["generate", "--help"])
    assert "--device" in res.output and "--precision" in res.output and "--workers" in res.output


@pytest.mark.bitwise
@pytest.mark.parametrize("workers", [1, 2])
def test_worker_counts_are_bitwise_equal(tmp_path, workers):
    """Inputs read by DataLoader workers give exactly the logits of the main process."""
    kw = {"transfer": "tests.helpers:tiny_dataset", "chunk_rows": 16, "batch_size": 5}
    base = make_store(tmp_path / "w0.zarr", workers=0, **kw)
    other = make_store(tmp_path / f"w{workers}.zarr", workers=workers, **kw)
    with open_store(base) as a, open_store(other) as b:
        assert a.meta.checksums == b.meta.checksums


@pytest.mark.bitwise
def test_bf16_on_the_cpu_records_its_runtime_and_verifies(tmp_path):
    # Every row in one teacher batch, so that a re-run of every row (one batch too) runs the
    # writer's very batch: only then is it bitwise the same (tests/helpers.py).
    n = 1438
    path = make_store(
        tmp_path / "b.zarr",
        teachers=ONE,
        precision="bf16",
        device="cpu",
        chunk_rows=n,
        batch_size=n,
    )
    fp32 = make_store(tmp_path / "f.zarr", teachers=ONE, device="cpu")
    with open_store(path) as s, open_store(fp32) as f:
        assert s.meta.runtime == {"device": "cpu", "precision": "bf16", "torch": torch.__version__}
        assert f.meta.runtime["precision"] == "fp32"
        assert zarr.open_group(str(path), mode="r").attrs["runtime"]["precision"] == "bf16"
        a, b = s.read(0, 100).logits, f.read(0, 100).logits
        assert (a != b).any()  # bf16 really ran
        assert abs(a - b).max() / max(1.0, abs(b).max()) < rerun_tolerance("float32", "bf16")
    report = verify_store(str(path), transfer="digits", teachers=ONE, sample=16, device="cpu")
    assert report.ok, report.render()
    assert "at bf16 on cpu" in report.render()
    # the re-run used the recorded precision on the same device and batch: bitwise the same
    strict = verify_store(str(path), transfer="digits", teachers=ONE, sample=n, atol=0.0)
    assert strict.ok and "max rel. error 0 <= 0" in strict.render()


def test_resume_refuses_another_precision(tmp_path):
    from softlabels.errors import MismatchError

    path = make_store(tmp_path / "r.zarr", teachers=ONE, precision="bf16", device="cpu")
    zarr.open_group(str(path), mode="r+").attrs["complete"] = False
    with pytest.raises(MismatchError, match="runtime"):
        make_store(path, teachers=ONE, precision="fp32", device="cpu", resume=True)


def test_student_trains_under_bf16_autocast(tmp_path, digits_store):
    config = TrainConfig(
        out=str(tmp_path / "s"),
        store=str(digits_store),
        hidden=(16,),
        epochs=1,
        precision="bf16",
        device="cpu",
        progress=False,
    )
    run = train(config)
    assert run.final["epoch"] == 1 and run.final["train_loss"] > 0
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16
