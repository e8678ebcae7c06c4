"""Teacher SPECs: a checkpoint written by this project's trainer, ``module:function``, or
``hf:DIR`` (a local transformers causal LM, safetensors only)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from softlabels.checkpoint import load_model
from softlabels.errors import SpecError, TeacherError
from softlabels.lm import HF_PREFIX, load_hf
from softlabels.schema import TeacherInfo
from softlabels.transfer import import_callable


@dataclass(frozen=True)
class Teacher:
    info: TeacherInfo
    module: nn.Module


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over the state_dict: for each key in sorted order, the key, dtype, shape and the
    tensor's little-endian bytes."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def as_teacher(teacher: nn.Module | str) -> Teacher:
    """A Teacher from an in-memory ``nn.Module`` (recorded with ``spec: null``, its class name and
    its weights hash; it is put in eval mode) or a teacher SPEC string."""
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, nn.Module):
        teacher.eval()
        info = TeacherInfo(
            name=type(teacher).__name__,
            spec=None,
            architecture=None,
            sha256=weights_sha256(teacher),
        )
        return Teacher(info, teacher)
    if isinstance(teacher, str | os.PathLike):
        return load_teacher(str(teacher))
    raise TeacherError(
        f"a teacher must be an nn.Module or a SPEC string, got {type(teacher).__name__}"
    )


def load_teacher(spec: str) -> Teacher:
    """Resolve a teacher SPEC to a module in eval mode, with its provenance."""
    arch: dict[str, Any] | None
    if spec.startswith(HF_PREFIX):
        module, arch, name = load_hf(spec), None, spec
    elif os.path.isfile(spec):
        module, arch = load_model(spec)
        name = os.path.splitext(os.path.basename(spec))[0]
    elif ":" in spec and os.path.sep not in spec.split(":")[0]:
        module = import_callable(spec)()
        if not isinstance(module, nn.Module):
            raise TeacherError(f"{spec!r} returned {type(module).__name__}, not a torch nn.Module")
        arch, name = None, spec
    else:
        raise SpecError(
            f"teacher {spec!r} is neither an existing checkpoint file nor module:function"
        )
    module.eval()
    return Teacher(
        TeacherInfo(name=name, spec=spec, architecture=arch, sha256=weights_sha256(module)), module
    )
