"""`make distill-lm`: distil a small causal LM from a larger one through a sparse token store.

    python -m bench.lm --docs /usr/share/doc/python3.11/html/_sources --out data/lm

1. Corpus: the paragraphs of the Python documentation's reST sources (Debian `python3.11-doc`);
   every 10th file (sorted) is the test split.
2. A byte-level BPE tokenizer (8,192 ids) trained here; a GPT-2 teacher trained here on
   ``teacher_tokens`` tokens of the training split (a few minutes on 2 cores).
3. Stage one over ``transfer_tokens`` tokens: a sparse store (K = 64 entries per token: the top
   48 and 16 sampled ids) and a dense store of the same teacher (it fits at this size); and a
   sparse store of the test split, for the students' agreement and KL with the teacher.
4. Students (GPT-2, narrower and shallower) over 3 seeds, same tokens and epochs: (a) next-token
   cross-entropy, (b) distilled from the sparse store, (b') the same with the `bucket` replay,
   (c) from the dense store.
Writes ``OUT/results.json`` (ppl_ce, ppl_kd_sparse, ppl_kd_dense, bytes_per_token,
kd_step_over_ce_step, stage1_over_inference, and the details).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.lm_report import write_section
from softlabels.lm.generate import generate_tokens
from softlabels.lm.models import load_hf, sequence_logits
from softlabels.lm.text import TokenSequences, load_text
from softlabels.schema import SparseSpec
from softlabels.store import open_store
from trainer.lm.train import LMConfig, evaluate_lm, gpt_student, train_lm


@dataclass(frozen=True)
class LMBench:
    docs: str
    out: str = "data/lm"
    vocab_size: int = 8192
    max_length: int = 64
    teacher_width: int = 192
    teacher_layers: int = 4
    teacher_tokens: int = 1_200_000
    teacher_epochs: int = 1
    transfer_tokens: int = 120_000
    test_tokens: int = 30_000
    student_width: int = 64
    student_layers: int = 2
    student_epochs: int = 4
    temperature: float = 1.0
    alpha: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)
    top_k: int = 48  # + ``sample`` sampled ids: K = 64 entries per token
    sample: int = 16
    estimator: str | None = None  # (b)'s replay; None: the default (importance at T <= T_q)
    cache_bytes: int = 8 << 30  # the students keep every target in memory (the dense: ~4 GB)


def log(msg: str) -> None:
    print(f"[lm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_corpus(docs: Path, out: Path) -> Path:
    """train.txt / test.txt: one paragraph per line; every 10th source file is test. The
    sources are the ``.rst.txt`` files under ``docs``, or else its ``.txt`` files."""
    files = sorted(docs.rglob("*.rst.txt")) or sorted(docs.rglob("*.txt"))
    if not files:
        raise SystemExit(
            f"no .rst.txt or .txt files under {docs}: install python3.11-doc, or give --docs"
        )
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for i, f in enumerate(files):
        for block in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            text = " ".join(block.split())
            if len(text) >= 40:
                splits["test" if i % 10 == 9 else "train"].append(text)
    for name, paragraphs in splits.items():
        (out / f"{name}.txt").write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    return out


def train_tokenizer(corpus: Path, path: Path, vocab_size: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(corpus / "train.txt")], trainer)
    tok.save(str(path))
    return path


def first_tokens(seqs: TokenSequences, n: int) -> TokenSequences:
    """The whole sequences that fit in the first ``n`` tokens."""
    s = int(np.searchsorted(seqs.offsets, n, side="right")) - 1
    s = max(1, s)
    end = int(seqs.offsets[s])
    return replace(seqs, ids=seqs.ids[:end], offsets=seqs.offsets[: s + 1].copy())


def train_teacher(c: LMBench, seqs: TokenSequences, folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    teacher = gpt_student(
        seqs.vocab_size or c.vocab_size,
        max_length=c.max_length,
        width=c.teacher_width,
        layers=c.teacher_layers,
    )
    config = LMConfig(kd=False, epochs=c.teacher_epochs, batch_size=16, lr=2e-3)
    history = train_lm(teacher, None, seqs, config)
    log(f"teacher: {history}")
    teacher.model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def bare_inference_seconds(teacher: str, seqs: TokenSequences, batch_size: int) -> float:
    """The teacher's forward pass over the same sequences and batches, logits to the host."""
    module = load_hf(teacher)
    t0 = time.perf_counter()
    for s in range(0, len(seqs), batch_size):
        sequence_logits(
            module, [seqs.sequence(i) for i in range(s, min(s + batch_size, len(seqs)))]
        )
    return time.perf_counter() - t0


def run(c: LMBench) -> dict[str, Any]:
    out = Path(c.out)
    corpus = write_corpus(Path(c.docs), out / "corpus")
    tok = out / "tokenizer.json"
    if not tok.exists():
        log("training the tokenizer")
        train_tokenizer(corpus, tok, c.vocab_size)
    train_all = load_text(str(corpus), str(tok)).window(c.max_length, "window")
    test = first_tokens(
        load_text(str(corpus), str(tok), split="test").window(c.max_length, "window"), c.test_tokens
    )
    teacher_seqs = first_tokens(train_all, c.teacher_tokens)
    log(f"teacher: {teacher_seqs.num_tokens} tokens")
    teacher = f"hf:{train_teacher(c, teacher_seqs, out / 'teacher')}"
    teacher_ppl = evaluate_lm(load_hf(teacher), test)
    transfer = first_tokens(train_all, c.transfer_tokens)
    res: dict[str, Any] = {
        "config": asdict(c),
        "teacher_test": teacher_ppl,
        "teacher_tokens": teacher_seqs.num_tokens,  # what the corpus gave, up to the config's
        "transfer_tokens": transfer.num_tokens,
        "test_tokens": test.num_tokens,
    }
    log("stage one: sparse and dense stores")
    spec = SparseSpec(top_k=c.top_k, sample=c.sample)
    common = {
        "max_length": c.max_length,
        "window": "window",
        "batch_size": 16,
        "overwrite": True,
        "progress": False,
    }
    t0 = time.perf_counter()
    generate_tokens([teacher], transfer, out / "sparse.zarr", sparse=spec, **common).close()
    stage1 = time.perf_counter() - t0
    bare = bare_inference_seconds(teacher, transfer, 16)
    with open_store(out / "sparse.zarr") as s:
        res["bytes_per_token"] = s.nbytes_on_disk() / transfer.num_tokens
    generate_tokens([teacher], transfer, out / "dense.zarr", **common).close()
    with open_store(out / "dense.zarr") as s:
        res["dense_bytes_per_token"] = s.nbytes_on_disk() / transfer.num_tokens
    generate_tokens([teacher], test, out / "test-sparse.zarr", sparse=spec, **common).close()
    res["stage1_seconds"], res["bare_seconds"] = stage1, bare
    res["stage1_over_inference"] = stage1 / bare
    base = LMConfig(
        temperature=c.temperature,
        alpha=c.alpha,
        epochs=c.student_epochs,
        batch_size=16,
        lr=3e-3,
        estimator=c.estimator,
        cache_bytes=c.cache_bytes,
    )
    held_out = open_store(out / "test-sparse.zarr")
    arms = {
        "ce": (None, False, None),
        "kd_sparse": ("sparse.zarr", True, c.estimator),
        "kd_sparse_bucket": ("sparse.zarr", True, "bucket"),
        "kd_dense": ("dense.zarr", True, None),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    for seed in c.seeds:
        for name, (store, kd, estimator) in arms.items():
            log(f"student {name} seed {seed}")
            student = _student(c, transfer, seed)
            config = replace(base, seed=seed, kd=kd, estimator=estimator)
            reader = None if store is None else open_store(out / store)
            try:
                history = train_lm(
                    student, reader, transfer, config, eval_seqs=test, eval_store=held_out
                )
            finally:
                if reader is not None:
                    reader.close()
            runs[name].append(
                history[-1] | {"epoch_seconds_all": [h["epoch_seconds"] for h in history]}
            )
    held_out.close()
    res["students"] = runs
    for name in runs:
        ppl = [r["eval_ppl"] for r in runs[name]]
        res[f"ppl_{name}"] = statistics.mean(ppl)
        res[f"ppl_{name}_std"] = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
    res.update(step_ratios(c, transfer, base))
    return res


def _student(c: LMBench, transfer: TokenSequences, seed: int) -> torch.nn.Module:
    """The students' one architecture, initialised from ``seed``."""
    torch.manual_seed(seed)
    return gpt_student(
        transfer.vocab_size or c.vocab_size,
        max_length=c.max_length,
        width=c.student_width,
        layers=c.student_layers,
    )


def step_ratios(
    c: LMBench, transfer: TokenSequences, base: LMConfig, rounds: int = 3
) -> dict[str, Any]:
    """KD epochs (sparse store, dense store) against CE epochs, interleaved round by round so
    that machine drift hits them alike; the ratios of the median epoch seconds. Each round
    trains two epochs and times the second: the first reads and replays the store's targets
    into memory, once per run."""
    out = Path(c.out)
    seconds: dict[str, list[float]] = {"ce": [], "kd_sparse": [], "kd_dense": []}
    stores = {"kd_sparse": "sparse.zarr", "kd_dense": "dense.zarr"}
    readers = {name: open_store(out / path) for name, path in stores.items()}
    try:
        for _ in range(rounds):
            for name in seconds:
                student = _student(c, transfer, 0)
                config = replace(base, epochs=2, kd=name != "ce")
                history = train_lm(student, readers.get(name), transfer, config)
                seconds[name].append(history[1]["epoch_seconds"])
    finally:
        for r in readers.values():
            r.close()
    median = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "step_seconds": seconds,
        "kd_step_over_ce_step": median["kd_sparse"] / median["ce"],
        "kd_dense_step_over_ce_step": median["kd_dense"] / median["ce"],
    }


def only_steps(c: LMBench) -> dict[str, Any]:
    """``step_ratios`` again, merged into the results.json of the run in ``c.out``."""
    res = json.loads(Path(c.out, "results.json").read_text())
    run_config = LMBench(**{**res["config"], "seeds": tuple(res["config"]["seeds"])})
    corpus = Path(c.out) / "corpus"
    train_all = load_text(str(corpus), str(Path(c.out) / "tokenizer.json"))
    transfer = first_tokens(
        train_all.window(run_config.max_length, "window"), run_config.transfer_tokens
    )
    base = LMConfig(
        temperature=run_config.temperature,
        alpha=run_config.alpha,
        batch_size=16,
        lr=3e-3,
        estimator=run_config.estimator,
        cache_bytes=run_config.cache_bytes,
    )
    return res | step_ratios(run_config, transfer, base)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--docs", default="/usr/share/doc/python3.11/html/_sources")
    p.add_argument("--out", default="data/lm")
    p.add_argument("--quick", action="store_true", help="Tiny sizes, for the smoke test.")
    p.add_argument("--report", default=None, help="Also write the section into this markdown file.")
    p.add_argument(
        "--only-steps",
        action="store_true",
        help="Re-measure the KD/CE step ratios only, on the stores of an earlier run in --out, "
        "and update its results.json (and --report).",
    )
    a = p.parse_args()
    c = LMBench(docs=a.docs, out=a.out)
    if a.quick:
        c = replace(
            c,
            vocab_size=400,
            teacher_width=32,
            teacher_layers=1,
            teacher_tokens=4000,
            transfer_tokens=2000,
            test_tokens=1000,
            student_width=16,
            student_layers=1,
            student_epochs=1,
            seeds=(0,),
            max_length=32,
        )
    res = only_steps(c) if a.only_steps else run(c)
    Path(c.out, "results.json").write_text(json.dumps(res, indent=2))
    if a.report:
        write_section(res, Path(a.report))
    log(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
