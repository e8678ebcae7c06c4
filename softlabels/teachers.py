"""Teacher SPECs: a checkpoint written by this project's trainer, ``module:function``,
``hf:DIR`` (a local transformers causal LM, safetensors only), or ``timm:NAME[,KEY=VALUE...]``
and ``torchvision:NAME[,...]`` (softlabels.vision.models)."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from softlabels.checkpoint import load_model
from softlabels.errors import SpecError, TeacherError
from softlabels.lm.models import HF_PREFIX, load_hf
from softlabels.models import forward
from softlabels.schema import TeacherInfo
from softlabels.schema.provenance import LAZY_SHA256
from softlabels.transfer import import_callable
from softlabels.vision.models import is_vision_spec, load_vision_model, parse_spec

LAZY = LAZY_SHA256  # a TeacherInfo.sha256 that initialise_lazy replaces before anything is written


@dataclass(frozen=True)
class Teacher:
    info: TeacherInfo
    module: nn.Module


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over the state_dict (FORMAT.md, "Weights SHA-256"): for each key in sorted order,
    the UTF-8 header ``key|dtype|shape|`` and the tensor's values as C-order little-endian
    bytes. Any tensor hashes: 0-dim and integer buffers (BatchNorm's ``num_batches_tracked``),
    bf16 and fp16, non-contiguous views (hashed as their values, not their storage) and tied
    weights (each key on its own)."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        if is_lazy(tensor):
            raise TeacherError(
                f"{type(module).__name__}.{key} is an uninitialised lazy parameter (nn.Lazy*): "
                "run one forward pass (or initialise_lazy) before hashing the weights"
            )
        h.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's values as C-order little-endian bytes of its dtype (no header), as a view
    of its memory where it is already contiguous on the CPU (no copy for hashlib)."""
    t = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    if sys.byteorder != "little":
        raise TeacherError("hashing weights needs a little-endian machine")
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def has_lazy(module: nn.Module) -> bool:
    """True while ``module`` holds uninitialised lazy parameters or buffers (nn.LazyLinear...)."""
    return any(is_lazy(t) for t in (*module.parameters(), *module.buffers()))


def initialise_lazy(teacher: Teacher, x: torch.Tensor) -> Teacher:
    """``teacher`` with its lazy modules initialised by one eval-mode forward pass on ``x`` (a
    batch of the transfer set) and its weights hashed; unchanged when it has no lazy modules."""
    if not has_lazy(teacher.module):
        return teacher
    teacher.module.eval()
    with torch.no_grad():
        forward(teacher.module, x, name=teacher.info.spec or teacher.info.name, error=TeacherError)
    info = replace(teacher.info, sha256=weights_sha256(teacher.module))
    return Teacher(info, teacher.module)


def _sha256_or_lazy(module: nn.Module) -> str:
    """The weights hash; ``LAZY`` for a module whose lazy parameters the first batch sets."""
    return LAZY if has_lazy(module) else weights_sha256(module)


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
            sha256=_sha256_or_lazy(teacher),
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
    elif is_vision_spec(spec):
        parsed = parse_spec(spec)
        module, arch, name = (
            load_vision_model(parsed),
            parsed.architecture(),
            f"{parsed.library}:{parsed.model}",
        )
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
        TeacherInfo(name=name, spec=spec, architecture=arch, sha256=_sha256_or_lazy(module)), module
    )
