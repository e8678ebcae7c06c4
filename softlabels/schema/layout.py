"""The array layout of a store: which arrays a store with given root attributes holds, their
shapes, chunks and dtypes (FORMAT.md, "Arrays"). ``array_layout`` is the only place the layout
is written down in code; ``softlabels.schema`` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from softlabels.schema import StoreMeta


@dataclass(frozen=True)
class ArraySpec:
    """One array of the layout: its name, shape, chunk shape and dtype."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    compressible: bool  # data arrays may be compressed; the commit journal never is


def array_layout(meta: StoreMeta, *, journal: bool = False) -> tuple[ArraySpec, ...]:
    """The arrays a store with ``meta`` holds, in CHECKSUM_ORDER (then the journal, if asked).

    This is the only place the layout is written down in code; writers create exactly these
    arrays and readers check exactly these shapes and dtypes.
    """
    from softlabels.schema import (  # the package's names: it imports this module first
        COMMIT_JOURNAL,
        DIGEST_BYTES,
        ID_GAPS,
        INCLUSION_LOG_SCALE,
        INPUT_IDS,
        LABELS,
        LOGITS,
        MEMBER_LOGITS,
        POSITION,
        SAMPLE_INDEX,
        TAIL,
        VALUE_OFFSETS,
        VALUES,
        VIEW,
        VIEW_PARAMS,
        tail_groups,
    )  # fmt: skip

    n, c, m, r = meta.num_samples, meta.num_classes, meta.num_members, meta.chunk_rows
    sp = meta.sparse
    if sp is None:
        specs = [ArraySpec(LOGITS, (n, c), (r, c), meta.dtype, True)]
        if m > 1:
            specs.append(ArraySpec(MEMBER_LOGITS, (n, m, c), (r, m, c), meta.dtype, True))
    else:
        k, a, g = sp.k, len(sp.tail_temperatures), tail_groups(meta.combine, m)
        values = meta.dtype if sp.value_step is None else "uint16"
        specs = [
            ArraySpec(ID_GAPS, (n, k), (r, k), "int32", True),
            ArraySpec(VALUES, (n, m, k), (r, m, k), values, True),
        ]
        if sp.value_step is not None:
            specs.append(ArraySpec(VALUE_OFFSETS, (n, m), (r, m), "float32", True))
        specs.append(ArraySpec(TAIL, (n, g, a), (r, g, a), "float32", True))
        if sp.sample:
            specs.append(ArraySpec(INCLUSION_LOG_SCALE, (n,), (r,), "float32", True))
    if meta.tokens is not None:
        specs += [
            ArraySpec(INPUT_IDS, (n,), (r,), "int32", True),
            ArraySpec(POSITION, (n,), (r,), "int32", True),
        ]
    if meta.views is not None:
        p = len(meta.views.param_names)
        specs += [
            ArraySpec(VIEW_PARAMS, (n, p), (r, p), "float32", True),
            ArraySpec(VIEW, (n,), (r,), "int32", True),
        ]
    specs += [
        ArraySpec(SAMPLE_INDEX, (n,), (r,), "int64", True),
        ArraySpec(LABELS, (n,), (r,), "int64", True),
    ]
    if journal:
        specs.append(
            ArraySpec(
                COMMIT_JOURNAL, (meta.num_chunks, DIGEST_BYTES), (1, DIGEST_BYTES), "uint8", False
            )
        )
    return tuple(specs)
