"""`softlabels verify`: format, completeness, checksums, index, labels and finiteness; optionally
the transfer set (fingerprint, size, split, labels) and a re-run of the teachers on sample rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from softlabels import schema
from softlabels.device import resolve_device
from softlabels.ensemble import combined_logits
from softlabels.errors import MismatchError, SoftLabelsError, StoreReadError
from softlabels.join import check_transfer, preprocess_diffs
from softlabels.pipeline import Runtime, forward_teachers
from softlabels.sparse import replay as sparse_replay
from softlabels.store import StoreReader, open_store
from softlabels.store.failures import finish_advice
from softlabels.teachers import as_teacher, initialise_lazy
from softlabels.transfer import TransferSet, as_transfer
from softlabels.views.augment import Policy
from softlabels.views.transfer import load_views_policy, rebuild_views


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
    transfer: object = None,
    teachers: Sequence[nn.Module | str] = (),
    sample: int = 64,
    seed: int = 0,
    atol: float | None = None,
    device: str = "auto",
    precision: str | None = None,
    augment: Policy | None = None,
) -> VerifyReport:
    """Check a store's format, completeness, checksums, index, labels and finiteness;
    optionally that ``transfer`` (SPEC, TransferSet or Dataset) is the one it was made from, and
    that re-running ``teachers`` on ``sample`` random rows reproduces its logits.

    A views store's rows are re-run on views rebuilt from their stored parameters, by its
    built-in policy or by ``augment`` (needed for a module:function policy)."""
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
        if not meta.complete:
            done = int(store.committed_chunks().sum())
            how_far = (
                f"every one of its {done} chunks is committed, but its writer stopped before "
                f"finalising it"
                if done == meta.num_chunks
                else f"its writer stopped after committing {done} of {meta.num_chunks} chunks"
            )
            report.add(
                "complete",
                False,
                f"incomplete: {how_far}; {finish_advice(store.writing_tool)}",
            )
            return report
        report.add("complete", True, "complete flag set")
        if meta.attributes_sha256 is None:
            report.add(
                "attributes",
                True,
                "unprotected: this store predates attributes_sha256, so a hand edit of its "
                "attributes would go unnoticed; convert or regenerate it to protect them",
            )
        else:
            report.add("attributes", True, "they match their SHA-256 (attributes_sha256)")
        try:
            bad_sums, bad_rows, sparse_problems, layout_problems = store.scan_chunks()
        except StoreReadError as exc:  # unreadable (permissions, network), not mismatched
            report.add("readable", False, str(exc))
            return report
        _check(report, "checksums", lambda: _checksum_detail(store, bad_sums))
        index = "a permutation of 0..N-1"
        if meta.views is not None:
            index = f"row r is a view of sample r // {meta.views.views_per_sample}"
        _check(report, "sample_index", lambda: (store.sample_index(), index)[1])
        _check(report, "labels", lambda: (store.labels(), f"all in -1..{meta.num_classes - 1}")[1])
        _check(report, "finite", lambda: _finite_detail(bad_rows, store.is_sparse))
        if store.is_sparse:
            _check(report, "sparse", lambda: _sparse_detail(sparse_problems))
        if meta.views is not None:
            _check(report, "views", lambda: _views_detail(layout_problems))
        if meta.tokens is not None:
            _check(report, "tokens", lambda: _token_detail(layout_problems))
        if transfer is not None:
            _check(report, "transfer", lambda: _transfer_detail(store, transfer))
        if teachers:
            _check(
                report,
                "teachers",
                lambda: _rerun_detail(
                    store, transfer, teachers, sample, seed, atol, device, precision, augment
                ),
            )
    return report


def _check(report: VerifyReport, name: str, fn: Callable[[], str]) -> None:
    try:
        report.add(name, True, fn())
    except (SoftLabelsError, ValueError, OSError) as exc:
        report.add(name, False, str(exc))


def _checksum_detail(store: StoreReader, bad: list[int]) -> str:
    if bad:
        raise MismatchError(f"chunks {bad[:20]} do not match their recorded SHA-256")
    return f"all {store.meta.num_chunks} chunks match"


def _finite_detail(bad_rows: list[int], sparse: bool = False) -> str:
    what = "values" if sparse else "logits"
    if bad_rows:
        raise MismatchError(f"non-finite {what} at rows {bad_rows}")
    return f"all {what} finite"


def _sparse_detail(problems: list[str]) -> str:
    if problems:
        raise MismatchError("; ".join(problems[:5]))
    return "ids in range and ascending, inclusion probabilities in (0, 1], tails consistent"


def _views_detail(problems: list[str]) -> str:
    if problems:
        raise MismatchError("; ".join(problems[:5]))
    return "row r is view r % V of sample r // V; every view's parameters are valid"


def _token_detail(problems: list[str]) -> str:
    if problems:
        raise MismatchError(f"rows off the shift convention: {'; '.join(problems[:5])}")
    return "every row predicts the next row's input token within its sequence"


def _transfer_detail(store: StoreReader, transfer: object) -> str:
    data = as_transfer(transfer, store.meta.transfer.split)
    check_transfer(data, num_classes=store.meta.num_classes, store=store)
    return f"fingerprint, size, split and labels match {data.name!r}"


# Relative tolerance of stored against re-run logits. float32 storage of a float32 forward pass
# differs only in summation order; float16 storage rounds to 11 significant bits (4.9e-4); a
# bf16 forward pass keeps 8 bits (3.9e-3) and an fp16 one 11, before any storage rounding.
_DTYPE_TOLERANCE = {"float32": 1e-4, "float16": 2e-3}
_PRECISION_TOLERANCE = {"fp32": 0.0, "fp16": 5e-3, "bf16": 3e-2}


def rerun_tolerance(dtype: str, precision: str = "fp32") -> float:
    """The tolerance for a store of ``dtype`` whose teachers ran at ``precision``."""
    return _DTYPE_TOLERANCE[dtype] + _PRECISION_TOLERANCE.get(precision, 3e-2)


def _rerun_detail(
    store: StoreReader,
    transfer: object,
    teachers: Sequence[nn.Module | str],
    sample: int,
    seed: int,
    atol: float | None,
    device: str,
    precision: str | None,
    augment: Policy | None = None,
) -> str:
    meta = store.meta
    recorded = (meta.runtime or {}).get("precision", "fp32")
    runtime = Runtime(resolve_device(device), precision or recorded)
    if transfer is None:
        raise SoftLabelsError("re-running teachers needs the transfer set too (--transfer)")
    if len(teachers) != meta.num_members:
        raise MismatchError(f"store has {meta.num_members} teachers, {len(teachers)} given")
    data = as_transfer(transfer, meta.transfer.split)
    diffs = preprocess_diffs(data, store)  # an image set sees what the teachers saw
    if diffs:
        raise MismatchError("; ".join(diffs))
    first = torch.from_numpy(data.take(0, min(2, len(data)))).to(runtime.device)
    loaded = [as_teacher(t) for t in teachers]
    for t in loaded:
        t.module.to(runtime.device)
    loaded = [initialise_lazy(t, first) for t in loaded]
    for i, (t, info) in enumerate(zip(loaded, meta.teachers, strict=True)):
        if t.info.sha256 != info.sha256:
            raise MismatchError(
                f"teacher {i} ({t.info.spec or t.info.name!r}) has different weights from the "
                f"store's {info.name!r}"
            )
    rng = np.random.default_rng(seed)
    positions = np.sort(
        rng.choice(meta.num_samples, size=min(sample, meta.num_samples), replace=False)
    )
    x = torch.from_numpy(_inputs(store, data, positions, augment)).to(runtime.device)
    fresh = forward_teachers(loaded, x, runtime).cpu()  # (S, M, C)
    stored, expected = _compared(store, positions, fresh)
    precision = runtime.precision
    tol = atol
    if tol is None:  # the looser of the recorded and the re-run precision
        tol = max(rerun_tolerance(meta.dtype, p) for p in (precision, recorded))
        if meta.sparse is not None and meta.sparse.value_step is not None:
            tol += meta.sparse.value_step / 2  # fixed point rounds each logit by up to step/2
    err = float(np.max(np.abs(stored - expected) / np.maximum(1.0, np.abs(expected))))
    if err > tol:
        raise MismatchError(
            f"re-run logits differ from the store by up to {err:.3g} (tolerance {tol:g} for "
            f"{meta.dtype} logits computed at {recorded}, re-run at {precision})"
        )
    return (
        f"re-ran {len(loaded)} teacher(s) at {precision} on {runtime.device.type}, "
        f"{len(positions)} random rows: max rel. error {err:.2g} <= {tol:g} (tolerance for "
        f"{meta.dtype} logits computed at {recorded})"
    )


def _inputs(
    store: StoreReader, data: TransferSet, rows: np.ndarray, augment: Policy | None
) -> np.ndarray:
    """The inputs the teachers saw at store ``rows``: for a views store, each row's view rebuilt
    from its sample's input and its stored parameters."""
    if store.meta.views is None:
        return data.gather(rows)
    if len(data) != store.meta.transfer.num_samples:
        raise MismatchError(
            f"the store holds views of {store.meta.transfer.num_samples} samples, the transfer "
            f"set has {len(data)}"
        )
    policy = load_views_policy(store.meta, augment)
    block = store.read_rows(rows)  # in a views store, the sampled rows are store rows
    params, samples = block.arrays[schema.VIEW_PARAMS], block.sample_index
    return rebuild_views(data, policy, samples, params)


def _compared(
    store: StoreReader, positions: np.ndarray, fresh: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(stored, re-run) logits to compare: the combined logits of a dense store; every
    member's logits at the stored ids of a sparse one."""
    meta = store.meta
    rows = store.rows_at(positions) if meta.views is None else store.read_rows(positions)
    if meta.sparse is None:
        weights = torch.tensor(meta.weights, dtype=torch.float64)
        expected = combined_logits(fresh.double(), weights, meta.combine).numpy()
        return rows.logits.astype(np.float64), expected
    decoded = sparse_replay.decode(rows.arrays, meta)
    at_ids = np.take_along_axis(fresh.double().numpy(), decoded.ids[:, None, :], axis=2)
    return decoded.values, at_ids
