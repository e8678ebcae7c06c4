"""The public Python API: generate from objects, open_store, SoftTargetDataset, loss modules,
and the README example run verbatim."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import softlabels
import trainer
from softlabels.teachers import weights_sha256
from tests.conftest import ROOT
from tests.helpers import forward_in_batches, teacher_batches
from tests.test_ensemble import direct_arithmetic


def tiny_transfer(n: int = 70) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(6, 3)


def test_readme_example_runs_verbatim(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it from Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert "arithmetic" in res.stdout and "final loss" in res.stdout
    with softlabels.open_store(tmp_path / "demo.zarr") as store:
        assert store.meta.num_samples == 512 and store.meta.num_members == 2


@pytest.mark.bitwise
def test_generate_from_modules_records_provenance(tmp_path):
    teachers, data = [linear(1), linear(2)], tiny_transfer()
    with softlabels.generate(
        teachers, data, tmp_path / "m.zarr", chunk_rows=32, progress=False
    ) as s:
        assert [(t.name, t.spec) for t in s.meta.teachers] == [("Linear", None)] * 2
        assert [t.sha256 for t in s.meta.teachers] == [weights_sha256(t) for t in teachers]
        assert s.meta.transfer.name == "TensorDataset" and s.meta.num_classes == 3
        rows = s.load()
        # the teachers through the writer's batches (chunks of 32 rows: 0-32, 32-64, 64-70):
        # one batch of all 70 rows may take other kernels, so it need not agree bitwise
        members = forward_in_batches(teachers, data.tensors[0], teacher_batches(70, 32))
        np.testing.assert_array_equal(rows.member_logits, members)
        np.testing.assert_array_equal(rows.labels, data.tensors[1].numpy())
        # the seam: exact arithmetic replay at T = 3 for arbitrary positions, in their order
        pos = np.array([69, 0, 33])
        want = np.log(direct_arithmetic(members[pos], np.full(2, 0.5), 3.0))
        np.testing.assert_allclose(s.soft_targets(pos, 3.0).numpy(), want, rtol=1e-5, atol=1e-6)
        member1 = torch.log_softmax(torch.from_numpy(members[pos, 1]) / 3.0, -1).numpy()
        np.testing.assert_allclose(s.soft_targets(pos, 3.0, member=1).numpy(), member1, atol=1e-6)


def test_dataset_joins_by_sample_index_and_works_with_workers(tmp_path):
    data = tiny_transfer()
    path = tmp_path / "d.h5"
    softlabels.generate([linear(3)], data, path, chunk_rows=16, progress=False).close()
    ds = softlabels.SoftTargetDataset(str(path), data, temperature=2.0)
    state = pickle.loads(pickle.dumps(ds))
    assert state._reader is None and len(state) == 70
    x, y, target = ds[5]
    with torch.no_grad():
        want = torch.log_softmax(linear(3)(data.tensors[0][5:6]) / 2.0, -1)[0]
    assert torch.equal(x, data.tensors[0][5]) and y == int(data.tensors[1][5])
    torch.testing.assert_close(target, want, rtol=1e-6, atol=1e-6)
    seen = {}
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    for xb, yb, tb in loader:
        for xi, yi, ti in zip(xb, yb, tb, strict=True):
            i = int(torch.nonzero((data.tensors[0] == xi).all(1))[0])
            seen[i] = (int(yi), ti)
    assert sorted(seen) == list(range(70))
    for i in (0, 17, 69):
        assert seen[i][0] == int(data.tensors[1][i])
        torch.testing.assert_close(seen[i][1], ds[i][2])


def test_chunk_sampler_visits_each_position_once_grouped_by_chunk(tmp_path):
    data = tiny_transfer()
    path = tmp_path / "c.zarr"
    softlabels.generate([linear(3)], data, path, chunk_rows=10, progress=False).close()
    ds = softlabels.SoftTargetDataset(str(path), data, temperature=1.0)
    sampler = softlabels.ChunkSampler(ds, buffer_chunks=2, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(70))
    chunks = [p // 10 for p in order]  # sample_index is the identity here
    assert all(len(set(chunks[g : g + 20])) <= 2 for g in range(0, 70, 20))
    sampler.set_epoch(1)
    assert list(sampler) != order
    with pytest.raises(ValueError, match="buffer_chunks must be at least 1"):
        softlabels.ChunkSampler(ds, buffer_chunks=0)


def test_train_accepts_an_opened_store(tmp_path, digits_store, digits_test_store):
    with softlabels.open_store(digits_store) as store:
        config = trainer.TrainConfig(
            out=str(tmp_path / "run"), hidden=(8,), epochs=1, progress=False, store=None
        )
        run = trainer.train(config, store=store)
        assert run.final["epoch"] == 1
        assert store._loaded is not None  # loaded and verified once, kept for the next run


def test_loss_modules_match_the_functions():
    s, v, y = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([2])
    lp = torch.log_softmax(v / 4.0, -1)
    from trainer import losses

    assert torch.equal(
        trainer.HintonKD(0.3, temperature=4.0)(s, lp, y),
        losses.hinton_loss(s, y, lp, 4.0, 0.3, 0.7),
    )
    assert torch.equal(
        trainer.SoftCE(temperature=4.0)(s, lp), losses.soft_cross_entropy(s, lp, 4.0)
    )
    lp1 = torch.log_softmax(v, -1)
    torch.testing.assert_close(trainer.LogitMatching()(s, lp1), losses.logit_matching(s, v))
    with pytest.raises(ValueError, match="needs labels"):
        trainer.HintonKD(0.3, temperature=4.0)(s, lp)
    with pytest.raises(ValueError, match="alpha must be in"):
        trainer.HintonKD(1.5, temperature=4.0)


def test_public_names():
    assert {"generate", "open_store", "SoftTargetDataset", "ChunkSampler"} <= set(
        softlabels.__all__
    )
    assert {"HintonKD", "SoftCE", "LogitMatching", "train"} <= set(trainer.__all__)
    for name in softlabels.__all__ + trainer.__all__:
        obj = getattr(softlabels, name, None) or getattr(trainer, name)
        assert obj is not None


def test_seam_is_the_only_replay():
    """Nothing in trainer/ or bench/ replays an ensemble or reads member logits itself."""
    import ast

    forbidden = {"replay_log_probs", "combine_log_probs", "member_logits", "MEMBER_LOGITS"}
    for folder in ("trainer", "bench"):
        for path in (ROOT / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                used = {getattr(node, "attr", None), getattr(node, "id", None)}
                used |= {getattr(a, "name", a) for a in getattr(node, "names", [])}
                assert not used & forbidden, f"{path.name}:{node.lineno} uses {used & forbidden}"
    assert Path(softlabels.__file__).parent.joinpath("store", "reader.py").exists()
