"""Tab actors: the plug-in point for the user's scraping code.

A tab owns one page of the shared browser context. It tells the work queue it is ready,
receives a :class:`~actors.records.Lease`, runs the scrape within ``attempt_timeout``,
and reports an :class:`~actors.records.Attempt`. It never writes output itself.

Plug in either an async function ``scrape(page, item) -> dict`` (``Job(scrape=...)``) or
a subclass::

    class MatchTab(TabActor):
        async def prepare(self, page):          # once per page: cookies, routes...
            await page.route("**/*.png", lambda route: route.abort())

        async def scrape(self, page, item):
            await page.goto(item["url"])
            return {"score": await page.inner_text("#score")}

An error page fails fast: as soon as the main frame's navigation answers a status >= 400,
the attempt is cut short with :class:`HTTPStatusError` -- no waiting for content that
will never come. A renderer crash, or an attempt that ran out of time, restarts the tab
(a fresh page) after reporting; when the browser dies, its supervisor restarts all tabs.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import structlog

from supervisor import Actor, NoSuchActor

from .classify import Classification
from .logctx import bound
from .records import Attempt, Lease
from .retry import parse_retry_after

if TYPE_CHECKING:
    from playwright.async_api import Page, Response

    from .job import JobRuntime

__all__ = ["HTTPStatusError", "TabActor", "TabRestart"]

_log = structlog.get_logger("actors.tab")


class HTTPStatusError(Exception):
    """The page's main response had an error status; ``retry_after`` is the raw header."""

    def __init__(self, status: int, url: str, retry_after: str | None = None) -> None:
        super().__init__(status, url, retry_after)
        self.status = status
        self.url = url
        self.retry_after = retry_after

    def __str__(self) -> str:
        extra = f" (Retry-After: {self.retry_after})" if self.retry_after is not None else ""
        return f"HTTP {self.status} for {self.url}{extra}"


class TabRestart(RuntimeError):
    """Raised by a tab after reporting an attempt that left its page unusable."""


class TabActor(Actor):
    """One page, one item at a time; override :meth:`scrape` and optionally :meth:`prepare`."""

    def __init__(self, runtime: JobRuntime, index: int) -> None:
        self.runtime = runtime
        self.index = index
        self.page: Page | None = None
        self._scope: anyio.CancelScope | None = None
        self._http_error: HTTPStatusError | None = None
        self._crashed = False

    async def prepare(self, page: Page) -> None:
        """Prepare a new page before its first item (cookies, routes, viewport...)."""

    async def scrape(self, page: Page, item: dict[str, Any]) -> dict[str, Any]:
        """Scrape one item and return a JSON-serialisable dict."""
        fn = self.runtime.job.scrape
        if fn is None:
            raise NotImplementedError("give Job a scrape function or a TabActor subclass")
        return await fn(page, item)

    async def on_start(self) -> None:
        page = await self._open_page()
        if page is None:
            # The browser died (or is being relaunched): its supervisor restarts every
            # tab with the next browser. Until then this tab takes no work.
            _log.info("browser gone while a tab started; waiting for the relaunch",
                      tab=self.path)
            return
        self.page = page
        page.on("response", self._on_response)
        page.on("crash", self._on_crash)
        try:
            await self.prepare(page)
        except Exception:
            if not self._browser_gone():
                raise
            _log.info("browser gone while a tab prepared its page", tab=self.path)
            return
        await self.tree.whereis("work").cast(("ready", self.ref))

    async def _open_page(self) -> Page | None:
        """A new page of the browser's context, or None if the browser is gone.

        Playwright's ``new_page`` can wait forever when the browser is killed meanwhile; a
        tab stuck in its start would stall its supervisor, and with it the whole job. So
        the wait ends as soon as the browser disconnects.
        """
        try:
            browser = self.tree.whereis("browser")
        except NoSuchActor:
            return None
        context = await browser.call("context", timeout=30)
        connection = context.browser
        opened = anyio.Event()
        page: Page | None = None
        error: Exception | None = None

        async def open_page() -> None:
            nonlocal page, error
            try:
                page = await context.new_page()
            except Exception as exc:
                error = exc
            opened.set()

        with anyio.fail_after(self.runtime.job.browser.launch_timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(open_page)
                while not opened.is_set() and (connection is None
                                               or connection.is_connected()):
                    with anyio.move_on_after(0.1):
                        await opened.wait()
                tg.cancel_scope.cancel()
        if connection is not None and not connection.is_connected():
            return None
        if error is not None:
            raise error
        return page

    def _on_response(self, response: Response) -> None:
        if self._scope is None or response.status < 400:
            return
        try:
            main = response.frame == response.frame.page.main_frame
            navigation = response.request.is_navigation_request()
        except Exception:
            return
        if main and navigation and self.runtime.job.fail_fast_status:
            self._http_error = HTTPStatusError(response.status, response.url,
                                               response.headers.get("retry-after"))
            # Cut the attempt short once the error page is committed, not before: a
            # navigation still in flight would interrupt the next item's goto.
            scope = self._scope
            response.frame.page.once("domcontentloaded", lambda _p: scope.cancel())
            asyncio.get_running_loop().call_later(2.0, scope.cancel)

    def _on_crash(self, _page: Page) -> None:
        self._crashed = True
        if self._scope is not None:
            self._scope.cancel()

    async def handle_cast(self, msg: Any) -> None:
        if not isinstance(msg, Lease):
            raise TypeError(f"tab {self.path}: unexpected message {msg!r}")
        report = await self._attempt(msg)
        work = self.tree.whereis("work")
        await work.cast(("outcome", self.ref, report))
        if report.restart_tab:
            if self._browser_gone():
                # The browser's supervisor restarts every tab with the new browser; until
                # then this tab takes no more work (each lease would fail at once).
                return
            raise TabRestart(f"{report.reason}; restarting tab with a fresh page")

    def _browser_gone(self) -> bool:
        """True once the browser of this tab's page has disconnected (crashed, killed)."""
        if self.page is None:
            return True
        browser = self.page.context.browser
        return browser is not None and not browser.is_connected()

    async def _attempt(self, lease: Lease) -> Attempt:
        job = self.runtime.job
        assert self.page is not None
        started = time.monotonic()
        self._http_error = None
        with bound(item_key=lease.key, attempt=lease.attempt, tab=self.path,
                   correlation_id=lease.correlation_id):
            try:
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    with anyio.fail_after(job.attempt_timeout):
                        data = await self.scrape(self.page, dict(lease.item))
                        await self.runtime.faults.after_scrape(self.page)
                self._scope = None
                if scope.cancelled_caught:
                    if self._crashed:
                        raise RuntimeError("Page crashed")
                    assert self._http_error is not None
                    raise self._http_error
                return self._success(lease, data, started)
            except Exception as exc:
                self._scope = None
                report = self._failure(lease, exc, started)
                if not report.restart_tab:
                    await self._settle()
                return report

    async def _settle(self) -> None:
        # A failed attempt can leave a navigation in flight (an error page we stopped
        # waiting for); it would interrupt the next item's goto. Start from a blank page.
        assert self.page is not None
        with anyio.move_on_after(5):
            try:
                await self.page.goto("about:blank")
            except Exception:
                pass

    def _success(self, lease: Lease, data: Any, started: float) -> Attempt:
        if not isinstance(data, dict):
            return self._failure(lease, TypeError(
                f"scrape returned {type(data).__name__}, not a dict"), started, permanent=True)
        try:
            orjson.dumps(data)
        except TypeError as exc:
            return self._failure(lease, TypeError(
                f"scrape returned a value that is not JSON-serialisable: {exc}"), started,
                permanent=True)
        return Attempt(lease.id, lease.key, True, data=data, elapsed=time.monotonic() - started)

    def _failure(self, lease: Lease, exc: Exception, started: float,
                 permanent: bool = False) -> Attempt:
        job = self.runtime.job
        if isinstance(exc, TimeoutError) and not str(exc):
            exc = TimeoutError(
                f"attempt took longer than attempt_timeout={job.attempt_timeout:g} s")
        verdict: Classification = job.classifier.classify(exc)
        if permanent:
            verdict = Classification(transient=False, category=verdict.category,
                                     reason="bad scrape result")
        raw_retry = getattr(exc, "retry_after", None)
        retry_after = parse_retry_after(raw_retry) if isinstance(raw_retry, str) else raw_retry
        restart = self._crashed or isinstance(exc, TimeoutError) or self._browser_gone()
        return Attempt(
            lease.id, lease.key, False,
            error_type=type(exc).__name__,
            message=str(exc)[:2000],
            stack="".join(traceback.format_exception(exc))[-8000:],
            transient=verdict.transient,
            category=verdict.category,
            rate_limited=verdict.rate_limited,
            status=verdict.status,
            retry_after=retry_after,
            reason="renderer crashed" if self._crashed else verdict.reason,
            restart_tab=restart,
            elapsed=time.monotonic() - started,
        )

    async def on_stop(self, reason: Any) -> None:
        page, self.page = self.page, None
        if page is not None and not page.is_closed():
            with anyio.move_on_after(2):
                try:
                    await page.close()
                except Exception:
                    pass  # the browser may already be gone
