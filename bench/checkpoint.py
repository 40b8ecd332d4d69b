"""Checkpoint timings: snapshot save and load, the journal's cost, and resume after kill -9.

    python bench/checkpoint.py [--runs 7] [--sizes 1000,10000,100000] [--dir PATH]
                               [--only snapshot,journal_cost,journal_overhead,resume]
                               [--overhead-items 300] [--overhead-tabs 4]
                               [--resume-items 100000]

Prints one JSON line per figure on stdout (progress and the load average go to stderr)::

    {"bench": "snapshot_write", "items": 1000, "ours": 3.1, "baseline": null,
     "ratio": null, "unit": "ms", "runs": 7}

Figures, each the median of ``--runs`` measured runs after one warm-up:

``snapshot_write`` / ``snapshot_load`` (ms, per size)
    ``snapshot_write`` is ``CheckpointStore.save``: serialise, checksum, write, fsync,
    rename, fsync the directory, retention. ``snapshot_load`` is
    ``CheckpointStore.latest_valid``: list, read, verify the checksum, structure into
    objects. Real files (``--dir`` picks the file system; the default is the system's
    temporary directory). A job of N items has 70% completed, 20% failed (each with an
    ErrorRecord) and 10% pending, keys like ``match-000001/summary``. Goals (from the
    data model): write <= 100 ms at 1k items and <= 200 ms at 100k; load <= 50 ms at 1k
    and <= 200 ms at 100k. No baseline.

``journal_cost`` (us per item, per group size)
    ``actors.journal.Journal`` directly: append 4,096 records shaped like the checkpoint
    actor's (kind, key, digest) and ``commit()`` (one write, one fsync) after every
    ``group`` of them, for groups of 4 (a few tabs finishing together) and 64 (a busy
    job); wall time / records. No baseline.

``journal_overhead`` (items/s)
    The same minimal-mode demo job (``--overhead-items`` items, ``--overhead-tabs``
    tabs, ``scrape_demo``, a fresh job id and output directory per run) with the
    journal on (ours) and off (baseline: ``CheckpointActor._journal`` replaced by a
    no-op in this process for baseline runs only; the output lines are still written
    and fsynced in the same group commits). The clock starts when the first scrape
    starts and stops when the last line of ``results.jsonl`` is there (a thread polls
    every 5 ms), so the Playwright driver start and the browser launch are outside it.
    One warm-up run of each side, then ``--runs`` of each, alternating (ours first on
    even runs). ``ratio`` = ours / baseline; goal >= 0.98.

``resume`` (s)
    A 100,000-item job killed with -9 after 80,000 items: snapshot 1 holds 60,000
    completed keys (with their digests and the output length), ``journal-000000.jsonl``
    the 60,000 records before it, ``journal-000001.jsonl`` the 20,000 after it,
    ``results.jsonl`` 80,000 lines and a torn half line. The state is written once
    through the store and the journal, and copied afresh for every run. Each run is a
    new process (``--resume-worker``) that resumes the job with a tab that never
    scrapes; the figure is the time from just before the process is spawned to the
    moment the work queue casts its first lease, minus the time spent in
    ``BrowserActor.on_start`` (driver start and browser launch). The process is then
    killed with -9. Goal <= 2 s. No baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import attrs  # noqa: E402
import orjson  # noqa: E402

from actors.checkpoints import CheckpointStore  # noqa: E402
from actors.journal import Journal  # noqa: E402
from actors.snapshot import (  # noqa: E402
    Checkpoint,
    CheckpointData,
    CheckpointMetadata,
    ErrorRecord,
    ProgressState,
    ResourceSnapshot,
)

JOB = "bench"
FIGURES = ("snapshot", "journal_cost", "journal_overhead", "resume")
JOURNAL_RECORDS = 4096
JOURNAL_GROUPS = (4, 64)
POLL = 0.005
_SEGMENTS = itertools.count()


def log(msg: str) -> None:
    print(f"[bench.checkpoint] {msg}  load {os.getloadavg()[0]:.2f}", file=sys.stderr,
          flush=True)


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


def line(bench: str, ours: float, unit: str, runs: int, baseline: float | None = None,
         **extra: Any) -> str:
    """One JSON result line in the project's format."""
    ratio = round(ours / baseline, 3) if baseline else None
    return orjson.dumps({"bench": bench, **extra, "ours": ours, "baseline": baseline,
                         "ratio": ratio, "unit": unit, "runs": runs}).decode()


def figure(bench: str, items: int, ms: float, runs: int) -> str:
    return line(bench, ms, "ms", runs, items=items)


# -- snapshots --------------------------------------------------------------------------


def bench_snapshots(sizes: list[int], runs: int, where: str | None) -> None:
    for n in sizes:
        cp = build(n)
        with tempfile.TemporaryDirectory(prefix="scorewise-bench-", dir=where) as root:
            store = CheckpointStore(root, JOB)

            def save(store: CheckpointStore = store, cp: Checkpoint = cp) -> None:
                store.save(attrs.evolve(cp, sequence_number=store.next_sequence()))

            def load(store: CheckpointStore = store) -> None:
                result = store.latest_valid()
                assert result.checkpoint is not None and not result.corrupted

            write_ms = median_ms(save, runs)
            load_ms = median_ms(load, runs)
        print(figure("snapshot_write", n, write_ms, runs), flush=True)
        print(figure("snapshot_load", n, load_ms, runs), flush=True)


# -- journal_cost -----------------------------------------------------------------------


def journal_record(i: int) -> dict[str, str]:
    """A record shaped like the checkpoint actor's."""
    return {"kind": "result", "key": f"match-{i:06d}/summary", "digest": f"{i:012x}"}


def bench_journal_cost(runs: int, where: str | None) -> None:
    from actors.storage import Storage

    storage = Storage()
    records = [journal_record(i) for i in range(1, JOURNAL_RECORDS + 1)]
    for group in JOURNAL_GROUPS:
        with tempfile.TemporaryDirectory(prefix="scorewise-bench-", dir=where) as root:
            def append_all(group: int = group, root: str = root) -> None:
                path = Path(root) / f"journal-{next(_SEGMENTS):06d}.jsonl"
                with Journal(storage, path) as journal:
                    for start in range(0, len(records), group):
                        for rec in records[start:start + group]:
                            journal.append(rec)
                        journal.commit()

            ms = median_ms(append_all, runs)
        us = round(ms * 1000 / JOURNAL_RECORDS, 2)
        print(line("journal_cost", us, "us", runs, group=group, items=JOURNAL_RECORDS),
              flush=True)


# -- journal_overhead -------------------------------------------------------------------


class LineWatcher(threading.Thread):
    """Polls a file until it has ``target`` newline-terminated lines; notes when."""

    def __init__(self, path: Path, target: int) -> None:
        super().__init__(name="line-watcher", daemon=True)
        self.path = path
        self.target = target
        self.reached: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                if self.path.read_bytes().count(b"\n") >= self.target:
                    self.reached = time.perf_counter()
                    return
            except FileNotFoundError:
                pass
            self.halt.wait(POLL)


@contextlib.contextmanager
def journal_off(off: bool) -> Iterator[None]:
    """Within the block, the checkpoint actor writes no journal records (if ``off``)."""
    from actors.checkpoint import CheckpointActor

    if not off:
        yield
        return
    original = CheckpointActor._journal

    def no_journal(self: CheckpointActor, batch: list[tuple[str, str, str, bytes]]) -> None:
        return None

    CheckpointActor._journal = no_journal  # type: ignore[method-assign]
    try:
        yield
    finally:
        CheckpointActor._journal = original  # type: ignore[method-assign]


def overhead_run(url: str, matches: int, n: int, tabs: int, root: str, run_id: str,
                 baseline: bool) -> float:
    """Items per second of one run (see the module docstring)."""
    import anyio

    from actors import Job
    from actors.job import run_job_async
    from examples.demo_site import demo_items, scrape_demo

    first: list[float] = []

    async def timed_scrape(page: Any, item: dict[str, Any]) -> dict[str, Any]:
        if not first:
            first.append(time.perf_counter())
        return await scrape_demo(page, item)

    job = Job(id=run_id, items=demo_items(url, matches)[:n], scrape=timed_scrape, tabs=tabs,
              output_dir=root)
    watcher = LineWatcher(Path(root) / run_id / "results.jsonl", n)
    watcher.start()
    try:
        with journal_off(baseline):
            result = anyio.run(run_job_async, job, backend="asyncio")
    finally:
        watcher.halt.set()
        watcher.join()
    journal_lines = sum(p.read_bytes().count(b"\n")
                        for p in (Path(root) / run_id).glob("journal-*.jsonl"))
    if result.exit_code != 0 or result.done != n or watcher.reached is None:
        raise RuntimeError(f"run {run_id} ended with status {result.exit_code}, "
                           f"{result.done} of {n} items")
    if journal_lines != (0 if baseline else n):
        raise RuntimeError(f"run {run_id} wrote {journal_lines} journal records")
    return n / (watcher.reached - first[0])


def bench_journal_overhead(runs: int, n: int, tabs: int, where: str | None) -> None:
    from examples.demo_site import DemoSite, SiteOptions
    from supervisor import configure_logging

    configure_logging("WARNING")
    matches = -(-n // 3)
    sides: dict[bool, list[float]] = {False: [], True: []}
    with DemoSite(SiteOptions(matches=matches, minimal=True)) as site, \
            tempfile.TemporaryDirectory(prefix="scorewise-bench-", dir=where) as root:
        count = 0
        for r in range(-1, runs):
            order = (False, True) if r % 2 == 0 else (True, False)
            for baseline in order:
                count += 1
                rate = overhead_run(site.url, matches, n, tabs, root, f"overhead-{count}",
                                    baseline)
                name = "baseline" if baseline else "ours"
                log(f"journal_overhead {'warm-up' if r < 0 else f'run {r}'} {name}: "
                    f"{rate:.2f} items/s")
                if r >= 0:
                    sides[baseline].append(rate)
    ours = round(statistics.median(sides[False]), 2)
    base = round(statistics.median(sides[True]), 2)
    pairs = [o / b for o, b in zip(sides[False], sides[True], strict=True)]
    log(f"journal_overhead: median of the {runs} paired ratios "
        f"{statistics.median(pairs):.3f} (range {min(pairs):.3f}-{max(pairs):.3f})")
    print(line("journal_overhead", ours, "items/s", runs, base, items=n, tabs=tabs),
          flush=True)


# -- resume -----------------------------------------------------------------------------

RESUME_JOB = "resume"


def resume_items(n: int) -> list[dict[str, str]]:
    """The items of the resume job: demo-like keys and URLs (never fetched)."""
    return [{"key": f"match-{i:06d}/summary", "url": f"http://127.0.0.1:9/match/{i:06d}"}
            for i in range(1, n + 1)]


def write_killed_state(root: Path, n: int) -> None:
    """The files of a ``n``-item job killed after 80% (see the module docstring)."""
    from actors import serde
    from actors.checkpoint import item_digest
    from actors.records import ResultRecord

    items = resume_items(n)
    in_snapshot, in_journal = n * 6 // 10, n * 2 // 10
    done = items[:in_snapshot + in_journal]
    digests = {item["key"]: item_digest(item) for item in done}
    store = CheckpointStore(root, RESUME_JOB)
    store.storage.makedirs(store.directory)

    scraped = datetime.now(UTC)
    lines = [serde.dumps(ResultRecord(item["key"], {"home": "Ashford Rovers", "score": "2-1",
                                                    "possession": 54}, 1, "0" * 16, scraped))
             + b"\n" for item in done]
    offset = sum(len(raw) for raw in lines[:in_snapshot])
    with open(store.directory / "results.jsonl", "wb") as out:
        out.writelines(lines)
        out.write(lines[-1][: len(lines[-1]) // 2])  # the line being written at the kill
    (store.directory / "failures.jsonl").touch()

    def journal(part: list[dict[str, str]]) -> None:
        with store.open_journal() as segment:
            for start in range(0, len(part), 64):
                for item in part[start:start + 64]:
                    segment.append({"kind": "result", "key": item["key"],
                                    "digest": digests[item["key"]]})
                segment.commit()

    journal(done[:in_snapshot])
    keys = [item["key"] for item in items]
    store.save(Checkpoint(
        job_id=RESUME_JOB, sequence_number=store.next_sequence(),
        metadata=CheckpointMetadata(total_items=n, completed_items=in_snapshot,
                                    processing_time=7200.0),
        data=CheckpointData(
            job_state={"results_offset": offset, "failures_offset": 0,
                       "digests": {k: digests[k] for k in keys[:in_snapshot]}, "retries": 0},
            progress=ProgressState(completed_items=sorted(keys[:in_snapshot]),
                                   pending_items=keys[in_snapshot:], total_count=n,
                                   completion_percentage=100.0 * in_snapshot / n))))
    journal(done[in_snapshot:])


RESUME_WORKER = """
import json, sys, time
import actors.work
from actors import Job, TabActor
from actors.browser import BrowserActor
from actors.job import run_job
from supervisor import configure_logging

configure_logging("WARNING")
marks = {{}}
launch = BrowserActor.on_start


async def timed_launch(self):
    started = time.time()
    try:
        await launch(self)
    finally:
        marks["browser"] = marks.get("browser", 0.0) + time.time() - started


dispatch = actors.work.WorkQueue._dispatch


def first_lease(self):
    dispatch(self)
    if self.leases and "lease" not in marks:
        marks["lease"] = time.time()
        marks["done"] = len(self.done)
        marks["cpu"] = time.process_time()
        print(json.dumps(marks), flush=True)


actors.work.WorkQueue._dispatch = first_lease
BrowserActor.on_start = timed_launch


class Idle(TabActor):
    async def scrape(self, page, item):
        return {{"key": item["key"]}}


items = [{{"key": f"match-{{i:06d}}/summary", "url": f"http://127.0.0.1:9/match/{{i:06d}}"}}
         for i in range(1, {n} + 1)]
sys.exit(run_job(Job(id={job!r}, items=items, tab=Idle, tabs=4, output_dir=sys.argv[1])))
"""


def resume_run(state: Path, n: int, scratch: Path) -> float:
    """Seconds from spawn to the first lease, browser launch excluded (one new process
    resuming a copy of the output directory ``state`` in ``scratch``)."""
    import psutil

    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(state, scratch)
    code = RESUME_WORKER.format(job=RESUME_JOB, n=n)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    spawned = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code, str(scratch)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first:
            raise RuntimeError(f"resume worker exited with status {proc.wait()}")
        marks = orjson.loads(first)
    finally:
        family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None \
            else []
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        psutil.wait_procs(family, timeout=10)
    if marks["done"] != n * 8 // 10:
        raise RuntimeError(f"the resumed job knew {marks['done']} done items, not {n * 8 // 10}")
    log(f"resume: {marks['lease'] - spawned:.3f} s to the first lease, of which "
        f"{marks['browser']:.3f} s in BrowserActor.on_start; the worker's CPU time until "
        f"then {marks['cpu']:.3f} s")
    return marks["lease"] - spawned - marks["browser"]


def bench_resume(runs: int, n: int, where: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="scorewise-bench-", dir=where) as root:
        state = Path(root) / "state"
        started = time.perf_counter()
        write_killed_state(state, n)
        log(f"resume: wrote the state of a {n}-item job in "
            f"{time.perf_counter() - started:.1f} s")
        times = []
        for r in range(-1, runs):
            seconds = resume_run(state, n, Path(root) / "run")
            log(f"resume {'warm-up' if r < 0 else f'run {r}'}: {seconds:.3f} s")
            if r >= 0:
                times.append(seconds)
    print(line("resume", round(statistics.median(times), 3), "s", runs, items=n), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs per figure (>= 5)")
    parser.add_argument("--sizes", default="1000,10000,100000", help="item counts, comma-separated")
    parser.add_argument("--dir", default=None, help="where the job directories are made")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"figures to run, comma-separated, of {', '.join(FIGURES)}")
    parser.add_argument("--overhead-items", type=int, default=300)
    parser.add_argument("--overhead-tabs", type=int, default=4)
    parser.add_argument("--resume-items", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(unknown)}")
    if "snapshot" in only:
        bench_snapshots([int(s) for s in args.sizes.split(",") if s.strip()], args.runs,
                        args.dir)
    if "journal_cost" in only:
        bench_journal_cost(args.runs, args.dir)
    if "journal_overhead" in only:
        bench_journal_overhead(args.runs, args.overhead_items, args.overhead_tabs, args.dir)
    if "resume" in only:
        bench_resume(args.runs, args.resume_items, args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
