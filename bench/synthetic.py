"""Stream a large synthetic store through one epoch of the chunk-aware loader, in its own process
so that peak RSS is the loader's own. Prints one JSON line.

    python -m bench.synthetic write PATH --rows 2000000 --classes 1000
    python -m bench.synthetic stream PATH --budget-mb 512 --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from softlabels.schema import StoreMeta, TeacherInfo, TransferInfo
from softlabels.store import Rows, StoreWriter, open_store
from trainer.data import StreamingTargets, buffer_chunks_for, store_nbytes_in_memory

CHUNK_ROWS = 8192


def write(path: str, rows: int, classes: int) -> dict[str, float]:
    meta = StoreMeta(
        num_samples=rows,
        num_classes=classes,
        class_names=tuple(str(i) for i in range(classes)),
        combine="single",
        weights=(1.0,),
        teachers=(TeacherInfo("synthetic", "synthetic", None, "0" * 64),),
        transfer=TransferInfo("synthetic", "train", rows, "sha256:" + "0" * 64),
        dtype="float16",
        chunk_rows=CHUNK_ROWS,
        created_at="synthetic",
        producer="bench.synthetic",
    )
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with StoreWriter.create(path, meta, compress=False, overwrite=True) as writer:
        for chunk in range(meta.num_chunks):
            start, stop = meta.chunk_bounds(chunk)
            logits = rng.standard_normal((stop - start, classes), dtype=np.float32).astype(
                np.float16
            )
            labels = np.full(stop - start, -1, dtype=np.int64)
            writer.write_chunk(
                chunk, Rows.dense(logits, None, np.arange(start, stop), labels, start=start)
            )
        writer.finalize()
    return {"write_seconds": time.perf_counter() - t0}


def stream(path: str, budget_mb: float, batch_size: int) -> dict[str, float]:
    with open_store(path) as store:
        buffer_chunks = buffer_chunks_for(store, budget_mb * 2**20)
        loader = StreamingTargets(store, 4.0, batch_size, seed=0, buffer_chunks=buffer_chunks)
        t0 = time.perf_counter()
        seen = sum(len(positions) for positions, _ in loader.batches(0))
        seconds = time.perf_counter() - t0
        on_disk = store.nbytes_on_disk()
    return {
        "rows": seen,
        "store_bytes_on_disk": on_disk,
        "float32_bytes_in_memory": store_nbytes_in_memory(store),
        "budget_mb": budget_mb,
        "buffer_chunks": buffer_chunks,
        "seconds": seconds,
        "rows_per_second": seen / seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["write", "stream"])
    p.add_argument("path")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--budget-mb", type=float, default=512)
    p.add_argument("--batch-size", type=int, default=1024)
    a = p.parse_args()
    out = (
        write(a.path, a.rows, a.classes)
        if a.mode == "write"
        else stream(a.path, a.budget_mb, a.batch_size)
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
