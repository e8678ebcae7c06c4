"""The README's demo figures, written from `make distill`'s own ``results.json``, never by hand.

    python -m trainer.demo_report data/digits/results.json --readme README.md --keep bench/distill.json

(``make readme-figures`` runs ``make distill`` at its defaults, then this.) The README's block
between ``BEGIN`` and ``END`` becomes the table ``distill compare`` printed and the sentence that
compares the two students; ``--keep`` stores a copy of the results beside the benchmarks, from
which tests/test_readme.py renders the block again and compares it with the README's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

BEGIN = "<!-- the figures below are make distill's: `make readme-figures` writes them -->"
END = "<!-- end of make distill's figures -->"


def distilled(results: dict[str, Any]) -> dict[str, Any]:
    """The distilled students' summary (the first temperature's, for a sweep)."""
    kd = results["student_distilled"]
    return kd[0] if isinstance(kd, list) else kd


def render(results: dict[str, Any]) -> str:
    """The README block for ``results``: the printed table, then the gap between the means
    against the two standard deviations combined (sqrt(s_hard^2 + s_kd^2)), in points."""
    hard, kd = results["student_hard"], distilled(results)
    gap = 100 * (kd["accuracy_mean"] - hard["accuracy_mean"])
    combined = 100 * math.hypot(hard["accuracy_std"], kd["accuracy_std"])
    side = "above" if gap >= 0 else "below"
    return (
        f"```\n{results['table']}\n```\n\n"
        f"The distilled mean is {abs(gap):.2f} points {side} the hard-label mean, against a "
        f"combined std of {combined:.2f}."
    )


def update(text: str, results: dict[str, Any]) -> str:
    """``text`` (the README) with its block between BEGIN and END rendered from ``results``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no block between {BEGIN!r} and {END!r}")
    return text[: start + len(BEGIN)] + "\n" + render(results) + "\n" + text[end:]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", help="results.json written by `distill compare` (make distill).")
    p.add_argument("--readme", default="README.md", help="The README to update in place.")
    p.add_argument("--keep", default=None, help="Also copy the results here (bench/distill.json).")
    a = p.parse_args()
    results = json.loads(Path(a.results).read_text())
    readme = Path(a.readme)
    readme.write_text(update(readme.read_text(), results))
    print(f"updated {readme}")
    if a.keep:
        Path(a.keep).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {a.keep}")


if __name__ == "__main__":
    main()
