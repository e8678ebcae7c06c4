"""timm and torchvision models (random init, local weights files, nothing downloaded) as
teachers and students: a ResNet, a MobileNet, a ViT and a ConvNeXt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import softlabels
from softlabels.checkpoint import load_checkpoint
from softlabels.errors import CheckpointError, SpecError
from softlabels.teachers import load_teacher, weights_sha256
from softlabels.vision.models import parse_spec
from tests import helpers
from tests import vision_helpers as vh
from trainer.cli import main as distill_cli

pytest.importorskip("timm")

# (library, model, extra arguments): one per family, sized for 32x32 inputs
FAMILIES = [
    ("timm", "resnet10t", {}),
    ("timm", "mobilenetv3_small_050", {}),
    ("timm", "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 16}),
    ("timm", "convnext_atto", {}),
    ("torchvision", "shufflenet_v2_x0_5", {}),
]
IDS = [f"{lib}:{name}" for lib, name, _ in FAMILIES]


def _spec(lib: str, name: str, kwargs: dict, **more: object) -> str:
    args = {"num_classes": 2, **kwargs, **more}
    return ",".join([f"{lib}:{name}", *(f"{k}={v}" for k, v in args.items())])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 uint8 32x32 RGB images in two classes, as a .npz image set."""
    path = tmp_path_factory.mktemp("img") / "images.npz"
    x = vh.draw_images(12, 32)
    np.savez(path, x=x, y=np.arange(12) % 2, class_names=np.array(vh.CLASSES))
    return path, x


@pytest.mark.bitwise
@pytest.mark.parametrize(("lib", "name", "kwargs"), FAMILIES, ids=IDS)
def test_a_vision_teacher_stores_its_eval_forward_batched_as_the_writer_batched_it(
    tmp_path, images, lib, name, kwargs
):
    path, x = images
    arch = {"name": lib, "kwargs": {"model": name, "num_classes": 2, **kwargs}}
    suffix = ".safetensors" if lib == "timm" else ".pt"
    model = vh.saved_model(tmp_path / f"w{suffix}", arch)
    spec = _spec(lib, name, kwargs, weights=tmp_path / f"w{suffix}")
    with softlabels.generate(
        [spec], str(path), tmp_path / "s.zarr", batch_size=5, chunk_rows=8, progress=False
    ) as store:
        (info,) = store.meta.teachers
        assert info.spec == spec and info.name == f"{lib}:{name}"
        assert info.architecture == arch and info.sha256 == weights_sha256(model)
        stored = store.read(0, 12).logits
    # the inputs by an independent formula: pixels / 255, channels first (no preprocessing)
    chw = (x.astype(np.float64) / 255).transpose(0, 3, 1, 2)
    inputs = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))  # as a batch is laid out
    expected = helpers.forward_in_batches([model], inputs, helpers.teacher_batches(12, 8, 5))
    np.testing.assert_array_equal(stored, expected[:, 0])


@pytest.mark.parametrize(("lib", "name", "kwargs"), FAMILIES[:4], ids=IDS[:4])
def test_a_vision_student_trains_and_its_checkpoint_teaches(tmp_path, images, lib, name, kwargs):
    path, _ = images
    store = tmp_path / "s.zarr"
    softlabels.generate(
        ["tests.vision_helpers:image_teacher"], str(path), store, progress=False
    ).close()
    student = _spec(lib, name, kwargs)
    res = CliRunner().invoke(
        distill_cli,
        [
            "train", "--transfer", str(path), "--store", str(store), "--model", student,
            "--epochs", "1", "--batch-size", "6", "--eval-split", "none",
            "--out", str(tmp_path / "run"), "--quiet",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt["arch"] == {"name": lib, "kwargs": {"model": name, "num_classes": 2, **kwargs}}
    teacher = load_teacher(str(tmp_path / "run" / "model.pt"))  # the student teaches in turn
    assert teacher.info.architecture == ckpt["arch"]
    assert teacher.info.sha256 == weights_sha256(teacher.module)


def test_a_timm_student_takes_the_stores_class_count_and_the_inputs_channels(tmp_path):
    from trainer.build import vision_student

    model, arch = vision_student("timm:resnet10t", (1, 8, 8), 7)
    assert arch == {
        "name": "timm",
        "kwargs": {"model": "resnet10t", "num_classes": 7, "in_chans": 1},
    }
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


def test_spec_arguments_are_typed():
    parsed = parse_spec("timm:vit_tiny_patch16_224,num_classes=10,img_size=32,drop_rate=0.1,"
                        "class_token=false,global_pool=avg,weights=w.safetensors")  # fmt: skip
    assert parsed.architecture() == {
        "name": "timm",
        "kwargs": {
            "model": "vit_tiny_patch16_224", "num_classes": 10, "img_size": 32,
            "drop_rate": 0.1, "class_token": False, "global_pool": "avg",
        },
    }  # fmt: skip
    assert parsed.weights == "w.safetensors"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("timm:resnet18,pretrained=true", "would download weights"),
        ("timm:no_such_net", "timm has no model 'no_such_net'"),
        ("torchvision:no_such_net", "torchvision has no classification model"),
        ("timm:resnet10t,num_classes", "is not KEY=VALUE"),
        ("timm:resnet10t,num_classes=2,num_classes=3", "gives 'num_classes' twice"),
        ("timm:resnet10t,no_such_argument=1", "bad arguments"),
    ],
)
def test_bad_vision_specs_are_refused(spec, message):
    with pytest.raises(SpecError, match=message):
        load_teacher(spec)


def test_a_weights_file_that_does_not_fit_names_the_keys(tmp_path):
    arch = {"name": "timm", "kwargs": {"model": "resnet10t", "num_classes": 3}}
    vh.saved_model(tmp_path / "w.safetensors", arch)
    with pytest.raises(CheckpointError, match=r"(?s)do not fit.*fc\.weight"):
        load_teacher(f"timm:resnet10t,num_classes=2,weights={tmp_path / 'w.safetensors'}")
    torch.save({"fc.weight": torch.zeros(2, 512)}, tmp_path / "part.pt")
    with pytest.raises(CheckpointError, match=r"missing \['conv1.weight', 'bn1.weight'"):
        load_teacher(f"torchvision:resnet18,num_classes=2,weights={tmp_path / 'part.pt'}")


def test_a_weights_file_that_would_unpickle_code_is_refused(tmp_path):
    torch.save(
        {"fc.weight": torch.zeros(1), "evil": helpers.TinyDataset("train")}, tmp_path / "w.pt"
    )
    with pytest.raises(CheckpointError, match="could run code on load"):
        load_teacher(f"timm:resnet10t,weights={tmp_path / 'w.pt'}")
