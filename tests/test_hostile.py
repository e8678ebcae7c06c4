"""The stores in tests/stores/build.py: `softlabels verify` flags each one, and the trainer and
the CLI refuse each one with a clear error, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from softlabels.cli import main as softlabels
from softlabels.errors import SoftLabelsError
from softlabels.verify import verify_store
from tests.stores.build import CASES, build_all
from trainer.cli import main as distill
from trainer.train import TrainConfig, train


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    return out, build_all(out)


def test_the_valid_controls_pass(stores, tmp_path):
    out, paths = stores
    for name in ("valid.zarr", "valid.h5"):
        assert verify_store(str(paths[name]), transfer=str(out / "transfer.npz")).ok
        run = train(
            TrainConfig(
                out=str(tmp_path / name),
                transfer=str(out / "transfer.npz"),
                store=str(paths[name]),
                eval_split=None,
                hidden=(4,),
                epochs=1,
                batch_size=8,
                progress=False,
            )
        )
        assert run.final["epoch"] == 1


@pytest.mark.parametrize("name", sorted(CASES))
def test_verify_flags_it(stores, name):
    out, paths = stores
    report = verify_store(str(paths[name]), transfer=str(out / "transfer.npz"))
    assert not report.ok, report.render()


@pytest.mark.parametrize("name", sorted(CASES))
def test_trainer_refuses_it(stores, tmp_path, name):
    out, paths = stores
    config = TrainConfig(
        out=str(tmp_path / "run"),
        transfer=str(out / "transfer.npz"),
        store=str(paths[name]),
        eval_split=None,
        hidden=(4,),
        epochs=1,
        batch_size=8,
        progress=False,
    )
    with pytest.raises(SoftLabelsError) as info:
        train(config)
    assert len(str(info.value)) > 20
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_errors_are_clean(stores, tmp_path, name):
    out, paths = stores
    runner = CliRunner()
    res = runner.invoke(
        distill,
        [
            "train",
            "--transfer",
            str(out / "transfer.npz"),
            "--store",
            str(paths[name]),
            "--eval-split",
            "none",
            "--hidden",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--quiet",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert res.exit_code == 1 and res.output.startswith("Error: "), res.output
    assert "Traceback" not in res.output
    res = runner.invoke(softlabels, ["inspect", str(paths[name])])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
