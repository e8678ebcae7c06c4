"""`softlabels inspect`: a store's shapes, size, provenance, accuracy and soft-target entropy,
read chunk by chunk (memory is bounded by the chunk size, not by N)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from softlabels import schema
from softlabels.sparse import SparseTargets
from softlabels.store import Rows, StoreReader, open_store
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
            with np.errstate(all="ignore"):
                top1, member_top1 = _top1(store, rows)
            correct[0] += int((top1 == rows.labels)[has].sum())
            if member_top1 is not None:
                correct[1:] += (member_top1 == rows.labels[:, None])[has].sum(0)
            with np.errstate(all="ignore"):  # unverified rows: a corrupt one may hold Inf
                for i, t in enumerate(ENTROPY_TEMPERATURES):
                    if _replayable(meta, t):
                        entropy[i] += _entropy(store.soft_targets(rows, t))
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
            "array_bytes": store.array_nbytes(),
            "layout": meta.layout,
            "sparse": None if meta.sparse is None else meta.sparse.to_attr(),
            "views": None if meta.views is None else meta.views.to_attr(),
            "bytes_per_entry": None
            if size is None or meta.sparse is None
            else size / (meta.num_samples * meta.sparse.k),
            "combine": meta.combine,
            "weights": list(meta.weights),
            "teachers": [
                {"name": t.name, "spec": t.spec, "sha256": t.sha256} for t in meta.teachers
            ],
            "transfer": {
                "name": meta.transfer.name,
                "split": meta.transfer.split,
                "fingerprint": meta.transfer.fingerprint,
                **(
                    {}
                    if meta.transfer.preprocess is None
                    else {"preprocess": meta.transfer.preprocess}
                ),
            },
            "runtime": meta.runtime,
            "created_at": meta.created_at,
            "producer": meta.producer,
            "labelled_rows": labelled,
            "teacher_accuracy": None if accuracy is None else accuracy[0],
            "member_accuracy": None if accuracy is None or meta.num_members == 1 else accuracy[1:],
            "mean_entropy_nats": {
                f"T={t:g}": (entropy[i] / rows_seen if rows_seen and _replayable(meta, t) else None)
                for i, t in enumerate(ENTROPY_TEMPERATURES)
            },
        }


def _top1(store: StoreReader, rows: Rows) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's top-1 class, and each member's (None for a single teacher). In a sparse
    store the members' top-1 is taken over the row's stored ids."""
    if not store.is_sparse:
        members = None if rows.member_logits is None else rows.member_logits.argmax(2)
        return rows.logits.argmax(1), members
    t = store.soft_targets(rows, 1.0, estimator="bucket")
    ids = t.ids.numpy()
    top1 = np.take_along_axis(ids, t.log_probs.argmax(1, keepdim=True).numpy(), 1)[:, 0]
    if store.meta.num_members == 1:
        return top1, None
    best = (
        rows.arrays[schema.VALUES].argmax(2)
        if store.meta.sparse.value_step is None
        else (
            rows.arrays[schema.VALUES].argmin(2)  # fixed point: the smallest code is the largest
        )
    )
    return top1, np.take_along_axis(ids[:, None, :], best[:, :, None], 2)[:, :, 0]


def _replayable(meta: Any, temperature: float) -> bool:
    """False at the temperatures an imported capture's store refuses (its tail is unknown)."""
    return meta.sparse is None or meta.sparse.replay_problem(temperature) is None


def _entropy(targets: torch.Tensor | SparseTargets) -> float:
    """Summed entropy of the rows' soft targets (sparse: over the ids plus the tail bucket,
    a lower bound on the full entropy)."""
    if isinstance(targets, SparseTargets):
        logp = torch.cat([targets.log_probs, targets.log_tail[:, None]], dim=1)
    else:
        logp = targets
    return float(-(logp.exp() * logp).nan_to_num().sum())


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
    sp = info["sparse"]
    if sp is not None:
        values = sp["values"]
        enc = f"fixed step {values['step']:g}" if values["encoding"] == "fixed" else info["dtype"]
        lines.append(
            f"  sparse          K={sp['k']} ({sp['policy']}: top {sp['top_k']}, sampled "
            f"{sp['sample']}), values {enc}, tail anchors T={sp['tail']['temperatures']}"
            + (
                f", replayed at T={sp['replay_temperatures']} only (an imported capture)"
                if sp.get("replay_temperatures")
                else ""
            )
        )
        if info["bytes_per_entry"] is not None:
            lines.append(
                f"  bytes/entry     {info['bytes_per_entry']:.3f}  ({info['bytes_per_sample']:.1f} "
                f"bytes/row, ids and tail summary included)"
            )
        per_array = ", ".join(
            f"{k} {v / info['num_samples']:.2f}"
            for k, v in info["array_bytes"].items()
            if v is not None
        )
        lines.append(f"  bytes/row by array  {per_array}")
    for i, t in enumerate(info["teachers"]):
        acc = info["member_accuracy"][i] if info["member_accuracy"] else None
        acc_text = f"  top-1 {acc:.2%}" if acc is not None else ""
        lines.append(f"  teacher {i}       {t['name']}  sha256 {t['sha256'][:16]}...{acc_text}")
    tr = info["transfer"]
    lines.append(f"  transfer        {tr['name']} [{tr['split']}]  {tr['fingerprint'][:23]}...")
    if tr.get("preprocess"):
        pre = ", ".join(f"{k}={v}" for k, v in tr["preprocess"].items())
        lines.append(f"  preprocess      {pre}")
    views = info.get("views")
    if views is not None:
        args = {k: v for k, v in views["policy"].items() if k != "name"}
        lines.append(
            f"  views           {views['views_per_sample']} per sample (row r: view r % "
            f"{views['views_per_sample']} of sample r // {views['views_per_sample']}), policy "
            f"{views['policy']['name']} {json.dumps(args)}, seed {views['seed']}, params "
            f"{views['param_names']}"
        )
    if info["teacher_accuracy"] is not None:
        lines.append(
            f"  top-1 accuracy  {info['teacher_accuracy']:.2%} on {info['labelled_rows']} labelled rows"
        )
    else:
        lines.append("  top-1 accuracy  n/a (no labels stored)")
    ent = "  ".join(f"{k} {v:.3f}" for k, v in info["mean_entropy_nats"].items() if v is not None)
    bound = ", ids + tail bucket: a lower bound" if sp is not None else ""
    lines.append(f"  mean entropy    {ent}  (nats; max {np.log(info['num_classes']):.3f}{bound})")
    rt = info.get("runtime")
    if rt:
        lines.append(
            f"  computed on     {rt.get('device')} at {rt.get('precision')}, torch {rt.get('torch')}"
        )
    lines.append(f"  created         {info['created_at']} by {info['producer']}")
    return "\n".join(lines)
