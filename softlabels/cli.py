"""The ``softlabels`` command: stage one and the store tools. Each command parses its options,
builds a config and calls one library function."""

from __future__ import annotations

import json
import sys

import click

from softlabels import schema
from softlabels.audit import AuditOptions, audit_store, format_audit
from softlabels.clihelp import (
    FriendlyGroup,
    cli_message,
    describe_sparse,
    device_option,
    ensemble_options,
    lease_wait_option,
    parse_temperatures,
    precision_option,
    report_store,
    sparse_options,
    store_was_complete,
    views_options,
)
from softlabels.device import PRECISIONS
from softlabels.generate import DEFAULT_CHUNK_ROWS, generate
from softlabels.lm.cli import generate_lm_cmd
from softlabels.lm.import_cli import import_cmd
from softlabels.schema import SparseSpec
from softlabels.summary import format_inspect, inspect_store
from softlabels.teachers import load_teacher
from softlabels.tools_cli import combine_cmd, convert_cmd
from softlabels.transfer import load_transfer
from softlabels.verify import verify_store
from softlabels.views.augment import Policy, augment_spec


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="softlabels")
def main() -> None:
    """Stage one of offline distillation: run teachers once, store their logits.

    A store is a Zarr v3 directory (PATH.zarr) or an HDF5 file (PATH.h5) in the format
    described in FORMAT.md. Train students from it with `distill`.
    """


@main.command("generate")
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    required=True,
    help="Checkpoint written by `distill`, module:function returning an nn.Module, or "
    "timm:NAME[,KEY=VALUE...] / torchvision:NAME[,...] (random weights, or a local file: "
    "weights=PATH, safetensors or a state_dict; nothing is downloaded). Repeat for an ensemble.",
)
@ensemble_options()
@click.option(
    "--transfer",
    required=True,
    help="Transfer SPEC: digits | fashion-mnist:DIR | mnist:DIR | idx:DIR | FILE.npz | FILE.h5 | "
    "DIR.zarr | module:function | an image folder DIR/CLASS/x.png. An image set (a folder, or "
    "uint8 (N, H, W, 3) arrays) takes preprocessing after '?', recorded in the store: "
    "'DIR?resize=36,crop=32,mean=imagenet,std=imagenet' or 'DIR?timm=resnet18'; convert=rgb "
    "converts non-RGB images (refused otherwise).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "test"]),
    default="train",
    show_default=True,
    help="Transfer-set split to label.",
)
@click.option("--out", required=True, help="Output store: PATH.zarr or PATH.h5.")
@click.option(
    "--dtype",
    type=click.Choice(schema.DTYPES),
    default="float32",
    show_default=True,
    help="Stored logit dtype.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Teacher batch size (batches never cross a chunk).",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_ROWS,
    show_default=True,
    help="Rows per stored chunk.",
)
@click.option(
    "--compress/--no-compress",
    default=True,
    show_default=True,
    help="Compress chunks (Blosc-zstd for Zarr, gzip for HDF5).",
)
@click.option(
    "--resume", is_flag=True, help="Finish an interrupted store from its last committed chunk."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@lease_wait_option()
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader worker processes reading the transfer set, and decoding an image set "
    "(0: the main process; image folders of 512+ files decode in up to 4 by default). The "
    "logits are bitwise the same at any count.",
)
@device_option()
@precision_option(
    tuple(PRECISIONS),
    default="fp32",
    help="Precision of the teachers' forward pass (autocast); logits are kept in float32.",
)
@sparse_options()
@views_options()
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_cmd(
    teachers: tuple[str, ...],
    combine: str | None,
    weights: tuple[float, ...] | None,
    transfer: str,
    split: str,
    out: str,
    dtype: str,
    batch_size: int,
    chunk_rows: int,
    compress: bool,
    resume: bool,
    overwrite: bool,
    lease_wait: float,
    workers: int,
    device: str,
    precision: str,
    sparse: SparseSpec | None,
    augment: Policy | None,
    views: int | None,
    view_seed: int,
    quiet: bool,
) -> None:
    """Run the teacher(s) over a transfer set once and write their logits to a store.

    With --top-k K the store is sparse: per row the K largest logits (plus --sample S sampled
    ids), every member's logits there, and a summary of the rest that replays the tail's mass at
    any temperature; `softlabels audit` measures what that costs against a dense store.

    With --views V --augment SPEC the rows are V augmented views of every sample (row r is view
    r % V of sample r // V), each with its augmentation parameters stored, so any view's input
    can be rebuilt exactly (softlabels.views.view_input).

    With --resume the same command line is safe to repeat (a requeued job): it creates the
    store if there is none, finishes a partial one, and does nothing if the store is already
    complete and was made from the same teachers and inputs.

    Under `torchrun --nproc_per_node=K -m softlabels.cli generate ...` the K processes split the
    chunks and write one Zarr store together; the result is identical to a single process.
    STORE paths may also be fsspec URLs (memory://, s3://) for writing Zarr."""
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; pick one")
    was_complete = store_was_complete(out, resume)
    store = generate(
        [load_teacher(t) for t in teachers],
        load_transfer(transfer, split),
        out,
        combine=combine,
        weights=weights,
        split=split,
        dtype=dtype,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        compress=compress,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
        device=device,
        precision=precision,
        workers=workers,
        sparse=sparse,
        augment=augment,
        views=views,
        view_seed=view_seed,
        lease_wait=lease_wait,
    )
    with store:
        meta = store.meta
    layout = "" if meta.sparse is None else f", {describe_sparse(meta.sparse)}"
    if meta.views is not None:
        layout += f", {meta.views.views_per_sample} views per sample ({meta.views.policy_name})"
    summary = (
        f"{meta.num_samples} rows x {meta.num_classes} classes, {meta.num_members} teacher(s), "
        f"combine={meta.combine}, dtype={meta.dtype}{layout}"
    )
    report_store(out, summary, was_complete=was_complete)


@main.command("inspect")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_cmd(store: str, as_json: bool) -> None:
    """Show a store's shapes, size, teachers, provenance, accuracy and soft-target entropy."""
    info = inspect_store(store)
    click.echo(json.dumps(info, indent=2) if as_json else format_inspect(info))


@main.command("verify")
@click.argument("store")
@click.option("--transfer", default=None, help="Transfer SPEC to check the fingerprint against.")
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    help="Re-run these teachers (in store order) on random rows and compare. Needs --transfer.",
)
@click.option(
    "--sample", type=click.IntRange(min=1), default=64, show_default=True, help="Rows to re-run."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing the rows.")
@click.option(
    "--augment",
    default=None,
    help="For a views store made by a module:function policy: that SPEC again, to rebuild the "
    "views --teacher re-runs on (built-in policies are rebuilt from the store).",
)
@device_option("Where --teacher re-runs: ")
@precision_option(
    tuple(PRECISIONS),
    default=None,
    help="Precision of the re-run. Default: the store's recorded precision (then the result is "
    "bitwise equal on the same device).",
)
def verify_cmd(
    store: str,
    transfer: str | None,
    teachers: tuple[str, ...],
    sample: int,
    seed: int,
    augment: str | None,
    device: str,
    precision: str | None,
) -> None:
    """Check completeness, per-chunk checksums, sample_index, labels and (optionally)
    provenance: the transfer set's fingerprint, size, split and labels, and a re-run of the
    teachers on random rows, within a tolerance suited to the store's dtype and precision.

    Exits 1 if any check fails."""
    report = verify_store(
        store,
        transfer=transfer,
        teachers=teachers,
        sample=sample,
        seed=seed,
        device=device,
        precision=precision,
        augment=None if augment is None else augment_spec(augment),
    )
    click.echo(cli_message(report.render()))
    if not report.ok:
        sys.exit(1)


@main.command("audit")
@click.argument("sparse")
@click.option("--against", default=None, help="Dense store of the same teacher(s) to compare with.")
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    help="Instead of --against: re-run these teachers (in store order) on the sampled rows.",
)
@click.option("--transfer", default=None, help="Transfer SPEC (needed by --teacher and --student).")
@click.option(
    "--student",
    default=None,
    help="Student checkpoint whose logits the gradients are taken at. Default: random N(0, 1).",
)
@click.option(
    "--temperature",
    "temperatures",
    callback=parse_temperatures,
    default="1,2,4,8",
    show_default=True,
    help="Temperatures to measure at (comma-separated).",
)
@click.option(
    "--rows", type=click.IntRange(min=1), default=4096, show_default=True, help="Rows sampled."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the row sample.")
@device_option("Where --teacher and --student run: ")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_cmd(
    sparse: str,
    against: str | None,
    teachers: tuple[str, ...],
    transfer: str | None,
    student: str | None,
    temperatures: tuple[float, ...],
    rows: int,
    seed: int,
    device: str,
    as_json: bool,
) -> None:
    """Measure what a sparse store loses against the dense targets of the same teacher.

    For each temperature: KL(dense || replay) over the stored ids plus the tail bucket (mean,
    99th percentile), the error in the tail's mass, and the angle between the KD gradients from
    dense and from sparse targets (per estimator) at the same student logits."""
    if against is None and not teachers:
        raise click.UsageError("give --against DENSE or --teacher SPEC ... --transfer SPEC")
    if against is not None and teachers:
        raise click.UsageError("--against and --teacher are two references; give one")
    report = audit_store(
        sparse,
        against=against,
        teachers=[load_teacher(t) for t in teachers],
        transfer=transfer,
        student=student,
        options=AuditOptions(temperatures=temperatures, rows=rows, seed=seed),
        device=device,
    )
    click.echo(json.dumps(report, indent=2) if as_json else format_audit(report))


main.add_command(generate_lm_cmd)
main.add_command(convert_cmd)
main.add_command(combine_cmd)
main.add_command(import_cmd)

if __name__ == "__main__":
    main()
