"""softlabels: offline knowledge distillation.

Stage one (this package) runs a teacher or an ensemble over a transfer set once and writes
the logits to a chunked Zarr or HDF5 store (see FORMAT.md). Stage two (``trainer``) trains
students from that store at any temperature.

The public store API::

    from softlabels import open_store
    with open_store("data/digits/softlabels.zarr") as store:
        logits = store.read(0, store.meta.num_samples).logits
"""

from softlabels.store import StoreReader, StoreWriter, open_store

__version__ = "0.1.0"
__all__ = ["StoreReader", "StoreWriter", "open_store", "__version__"]
