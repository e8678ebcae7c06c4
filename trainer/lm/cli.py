"""`distill train-lm`: a causal-LM student from a token store (or next-token CE alone)."""

from __future__ import annotations

import json
from contextlib import ExitStack

import click

from softlabels.clihelp import device_option, precision_option, special_tokens_option
from softlabels.device import resolve_device
from softlabels.errors import SpecError
from softlabels.lm.models import check_tokenizers, teacher_tokenizer
from softlabels.lm.sources import load_sequences
from softlabels.lm.text import TokenSequences, load_tokens
from softlabels.lm.tokenizer import TokenizerInfo, load_tokenizer
from softlabels.schema import TokenSpec
from softlabels.store import open_store
from trainer.divergences import DIVERGENCES
from trainer.lm.schedule import SCHEDULES
from trainer.lm.students import BUILTIN, SpecialIds, load_student, save_student
from trainer.lm.train import STUDENT_PRECISIONS, LMConfig, train_lm
from trainer.train import prepare_out


def _sequences(
    text: str | None,
    tokenizer: TokenizerInfo | str | None,  # a path for chat records (their template)
    tokens: str | None,
    split: str,
    text_field: str,
    prompt_field: str | None,
    messages_field: str | None = None,
    special_tokens: bool = True,
) -> TokenSequences:
    if (text is None) == (tokens is None):
        raise click.UsageError("give --text (with --tokenizer) or --tokens, one of them")
    if text is not None:
        if tokenizer is None:
            raise click.UsageError("--text needs --tokenizer")
        return load_sequences(
            text,
            tokenizer,
            split=split,
            text_field=text_field,
            prompt_field=prompt_field,
            messages_field=messages_field,
            add_special_tokens=special_tokens,
        )
    if prompt_field is not None or messages_field is not None:
        raise click.UsageError("--prompt-field and --messages-field apply to --text")
    return load_tokens(tokens, split=split)  # type: ignore[arg-type]


def _special_ids(spec: TokenSpec, seqs: TokenSequences) -> SpecialIds:
    """The tokenizer's ids for the student's config: as the sequences were encoded, else as the
    store recorded them (pre-tokenised sequences)."""
    made_here = seqs.add_special_tokens is not None
    return SpecialIds(
        bos=seqs.bos_id if made_here else spec.bos_id,
        eos=seqs.eos_id if made_here else spec.eos_id,
        pad=seqs.pad_id if seqs.pad_id is not None else spec.pad_id,
    )


@click.command("train-lm")
@click.option("--store", required=True, help="Token store written by `softlabels generate-lm`.")
@click.option(
    "--text", default=None, help="The documents the store was made from (file or split folder)."
)
@click.option("--tokenizer", default=None, help="With --text: the store's tokenizer.")
@click.option(
    "--tokens", default=None, help="Instead of --text: the pre-tokenised .npz, .zarr or .h5."
)
@click.option(
    "--text-field", default="text", show_default=True, help="The .jsonl field holding the text."
)
@click.option(
    "--prompt-field",
    default=None,
    help="The .jsonl field holding a prompt that precedes the text: rows predicting a prompt "
    "token take no loss (give the same field generate-lm was given).",
)
@special_tokens_option()
@click.option(
    "--messages-field",
    default=None,
    help="Chat records: the column of messages (give the same field generate-lm was given); "
    "only rows predicting assistant tokens take a loss.",
)
@click.option(
    "--eval-split",
    type=click.Choice(["test", "none"]),
    default="test",
    show_default=True,
    help="Report perplexity and next-token accuracy on the test split after each epoch.",
)
@click.option(
    "--eval-store",
    default=None,
    help="A token store of the test split (generate-lm --split test): also report agreement "
    "and KL with the teacher.",
)
@click.option(
    "--student",
    default=BUILTIN,
    show_default=True,
    help="'gpt' (the built-in GPT-2, sized by --width/--layers), hf:DIR (a local transformers "
    "causal LM, safetensors weights) or module:function (called with vocab_size= and "
    "max_length=, returning an nn.Module of (B, L) ids and an attention mask to (B, L, V)).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Distillation temperature T. A sparse store with sampled ids replays best at T <= its "
    "proposal temperature (1 by default; BENCHMARKS.md, Language models).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the next-token CE; 1 - alpha on KD.",
)
@click.option(
    "--estimator",
    type=click.Choice(["bucket", "importance", "ht"]),
    default=None,
    help="Sparse stores with sampled ids: how they stand in for the tail. Default: importance "
    "at T <= the proposal's temperature, bucket above it.",
)
@click.option(
    "--loss",
    type=click.Choice(DIVERGENCES),
    default="forward-kl",
    show_default=True,
    help="The KD term at T: forward-kl KL(teacher || student) (mass-covering), reverse-kl "
    "KL(student || teacher) (mode-seeking) or jsd, the generalised Jensen-Shannon divergence "
    "weighted by --jsd-beta. A sparse store's ids plus the tail bucket stand in for the "
    "vocabulary; reverse-kl and jsd take the bucket estimator only.",
)
@click.option(
    "--jsd-beta",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="With --loss jsd: the teacher's weight in the mixture, as TRL's beta (0: forward KL, "
    "1: reverse KL).",
)
@click.option(
    "--ce-only", is_flag=True, help="The baseline: next-token cross-entropy only, no soft targets."
)
@click.option(
    "--width",
    type=click.IntRange(min=8),
    default=64,
    show_default=True,
    help="Width of the built-in student.",
)
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Layers of the built-in student.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Passes over the store's sequences.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Sequences per step.",
)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="AdamW learning rate.")
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default="constant",
    show_default=True,
    help="Learning rate after the warmup: constant, or cosine down to 0 at the last step.",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Optimizer steps of linear warmup from 0 to --lr.",
)
@click.option(
    "--accumulation",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batches per optimizer step (gradient accumulation): memory of one --batch-size, "
    "the step of --accumulation times as many sequences.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds the order and the student."
)
@click.option(
    "--out",
    required=True,
    help="Output folder: metrics.json, last.pt (the state after each epoch, for --resume) and "
    "the student (OUT/student, a transformers folder that also holds --tokenizer's files, so "
    "AutoTokenizer loads it; or OUT/student.safetensors). A non-empty "
    "folder needs --resume or --overwrite.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out after its last finished epoch (same options and store).",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@device_option("Where the student trains and is evaluated: ")
@precision_option(
    STUDENT_PRECISIONS,
    default="fp32",
    help="The student's forward pass, in training and evaluation (bf16: autocast); the loss is "
    "computed in float32. A run resumes only at the precision it started with.",
)
def train_lm_cmd(
    store: str,
    text: str | None,
    tokenizer: str | None,
    tokens: str | None,
    text_field: str,
    prompt_field: str | None,
    messages_field: str | None,
    special_tokens: bool,
    eval_split: str,
    eval_store: str | None,
    student: str,
    temperature: float,
    alpha: float,
    estimator: str | None,
    loss: str,
    jsd_beta: float,
    ce_only: bool,
    width: int,
    layers: int,
    epochs: int,
    batch_size: int,
    lr: float,
    schedule: str,
    warmup_steps: int,
    accumulation: int,
    seed: int,
    out: str,
    resume: bool,
    overwrite: bool,
    device: str,
    precision: str,
) -> None:
    """Train a causal-LM student on a token store's sequences: KD from its soft targets at T
    plus next-token CE (or CE alone), with validation perplexity on the test split.

    \b
    softlabels generate-lm --teacher hf:teacher --text docs/ --tokenizer tok.json \\
        --max-length 256 --top-k 64 --sample 16 --out lm.zarr
    distill train-lm --store lm.zarr --text docs/ --tokenizer tok.json --out runs/kd
    """
    import torch

    if eval_store is not None and eval_split == "none":
        raise click.UsageError("--eval-store evaluates on the test split; drop --eval-split none")
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; pick one")
    resolve_device(device)  # an absent device fails here, before --out is made
    folder = prepare_out(out, resume=resume, overwrite=overwrite)
    with ExitStack() as stack:
        reader = stack.enter_context(open_store(store))
        spec = reader.meta.tokens
        if spec is None:
            raise click.UsageError(f"{store} is not a token store; make one with generate-lm")
        # chat records render through the tokenizer folder (its chat template): give the path
        tok = None if tokenizer is None or text is None else load_tokenizer(tokenizer)
        load = (text, tokenizer if messages_field is not None else tok, tokens)
        train = _sequences(
            *load,
            reader.meta.transfer.split,
            text_field,
            prompt_field,
            messages_field,
            special_tokens,
        )
        test = None
        if eval_split != "none":
            try:
                test = _sequences(
                    *load, "test", text_field, prompt_field, messages_field, special_tokens
                )
            except SpecError as exc:
                raise click.UsageError(
                    f"no test split to evaluate on ({exc}); give one, or --eval-split none"
                ) from exc
        check_tokenizers({student: teacher_tokenizer(student)}, train, role="student")
        held_out = None if eval_store is None else stack.enter_context(open_store(eval_store))
        torch.manual_seed(seed)
        model = load_student(
            student,
            vocab_size=reader.meta.num_classes,
            max_length=spec.max_length,
            width=width,
            layers=layers,
            special=_special_ids(spec, train),
        )
        config = LMConfig(
            temperature=temperature,
            alpha=alpha,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            schedule=schedule,
            warmup_steps=warmup_steps,
            accumulation=accumulation,
            seed=seed,
            kd=not ce_only,
            estimator=estimator,
            loss=loss,
            jsd_beta=jsd_beta,
            device=device,
            precision=precision,
        )
        # train_lm cuts both as the store's were, and checks them against it
        history = train_lm(
            model,
            reader,
            train,
            config,
            eval_seqs=test,
            eval_store=held_out,
            checkpoint=folder / "last.pt",
        )
    (folder / "metrics.json").write_text(json.dumps(history, indent=2))
    saved = save_student(model, folder, tokenizer=tok)
    last = history[-1]
    ppl = f", eval perplexity {last['eval_ppl']:.2f}" if "eval_ppl" in last else ""
    if "teacher_agreement" in last:
        ppl += f", agreement {last['teacher_agreement']:.3f}, KL {last['teacher_kl']:.4f}"
    click.echo(f"trained {epochs} epoch(s): train loss {last['train_loss']:.4f}{ppl}; {saved}")
