"""Teachers: any state_dict hashes (BatchNorm, lazy modules, bf16/fp16, views, tied weights), and
a BatchNorm teacher goes through generate, verify --teacher and distill train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

import softlabels
from softlabels import schema
from softlabels.cli import main as softlabels_cli
from softlabels.errors import TeacherError
from softlabels.schema.provenance import LAZY_SHA256
from softlabels.store import StoreWriter
from softlabels.teachers import as_teacher, initialise_lazy, weights_sha256
from tests import helpers
from trainer.cli import main as distill_cli


@pytest.mark.bitwise
def test_batchnorm_reproduction_through_the_api(tmp_path):
    """The issue's reproduction: it raised "self.dim() cannot be 0 to view Long as Byte"."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10)
    )
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    with softlabels.generate(
        [net], TensorDataset(x, y), tmp_path / "s.zarr", progress=False
    ) as store:
        (info,) = store.meta.teachers
        assert info.name == "Sequential" and info.sha256 == weights_sha256(net)
        assert not net.training  # the teacher ran, and stays, in eval mode
        with torch.no_grad():
            expected = net(x)  # one batch of 64, as the writer batched it (batch_size 256)
        np.testing.assert_array_equal(store.read(0, 64).logits, expected.numpy())
    assert net[1].num_batches_tracked.item() == 0  # eval mode: the statistics did not move


def test_batchnorm_teacher_and_student_through_the_cli(tmp_path):
    out = str(tmp_path / "bn.zarr")
    spec = "tests.helpers:batchnorm_teacher"
    res = CliRunner().invoke(
        softlabels_cli,
        ["generate", "--teacher", spec, "--transfer", "digits", "--out", out, "--quiet"],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        softlabels_cli, ["verify", out, "--transfer", "digits", "--teacher", spec]
    )
    assert res.exit_code == 0 and res.output.rstrip().endswith("OK"), res.output
    assert "re-ran 1 teacher(s) at fp32" in res.output
    # a teacher in train mode (batch statistics) would not reproduce the store
    with softlabels.open_store(out) as store:
        first = store.read(0, 8).logits
    net = helpers.batchnorm_teacher()
    x = torch.from_numpy(softlabels.transfer.as_transfer("digits", "train").take(0, 8))
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(x).numpy(), first, rtol=1e-5, atol=1e-5)
        assert not np.allclose(net.train()(x).numpy(), first, atol=1e-3)
    res = CliRunner().invoke(
        distill_cli,
        [
            "train", "--transfer", "digits", "--store", out, "--model",
            "tests.helpers:batchnorm_student", "--epochs", "2", "--temperature", "4",
            "--out", str(tmp_path / "run"), "--quiet",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output


def test_a_lazy_teacher_is_hashed_after_its_first_batch():
    net = helpers.batchnorm_teacher()
    teacher = as_teacher(net)
    with pytest.raises(TeacherError, match="uninitialised lazy parameter"):
        weights_sha256(net)
    ready = initialise_lazy(teacher, torch.zeros(2, 1, 8, 8))
    assert ready.info.sha256 == weights_sha256(net) and len(ready.info.sha256) == 64
    assert initialise_lazy(ready, torch.zeros(2, 1, 8, 8)) is ready  # nothing left to do
    assert net[4].weight.shape == (10, 144)


def test_views_and_ties_hash_as_their_values():
    """A non-contiguous parameter hashes as its values; a tied weight is hashed under each key."""
    torch.manual_seed(0)
    plain = nn.Linear(4, 3)
    strided = nn.Linear(4, 3)
    with torch.no_grad():
        strided.weight = nn.Parameter(plain.weight.detach().t().contiguous().t())
        strided.bias.copy_(plain.bias)
    assert not strided.weight.is_contiguous()
    assert weights_sha256(strided) == weights_sha256(plain)
    tied = nn.Sequential(plain, nn.ReLU(), nn.Linear(3, 3, bias=False))
    untied = nn.Sequential(plain, nn.ReLU(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        untied[2].weight.copy_(torch.eye(3))
        tied[2].weight = nn.Parameter(torch.eye(3))
    assert weights_sha256(tied) == weights_sha256(untied)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_hash_and_differ(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    assert weights_sha256(net.to(dtype)) != weights_sha256(net.float())


def test_a_store_never_records_an_unhashed_lazy_teacher(tmp_path):
    """The writer refuses a teacher whose hash is still the lazy placeholder (a path that
    skipped initialise_lazy), and leaves nothing behind."""
    teacher = as_teacher(helpers.batchnorm_teacher())
    assert teacher.info.sha256 == LAZY_SHA256
    meta = schema.StoreMeta(
        num_samples=4, num_classes=10, class_names=tuple(map(str, range(10))), combine="single",
        weights=(1.0,), teachers=(teacher.info,),
        transfer=schema.TransferInfo("x", "train", 4, "sha256:" + "0" * 64), dtype="float32",
        chunk_rows=4, created_at="now", producer="test",
    )  # fmt: skip
    with pytest.raises(TeacherError, match="lazy parameters.*initialise_lazy"):
        StoreWriter.create(tmp_path / "s.zarr", meta)
    assert list(tmp_path.iterdir()) == []
