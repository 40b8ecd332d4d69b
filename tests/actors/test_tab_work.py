"""Tabs and the work queue up close: retry timing, fail fast, timeouts, the tab plug-in."""

from __future__ import annotations

import functools
import math
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import anyio
import psutil
import pytest
from sitekit import by_key, clean_keys, fast_retry, items_for, read_jsonl, run, visits

from actors import Job, RetryPolicy, TabActor
from actors.browser import BrowserActor, BrowserConfig, PlaywrightHost
from examples.demo_site import DemoSite, SiteOptions, match_data, scrape_demo
from supervisor import ChildSpec, StartError, SupervisorSpec, WrongBackend, start_tree

pytestmark = pytest.mark.browser

SITE = SiteOptions(matches=10, reset=1, not_found=1, fail_500=0.2, fail_429=0.1,
                   retry_after=1.5, minimal=True)
READY = "#content[data-ready='1']"


@pytest.fixture(scope="module")
def site(module_demo_site: Any) -> DemoSite:
    """One demo site for the module; each test takes its own keys from its plan."""
    return module_demo_site(SITE)


def get(url: str) -> int:
    """GET ``url`` outside the browser; returns the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def gone(pid: int) -> bool:
    """True if process ``pid`` has exited (a zombie waiting to be reaped counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.anyio
async def test_backoff_gaps_follow_the_policy(site: DemoSite, tmp_path: Path) -> None:
    """A key that always resets is retried max_attempts times, base*multiplier**n apart."""
    (reset,) = site.plan()["reset"]
    policy = RetryPolicy.for_testing(base_delay=0.3, multiplier=2.0, max_delay=10.0,
                                     max_attempts=4, jitter_enabled=False)

    async def scrape(page: Any, item: dict[str, Any]) -> dict[str, Any]:
        try:
            return await scrape_demo(page, item)
        except Exception:
            # The end of the attempt, in the server's log too.
            await anyio.to_thread.run_sync(get, site.url + "/attempt-failed")
            raise

    job = Job(id="backoff", items=items_for(site, [reset]), scrape=scrape, tabs=1,
              retry=policy, output_dir=tmp_path, attempt_timeout=20)

    result = await run(job)

    assert result.exit_code == 4
    assert (result.done, result.failed, result.retries) == (0, 1, policy.max_attempts)
    failure = by_key(result.failures_path)[reset]
    assert failure["attempts"] == policy.max_attempts + 1
    assert failure["reason"] == "attempts_exhausted: net::ERR_EMPTY_RESPONSE"
    ends = [r["t"] for r in site.requests() if r["path"] == "/attempt-failed"]
    assert len(ends) == policy.max_attempts + 1
    # Chromium may repeat a reset request by itself: an attempt is 1 or more visits.
    times = [v["t"] for v in visits(site, reset)]
    waits = [min(t for t in times if t > end) - end for end in ends[:-1]]
    delays = [policy.delay(n) for n in range(1, policy.max_attempts + 1)]
    assert delays == pytest.approx([0.3, 0.6, 1.2, 2.4])
    # From the end of one attempt to the start of the next: the policy's delay, plus the
    # tab settling its page and the lease travelling (up to a second on a loaded machine).
    # A multiplier of 1.5 or 2.5 would miss these bounds.
    assert all(delay <= wait < delay + 1.2 for wait, delay in zip(waits, delays, strict=True)), (
        waits)


@pytest.mark.anyio
async def test_retry_after_is_waited_out_a_404_is_final_a_500_is_retried(
    site: DemoSite, demo_site: Any, tmp_path: Path
) -> None:
    """429s wait for Retry-After (seconds or HTTP-date), a 404 fails at once, a 500 retries."""
    plan = site.plan()
    (missing,) = plan["not_found"]
    error_500 = sorted(plan["fail_500"])[0]
    limited = sorted(plan["fail_429"])[0]
    dated_site = demo_site(SiteOptions(matches=1, fail_429=1.0, retry_after=1.0,
                                       retry_after_http_date=True, minimal=True))
    dated_item = dated_site.items()[0]
    dated = "dated/" + dated_item["key"]
    items = [*items_for(site, [missing, error_500, limited]),
             {"key": dated, "url": dated_item["url"]}]
    job = Job(id="statuses", items=items, scrape=scrape_demo, tabs=4,
              retry=fast_retry(max_attempts=3), output_dir=tmp_path, attempt_timeout=20)

    result = await run(job)

    assert result.exit_code == 4
    assert (result.done, result.failed, result.retries) == (3, 1, 3)
    (failure,) = read_jsonl(result.failures_path)
    assert (failure["key"], failure["attempts"], failure["status"]) == (missing, 1, 404)
    assert (failure["reason"], failure["category"]) == ("HTTP 404", "external")
    assert failure["message"] == f"HTTP 404 for {items[0]['url']}"
    results = by_key(result.results_path)
    assert {key: r["attempts"] for key, r in results.items()} == {
        error_500: 2, limited: 2, dated: 2}
    assert results[error_500]["data"] == match_data(error_500)
    assert results[dated]["data"] == match_data(dated_item["key"])

    assert [v["status"] for v in visits(site, missing)] == [404]
    assert [v["status"] for v in visits(site, error_500)] == [500, 200]
    first, second = visits(site, limited)
    assert (first["status"], second["status"]) == (429, 200)
    assert 1.5 <= second["t"] - first["t"] < 1.5 + 3.0
    first, second = visits(dated_site, dated_item["key"])
    assert (first["status"], second["status"]) == (429, 200)
    # The header is the HTTP-date ceil(now + 1 s); the retry must not come before it.
    assert second["t"] >= math.ceil(first["t"] + 1.0)
    assert second["t"] - first["t"] < 2.0 + 3.0


@pytest.mark.anyio
async def test_error_page_fails_fast_while_scrape_waits_for_a_selector(
    site: DemoSite, tmp_path: Path
) -> None:
    """A 500 page cuts a scrape waiting for content only the real page has; retried at once."""
    error_500 = sorted(site.plan()["fail_500"])[1]
    keys = [error_500, *clean_keys(site)[:2]]

    async def scrape(page: Any, item: dict[str, Any]) -> dict[str, Any]:
        await page.goto(item["url"])
        await page.wait_for_selector(READY)  # Playwright's default timeout: 30 s
        return {"key": await page.get_attribute("#content", "data-key"),
                "score": await page.inner_text("[data-field=score]")}

    job = Job(id="fail-fast", items=items_for(site, keys), scrape=scrape, tabs=2,
              retry=fast_retry(max_attempts=2), output_dir=tmp_path)

    result = await run(job)

    assert result.exit_code == 0
    assert (result.done, result.failed, result.retries) == (3, 0, 1)
    results = by_key(result.results_path)
    assert results[error_500]["attempts"] == 2
    assert results[error_500]["data"] == {"key": error_500,
                                          "score": match_data(error_500)["score"]}
    first, second = visits(site, error_500)
    assert (first["status"], second["status"]) == (500, 200)
    assert second["t"] - first["t"] < 0.05 + 8.0


@pytest.mark.anyio
async def test_hung_scrape_is_cut_by_attempt_timeout(site: DemoSite, tmp_path: Path) -> None:
    """A scrape that never returns is cut after attempt_timeout, retried, then failed."""
    keys = clean_keys(site)[2:6]
    hung = keys[0]

    async def scrape(page: Any, item: dict[str, Any]) -> dict[str, Any]:
        if item["key"] == hung:
            await anyio.sleep_forever()
        return await scrape_demo(page, item)

    policy = fast_retry(max_attempts=2)
    job = Job(id="hung", items=items_for(site, keys), scrape=scrape, tabs=2, retry=policy,
              output_dir=tmp_path, attempt_timeout=1.5)

    result = await run(job, limit=40)

    assert result.exit_code == 4
    assert (result.done, result.failed) == (3, 1)
    assert sorted(by_key(result.results_path)) == sorted(keys[1:])
    failure = by_key(result.failures_path)[hung]
    assert failure["message"] == "attempt took longer than attempt_timeout=1.5 s"
    assert (failure["error_type"], failure["category"]) == ("TimeoutError", "network")
    assert failure["reason"] == "attempts_exhausted: timeout"
    assert failure["attempts"] == policy.max_attempts + 1
    # A timed-out attempt leaves its page in an unknown state: the tab starts afresh (the
    # last one may still be restarting when the job ends).
    assert result.restarts.get("tab", 0) >= policy.max_attempts, result.restarts
    assert "browser" not in result.restarts
    assert visits(site, hung) == []


@pytest.mark.anyio
async def test_tab_subclass_prepares_every_page_even_after_browser_kill(
    site: DemoSite, tmp_path: Path
) -> None:
    """A TabActor subclass's prepare (cookie, route) and scrape run, also after a kill -9."""
    keys = clean_keys(site)[6:12]
    victim = keys[2]
    browser_pids: set[int] = set()
    killed: list[int] = []

    class LeagueTab(TabActor):
        base: ClassVar[str] = site.url

        async def prepare(self, page: Any) -> None:
            browser_pids.add(await self.tree.whereis("browser").call("pid"))
            await page.context.add_cookies([{"name": "league", "value": "north",
                                             "url": self.base}])
            await page.route("**/banner", lambda route: route.fulfill(
                body="<p id='banner'>routed</p>", content_type="text/html"))

        async def scrape(self, page: Any, item: dict[str, Any]) -> dict[str, Any]:
            if item["key"] == victim and not killed:
                pid = await self.tree.whereis("browser").call("pid")
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)
            data = await scrape_demo(page, item)
            data["cookie"] = await page.evaluate("document.cookie")
            await page.goto(self.base + "/banner")
            data["banner"] = await page.inner_text("#banner")
            return data

    job = Job(id="plug-in", items=items_for(site, keys), tab=LeagueTab, tabs=2,
              retry=fast_retry(max_attempts=3), output_dir=tmp_path, attempt_timeout=20)

    result = await run(job)

    assert result.exit_code == 0
    assert result.restarts.get("browser") == 1
    assert (result.done, result.failed) == (6, 0)
    results = by_key(result.results_path)
    assert sorted(results) == sorted(keys)
    for key, record in results.items():
        assert record["data"] == {**match_data(key), "cookie": "league=north",
                                  "banner": "routed"}
    assert results[victim]["attempts"] >= 2
    assert len(killed) == 1
    assert killed[0] in browser_pids
    assert len(browser_pids) == 2
    assert gone(killed[0])
    assert not [r for r in site.requests() if r["path"] == "/banner"]


def test_browser_actor_refuses_to_start_under_trio() -> None:
    """The browser actor fails to start under trio, saying Playwright needs asyncio."""
    spec = SupervisorSpec("solo", children=[ChildSpec(
        "browser", functools.partial(BrowserActor, PlaywrightHost(), BrowserConfig()))])

    async def main() -> None:
        async with start_tree(spec):
            pass

    with pytest.raises(StartError) as info:
        anyio.run(main, backend="trio")

    assert info.value.child == "solo/browser"
    assert isinstance(info.value.cause, WrongBackend)
    assert str(info.value.cause) == ("the browser actor needs the asyncio backend (Playwright"
                                     " is asyncio-only); it was started under trio")
