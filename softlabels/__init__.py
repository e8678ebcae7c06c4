"""softlabels: offline knowledge distillation.

Stage one (this package) runs a teacher or an ensemble over a transfer set once and writes
the logits to a chunked Zarr or HDF5 store (see FORMAT.md). Stage two (``trainer``) trains
students from that store at any temperature. The public API::

    import softlabels
    store = softlabels.generate([teacher_a, teacher_b], dataset, "teachers.zarr")
    with softlabels.open_store("teachers.zarr") as store:
        log_p = store.soft_targets(positions, temperature=4.0)  # (len(positions), C)
    ds = softlabels.SoftTargetDataset("teachers.zarr", dataset, temperature=4.0)

For a large output space, a sparse store (format version 2) keeps K ids per row::

    softlabels.generate([teacher], dataset, "top64.zarr", sparse=softlabels.SparseSpec(top_k=64))
    store.soft_targets(positions, 4.0)  # SparseTargets(ids, log_probs, log_tail): K per row
    softlabels.audit_store("top64.zarr", against="teachers.zarr")  # what it costs, measured

For language models, a token store (format version 5; 6 when sparse) holds the next-token targets of every
position of a set of token sequences (``pip install softlabels[lm]``)::

    seqs = softlabels.load_text("docs/", "tokenizer.json")  # or load_tokens("ids.npz")
    softlabels.generate_tokens(["hf:teacher"], seqs, "lm.zarr", max_length=256,
                               sparse=softlabels.SparseSpec(top_k=64, sample=16))
    ds = softlabels.SoftTargetDataset("lm.zarr", seqs, temperature=2.0)  # item s: sequence s
"""

__version__ = "0.3.0"

from softlabels.audit import AuditOptions, audit_store  # noqa: E402
from softlabels.dataset import ChunkSampler, SoftTargetDataset  # noqa: E402
from softlabels.generate import generate  # noqa: E402
from softlabels.lm.dataset import (  # noqa: E402
    SequenceSampler,
    TokenBatch,
    TokenTargetDataset,
    collate_tokens,
)
from softlabels.lm.generate import generate_tokens  # noqa: E402
from softlabels.lm.sources import load_chat, load_sequences  # noqa: E402
from softlabels.lm.text import TokenSequences, load_text, load_tokens  # noqa: E402
from softlabels.schema import SparseSpec  # noqa: E402
from softlabels.sparse import SparseTargets  # noqa: E402
from softlabels.store import StoreReader, StoreWriter, open_store  # noqa: E402
from softlabels.transfer import TransferSet, load_transfer  # noqa: E402
from softlabels.verify import verify_store  # noqa: E402
from softlabels.views.augment import Policy, RandomResizedCropFlip  # noqa: E402
from softlabels.views.transfer import ViewTransfer, load_views_policy, view_input  # noqa: E402

__all__ = [
    "AuditOptions",
    "ChunkSampler",
    "Policy",
    "RandomResizedCropFlip",
    "SequenceSampler",
    "SparseSpec",
    "SparseTargets",
    "SoftTargetDataset",
    "StoreReader",
    "StoreWriter",
    "TokenBatch",
    "TokenSequences",
    "TokenTargetDataset",
    "TransferSet",
    "ViewTransfer",
    "__version__",
    "audit_store",
    "collate_tokens",
    "generate",
    "generate_tokens",
    "load_chat",
    "load_sequences",
    "load_text",
    "load_tokens",
    "load_transfer",
    "load_views_policy",
    "open_store",
    "verify_store",
    "view_input",
]
