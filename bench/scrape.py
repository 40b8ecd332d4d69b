#!/usr/bin/env python3
"""Scraping benchmarks: the job runtime against a plain Playwright pool, and crash figures.

    python bench/scrape.py            every figure (about 15 min on an idle 2-core machine)
    python bench/scrape.py --quick    a smoke check: 3 runs per side, 4 tabs only

Prints one JSON line per figure on stdout and nothing else there; progress goes to
stderr::

    {"bench": "scrape_throughput", "tabs": 4, "ours": 31.2, "baseline": 32.0,
     "unit": "pages/s", "ratio": 0.975, "runs": 5}

Setup: the demo site (``examples/demo_site.py``, normal JS-rendered pages, not minimal)
runs in its own process for the whole benchmark; every run scrapes N = 200 of its pages
(the first 200 items of 67 matches) with ``scrape_demo``. Every run is a fresh
subprocess of this script (``--one-run ours|baseline --tabs T``, or ``--recovery-run``,
``--completion-run``) that prints one JSON result, so each starts from the same Python
heap and nothing of one run (driver, browser, caches) survives into the next.

Method: for each tab count, one warm-up run of each side (discarded), then ``--runs``
measured runs of each side for ``scrape_throughput`` and as many again for ``peak_pss``,
alternating (ours first on even runs, the baseline first on odd runs), so both sides see
the same background load. Each figure is the median over the measured runs; ``ratio`` is
ours / baseline. The load average is printed (stderr) with every run and at the end.

Figures:

``scrape_throughput``  pages/s for T = 1, 4, 8 tabs. Ours: ``run_job_async`` with
    ``scrape=scrape_demo``, T tabs, faults off, default retry policy, a fresh job id and
    output directory per run. Baseline: a plain Playwright pool -- one browser launched
    from the same executable (``find_browser``) with the same flags (``launch_args()``),
    one context, T pages created once, an ``asyncio.Queue`` of the same items and T
    worker coroutines calling the same ``scrape_demo(page, item)``; no retries, no
    output. The clock starts before the Playwright driver starts and so includes driver
    start and browser launch on both sides, and stops when the last page is done: for
    ours when the 200th line of ``results.jsonl`` is durable (fsynced; a thread polls the
    file every 5 ms), for the baseline when the last ``scrape_demo`` returns (the same
    polling thread runs there too, on a file that never appears). Shutdown (closing the
    browser, stopping the driver, the final snapshot) is outside the clock on both sides.
``peak_pss``  MB, T = 1, 4, 8: the peak proportional set size of the run's whole process
    tree (the Python process, Playwright's node driver, every Chromium process), sampled
    with psutil ``memory_full_info().pss`` in a background thread (a sweep, then 100 ms
    of sleep), from before the driver starts until the run's last page is done. Separate
    runs from the throughput figure: a sweep reads ``/proc/PID/smaps_rollup`` of every
    process, 5-30 ms of kernel time each for a busy renderer, so sampling costs about a
    core and would distort the timed runs.
``crash_recovery``  s, no baseline: one kill -9 of Chromium per fresh job run (T = 4;
    ``--runs`` runs, no warm-up: they come after the other figures), once 60 items are
    durable, so each kill meets a quiet browser supervisor (its first restart is
    immediate; kills spaced beyond its 60 s reset period would make the figure take
    minutes per kill). The pid is found as the browser actor finds it
    (``actors.browser.browser_pid``). Figure: time from the kill to the next item that
    becomes durable in ``results.jsonl``. ``fresh_browser`` is the same up to the next
    durable item whose scrape *started* after the kill (so it went through the relaunched
    browser; an item already on its way to the checkpoint actor at the kill does not
    count).
``crash_completion``  fraction, no baseline: one run of 200 pages, T = 4, with three kill
    -9s of Chromium (``Faults(kill_browser_after=(50, 100, 150))``) and one-off HTTP 500s
    on 10% of the pages (a fresh demo site with ``fail_500=0.1``); the figure is the share
    of the 200 pages present exactly once in ``results.jsonl``. The run must end by
    itself within 240 s, else the figure is 0 and ``"hung": true``. ``elapsed`` is the
    run's wall time in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from examples.demo_site import DemoSite, SiteOptions, demo_items, scrape_demo  # noqa: E402

N_PAGES = 200
MATCHES = math.ceil(N_PAGES / 3)
TABS_FULL = (1, 4, 8)
TABS_QUICK = (4,)
RECOVERY_TABS = 4
RECOVERY_KILL_AT = 60
COMPLETION_TABS = 4
COMPLETION_KILLS = (50, 100, 150)
COMPLETION_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0
POLL = 0.005
PSS_INTERVAL = 0.1

perf = time.perf_counter


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def items_for(url: str, n: int = N_PAGES) -> list[dict[str, str]]:
    return demo_items(url, math.ceil(n / 3))[:n]


# --------------------------------------------------------------------------- in a run


class DurableWatcher(threading.Thread):
    """Polls a JSON-lines file; remembers when each line appeared (``perf`` clock)."""

    def __init__(self, path: Path, target: int, interval: float = POLL) -> None:
        super().__init__(name="durable-watcher", daemon=True)
        self.path = path
        self.target = target
        self.interval = interval
        self.lines: list[tuple[float, bytes]] = []
        self.reached: float | None = None
        self.reached_event = threading.Event()
        self._halt = threading.Event()
        self._offset = 0
        self._tail = b""
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)
        self.poll()

    def poll(self) -> None:
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return
        if size <= self._offset:
            return
        now = perf()
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        self._offset += len(chunk)
        data = self._tail + chunk
        *whole, self._tail = data.split(b"\n")
        with self.lock:
            self.lines.extend((now, line) for line in whole if line.strip())
            if self.reached is None and len(self.lines) >= self.target:
                self.reached = now
                self.reached_event.set()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class PssSampler(threading.Thread):
    """Peak PSS of this process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = PSS_INTERVAL) -> None:
        super().__init__(name="pss-sampler", daemon=True)
        self.interval = interval
        self.peak = 0
        self.peak_uss = 0  # not shared with other processes: a steadier diagnostic
        self.samples = 0
        self.procs: dict[int, psutil.Process] = {}
        self._halt = threading.Event()
        self._me = psutil.Process()

    def sample(self) -> None:
        total = uss = 0
        try:
            tree = [self._me, *self._me.children(recursive=True)]
        except psutil.Error:
            return
        for proc in tree:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            total += info.pss
            uss += info.uss
        self.samples += 1
        self.peak = max(self.peak, total)
        self.peak_uss = max(self.peak_uss, uss)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sample()  # the state at the end counts too


def _configure_logging() -> None:
    from supervisor import configure_logging

    # structlog's own default prints to stdout, which carries the result here.
    configure_logging("INFO", stream=sys.stderr)


async def run_ours(url: str, tabs: int, workdir: Path, pss: bool) -> dict[str, Any]:
    from actors import Faults, Job, run_job_async

    items = items_for(url)
    job = Job(id=f"bench-{uuid.uuid4().hex[:12]}", items=items, scrape=scrape_demo,
              tabs=tabs, output_dir=workdir, faults=Faults())
    watcher = DurableWatcher(workdir / job.id / "results.jsonl", len(items))
    sampler = PssSampler() if pss else None
    watcher.start()
    if sampler:
        sampler.start()
    t0 = perf()
    stopped_sampler = False

    def last_page_done() -> None:
        nonlocal stopped_sampler
        if sampler and not stopped_sampler:
            stopped_sampler = True
            sampler.stop()

    # Stop the sampler as soon as the last page is durable (not after shutdown), as on
    # the baseline side where it stops when the last scrape returns.
    def watch_end() -> None:  # in a thread: a final sweep must not block the job's loop
        watcher.reached_event.wait(RUN_TIMEOUT)
        last_page_done()

    end_task = asyncio.create_task(asyncio.to_thread(watch_end))
    result = await run_job_async(job)
    t_end = perf()
    watcher.stop()
    watcher.reached_event.set()
    await end_task
    last_page_done()
    t_last = watcher.reached if watcher.reached is not None else t_end
    ok = result.exit_code == 0 and result.done == len(items)
    return {"side": "ours", "tabs": tabs, "ok": ok, "exit_code": result.exit_code,
            "done": result.done, "seconds": t_last - t0, "rate": len(items) / (t_last - t0),
            "total_seconds": t_end - t0,
            "pss_mb": sampler.peak / 2**20 if sampler else None,
            "pss_samples": sampler.samples if sampler else None,
            "uss_mb": sampler.peak_uss / 2**20 if sampler else None}


async def run_baseline(url: str, tabs: int, workdir: Path, pss: bool) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from actors.browser import BrowserConfig, find_browser, launch_args

    items = items_for(url)
    watcher = DurableWatcher(workdir / "never" / "results.jsonl", len(items))
    sampler = PssSampler() if pss else None
    watcher.start()
    if sampler:
        sampler.start()
    t0 = perf()
    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=find_browser(BrowserConfig(), pw),
                                       headless=True, args=launch_args())
    context = await browser.new_context()
    pages = await asyncio.gather(*(context.new_page() for _ in range(tabs)))
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    results: dict[str, dict[str, Any]] = {}

    async def worker(page: Any) -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[item["key"]] = await scrape_demo(page, item)

    await asyncio.gather(*(worker(page) for page in pages))
    t_last = perf()
    if sampler:
        sampler.stop()
    await browser.close()
    await pw.stop()
    t_end = perf()
    watcher.stop()
    ok = len(results) == len(items)
    return {"side": "baseline", "tabs": tabs, "ok": ok, "done": len(results),
            "seconds": t_last - t0, "rate": len(items) / (t_last - t0),
            "total_seconds": t_end - t0,
            "pss_mb": sampler.peak / 2**20 if sampler else None,
            "pss_samples": sampler.samples if sampler else None,
            "uss_mb": sampler.peak_uss / 2**20 if sampler else None}


async def run_recovery(url: str, tabs: int, workdir: Path, kill_at: int) -> dict[str, Any]:
    from actors import Faults, Job, run_job_async
    from actors.browser import BrowserConfig, browser_pid, find_browser

    items = items_for(url)
    started: dict[str, float] = {}

    async def scrape(page: Any, item: dict[str, str]) -> dict[str, Any]:
        started[item["key"]] = perf()
        return await scrape_demo(page, item)

    job = Job(id=f"bench-{uuid.uuid4().hex[:12]}", items=items, scrape=scrape, tabs=tabs,
              output_dir=workdir, faults=Faults())
    watcher = DurableWatcher(workdir / job.id / "results.jsonl", kill_at)
    executable = find_browser(BrowserConfig())
    kill: dict[str, Any] = {}

    def killer() -> None:
        if not watcher.reached_event.wait(RUN_TIMEOUT):
            return
        with watcher.lock:
            before = len(watcher.lines)
        pid = browser_pid(executable, 0.0)
        if pid is None:
            kill["error"] = "no browser pid found"
            return
        kill["at"] = perf()
        os.kill(pid, signal.SIGKILL)
        kill["pid"] = pid
        kill["lines_before"] = before

    watcher.start()
    thread = threading.Thread(target=killer, name="killer", daemon=True)
    thread.start()
    t0 = perf()
    result = await run_job_async(job)
    t_end = perf()
    watcher.stop()
    thread.join(5)
    out: dict[str, Any] = {"exit_code": result.exit_code, "done": result.done,
                           "restarts": result.restarts, "seconds": t_end - t0}
    if "at" not in kill:
        out["error"] = kill.get("error", "no kill happened")
        return out
    at = kill["at"]
    after = [(t, json.loads(line)) for t, line in watcher.lines if t >= at]
    first = next((t for t, _ in after), None)
    fresh = next((t for t, rec in after if started.get(rec["key"], 0.0) > at), None)
    out.update(pid=kill["pid"], next_durable=None if first is None else first - at,
               fresh_browser=None if fresh is None else fresh - at)
    return out


async def run_completion(url: str, tabs: int, workdir: Path) -> dict[str, Any]:
    from actors import Faults, Job, run_job_async

    items = items_for(url)
    job = Job(id=f"bench-{uuid.uuid4().hex[:12]}", items=items, scrape=scrape_demo,
              tabs=tabs, output_dir=workdir, faults=Faults(kill_browser_after=COMPLETION_KILLS))
    t0 = perf()
    result = await run_job_async(job)
    elapsed = perf() - t0
    counts: dict[str, int] = {}
    for line in result.results_path.read_bytes().splitlines():
        if line.strip():
            key = json.loads(line)["key"]
            counts[key] = counts.get(key, 0) + 1
    once = sum(1 for item in items if counts.get(item["key"]) == 1)
    return {"exit_code": result.exit_code, "done": result.done, "failed": result.failed,
            "retries": result.retries, "restarts": result.restarts,
            "failures_by_reason": result.failures_by_reason,
            "fraction": once / len(items), "duplicates": sum(c > 1 for c in counts.values()),
            "missing": sum(1 for item in items if item["key"] not in counts),
            "elapsed": elapsed}


def child_main(args: argparse.Namespace) -> int:
    _configure_logging()
    workdir = Path(tempfile.mkdtemp(prefix="scrape-bench-"))
    try:
        if args.one_run:
            fn = run_ours if args.one_run == "ours" else run_baseline
            out = asyncio.run(fn(args.url, args.tabs, workdir, args.pss))
        elif args.recovery_run:
            out = asyncio.run(run_recovery(args.url, args.tabs, workdir, args.kill_at))
        else:
            out = asyncio.run(run_completion(args.url, args.tabs, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_python"] = me.ru_utime + me.ru_stime
    out["cpu_children"] = kids.ru_utime + kids.ru_stime  # driver and browser, once reaped
    print(json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------- driver


class RunFailed(RuntimeError):
    pass


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        parent = psutil.Process(proc.pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait()


def spawn(extra: list[str], timeout: float = RUN_TIMEOUT) -> dict[str, Any] | None:
    """Run one child; its JSON result, or None when it timed out."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            return None
        if proc.returncode != 0 or not out.strip():
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RunFailed(f"{' '.join(extra)} exited {proc.returncode}:\n{tail}")
        return json.loads(out.decode().strip().splitlines()[-1])


def one_run(side: str, tabs: int, url: str, pss: bool) -> dict[str, Any]:
    extra = ["--one-run", side, "--tabs", str(tabs), "--url", url]
    if pss:
        extra.append("--pss")
    out = spawn(extra)
    if out is None:
        raise RunFailed(f"{side} run with {tabs} tabs timed out")
    if not out["ok"]:
        raise RunFailed(f"{side} run with {tabs} tabs did not finish every page: {out}")
    return out


def warm_up(tabs: int, url: str) -> None:
    """One discarded run of each side (OS caches, the demo server's page cache)."""
    for side in ("ours", "baseline"):
        out = one_run(side, tabs, url, pss=False)
        log(f"  warm-up T={tabs} {side}: {out['rate']:.2f} pages/s"
            f"  load {os.getloadavg()[0]:.2f}")


def paired(tabs: int, url: str, runs: int, pss: bool) -> tuple[list[float], list[float]]:
    """``runs`` alternating runs of each side; their figures."""
    key = "pss_mb" if pss else "rate"
    what = "peak PSS" if pss else "throughput"
    ours: list[float] = []
    base: list[float] = []
    for i in range(runs):
        order = ("ours", "baseline") if i % 2 == 0 else ("baseline", "ours")
        for side in order:
            out = one_run(side, tabs, url, pss)
            uss = f", peak USS {out['uss_mb']:.0f} MB" if pss else ""
            log(f"  {what} T={tabs} run {i + 1}/{runs} {side}: {out[key]:.2f}{uss}"
                f" ({out['seconds']:.2f} s to last page, {out['total_seconds']:.2f} s total;"
                f" CPU s python {out['cpu_python']:.1f}, children {out['cpu_children']:.1f})"
                f"  load {os.getloadavg()[0]:.2f}")
            (ours if side == "ours" else base).append(out[key])
    return ours, base


def line(bench: str, ours: float | None, baseline: float | None, unit: str, runs: int,
         tabs: int | None = None, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"bench": bench}
    if tabs is not None:
        row["tabs"] = tabs
    ratio = ours / baseline if ours is not None and baseline else None
    row.update(ours=None if ours is None else round(ours, 3),
               baseline=None if baseline is None else round(baseline, 3), unit=unit,
               ratio=None if ratio is None else round(ratio, 3), runs=runs, **extra)
    return row


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per side, 4 tabs only")
    parser.add_argument("--runs", type=int, default=None, help="measured runs per side")
    parser.add_argument("--only", default="", help="comma-separated figures to run")
    # one run, in a child process
    parser.add_argument("--one-run", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--recovery-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--completion-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tabs", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pss", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kill-at", type=int, default=RECOVERY_KILL_AT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run or args.recovery_run or args.completion_run:
        return child_main(args)

    runs = args.runs or (3 if args.quick else 5)
    tab_counts = TABS_QUICK if args.quick else TABS_FULL
    only = set(filter(None, args.only.split(",")))

    def wanted(name: str) -> bool:
        return not only or name in only

    loads: list[tuple[str, tuple[float, float, float]]] = [("start", os.getloadavg())]
    began = perf()

    with DemoSite(SiteOptions(matches=MATCHES)) as site:
        log(f"demo site at {site.url}; {N_PAGES} pages a run, {runs} runs per side,"
            f" load {os.getloadavg()[0]:.2f}")
        for tabs in tab_counts:
            if not (wanted("scrape_throughput") or wanted("peak_pss")):
                break
            warm_up(tabs, site.url)
            if wanted("scrape_throughput"):
                ours, base = paired(tabs, site.url, runs, pss=False)
                emit(line("scrape_throughput", statistics.median(ours),
                          statistics.median(base), "pages/s", runs, tabs))
                loads.append((f"scrape_throughput T={tabs}", os.getloadavg()))
            if wanted("peak_pss"):
                ours, base = paired(tabs, site.url, runs, pss=True)
                emit(line("peak_pss", statistics.median(ours), statistics.median(base), "MB",
                          runs, tabs))
                loads.append((f"peak_pss T={tabs}", os.getloadavg()))
        if wanted("crash_recovery"):
            firsts: list[float] = []
            freshes: list[float] = []
            for i in range(runs):
                out = spawn(["--recovery-run", "--tabs", str(RECOVERY_TABS), "--url",
                             site.url, "--kill-at", str(RECOVERY_KILL_AT)])
                if out is None or "error" in out or out.get("next_durable") is None:
                    raise RunFailed(f"crash_recovery run failed: {out}")
                log(f"  crash_recovery run {i + 1}/{runs}:"
                    f" next durable {out['next_durable']:.3f} s,"
                    f" fresh browser {out['fresh_browser']:.3f} s, exit {out['exit_code']},"
                    f" restarts {out['restarts']}  load {os.getloadavg()[0]:.2f}")
                firsts.append(out["next_durable"])
                freshes.append(out["fresh_browser"])
            emit(line("crash_recovery", statistics.median(firsts), None, "s", runs,
                      fresh_browser=round(statistics.median(freshes), 3)))
            loads.append(("crash_recovery", os.getloadavg()))

    if wanted("crash_completion"):
        with DemoSite(SiteOptions(matches=MATCHES, fail_500=0.1)) as faulty:
            out = spawn(["--completion-run", "--tabs", str(COMPLETION_TABS), "--url",
                         faulty.url], timeout=COMPLETION_TIMEOUT)
        if out is None:
            log(f"  crash_completion: no end within {COMPLETION_TIMEOUT:g} s (hung)")
            emit(line("crash_completion", 0.0, None, "fraction", 1,
                      elapsed=COMPLETION_TIMEOUT, hung=True))
        else:
            log(f"  crash_completion: {out}")
            emit(line("crash_completion", out["fraction"], None, "fraction", 1,
                      elapsed=round(out["elapsed"], 2)))
        loads.append(("crash_completion", os.getloadavg()))

    loads.append(("end", os.getloadavg()))
    log(f"done in {perf() - began:.0f} s; load average (1, 5, 15 min):")
    for label, (l1, l5, l15) in loads:
        log(f"  {label:<28} {l1:5.2f} {l5:5.2f} {l15:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
