"""The one place that imports timm and torchvision (the ``softlabels[vision]`` extra).

A torchvision wheel built for another torch (PyPI's CUDA build beside a CPU torch) fails on
import with ``operator torchvision::nms does not exist``: it registers meta and autograd
kernels for its compiled detection ops (nms, roi_align), which that torch cannot load. The
classification models use none of those ops, so in exactly that case the two registration
modules are skipped, with one warning that says what to install; any other failure is an error.
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

from softlabels.errors import SpecError

_MISSING_OPS = "operator torchvision::"
_SKIPPED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def import_torchvision() -> Any:
    """The torchvision module (see the module docstring for the one fallback)."""
    try:
        import torchvision
    except ImportError as exc:
        raise SpecError(_install_hint("torchvision", exc)) from exc
    except RuntimeError as exc:
        if _MISSING_OPS not in str(exc) or "does not exist" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for name in _SKIPPED:
            sys.modules[name] = types.ModuleType(name)
        import torch
        import torchvision

        warnings.warn(
            f"torchvision {torchvision.__version__} was built for another torch than the "
            f"installed {torch.__version__} ({str(exc).splitlines()[0]}); its compiled "
            f"detection ops (nms, roi_align) are unusable, classification models work. Install "
            f"a torchvision built for this torch to silence this (CPU: pip install torchvision "
            f"--index-url https://download.pytorch.org/whl/cpu)",
            RuntimeWarning,
            stacklevel=2,
        )
    return torchvision


def import_timm() -> Any:
    """The timm module (torchvision imported first, through ``import_torchvision``)."""
    import_torchvision()
    try:
        import timm
    except ImportError as exc:
        raise SpecError(_install_hint("timm", exc)) from exc
    return timm


def _install_hint(package: str, exc: Exception) -> str:
    return (
        f"{package} is not importable ({exc}); install the vision extra: "
        f"pip install 'softlabels[vision]'"
    )
