"""Click helpers shared by the two command-line tools (``softlabels`` and ``distill``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from softlabels.errors import SoftLabelsError


class FriendlyGroup(click.Group):
    """Turns the project's own exceptions into a one-paragraph error and exit code 1,
    instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SoftLabelsError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc


def parse_floats(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[float, ...] | None:
    """A comma-separated list of numbers."""
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from exc


def parse_ints(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers."""
    try:
        ints = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from exc
    if not ints or min(ints) < 1:
        raise click.BadParameter(f"expected positive sizes, got {value!r}")
    return ints


def parse_temperatures(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """One temperature, or a comma-separated sweep; each finite and > 0."""
    temps = parse_floats(ctx, param, value) or ()
    if not temps or any(not (math.isfinite(t) and t > 0) for t in temps):
        raise click.BadParameter(f"temperatures must be finite numbers > 0, got {value!r}")
    return temps


def parse_seeds(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, ...] | None:
    """Seeds as a comma list (0,1,2) or an inclusive range (0-4)."""
    if value is None:
        return None
    try:
        if "-" in value.strip("-"):
            lo, hi = (int(v) for v in value.split("-"))
            seeds = tuple(range(lo, hi + 1))
        else:
            seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected seeds like 0,1,2 or 0-4, got {value!r}") from exc
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected distinct seeds, got {value!r}")
    return seeds


DEVICE_HELP = (
    "auto (CUDA when available) | cpu | cuda | cuda:N | mps. An absent device is an error, never "
    "a silent fallback."
)


def device_option(what: str = "") -> Callable[[Any], Any]:
    """--device, for every command that runs a model; ``what`` says which model, if not obvious."""
    return click.option("--device", default="auto", show_default=True, help=what + DEVICE_HELP)


def precision_option(
    choices: tuple[str, ...], *, default: str | None, help: str
) -> Callable[[Any], Any]:
    """--precision of a model's forward pass (autocast), from ``choices``."""
    return click.option(
        "--precision",
        type=click.Choice(choices),
        default=default,
        show_default=default is not None,
        help=help,
    )
