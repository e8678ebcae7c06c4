"""Store tools: inspect, verify, convert and combine. Each reads chunk by chunk, so memory is
bounded by the chunk size, not by N."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from softlabels import __version__, schema
from softlabels.ensemble import combined_logits, normalise_weights, replay_log_probs
from softlabels.errors import MismatchError, SoftLabelsError, StoreExistsError
from softlabels.schema import StoreMeta
from softlabels.store import (
    Rows,
    StoreReader,
    StoreWriter,
    open_store,
    store_kind,
)
from softlabels.teachers import load_teacher
from softlabels.transfer import load_transfer

ENTROPY_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)


def soft_log_probs(store: StoreReader, rows: Rows, temperature: float) -> torch.Tensor:
    """(R, C) float32 log soft targets of ``rows`` at ``temperature``."""
    members = None if rows.member_logits is None else torch.from_numpy(rows.member_logits).float()
    weights = torch.tensor(store.meta.weights, dtype=torch.float32)
    return replay_log_probs(
        torch.from_numpy(rows.logits).float(), members, store.meta.combine, weights, temperature
    )


# --------------------------------------------------------------------------------------------
# inspect


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
            has = rows.labels >= 0
            labelled += int(has.sum())
            correct[0] += int((rows.logits.argmax(1) == rows.labels)[has].sum())
            if rows.member_logits is not None:
                correct[1:] += (rows.member_logits.argmax(2) == rows.labels[:, None])[has].sum(0)
            for i, t in enumerate(ENTROPY_TEMPERATURES):
                logp = soft_log_probs(store, rows, t)
                entropy[i] += float(-(logp.exp() * logp).nan_to_num().sum())
            rows_seen += len(rows.logits)
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
    lines.append(f"  created         {info['created_at']} by {info['producer']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# verify


@dataclass
class VerifyReport:
    path: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    def render(self) -> str:
        lines = [f"verify {self.path}"]
        lines += [
            f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}" for name, ok, detail in self.checks
        ]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def verify_store(
    path: str,
    *,
    transfer: str | None = None,
    teachers: tuple[str, ...] = (),
    sample: int = 64,
    seed: int = 0,
    atol: float | None = None,
) -> VerifyReport:
    """Check a store's format, completeness, checksums and index; optionally its fingerprint
    against a transfer SPEC and its logits against a re-run of the given teachers."""
    report = VerifyReport(str(path))
    try:
        store = open_store(path, allow_incomplete=True)
    except SoftLabelsError as exc:
        report.add("format", False, str(exc))
        return report
    with store:
        meta = store.meta
        report.add(
            "format", True, f"{meta.format} v{meta.format_version}, arrays {store.array_shapes()}"
        )
        report.add(
            "complete",
            meta.complete,
            "complete flag set" if meta.complete else "writer did not finish; resume it",
        )
        bad_sums, bad_rows = store.scan_chunks() if meta.checksums is not None else ([], [])
        if meta.checksums is not None:
            _check(report, "checksums", lambda: _checksum_detail(store, bad_sums))
        _check(report, "sample_index", lambda: (store.sample_index(), "a permutation of 0..N-1")[1])
        if meta.complete:
            _check(report, "finite", lambda: _finite_detail(bad_rows))
        if transfer is not None:
            _check(report, "transfer", lambda: _transfer_detail(meta, transfer))
        if teachers:
            _check(
                report,
                "teachers",
                lambda: _rerun_detail(store, transfer, teachers, sample, seed, atol),
            )
    return report


def _check(report: VerifyReport, name: str, fn: Any) -> None:
    try:
        report.add(name, True, fn())
    except (SoftLabelsError, ValueError, OSError) as exc:
        report.add(name, False, str(exc))


def _checksum_detail(store: StoreReader, bad: list[int]) -> str:
    if bad:
        raise MismatchError(f"chunks {bad[:20]} do not match their recorded SHA-256")
    return f"all {store.meta.num_chunks} chunks match"


def _finite_detail(bad_rows: list[int]) -> str:
    if bad_rows:
        raise MismatchError(f"non-finite logits at rows {bad_rows}")
    return "all logits finite"


def _transfer_detail(meta: StoreMeta, spec: str) -> str:
    ts = load_transfer(spec, meta.transfer.split)
    check_transfer_matches(meta, ts.name, ts.split, len(ts), ts.fingerprint())
    return f"fingerprint, size and split match {spec!r}"


def check_transfer_matches(
    meta: StoreMeta, name: str, split: str, num_samples: int, fingerprint: str
) -> None:
    """Raise MismatchError naming every way a transfer set differs from the store's record."""
    diffs = []
    if split != meta.transfer.split:
        diffs.append(f"split: store has {meta.transfer.split!r}, transfer set is {split!r}")
    if num_samples != meta.num_samples:
        diffs.append(
            f"N: store has {meta.num_samples} rows, transfer set has {num_samples} samples"
        )
    if fingerprint != meta.transfer.fingerprint:
        diffs.append(
            f"fingerprint: store has {meta.transfer.fingerprint[:23]}..., transfer set {name!r} has {fingerprint[:23]}..."
        )
    if diffs:
        raise MismatchError(
            f"the transfer set does not match the store (store was made from {meta.transfer.name!r}): "
            + "; ".join(diffs)
        )


def _rerun_detail(
    store: StoreReader,
    transfer: str | None,
    specs: tuple[str, ...],
    sample: int,
    seed: int,
    atol: float | None,
) -> str:
    meta = store.meta
    if transfer is None:
        raise SoftLabelsError("re-running teachers needs --transfer too")
    if len(specs) != meta.num_members:
        raise MismatchError(f"store has {meta.num_members} teachers, {len(specs)} given")
    loaded = [load_teacher(s) for s in specs]
    for i, (t, info) in enumerate(zip(loaded, meta.teachers, strict=True)):
        if t.info.sha256 != info.sha256:
            raise MismatchError(
                f"teacher {i} ({t.info.spec!r}) has different weights from the store's {info.name!r}"
            )
    ts = load_transfer(transfer, meta.transfer.split)
    rng = np.random.default_rng(seed)
    rows_idx = np.sort(
        rng.choice(meta.num_samples, size=min(sample, meta.num_samples), replace=False)
    )
    index = store.sample_index()[rows_idx]
    x = torch.from_numpy(ts.gather(index))
    with torch.inference_mode():
        fresh = torch.stack([t.module(x).float() for t in loaded], dim=1)  # (S, M, C)
    expected = combined_logits(
        fresh.double(), torch.tensor(meta.weights, dtype=torch.float64), meta.combine
    ).numpy()
    stored = np.stack([store.read(int(r), int(r) + 1).logits[0] for r in rows_idx]).astype(
        np.float64
    )
    tol = atol if atol is not None else (1e-4 if meta.dtype == "float32" else 2e-2)
    err = float(np.max(np.abs(stored - expected) / np.maximum(1.0, np.abs(expected))))
    if err > tol:
        raise MismatchError(
            f"re-run logits differ from the store by up to {err:.3g} (tolerance {tol:g})"
        )
    return f"re-ran {len(specs)} teacher(s) on {len(rows_idx)} random rows: max rel. error {err:.2g} <= {tol:g}"


# --------------------------------------------------------------------------------------------
# convert and combine


def convert_store(
    src: str, dst: str, *, overwrite: bool = False, compress: bool = True
) -> StoreMeta:
    """Copy a complete store between Zarr and HDF5 (or to the same kind), losslessly: the
    destination's checksums must equal the source's."""
    store_kind(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise SoftLabelsError("convert: source and destination are the same path")
    with open_store(src) as source:
        writer = StoreWriter.create(dst, source.meta, compress=compress, overwrite=overwrite)
        with writer:
            for chunk, rows in enumerate(source.iter_chunks()):
                writer.write_chunk(chunk, rows)
            meta = writer.finalize()
        if meta.checksums != source.meta.checksums:
            raise MismatchError(
                f"conversion of {src!r} was not lossless: checksums differ; {dst!r} is unreliable"
            )
    return meta


def combine_stores(
    paths: tuple[str, ...],
    out: str,
    *,
    combine: str,
    weights: tuple[float, ...] | None = None,
    overwrite: bool = False,
    compress: bool = True,
) -> StoreMeta:
    """Pool the members of stores made separately on one transfer set into one ensemble store.

    Each input contributes its members (its ``member_logits``, or its ``logits`` for a single
    teacher). ``weights`` are per input store; a member's weight is its store's weight times its
    weight inside that store.
    """
    if len(paths) < 2:
        raise SoftLabelsError("combine needs at least two stores")
    if combine not in (schema.COMBINE_ARITHMETIC, schema.COMBINE_GEOMETRIC):
        raise SoftLabelsError(f"--combine must be arithmetic or geometric, got {combine!r}")
    if os.path.exists(out) and not overwrite:
        raise StoreExistsError(f"{out!r} already exists; pass --overwrite to replace it")
    stores = [open_store(p) for p in paths]
    try:
        _check_combinable(stores)
        store_weights = normalise_weights(weights, len(stores))
        member_weights = tuple(
            sw * w for s, sw in zip(stores, store_weights, strict=True) for w in s.meta.weights
        )
        first = stores[0].meta
        meta = replace(
            first,
            combine=combine,
            weights=normalise_weights(member_weights, len(member_weights)),
            teachers=tuple(t for s in stores for t in s.meta.teachers),
            dtype="float32" if any(s.meta.dtype == "float32" for s in stores) else "float16",
            producer=f"softlabels {__version__}",
        )
        w = torch.tensor(meta.weights, dtype=torch.float64)
        with StoreWriter.create(out, meta, compress=compress, overwrite=overwrite) as writer:
            for chunk in range(meta.num_chunks):
                start, stop = meta.chunk_bounds(chunk)
                parts = [s.read(start, stop) for s in stores]
                members = np.concatenate([_members(p) for p in parts], axis=1).astype(np.float32)
                logits = (
                    combined_logits(torch.from_numpy(members).double(), w, combine).float().numpy()
                )
                labels = np.max(np.stack([p.labels for p in parts]), axis=0)
                writer.write_chunk(
                    chunk, Rows(start, logits, members, parts[0].sample_index, labels)
                )
            return writer.finalize()
    finally:
        for s in stores:
            s.close()


def _members(rows: Rows) -> np.ndarray:
    return rows.member_logits if rows.member_logits is not None else rows.logits[:, None, :]


def _check_combinable(stores: list[StoreReader]) -> None:
    a = stores[0]
    for b in stores[1:]:
        diffs = []
        if b.meta.transfer.fingerprint != a.meta.transfer.fingerprint:
            diffs.append("transfer fingerprints differ")
        if b.meta.transfer.split != a.meta.transfer.split:
            diffs.append(f"splits differ ({a.meta.transfer.split!r} vs {b.meta.transfer.split!r})")
        if b.meta.num_samples != a.meta.num_samples:
            diffs.append(f"row counts differ ({a.meta.num_samples} vs {b.meta.num_samples})")
        if b.meta.num_classes != a.meta.num_classes:
            diffs.append(f"class counts differ ({a.meta.num_classes} vs {b.meta.num_classes})")
        elif not np.array_equal(b.sample_index(), a.sample_index()):
            diffs.append("sample order (sample_index) differs")
        if not diffs:
            la, lb = a.labels(), b.labels()
            both = (la >= 0) & (lb >= 0)
            if (la[both] != lb[both]).any():
                diffs.append("labels differ")
        if diffs:
            raise MismatchError(f"cannot combine {a.path!r} with {b.path!r}: " + "; ".join(diffs))
