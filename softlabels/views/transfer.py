"""Views stores: V augmented views of every transfer sample, each row's augmentation stored.

    ViewTransfer(base, policy, views=V, seed=S)   a transfer set of N x V rows; row r is view
                                                  r % V of sample r // V, drawn by
                                                  policy.sample(view_rng(S, r // V, r % V))
    view_input(x, params, policy)                 rebuild one row's input from the sample's
                                                  input and the row's stored view_params
    load_views_policy(meta[, policy])             the policy that made a store's views

Stage one runs ``generate`` over a ``ViewTransfer`` unchanged; the rows it writes carry the extra
per-row arrays of ``ViewTransfer.row_arrays`` (``view_params``, ``view`` and the sample index).
"""

from __future__ import annotations

import numpy as np

from softlabels import schema
from softlabels.errors import MismatchError, SoftLabelsError, StoreFormatError
from softlabels.schema import StoreMeta, ViewSpec
from softlabels.transfer import TransferSet
from softlabels.views.augment import (
    BUILTIN_POLICIES,
    Policy,
    check_policy,
    policy_from_attr,
    view_rng,
)


def view_input(x: np.ndarray, params: np.ndarray, policy: Policy) -> np.ndarray:
    """The input of a views-store row: ``policy`` applied to its sample's float32 input ``x``
    (the transfer set's input shape) with the row's stored ``view_params`` (float32)."""
    return policy.apply(np.asarray(x, dtype=np.float32), np.asarray(params, dtype=np.float32))


def rebuild_views(
    base: TransferSet, policy: Policy, samples: np.ndarray, params: np.ndarray
) -> np.ndarray:
    """(R, *input_shape) float32 inputs of R rows, from their samples' positions in ``base``
    and their (R, P) parameters; in one batch where the policy offers ``apply_batch`` (whose
    rows must be exactly ``apply``'s). On an image set the policy works on the pixel values
    (float32 0..255, after resize and crop) and the set's normalisation follows."""
    if len(samples) == 0:
        return np.empty((0, *base.input_shape), dtype=np.float32)
    xs = base.policy_inputs(np.asarray(samples, dtype=np.int64))  # an image set: its pixels
    params = np.asarray(params, dtype=np.float32)
    batch = getattr(policy, "apply_batch", None)
    if batch is not None:
        views = np.asarray(batch(xs, params), dtype=np.float32)
    else:
        views = np.stack([view_input(x, p, policy) for x, p in zip(xs, params, strict=True)])
    return base.after_policy(views)  # an image set normalises after the policy


class _ViewItems:
    """Row r of a ViewTransfer as a map-style item (what ``TransferSet`` reads item by item)."""

    def __init__(self, owner: ViewTransfer) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner.base) * self.owner.views

    def __getitem__(self, r: int) -> np.ndarray:
        return self.owner.take(r, r + 1)[0]


class ViewTransfer(TransferSet):
    """The N x V (sample, view) rows of ``base``, as a transfer set ``generate`` can label.

    Row r is view r % V of sample r // V: ``policy.apply`` of that sample's input with
    parameters ``policy.sample(view_rng(seed, r // V, r % V), input_shape)``, cast to float32
    first (they are applied exactly as stored). Labels are the sample's label, repeated.
    """

    def __init__(self, base: TransferSet, policy: Policy, *, views: int, seed: int = 0) -> None:
        if isinstance(base, ViewTransfer):
            raise SoftLabelsError("the transfer set already holds views: augment its base set")
        if views < 1:
            raise SoftLabelsError(f"views per sample must be at least 1, got {views}")
        if seed < 0:
            raise SoftLabelsError(f"the view seed must be >= 0, got {seed}")
        self.base, self.views, self.seed = base, views, seed
        self._shape = base.input_shape
        self.policy = check_policy(policy, type(policy).__name__, input_shape=self._shape)
        super().__init__(
            name=base.name,
            split=base.split,
            inputs=None,
            labels=None if base.labels is None else np.repeat(base.labels, views),
            class_names=base.class_names,
            dataset=_ViewItems(self),
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def spec(self) -> ViewSpec:
        """The store's ``views`` attribute for these rows."""
        return ViewSpec(
            views_per_sample=self.views,
            seed=self.seed,
            policy=self.policy.to_attr(),
            param_names=tuple(self.policy.param_names),
            input_shape=self._shape,
        )

    def params(self, start: int, stop: int) -> np.ndarray:
        """(R, P) float32 parameters of rows [start, stop), each drawn from its own generator."""
        p = len(self.policy.param_names)
        out = np.empty((stop - start, p), dtype=np.float32)
        for i, r in enumerate(range(start, stop)):
            drawn = np.asarray(
                self.policy.sample(
                    view_rng(self.seed, r // self.views, r % self.views), self._shape
                )
            )
            if drawn.shape != (p,) or not np.isfinite(drawn).all():
                raise SoftLabelsError(
                    f"policy {self.policy.name!r} sampled {drawn.tolist()} for row {r}: it must "
                    f"return {p} finite numbers, one per param_names entry"
                )
            out[i] = drawn
        return out

    def take(self, start: int, stop: int) -> np.ndarray:
        rows = np.arange(start, stop)
        return rebuild_views(self.base, self.policy, rows // self.views, self.params(start, stop))

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return np.stack([self.take(int(r), int(r) + 1)[0] for r in positions])

    def row_arrays(self, start: int, stop: int) -> dict[str, np.ndarray]:
        rows = np.arange(start, stop, dtype=np.int64)
        return {
            schema.VIEW_PARAMS: self.params(start, stop),
            schema.VIEW: (rows % self.views).astype(np.int32),
            schema.SAMPLE_INDEX: rows // self.views,
        }


def load_views_policy(meta: StoreMeta, policy: Policy | None = None) -> Policy:
    """The policy that made the views of a store with ``meta``: rebuilt from the ``views``
    attribute for a built-in policy; otherwise ``policy`` (from the user's own SPEC), which must
    describe itself (``to_attr``) exactly as the store recorded it."""
    if meta.views is None:
        raise SoftLabelsError("this store holds no views (it has no 'views' attribute)")
    if policy is None:
        return policy_from_attr(meta.views.policy)
    policy = check_policy(policy, type(policy).__name__, param_names=tuple(meta.views.param_names))
    if policy.to_attr() != meta.views.policy or tuple(policy.param_names) != (
        meta.views.param_names
    ):
        raise MismatchError(
            f"the policy given ({policy.to_attr()!r}) is not the one that made the store's views "
            f"({meta.views.policy!r}); give the --augment SPEC the store was generated with"
        )
    return policy


def view_row_problems(
    start: int, sample_index: np.ndarray, view: np.ndarray, params: np.ndarray, spec: ViewSpec
) -> list[str]:
    """What is wrong with views rows [start, start + R): row r must be view r % V of sample
    r // V, and its parameters finite (and, for a built-in policy, inside the input)."""
    rows = np.arange(start, start + len(view), dtype=np.int64)
    v = spec.views_per_sample
    problems = []
    for name, got, want in (("view", view, rows % v), ("sample_index", sample_index, rows // v)):
        bad = np.flatnonzero(got != want)
        if len(bad):
            problems.append(
                f"{name} of row {int(rows[bad[0]])} is {int(got[bad[0]])}, expected "
                f"{int(want[bad[0]])} (row r is view r % {v} of sample r // {v})"
            )
    finite = np.isfinite(params).all(axis=1)
    bad = np.flatnonzero(~finite)
    if len(bad) == 0 and spec.policy_name in BUILTIN_POLICIES:
        try:
            policy = policy_from_attr(spec.policy)
        except SoftLabelsError as exc:
            return [*problems, str(exc)]
        bad = policy.bad_rows(params.astype(np.float64), spec.input_shape)
    if len(bad):
        problems.append(
            f"view_params of row {int(rows[bad[0]])} ({params[bad[0]].tolist()}) are not valid "
            f"{spec.policy_name!r} parameters for inputs shaped {list(spec.input_shape)}"
        )
    return problems


def check_view_rows(start: int, arrays: dict[str, np.ndarray], spec: ViewSpec, path: str) -> None:
    """Raise StoreFormatError naming the first bad row of a block read from a views store."""
    problems = view_row_problems(
        start,
        arrays[schema.SAMPLE_INDEX],
        arrays[schema.VIEW],
        arrays[schema.VIEW_PARAMS],
        spec,
    )
    if problems:
        raise StoreFormatError(
            f"{path!r} is not a valid views store ({'; '.join(problems)}); regenerate it"
        )
