"""softlabels: offline knowledge distillation.

Stage one (this package) runs a teacher or an ensemble over a transfer set once and writes
the logits to a chunked Zarr or HDF5 store (see FORMAT.md). Stage two (``trainer``) trains
students from that store at any temperature. The public API::

    import softlabels
    store = softlabels.generate([teacher_a, teacher_b], dataset, "teachers.zarr")
    with softlabels.open_store("teachers.zarr") as store:
        log_p = store.soft_targets(positions, temperature=4.0)  # (len(positions), C)
    ds = softlabels.SoftTargetDataset("teachers.zarr", dataset, temperature=4.0)
"""

__version__ = "0.2.0"

from softlabels.dataset import ChunkSampler, SoftTargetDataset  # noqa: E402
from softlabels.generate import generate  # noqa: E402
from softlabels.store import StoreReader, StoreWriter, open_store  # noqa: E402
from softlabels.transfer import TransferSet, load_transfer  # noqa: E402
from softlabels.verify import verify_store  # noqa: E402

__all__ = [
    "ChunkSampler",
    "SoftTargetDataset",
    "StoreReader",
    "StoreWriter",
    "TransferSet",
    "__version__",
    "generate",
    "load_transfer",
    "open_store",
    "verify_store",
]
