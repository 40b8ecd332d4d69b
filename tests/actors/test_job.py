"""Whole scrape jobs: real Chromium, a real demo site process, real files, real kill -9."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from sitekit import by_key, clean_keys, fast_retry, items_for, read_jsonl, run, visits

from actors import BrowserConfig, BrowserNotFound, Faults, Job, run_job, run_job_async
from actors.job import JobError
from examples.demo_site import DemoSite, SiteOptions, match_data, scrape_demo
from supervisor import WrongBackend

pytestmark = pytest.mark.browser

SITE = SiteOptions(matches=60, reset=3, crash=1, minimal=True)


@pytest.fixture(scope="module")
def site(module_demo_site: Any) -> DemoSite:
    """One demo site for the module; each test takes its own keys from its plan."""
    return module_demo_site(SITE)


def url_of(site: DemoSite, key: str) -> str:
    return items_for(site, [key])[0]["url"]


#: pid -> (create time, whether it is a browser's main process, not a helper)
Seen = dict[int, tuple[float, bool]]


def chromium_children() -> Seen:
    """This process's descendants that run Chromium."""
    found: Seen = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
            if "chromium" in " ".join(cmd):
                main = not any(arg.startswith("--type=") for arg in cmd)
                found[proc.pid] = (proc.create_time(), main)
        except psutil.Error:
            continue
    return found


def still_running(seen: Seen) -> list[int]:
    """The processes of ``seen`` that still run (a reused pid is another process)."""
    alive = []
    for pid, (created, _) in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            continue
    return alive


async def watch_chromium(seen: Seen) -> None:
    """Record every Chromium process (browser or helper) that runs while this runs."""
    while True:
        for pid, info in (await anyio.to_thread.run_sync(chromium_children)).items():
            seen.setdefault(pid, info)
        await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_items_failing_with_network_errors_end_in_failures_file(
    site: DemoSite, tmp_path: Path
) -> None:
    """10 items, 3 reset on every visit: 7 scraped, 3 failed as network errors, exit 4."""
    resets = sorted(site.plan()["reset"])
    good = clean_keys(site)[:7]
    policy = fast_retry(max_attempts=2)
    job = Job(id="seeds", items=items_for(site, resets + good), scrape=scrape_demo, tabs=3,
              retry=policy, output_dir=tmp_path, attempt_timeout=20)

    result = await run(job)

    assert result.exit_code == 4
    assert (result.total, result.done, result.failed) == (10, 7, 3)
    assert result.retries == 3 * policy.max_attempts
    assert result.failures_by_reason == {
        "attempts_exhausted: net::ERR_EMPTY_RESPONSE (network)": 3}
    results = read_jsonl(result.results_path)
    assert sorted(r["key"] for r in results) == sorted(good)
    assert all(r["data"] == match_data(r["key"]) for r in results)
    failures = by_key(result.failures_path)
    assert sorted(failures) == resets
    for key, failure in failures.items():
        assert failure["category"] == "network"
        assert failure["attempts"] == policy.max_attempts + 1
        assert failure["reason"] == "attempts_exhausted: net::ERR_EMPTY_RESPONSE"
        assert failure["error_type"] == "Error"
        first_line = failure["message"].splitlines()[0]
        assert first_line == f"Page.goto: net::ERR_EMPTY_RESPONSE at {url_of(site, key)}"
        assert failure["stack"].startswith("Traceback (most recent call last):")
        assert "net::ERR_EMPTY_RESPONSE" in failure["stack"]
        assert re.fullmatch(r"[0-9a-f]{16}", failure["correlation_id"])
        assert failure["status"] is None
        # Chromium itself may repeat a request whose reused connection was reset.
        assert len(visits(site, key)) >= policy.max_attempts + 1
    assert len({f["correlation_id"] for f in failures.values()}) == 3


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_browser_killed_three_times_every_item_written_exactly_once(
    site: DemoSite, tmp_path: Path
) -> None:
    """Three kill -9s of Chromium in 150 items: it comes back, each item is written once."""
    keys = clean_keys(site)[:150]
    job = Job(id="kills", items=items_for(site, keys), scrape=scrape_demo, tabs=4,
              retry=fast_retry(max_attempts=8), output_dir=tmp_path, attempt_timeout=20,
              faults=Faults(kill_browser_after=(30, 70, 110)))
    seen: Seen = {}

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_chromium, seen)
        result = await run(job, limit=100)
        tg.cancel_scope.cancel()

    assert result.exit_code == 0
    assert result.restarts.get("browser", 0) >= 3
    assert (result.total, result.done, result.failed) == (150, 150, 0)
    # A kill fails only the attempts in flight: tabs of a dead browser take no more work.
    assert result.retries <= 3 * job.tabs
    lines = read_jsonl(result.results_path)
    counts = Counter(r["key"] for r in lines)
    assert len(lines) == 150
    assert set(counts) == set(keys)
    assert max(counts.values()) == 1
    assert all(r["data"] == match_data(r["key"]) for r in lines)
    assert read_jsonl(result.failures_path) == []
    assert sum(main for _, main in seen.values()) >= 4  # the first browser and 3 relaunches
    # Chromium's helper processes exit shortly after their browser; give them a moment.
    deadline = time.monotonic() + 10
    while (chromium_children() or still_running(seen)) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert chromium_children() == {}
    assert still_running(seen) == []


@pytest.mark.anyio
async def test_renderer_crash_restarts_only_that_tab(site: DemoSite, tmp_path: Path) -> None:
    """A crashed renderer restarts its tab (not the browser); the item is retried and done."""
    (crashing,) = site.plan()["crash"]
    keys = [crashing, *clean_keys(site)[150:154]]
    job = Job(id="crash", items=items_for(site, keys), scrape=scrape_demo, tabs=2,
              retry=fast_retry(max_attempts=2), output_dir=tmp_path, attempt_timeout=20,
              faults=Faults(crash_marker=True))

    result = await run(job)

    assert result.exit_code == 0
    assert result.restarts == {"tab": 1}
    assert (result.done, result.failed, result.retries) == (5, 0, 1)
    results = by_key(result.results_path)
    assert sorted(results) == sorted(keys)
    assert results[crashing]["attempts"] == 2
    assert results[crashing]["data"] == match_data(crashing)
    assert [v["status"] for v in visits(site, crashing)] == [200, 200]
    assert read_jsonl(result.failures_path) == []


@pytest.mark.anyio
async def test_bad_items_and_bad_results_fail_alone(site: DemoSite, tmp_path: Path) -> None:
    """Keyless items are skipped, a duplicate keeps its first item, a set in a result fails."""
    keys = clean_keys(site)[154:160]
    unserialisable, duplicated = keys[0], keys[1]
    items: list[Any] = [
        {"url": site.url + "/no-key"},
        {"key": "  ", "url": site.url + "/blank-key"},
        "match-000001/summary",
        *items_for(site, keys),
        {"key": duplicated, "url": site.url + "/duplicate"},
    ]

    async def scrape(page: Any, item: dict[str, Any]) -> dict[str, Any]:
        data = await scrape_demo(page, item)
        if item["key"] == unserialisable:
            data["tags"] = {"derby", "final"}
        return data

    job = Job(id="bad-input", items=items, scrape=scrape, tabs=2,
              retry=fast_retry(max_attempts=2), output_dir=tmp_path, attempt_timeout=20)

    result = await run(job)

    assert result.exit_code == 4
    assert result.invalid_items == [
        f"item 0: item has no 'key' (a non-empty string): {{'url': '{site.url}/no-key'}}",
        f"item 1: item has no 'key' (a non-empty string): "
        f"{{'key': '  ', 'url': '{site.url}/blank-key'}}",
        "item 2: an item must be a mapping with a 'key', got str",
    ]
    assert result.duplicate_keys == [duplicated]
    assert (result.total, result.done, result.failed, result.retries) == (6, 5, 1, 0)
    results = by_key(result.results_path)
    assert sorted(results) == sorted(keys[1:])
    assert all(r["data"] == match_data(key) for key, r in results.items())
    (failure,) = read_jsonl(result.failures_path)
    assert failure["key"] == unserialisable
    assert (failure["category"], failure["reason"], failure["error_type"]) == (
        "application", "bad scrape result", "TypeError")
    assert failure["message"] == ("scrape returned a value that is not JSON-serialisable:"
                                  " Type is not JSON serializable: set")
    assert failure["attempts"] == 1
    assert failure["stack"]
    assert len(visits(site, unserialisable)) == 1
    paths = {r["path"] for r in site.requests()}
    assert not paths & {"/no-key", "/blank-key", "/duplicate"}


def test_missing_browser_executable_is_a_configuration_error(
    site: DemoSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A browser path that does not exist stops the job before it starts, naming the path."""
    keys = clean_keys(site)[160:163]
    before = len(site.requests())
    started = time.time()
    job = Job(id="no-browser", items=items_for(site, keys), scrape=scrape_demo, tabs=2,
              output_dir=tmp_path, browser=BrowserConfig(executable_path="/nonexistent/chrome"))

    message = ("job 'no-browser' cannot start: browser '/nonexistent/chrome' (from"
               " executable_path) does not exist or is not an executable file")
    with pytest.raises(JobError, match=re.escape(message)) as info:
        anyio.run(run_job_async, job)
    assert isinstance(info.value.__cause__, BrowserNotFound)
    assert run_job(job) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "no-browser" / "results.jsonl").exists()
    assert len(site.requests()) == before
    assert [pid for pid, (created, _) in chromium_children().items() if created >= started] == []


def test_job_refuses_to_run_under_trio(site: DemoSite, tmp_path: Path) -> None:
    """run_job_async under trio raises WrongBackend before touching anything."""
    job = Job(id="trio", items=items_for(site, clean_keys(site)[:1]), scrape=scrape_demo,
              output_dir=tmp_path)

    with pytest.raises(WrongBackend) as info:
        anyio.run(run_job_async, job, backend="trio")

    assert str(info.value) == ("a scrape job needs the asyncio backend (Playwright is"
                               " asyncio-only); it was started under trio")
    assert not (tmp_path / "trio").exists()
