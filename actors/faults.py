"""Client-side fault injection, for the demo job and the tests.

``Faults(crash_marker=True)`` crashes a tab's renderer (Chrome DevTools ``Page.crash``)
when the page it just scraped carries ``<meta name="fault" content="crash">``, as the demo
site marks some pages. ``Faults(kill_browser_after=(100, 200))`` kills the browser process
with SIGKILL when that many items are done. Off by default; never needed in production.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import structlog

if TYPE_CHECKING:
    from playwright.async_api import Page

    from supervisor import Actor

__all__ = ["FaultInjector", "Faults", "crash_renderer", "kill_browser"]

_log = structlog.get_logger("actors.faults")
CRASH_SELECTOR = 'meta[name="fault"][content="crash"]'


@attrs.frozen
class Faults:
    """Which faults to inject (all off by default)."""

    crash_marker: bool = False
    kill_browser_after: tuple[int, ...] = attrs.field(default=(), converter=tuple)


async def crash_renderer(page: Page) -> None:
    """Crash the page's renderer process through the DevTools protocol."""
    session = await page.context.new_cdp_session(page)
    with anyio.move_on_after(2):
        try:
            await session.send("Page.crash")
        except Exception:
            pass  # the session dies with the renderer


async def kill_browser(actor: Actor) -> int | None:
    """SIGKILL the browser process of the running tree; returns its pid."""
    pid = await actor.tree.whereis("browser").call("pid")
    if pid:
        _log.warning("fault injection: killing the browser", pid=pid)
        os.kill(pid, signal.SIGKILL)
    return pid


class FaultInjector:
    """The running state of :class:`Faults` for one job."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._kills = sorted(faults.kill_browser_after)
        self.kills_done = 0
        self._killed: set[int] = set()

    async def after_scrape(self, page: Page) -> None:
        """Crash the renderer if the page asks for it (demo marker)."""
        if self.faults.crash_marker and await page.locator(CRASH_SELECTOR).count():
            await crash_renderer(page)

    def after_durable(self, actor: Actor, done: int) -> None:
        """Kill the browser once ``done`` reaches the next configured count."""
        if self._kills and done >= self._kills[0]:
            self._kills.pop(0)
            self.kills_done += 1
            actor.tree.spawn_system(self._kill, actor)

    async def _kill(self, actor: Actor) -> Any:
        # A count reached while the browser is still being relaunched (not registered
        # yet, or the killed one not yet noticed) waits for the new browser: never lost.
        with anyio.move_on_after(60):
            while True:
                try:
                    pid = await actor.tree.whereis("browser").call("pid")
                except Exception:
                    pid = None
                if pid and pid not in self._killed:
                    break
                await anyio.sleep(0.05)
            self._killed.add(pid)
            _log.warning("fault injection: killing the browser", pid=pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as exc:
                _log.warning("fault injection: could not kill the browser", error=repr(exc))
            return
        _log.warning("fault injection: no browser to kill within 60 s")
