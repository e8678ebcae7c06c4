"""Typed reads of JSON attribute fields, raising ValueError with the field's name."""

from __future__ import annotations

from typing import Any


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


def list_field(attrs: dict[str, Any], key: str) -> list[Any]:
    value = attrs[key]
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list, got {type(value).__name__}")
    return value
