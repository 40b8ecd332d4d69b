"""A scrape job as an actor application.

``run_job(Job(id=..., items=[...], scrape=fn, tabs=8))`` runs this tree and returns the
exit status (0 all done, 4 some items failed, 1 crash, 2 bad input, 3 aborted, 130/143
signals)::

    job (rest_for_one)
    ├── checkpoint   the one writer of outcomes (results.jsonl, failures.jsonl)
    ├── failures     failure events and statistics
    ├── work         the item queue: leases, retries at not-before times, dedup
    └── browser (one_for_all; browser relaunch backoff 0 s, then 0.5 s doubling to 30 s)
        ├── browser  one Playwright browser and its shared context
        └── tabs     T tab actors (intensity 5 x T restarts in 60 s)

Checkpoint starts first and stops last, so every outcome is flushed after the tabs
stopped. Running a job again with the same id resumes it: finished keys are not scraped
again. Items need a unique ``key``; a duplicate key keeps its first occurrence and the
others are reported, an item without a key is reported and skipped.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import structlog

from supervisor import (
    Backoff,
    ChildSpec,
    Event,
    ExitStatus,
    Restart,
    Strategy,
    SupervisorSpec,
    WrongBackend,
    serve,
)

from .browser import ENV_PATH, BrowserActor, BrowserConfig, PlaywrightHost, find_browser
from .checkpoint import CheckpointActor, CheckpointConfig
from .checkpoints import CheckpointStore, validate_job_id
from .classify import FailureClassifier
from .failures import FailuresActor
from .faults import FaultInjector, Faults
from .records import check_item
from .retry import RetryPolicy
from .serde import between
from .snapshot import CheckpointError, load_key
from .storage import Storage
from .tab import TabActor
from .work import WorkQueue

if TYPE_CHECKING:
    from playwright.async_api import Page

__all__ = ["Job", "JobError", "JobResult", "JobRuntime", "job_tree", "run_job", "run_job_async"]

_log = structlog.get_logger("actors.job")

ScrapeFn = Callable[["Page", dict[str, Any]], Awaitable[dict[str, Any]]]


@attrs.define(kw_only=True)
class Job:
    """What to scrape and how; checked when built.

    Give ``scrape`` (an async ``scrape(page, item) -> dict``) or ``tab`` (a
    :class:`TabActor` subclass). ``attempt_timeout`` bounds every attempt (a scrape can
    never hang the job); ``retry`` is the retry policy; ``output_dir/<id>`` holds the
    job's files.
    """

    id: str = attrs.field(validator=lambda _i, _a, v: validate_job_id(v))
    items: Sequence[Mapping[str, Any]]
    scrape: ScrapeFn | None = None
    tab: type[TabActor] = TabActor
    tabs: int = attrs.field(default=4, validator=between(1, 64))
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    classifier: FailureClassifier = attrs.field(factory=FailureClassifier)
    output_dir: Path = attrs.field(default=Path("runs"), converter=Path)
    attempt_timeout: float = attrs.field(default=60.0, validator=between(0.001, 3600))
    progress_interval: float = attrs.field(default=5.0, validator=between(0.01, 3600))
    fail_fast_status: bool = True
    browser: BrowserConfig = attrs.field(factory=BrowserConfig)
    faults: Faults = attrs.field(factory=Faults)
    checkpoint: CheckpointConfig = attrs.field(factory=CheckpointConfig)
    storage: Storage | None = None
    #: Test only: stop in order (exit status 130) once this many items finished in this run.
    stop_after: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.scrape is None and self.tab is TabActor:
            raise ValueError("a job needs a scrape function or a TabActor subclass")
        if not (isinstance(self.tab, type) and issubclass(self.tab, TabActor)):
            raise ValueError(f"tab must be a TabActor subclass, got {self.tab!r}")


class JobRuntime:
    """What the job's actors share: the job, its checked items, paths, driver, faults."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.items: dict[str, Mapping[str, Any]] = {}
        self.invalid: list[str] = []
        self.duplicates: list[str] = []
        for index, item in enumerate(job.items):
            try:
                key = check_item(item)
            except ValueError as exc:
                self.invalid.append(f"item {index}: {exc}")
                continue
            if key in self.items:
                self.duplicates.append(key)
                continue
            self.items[key] = item
        root = Path(job.checkpoint.storage_path or job.output_dir)
        self.job_dir = root / job.id
        self.storage = job.storage or Storage()
        key = load_key(key_file=job.checkpoint.key_file) if job.checkpoint.encryption else None
        if job.checkpoint.encryption and key is None:
            raise ValueError("checkpoint encryption is on but no key was given: set"
                             " SCOREWISE_CHECKPOINT_KEY or checkpoint.key_file")
        self.store = CheckpointStore(root, job.id, storage=self.storage,
                                     retention=job.checkpoint.retention,
                                     gzip=job.checkpoint.compression, key=key)
        self.browser_pid: int | None = None
        self.host = PlaywrightHost()
        self.faults = FaultInjector(job.faults)
        self.last_stats: dict[str, Any] = {}
        self.restarts: Counter[str] = Counter()
        self.crashes: list[str] = []
        self.on_progress: Callable[[dict[str, Any]], None] | None = None

    def browser_launched(self, pid: int | None) -> None:
        """Remember the browser's pid (for snapshots and fault injection)."""
        self.browser_pid = pid

    def progress(self, stats: dict[str, Any]) -> None:
        """Record the work queue's latest counts (and pass them on)."""
        self.last_stats = stats
        if self.on_progress is not None:
            self.on_progress(stats)

    def observe(self, event: Event) -> None:
        """Count restarts of tabs and browsers from the tree's events."""
        if event.kind == "restarted":
            kind = "tab" if "/tabs/" in event.path else event.path.rsplit("/", 1)[-1]
            self.restarts[kind] += 1
        elif event.kind in ("crashed", "start_failed") and event.error is not None:
            cause = event.error
            while getattr(cause, "cause", None) is not None:  # StartError chains
                cause = cause.cause
            self.crashes.append(f"{event.path}: {type(cause).__name__}: {cause}"[:500])


def job_tree(rt: JobRuntime) -> SupervisorSpec:
    """The supervision tree of a job (see the module docstring)."""
    job = rt.job
    tabs = SupervisorSpec(
        "tabs", intensity=5 * job.tabs, period=60.0, name="tabs",
        children=[ChildSpec(f"tab-{i}", functools.partial(job.tab, rt, i), shutdown=5.0)
                  for i in range(job.tabs)])
    browser = SupervisorSpec(
        "browser", strategy=Strategy.ONE_FOR_ALL, intensity=5, period=60.0,
        children=[
            ChildSpec("browser", functools.partial(BrowserActor, rt.host, job.browser,
                                                   rt.browser_launched),
                      name="browser", shutdown=10.0,
                      backoff=Backoff(min=0.5, max=30.0, multiplier=2.0, reset_after=60.0)),
            tabs,
        ])
    return SupervisorSpec("job", strategy=Strategy.REST_FOR_ONE, intensity=3, period=60.0,
                          children=[
                              ChildSpec("checkpoint", functools.partial(CheckpointActor, rt),
                                        name="checkpoint", shutdown=60.0),
                              ChildSpec("failures", FailuresActor, name="failures"),
                              ChildSpec("work", functools.partial(WorkQueue, rt), name="work",
                                        restart=Restart.PERMANENT),
                              browser,
                          ])


class JobError(Exception):
    """A job cannot start: bad configuration, a locked job directory, storage trouble."""


@attrs.frozen
class JobResult:
    """How a job ended."""

    exit_code: int
    total: int
    done: int
    failed: int
    retries: int
    restarts: dict[str, int]
    failures_by_reason: dict[str, int]
    invalid_items: list[str]
    duplicate_keys: list[str]
    elapsed: float
    results_path: Path
    failures_path: Path
    error: str | None = None

    def summary(self) -> str:
        """A few lines a person can read."""
        lines = [
            f"{self.total} items: {self.done} done, {self.failed} failed,"
            f" {self.retries} retries, restarts: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.restarts.items())) or "none")
            + f" ({self.elapsed:.1f} s, exit status {self.exit_code})"]
        for reason, count in sorted(self.failures_by_reason.items(), key=lambda x: -x[1]):
            lines.append(f"  failed: {count} x {reason}")
        if self.invalid_items:
            lines.append(f"  invalid items skipped: {len(self.invalid_items)}")
            lines += [f"    {line}" for line in self.invalid_items[:10]]
        if self.duplicate_keys:
            lines.append(f"  duplicate keys (first occurrence kept): "
                         f"{', '.join(self.duplicate_keys[:10])}")
        if self.error:
            lines.append(f"  error: {self.error}")
        lines.append(f"  results: {self.results_path}")
        lines.append(f"  failures: {self.failures_path}")
        return "\n".join(lines)


async def run_job_async(job: Job, *, handle_signals: bool = False,
                        subscribe: Sequence[Callable[[Event], None]] = ()) -> JobResult:
    """Run ``job`` to its end in the running (asyncio) event loop.

    ``subscribe`` receives every event of the job's tree (lifecycle steps, and
    ``storage_error``/``storage_recovered``/``checkpoint_corrupted`` from the checkpoint
    actor). Raises :class:`JobError` when the job cannot start (bad settings, locked).
    """
    import sniffio

    backend = sniffio.current_async_library()
    if backend != "asyncio":
        raise WrongBackend(f"a scrape job needs the asyncio backend (Playwright is"
                           f" asyncio-only); it was started under {backend}")
    try:
        if job.browser.executable_path or os.environ.get(ENV_PATH):
            find_browser(job.browser)  # a wrong explicit path is bad configuration
        rt = JobRuntime(job)
        lock = await anyio.to_thread.run_sync(rt.store.lock)
    except (ValueError, OSError, CheckpointError) as exc:
        raise JobError(f"job {job.id!r} cannot start: {exc}") from exc
    for line in rt.invalid:
        _log.error("invalid item skipped", job_id=job.id, problem=line)
    for key in rt.duplicates:
        _log.warning("duplicate item key; the first occurrence is kept", job_id=job.id, key=key)
    started = time.monotonic()
    try:
        code = await serve(job_tree(rt), subscribe=[rt.observe, *subscribe],
                           handle_signals=handle_signals)
    finally:
        await rt.host.stop()
        lock.release()
    stats = rt.last_stats
    failed_reasons = _failure_reasons(rt)
    if code == ExitStatus.OK and (rt.invalid or stats.get("failed")):
        code = int(ExitStatus.FAILED_ITEMS)
    return JobResult(
        exit_code=code, total=len(rt.items), done=stats.get("done", 0),
        failed=stats.get("failed", 0), retries=stats.get("retries", 0),
        restarts=dict(rt.restarts), failures_by_reason=failed_reasons,
        invalid_items=rt.invalid, duplicate_keys=rt.duplicates,
        elapsed=time.monotonic() - started, results_path=rt.job_dir / "results.jsonl",
        failures_path=rt.job_dir / "failures.jsonl",
        error=rt.crashes[-1] if code == ExitStatus.CRASH and rt.crashes else None)


def _failure_reasons(rt: JobRuntime) -> dict[str, int]:
    from .checkpoint import read_records

    try:
        records, _, _ = read_records(rt.storage, rt.job_dir / "failures.jsonl")
    except OSError:
        return {}
    reasons: Counter[str] = Counter(
        f"{r.get('reason', '?')} ({r.get('category', '?')})" for r in records)
    return dict(reasons)


def run_job(job: Job) -> int:
    """Run ``job`` as a program: signals stop it in order; prints a summary; returns
    the exit status."""
    try:
        result = anyio.run(functools.partial(run_job_async, job, handle_signals=True),
                           backend="asyncio")
    except (WrongBackend, JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitStatus.USAGE)
    print(result.summary(), file=sys.stderr)
    return result.exit_code
