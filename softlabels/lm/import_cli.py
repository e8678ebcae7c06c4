"""`softlabels import`: a top-k log-probability capture becomes a token store."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from softlabels.clihelp import report_store


@click.command("import")
@click.argument("capture")
@click.option(
    "--tokenizer",
    required=True,
    help="The capture's tokenizer: a tokenizer.json or a transformers tokenizer folder.",
)
@click.option("--out", required=True, help="Output store: PATH.zarr or PATH.h5.")
@click.option(
    "--tokens-out",
    required=True,
    help="Where to write the store's sequences (an .npz of input_ids and offsets), for "
    "distill train-lm --tokens.",
)
@click.option(
    "--vocab-size",
    type=click.IntRange(min=2),
    default=None,
    help="The distribution's size (the teacher's head) when the capture does not declare it "
    "(plain arrays); default: the tokenizer's size.",
)
@click.option("--chunk-rows", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing store and tokens file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def import_cmd(
    capture: str,
    tokenizer: str,
    out: str,
    tokens_out: str,
    vocab_size: int | None,
    chunk_rows: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Turn CAPTURE, top-k log-probabilities of a teacher at T = 1, into a sparse token store:
    a DistillKit/open-instruct folder (compression_config.yaml and compressed *.parquet, with
    exact_k = k) or an .npz of input_ids, offsets, top_ids and top_logprobs.

    The ids' relative logits are exact at any temperature, but the mass outside them is known
    at T = 1 only, so the store is read at T = 1 only (distill train-lm --temperature 1).

    \b
    softlabels import capture/ --tokenizer tok/ --out lm.zarr --tokens-out lm_tokens.npz
    distill train-lm --store lm.zarr --tokens lm_tokens.npz --temperature 1 --eval-split none --out runs/kd
    """
    from softlabels.lm.capture import read_capture
    from softlabels.lm.importer import import_capture

    target = Path(tokens_out)
    if target.suffix != ".npz":
        raise click.UsageError("--tokens-out must end in .npz")
    if target.exists() and not overwrite:
        raise click.UsageError(f"{tokens_out} exists; replace it with --overwrite")
    read = read_capture(capture)
    store = import_capture(
        read,
        out,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        chunk_rows=chunk_rows,
        overwrite=overwrite,
        progress=not quiet,
    )
    with store:
        meta = store.meta
    seqs = read.sequences
    staged = target.with_name(target.stem + ".partial.npz")
    np.savez(staged, input_ids=seqs.ids, offsets=seqs.offsets)
    staged.replace(target)
    summary = f"{meta.num_samples} token rows over {meta.num_classes} ids, top {meta.sparse.k}"
    report_store(out, summary + f" at T = 1 only; sequences in {tokens_out}", was_complete=False)
