"""Crash consistency of real jobs: kill -9 at random moments and at the two crash
points, storage that fails under a running job, and a tab that will not die."""

from __future__ import annotations

import errno
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from jobkit import (
    descendants,
    duplicates,
    kill9,
    output_keys,
    output_lines,
    page_visits,
    run_in_process,
    spawn_job,
    survivors,
    wait_for,
)
from structlog.testing import capture_logs

import actors.work
from actors import Job, TabActor
from actors.checkpoint import CheckpointConfig
from actors.checkpoints import CRASH_BEFORE_RENAME, CheckpointStore
from actors.journal import CRASH_MID_COMMIT
from actors.snapshot import decode
from actors.storage import FaultyStorage, StorageError
from examples.demo_site import DemoSite, SiteOptions, all_keys, match_data, scrape_demo
from supervisor import Event

pytestmark = pytest.mark.browser

SEED = 20261123
STALL_KEY = "stalls-once"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[DemoSite]:
    """A minimal demo site of 7 matches (21 items) logging every request."""
    log = tmp_path / "requests.jsonl"
    with DemoSite(SiteOptions(matches=7, minimal=True, request_log=str(log))) as demo:
        yield demo


def site_log(site: DemoSite) -> Path:
    """The request log of ``site``."""
    assert site.options.request_log is not None
    return Path(site.options.request_log)


def job_for(site: DemoSite, out: Path, job_id: str, count: int = 21, **settings: Any) -> Job:
    """A 4-tab job over the first ``count`` items of ``site``."""
    return Job(id=job_id, items=site.items()[:count], scrape=scrape_demo, tabs=4,
               output_dir=out, **settings)


def assert_complete(job_dir: Path, keys: list[str]) -> None:
    """results.jsonl holds each of ``keys`` once, with the demo's payload, and nothing else."""
    raw = (job_dir / "results.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    records = output_lines(job_dir / "results.jsonl")
    assert duplicates(r["key"] for r in records) == []
    assert sorted(r["key"] for r in records) == sorted(keys)
    assert all(r["data"] == match_data(r["key"]) for r in records)


def temp_files(job_dir: Path) -> list[str]:
    """Leftover temporary snapshot files (``.checkpoint-*.tmp-*``)."""
    return sorted(p.name for p in job_dir.glob(".checkpoint-*.tmp-*"))


def journal_keys(out: Path, job_id: str) -> set[str]:
    """The keys of every readable journal record on disk."""
    return {r["key"] for r in CheckpointStore(out, job_id).journal_after(0).records}


def self_killed(proc: Any) -> tuple[int, list[str]]:
    """Wait for a job that kills itself at a crash point; its status and the descendants
    that outlive it (collected while it ran) by 10 s."""
    family: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        family.update((p.pid, p) for p in descendants(proc.pid))
        time.sleep(0.05)
    if proc.poll() is None:
        left = kill9(proc)
        raise AssertionError(f"the job never reached its crash point (left behind: {left})")
    return proc.returncode, survivors(family.values())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_9_at_random_moments_and_crash_points_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """Ten random kill -9s and both crash points, then a resume: each item exactly once."""
    rng = random.Random(SEED)
    log = tmp_path / "requests.jsonl"
    out = tmp_path / "out"
    job_dir = out / "crashy"
    results = job_dir / "results.jsonl"
    total = 60
    runs: list[tuple[float, set[str]]] = []  # (start, keys durable before it started)
    kills: list[int] = []
    with DemoSite(SiteOptions(matches=total // 3, minimal=True, request_log=str(log))) as demo:
        cfg: dict[str, Any] = {"url": demo.url, "matches": total // 3, "id": "crashy",
                               "out": str(out), "tabs": 3, "every_items": 7}

        def start(crash_at: str | None = None, **extra: Any) -> Any:
            runs.append((time.time(), set(output_keys(results))))
            return spawn_job({**cfg, **extra}, tmp_path / "job.log", crash_at)

        for kill in range(10):
            proc = start()
            if rng.random() < 0.3:  # during start-up, recovery or the browser launch
                time.sleep(rng.uniform(0.05, 1.5))
                assert proc.poll() is None
            else:  # while scraping, somewhere along the run
                target = min(total - 5, total * (kill + 1) // 14 + rng.randint(0, 2))
                wait_for(lambda t=target: len(output_keys(results)) >= t, 90,
                         f"{target} results", proc)
                time.sleep(rng.uniform(0.0, 0.4))
            assert kill9(proc) == []
            kills.append(len(output_keys(results)))

            if kill == 4:  # a snapshot fsynced but never renamed into place
                proc = start(CRASH_BEFORE_RENAME, every_items=2)
                status, left = self_killed(proc)
                assert (status, left) == (-9, [])
                (tmp,) = temp_files(job_dir)
                cp = decode((job_dir / tmp).read_bytes())
                assert cp.job_id == "crashy"
                assert tmp.startswith(f".checkpoint-{cp.sequence_number:06d}.json.tmp-")
                assert not (job_dir / f"checkpoint-{cp.sequence_number:06d}.json").exists()
            if kill == 8:  # output lines durable, the journal group half written
                before = set(output_keys(results))
                proc = start(CRASH_MID_COMMIT)
                status, left = self_killed(proc)
                assert (status, left) == (-9, [])
                new = set(output_keys(results)) - before
                assert new
                assert not new <= journal_keys(out, "crashy")

        proc = start()
        assert proc.wait(180) == 0
        runs.append((time.time(), set()))

    assert kills == sorted(kills)
    assert len(set(kills)) >= 6
    assert kills[-1] >= total // 2
    assert temp_files(job_dir) == []
    keys = all_keys(total // 3)
    assert_complete(job_dir, keys)
    for (began, durable), (ended, _) in itertools.pairwise(runs):
        revisited = set(page_visits(log, began, ended)) & durable
        assert revisited == set()
    latest = CheckpointStore(out, "crashy").latest_valid().checkpoint
    assert latest is not None
    assert latest.data.progress.completed_items == sorted(keys)


@pytest.mark.timeout(120)
def test_disk_full_pauses_the_job_and_it_finishes_once_writes_succeed(
    site: DemoSite, tmp_path: Path
) -> None:
    """ENOSPC on the output six times: critical reports, a pause, then every item once."""
    storage = FaultyStorage()
    storage.fail("write", errno.ENOSPC, times=6, path_contains="results.jsonl")
    events: list[Event] = []
    with capture_logs() as logs:
        result = run_in_process(job_for(site, tmp_path, "full", storage=storage), events)

    assert result.exit_code == 0
    path = tmp_path / "full" / "results.jsonl"
    errors = [e for e in events if e.kind == "storage_error"]
    assert [str(e.error) for e in errors] == [
        f"cannot append to results file {path}: No space left on device (ENOSPC)"] * 6
    assert all(isinstance(e.error, StorageError) and e.data["policy"] == "pause"
               for e in errors)
    (recovered,) = [e for e in events if e.kind == "storage_recovered"]
    assert recovered.time > errors[-1].time
    critical = [(e["log_level"], e["policy"], e["retry_in"]) for e in logs
                if e["event"] == "cannot make results durable; keeping them in memory and "
                                 "retrying"]
    assert critical == [("critical", "pause", d) for d in (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)]
    # Paused for 6.3 s: only items already leased to the 4 tabs may still be fetched.
    during = page_visits(site_log(site), errors[0].time, recovered.time)
    assert sum(during.values()) <= 8
    keys = [item["key"] for item in site.items()]
    assert page_visits(site_log(site)) == Counter(keys)
    assert_complete(tmp_path / "full", keys)


@pytest.mark.timeout(120)
def test_abort_policy_stops_with_status_3_and_a_resume_finishes_the_rest(
    site: DemoSite, tmp_path: Path
) -> None:
    """A lasting write error with on_storage_error=abort ends the job (3); resume completes."""
    path = tmp_path / "abort" / "results.jsonl"
    storage = FaultyStorage()
    stop = threading.Event()

    def fill_the_disk() -> None:
        while not stop.is_set() and len(output_keys(path)) < 8:
            time.sleep(0.01)
        storage.fail("write", errno.ENOSPC, path_contains="results.jsonl")

    filler = threading.Thread(target=fill_the_disk)
    filler.start()
    events: list[Event] = []
    try:
        with capture_logs() as logs:
            first = run_in_process(job_for(site, tmp_path, "abort", storage=storage,
                                           checkpoint=CheckpointConfig(on_storage_error="abort")),
                                   events)
    finally:
        stop.set()
        filler.join()

    assert first.exit_code == 3
    assert [e.data["policy"] for e in events if e.kind == "storage_error"][:1] == ["abort"]
    lost = [e["items"] for e in logs if e["event"] == "records could not be made durable at "
                                                       "stop; their items will be scraped "
                                                       "again on resume"]
    assert len(lost) == 1 and lost[0] >= 1
    assert path.read_bytes().endswith(b"\n")
    done = output_keys(path)
    assert len(done) >= 8
    assert duplicates(done) == []

    start = time.time()
    second = run_in_process(job_for(site, tmp_path, "abort"))
    assert second.exit_code == 0
    keys = [item["key"] for item in site.items()]
    assert page_visits(site_log(site), start) == Counter(set(keys) - set(done))
    assert_complete(tmp_path / "abort", keys)


@pytest.mark.timeout(120)
def test_read_only_snapshots_do_not_stop_the_job_nor_lose_items(
    site: DemoSite, tmp_path: Path
) -> None:
    """EROFS on every snapshot: reported, and the job still completes with every item."""
    storage = FaultyStorage()
    storage.fail("open", errno.EROFS, path_contains=".checkpoint-")
    events: list[Event] = []
    with capture_logs() as logs:
        result = run_in_process(job_for(site, tmp_path, "ro", 9, storage=storage,
                                        checkpoint=CheckpointConfig(every_items=3)), events)

    assert [e.path for e in events if e.kind == "crashed"] == []
    assert result.exit_code == 0
    errors = [e for e in events if e.kind == "storage_error"]
    assert errors
    assert all(e.data["policy"] == "snapshot" for e in errors)
    assert all("cannot write checkpoint file" in str(e.error)
               and str(e.error).endswith("Read-only file system (EROFS)") for e in errors)
    assert any(e["event"] == "snapshot failed; the journal and output still hold every item"
               for e in logs)
    keys = [item["key"] for item in site.items()[:9]]
    assert_complete(tmp_path / "ro", keys)

    start = time.time()
    assert run_in_process(job_for(site, tmp_path, "ro", 9)).exit_code == 0
    assert page_visits(site_log(site), start) == Counter()
    assert_complete(tmp_path / "ro", keys)


@pytest.mark.timeout(120)
def test_failures_file_errors_do_not_write_results_twice(tmp_path: Path) -> None:
    """ENOSPC on failures.jsonl while results keep coming: no result line is repeated."""
    options = SiteOptions(matches=6, seed=3, not_found=2, minimal=True)
    storage = FaultyStorage()
    storage.fail("write", errno.ENOSPC, times=4, path_contains="failures.jsonl")
    with DemoSite(options) as demo:
        job = Job(id="mixed", items=demo.items(), scrape=scrape_demo, tabs=4,
                  output_dir=tmp_path, storage=storage,
                  checkpoint=CheckpointConfig(on_storage_error="continue"))
        events: list[Event] = []
        result = run_in_process(job, events)
        missing = demo.plan()["not_found"]

    assert result.exit_code == 4
    assert len([e for e in events if e.kind == "storage_error"]) == 4
    job_dir = tmp_path / "mixed"
    assert duplicates(output_keys(job_dir / "results.jsonl")) == []
    assert sorted(output_keys(job_dir / "failures.jsonl")) == sorted(missing)
    assert_complete(job_dir, [k for k in all_keys(6) if k not in missing])


class StallsOnce(TabActor):
    """A tab whose first scrape of STALL_KEY ignores cancellation for 1.5 s."""

    stalled = False

    async def scrape(self, page: Any, item: dict[str, Any]) -> dict[str, Any]:
        if item["key"] == STALL_KEY and not StallsOnce.stalled:
            StallsOnce.stalled = True
            with anyio.CancelScope(shield=True):
                await anyio.sleep(1.5)
        return {"key": item["key"]}


@pytest.mark.timeout(60)
def test_an_expired_lease_kills_its_stuck_tab_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tab stuck past its lease is killed once, not re-killed in a busy loop."""
    monkeypatch.setattr(actors.work, "LEASE_GRACE", 0.2)
    monkeypatch.setattr(StallsOnce, "stalled", False)
    items = [{"key": STALL_KEY}, *({"key": f"quick-{i}"} for i in range(3))]
    job = Job(id="stuck", items=items, tab=StallsOnce, tabs=2, output_dir=tmp_path,
              attempt_timeout=0.05)
    with capture_logs() as logs:
        result = run_in_process(job)
    assert result.exit_code == 0
    assert sorted(output_keys(tmp_path / "stuck" / "results.jsonl")) == sorted(
        item["key"] for item in items)
    kills = [e["key"] for e in logs if e["event"] == "lease expired; killing its tab"]
    assert 1 <= len(kills) <= 3
    assert set(kills) == {STALL_KEY}
