"""Resuming real jobs: stop and go on, damaged snapshots, newer versions, wrong keys,
locks, a changed item list, and inspecting the snapshots a run left behind."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
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
    wait_for,
)
from structlog.testing import capture_logs

from actors import Job
from actors.checkpoint import CheckpointConfig
from actors.checkpoints import CheckpointStore
from actors.job import JobError
from actors.snapshot import CheckpointNotFoundError, CheckpointStatus
from examples.demo_site import DemoSite, SiteOptions, item_path, match_data, scrape_demo
from supervisor import Event

pytestmark = pytest.mark.browser

MATCHES = 15  # the shared site: 45 items
BASE_JOB = "league"
CHECKSUM_MISMATCH = (
    "checksum mismatch: the content does not hash to the stored SHA-256 "
    "(the file is damaged or was edited)"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSite]:
    """One minimal demo site for the module, logging every request."""
    log = tmp_path_factory.mktemp("site") / "requests.jsonl"
    with DemoSite(SiteOptions(matches=MATCHES, minimal=True, request_log=str(log))) as demo:
        yield demo


@pytest.fixture(scope="module")
def partial_run(site: DemoSite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of 45 items stopped after 30, a snapshot every 3 items: its job dir."""
    out = tmp_path_factory.mktemp("partial")
    job = Job(id=BASE_JOB, items=site.items(), scrape=scrape_demo, tabs=3, output_dir=out,
              stop_after=30, checkpoint=CheckpointConfig(every_items=3))
    assert run_in_process(job).exit_code == 130
    job_dir = out / BASE_JOB
    assert len(output_keys(job_dir / "results.jsonl")) == 30
    assert len(list(job_dir.glob("checkpoint-*.json"))) >= 6
    return job_dir


def copy_of(job_dir: Path, root: Path) -> Path:
    """A copy of a job directory under ``root`` (the lock file left out)."""
    target = root / job_dir.name
    shutil.copytree(job_dir, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def snapshots(job_dir: Path) -> list[Path]:
    """The job's live snapshot files, oldest first."""
    return sorted(job_dir.glob("checkpoint-*.json*"))


def contents(job_dir: Path) -> dict[str, bytes]:
    """Every file of a job directory but the lock, by name."""
    return {p.name: p.read_bytes() for p in sorted(job_dir.iterdir()) if p.name != ".lock"}


def json_error(raw: bytes) -> str:
    """The reason ``decode`` gives for bytes that are not JSON."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} at byte {exc.pos}"
    raise AssertionError("the bytes parse as JSON")


def site_log(site: DemoSite) -> Path:
    """The request log of ``site``."""
    assert site.options.request_log is not None
    return Path(site.options.request_log)


def start_failures(events: list[Event]) -> list[tuple[str, str]]:
    """``(path, error)`` of every actor that failed to start."""
    return [(e.path, str(e.error)) for e in events if e.kind == "start_failed"]


def assert_complete(job_dir: Path, keys: list[str]) -> None:
    """results.jsonl holds each of ``keys`` once, with the demo's payload, and nothing else."""
    records = output_lines(job_dir / "results.jsonl")
    assert duplicates(r["key"] for r in records) == []
    assert sorted(r["key"] for r in records) == sorted(keys)
    assert all(r["data"] == match_data(r["key"]) for r in records)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stop_after_400_then_resume_scrapes_exactly_the_other_600(tmp_path: Path) -> None:
    """The seeds' scenario: 1,000 items, stop after 400 (status 130), resume the other 600."""
    log = tmp_path / "requests.jsonl"
    with DemoSite(SiteOptions(matches=334, minimal=True, request_log=str(log))) as demo:
        items = demo.items()[:1000]
        keys = [item["key"] for item in items]
        results = tmp_path / "seeds" / "results.jsonl"

        first_start = time.time()
        first = run_in_process(Job(id="seeds", items=items, scrape=scrape_demo, tabs=4,
                                   output_dir=tmp_path, stop_after=400))
        second_start = time.time()
        assert first.exit_code == 130
        done = output_keys(results)
        assert len(done) == 400
        assert duplicates(done) == []
        assert page_visits(log, first_start, second_start) == Counter(done)

        second = run_in_process(Job(id="seeds", items=items, scrape=scrape_demo, tabs=4,
                                    output_dir=tmp_path))
        assert second.exit_code == 0
        rest = sorted(set(keys) - set(done))
        assert len(rest) == 600
        assert page_visits(log, second_start) == Counter(rest)
    assert_complete(tmp_path / "seeds", keys)


def test_corrupt_snapshots_are_set_aside_and_the_job_resumes_from_an_older_one(
    site: DemoSite, partial_run: Path, tmp_path: Path
) -> None:
    """Bit flip, truncation, wrong checksum, bad JSON: each is reported and set aside."""
    job_dir = copy_of(partial_run, tmp_path)
    done = output_keys(job_dir / "results.jsonl")
    *older, invalid, wrong_sum, truncated, flipped = snapshots(job_dir)

    raw = bytearray(flipped.read_bytes())
    raw[raw.index(b'"match-') + 1] ^= 0x01  # "match-" -> "latch-": still JSON
    flipped.write_bytes(bytes(raw))
    raw = bytearray(truncated.read_bytes())
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    raw = bytearray(wrong_sum.read_bytes())
    digest = orjson.loads(raw)["checksum"]
    wrong_sum.write_bytes(bytes(raw).replace(digest.encode(), b"0" * 64))
    invalid.write_bytes(b'{"version": "1.0.0", "job_id": league}')
    expected = [
        (flipped, CHECKSUM_MISMATCH),
        (truncated, json_error(truncated.read_bytes())),
        (wrong_sum, CHECKSUM_MISMATCH),
        (invalid, json_error(invalid.read_bytes())),
    ]
    damaged = {path.name: path.read_bytes() for path, _ in expected}

    events: list[Event] = []
    start = time.time()
    with capture_logs() as logs:
        result = run_in_process(Job(id=BASE_JOB, items=site.items(), scrape=scrape_demo, tabs=3,
                                    output_dir=tmp_path), events)
    end = time.time()

    assert result.exit_code == 0
    reported = [(e.data["file"], e.data["reason"]) for e in events
                if e.kind == "checkpoint_corrupted"]
    assert reported == [(f"{path}.corrupt", reason) for path, reason in expected]
    for path, _ in expected:
        assert not path.exists()
        assert Path(f"{path}.corrupt").read_bytes() == damaged[path.name]
    critical = [(e["path"], e["reason"]) for e in logs
                if e["event"] == "corrupt checkpoint set aside; using the previous one"]
    assert critical == [(f"{path}.corrupt", reason) for path, reason in expected]
    recovered = [e for e in logs if e["event"] == "checkpoint state recovered"]
    fallback = int(older[-1].name.split("-")[1].split(".")[0])
    assert [e["snapshot"] for e in recovered] == [fallback]
    every_key = [item["key"] for item in site.items()]
    rest = set(every_key) - set(done)
    assert len(rest) == 15
    assert page_visits(site_log(site), start, end) == Counter(rest)
    assert_complete(job_dir, every_key)


def test_snapshot_of_a_newer_major_version_refuses_to_start(
    site: DemoSite, partial_run: Path, tmp_path: Path
) -> None:
    """A 2.x snapshot stops the job before anything runs, and no file is changed."""
    job_dir = copy_of(partial_run, tmp_path)
    newest = snapshots(job_dir)[-1]
    doc = orjson.loads(newest.read_bytes())
    del doc["checksum"]
    doc["version"] = "2.0.0"
    body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    newest.write_bytes(b'%s,"checksum":"%s"}' % (body[:-1],
                                                  hashlib.sha256(body).hexdigest().encode()))
    before = contents(job_dir)

    events: list[Event] = []
    start = time.time()
    result = run_in_process(Job(id=BASE_JOB, items=site.items(), scrape=scrape_demo, tabs=3,
                                output_dir=tmp_path), events)

    assert result.exit_code == 1
    assert start_failures(events)[0] == (
        "job/checkpoint",
        f"{newest}: checkpoint schema 2.0.0 is newer than this program supports (1.x); "
        "upgrade scorewise",
    )
    assert contents(job_dir) == before
    assert page_visits(site_log(site), start) == Counter()


def test_snapshot_encrypted_with_another_key_refuses_to_start(
    site: DemoSite, tmp_path: Path
) -> None:
    """With the wrong key the job refuses to start, says so, and changes no file."""
    right, wrong = bytes(range(32)), bytes(range(1, 33))
    right_file, wrong_file = tmp_path / "right.key", tmp_path / "wrong.key"
    right_file.write_text(right.hex())
    wrong_file.write_text(wrong.hex())
    items = site.items()[:9]
    sealed = Job(id="sealed", items=items, scrape=scrape_demo, tabs=3, output_dir=tmp_path,
                 stop_after=5, checkpoint=CheckpointConfig(every_items=2, encryption=True,
                                                           key_file=str(right_file)))
    assert run_in_process(sealed).exit_code == 130
    job_dir = tmp_path / "sealed"
    files = snapshots(job_dir)
    assert len(files) >= 2
    assert all(p.suffix == ".enc" for p in files)
    before = contents(job_dir)

    events: list[Event] = []
    start = time.time()
    result = run_in_process(Job(id="sealed", items=items, scrape=scrape_demo, tabs=3,
                                output_dir=tmp_path,
                                checkpoint=CheckpointConfig(encryption=True,
                                                            key_file=str(wrong_file))), events)

    def key_id(key: bytes) -> str:
        return hmac.new(key, b"scorewise checkpoint key id", hashlib.sha256).digest()[:8].hex()

    assert files[-1].read_bytes()[5:13].hex() == key_id(right)
    assert result.exit_code == 1
    assert start_failures(events)[0] == (
        "job/checkpoint",
        f"{files[-1]}: checkpoint was encrypted with a different key (key id {key_id(right)}, "
        f"the given key has id {key_id(wrong)})",
    )
    assert contents(job_dir) == before
    assert page_visits(site_log(site), start) == Counter()


@pytest.mark.timeout(120)
def test_second_run_of_a_locked_job_fails_at_once_naming_the_holder(
    site: DemoSite, tmp_path: Path
) -> None:
    """While one process runs a job, a second run of it is refused with the holder's pid."""
    cfg = {"url": site.url, "matches": MATCHES, "id": "busy", "out": str(tmp_path), "tabs": 2}
    proc = spawn_job(cfg, tmp_path / "busy.log")
    lock = tmp_path / "busy" / ".lock"
    try:
        wait_for(lambda: lock.exists() and lock.read_text() == f"{proc.pid}\n", 30,
                 "the first run to take the lock", proc)
        before = {p.pid for p in descendants(os.getpid())}
        started = time.monotonic()
        with pytest.raises(JobError) as info:
            run_in_process(Job(id="busy", items=site.items(), scrape=scrape_demo,
                               output_dir=tmp_path))
        elapsed = time.monotonic() - started
        assert str(info.value) == (
            f"job 'busy' cannot start: job 'busy' is locked by process {proc.pid} "
            f"(lock file {lock})"
        )
        assert elapsed < 1.0
        assert {p.pid for p in descendants(os.getpid())} == before
        assert proc.poll() is None
    finally:
        left = kill9(proc)
    assert left == []


def test_resume_with_a_changed_item_list(site: DemoSite, tmp_path: Path) -> None:
    """New keys are scraped; dropped finished keys stay; a finished key's new URL is not."""
    first_items = site.items()[:12]
    assert run_in_process(Job(id="changed", items=first_items, scrape=scrape_demo, tabs=3,
                              output_dir=tmp_path, stop_after=8)).exit_code == 130
    results = tmp_path / "changed" / "results.jsonl"
    done = output_keys(results)
    assert len(done) == 8
    dropped, moved = done[:2], done[2]
    moved_to = item_path(14, "summary")
    second_items = [
        {"key": item["key"], "url": site.url + moved_to} if item["key"] == moved else item
        for item in first_items if item["key"] not in dropped
    ] + site.items()[12:18]
    todo = sorted({item["key"] for item in second_items} - set(done))
    assert len(todo) == 10

    start = time.time()
    with capture_logs() as logs:
        result = run_in_process(Job(id="changed", items=second_items, scrape=scrape_demo,
                                    tabs=3, output_dir=tmp_path))
    assert result.exit_code == 0
    assert page_visits(site_log(site), start) == Counter(todo)
    warned = [(e["log_level"], e["key"]) for e in logs
              if e["event"] == "a finished item changed (e.g. its URL); it is not scraped again"]
    assert warned == [("warning", moved)]
    assert_complete(tmp_path / "changed", [*done, *todo])


def test_inspect_a_finished_jobs_snapshots(site: DemoSite, tmp_path: Path) -> None:
    """list, show, verify and delete work on the snapshots a real run left behind."""
    items = site.items()[:9]
    assert run_in_process(Job(id="inspected", items=items, scrape=scrape_demo, tabs=3,
                              output_dir=tmp_path,
                              checkpoint=CheckpointConfig(every_items=3))).exit_code == 0
    job_dir = tmp_path / "inspected"
    store = CheckpointStore(tmp_path, "inspected")
    infos = store.list()
    seqs = [i.sequence_number for i in infos]
    assert len(infos) >= 2
    assert seqs == sorted(set(seqs))
    assert [i.path for i in infos] == snapshots(job_dir)
    assert all(i.valid and not i.quarantined and i.reason is None for i in infos)
    assert all(i.status is CheckpointStatus.COMPLETED for i in infos)
    assert [i.size for i in infos] == [i.path.stat().st_size for i in infos]
    assert len({i.id for i in infos}) == len(infos)

    newest = store.show(seqs[-1])
    assert newest.id == infos[-1].id
    assert store.show(str(infos[-1].id)) == newest
    progress = newest.data.progress
    assert progress.completed_items == sorted(item["key"] for item in items)
    assert (progress.pending_items, progress.failed_items) == ([], [])
    assert (progress.total_count, progress.completion_percentage) == (9, 100.0)
    assert newest.metadata.completed_items == 9
    assert newest.data.job_state["results_offset"] == (job_dir / "results.jsonl").stat().st_size
    assert [store.verify(s) for s in seqs] == [(True, "ok")] * len(seqs)
    assert store.verify(str(infos[0].id)) == (True, "ok")

    oldest = infos[0].path
    raw = bytearray(oldest.read_bytes())
    raw[raw.index(b'"match-') + 1] ^= 0x01
    oldest.write_bytes(bytes(raw))
    assert store.verify(seqs[0]) == (False, CHECKSUM_MISMATCH)
    assert not store.list()[0].valid

    assert store.delete(seqs[0]) == oldest
    assert not oldest.exists()
    assert [i.sequence_number for i in store.list()] == seqs[1:]
    with pytest.raises(CheckpointNotFoundError) as info:
        store.show(seqs[0])
    assert str(info.value) == f"job 'inspected' has no checkpoint {seqs[0]!r}"
