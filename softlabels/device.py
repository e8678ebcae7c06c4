"""Where models run and at what precision: ``--device`` and ``--precision``, resolved once.

Asking for a device that is absent is an error, never a silent fallback to the CPU. Teachers
run their forward pass under autocast at the chosen precision; their logits are always combined
and stored from float32 copies. Bitwise equality (resume, workers, torchrun) is promised only for
the same device type and precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from softlabels.errors import SoftLabelsError

DEVICES_HELP = "auto | cpu | cuda | cuda:N | mps"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(SoftLabelsError, RuntimeError):
    """A device that is not present, or a precision it cannot run."""


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available (then MPS, then the CPU); anything else must exist."""
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {spec!r}; use {DEVICES_HELP}") from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"device {spec!r} was asked for, but this machine has no CUDA GPU visible to "
                f"PyTorch (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                f"use cpu, or auto to take a GPU only when there is one"
            )
        index = 0 if device.index is None else device.index
        if index >= count:
            raise DeviceError(f"device {spec!r} does not exist: there are {count} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device {spec!r} was asked for, but MPS is not available here")
        return device
    raise DeviceError(f"unsupported device {spec!r}; use {DEVICES_HELP}")


def check_precision(precision: str) -> torch.dtype:
    """The autocast dtype of ``precision`` (fp32: none)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = check_precision(precision)
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def runtime_record(device: torch.device, precision: str) -> dict[str, str]:
    """What a store records about how its logits were computed."""
    record = {"device": device.type, "precision": precision, "torch": torch.__version__}
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
    return record


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())
