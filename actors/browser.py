"""The browser actor: one Playwright browser and the one context its tabs share.

Where the browser comes from, in order: ``BrowserConfig.executable_path``, the
``SCOREWISE_BROWSER_PATH`` environment variable, Playwright's own installed Chromium,
then a system Chromium (``/usr/bin/chromium``, ``chromium-browser``, ``google-chrome``).
It is launched headless with flags that keep it off the network (no background
networking, component updates or sync; ``--no-sandbox`` only when running as root).

A disconnect -- the browser process died or was killed -- crashes the actor, so its
supervisor (one_for_all with the tabs, with restart backoff) relaunches browser and tabs
together. The context's ``storage_state()`` (cookies, local storage) is captured every
``state_interval`` seconds and handed to the checkpoint actor, and restored into the new
context after a relaunch. Playwright is asyncio-only: under trio the actor refuses to
start with :class:`~supervisor.WrongBackend`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import psutil
import sniffio

from supervisor import Actor, WrongBackend

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Playwright


__all__ = [
    "LAUNCH_FLAGS",
    "BrowserConfig",
    "BrowserDisconnected",
    "BrowserNotFound",
    "PlaywrightHost",
    "find_browser",
    "require_asyncio",
]

ENV_PATH = "SCOREWISE_BROWSER_PATH"
SYSTEM_BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LAUNCH_FLAGS = (
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-crash-reporter",
    "--disable-breakpad",
)


class BrowserNotFound(FileNotFoundError):
    """No usable browser executable; the message lists every place that was tried."""


class BrowserDisconnected(RuntimeError):
    """The browser process went away (crashed or killed)."""


def _positive(_i: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be > 0, got {value!r}")


@attrs.frozen
class BrowserConfig:
    """How to find and launch the browser."""

    executable_path: str | None = None
    headless: bool = True
    extra_args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    launch_timeout: float = attrs.field(default=30.0, validator=_positive)
    state_interval: float = attrs.field(default=30.0, validator=_positive)


def find_browser(config: BrowserConfig, playwright: Playwright | None = None) -> str:
    """The browser executable to launch; raises :class:`BrowserNotFound` naming each try."""
    tried: list[str] = []
    explicit = config.executable_path or os.environ.get(ENV_PATH)
    if explicit:
        source = "executable_path" if config.executable_path else ENV_PATH
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise BrowserNotFound(f"browser {explicit!r} (from {source}) does not exist or is not"
                              " an executable file")
    if playwright is not None:
        try:
            own = playwright.chromium.executable_path
        except Exception:  # Playwright raises when its browsers were never downloaded
            own = ""
        if own and Path(own).is_file():
            return own
        tried.append(f"Playwright's Chromium ({own or 'not installed'})")
    for candidate in SYSTEM_BROWSERS:
        if Path(candidate).is_file():
            return candidate
        tried.append(candidate)
    which = shutil.which("chromium") or shutil.which("google-chrome")
    if which:
        return which
    raise BrowserNotFound("no browser found; tried " + ", ".join(tried)
                          + f". Install Chromium or set {ENV_PATH}")


def require_asyncio(what: str) -> None:
    """Raise :class:`WrongBackend` unless running on asyncio (Playwright needs it)."""
    backend = sniffio.current_async_library()
    if backend != "asyncio":
        raise WrongBackend(f"{what} needs the asyncio backend (Playwright is asyncio-only);"
                           f" it was started under {backend}")


def launch_args() -> list[str]:
    """Chromium flags: off the network, and no sandbox when running as root."""
    args = list(LAUNCH_FLAGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(0, "--no-sandbox")
    return args


class PlaywrightHost:
    """One Playwright driver for a whole job, so a browser relaunch does not restart it."""

    def __init__(self) -> None:
        self._manager: Any = None
        self._playwright: Playwright | None = None

    async def get(self) -> Playwright:
        """The running driver, started on first use."""
        require_asyncio("Playwright")
        if self._playwright is None:
            from playwright.async_api import async_playwright

            self._manager = async_playwright()
            self._playwright = await self._manager.start()
        return self._playwright

    async def stop(self) -> None:
        """Stop the driver if it was started."""
        if self._manager is not None:
            manager, self._manager, self._playwright = self._manager, None, None
            with anyio.move_on_after(10):
                await manager.__aexit__(None, None, None)


def browser_pid(executable: str, started_after: float) -> int | None:
    """The pid of the browser's main process among this process's descendants."""
    best: tuple[float, int] | None = None
    name = Path(executable).name
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
            created = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if not cmd or any(a.startswith("--type=") for a in cmd):
            continue
        ours = Path(cmd[0]).name == name or cmd[0] == executable
        if ours and created >= started_after - 1 and (best is None or created > best[0]):
            best = (created, proc.pid)
    return best[1] if best else None


class BrowserActor(Actor):
    """Owns one browser and its shared context; see the module docstring."""

    def __init__(self, host: PlaywrightHost, config: BrowserConfig,
                 on_launch: Callable[[int | None], None] | None = None) -> None:
        self.host = host
        self.config = config
        self.on_launch = on_launch
        self.browser: Browser | None = None
        self.context: BrowserContext | None = None
        self.pid: int | None = None
        self.executable = ""
        self.launched_at = 0.0

    async def on_start(self) -> None:
        require_asyncio("the browser actor")
        playwright = await self.host.get()
        self.executable = find_browser(self.config, playwright)
        started = time.time()
        self.browser = await playwright.chromium.launch(
            executable_path=self.executable,
            headless=self.config.headless,
            args=[*launch_args(), *self.config.extra_args],
            timeout=self.config.launch_timeout * 1000,
        )
        self.browser.on("disconnected", lambda _b: self.notify(_Disconnected()))
        self.launched_at = anyio.current_time()
        self.pid = browser_pid(self.executable, started)
        if self.on_launch is not None:
            self.on_launch(self.pid)
        state = await self._saved_state()
        # Bounded: Playwright can wait forever for a browser killed at this moment.
        with anyio.fail_after(self.config.launch_timeout):
            self.context = await self.browser.new_context(storage_state=state)
        self.send_after(self.config.state_interval, _CaptureState())

    async def _saved_state(self) -> dict[str, Any] | None:
        try:
            return await self.tree.whereis("checkpoint").call(("browser_state",), timeout=5)
        except Exception:  # no checkpoint actor in this tree: start with a clean context
            return None

    async def handle_call(self, msg: Any) -> Any:
        match msg:
            case "context":
                return self.context
            case "pid":
                return self.pid
            case "info":
                return {"pid": self.pid, "executable": self.executable,
                        "age": anyio.current_time() - self.launched_at}
        raise ValueError(f"browser actor: unknown call {msg!r}")

    async def handle_info(self, msg: Any) -> None:
        if isinstance(msg, _Disconnected):
            raise BrowserDisconnected(f"browser process {self.pid} disconnected")
        if isinstance(msg, _CaptureState):
            await self._capture_state()
            self.send_after(self.config.state_interval, _CaptureState())

    async def _capture_state(self) -> None:
        if self.context is None:
            return
        with anyio.move_on_after(10):
            state = await self.context.storage_state()
            try:
                await self.tree.whereis("checkpoint").cast(("browser_state", state))
            except Exception:
                pass

    async def on_stop(self, reason: Any) -> None:
        browser, self.browser, self.context = self.browser, None, None
        if browser is not None and browser.is_connected():
            if reason in ("normal", "shutdown"):
                await self._capture_state_into(browser)
            with anyio.move_on_after(5):
                await browser.close()

    async def _capture_state_into(self, browser: Browser) -> None:
        for context in browser.contexts:
            with anyio.move_on_after(5):
                state = await context.storage_state()
                try:
                    await self.tree.whereis("checkpoint").cast(("browser_state", state))
                except Exception:
                    pass
            return


class _Disconnected:
    pass


class _CaptureState:
    pass
