"""rrc-flip views of uint8 images (64x64 and 224x224): the policy works on the pixels before
normalisation, and stage two rebuilds each stored view from the decoded image bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import softlabels
from softlabels.cli import main as softlabels_cli
from softlabels.transfer import load_transfer
from softlabels.views.augment import RandomResizedCropFlip, view_rng
from softlabels.views.dataset import StoredViews
from softlabels.views.transfer import ViewTransfer
from tests import vision_helpers as vh

TEACHER = "tests.vision_helpers:image_teacher"
POLICY = RandomResizedCropFlip(scale=(0.3, 1.0))


@pytest.mark.bitwise
@pytest.mark.parametrize("size", [64, 224])
def test_stored_views_of_images_are_rebuilt_bit_for_bit(tmp_path, size):
    x = vh.draw_images(3, size)
    np.savez(tmp_path / "i.npz", x=x, y=np.array([0, 1, 0]), class_names=np.array(vh.CLASSES))
    spec = f"{tmp_path / 'i.npz'}?mean=0.5/0.4/0.3,std=0.2/0.25/0.3"
    store = tmp_path / "v.zarr"
    softlabels.generate(
        [TEACHER], spec, store, augment=POLICY, views=2, view_seed=7, progress=False
    ).close()
    # the views by hand: the policy on float32 pixel values (3, H, W), then (v / 255 - m) / s
    mean = np.array([0.5, 0.4, 0.3], np.float32)[:, None, None]
    std = np.array([0.2, 0.25, 0.3], np.float32)[:, None, None]
    pixels = x.transpose(0, 3, 1, 2).astype(np.float32)
    expected = []
    for r in range(6):
        params = POLICY.sample(view_rng(7, r // 2, r % 2), (3, size, size))
        view = POLICY.apply(pixels[r // 2], params)
        expected.append((view / np.float32(255) - mean) / std)
    with softlabels.open_store(store) as reader:
        assert reader.meta.transfer.preprocess["mean"] == [0.5, 0.4, 0.3]
        views = StoredViews(reader, str(tmp_path / "i.npz"))  # no options: the store's
        rebuilt = views.inputs(np.arange(6))
    np.testing.assert_array_equal(rebuilt, np.stack(expected))
    data = load_transfer(spec)
    made = ViewTransfer(data, POLICY, views=2, seed=7).take(0, 6)  # what stage one fed
    np.testing.assert_array_equal(rebuilt, made)
    res = CliRunner().invoke(
        softlabels_cli,
        ["verify", str(store), "--transfer", str(tmp_path / "i.npz"), "--teacher", TEACHER],
    )
    assert res.exit_code == 0 and res.output.rstrip().endswith("OK"), res.output
