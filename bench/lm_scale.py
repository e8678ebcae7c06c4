"""Stage one and stage two of token stores against the vocabulary size (issue: LM scale).

    python -m bench.lm_scale --vocab 8192,32768,131072 --rounds 3 --out bench/lm_scale.json

For each vocabulary size V, a random-init GPT-2 teacher (width 512, 6 layers: the shape the
issue measured) over random 256-token sequences, and these, each in a fresh process so its peak
RSS is its own, in interleaved rounds (medians):

* ``bare``: the teacher's forward pass over the sequences, logits to the host;
* ``stage1``: ``generate_tokens`` to a top-64 sparse store (what this project does: format
  version 6, whose ids and tails come from the raw logits);
* ``stage1-v5``: the same store with decoded selection (format version 5, every logit coded),
  for comparison;
* ``capture``: forward, ``torch.topk`` of the log-probabilities and a Parquet write of ids and
  logprobs (what a user writes instead; pyarrow, the bench-only extra ``softlabels[bench]``);
* ``kd`` and ``ce``: a student's step, KD from the top-64 store or CE alone, both with the
  chunked loss that ``train_lm`` uses (each in its own process, for its peak RSS).

Prints a table of ratios to ``bare`` and peak RSS, and writes the figures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

WIDTH, LAYERS, LENGTH, TOP_K = 512, 6, 256, 64


def _teacher(vocab: int, device: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    from softlabels.lm.models import CausalLM

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab, n_positions=LENGTH, n_embd=WIDTH, n_layer=LAYERS, n_head=8
    )
    return CausalLM(GPT2LMHeadModel(config)).eval().to(device)  # (B, L) ids -> (B, L, V)


def _sequences(vocab: int, count: int):
    from softlabels.lm.text import TokenSequences

    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, count * LENGTH).astype(np.int64)
    offsets = np.arange(count + 1, dtype=np.int64) * LENGTH
    return TokenSequences("random", "train", ids, offsets, vocab_size=vocab)


def _batches(seqs, batch: int):
    for s in range(0, len(seqs), batch):
        yield np.stack([seqs.sequence(i) for i in range(s, min(s + batch, len(seqs)))])


def measure(mode: str, vocab: int, count: int, batch: int, device: str, work: Path) -> dict:
    """One measurement in this process: seconds, and the process's peak RSS."""
    import pyarrow as pa  # imported before the clock starts, as every mode's own imports
    import pyarrow.parquet as pq
    import zarr  # noqa: F401  (stage one's store library: a per-process cost, not per token)

    from softlabels.lm.generate import generate_tokens
    from softlabels.schema import SparseSpec

    teacher, seqs = _teacher(vocab, device), _sequences(vocab, count)
    out: dict[str, Any] = {"mode": mode, "vocab": vocab, "tokens": seqs.num_tokens}
    t0 = time.perf_counter()
    if mode == "bare":
        with torch.inference_mode():
            for ids in _batches(seqs, batch):
                teacher(torch.from_numpy(ids).to(device)).cpu()
    elif mode in ("stage1", "stage1-v5"):
        store = work / (f"s{vocab}.zarr" if mode == "stage1" else f"v5-{vocab}.zarr")
        selection = "raw" if mode == "stage1" else "decoded"
        generate_tokens(
            [teacher], seqs, store, max_length=LENGTH, batch_size=batch, overwrite=True,
            sparse=SparseSpec(top_k=TOP_K, selection=selection), progress=False,
        ).close()  # fmt: skip
        out["seconds"] = time.perf_counter() - t0
        out["root_zarr_json_bytes"] = (store / "zarr.json").stat().st_size
        out["bytes_per_token"] = _bytes(store) / seqs.num_tokens
    elif mode == "capture":
        writer = None
        with torch.inference_mode():
            for ids in _batches(seqs, batch):
                logits = teacher(torch.from_numpy(ids).to(device))
                values, top = torch.topk(torch.log_softmax(logits, -1), TOP_K, dim=-1)
                table = pa.table(
                    {
                        "input_ids": list(ids),
                        "top_ids": [r.reshape(-1) for r in top.cpu().numpy()],
                        "top_logprobs": [r.reshape(-1) for r in values.cpu().numpy()],
                    }
                )
                if writer is None:
                    writer = pq.ParquetWriter(work / f"c{vocab}.parquet", table.schema)
                writer.write_table(table)
        assert writer is not None
        writer.close()
    elif mode in ("kd", "ce"):
        out["step_s"] = _step_seconds(vocab, seqs, work / f"s{vocab}.zarr", batch, mode == "kd")
    out.setdefault("seconds", time.perf_counter() - t0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _step_seconds(vocab: int, seqs, store_path: Path, batch: int, kd: bool) -> float:
    """A student's step (KD from the top-64 store, or CE alone), the second epoch's mean; the
    loss is the chunked one (``LMConfig.loss_chunk_rows``), as train_lm uses by default."""
    from softlabels.store import open_store
    from trainer.lm.students import load_student
    from trainer.lm.train import LMConfig, train_lm

    with open_store(store_path) as store:
        torch.manual_seed(0)
        student = load_student("gpt", vocab_size=vocab, max_length=LENGTH, width=128, layers=2)
        history = train_lm(student, store, seqs, LMConfig(epochs=2, batch_size=batch, kd=kd))
    return history[-1]["epoch_seconds"] / -(-len(seqs) // batch)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", default="8192,32768,131072")
    p.add_argument(
        "--sequences",
        type=int,
        default=32,
        help="256-token sequences per run (enough that a store's fixed costs, such as hashing "
        "the teacher's weights, do not dominate)",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench/lm_scale.json")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # MODE: a child process
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        vocab = int(a.vocab)
        print(json.dumps(measure(a.one, vocab, a.sequences, a.batch, a.device, Path(a.work))))
        return
    modes = ["bare", "stage1", "stage1-v5", "capture"]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        for vocab in map(int, a.vocab.split(",")):
            for _ in range(a.rounds):
                for mode in modes:
                    runs.append(_child(mode, vocab, a, work))
            for _ in range(a.rounds):
                for mode in ("kd", "ce"):
                    runs.append(_child(mode, vocab, a, work))
    report = summarise(runs, a.device)
    Path(a.out).write_text(json.dumps({"runs": runs, "summary": report}, indent=1))
    print_table(report)


def _child(mode: str, vocab: int, a: argparse.Namespace, work: str) -> dict:
    cmd = [sys.executable, "-m", "bench.lm_scale", "--one", mode, "--vocab", str(vocab)]
    cmd += ["--sequences", str(a.sequences), "--batch", str(a.batch), "--device", a.device]
    cmd += ["--work", work]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"{mode} at V = {vocab} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def summarise(runs: list[dict], device: str) -> list[dict]:
    out = []
    for vocab in sorted({r["vocab"] for r in runs}):
        at = [r for r in runs if r["vocab"] == vocab]

        def med(mode: str, key: str = "seconds", at: list[dict] = at) -> float | None:
            values = [r[key] for r in at if r["mode"] == mode and key in r]
            return statistics.median(values) if values else None

        bare, stage1, capture = med("bare"), med("stage1"), med("capture")
        v5 = med("stage1-v5")
        row = {
            "vocab": vocab,
            "device": device,
            "tokens": med("bare", "tokens"),
            "bare_s": bare,
            "stage1_over_bare": stage1 / bare,
            "stage1_v5_over_bare": None if v5 is None else v5 / bare,
            "capture_over_bare": None if capture is None else capture / bare,
            "kd_step_over_ce_step": med("kd", "step_s") / med("ce", "step_s"),
            "rss_kd_over_ce": med("kd", "peak_rss_mb") / med("ce", "peak_rss_mb"),
            "rss_stage1_over_bare": med("stage1", "peak_rss_mb") / med("bare", "peak_rss_mb"),
            "peak_rss_mb": {
                m: med(m, "peak_rss_mb") for m in ("bare", "stage1", "capture", "kd", "ce")
            },
            "root_zarr_json_bytes": med("stage1", "root_zarr_json_bytes"),
            "bytes_per_token": med("stage1", "bytes_per_token"),
        }
        out.append(row)
    return out


def print_table(report: list[dict]) -> None:
    def cell(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    print(f"{'':34s}" + "".join(f"V = {r['vocab']:>8,d}  " for r in report))
    lines = [
        ("bare forward, s", "bare_s", ".2f"),
        ("stage one top-64 / bare", "stage1_over_bare", ".2f"),
        ("  the same, version 5 / bare", "stage1_v5_over_bare", ".2f"),
        ("forward+topk+Parquet / bare", "capture_over_bare", ".2f"),
        ("KD step / CE step", "kd_step_over_ce_step", ".2f"),
        ("peak RSS stage one / bare", "rss_stage1_over_bare", ".2f"),
        ("peak RSS KD step / CE step", "rss_kd_over_ce", ".2f"),
        ("root zarr.json, bytes", "root_zarr_json_bytes", ",.0f"),
        ("bytes per token", "bytes_per_token", ".1f"),
    ]
    for title, key, fmt in lines:
        print(f"{title:34s}" + "".join(f"{cell(r[key], fmt):>14s}  " for r in report))


if __name__ == "__main__":
    main()
