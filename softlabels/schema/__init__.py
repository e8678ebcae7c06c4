"""The soft-label store format, versions 1 to 6: every name in FORMAT.md, in one place
(this package; ``sparse.py`` holds the ``sparse`` attribute, ``fields.py`` typed JSON reads).

This module is the machine-readable half of the format contract; FORMAT.md is the
human-readable half. Both must change together (tests/test_schema.py checks that every
name defined here appears in FORMAT.md). The arrays a store holds, their shapes and dtypes
are written down once, in ``layout.py`` (``array_layout``); the root attributes are
``StoreMeta``'s fields, and the versions are:

    1  dense stores                     4  views stores (rows are (sample, view) pairs)
    2  sparse stores (``layout``)        5  token stores (rows are token positions)
    3  token stores with class_names    6  sparse token stores with raw selection
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from softlabels.errors import StoreFormatError
from softlabels.schema.digest import ATTR_ATTRIBUTES_SHA256
from softlabels.schema.fields import MAX_ATTRS_BYTES as MAX_ATTRS_BYTES
from softlabels.schema.fields import (  # re-exported: the HDF5 attribute codec
    decode_h5_attr as decode_h5_attr,
)
from softlabels.schema.fields import encode_h5_attr as encode_h5_attr
from softlabels.schema.fields import int_field, list_field, numbers, str_field, strings
from softlabels.schema.layout import ArraySpec as ArraySpec
from softlabels.schema.layout import array_layout as array_layout
from softlabels.schema.provenance import TeacherInfo as TeacherInfo
from softlabels.schema.provenance import TransferInfo as TransferInfo
from softlabels.schema.provenance import runtime_attr, teacher_attr, transfer_attr
from softlabels.schema.sparse import (  # re-exported: the format's names live here
    DEFAULT_TAIL_TEMPERATURES as DEFAULT_TAIL_TEMPERATURES,
)
from softlabels.schema.sparse import DEFAULT_VALUE_STEP as DEFAULT_VALUE_STEP
from softlabels.schema.sparse import PROPOSAL_KIND as PROPOSAL_KIND
from softlabels.schema.sparse import SELECTION_DECODED as SELECTION_DECODED
from softlabels.schema.sparse import SELECTION_RAW as SELECTION_RAW
from softlabels.schema.sparse import TAIL_KIND as TAIL_KIND
from softlabels.schema.sparse import SparseSpec
from softlabels.schema.tokens import TokenSpec
from softlabels.schema.views import ViewSpec

FORMAT_NAME = "softlabels"
FORMAT_VERSION = 1  # dense stores
SPARSE_FORMAT_VERSION = 2  # sparse stores (the `layout` attribute appears in version 2)
TOKENS_V3_FORMAT_VERSION = 3  # token stores: rows are token positions (the `tokens` attribute)
VIEWS_FORMAT_VERSION = 4  # views stores: rows are (sample, view) pairs (the `views` attribute)
TOKENS_FORMAT_VERSION = 5  # token stores as written now: no per-id `class_names` attribute
# sparse token stores whose ids and tails come from the raw logits (``sparse.selection``)
RAW_TOKENS_FORMAT_VERSION = 6
TOKENS_FORMAT_VERSIONS = (
    TOKENS_V3_FORMAT_VERSION,
    TOKENS_FORMAT_VERSION,
    RAW_TOKENS_FORMAT_VERSION,
)
NAMELESS_FORMAT_VERSIONS = (TOKENS_FORMAT_VERSION, RAW_TOKENS_FORMAT_VERSION)  # no class_names
FORMAT_VERSIONS = (
    FORMAT_VERSION,
    SPARSE_FORMAT_VERSION,
    TOKENS_V3_FORMAT_VERSION,
    VIEWS_FORMAT_VERSION,
    TOKENS_FORMAT_VERSION,
    RAW_TOKENS_FORMAT_VERSION,
)
LAYOUT_DENSE = "dense"
LAYOUT_SPARSE = "sparse"

# Array names.
LOGITS = "logits"
MEMBER_LOGITS = "member_logits"
SAMPLE_INDEX = "sample_index"
LABELS = "labels"
# Sparse layout.
ID_GAPS = "id_gaps"
VALUES = "values"
VALUE_OFFSETS = "value_offsets"
TAIL = "tail"
INCLUSION_LOG_SCALE = "inclusion_log_scale"
# Token stores: the token at each row and its index within its sequence.
INPUT_IDS = "input_ids"
POSITION = "position"
# Views stores: each row's augmentation parameters and its view number within its sample.
VIEW_PARAMS = "view_params"
VIEW = "view"
MAX_CODE = 65535  # largest fixed-point code (uint16)
MAX_CLASSES = 2**31  # ids are int32
# Writer-private commit journal: (n_chunks, 32) uint8, one SHA-256 row per chunk, written
# after that chunk's data. Present only while a store is incomplete.
COMMIT_JOURNAL = "_chunk_commits"
JOURNAL_TOOL = "tool"  # attribute of the journal array: the command writing the store

# Arrays in checksum order: a chunk's checksum hashes these arrays' rows in this order.
CHECKSUM_ORDER = (
    LOGITS,
    MEMBER_LOGITS,
    ID_GAPS,
    VALUES,
    VALUE_OFFSETS,
    TAIL,
    INCLUSION_LOG_SCALE,
    INPUT_IDS,
    POSITION,
    VIEW_PARAMS,
    VIEW,
    SAMPLE_INDEX,
    LABELS,
)
DIGEST_BYTES = 32  # one SHA-256 per journal row

# Root attribute keys.
ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_NUM_SAMPLES = "num_samples"
ATTR_NUM_CLASSES = "num_classes"
ATTR_CLASS_NAMES = "class_names"
ATTR_COMBINE = "combine"
ATTR_WEIGHTS = "weights"
ATTR_TEACHERS = "teachers"
ATTR_TRANSFER = "transfer"
ATTR_DTYPE = "dtype"
ATTR_CHUNK_ROWS = "chunk_rows"
ATTR_CHECKSUMS = "checksums"
ATTR_CREATED_AT = "created_at"
ATTR_PRODUCER = "producer"
ATTR_COMPLETE = "complete"
# Optional: how the logits were computed ({"device", "precision", "torch"[, "device_name"]}).
ATTR_RUNTIME = "runtime"
# Version 2: "dense" or "sparse"; with "sparse", the object ATTR_SPARSE (``SparseSpec``).
ATTR_LAYOUT = "layout"
ATTR_SPARSE = "sparse"
ATTR_TOKENS = "tokens"  # versions 3, 5 and 6: rows are token positions (``TokenSpec``)
ATTR_VIEWS = "views"  # version 4: rows are (sample, view) pairs (``ViewSpec``)

# In HDF5 every root attribute value is stored as a JSON-encoded UTF-8 string.
REQUIRED_ATTRS = (
    ATTR_FORMAT,
    ATTR_FORMAT_VERSION,
    ATTR_NUM_SAMPLES,
    ATTR_NUM_CLASSES,
    ATTR_CLASS_NAMES,
    ATTR_COMBINE,
    ATTR_WEIGHTS,
    ATTR_TEACHERS,
    ATTR_TRANSFER,
    ATTR_DTYPE,
    ATTR_CHUNK_ROWS,
    ATTR_CHECKSUMS,
    ATTR_CREATED_AT,
    ATTR_PRODUCER,
    ATTR_COMPLETE,
)

COMBINE_SINGLE = "single"
COMBINE_ARITHMETIC = "arithmetic"
COMBINE_GEOMETRIC = "geometric"
COMBINE_RULES = (COMBINE_SINGLE, COMBINE_ARITHMETIC, COMBINE_GEOMETRIC)
DTYPES = ("float32", "float16")
FINGERPRINT_PREFIX = "sha256:"


def tail_groups(combine: str, members: int) -> int:
    """G: one tail summary per member, plus one of the mean logits for a geometric ensemble."""
    return members + 1 if combine == COMBINE_GEOMETRIC and members > 1 else members


@dataclass(frozen=True)
class StoreMeta:
    """The root attributes of a store. ``to_attrs``/``from_attrs`` are the JSON mapping."""

    num_samples: int
    num_classes: int
    class_names: tuple[str, ...]
    combine: str
    weights: tuple[float, ...]
    teachers: tuple[TeacherInfo, ...]
    transfer: TransferInfo
    dtype: str
    chunk_rows: int
    created_at: str
    producer: str
    checksums: tuple[str, ...] | None = None  # one hex SHA-256 per row chunk, once complete
    complete: bool = False
    runtime: dict[str, str] | None = None  # device type, precision, torch version
    attributes_sha256: str | None = None  # the attributes' digest (schema.digest), once complete
    sparse: SparseSpec | None = None  # None: a dense store (format version 1)
    tokens: TokenSpec | None = None  # rows are token positions (format version 5 or 6, or 3)
    views: ViewSpec | None = None  # rows are (sample, view) pairs (format version 4)
    format: str = field(default=FORMAT_NAME)

    def __post_init__(self) -> None:
        if self.sparse is not None and self.sparse.selection is None:  # the writer's default
            object.__setattr__(self, "sparse", replace(self.sparse, selection=SELECTION_DECODED))

    @property
    def layout(self) -> str:
        return LAYOUT_DENSE if self.sparse is None else LAYOUT_SPARSE

    @property
    def format_version(self) -> int:
        if self.views is not None:  # an older reader must not read view rows as samples
            return VIEWS_FORMAT_VERSION
        if self.tokens is not None:  # a version-2 reader must not read token rows as samples
            if self.sparse is not None and self.sparse.raw:  # nor a version-5 one raw tails
                return RAW_TOKENS_FORMAT_VERSION
            return TOKENS_FORMAT_VERSION
        return FORMAT_VERSION if self.sparse is None else SPARSE_FORMAT_VERSION

    @property
    def num_members(self) -> int:
        return len(self.teachers)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_samples / self.chunk_rows)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.num_samples)

    def to_attrs(self) -> dict[str, Any]:
        attrs = asdict(replace(self, class_names=()))  # V names are not deep-copied
        attrs[ATTR_CLASS_NAMES] = list(self.class_names)
        if self.tokens is not None:  # a token's name is its id: kept out of the root metadata
            del attrs[ATTR_CLASS_NAMES]
        attrs[ATTR_WEIGHTS] = list(self.weights)
        attrs[ATTR_TEACHERS] = [asdict(t) for t in self.teachers]
        attrs[ATTR_CHECKSUMS] = None if self.checksums is None else list(self.checksums)
        if self.attributes_sha256 is None:
            del attrs[ATTR_ATTRIBUTES_SHA256]  # written by the writer at finalisation
        if self.runtime is None:
            del attrs[ATTR_RUNTIME]  # optional: absent rather than null
        if self.transfer.preprocess is None:
            del attrs[ATTR_TRANSFER]["preprocess"]  # image sets only
        del attrs[ATTR_SPARSE], attrs[ATTR_TOKENS], attrs[ATTR_VIEWS]
        attrs[ATTR_FORMAT_VERSION] = self.format_version
        if self.format_version != FORMAT_VERSION:  # dense stores keep their version-1 attributes
            attrs[ATTR_LAYOUT] = self.layout
        if self.sparse is not None:
            attrs[ATTR_SPARSE] = self.sparse.to_attr()
        if self.tokens is not None:
            attrs[ATTR_TOKENS] = self.tokens.to_attr()
        if self.views is not None:
            attrs[ATTR_VIEWS] = self.views.to_attr()
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreMeta:
        """Validate a root-attribute mapping and build the metadata, or raise StoreFormatError."""
        fmt = attrs.get(ATTR_FORMAT)
        if fmt != FORMAT_NAME:
            raise StoreFormatError(
                f"not a soft-label store: attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}"
            )
        version = attrs.get(ATTR_FORMAT_VERSION)
        if isinstance(version, bool) or version not in FORMAT_VERSIONS:
            raise StoreFormatError(
                f"store format version {version!r} is not supported by this reader "
                f"(it reads versions {', '.join(map(str, FORMAT_VERSIONS))}); upgrade softlabels "
                f"or regenerate the store"
            )
        layout = attrs.get(ATTR_LAYOUT, LAYOUT_DENSE if version == FORMAT_VERSION else None)
        if (version in TOKENS_FORMAT_VERSIONS) != (attrs.get(ATTR_TOKENS) is not None):
            raise StoreFormatError(
                "a store carries the 'tokens' attribute exactly when its format_version is 3, 5 "
                "or 6"
            )
        if version in NAMELESS_FORMAT_VERSIONS and ATTR_CLASS_NAMES in attrs:
            raise StoreFormatError(f"a version-{version} token store must not carry 'class_names'")
        sparse_attr = attrs.get(ATTR_SPARSE)
        raw = isinstance(sparse_attr, dict) and "selection" in sparse_attr  # its value: below
        if (version == RAW_TOKENS_FORMAT_VERSION) != (raw and layout == LAYOUT_SPARSE):
            raise StoreFormatError(
                "a store carries 'sparse.selection' exactly when its format_version is 6 (a "
                "sparse token store)"
            )
        if (version == VIEWS_FORMAT_VERSION) != (attrs.get(ATTR_VIEWS) is not None):
            raise StoreFormatError(
                "a store carries the 'views' attribute exactly when its format_version is 4"
            )
        if version == FORMAT_VERSION and ATTR_LAYOUT in attrs:
            raise StoreFormatError("a version-1 store must not carry a 'layout' attribute")
        if layout not in (LAYOUT_DENSE, LAYOUT_SPARSE):
            raise StoreFormatError(
                f"store layout {layout!r} is not 'dense' or 'sparse' (version 2 stores name it)"
            )
        required = [
            k
            for k in REQUIRED_ATTRS
            if version not in NAMELESS_FORMAT_VERSIONS or k != ATTR_CLASS_NAMES
        ]
        missing = [k for k in required if k not in attrs]
        if missing:
            raise StoreFormatError(f"store is missing root attributes: {', '.join(missing)}")
        try:
            meta = cls(
                num_samples=int_field(attrs, ATTR_NUM_SAMPLES, minimum=1),
                num_classes=int_field(attrs, ATTR_NUM_CLASSES, minimum=2),
                class_names=_class_names(attrs, version),
                combine=str_field(attrs, ATTR_COMBINE),
                weights=numbers(list_field(attrs, ATTR_WEIGHTS), ATTR_WEIGHTS),
                teachers=tuple(teacher_attr(t) for t in list_field(attrs, ATTR_TEACHERS)),
                transfer=transfer_attr(attrs[ATTR_TRANSFER]),
                dtype=str_field(attrs, ATTR_DTYPE),
                chunk_rows=int_field(attrs, ATTR_CHUNK_ROWS, minimum=1),
                created_at=str_field(attrs, ATTR_CREATED_AT),
                producer=str_field(attrs, ATTR_PRODUCER),
                checksums=None
                if attrs[ATTR_CHECKSUMS] is None
                else strings(list_field(attrs, ATTR_CHECKSUMS), ATTR_CHECKSUMS),
                complete=attrs[ATTR_COMPLETE] is True,
                runtime=runtime_attr(attrs.get(ATTR_RUNTIME)),
                attributes_sha256=_digest_attr(attrs.get(ATTR_ATTRIBUTES_SHA256)),
                sparse=None
                if layout == LAYOUT_DENSE
                else SparseSpec.from_attr(attrs.get(ATTR_SPARSE)),
                tokens=None
                if attrs.get(ATTR_TOKENS) is None
                else TokenSpec.from_attr(attrs[ATTR_TOKENS]),
                views=None
                if attrs.get(ATTR_VIEWS) is None
                else ViewSpec.from_attr(attrs[ATTR_VIEWS]),
            )
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise StoreFormatError(f"store root attributes are malformed: {exc}") from exc
        meta.validate()
        return meta

    def validate(self) -> None:
        """Check the cross-field invariants of FORMAT.md section 'Root attributes'."""
        problems = []
        if self.combine not in COMBINE_RULES:
            problems.append(f"combine {self.combine!r} is not one of {COMBINE_RULES}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if not self.teachers:
            problems.append("no teachers are listed")
        if len(self.weights) != len(self.teachers):
            problems.append(f"{len(self.weights)} weights for {len(self.teachers)} teachers")
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or (
            self.weights and abs(sum(self.weights) - 1.0) > 1e-6
        ):
            problems.append(f"weights {list(self.weights)} must be non-negative and sum to 1")
        if (self.combine == COMBINE_SINGLE) != (len(self.teachers) == 1):
            problems.append(f"combine {self.combine!r} with {len(self.teachers)} teacher(s)")
        if len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class names for {self.num_classes} classes")
        views = 1 if self.views is None else self.views.views_per_sample
        if self.transfer.num_samples * views != self.num_samples:
            times = "" if self.views is None else f" x {views} view(s)"
            problems.append(
                f"transfer.num_samples {self.transfer.num_samples}{times} != num_samples "
                f"{self.num_samples}"
            )
        if self.views is not None:
            problems += self.views.problems()
            if self.tokens is not None:
                problems.append("a store cannot hold both token rows and view rows")
        if not self.transfer.fingerprint.startswith(FINGERPRINT_PREFIX):
            problems.append(f"transfer fingerprint must start with {FINGERPRINT_PREFIX!r}")
        if self.checksums is not None and len(self.checksums) != self.num_chunks:
            problems.append(f"{len(self.checksums)} checksums for {self.num_chunks} chunks")
        if self.complete and self.checksums is None:
            problems.append("store is marked complete but carries no checksums")
        if self.sparse is not None:
            problems += self.sparse.problems(self.num_classes)
            if self.sparse.value_step is not None and self.dtype != "float32":
                problems.append("a fixed-point sparse store must have dtype 'float32'")
            if self.sparse.raw and self.tokens is None:
                problems.append(
                    "raw selection (ids and tails from the raw logits) is defined for token "
                    "stores only; use selection 'decoded'"
                )
        if self.num_classes > MAX_CLASSES:
            problems.append(f"num_classes {self.num_classes} is above {MAX_CLASSES}")
        if problems:
            raise StoreFormatError("invalid store metadata: " + "; ".join(problems))


def _class_names(attrs: dict[str, Any], version: int) -> tuple[str, ...]:
    """The stored names; in a version-5 or 6 token store, each id's decimal string."""
    if version in NAMELESS_FORMAT_VERSIONS:
        return tuple(map(str, range(int_field(attrs, ATTR_NUM_CLASSES, minimum=2))))
    return strings(list_field(attrs, ATTR_CLASS_NAMES), ATTR_CLASS_NAMES)


def _digest_attr(value: Any) -> str | None:
    if value is None:
        return None
    if not (isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")):
        raise ValueError(f"attributes_sha256 must be 64 lowercase hex digits, got {value!r}")
    return value
