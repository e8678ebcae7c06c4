"""The BENCHMARKS.md section of `make distill-lm` (``bench.lm``), from its results."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from bench.common import goal_table, put_section

SECTION = "## Language models (`make distill-lm`)"
PYTHON_DOCS = "/usr/share/doc/python3.11/html/_sources"  # make distill-lm's corpus (PYDOCS)


def corpus_words(docs: str) -> str:
    """What the corpus in ``docs`` is, in words: the Python documentation only when it is."""
    if os.path.normpath(docs) == PYTHON_DOCS:
        return "the Python documentation's reST sources, Debian `python3.11-doc`"
    return f"a corpus of your own: the `.rst.txt` files under `{docs}`, or else its `.txt` files"


def report_section(res: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for these results."""
    c, t = res["config"], res["teacher_test"]
    rows = [
        ("(a) next-token cross-entropy", "ce"),
        ("(b) distilled, sparse store", "kd_sparse"),
        ("(b') the same store, `bucket` replay", "kd_sparse_bucket"),
        ("(c) distilled, dense store", "kd_dense"),
    ]
    lines = [
        SECTION,
        "",
        f"`python -m bench.lm --docs {c['docs']} --out {c['out']}` ({corpus_words(c['docs'])}). "
        f"BPE tokenizer with {c['vocab_size']} ids trained "
        f"here; GPT-2 teacher, width {c['teacher_width']}, {c['teacher_layers']} layers, trained on "
        f"{res.get('teacher_tokens', c['teacher_tokens']):,} tokens: test perplexity "
        f"{t['eval_ppl']:.2f}. Students: width "
        f"{c['student_width']}, {c['student_layers']} layers, {c['student_epochs']} epochs over the "
        f"same {res['transfer_tokens']:,} transfer tokens, T = {c['temperature']:g}, alpha "
        f"{c['alpha']} on the next-token CE; perplexity on {res['test_tokens']:,} test tokens, "
        f"{len(c['seeds'])} seeds.",
        "",
        "| student | test perplexity | next-token accuracy | agreement with the teacher "
        "| KL(teacher ‖ student) |",
        "|---|---|---|---|---|",
    ]
    for label, key in rows:
        runs = res["students"][key]

        def mean(name: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.mean(r[name] for r in runs)

        lines.append(
            f"| {label} | {res[f'ppl_{key}']:.2f} ± {res[f'ppl_{key}_std']:.2f} | "
            f"{100 * mean('eval_accuracy'):.2f}% | {100 * mean('teacher_agreement'):.2f}% | "
            f"{mean('teacher_kl'):.3f} |"
        )
    lines += [
        "",
        "Agreement and KL are on the test split, against a sparse store of the teacher made "
        "there (KL at T = 1 over the stored ids plus the tail bucket).",
        "",
        f"- Sparse store (top {c['top_k']} + {c['sample']} sampled, "
        f"{c['top_k'] + c['sample']} entries per token; (b) replays it with "
        f"{c.get('estimator') or 'the default, importance at T <= T_q'}): "
        f"**{res['bytes_per_token']:.1f} bytes per token**; the dense float32 store: "
        f"{res['dense_bytes_per_token']:.0f}.",
        f"- Stage one against the teacher's bare forward pass over the same batches: "
        f"**{res['stage1_over_inference']:.2f}×** ({res['stage1_seconds']:.1f} s against "
        f"{res['bare_seconds']:.1f} s).",
        f"- KD step from the sparse store against a CE step (median epoch seconds, "
        f"{len(res['step_seconds']['ce'])} interleaved rounds, each timing a second epoch): "
        f"**{res['kd_step_over_ce_step']:.3f}×** (dense store: "
        f"{res['kd_dense_step_over_ce_step']:.3f}×).",
        "",
        *goals(res),
    ]
    return "\n".join(lines)


def goals(res: dict[str, Any]) -> list[str]:
    """The issue's targets against this run's figures."""
    gap = res["ppl_ce"] - res["ppl_kd_sparse"]
    noise = res["ppl_ce_std"] + res["ppl_kd_sparse_std"]
    rel = res["ppl_kd_sparse"] / res["ppl_kd_dense"] - 1 if res.get("ppl_kd_dense") else None
    rows = [
        (
            "(b) beats (a) by more than the seed noise",
            f"{gap:.1f} lower (noise {noise:.1f})",
            gap > noise,
        ),
        (
            "(b) within 2% of (c)",
            "n/a" if rel is None else f"{100 * rel:+.2f}%",
            rel is not None and rel <= 0.02,
        ),
        (
            "bytes per token at k = 64 ≤ 128",
            f"{res['bytes_per_token']:.1f}",
            res["bytes_per_token"] <= 128,
        ),
        (
            "KD step ≤ 1.10× a CE step",
            f"{res['kd_step_over_ce_step']:.3f}×",
            res["kd_step_over_ce_step"] <= 1.10,
        ),
        (
            "stage one ≤ 1.05× the bare forward pass",
            f"{res['stage1_over_inference']:.2f}×",
            res["stage1_over_inference"] <= 1.05,
        ),
    ]
    return [*goal_table(rows), ""]


def write_section(res: dict[str, Any], report: Path) -> None:
    """Put the section into ``report``, replacing an earlier one."""
    put_section(report, SECTION, report_section(res))
