"""Root attributes as JSON: the HDF5 codec (each value a JSON string) and typed reads of
fields, raising ValueError with the field's name."""

from __future__ import annotations

import json
from typing import Any

from softlabels.errors import StoreFormatError

# Largest JSON size of the root attributes a reader accepts (guards against hostile stores).
MAX_ATTRS_BYTES = 64 * 1024 * 1024


def int_field(attrs: dict[str, Any], key: str, *, minimum: int) -> int:
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def number_field(attrs: dict[str, Any], key: str) -> float:
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def str_field(attrs: dict[str, Any], key: str) -> str:
    """A string attribute, taken as it is (never another JSON type turned into text)."""
    value = attrs[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def numbers(values: list[Any], key: str) -> tuple[float, ...]:
    """A list of JSON numbers (not strings or booleans), as floats."""
    return tuple(number_field({key: v}, key) for v in values)


def strings(values: list[Any], key: str) -> tuple[str, ...]:
    """A list of JSON strings."""
    return tuple(str_field({key: v}, key) for v in values)


def list_field(attrs: dict[str, Any], key: str) -> list[Any]:
    value = attrs[key]
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list, got {type(value).__name__}")
    return value


def encode_h5_attr(value: Any) -> str:
    """HDF5 root attributes hold JSON text, so nested values survive without pickle."""
    return json.dumps(value, sort_keys=True)


def decode_h5_attr(name: str, text: Any) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise StoreFormatError(
            f"HDF5 attribute {name!r} is not JSON text (got {type(text).__name__})"
        )
    if len(text) > MAX_ATTRS_BYTES:
        raise StoreFormatError(f"HDF5 attribute {name!r} is larger than {MAX_ATTRS_BYTES} bytes")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreFormatError(f"HDF5 attribute {name!r} is not valid JSON: {exc}") from exc
