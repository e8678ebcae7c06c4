"""`softlabels audit`: what a sparse store costs against the full teacher, measured.

For a sample of rows and each temperature T it compares the sparse store's replay with the dense
soft targets of the same teacher (from a dense store of it, or by re-running the teachers):

* KL(dense_T || replay_T) over the stored ids plus the tail bucket (the replay of the
  ``bucket`` estimator, whose tail mass is the tail summary's estimate): mean and 99th
  percentile over rows;
* the error of the tail's mass: |replayed - true| mass outside the stored ids;
* the angle between the KD gradients w.r.t. the student's logits, from the dense targets and
  from each estimator's sparse targets, at the same student logits (random N(0, 1), or a
  student checkpoint's on the rows' inputs): mean over rows, in degrees.

Rows are processed in blocks, so memory is a block of dense rows (C columns), never N of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from softlabels.device import resolve_device
from softlabels.ensemble import combine_log_probs
from softlabels.errors import MismatchError, SoftLabelsError
from softlabels.join import check_transfer
from softlabels.pipeline import Runtime, forward_teachers
from softlabels.sparse import ESTIMATORS, SparseTargets
from softlabels.store import Rows, StoreReader, open_store
from softlabels.teachers import as_teacher
from softlabels.transfer import TransferSet, as_transfer

BLOCK_ROWS = 256


@dataclass(frozen=True)
class AuditOptions:
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    rows: int = 4096  # rows sampled (all when the store has fewer)
    seed: int = 0
    estimators: tuple[str, ...] | None = None  # None: every estimator the store supports


def audit_store(
    sparse: str | StoreReader,
    *,
    against: str | StoreReader | None = None,
    teachers: Sequence[nn.Module | str] = (),
    transfer: Any = None,
    student: nn.Module | str | None = None,
    options: AuditOptions = AuditOptions(),
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure a sparse store against dense targets of the same teacher: ``against`` a dense
    store, or ``teachers`` re-run on ``transfer``. Returns a JSON-able report."""
    if (against is None) == (not teachers):
        raise SoftLabelsError("audit needs exactly one reference: a dense store or the teachers")
    own = not isinstance(sparse, StoreReader)
    store = open_store(sparse) if own else sparse
    try:
        if not store.is_sparse:
            raise SoftLabelsError(f"{store.path!r} is dense; audit compares a sparse store")
        estimators = options.estimators or _estimators(store)
        positions = _sample(store.meta.num_samples, options.rows, options.seed)
        data = None if transfer is None else as_transfer(transfer, store.meta.transfer.split)
        if data is not None:
            check_transfer(data, num_classes=store.meta.num_classes, store=store)
        reference = _Reference(store, against, teachers, data, device)
        runtime = Runtime(resolve_device(device), "fp32")
        students = _Students(student, data, store.meta.num_classes, options.seed, runtime)
        sums = {t: _Sums(estimators) for t in options.temperatures}
        for start in range(0, len(positions), BLOCK_ROWS):
            block = positions[start : start + BLOCK_ROWS]
            rows = _rows(store, block)  # read and verified once, replayed at every T
            members = reference.member_logits(block)
            z = students.logits(block)
            for t in options.temperatures:
                dense = combine_log_probs(members, reference.weights, reference.combine, t)
                sums[t].add(store, rows, t, dense, z)
        return {
            "store": str(store.path),
            "reference": reference.describe(),
            "student": students.describe(),
            "rows": len(positions),
            "k": store.meta.sparse.k,  # type: ignore[union-attr]
            "policy": store.meta.sparse.policy,  # type: ignore[union-attr]
            "bytes_per_entry": _bytes_per_entry(store),
            "temperatures": {f"{t:g}": sums[t].result() for t in options.temperatures},
        }
    finally:
        if own:
            store.close()


def format_audit(report: dict[str, Any]) -> str:
    bpe = report["bytes_per_entry"]
    lines = [
        f"audit {report['store']}: K={report['k']} ({report['policy']}), "
        + (f"{bpe:.3f} bytes/entry, " if bpe is not None else "")
        + f"{report['rows']} rows, against {report['reference']}, student {report['student']}",
    ]
    first = next(iter(report["temperatures"].values()))
    estimators = list(first["angle_deg"])
    head = "    T   KL mean    KL p99   tail err mean  tail err p99  " + "  ".join(
        f"angle {e:>10}" for e in estimators
    )
    lines.append(head)
    for t, r in report["temperatures"].items():
        angles = "  ".join(f"{r['angle_deg'][e]:15.2f}" for e in estimators)
        lines.append(
            f"{t:>5} {r['kl_mean']:9.2e} {r['kl_p99']:9.2e}  {r['tail_error_mean']:13.2e} "
            f"{r['tail_error_p99']:13.2e}  {angles}"
        )
    lines.append(
        "KL over the stored ids + tail bucket; tail err = |replayed - true| mass outside the ids; "
        "angle between dense and sparse KD gradients w.r.t. the student logits (degrees, mean)"
    )
    return "\n".join(lines)


def _estimators(store: StoreReader) -> tuple[str, ...]:
    return ESTIMATORS if store.meta.sparse.sample else ("bucket",)  # type: ignore[union-attr]


def _rows(store: StoreReader, keys: np.ndarray) -> Rows:
    """The sampled rows: transfer positions, or store rows in a views store (V per sample)."""
    return store.rows_at(keys) if store.meta.views is None else store.read_rows(keys)


def _sample(n: int, rows: int, seed: int) -> np.ndarray:
    if rows < 1:
        raise SoftLabelsError(f"rows must be at least 1, got {rows}")
    if rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=rows, replace=False))


def _bytes_per_entry(store: StoreReader) -> float | None:
    size = store.nbytes_on_disk()
    sp = store.meta.sparse
    return None if size is None or sp is None else size / (store.meta.num_samples * sp.k)


class _Reference:
    """The full teacher's member logits for given transfer positions."""

    def __init__(
        self,
        store: StoreReader,
        against: str | StoreReader | None,
        teachers: Sequence[nn.Module | str],
        data: TransferSet | None,
        device: str,
    ) -> None:
        meta = store.meta
        self.combine, self.weights = meta.combine, torch.tensor(meta.weights, dtype=torch.float64)
        self.dense: StoreReader | None = None
        self.teachers = []
        if against is not None:
            self.dense = open_store(against) if not isinstance(against, StoreReader) else against
            _check_same_teachers(store, self.dense)
        else:
            if data is None:
                raise SoftLabelsError("re-running the teachers needs the transfer set (--transfer)")
            self.teachers = [as_teacher(t) for t in teachers]
            if [t.info.sha256 for t in self.teachers] != [t.sha256 for t in meta.teachers]:
                raise MismatchError(
                    f"the teachers given are not the store's {[t.name for t in meta.teachers]} "
                    f"(weights differ, or a different order)"
                )
            self.runtime = Runtime(resolve_device(device), "fp32")
            for t in self.teachers:
                t.module.to(self.runtime.device)
        self.data = data

    def member_logits(self, positions: np.ndarray) -> torch.Tensor:
        if self.dense is not None:
            rows = _rows(self.dense, positions)
            return torch.from_numpy(rows.all_member_logits().astype(np.float64))
        assert self.data is not None
        x = torch.from_numpy(self.data.gather(positions)).to(self.runtime.device)
        return forward_teachers(self.teachers, x, self.runtime).cpu().double()

    def describe(self) -> str:
        if self.dense is not None:
            return f"dense store {self.dense.path}"
        return f"{len(self.teachers)} teacher(s) re-run"


def _check_same_teachers(sparse: StoreReader, dense: StoreReader) -> None:
    a, b = sparse.meta, dense.meta
    if dense.is_sparse:
        raise SoftLabelsError(f"{dense.path!r} is sparse; --against needs a dense store")
    diffs = []
    if [t.sha256 for t in a.teachers] != [t.sha256 for t in b.teachers]:
        diffs.append("teachers (weights) differ")
    if a.transfer.fingerprint != b.transfer.fingerprint or a.transfer.split != b.transfer.split:
        diffs.append("transfer sets differ")
    if a.num_classes != b.num_classes:
        diffs.append(f"class counts differ ({a.num_classes} vs {b.num_classes})")
    if diffs:
        raise MismatchError(
            f"{sparse.path!r} and {dense.path!r} are not the same teacher's: " + "; ".join(diffs)
        )


class _Students:
    """Student logits for given positions: a checkpoint's, or seeded N(0, 1) per position."""

    def __init__(
        self,
        student: nn.Module | str | None,
        data: TransferSet | None,
        num_classes: int,
        seed: int,
        runtime: Runtime,
    ) -> None:
        self.num_classes, self.seed, self.runtime = num_classes, seed, runtime
        self.model = None if student is None else as_teacher(student)
        if self.model is not None:
            if data is None:
                raise SoftLabelsError("a student checkpoint needs the transfer set (--transfer)")
            self.model.module.to(runtime.device)
        self.data = data

    def logits(self, positions: np.ndarray) -> torch.Tensor:
        if self.model is None:  # the same rows get the same logits in every run
            rng = np.random.default_rng([self.seed, int(positions[0]), len(positions)])
            return torch.from_numpy(rng.standard_normal((len(positions), self.num_classes)))
        assert self.data is not None
        x = torch.from_numpy(self.data.gather(positions)).to(self.runtime.device)
        out = forward_teachers([self.model], x, self.runtime)[:, 0].cpu().double()
        if out.shape[1] != self.num_classes:
            raise MismatchError(
                f"the student outputs {out.shape[1]} classes, not {self.num_classes}"
            )
        return out

    def describe(self) -> str:
        return "random N(0, 1) logits" if self.model is None else str(self.model.info.name)


class _Sums:
    """Per-row figures at one temperature, accumulated over blocks."""

    def __init__(self, estimators: tuple[str, ...]) -> None:
        self.estimators = estimators
        self.kl: list[np.ndarray] = []
        self.tail_error: list[np.ndarray] = []
        self.true_tail: list[np.ndarray] = []
        self.angles: dict[str, list[np.ndarray]] = {e: [] for e in estimators}

    def add(
        self,
        store: StoreReader,
        rows: Rows,
        temperature: float,
        dense: torch.Tensor,
        student_logits: torch.Tensor,
    ) -> None:
        bucket = store.soft_targets(rows, temperature, estimator="bucket")
        p_ids = dense.gather(1, bucket.ids)
        log_out = torch.logsumexp(dense.scatter(1, bucket.ids, float("-inf")), dim=1)
        kl = _xlogy(p_ids.exp(), p_ids - bucket.log_probs.double()).sum(1)
        kl = kl + _xlogy(log_out.exp(), log_out - bucket.log_tail.double())
        self.kl.append(kl.numpy())
        self.tail_error.append((bucket.log_tail.double().exp() - log_out.exp()).abs().numpy())
        self.true_tail.append(log_out.exp().numpy())
        log_q = torch.log_softmax(student_logits / temperature, dim=1)
        full = log_q.exp() - dense.exp()
        for e in self.estimators:
            t = bucket if e == "bucket" else store.soft_targets(rows, temperature, estimator=e)
            self.angles[e].append(_angle(full, sparse_gradient(log_q, t)))

    def result(self) -> dict[str, Any]:
        kl, err = np.concatenate(self.kl), np.concatenate(self.tail_error)
        return {
            "kl_mean": float(kl.mean()),
            "kl_p99": float(np.percentile(kl, 99)),
            "tail_mass_mean": float(np.concatenate(self.true_tail).mean()),
            "tail_error_mean": float(err.mean()),
            "tail_error_p99": float(np.percentile(err, 99)),
            "angle_deg": {e: float(np.concatenate(a).mean()) for e, a in self.angles.items()},
        }


def sparse_gradient(log_q: torch.Tensor, target: SparseTargets) -> torch.Tensor:
    """d/d(z/T) of KL over ids + bucket: q * mass - t, with t = p on the ids and P * q / Q
    elsewhere (trainer.sparse_losses computes the same, times T / B)."""
    q = log_q.exp()
    p, tail = target.log_probs.double().exp(), target.log_tail.double().exp()
    log_out = torch.logsumexp(log_q.scatter(1, target.ids, float("-inf")), dim=1)
    ratio = torch.where(tail > 0, (target.log_tail.double() - log_out).exp(), 0.0)
    t = (q * ratio[:, None]).scatter(1, target.ids, p)
    return q * (p.sum(1) + tail)[:, None] - t


def _angle(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-300)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).numpy()


def _xlogy(p: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * log_ratio, torch.zeros_like(p))
