"""Lets PyPI's torchvision import beside a CPU-only torch (development environments only).

PyPI's x86-64 torchvision wheels are CUDA builds: beside the CPU torch that ``make venv``
installs, their compiled operators (``torchvision::nms``, ``roi_align``, ...) fail to load, and
``import torchvision`` then raises ``RuntimeError: operator torchvision::nms does not exist``
while registering fake kernels for them. transformers imports torchvision whenever it is
installed, so every transformers model would fail too. No CPU torchvision wheel is on this
machine's registries.

``make venv`` installs this module with a ``.pth`` line, so it runs at interpreter start-up. It
only adds an import hook: when torchvision registers its operators' fake (meta) and autograd
kernels and the operators themselves did not load, those two registration modules are replaced
by empty ones. Classification models (torchvision.models, timm) never call these operators;
detection operators stay unusable, as they were. With a torchvision built for the installed
torch, the hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_REGISTRATIONS = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def _operators_loaded() -> bool:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 -- raises when the compiled ops did not load
    except (AttributeError, RuntimeError):
        return False
    return True


class _EmptyModule(importlib.abc.Loader):
    def create_module(self, spec):  # noqa: D102
        return None

    def exec_module(self, module) -> None:  # noqa: D102
        module.__doc__ = (
            "empty: torchvision's compiled operators did not load (tools/torchvision_cpu_shim.py)"
        )


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: D102
        if name not in _REGISTRATIONS or _operators_loaded():
            return None
        return importlib.machinery.ModuleSpec(name, _EmptyModule())


sys.meta_path.insert(0, _Finder())
