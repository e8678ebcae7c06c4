"""Existing top-k log-probability captures, read for ``softlabels import``.

Two layouts:

* **DistillKit / open-instruct compressed Parquet**: a folder holding
  ``compression_config.yaml`` and ``*.parquet`` files (read in name order), one record per
  sequence with ``input_ids`` (its L tokens), and, per position p in [0, L - 1) (the
  distribution of token p + 1; vLLM gives none before the first token), ``compressed_logprobs``
  and ``bytepacked_indices``, both byte lists. Indices: the K ids of a position, in order of
  decreasing log-probability, each in ceil(log2(d)) bits, most significant bit first, the
  position's bits padded to whole bytes. Log-probabilities: with ``exact_k`` = K (lossless) the
  K values as little-endian ``exact_dtype`` floats (float16, bfloat16, float32 or float64), with
  ``delta_encoding`` the first value and then each value's difference to the previous one.
  Configurations that quantise the tail (``exact_k`` < K: polynomial terms, residual bins) hold
  approximations of the log-probabilities, and are refused.
* **Plain arrays**: an ``.npz`` with ``input_ids`` (T,) and ``offsets`` (S + 1,) as
  ``load_tokens`` reads them, and ``top_ids`` (R, K) int and ``top_logprobs`` (R, K) float: R = T
  (row t: the distribution of token t + 1, the last of each sequence included) or R = T - S
  (the L - 1 positions of each sequence that have a next token, as vLLM captures them).

When a capture has no distribution after a sequence's last token (R = T - S), that token is
dropped from the store's sequences: every row of the store then has its targets, and the last
row of each sequence (the distribution of the dropped token) keeps its KD target but has no
label. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softlabels.errors import SpecError
from softlabels.lm.text import TokenSequences

CONFIG_FILE = "compression_config.yaml"
FLOAT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class Capture:
    """A capture as store rows: ``sequences`` (the store's) and, for each of their tokens' rows,
    ``ids`` (N, K) int64 and ``logprobs`` (N, K) float64 at T = 1."""

    name: str
    sequences: TokenSequences
    ids: np.ndarray
    logprobs: np.ndarray
    vocab_size: int | None  # the distribution's size the capture declares (DistillKit's d)
    sha256: str  # hex SHA-256 over the capture's files, in the order read


def read_capture(path: str) -> Capture:
    """A DistillKit Parquet folder or a plain-arrays ``.npz`` (module docstring)."""
    p = Path(path)
    if p.is_dir():
        return read_distillkit(p)
    if p.suffix == ".npz" and p.is_file():
        return read_arrays(p)
    raise SpecError(
        f"capture {path!r} is neither a DistillKit folder ({CONFIG_FILE} and *.parquet) nor "
        f"an .npz of input_ids, offsets, top_ids and top_logprobs"
    )


def read_arrays(path: Path) -> Capture:
    with np.load(path, allow_pickle=False) as data:
        missing = {"input_ids", "offsets", "top_ids", "top_logprobs"} - set(data.files)
        if missing:
            raise SpecError(f"{str(path)!r} lacks the arrays {sorted(missing)}")
        ids, offsets = data["input_ids"], data["offsets"]
        top_ids, top_lp = data["top_ids"], data["top_logprobs"]
    for name, a, kind in (
        ("input_ids", ids, "iu"),
        ("offsets", offsets, "iu"),
        ("top_ids", top_ids, "iu"),
        ("top_logprobs", top_lp, "f"),
    ):
        if a.dtype.kind not in kind:
            raise SpecError(f"{str(path)!r}: {name} has dtype {a.dtype}, not {kind!r}")
    if top_ids.ndim != 2 or top_ids.shape != top_lp.shape:
        raise SpecError(
            f"{str(path)!r}: top_ids {top_ids.shape} and top_logprobs {top_lp.shape} must both "
            f"be (rows, K)"
        )
    seqs = TokenSequences(str(path), "train", ids.astype(np.int64), offsets.astype(np.int64))
    digest = _sha256([path])
    return _rows(str(path), seqs, top_ids.astype(np.int64), top_lp, None, digest)


def read_distillkit(folder: Path) -> Capture:
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        import yaml
    except ImportError as exc:
        raise SpecError(
            f"reading a DistillKit capture needs pyarrow and pyyaml ({exc}): pip install "
            f"pyarrow pyyaml"
        ) from exc

    config_path = folder / CONFIG_FILE
    files = sorted(folder.glob("*.parquet"))
    if not config_path.is_file() or not files:
        raise SpecError(f"{str(folder)!r} needs {CONFIG_FILE} and *.parquet files (DistillKit)")
    config = yaml.safe_load(config_path.read_text())
    d, k, width, dtype, delta = _config(config, config_path)
    bits = max(1, math.ceil(math.log2(d)))
    index_bytes = (k * bits + 7) // 8
    ids, offsets, top_ids, top_lp = [], [0], [], []
    for f in files:
        columns = ("input_ids", "compressed_logprobs", "bytepacked_indices")
        table = pq.read_table(f)
        if not set(columns) <= set(table.column_names):
            raise SpecError(
                f"{str(f)!r} has columns {table.column_names}; a DistillKit capture has "
                f"{list(columns)} (the legacy packed_indices/exact_values layout is not read)"
            )
        tokens = table.column("input_ids").combine_chunks()
        lp = table.column("compressed_logprobs").combine_chunks()
        idx = table.column("bytepacked_indices").combine_chunks()
        lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
        positions = pc.list_value_length(lp).to_numpy(zero_copy_only=False)
        if not np.array_equal(positions, lengths - 1) or not np.array_equal(
            positions, pc.list_value_length(idx).to_numpy(zero_copy_only=False)
        ):
            raise SpecError(
                f"{str(f)!r}: each record needs one compressed_logprobs and one "
                f"bytepacked_indices entry per token after the first (len(input_ids) - 1)"
            )
        ids.append(tokens.flatten().to_numpy(zero_copy_only=False).astype(np.int64))
        offsets += (offsets[-1] + np.cumsum(lengths)).tolist()
        top_lp.append(_decode_values(_fixed(lp.flatten(), k * width, f), dtype, delta))
        top_ids.append(_decode_indices(_fixed(idx.flatten(), index_bytes, f), k, bits))
    seqs = TokenSequences(
        str(folder), "train", np.concatenate(ids), np.asarray(offsets, dtype=np.int64)
    )
    digest = _sha256([config_path, *files])
    return _rows(str(folder), seqs, np.concatenate(top_ids), np.concatenate(top_lp), int(d), digest)


def _config(config: object, path: Path) -> tuple[int, int, int, str, bool]:
    """d, K, bytes per value, the value dtype and delta encoding, of a lossless config."""
    if not isinstance(config, dict) or not all(key in config for key in ("d", "k", "exact_k")):
        raise SpecError(f"{str(path)!r} is not a DistillKit compression config (d, k, exact_k)")
    d, k, exact_k = config["d"], config["k"], config["exact_k"]
    if not all(isinstance(v, int) and v > 0 for v in (d, k, exact_k)) or k >= d:
        raise SpecError(f"{str(path)!r}: d, k and exact_k must be integers, 0 < k < d")
    if exact_k != k or config.get("polynomial_terms") or config.get("residual_bins"):
        raise SpecError(
            f"{str(path)!r} quantises its tail (exact_k {exact_k} < k {k}, polynomial terms or "
            f"residual bins): those log-probabilities are approximations; import a capture made "
            f"with exact_k = k"
        )
    dtype = str(config.get("exact_dtype", "float32"))
    if dtype not in FLOAT_BYTES:
        raise SpecError(f"{str(path)!r}: exact_dtype {dtype!r} is none of {sorted(FLOAT_BYTES)}")
    return d, k, FLOAT_BYTES[dtype], dtype, bool(config.get("delta_encoding", True))


def _fixed(values: object, width: int, f: Path) -> np.ndarray:
    """A list<uint8> array whose lists all hold ``width`` bytes, as (positions, width)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    if len(lengths) and not (lengths == width).all():
        raise SpecError(
            f"{str(f)!r}: a position holds {int(lengths[lengths != width][0])} bytes where the "
            f"compression config gives {width}"
        )
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.uint8)  # type: ignore[attr-defined]
    return flat.reshape(len(lengths), width)


def _decode_values(raw: np.ndarray, dtype: str, delta: bool) -> np.ndarray:
    """(positions, K) float64 log-probabilities from little-endian bytes."""
    if dtype == "bfloat16":  # the top 16 bits of a float32
        halves = raw.view("<u2").astype(np.uint32) << np.uint32(16)
        values = halves.view(np.float32).astype(np.float64)
    else:
        values = raw.view({"float16": "<f2", "float32": "<f4", "float64": "<f8"}[dtype])
        values = values.astype(np.float64)
    return np.cumsum(values, axis=1) if delta else values


def _decode_indices(raw: np.ndarray, k: int, bits: int) -> np.ndarray:
    """(positions, K) int64 ids, ``bits`` each, most significant bit first."""
    stream = np.unpackbits(raw, axis=1)[:, : k * bits].reshape(len(raw), k, bits)
    return stream.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def _rows(
    name: str,
    seqs: TokenSequences,
    top_ids: np.ndarray,
    top_lp: np.ndarray,
    vocab_size: int | None,
    digest: str,
) -> Capture:
    """The capture as one row per token of the store's sequences (module docstring)."""
    n, s = seqs.num_tokens, len(seqs)
    if len(top_ids) == n:
        return Capture(name, seqs, top_ids, top_lp.astype(np.float64), vocab_size, digest)
    if len(top_ids) != n - s:
        raise SpecError(
            f"{name!r}: {len(top_ids)} rows of top ids for {n} tokens in {s} sequences; give "
            f"one per token ({n}) or one per token with a next token ({n - s})"
        )
    keep = np.ones(n, dtype=bool)
    keep[seqs.offsets[1:] - 1] = False  # each sequence's last token: no distribution after it
    offsets = seqs.offsets - np.arange(s + 1)
    trimmed = TokenSequences(name, seqs.split, seqs.ids[keep], offsets)
    return Capture(name, trimmed, top_ids, top_lp.astype(np.float64), vocab_size, digest)


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
