"""`softlabels generate-lm`: next-token targets of causal-LM teachers over token sequences."""

from __future__ import annotations

import click

from softlabels.clihelp import (
    describe_sparse,
    device_option,
    ensemble_options,
    lease_wait_option,
    precision_option,
    report_store,
    sparse_options,
    special_tokens_option,
    store_was_complete,
)
from softlabels.device import PRECISIONS
from softlabels.lm.sources import load_sequences
from softlabels.lm.text import WINDOW_MODES, load_tokens
from softlabels.schema import SparseSpec


@click.command("generate-lm")
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    required=True,
    help="hf:DIR (a local transformers causal LM, safetensors weights) or module:function. "
    "Repeat for an ensemble; the members must share one vocabulary.",
)
@ensemble_options()
@click.option(
    "--text",
    default=None,
    help="Documents: a .txt/.jsonl file, a folder with train.* and test.*, or "
    "datasets:DIR (a datasets save_to_disk folder) or datasets:FILE (.parquet, .jsonl, .json, "
    ".csv read through datasets).",
)
@click.option(
    "--tokenizer",
    default=None,
    help="With --text: a tokenizer.json or a transformers tokenizer folder.",
)
@click.option(
    "--text-field", default="text", show_default=True, help="The .jsonl field holding the document."
)
@click.option(
    "--prompt-field",
    default=None,
    help="A .jsonl field holding a prompt that precedes the text (tokenised apart, then "
    "joined); the store holds every row and records the prompt mask, and distill train-lm "
    "--prompt-field (the same field) masks the prompt.",
)
@click.option(
    "--messages-field",
    default=None,
    help="Chat records: the column holding a list of {role, content} messages, rendered with "
    "the --tokenizer folder's chat template; only rows predicting assistant tokens take a "
    "loss, and the store records that mask (give the same field to distill train-lm).",
)
@special_tokens_option()
@click.option(
    "--tokens",
    default=None,
    help="Instead of --text: pre-tokenised input_ids/offsets in an .npz, .zarr or .h5.",
)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option(
    "--max-length", type=click.IntRange(min=2), required=True, help="Longest sequence, in tokens."
)
@click.option(
    "--window",
    type=click.Choice(WINDOW_MODES),
    default="window",
    show_default=True,
    help="Longer documents: truncate (drop the rest), window (consecutive windows), or pack "
    "(documents joined, cut into windows of exactly --max-length).",
)
@click.option("--out", required=True, help="Output store: PATH.zarr or PATH.h5.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Sequences per forward pass.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Finish an interrupted store (made on the same device type at the same --precision).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@lease_wait_option()
@device_option("Where the teachers run: ")
@precision_option(
    tuple(PRECISIONS),
    default="fp32",
    help="Precision of the teachers' forward pass (autocast); logits are kept in float32. The "
    "store records it, and bitwise equality (--resume, torchrun) holds only at one precision.",
)
@sparse_options(tokens=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_lm_cmd(
    teachers: tuple[str, ...],
    combine: str | None,
    weights: tuple[float, ...] | None,
    text: str | None,
    tokenizer: str | None,
    text_field: str,
    prompt_field: str | None,
    messages_field: str | None,
    special_tokens: bool,
    tokens: str | None,
    split: str,
    max_length: int,
    window: str,
    out: str,
    chunk_rows: int,
    batch_size: int,
    resume: bool,
    overwrite: bool,
    lease_wait: float,
    device: str,
    precision: str,
    sparse: SparseSpec | None,
    quiet: bool,
) -> None:
    """Run causal-LM teachers over token sequences once and write a token store: row t holds
    the teachers' distribution over the token at t + 1 (with --top-k, sparse)."""
    from softlabels.lm.generate import generate_tokens

    if quiet:  # transformers' own "Loading weights" bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    if (text is None) == (tokens is None):
        raise click.UsageError("give --text (with --tokenizer) or --tokens, one of them")
    if text is not None and tokenizer is None:
        raise click.UsageError("--text needs --tokenizer (a tokenizer.json or a tokenizer folder)")
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; pick one")
    was_complete = store_was_complete(out, resume)
    if text is not None:
        seqs = load_sequences(
            text,
            tokenizer,  # type: ignore[arg-type]
            split=split,
            text_field=text_field,
            prompt_field=prompt_field,
            messages_field=messages_field,
            add_special_tokens=special_tokens,
        )
    else:
        seqs = load_tokens(tokens, split=split)  # type: ignore[arg-type]
    store = generate_tokens(
        list(teachers),
        seqs,
        out,
        max_length=max_length,
        window=window,
        combine=combine,
        weights=weights,
        sparse=sparse,
        chunk_rows=chunk_rows,
        batch_size=batch_size,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
        device=device,
        precision=precision,
        lease_wait=lease_wait,
    )
    with store:
        meta = store.meta
    layout = "dense" if meta.sparse is None else describe_sparse(meta.sparse)
    summary = f"{meta.num_samples} token rows over {meta.num_classes} ids, {layout}, "
    report_store(out, summary + f"{meta.num_members} teacher(s)", was_complete=was_complete)
