"""The bundled demo site: fault plan, real server subprocess, real Chromium."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import Error as PlaywrightError

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from examples.demo_site import (  # noqa: E402
    FAULTS,
    SECTIONS,
    DemoSite,
    HTTPStatusError,
    SiteOptions,
    all_keys,
    demo_items,
    fault_plan,
    match_data,
    retry_after_seconds,
    scrape_demo,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

FAULTY = dict(
    matches=20,
    seed=11,
    fail_500=0.1,
    fail_429=0.1,
    retry_after=1.0,
    slow=0.05,
    slow_seconds=0.4,
    not_found=2,
    crash=2,
    memory=2,
    memory_mb=8,
    reset=2,
)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Playwright's async API runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="module")
async def browser(anyio_backend: str) -> AsyncIterator[Browser]:
    """One headless Chromium for the whole module."""
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh context and page per test."""
    context = await browser.new_context()
    try:
        created = await context.new_page()
        created.set_default_timeout(10_000)
        yield created
    finally:
        await context.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSite]:
    """One faulty demo site shared by the module; each test uses its own keys."""
    log = tmp_path_factory.mktemp("demo") / "requests.jsonl"
    with DemoSite(SiteOptions(**FAULTY, request_log=str(log))) as running:
        yield running


@pytest.fixture(scope="module")
def plan(site: DemoSite) -> dict[str, set[str]]:
    """The fault plan of the shared site."""
    return fault_plan(site.options)


def item_for(site: DemoSite, key: str) -> dict[str, str]:
    """The item dict of one key on the site."""
    return next(item for item in site.items() if item["key"] == key)


def clean_keys(site: DemoSite, plan: dict[str, set[str]]) -> list[str]:
    """Keys without any fault."""
    faulty = set().union(*plan.values())
    return [key for key in all_keys(site.options.matches) if key not in faulty]


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    """GET with urllib; returns status, headers and body even for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read().decode()


def test_fault_plan_is_deterministic_disjoint_and_exact() -> None:
    """The plan depends on the seed only, its sets are disjoint and have exact sizes."""
    options = SiteOptions(**FAULTY)
    first, second = fault_plan(options), fault_plan(SiteOptions(**FAULTY))
    assert first == second
    assert set(first) == set(FAULTS)
    sizes = {name: len(keys) for name, keys in first.items()}
    # 60 keys; 8 taken by exact counts, shares apply to the 52 left
    assert sizes == {
        "not_found": 2,
        "reset": 2,
        "crash": 2,
        "memory": 2,
        "fail_500": 5,
        "fail_429": 5,
        "slow": 3,
    }
    union = set().union(*first.values())
    assert len(union) == sum(sizes.values())
    assert union <= set(all_keys(20))
    assert fault_plan(SiteOptions(**{**FAULTY, "seed": 12})) != first
    assert all(not keys for keys in fault_plan(SiteOptions()).values())


def test_options_travel_on_the_command_line() -> None:
    """to_args and from_args round-trip every option."""
    options = SiteOptions(**FAULTY, retry_after_http_date=True, minimal=True, request_log="/x")
    assert SiteOptions.from_args(options.to_args()) == options
    assert SiteOptions.from_args([]) == SiteOptions()
    assert SiteOptions.from_args(["--fail-500", "0.25"]).fail_500 == 0.25


def test_demo_items_are_in_match_then_section_order() -> None:
    """demo_items lists three sections per match with the documented key and path."""
    items = demo_items("http://127.0.0.1:1/", 2)
    assert [item["key"] for item in items[:3]] == [f"match-000001/{s}" for s in SECTIONS]
    assert items[4] == {
        "key": "match-000002/statistics",
        "url": "http://127.0.0.1:1/match/000002/statistics",
    }
    assert len(items) == 6


@pytest.mark.anyio
@pytest.mark.browser
async def test_page_renders_with_javascript_deterministically(
    site: DemoSite, plan: dict[str, set[str]], page: Page
) -> None:
    """Raw HTML lacks the content; Chromium renders it; two scrapes give equal payloads."""
    clean = clean_keys(site, plan)
    keys = [next(k for k in clean if k.endswith(f"/{section}")) for section in SECTIONS]
    summary, statistics, lineups = (match_data(key) for key in keys)
    status, _, html = fetch(item_for(site, keys[2])["url"])
    assert status == 200
    assert 'id="content"' in html
    assert "data-ready" not in html
    assert lineups["home"] not in html
    assert lineups["home_lineup"][0] not in html

    for key in keys:
        first = await scrape_demo(page, item_for(site, key))
        second = await scrape_demo(page, item_for(site, key))
        assert first == second == match_data(key)
    assert {"score", "minute", "events"} <= set(summary)
    assert len(summary["events"]) == sum(map(int, summary["score"].split("-")))
    assert statistics["possession_home"] + statistics["possession_away"] == 100
    assert {"shots_home", "shots_away"} <= set(statistics)
    assert len(lineups["home_lineup"]) == len(lineups["away_lineup"]) == 11


@pytest.mark.anyio
@pytest.mark.browser
async def test_first_visit_500_then_success(
    site: DemoSite, plan: dict[str, set[str]], page: Page
) -> None:
    """A fail_500 key answers 500 once, then renders normally."""
    key = sorted(plan["fail_500"])[0]
    item = item_for(site, key)
    with pytest.raises(HTTPStatusError) as info:
        await scrape_demo(page, item)
    assert info.value.status == 500
    assert info.value.url == item["url"]
    assert info.value.retry_after is None
    assert str(info.value) == f"HTTP 500 for {item['url']}"
    assert await scrape_demo(page, item) == match_data(key)


@pytest.mark.anyio
@pytest.mark.browser
async def test_429_retry_after_in_seconds(
    site: DemoSite, plan: dict[str, set[str]], page: Page
) -> None:
    """A fail_429 key answers 429 with Retry-After in seconds, then succeeds."""
    key = sorted(plan["fail_429"])[0]
    item = item_for(site, key)
    with pytest.raises(HTTPStatusError) as info:
        await scrape_demo(page, item)
    assert info.value.status == 429
    assert info.value.retry_after == "1"
    assert retry_after_seconds(info.value.retry_after) == 1.0
    assert await scrape_demo(page, item) == match_data(key)


@pytest.mark.anyio
@pytest.mark.browser
async def test_429_retry_after_as_http_date(page: Page) -> None:
    """With retry_after_http_date the header is a whole-second HTTP-date in the future."""
    options = SiteOptions(matches=4, fail_429=1.0, retry_after=1.5, retry_after_http_date=True)
    key = sorted(fault_plan(options)["fail_429"])[0]
    with DemoSite(options) as demo:
        before = time.time()
        with pytest.raises(HTTPStatusError) as info:
            await scrape_demo(page, item_for(demo, key))
        after = time.time()
    header = info.value.retry_after
    assert info.value.status == 429
    assert header is not None
    assert header.endswith(" GMT")
    when = email.utils.parsedate_to_datetime(header).timestamp()
    assert when == int(when)
    assert before + 1.5 <= when <= after + 2.5
    assert 0 < retry_after_seconds(header, now=before) <= 2.5 + (after - before)


@pytest.mark.anyio
@pytest.mark.browser
async def test_not_found_is_permanent(
    site: DemoSite, plan: dict[str, set[str]], page: Page
) -> None:
    """A not_found key answers 404 on every visit."""
    item = item_for(site, sorted(plan["not_found"])[0])
    for _ in range(3):
        with pytest.raises(HTTPStatusError) as info:
            await scrape_demo(page, item)
        assert info.value.status == 404


@pytest.mark.anyio
@pytest.mark.browser
async def test_reset_key_fails_with_a_network_error(
    site: DemoSite, plan: dict[str, set[str]], page: Page
) -> None:
    """A reset key closes the connection without a response, on every visit."""
    key = sorted(plan["reset"])[0]
    others = clean_keys(site, plan)[-3:]
    for other in others:
        with pytest.raises(PlaywrightError, match=r"net::ERR_"):
            await scrape_demo(page, item_for(site, key))
        # the same page goes straight on with the next item
        assert await scrape_demo(page, item_for(site, other)) == match_data(other)
    statuses = {r["status"] for r in site.requests() if r["key"] == key}
    assert statuses == {0}


@pytest.mark.anyio
@pytest.mark.browser
async def test_crash_and_memory_markers(
    site: DemoSite, plan: dict[str, set[str]], page: Page
) -> None:
    """Crash pages carry their marker on the first visit only; memory pages allocate."""
    crash_key = sorted(plan["crash"])[0]
    memory_key = sorted(plan["memory"])[0]
    marker = "meta[name='fault']"
    await page.goto(item_for(site, crash_key)["url"])
    assert await page.get_attribute(marker, "content") == "crash"
    assert await scrape_demo(page, item_for(site, crash_key)) == match_data(crash_key)
    assert await page.query_selector(marker) is None

    assert await scrape_demo(page, item_for(site, memory_key)) == match_data(memory_key)
    assert await page.get_attribute(marker, "content") == "memory"
    held = await page.evaluate("window.__faultMemory.reduce((n, a) => n + a.length, 0)")
    assert held == site.options.memory_mb * 1024 * 1024


@pytest.mark.anyio
@pytest.mark.browser
async def test_request_log_records_every_request(
    site: DemoSite, plan: dict[str, set[str]], page: Page
) -> None:
    """Every request lands in the log with its key, status and visit number."""
    key = sorted(plan["fail_500"])[-1]
    item = item_for(site, key)
    with pytest.raises(HTTPStatusError):
        await scrape_demo(page, item)
    await scrape_demo(page, item)
    status, _, _ = fetch(site.url + "/")
    assert status == 200
    log = site.requests()
    pages = [r for r in log if r["key"] == key]
    assert [(r["status"], r["visit"]) for r in pages] == [(500, 1), (200, 2)]
    assert all(r["path"] == item["url"].removeprefix(site.url) for r in pages)
    api_path = "/api" + pages[0]["path"] + ".json"
    assert any(r["path"] == api_path and r["status"] == 200 for r in log)
    assert any(r["path"] == "/static/render.js" for r in log)
    assert log[-1]["path"] == "/" and log[-1]["key"] is None
    assert all(isinstance(r["t"], float) for r in log)


def test_slow_key_is_delayed(site: DemoSite, plan: dict[str, set[str]]) -> None:
    """A slow key answers after slow_seconds on every visit."""
    url = item_for(site, sorted(plan["slow"])[0])["url"]
    for _ in range(2):
        started = time.monotonic()
        status, _, _ = fetch(url)
        assert status == 200
        assert time.monotonic() - started >= site.options.slow_seconds


@pytest.mark.anyio
@pytest.mark.browser
async def test_minimal_mode_renders_inline(tmp_path: Path, page: Page) -> None:
    """Minimal pages render inline data without extra requests, same payloads."""
    log = tmp_path / "requests.jsonl"
    with DemoSite(SiteOptions(matches=3, minimal=True, request_log=str(log))) as demo:
        _, _, html = fetch(demo.items()[0]["url"])
        assert len(html) < 2500
        for item in demo.items():
            assert await scrape_demo(page, item) == match_data(item["key"])
        requests = demo.requests()
    assert {r["kind"] for r in requests} == {"page"}
    assert len(requests) == 1 + len(demo.items())


def test_subprocess_is_gone_after_exit() -> None:
    """Leaving the block stops the server process cleanly (exit status 0)."""
    with DemoSite(SiteOptions(matches=1)) as demo:
        pid = demo.pid
        assert psutil.pid_exists(pid)
        assert fetch(demo.url + "/")[0] == 200
    assert demo.returncode == 0
    assert not psutil.pid_exists(pid)


def test_server_exits_when_its_parent_dies() -> None:
    """A server whose parent dies without cleanup stops on its own."""
    code = (
        "import os\n"
        "from examples.demo_site import DemoSite, SiteOptions\n"
        "site = DemoSite(SiteOptions(matches=1)).start()\n"
        "print(site.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and running(pid):
        time.sleep(0.05)
    assert not running(pid)


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_start_failure_reports_stderr() -> None:
    """A server that cannot start raises with its stderr in the message."""
    demo = DemoSite(SiteOptions(request_log="/nonexistent-dir/requests.jsonl"))
    with pytest.raises(RuntimeError, match="No such file or directory"), demo:
        pass
