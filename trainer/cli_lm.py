"""`distill train-lm`: a causal-LM student from a token store (or next-token CE alone)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from softlabels.store import open_store
from softlabels.text import TokenSequences, load_text, load_tokens
from trainer.lm_train import LMConfig, check_sequences, gpt_student, train_lm


def _sequences(
    text: str | None, tokenizer: str | None, tokens: str | None, split: str
) -> TokenSequences:
    if (text is None) == (tokens is None):
        raise click.UsageError("give --text (with --tokenizer) or --tokens, one of them")
    if text is not None:
        if tokenizer is None:
            raise click.UsageError("--text needs --tokenizer")
        return load_text(text, tokenizer, split=split)
    return load_tokens(tokens, split=split)  # type: ignore[arg-type]


@click.command("train-lm")
@click.option("--store", required=True, help="Token store written by `softlabels generate-lm`.")
@click.option(
    "--text", default=None, help="The documents the store was made from (file or split folder)."
)
@click.option("--tokenizer", default=None, help="With --text: the store's tokenizer.")
@click.option("--tokens", default=None, help="Instead of --text: the pre-tokenised .npz/.zarr/.h5.")
@click.option(
    "--eval-split", type=click.Choice(["test", "none"]), default="test", show_default=True
)
@click.option(
    "--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the next-token CE; 1 - alpha on KD.",
)
@click.option(
    "--ce-only", is_flag=True, help="The baseline: next-token cross-entropy only, no soft targets."
)
@click.option(
    "--width",
    type=click.IntRange(min=8),
    default=64,
    show_default=True,
    help="Student width (GPT-2).",
)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Sequences per step.",
)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, help="Output folder: metrics.json.")
def train_lm_cmd(
    store: str,
    text: str | None,
    tokenizer: str | None,
    tokens: str | None,
    eval_split: str,
    temperature: float,
    alpha: float,
    ce_only: bool,
    width: int,
    layers: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    out: str,
) -> None:
    """Train a small GPT student on a token store's sequences: KD from its soft targets at T
    plus next-token CE (or CE alone), with validation perplexity on the test split."""
    import torch

    with open_store(store) as reader:
        spec = reader.meta.tokens
        if spec is None:
            raise click.UsageError(f"{store} is not a token store; make one with generate-lm")
        train = _sequences(text, tokenizer, tokens, reader.meta.transfer.split)
        seqs = train.window(spec.max_length, spec.window)
        check_sequences(reader, seqs)
        evals = None
        if eval_split != "none":
            evals = _sequences(text, tokenizer, tokens, "test").window(spec.max_length, spec.window)
        torch.manual_seed(seed)
        student = gpt_student(
            reader.meta.num_classes, max_length=spec.max_length, width=width, layers=layers
        )
        config = LMConfig(
            temperature=temperature,
            alpha=alpha,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            kd=not ce_only,
        )
        history = train_lm(student, reader, seqs, config, eval_seqs=evals)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "metrics.json").write_text(json.dumps(history, indent=2))
    last = history[-1]
    ppl = f", eval perplexity {last['eval_ppl']:.2f}" if "eval_ppl" in last else ""
    click.echo(f"trained {epochs} epoch(s): train loss {last['train_loss']:.4f}{ppl}")
