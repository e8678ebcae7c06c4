"""The one fallback of softlabels.vision._imports: a torchvision built for another torch
(``operator torchvision::nms does not exist`` on import) still serves classification models,
with one warning; any other import failure stays an error."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torchvision")

# A child process whose torchvision fails to register its compiled ops, as PyPI's CUDA wheel
# does beside a CPU torch: a finder makes that module raise the error such a wheel raises.
CHILD = """
import importlib.abc, sys, warnings
class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision._meta_registrations" and not isinstance(
            sys.modules.get(name), type(sys)
        ):
            import importlib.util
            return importlib.util.spec_from_loader(name, self)
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise RuntimeError("operator torchvision::nms does not exist")
sys.meta_path.insert(0, Broken())
from softlabels.vision._imports import import_timm
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    timm = import_timm()
import torch
model = timm.create_model("resnet10t", num_classes=3).eval()
print(tuple(model(torch.zeros(1, 3, 32, 32)).shape))
print(len(caught), str(caught[0].message))
"""


def test_a_torchvision_built_for_another_torch_still_serves_classification_models():
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    shape, warning = res.stdout.strip().splitlines()
    assert shape == "(1, 3)"
    assert warning.startswith("1 torchvision") and "built for another torch" in warning
    assert "Install a torchvision built for this torch" in warning


def test_another_import_failure_is_not_hidden(monkeypatch):
    from softlabels.vision import _imports

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import raises ImportError
    with pytest.raises(Exception, match="pip install 'softlabels\\[vision\\]'"):
        _imports.import_torchvision()
