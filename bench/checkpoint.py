"""Checkpoint snapshot timings: how long a save and a load take as the job grows.

    python bench/checkpoint.py [--runs 7] [--sizes 1000,10000,100000] [--dir PATH]

Prints one JSON line per figure::

    {"bench": "snapshot_write", "items": 1000, "ours": 3.1, "baseline": null,
     "ratio": null, "unit": "ms", "runs": 7}

``snapshot_write`` is ``CheckpointStore.save``: serialise, checksum, write, fsync, rename,
fsync the directory, retention. ``snapshot_load`` is ``CheckpointStore.latest_valid``:
list, read, verify the checksum, structure into objects. Each figure is the median of
``--runs`` runs after one warm-up, on real files (``--dir`` picks the file system; the
default is the system's temporary directory). A job of N items has 70% completed, 20%
failed (each with an ErrorRecord) and 10% pending, keys like ``match-000001/summary``.

Goals (from the data model): write <= 100 ms at 1k items and <= 200 ms at 100k; load
<= 50 ms at 1k and <= 200 ms at 100k. There is no baseline to compare with yet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime

import attrs
import orjson

from actors.checkpoints import CheckpointStore
from actors.snapshot import (
    Checkpoint,
    CheckpointData,
    CheckpointMetadata,
    ErrorRecord,
    ProgressState,
    ResourceSnapshot,
)

JOB = "bench"


def build(n: int) -> Checkpoint:
    """A checkpoint of an ``n``-item job (see the module docstring)."""
    now = datetime.now(UTC)
    keys = [f"match-{i:06d}/summary" for i in range(1, n + 1)]
    failed = keys[::5]
    rest = [k for i, k in enumerate(keys) if i % 5]
    split = len(rest) * 7 // 8
    completed, pending = rest[:split], rest[split:]
    errors = [
        ErrorRecord(
            timestamp=now,
            item_id=k,
            error_type="TimeoutError",
            error_message="page.goto: Timeout 30000ms exceeded while loading the match page",
            retry_count=3,
        )
        for k in failed
    ]
    return Checkpoint(
        job_id=JOB,
        sequence_number=1,
        metadata=CheckpointMetadata(
            total_items=n,
            completed_items=len(completed),
            failed_items=len(failed),
            processing_time=3600.0,
            browser_sessions=["browser-1"],
            system_resources=ResourceSnapshot(
                timestamp=now,
                memory_usage=1800,
                cpu_usage=55.0,
                disk_usage=12000,
                network_connections=40,
                process_count=12,
            ),
        ),
        data=CheckpointData(
            job_state={"league": "premier", "season": 2026, "cursor": split},
            browser_state={
                "cookies": [{"name": f"c{i}", "value": "x" * 32} for i in range(10)],
                "origins": [],
            },
            progress=ProgressState(
                current_item=pending[0] if pending else None,
                completed_items=completed,
                failed_items=failed,
                pending_items=pending,
                total_count=n,
                completion_percentage=round(100 * (len(completed) + len(failed)) / n, 2),
            ),
            errors=errors,
        ),
    )


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn`` in milliseconds over ``runs`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def figure(bench: str, items: int, ms: float, runs: int) -> str:
    return orjson.dumps(
        {
            "bench": bench,
            "items": items,
            "ours": ms,
            "baseline": None,
            "ratio": None,
            "unit": "ms",
            "runs": runs,
        }
    ).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs per figure (>= 5)")
    parser.add_argument("--sizes", default="1000,10000,100000", help="item counts, comma-separated")
    parser.add_argument("--dir", default=None, help="where the job directories are made")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    for n in sizes:
        cp = build(n)
        with tempfile.TemporaryDirectory(prefix="scorewise-bench-", dir=args.dir) as root:
            store = CheckpointStore(root, JOB)

            def save(store: CheckpointStore = store, cp: Checkpoint = cp) -> None:
                store.save(attrs.evolve(cp, sequence_number=store.next_sequence()))

            def load(store: CheckpointStore = store) -> None:
                result = store.latest_valid()
                assert result.checkpoint is not None and not result.corrupted

            write_ms = median_ms(save, args.runs)
            load_ms = median_ms(load, args.runs)
        print(figure("snapshot_write", n, write_ms, args.runs), flush=True)
        print(figure("snapshot_load", n, load_ms, args.runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
