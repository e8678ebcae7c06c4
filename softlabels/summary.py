"""`softlabels inspect`: a store's shapes, size, provenance, accuracy and soft-target entropy,
read chunk by chunk (memory is bounded by the chunk size, not by N)."""

from __future__ import annotations

from typing import Any

import numpy as np

from softlabels.store import open_store
from softlabels.store.reader import check_labels

ENTROPY_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)


def inspect_store(path: str) -> dict[str, Any]:
    """A JSON-able summary of a store (complete or not: stats cover committed chunks)."""
    with open_store(path, allow_incomplete=True) as store:
        meta = store.meta
        committed = store.committed_chunks()
        size = store.nbytes_on_disk()
        correct = np.zeros(meta.num_members + 1, dtype=np.int64)  # combined, then each member
        labelled = 0
        entropy = np.zeros(len(ENTROPY_TEMPERATURES))
        rows_seen = 0
        for chunk in np.flatnonzero(committed):
            rows = store.read_chunk(int(chunk))
            check_labels(rows.labels, meta.num_classes, offset=rows.start)
            has = rows.labels >= 0
            labelled += int(has.sum())
            correct[0] += int((rows.logits.argmax(1) == rows.labels)[has].sum())
            if rows.member_logits is not None:
                correct[1:] += (rows.member_logits.argmax(2) == rows.labels[:, None])[has].sum(0)
            for i, t in enumerate(ENTROPY_TEMPERATURES):
                logp = store.soft_targets(rows, t)
                entropy[i] += float(-(logp.exp() * logp).nan_to_num().sum())
            rows_seen += len(rows)
        accuracy = (correct / labelled).tolist() if labelled else None
        return {
            "path": str(path),
            "backend": store.kind,
            "format": meta.format,
            "format_version": meta.format_version,
            "complete": meta.complete,
            "committed_chunks": int(committed.sum()),
            "num_chunks": meta.num_chunks,
            "chunk_rows": meta.chunk_rows,
            "arrays": {k: list(v) for k, v in store.array_shapes().items()},
            "dtype": meta.dtype,
            "num_samples": meta.num_samples,
            "num_classes": meta.num_classes,
            "class_names": list(meta.class_names),
            "size_on_disk_bytes": size,
            "bytes_per_sample": None if size is None else size / meta.num_samples,
            "combine": meta.combine,
            "weights": list(meta.weights),
            "teachers": [
                {"name": t.name, "spec": t.spec, "sha256": t.sha256} for t in meta.teachers
            ],
            "transfer": {
                "name": meta.transfer.name,
                "split": meta.transfer.split,
                "fingerprint": meta.transfer.fingerprint,
            },
            "runtime": meta.runtime,
            "created_at": meta.created_at,
            "producer": meta.producer,
            "labelled_rows": labelled,
            "teacher_accuracy": None if accuracy is None else accuracy[0],
            "member_accuracy": None if accuracy is None or meta.num_members == 1 else accuracy[1:],
            "mean_entropy_nats": {
                f"T={t:g}": (entropy[i] / rows_seen if rows_seen else None)
                for i, t in enumerate(ENTROPY_TEMPERATURES)
            },
        }


def format_inspect(info: dict[str, Any]) -> str:
    lines = [
        f"{info['path']}  ({info['backend']}, {info['format']} v{info['format_version']})",
        f"  complete        {info['complete']}  ({info['committed_chunks']}/{info['num_chunks']} chunks of {info['chunk_rows']} rows committed)",
        f"  dtype           {info['dtype']}",
    ]
    lines += [f"  {name:<15} {tuple(shape)}" for name, shape in info["arrays"].items()]
    size = info["size_on_disk_bytes"]
    lines += [
        f"  size on disk    {size:,} bytes ({info['bytes_per_sample']:.1f} bytes/sample)"
        if size is not None
        else "  size on disk    unknown (remote store; sizes are not listed)",
        f"  combine         {info['combine']}  weights {[f'{w:.4g}' for w in info['weights']]}",
    ]
    for i, t in enumerate(info["teachers"]):
        acc = info["member_accuracy"][i] if info["member_accuracy"] else None
        acc_text = f"  top-1 {acc:.2%}" if acc is not None else ""
        lines.append(f"  teacher {i}       {t['name']}  sha256 {t['sha256'][:16]}...{acc_text}")
    tr = info["transfer"]
    lines.append(f"  transfer        {tr['name']} [{tr['split']}]  {tr['fingerprint'][:23]}...")
    if info["teacher_accuracy"] is not None:
        lines.append(
            f"  top-1 accuracy  {info['teacher_accuracy']:.2%} on {info['labelled_rows']} labelled rows"
        )
    else:
        lines.append("  top-1 accuracy  n/a (no labels stored)")
    ent = "  ".join(f"{k} {v:.3f}" for k, v in info["mean_entropy_nats"].items() if v is not None)
    lines.append(f"  mean entropy    {ent}  (nats; max {np.log(info['num_classes']):.3f})")
    rt = info.get("runtime")
    if rt:
        lines.append(
            f"  computed on     {rt.get('device')} at {rt.get('precision')}, torch {rt.get('torch')}"
        )
    lines.append(f"  created         {info['created_at']} by {info['producer']}")
    return "\n".join(lines)
