"""The ``softlabels convert`` and ``softlabels combine`` commands (``softlabels.cli`` adds them
to its group): each parses its options and calls one function of ``softlabels.tools``."""

from __future__ import annotations

import click

from softlabels import schema
from softlabels.clihelp import lease_wait_option, parse_floats, sparse_options
from softlabels.schema import SparseSpec
from softlabels.tools import combine_stores, convert_store


@click.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option("--overwrite", is_flag=True, help="Replace an existing DST.")
@lease_wait_option()
@click.option(
    "--compress/--no-compress", default=True, show_default=True, help="Compress DST's chunks."
)
@sparse_options()
def convert_cmd(
    src: str,
    dst: str,
    overwrite: bool,
    lease_wait: float,
    compress: bool,
    sparse: SparseSpec | None,
) -> None:
    """Copy a store between Zarr (.zarr) and HDF5 (.h5), losslessly (checksums are compared).

    With --top-k K, sparsify a dense SRC instead: DST keeps each row's K largest logits and a
    tail summary, exactly as `generate --top-k K` would have written them."""
    meta = convert_store(
        src,
        dst,
        overwrite=overwrite,
        compress=compress,
        sparse=sparse,
        progress=True,
        lease_wait=lease_wait,
    )
    if sparse is None:
        click.echo(f"converted {src} -> {dst} ({meta.num_chunks} chunks, checksums identical)")
    else:
        click.echo(f"sparsified {src} -> {dst} (K={sparse.k}, {sparse.policy})")


@click.command("combine")
@click.argument("stores", nargs=-1, required=True)
@click.option(
    "--combine",
    "rule",
    type=click.Choice([schema.COMBINE_ARITHMETIC, schema.COMBINE_GEOMETRIC]),
    required=True,
    help="Ensemble rule for the pooled members.",
)
@click.option(
    "--weights",
    callback=parse_floats,
    help="Comma-separated weight per input store. Default: uniform.",
)
@click.option("--out", required=True, help="Output store: PATH.zarr or PATH.h5.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@lease_wait_option()
@sparse_options()
def combine_cmd(
    stores: tuple[str, ...],
    rule: str,
    weights: tuple[float, ...] | None,
    out: str,
    overwrite: bool,
    lease_wait: float,
    sparse: SparseSpec | None,
) -> None:
    """Build one ensemble store from stores made separately on the same transfer set.

    The members of every input are pooled; a member's weight is its store's weight times its
    weight within that store. Dense inputs may be written sparse with --top-k. Sparse inputs
    pool only when exact: arithmetic rule, top-k stores with the same options and the same ids
    in every row."""
    meta = combine_stores(
        stores,
        out,
        combine=rule,
        weights=weights,
        overwrite=overwrite,
        sparse=sparse,
        lease_wait=lease_wait,
    )
    click.echo(f"wrote {out}: {meta.num_members} members, combine={meta.combine}")
