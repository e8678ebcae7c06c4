"""Provenance entries of the root attributes: the teachers and the transfer set a store was made
from, and how the logits were computed (FORMAT.md, "Root attributes")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from softlabels.schema.fields import int_field, str_field

# The sha256 of a teacher whose lazy parameters (nn.LazyLinear) are not set yet; its first
# batch sets them (softlabels.teachers.initialise_lazy) and the real hash replaces this. It is
# never written: StoreWriter refuses it.
LAZY_SHA256 = "lazy"


@dataclass(frozen=True)
class TeacherInfo:
    """One ensemble member: what it was and which exact weights produced its logits."""

    name: str
    spec: str | None  # checkpoint path or module:function; None for an in-memory nn.Module
    architecture: dict[str, Any] | None  # {"name": ..., "kwargs": {...}} for built-in models
    sha256: str  # over the state_dict, see softlabels.teachers.weights_sha256


@dataclass(frozen=True)
class TransferInfo:
    """The transfer set whose inputs produced the rows, identified by content."""

    name: str  # the transfer SPEC, e.g. "digits" or "fashion-mnist:/usr/share/..."
    split: str  # "train" or "test"
    num_samples: int
    fingerprint: str  # "sha256:<hex>" over the float32 inputs (an image set's pixels) in order
    # An image set's preprocessing (softlabels.vision.preprocess.Preprocess.to_attr); None: none
    preprocess: dict[str, Any] | None = None


def teacher_attr(entry: Any) -> TeacherInfo:
    if not isinstance(entry, dict):
        raise ValueError(f"teacher entry must be an object, got {entry!r}")
    arch = entry.get("architecture")
    if arch is not None and not isinstance(arch, dict):
        raise ValueError("teacher architecture must be an object or null")
    return TeacherInfo(
        name=str_field(entry, "name"),
        spec=None if entry["spec"] is None else str_field(entry, "spec"),
        architecture=arch,
        sha256=str_field(entry, "sha256"),
    )


def runtime_attr(entry: Any) -> dict[str, str] | None:
    if entry is None:
        return None
    if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
        raise ValueError(f"runtime must be an object of strings or null, got {entry!r}")
    return {str(k): v for k, v in entry.items()}


def transfer_attr(entry: Any) -> TransferInfo:
    if not isinstance(entry, dict):
        raise ValueError(f"transfer must be an object, got {entry!r}")
    return TransferInfo(
        name=str_field(entry, "name"),
        split=str_field(entry, "split"),
        num_samples=int_field(entry, "num_samples", minimum=1),
        fingerprint=str_field(entry, "fingerprint"),
        preprocess=_preprocess_attr(entry.get("preprocess")),
    )


def _preprocess_attr(entry: Any) -> dict[str, Any] | None:
    if entry is not None and not isinstance(entry, dict):
        raise ValueError(f"transfer preprocess must be an object or absent, got {entry!r}")
    return entry
