"""The SHA-256 of a store's root attributes (FORMAT.md, "Attributes digest").

Chunk checksums cover the arrays; this digest covers everything else a reader computes with:
the class count, the combine rule and weights, the sparse encoding (its value step, proposal
and anchors), the token and view specs, the checksums themselves. A writer puts it in the
attribute ``attributes_sha256`` when it finalises, just before ``complete``; a reader that
finds it recomputes it and refuses a store whose attributes were edited afterwards.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ATTR_ATTRIBUTES_SHA256 = "attributes_sha256"
ATTR_COMPLETE = "complete"
# Every root attribute is covered but these two: the digest itself, and the flag written after it.
UNCOVERED = (ATTR_ATTRIBUTES_SHA256, ATTR_COMPLETE)


def canonical_attributes(attrs: dict[str, Any]) -> bytes:
    """The covered attributes as canonical JSON: keys sorted at every level, no whitespace,
    ASCII only (other characters as \\uXXXX), numbers as Python's ``json`` writes them."""
    covered = {k: v for k, v in attrs.items() if k not in UNCOVERED}
    text = json.dumps(
        covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def attributes_digest(attrs: dict[str, Any]) -> str:
    """Lowercase hex SHA-256 of ``canonical_attributes(attrs)``."""
    return hashlib.sha256(canonical_attributes(attrs)).hexdigest()
