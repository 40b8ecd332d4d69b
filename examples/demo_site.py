"""The bundled demo live-scores site, with deterministic fault injection.

This file is both a server program and an importable helper. It uses the standard
library only, so it can run as a standalone server process under any Python 3.11+::

    python examples/demo_site.py --matches 100 --fail-500 0.1 --reset 2

starts a threaded HTTP/1.1 server on 127.0.0.1 (a random free port unless ``--port``
is given), prints one JSON line ``{"url": "http://127.0.0.1:PORT", "pid": PID}`` to
stdout once it listens, and serves until SIGTERM or SIGINT (then exits 0).

Pages
-----
``/``                                   index linking every section page
``/match/000123/statistics``            a section page; its content is rendered by JS
``/api/match/000123/statistics.json``   the data the section page renders
``/static/render.js``                   the shared, cacheable renderer

Each of the ``matches`` matches has the three :data:`SECTIONS`, so the site has
``3 * matches`` items, keyed ``match-000123/statistics``.

Faults
------
Faults apply to section page requests only (never to the JSON data or the script).
Which keys get which fault is decided by :func:`fault_plan` from ``seed`` alone:

* ``not_found`` (count): the page always answers 404.
* ``reset`` (count): the connection is closed without any response, on every visit.
* ``crash`` (count): the first visit carries ``<meta name="fault" content="crash">``;
  the client is expected to crash the tab's renderer when it sees it.
* ``memory`` (count): every visit carries ``<meta name="fault" content="memory">``
  and the page allocates ``memory_mb`` MB on load, kept referenced.
* ``fail_500`` (share): the first visit answers 500.
* ``fail_429`` (share): the first visit answers 429 with a ``Retry-After`` header.
* ``slow`` (share): every visit is answered after ``slow_seconds``.

The server counts visits per section page; "first visit" means the count is 1.
With ``request_log`` set, every request is appended to that JSON-lines file as
``{"t", "path", "key", "status", "visit", "kind"}`` *before* its response is sent
(``status`` is 0 for a reset; ``key`` and ``visit`` are null except for section
pages; ``kind`` is one of index/page/api/static/other).
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import math
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from playwright.async_api import Page

__all__ = [
    "FAULTS",
    "SECTIONS",
    "DemoSite",
    "HTTPStatusError",  # noqa: F822 -- provided lazily by __getattr__
    "SiteOptions",
    "all_keys",
    "demo_items",
    "fault_plan",
    "item_key",
    "item_path",
    "main",
    "match_data",
    "retry_after_seconds",
    "scrape_demo",
]

SECTIONS: tuple[str, ...] = ("summary", "statistics", "lineups")

#: Fault names, in the order :func:`fault_plan` assigns them.
FAULTS: tuple[str, ...] = (
    "not_found",
    "reset",
    "crash",
    "memory",
    "fail_500",
    "fail_429",
    "slow",
)
_COUNT_FAULTS = ("not_found", "reset", "crash", "memory")
_SHARE_FAULTS = ("fail_500", "fail_429", "slow")

_PAGE_RE = re.compile(r"^/match/(\d{6})/([a-z]+)$")
_API_RE = re.compile(r"^/api/match/(\d{6})/([a-z]+)\.json$")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SiteOptions:
    """How big the demo site is and which faults it injects.

    ``retry_after`` is sent as delay-seconds (``"1"``; a fractional value such as 0.25 is
    sent as ``"0.25"`` so tests can stay fast), or, with ``retry_after_http_date``, as the
    HTTP-date ``ceil(now + retry_after)``.
    """

    matches: int = 100
    seed: int = 7
    fail_500: float = 0.0
    fail_429: float = 0.0
    retry_after: float = 1.0
    retry_after_http_date: bool = False
    slow: float = 0.0
    slow_seconds: float = 2.0
    not_found: int = 0
    crash: int = 0
    memory: int = 0
    memory_mb: int = 64
    reset: int = 0
    minimal: bool = False
    request_log: str | None = None

    def __post_init__(self) -> None:
        for name in ("matches", "not_found", "crash", "memory", "memory_mb", "reset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in _SHARE_FAULTS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")
        for name in ("retry_after", "slow_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def to_args(self) -> list[str]:
        """Command-line flags that :meth:`from_args` turns back into these options."""
        args: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    args.append(flag)
            elif value is None:
                continue
            else:
                args += [flag, repr(value) if isinstance(value, float) else str(value)]
        return args

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> SiteOptions:
        """Parse flags such as ``--fail-500 0.1`` (unknown flags are an error)."""
        parser = argparse.ArgumentParser(add_help=False)
        _add_option_arguments(parser)
        ns = parser.parse_args(list(argv) if argv is not None else None)
        return _options_from_namespace(ns)


def _add_option_arguments(parser: argparse.ArgumentParser) -> None:
    default = SiteOptions()
    for f in fields(SiteOptions):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(default, f.name)
        if isinstance(value, bool):
            parser.add_argument(flag, dest=f.name, action="store_true")
        elif f.name == "request_log":
            parser.add_argument(flag, dest=f.name, default=None, metavar="PATH")
        else:
            kind = float if isinstance(value, float) else int
            parser.add_argument(flag, dest=f.name, type=kind, default=value)


def _options_from_namespace(ns: argparse.Namespace) -> SiteOptions:
    return SiteOptions(**{f.name: getattr(ns, f.name) for f in fields(SiteOptions)})


# --------------------------------------------------------------------------- items


def item_key(match: int, section: str) -> str:
    """``item_key(123, "statistics") == "match-000123/statistics"``."""
    return f"match-{match:06d}/{section}"


def item_path(match: int, section: str) -> str:
    """``item_path(123, "statistics") == "/match/000123/statistics"``."""
    return f"/match/{match:06d}/{section}"


def all_keys(matches: int) -> list[str]:
    """Every item key, in match order then section order."""
    return [item_key(m, s) for m in range(1, matches + 1) for s in SECTIONS]


def demo_items(base_url: str, matches: int) -> list[dict[str, str]]:
    """``[{"key": ..., "url": ...}, ...]`` for every item, in match then section order."""
    base = base_url.rstrip("/")
    return [
        {"key": item_key(m, s), "url": base + item_path(m, s)}
        for m in range(1, matches + 1)
        for s in SECTIONS
    ]


def fault_plan(options: SiteOptions) -> dict[str, set[str]]:
    """Fault name -> the keys it applies to; deterministic in ``options.seed``.

    The sets are disjoint. ``not_found``, ``reset``, ``crash`` and ``memory`` take exact
    counts first (in that order); then ``fail_500``, ``fail_429`` and ``slow`` each take
    ``round(share * len(remaining))`` keys, where ``remaining`` is the pool left after the
    exact counts (clamped to what is still free).
    """
    rng = random.Random(options.seed)
    remaining = sorted(all_keys(options.matches))
    plan: dict[str, set[str]] = {}

    def take(count: int) -> set[str]:
        nonlocal remaining
        chosen = set(rng.sample(remaining, min(count, len(remaining))))
        remaining = [k for k in remaining if k not in chosen]
        return chosen

    for name in _COUNT_FAULTS:
        plan[name] = take(getattr(options, name))
    pool = len(remaining)
    for name in _SHARE_FAULTS:
        plan[name] = take(round(getattr(options, name) * pool))
    return plan


def _fault_by_key(options: SiteOptions) -> dict[str, str]:
    return {key: name for name, keys in fault_plan(options).items() for key in keys}


# --------------------------------------------------------------------------- content

_TEAMS = (
    "Ashford Rovers", "Bramley City", "Castleton United", "Dunmore Athletic",
    "Eastwick Albion", "Fairhaven Town", "Glenrock FC", "Harrowgate Wanderers",
    "Ironbridge Celtic", "Juniper Park", "Kingsbury Rangers", "Larkfield Orient",
    "Marlow Vale", "Northgate County", "Oakham Harriers", "Penrith Borough",
    "Queensferry Hotspur", "Redcliffe Villa", "Stonebridge Athletic", "Thornbury Forest",
)  # fmt: skip
_FIRST = (
    "Adam", "Ben", "Carlos", "Dario", "Eli", "Felix", "Gabriel", "Hugo", "Ivan", "Jonas",
    "Karim", "Luca", "Mateo", "Nico", "Oscar", "Pablo", "Rafael", "Sami", "Tomas", "Victor",
)  # fmt: skip
_LAST = (
    "Alder", "Brooks", "Costa", "Dalton", "Evans", "Ferreira", "Garcia", "Hansen", "Ibarra",
    "Jensen", "Kovac", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rossi",
    "Silva", "Tanaka", "Urban", "Vidal", "Weber", "Young", "Zielinski",
)  # fmt: skip


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _lineup(match: int, side: str) -> list[str]:
    rng = _rng("lineup", match, side)
    numbers = rng.sample(range(1, 40), 11)
    return [f"{n} {rng.choice(_FIRST)} {rng.choice(_LAST)}" for n in sorted(numbers)]


def match_data(key: str) -> dict[str, Any]:
    """The deterministic payload of one item, exactly what :func:`scrape_demo` returns."""
    m = re.fullmatch(r"match-(\d{6})/([a-z]+)", key)
    if m is None or m.group(2) not in SECTIONS:
        raise ValueError(f"not a demo item key: {key!r}")
    match_id, section = m.group(1), m.group(2)
    match = int(match_id)
    rng = _rng("match", match)
    home, away = rng.sample(_TEAMS, 2)
    home_goals, away_goals = rng.randint(0, 4), rng.randint(0, 4)
    data: dict[str, Any] = {
        "match": match_id,
        "section": section,
        "home": home,
        "away": away,
        "score": f"{home_goals}-{away_goals}",
    }
    if section == "summary":
        minute = rng.randint(46, 90)
        home_xi, away_xi = _lineup(match, "home"), _lineup(match, "away")
        goals = [(home, home_xi) for _ in range(home_goals)]
        goals += [(away, away_xi) for _ in range(away_goals)]
        minutes = sorted(rng.sample(range(1, minute + 1), len(goals)))
        rng.shuffle(goals)
        events = []
        for at, (team, xi) in zip(minutes, goals, strict=True):
            scorer = rng.choice(xi[1:]).split(" ", 1)[1]
            events.append(f"{at}' Goal {team} ({scorer})")
        data.update(minute=minute, events=events)
    elif section == "statistics":
        srng = _rng("statistics", match)
        possession = srng.randint(32, 68)
        data.update(
            possession_home=possession,
            possession_away=100 - possession,
            shots_home=home_goals + srng.randint(2, 14),
            shots_away=away_goals + srng.randint(2, 14),
            corners_home=srng.randint(0, 11),
            corners_away=srng.randint(0, 11),
        )
    else:
        data.update(home_lineup=_lineup(match, "home"), away_lineup=_lineup(match, "away"))
    return data


# The renderer builds the same DOM from the data in both modes: scalar fields become
# ``<span data-field=NAME>`` (``data-kind="int"`` for numbers), lists become
# ``<ul data-list=NAME>``; the extractor in scrape_demo reads exactly that back.
_RENDER_FN = (
    "function render(el,d){var f=document.createDocumentFragment();"
    "for(var k in d){var v=d[k],p;if(Array.isArray(v)){p=document.createElement('ul');"
    "p.setAttribute('data-list',k);for(var i=0;i<v.length;i++){var li="
    "document.createElement('li');li.textContent=v[i];p.appendChild(li);}}else{"
    "p=document.createElement('p');var b=document.createElement('b');b.textContent=k+': ';"
    "var s=document.createElement('span');s.setAttribute('data-field',k);"
    "if(typeof v==='number')s.setAttribute('data-kind','int');s.textContent=String(v);"
    "p.appendChild(b);p.appendChild(s);}f.appendChild(p);}"
    "el.textContent='';el.appendChild(f);el.setAttribute('data-ready','1');}"
)

_RENDER_JS = (
    _RENDER_FN + "\n(function(){var el=document.getElementById('content');"
    "fetch(el.getAttribute('data-src'),{cache:'no-store'})"
    ".then(function(r){if(!r.ok)throw new Error('HTTP '+r.status);return r.json();})"
    ".then(function(d){render(el,d);})"
    ".catch(function(e){el.setAttribute('data-error',String(e));});})();\n"
).encode()

_EXTRACT_JS = """() => {
  const out = {};
  for (const n of document.querySelectorAll('#content [data-field], #content [data-list]')) {
    if (n.hasAttribute('data-list')) {
      out[n.getAttribute('data-list')] = Array.from(n.children, (li) => li.textContent);
    } else {
      const text = n.textContent;
      out[n.getAttribute('data-field')] =
        n.getAttribute('data-kind') === 'int' ? parseInt(text, 10) : text;
    }
  }
  return out;
}"""


def _memory_js(mb: int) -> str:
    return (
        "<script>(function(){var keep=window.__faultMemory=[];"
        f"for(var i=0;i<{int(mb)};i++){{var a=new Uint8Array(1048576);"
        "for(var j=0;j<a.length;j+=4096)a[j]=1;keep.push(a);}})();</script>"
    )


def _html(title: str, head: str, body: str) -> bytes:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,">'
        f"<title>{title}</title>{head}</head><body>{body}</body></html>"
    ).encode()


def _page_html(key: str, options: SiteOptions, fault: str | None) -> bytes:
    match_id, section = key.removeprefix("match-").split("/")
    head = ""
    if fault == "crash":
        head += '<meta name="fault" content="crash">'
    elif fault == "memory":
        head += '<meta name="fault" content="memory">' + _memory_js(options.memory_mb)
    title = f"Match {match_id} {section}"
    if options.minimal:
        data = json.dumps(match_data(key), separators=(",", ":")).replace("</", "<\\/")
        body = (
            f'<div id="content" data-key="{key}"></div><script>{_RENDER_FN}'
            f"render(document.getElementById('content'),{data});</script>"
        )
        return _html(title, head, body)
    head += '<script src="/static/render.js" defer></script>'
    nav = " | ".join(f'<a href="/match/{match_id}/{s}">{s}</a>' for s in SECTIONS)
    body = (
        f'<header><a href="/">All matches</a> | {nav}</header>'
        f"<h1>Match {match_id} &middot; {section}</h1>"
        f'<div id="content" data-key="{key}" '
        f'data-src="/api/match/{match_id}/{section}.json">Loading&hellip;</div>'
    )
    return _html(title, head, body)


def _index_html(matches: int) -> bytes:
    rows = "".join(
        f"<li>Match {m:06d}: "
        + " ".join(f'<a href="{item_path(m, s)}">{s}</a>' for s in SECTIONS)
        + "</li>"
        for m in range(1, matches + 1)
    )
    return _html("Demo live scores", "", f"<h1>Demo live scores</h1><ul>{rows}</ul>")


def _error_html(status: int, text: str) -> bytes:
    return _html(f"{status} {text}", "", f"<h1>{status} {text}</h1>")


_NOT_FOUND = _error_html(404, "Not Found")
_SERVER_ERROR = _error_html(500, "Internal Server Error")
_TOO_MANY = _error_html(429, "Too Many Requests")


def _format_seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --------------------------------------------------------------------------- server


class _Site:
    """Server-side state shared by every handler thread."""

    def __init__(self, options: SiteOptions) -> None:
        self.options = options
        self.faults = _fault_by_key(options)
        self.index = _index_html(options.matches)
        self._pages: dict[tuple[str, str | None], bytes] = {}
        self._api: dict[str, bytes] = {}
        self._visits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._log = (
            open(options.request_log, "a", encoding="utf-8")  # noqa: SIM115
            if options.request_log
            else None
        )

    def key_for(self, match_id: str, section: str) -> str | None:
        if section not in SECTIONS or not 1 <= int(match_id) <= self.options.matches:
            return None
        return f"match-{match_id}/{section}"

    def visit(self, key: str) -> int:
        with self._lock:
            n = self._visits.get(key, 0) + 1
            self._visits[key] = n
            return n

    def page(self, key: str, fault: str | None) -> bytes:
        marker = fault if fault in ("crash", "memory") else None
        body = self._pages.get((key, marker))
        if body is None:
            body = self._pages[(key, marker)] = _page_html(key, self.options, marker)
        return body

    def api(self, key: str) -> bytes:
        body = self._api.get(key)
        if body is None:
            body = self._api[key] = json.dumps(match_data(key)).encode()
        return body

    def log(
        self,
        t: float,
        path: str,
        kind: str,
        status: int,
        key: str | None = None,
        visit: int | None = None,
    ) -> None:
        if self._log is None:
            return
        line = json.dumps(
            {"t": t, "path": path, "key": key, "status": status, "visit": visit, "kind": kind}
        )
        with self._log_lock:
            self._log.write(line + "\n")
            self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            with self._log_lock:
                self._log.close()
                self._log = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DemoScores/1.0"
    disable_nagle_algorithm = True
    timeout = 120  # reclaim idle keep-alive connections
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/html; charset=utf-8",
        cache: str = "no-store",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        t = time.time()
        site = self.server.site
        path = urlsplit(self.path).path
        if path == "/":
            site.log(t, path, "index", 200)
            return self._send(200, site.index)
        if path == "/static/render.js":
            site.log(t, path, "static", 200)
            return self._send(
                200, _RENDER_JS, "application/javascript; charset=utf-8", "public, max-age=3600"
            )
        if path == "/favicon.ico":
            site.log(t, path, "static", 200)
            return self._send(200, b"", "image/x-icon", "public, max-age=86400")
        m = _API_RE.match(path)
        if m and (key := site.key_for(*m.groups())):
            site.log(t, path, "api", 200)
            return self._send(200, site.api(key), "application/json")
        m = _PAGE_RE.match(path)
        if m and (key := site.key_for(*m.groups())):
            return self._page(t, path, key)
        site.log(t, path, "page" if m else "other", 404)
        return self._send(404, _NOT_FOUND)

    def _page(self, t: float, path: str, key: str) -> None:
        site = self.server.site
        options = site.options
        visit = site.visit(key)
        fault = site.faults.get(key)
        if fault == "reset":
            site.log(t, path, "page", 0, key, visit)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if fault == "not_found":
            site.log(t, path, "page", 404, key, visit)
            return self._send(404, _NOT_FOUND)
        if fault == "fail_500" and visit == 1:
            site.log(t, path, "page", 500, key, visit)
            return self._send(500, _SERVER_ERROR)
        if fault == "fail_429" and visit == 1:
            if options.retry_after_http_date:
                when = math.ceil(time.time() + options.retry_after)
                retry_after = email.utils.formatdate(when, usegmt=True)
            else:
                retry_after = _format_seconds(options.retry_after)
            site.log(t, path, "page", 429, key, visit)
            return self._send(429, _TOO_MANY, extra={"Retry-After": retry_after})
        if fault == "slow":
            time.sleep(options.slow_seconds)
        marker = fault if (fault == "memory" or (fault == "crash" and visit == 1)) else None
        body = site.page(key, marker)
        site.log(t, path, "page", 200, key, visit)
        return self._send(200, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], site: _Site) -> None:
        self.site = site
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo site until SIGTERM/SIGINT; print its URL and pid as one JSON line."""
    parser = argparse.ArgumentParser(description="Demo live-scores site with fault injection.")
    _add_option_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="exit when this process is no longer the parent (it died)",
    )
    ns = parser.parse_args(list(argv) if argv is not None else None)
    options = _options_from_namespace(ns)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    site = _Site(options)
    server = _Server((ns.host, ns.port), site)
    host, port = server.server_address[:2]
    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="demo-site", daemon=True
    )
    serving.start()
    print(json.dumps({"url": f"http://{host}:{port}", "pid": os.getpid()}), flush=True)

    try:
        while not stop.wait(0.25):
            if ns.parent_pid is not None and os.getppid() != ns.parent_pid:
                break
    finally:
        server.shutdown()
        server.server_close()
        site.close()
    return 0


# --------------------------------------------------------------------------- client side


def __getattr__(name: str) -> Any:
    # The runtime's own error class, imported lazily: the server process needs nothing
    # but the standard library.
    if name == "HTTPStatusError":
        from actors.tab import HTTPStatusError

        return HTTPStatusError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def _settle_error_page(page: Page) -> None:
    # After a network error, goto() raises before Chromium commits its error page; that
    # late commit would interrupt the page's next goto(). Wait (briefly) for it first.
    try:
        await page.wait_for_url(
            lambda url: url.startswith("chrome-error://"), wait_until="commit", timeout=2000
        )
    except Exception:
        pass


async def scrape_demo(page: Page, item: dict[str, str]) -> dict[str, Any]:
    """Scrape one demo item with a Playwright page and return its payload.

    Raises :class:`HTTPStatusError` as soon as the page answers a status >= 400 (without
    waiting for content). Network failures (``net::ERR_...``) propagate as Playwright
    errors, after Chromium has committed its error page so the page is ready for reuse.
    """
    try:
        response = await page.goto(item["url"], wait_until="domcontentloaded")
    except Exception as exc:
        if "net::ERR_" in str(exc):
            await _settle_error_page(page)
        raise
    if response is not None and response.status >= 400:
        from actors.tab import HTTPStatusError

        raise HTTPStatusError(response.status, item["url"], response.headers.get("retry-after"))
    await page.wait_for_selector("#content[data-ready='1']")
    return await page.evaluate(_EXTRACT_JS)


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class DemoSite:
    """Run the demo site in a child process for the duration of a ``with`` block."""

    def __init__(self, options: SiteOptions | None = None, *, start_timeout: float = 15.0):
        self.options = options if options is not None else SiteOptions()
        self.start_timeout = start_timeout
        self.url = ""
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._finalizer: weakref.finalize | None = None

    @property
    def returncode(self) -> int | None:
        """Exit status of the server process (None while it runs or before start)."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> DemoSite:
        if self._proc is not None:
            raise RuntimeError("DemoSite already started")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        cmd = [sys.executable, "-I", os.path.abspath(__file__), *self.options.to_args()]
        self._proc = proc = subprocess.Popen(
            [*cmd, "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._finalizer = weakref.finalize(self, _stop_process, proc)
        try:
            info = json.loads(self._read_line(proc))
        except Exception:
            self.stop()
            raise
        self.url, self.pid = info["url"], info["pid"]
        return self

    def _read_line(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(proc, f"no address within {self.start_timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    proc.wait(5)
                    self._fail(proc, f"server exited with status {proc.returncode}")
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def _fail(self, proc: subprocess.Popen[bytes], why: str) -> None:
        _stop_process(proc)
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()
        raise RuntimeError(f"demo site failed to start: {why}; stderr:\n{err or '(empty)'}")

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # stops the process once
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> DemoSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def items(self) -> list[dict[str, str]]:
        return demo_items(self.url, self.options.matches)

    def plan(self) -> dict[str, set[str]]:
        return fault_plan(self.options)

    def requests(self) -> list[dict[str, Any]]:
        """The request log so far (empty when ``options.request_log`` is unset)."""
        path = self.options.request_log
        if not path or not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
