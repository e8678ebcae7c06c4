"""Fault-injection campaign behind RELIABILITY.md. Every figure there comes from

    python -m tests.faults_campaign --random 8 --out faults.json      (make reliability)

Stage one: `softlabels generate` is SIGKILLed at each named fault point (mid-chunk, before a
commit, after a commit, twice inside finalisation) and at random moments, then finished with
--resume. A trial survives when the killed store is refused by a plain reader, every chunk it
reports as committed verifies, and the resumed store is bitwise equal to an uninterrupted run.
Stage two: `distill train` is SIGKILLed after an epoch and at random moments, then resumed; a
trial survives when its metrics equal an uninterrupted run's (timings aside).

Named-point kills are exact (softlabels/faults.py), so they run on fast models. Random-moment
kills are timed, so a campaign with any uses a teacher and a student that sleep per batch, to
make its runs long enough for a kill to land mid-run. Tests run it with random_trials=0: no
test depends on a sleep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
NAMED_POINTS = (
    "chunk_array:2",
    "chunk_array:7",
    "chunk_data_written:3",
    "chunk_committed:4",
    "finalize_checksums:1",
    "finalize_journal_deleted:1",
)


def generate_cmd(out: Path, *extra: str, slow: bool = False) -> list[str]:
    first = "tests.helpers:slow_teacher" if slow else "tests.helpers:teacher_a"
    return [
        sys.executable,
        "-m",
        "softlabels.cli",
        "generate",
        "--teacher",
        first,
        "--teacher",
        "tests.helpers:teacher_b",
        "--transfer",
        "digits",
        "--chunk-rows",
        "128",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def train_cmd(out: Path, store: Path, *extra: str, slow: bool = False) -> list[str]:
    model = "tests.helpers:slow_student" if slow else "tests.helpers:student"
    return [
        sys.executable,
        "-m",
        "trainer.cli",
        "train",
        "--transfer",
        "digits",
        "--store",
        str(store),
        "--model",
        model,
        "--batch-size",
        "64",
        "--epochs",
        "6",
        "--seed",
        "3",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def _run(cmd: list[str], fault: str | None = None) -> int:
    env = {**ENV, "SOFTLABELS_FAULT": fault} if fault else ENV
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True).returncode


def _kill_after(cmd: list[str], seconds: float) -> int:
    proc = subprocess.Popen(
        cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        return proc.wait()


def inspect_killed_store(path: Path) -> dict[str, Any]:
    """What a reader sees in a store whose writer was killed."""
    from softlabels.errors import SoftLabelsError
    from softlabels.store import open_store

    if not path.exists():
        return {"exists": False, "refused": True, "committed": 0, "bad_committed": 0}
    try:
        open_store(path).close()
        refused = False
    except SoftLabelsError:
        refused = True
    try:
        with open_store(path, allow_incomplete=True) as s:
            committed = [int(c) for c in s.committed_chunks().nonzero()[0]]
            bad = 0
            for c in committed:
                try:
                    s.read_verified_chunk(c)
                except SoftLabelsError:
                    bad += 1
    except SoftLabelsError:
        committed, bad = [], 0
    return {"exists": True, "refused": refused, "committed": len(committed), "bad_committed": bad}


def same_store(a: Path, b: Path) -> bool:
    from softlabels.store import open_store

    with open_store(a) as x, open_store(b) as y:
        ra, rb = x.read(0, x.meta.num_samples), y.read(0, y.meta.num_samples)
        return (
            x.meta.checksums == y.meta.checksums
            and ra.logits.tobytes() == rb.logits.tobytes()
            and ra.member_logits.tobytes() == rb.member_logits.tobytes()
        )


def stage_one_trial(
    work: Path,
    reference: Path,
    name: str,
    *,
    fault: str | None,
    kill_after: float | None,
    slow: bool = False,
) -> dict[str, Any]:
    store = work / f"{name}.zarr"
    rc = (
        _run(generate_cmd(store, slow=slow), fault)
        if fault
        else _kill_after(generate_cmd(store, slow=slow), kill_after or 1.0)
    )
    killed = rc == -signal.SIGKILL
    seen = inspect_killed_store(store)
    resume = generate_cmd(store, "--resume", slow=slow)
    resumed_rc = _run(resume) if killed and seen["exists"] else None
    if killed and not seen["exists"]:  # killed before the store was created: start again
        resumed_rc = _run(generate_cmd(store, slow=slow))
    equal = (
        same_store(reference, store)
        if store.exists() and (resumed_rc == 0 or not killed)
        else False
    )
    survived = (not killed or seen["refused"]) and seen["bad_committed"] == 0 and equal
    return {
        "trial": name,
        "fault": fault or f"SIGKILL after {kill_after:.2f} s",
        "killed": killed,
        **seen,
        "resume_exit": resumed_rc,
        "bitwise_equal": equal,
        "survived": survived,
    }


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in lines]


def stage_two_trial(
    work: Path,
    store: Path,
    reference: Path,
    name: str,
    *,
    fault: str | None,
    kill_after: float | None,
    slow: bool = False,
) -> dict[str, Any]:
    out = work / name
    cmd = train_cmd(out, store, slow=slow)
    rc = _run(cmd, fault) if fault else _kill_after(cmd, kill_after or 1.0)
    killed = rc == -signal.SIGKILL
    resumed_rc = _run(train_cmd(out, store, "--resume", slow=slow)) if killed else None
    equal = (out / "metrics.jsonl").exists() and _metrics(out) == _metrics(reference)
    return {
        "trial": name,
        "fault": fault or f"SIGKILL after {kill_after:.2f} s",
        "killed": killed,
        "resume_exit": resumed_rc,
        "metrics_equal": equal,
        "survived": equal,
    }


def campaign(
    work: Path, random_trials: int, seed: int = 0, named: tuple[str, ...] = NAMED_POINTS
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    slow = random_trials > 0  # only timed kills need slow runs (module docstring)
    reference = work / "reference.zarr"
    if not reference.exists():
        t0 = time.perf_counter()
        assert _run(generate_cmd(reference, slow=slow)) == 0
        ref_seconds = time.perf_counter() - t0
    else:
        ref_seconds = 6.0
    one = [
        stage_one_trial(
            work, reference, f"s1-{p.replace(':', '-')}", fault=p, kill_after=None, slow=slow
        )
        for p in named
    ]
    one += [
        stage_one_trial(
            work,
            reference,
            f"s1-random-{i}",
            fault=None,
            kill_after=rng.uniform(1.0, 0.9 * ref_seconds),
            slow=slow,
        )
        for i in range(random_trials)
    ]
    train_ref = work / "train-reference"
    assert _run(train_cmd(train_ref, reference, slow=slow)) == 0
    two = [
        stage_two_trial(
            work,
            reference,
            train_ref,
            "s2-epoch_end-2",
            fault="epoch_end:2",
            kill_after=None,
            slow=slow,
        )
    ]
    two += [
        stage_two_trial(
            work,
            reference,
            train_ref,
            f"s2-random-{i}",
            fault=None,
            kill_after=rng.uniform(3.0, 7.0),
            slow=slow,
        )
        for i in range(random_trials // 2)
    ]
    return {"stage_one": one, "stage_two": two, "summary": summarise(one, two)}


def summarise(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "stage_one_trials": len(one),
        "stage_one_killed": sum(t["killed"] for t in one),
        "stage_one_survived": sum(t["survived"] for t in one),
        "half_written_chunks_accepted": sum(t["bad_committed"] for t in one),
        "killed_stores_accepted_by_plain_reader": sum(
            t["killed"] and t["exists"] and not t["refused"] for t in one
        ),
        "stage_two_trials": len(two),
        "stage_two_killed": sum(t["killed"] for t in two),
        "stage_two_survived": sum(t["survived"] for t in two),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--random",
        type=int,
        default=8,
        help="Random-moment kills of stage one (half as many of stage two).",
    )
    p.add_argument("--work", default="data/faults")
    p.add_argument("--out", default=None, help="Write the full trial log as JSON here.")
    a = p.parse_args()
    res = campaign(Path(a.work), a.random)
    for t in res["stage_one"] + res["stage_two"]:
        print(json.dumps(t))
    print(json.dumps(res["summary"], indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
