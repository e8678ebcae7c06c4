"""The KD losses of ``distill train-lm --loss`` against next-token CE, at a tiny scale on CPU.

    python -m bench.lm_losses --out data/lm-losses

1. Corpus: WordNet's glosses as timm ships them (``timm/data/_info``: "lemma: definition", one
   document per synset, 21,844 of them; every 10th is the test split). Nothing is downloaded.
2. A byte-level BPE tokenizer (``vocab_size`` ids) trained on the training split, and a GPT-2
   teacher trained here on its first ``teacher_tokens`` tokens (``bench.lm``'s helpers).
3. Stage one: a sparse store of the teacher's top ``top_k`` ids and tail, over the transfer
   tokens (one store: every loss replays it, with the bucket estimator).
4. Students (GPT-2, narrower and shallower), ``seeds`` seeds each, same tokens and epochs:
   next-token CE alone, and alpha CE + (1 - alpha) KD with the forward KL, the reverse KL and
   JSD(beta = 0.5). Test perplexity of each.

Writes ``OUT/results-<transfer>k-<epochs>ep.json`` (``ppl_<arm>`` mean and std over seeds, and the details).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.lm import LMBench, _student, first_tokens, log, train_teacher, train_tokenizer
from softlabels.lm.generate import generate_tokens
from softlabels.lm.models import load_hf
from softlabels.lm.text import load_text
from softlabels.schema import SparseSpec
from softlabels.store import open_store
from trainer.lm.train import LMConfig, evaluate_lm, train_lm


@dataclass(frozen=True)
class LossBench:
    out: str = "data/lm-losses"
    vocab_size: int = 2048
    max_length: int = 64
    teacher_width: int = 128
    teacher_layers: int = 2
    teacher_epochs: int = 1
    teacher_tokens: int = 300_000
    transfer_tokens: int = 40_000
    test_tokens: int = 10_000
    student_width: int = 32
    student_layers: int = 1
    student_epochs: int = 2
    temperature: float = 1.0
    alpha: float = 0.5
    jsd_beta: float = 0.5
    top_k: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)


ARMS = {"ce": None, "forward_kl": "forward-kl", "reverse_kl": "reverse-kl", "jsd": "jsd"}


def write_glosses(out: Path) -> Path:
    """train.txt / test.txt from timm's WordNet glosses: "lemma: definition" per line."""
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    lemmas = dict(_pairs(info / "imagenet_synset_to_lemma.txt"))
    docs = [
        f"{lemmas.get(s, '')}: {d}" for s, d in _pairs(info / "imagenet_synset_to_definition.txt")
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("\n".join(d for i, d in enumerate(docs) if i % 10) + "\n")
    (out / "test.txt").write_text("\n".join(d for i, d in enumerate(docs) if not i % 10) + "\n")
    return out


def _pairs(path: Path) -> list[tuple[str, str]]:
    rows = (line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines())
    return [(r[0], r[1].strip()) for r in rows if len(r) == 2 and r[1].strip()]


def run(c: LossBench) -> dict[str, Any]:
    out = Path(c.out)
    corpus = write_glosses(out / "corpus")
    tok = out / "tokenizer.json"
    if not tok.exists():
        train_tokenizer(corpus, tok, c.vocab_size)
    train_all = load_text(str(corpus), str(tok)).window(c.max_length, "window")
    test = first_tokens(
        load_text(str(corpus), str(tok), split="test").window(c.max_length, "window"),
        c.test_tokens,
    )
    shape = LMBench(
        docs="",
        vocab_size=c.vocab_size,
        max_length=c.max_length,
        teacher_width=c.teacher_width,
        teacher_layers=c.teacher_layers,
        teacher_epochs=c.teacher_epochs,
        student_width=c.student_width,
        student_layers=c.student_layers,
    )
    teacher_seqs = first_tokens(train_all, c.teacher_tokens)
    log(f"teacher: {teacher_seqs.num_tokens} tokens, {c.teacher_epochs} epoch(s)")
    t0 = time.perf_counter()
    teacher = f"hf:{train_teacher(shape, teacher_seqs, out / 'teacher')}"
    res: dict[str, Any] = {"config": asdict(c), "teacher_seconds": time.perf_counter() - t0}
    res["teacher_test"] = evaluate_lm(load_hf(teacher), test)
    transfer = first_tokens(train_all, c.transfer_tokens)
    res["transfer_tokens"], res["test_tokens"] = transfer.num_tokens, test.num_tokens
    store = out / "sparse.zarr"
    generate_tokens(
        [teacher],
        transfer,
        store,
        max_length=c.max_length,
        window="window",
        sparse=SparseSpec(top_k=c.top_k),
        batch_size=16,
        overwrite=True,
        progress=False,
    ).close()
    base = LMConfig(
        temperature=c.temperature,
        alpha=c.alpha,
        epochs=c.student_epochs,
        batch_size=16,
        lr=3e-3,
        jsd_beta=c.jsd_beta,
        device="cpu",
    )
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for seed in c.seeds:
        for arm, loss in ARMS.items():
            log(f"student {arm} seed {seed}")
            config = replace(base, seed=seed, kd=loss is not None, loss=loss or "forward-kl")
            with open_store(store) as reader:
                history = train_lm(
                    _student(shape, transfer, seed), reader, transfer, config, eval_seqs=test
                )
            runs[arm].append(history[-1])
    res["students"] = runs
    for arm, rows in runs.items():
        ppl = [r["eval_ppl"] for r in rows]
        res[f"ppl_{arm}"] = statistics.mean(ppl)
        res[f"ppl_{arm}_std"] = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=LossBench.out)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--transfer-tokens", type=int, default=LossBench.transfer_tokens)
    parser.add_argument("--student-epochs", type=int, default=LossBench.student_epochs)
    args = parser.parse_args()
    c = LossBench(
        out=args.out,
        seeds=tuple(range(args.seeds)),
        transfer_tokens=args.transfer_tokens,
        student_epochs=args.student_epochs,
    )
    res = run(c)
    name = f"results-{c.transfer_tokens // 1000}k-{c.student_epochs}ep.json"
    (Path(c.out) / name).write_text(json.dumps(res, indent=2))
    for arm in ARMS:
        print(f"{arm:>11}: test perplexity {res[f'ppl_{arm}']:.2f} ± {res[f'ppl_{arm}_std']:.2f}")


if __name__ == "__main__":
    main()
