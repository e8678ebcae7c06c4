"""The ``distill`` command: stage two. It parses options, builds a TrainConfig, and calls one
library function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from softlabels.clihelp import (
    FriendlyGroup,
    device_option,
    parse_ints,
    parse_seeds,
    parse_temperatures,
    precision_option,
)
from softlabels.sparse import ESTIMATORS
from trainer.compare import CompareConfig, compare
from trainer.lm.cli import train_lm_cmd
from trainer.train import LOSSES, TrainConfig, format_table, train_sweep


def student_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--transfer",
            default="digits",
            show_default=True,
            help="Transfer SPEC (see `softlabels generate --help`). An image set without "
            "'?' preprocessing takes the store's; one with it must match the store's.",
        ),
        click.option(
            "--split",
            type=click.Choice(["train", "test"]),
            default="train",
            show_default=True,
            help="Training split.",
        ),
        click.option(
            "--eval-split",
            type=click.Choice(["train", "test", "none"]),
            default="test",
            show_default=True,
            help="Held-out split evaluated at T=1 after each epoch.",
        ),
        click.option(
            "--store",
            default=None,
            help="Soft-label store over the training split (path or URL). `train` without it trains on hard labels.",
        ),
        click.option(
            "--eval-store",
            default=None,
            help="Store over the eval split: adds teacher agreement and KL to teacher.",
        ),
        click.option(
            "--model",
            default="mlp",
            show_default=True,
            help="mlp | cnn | module:function returning an nn.Module | timm:NAME[,KEY=VALUE...] | "
            "torchvision:NAME[,...] (num_classes defaults to the store's; weights=PATH starts "
            "from a local weights file).",
        ),
        click.option(
            "--num-classes",
            type=click.IntRange(min=2),
            default=None,
            help="Number of classes when neither a store nor the transfer set's class names give it.",
        ),
        click.option(
            "--hidden",
            default="128",
            show_default=True,
            callback=parse_ints,
            help="MLP hidden sizes, comma-separated.",
        ),
        click.option(
            "--channels",
            default="32,64",
            show_default=True,
            callback=parse_ints,
            help="CNN conv channels, comma-separated.",
        ),
        click.option(
            "--fc",
            type=click.IntRange(min=1),
            default=128,
            show_default=True,
            help="CNN fully-connected width.",
        ),
        click.option(
            "--dropout",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.0,
            show_default=True,
            help="Dropout probability.",
        ),
        click.option(
            "--loss",
            type=click.Choice(tuple(LOSSES)),
            default="hinton",
            show_default=True,
            help="hinton: alpha*CE + beta*T^2*KL; soft_ce: T^2*H(p_T,q_T); logits: MSE on centred logits; soft_only: T^2*KL.",
        ),
        click.option(
            "--temperature",
            default="4",
            show_default=True,
            callback=parse_temperatures,
            help="T, or a comma list for a sweep (one student per T).",
        ),
        click.option(
            "--estimator",
            type=click.Choice(ESTIMATORS),
            default=None,
            help="Sparse stores only: how the tail is replayed (bucket: exact ids, the tail's "
            "mass in one bucket shaped like the student's; ht: sampled ids reweighted, "
            "unbiased but noisy; importance: the tail's mass spread over the sampled ids). "
            "Default: importance at T <= the store's proposal temperature, bucket above it.",
        ),
        click.option(
            "--alpha",
            type=float,
            default=0.1,
            show_default=True,
            help="Weight of the hard-label CE term, in [0, 1].",
        ),
        click.option(
            "--beta",
            type=float,
            default=None,
            help="Weight of the T^2*KL term, in [0, 1]. Default: 1 - alpha.",
        ),
        click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
        click.option(
            "--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate."
        ),
        click.option("--weight-decay", type=float, default=0.0, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--views-per-epoch",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Views stores (generate --views): stored views each sample takes per epoch, "
            "drawn by the seed and the epoch alone, each rebuilt from its stored parameters.",
        ),
        click.option(
            "--augment",
            default=None,
            help="Views stores made with --augment module:function: that SPEC again, so the "
            "stored views can be rebuilt (checked against the store's description of its "
            "policy). A built-in policy (rrc-flip) is rebuilt from the store without it.",
        ),
        click.option(
            "--memory-budget-mb",
            type=float,
            default=1024.0,
            show_default=True,
            help="Stores larger than this (as float32) are streamed chunk by chunk.",
        ),
        click.option(
            "--out",
            required=True,
            help="Output folder: metrics.jsonl, curves.png, last.pt, model.pt.",
        ),
        click.option(
            "--resume",
            is_flag=True,
            help="Continue the run in --out from its last epoch checkpoint.",
        ),
        click.option("--overwrite", is_flag=True, help="Replace a non-empty --out."),
        device_option(),
        precision_option(
            ("fp32", "bf16"),
            default="fp32",
            help="The student's forward pass (bf16: autocast); the loss is computed in float32.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), fn)


def build_config(kw: dict[str, Any]) -> tuple[TrainConfig, tuple[float, ...]]:
    temps = kw.pop("temperature")
    eval_split = kw.pop("eval_split")
    quiet = kw.pop("quiet")
    extra = {k: kw.pop(k) for k in ("save",) if k in kw}
    config = TrainConfig(
        **kw,
        **extra,
        temperature=temps[0],
        eval_split=None if eval_split == "none" else eval_split,
        progress=not quiet,
    )
    return config, temps


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="softlabels")
def main() -> None:
    """Stage two of offline distillation: train students from a soft-label store at any
    temperature, without running a teacher.

    Loss convention (--loss hinton): alpha * CE(labels, student) + beta * T^2 * KL(teacher_T ||
    student_T), with beta = 1 - alpha unless given.

    Stores may be local paths or fsspec URLs (http://, s3://). Under `torchrun
    --nproc_per_node=K -m trainer.cli train ...` training is data-parallel over K processes.
    """


@main.command("train")
@student_options
@click.option(
    "--save",
    default=None,
    help="Also write the final model checkpoint to this path (e.g. data/digits/teacher1.pt).",
)
def train_cmd(**kw: Any) -> None:
    """Train one student per temperature (or a model on hard labels when --store is omitted)."""
    config, temps = build_config(kw)
    runs = train_sweep(config, temps)
    label = (
        (lambda r: f"KD T={r.config.temperature:g}") if config.store else (lambda r: "hard labels")
    )
    rows = [
        (
            label(r),
            {k.removeprefix("eval_"): v for k, v in r.final.items()}
            | {"epoch_seconds": r.epoch_seconds},
        )
        for r in runs
        if "eval_accuracy" in r.final
    ]
    if rows:
        click.echo(format_table(rows))
    for r in runs:
        click.echo(f"model: {r.model_path}")


@main.command("compare")
@student_options
@click.option("--results", required=True, help="Where to write results.json.")
@click.option(
    "--seeds",
    default=None,
    callback=parse_seeds,
    help="Seeds to train each student with, e.g. 0,1,2 or 0-4; the table shows mean ± std. "
    "Default: --seed.",
)
def compare_cmd(**kw: Any) -> None:
    """Train hard-label and distilled students with the same architecture, epochs, batches and
    optimizer, over one or more seeds; print one table with the teachers and ensemble (read from
    --eval-store). --store and --eval-store are required here."""
    results_path = kw.pop("results")
    seeds = kw.pop("seeds")
    config, temps = build_config(kw)
    if config.store is None or config.eval_store is None or config.eval_split is None:
        raise click.UsageError("compare needs --store, --eval-store and an --eval-split")
    seeds = seeds or (config.seed,)
    results = compare(
        CompareConfig(base=config, temperatures=temps, results=results_path, seeds=seeds)
    )
    click.echo(results["table"])
    click.echo(f"wrote {results_path}")


main.add_command(train_lm_cmd)

if __name__ == "__main__":
    main()
