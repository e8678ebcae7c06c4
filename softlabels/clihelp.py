"""Click helpers shared by the two command-line tools (``softlabels`` and ``distill``)."""

from __future__ import annotations

import functools
import math
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import click

from softlabels import schema
from softlabels.errors import SoftLabelsError, SoftLabelsWarning

# Library errors name the keyword that fixes them; on the command line, the flag does.
_KEYWORD_FLAGS = {
    "overwrite=True": "--overwrite",
    "resume=True": "--resume",
    "lease_wait=SECONDS": "--lease-wait SECONDS",
    "num_classes=": "--num-classes",
}
_KEYWORDS = re.compile("|".join(re.escape(k) for k in _KEYWORD_FLAGS))


def cli_message(text: str) -> str:
    """A library error's text as the command line says it: keywords become flags."""
    return _KEYWORDS.sub(lambda m: _KEYWORD_FLAGS[m.group(0)], text)


class FriendlyGroup(click.Group):
    """Turns the project's own exceptions into a one-paragraph error and exit code 1,
    instead of a traceback, and its warnings into one-paragraph notes on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _note
            try:
                return super().invoke(ctx)
            except (SoftLabelsError, OSError) as exc:
                raise click.ClickException(cli_message(str(exc))) from exc
            except ImportError as exc:  # an optional package (s3fs for s3:// URLs, ...)
                raise click.ClickException(
                    f"a package this command needs is not installed ({exc}): install it (for "
                    f"remote stores, pip install 'softlabels[remote]', plus s3fs for s3:// URLs)"
                ) from exc


_show_warning = warnings.showwarning


def _note(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """The project's own warnings as one-paragraph notes; any other as Python shows it."""
    if issubclass(category, SoftLabelsWarning):
        click.echo(f"Note: {cli_message(str(message))}", err=True)
    else:
        _show_warning(message, category, *args, **kwargs)


def lease_wait_option() -> Callable[[Any], Any]:
    """--lease-wait SECONDS, for the commands that write a store."""
    return click.option(
        "--lease-wait",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        metavar="SECONDS",
        help="When another process is writing the same output store (it holds the store's "
        "writer lease, .NAME.lease beside it), wait up to SECONDS for it to finish instead of "
        "stopping at once. A lease left by a killed writer on this host is taken over.",
    )


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


def special_tokens_option() -> Callable[[Any], Any]:
    """--special-tokens/--no-special-tokens: how --text documents are encoded."""
    return click.option(
        "--special-tokens/--no-special-tokens",
        default=True,
        show_default=True,
        help="With --text: encode each document with the special tokens its tokenizer adds "
        "(a Llama tokenizer's BOS <s> first), as the teacher was trained; the store records "
        "the choice. Give the same choice to generate-lm and train-lm.",
    )


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


def ensemble_options() -> Callable[[Any], Any]:
    """--combine and --weights: how the teachers given with --teacher are combined."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--weights",
            callback=parse_floats,
            help="Comma-separated member weights (normalised to sum 1). Default: uniform.",
        )(f)
        return click.option(
            "--combine",
            type=click.Choice(schema.COMBINE_RULES),
            default=None,
            help="Ensemble rule. Default: single for one teacher, arithmetic for several.",
        )(f)

    return decorate


def sparse_options(*, tokens: bool = False) -> Callable[[Any], Any]:
    """--top-k and the options of a sparse store, passed to the command as one ``sparse``
    argument: a ``SparseSpec``, or None for a dense store (no --top-k). ``tokens``: the
    command writes token stores, which also take --selection."""
    from softlabels.schema import DEFAULT_VALUE_STEP, SELECTION_DECODED, SELECTION_RAW, SparseSpec

    opts = [
        click.option(
            "--top-k",
            type=click.IntRange(min=1),
            help=f"Write a sparse store (format version {6 if tokens else 2}): keep each row's "
            "K largest logits, their ids, and a summary of the rest (see FORMAT.md). Default: "
            "dense.",
        ),
        click.option(
            "--sample",
            "sample_ids",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="With --top-k: also keep S ids drawn from the rest without replacement, with "
            "inclusion probabilities min(1, c * p_j^(1/T_q)) (systematic sampling).",
        ),
        click.option(
            "--proposal-temperature",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            help="T_q of the sampling proposal: above 1 reaches further into the tail.",
        ),
        click.option(
            "--sample-seed",
            type=click.IntRange(min=0, max=2**63 - 1),
            default=0,
            show_default=True,
            help="Seed of the sampled ids (with the row's transfer position: reproducible).",
        ),
        click.option(
            "--value-step",
            type=click.FloatRange(min=0, max=1),
            default=DEFAULT_VALUE_STEP,
            show_default=True,
            help="Fixed-point step of the stored logits (error <= step/2 per logit); 0 stores "
            "them as floats, in the store's float dtype (float32, or --dtype where the command "
            "has it).",
        ),
        click.option(
            "--tail-temperatures",
            callback=parse_temperatures,
            default="1,2,4,8",
            show_default=True,
            help="Anchor temperatures of the tail summary (replay at others interpolates).",
        ),
    ]
    if tokens:
        opts.append(
            click.option(
                "--selection",
                type=click.Choice([SELECTION_RAW, SELECTION_DECODED]),
                default=None,
                help="With --top-k: 'raw' (the default; --resume keeps a store's own) keeps the "
                "teacher's own top K and sums the tails over its raw logits, coding only the kept "
                "ids (format version 6, the fast one); 'decoded' chooses both on the stored, "
                "rounded values (format version 5, for readers older than version 6).",
            )
        )

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            names = ("sample_ids", "proposal_temperature", "sample_seed", "value_step")
            top_k, options = kw.pop("top_k"), {n: kw.pop(n) for n in names}
            tails = kw.pop("tail_temperatures")
            selection = kw.pop("selection", None)
            if top_k is None and options["sample_ids"]:
                raise click.UsageError("--sample needs --top-k (it adds ids to a sparse store)")
            kw["sparse"] = None
            if top_k is not None:
                kw["sparse"] = SparseSpec(
                    top_k=top_k,
                    sample=options["sample_ids"],
                    proposal_temperature=options["proposal_temperature"],
                    seed=options["sample_seed"],
                    tail_temperatures=tails,
                    value_step=options["value_step"] or None,
                    selection=selection,
                )
            return f(*args, **kw)

        for opt in reversed(opts):
            wrapper = opt(wrapper)
        return wrapper

    return decorate


def views_options() -> Callable[[Any], Any]:
    """--views V, --augment SPEC and --view-seed S, passed to the command as ``augment`` (the
    policy SPEC parsed into a policy object, or None), ``views`` (V or None) and ``view_seed``."""
    opts = [
        click.option(
            "--views",
            type=click.IntRange(min=1),
            default=None,
            help="Write a views store (format version 4): V augmented views of every sample, "
            "each view's augmentation parameters stored with its targets. Needs --augment.",
        ),
        click.option(
            "--augment",
            default=None,
            help="Augmentation policy of --views: rrc-flip[:scale=LO-HI,ratio=LO-HI,flip=P] "
            "(random-resized crop, then horizontal flip; default scale=0.35-1, "
            "ratio=0.75-1.3333, flip=0.5) or module:function returning a policy object "
            "(softlabels.views.augment.Policy).",
        ),
        click.option(
            "--view-seed",
            type=click.IntRange(min=0, max=2**63 - 1),
            default=0,
            show_default=True,
            help="Seed of the views' parameters (with the sample and view number: reproducible).",
        ),
    ]

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kw: Any) -> Any:
            from softlabels.views.augment import augment_spec

            if (kw["views"] is None) != (kw["augment"] is None):
                raise click.UsageError(
                    "--views and --augment go together: give both (e.g. --views 4 --augment "
                    "rrc-flip) or neither"
                )
            if kw["augment"] is not None:
                kw["augment"] = augment_spec(kw["augment"])
            return f(*args, **kw)

        for opt in reversed(opts):
            wrapper = opt(wrapper)
        return wrapper

    return decorate


def store_was_complete(out: str, resume: bool) -> bool:
    """Whether ``--resume`` finds a complete store at ``out`` (then nothing will be written)."""
    from softlabels.store import backends, open_store

    if not resume or not backends.exists(out):
        return False
    try:
        with open_store(out, allow_incomplete=True) as store:
            return store.meta.complete
    except Exception:  # not a readable store: the command itself says what is wrong
        return False


def report_store(out: str, summary: str, *, was_complete: bool) -> None:
    """The closing line of a command that writes a store; under torchrun, rank 0's only."""
    if os.environ.get("RANK", "0") != "0":
        return
    verb = "already complete, nothing written:" if was_complete else "wrote"
    click.echo(f"{verb} {out}: {summary}")


def describe_sparse(sparse: Any) -> str:
    """'sparse K=64 (top 48 + 16 sampled)' for a SparseSpec."""
    if not sparse.sample:
        return f"sparse K={sparse.k} (top {sparse.top_k})"
    return f"sparse K={sparse.k} (top {sparse.top_k} + {sparse.sample} sampled)"
