"""Helpers for the checkpoint tests that run real jobs: a subprocess runner, the output
files, the demo site's request log, and the processes a killed job leaves behind."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import psutil

from actors.job import Job, JobResult, run_job_async
from actors.storage import CRASH_ENV_VAR
from supervisor import Event

ROOT = str(Path(__file__).resolve().parents[2])

#: A job as a program: ``python -c RUNNER '<json>'``. The JSON names the site URL, the
#: number of matches, the job id, the output directory and the job's settings.
RUNNER = """
import json, sys
from actors import Job, run_job
from actors.checkpoint import CheckpointConfig
from examples.demo_site import demo_items, scrape_demo
from supervisor import configure_logging

configure_logging("WARNING")
cfg = json.loads(sys.argv[1])
items = demo_items(cfg["url"], cfg["matches"])
job = Job(id=cfg["id"], items=items, scrape=scrape_demo, tabs=cfg.get("tabs", 4),
          output_dir=cfg["out"], progress_interval=1.0, stop_after=cfg.get("stop_after"),
          checkpoint=CheckpointConfig(every_items=cfg.get("every_items", 500)))
sys.exit(run_job(job))
"""


def spawn_job(cfg: Mapping[str, Any], log: Path, crash_at: str | None = None
              ) -> subprocess.Popen[bytes]:
    """Start the runner as its own process; stdout and stderr are appended to ``log``."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if crash_at is not None:
        env[CRASH_ENV_VAR] = crash_at
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(dict(cfg))],
                                env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out)


def run_in_process(job: Job, events: list[Event] | None = None) -> JobResult:
    """Run ``job`` to its end in this process, on asyncio, recording its events."""
    subscribe: list[Callable[[Event], None]] = [events.append] if events is not None else []
    return anyio.run(functools.partial(run_job_async, job, subscribe=subscribe),
                     backend="asyncio")


def output_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines output file (a torn last line is left out).

    A complete line that does not parse fails the test: only the last line may be torn.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    end = raw.rfind(b"\n") + 1
    return [json.loads(line) for line in raw[:end].splitlines()]


def output_keys(path: Path) -> list[str]:
    """The keys of the complete lines of an output file, in file order."""
    return [rec["key"] for rec in output_lines(path)]


def duplicates(keys: Iterable[str]) -> list[str]:
    """The keys that occur more than once."""
    return sorted(k for k, n in Counter(keys).items() if n > 1)


def page_visits(log: Path, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
    """How often each item's page was requested between ``since`` and ``until``."""
    if not log.exists():
        return Counter()
    visits: Counter[str] = Counter()
    for line in log.read_text(encoding="utf-8").splitlines():
        req = json.loads(line)
        if req["kind"] == "page" and since <= req["t"] < until:
            visits[req["key"]] += 1
    return visits


def descendants(pid: int) -> list[psutil.Process]:
    """Every living descendant of process ``pid`` (browser, renderers, driver)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def survivors(procs: Iterable[psutil.Process], timeout: float = 10.0) -> list[str]:
    """Wait up to ``timeout`` s for ``procs`` to end; describe those still alive."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if _alive(p)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            described.append(str(proc.pid))
    return described


def kill9(proc: subprocess.Popen[bytes]) -> list[str]:
    """SIGKILL the job process; return its descendants that outlive it by 10 s."""
    family = descendants(proc.pid)
    proc.kill()
    proc.wait(10)
    return survivors(family)


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``check`` every 20 ms until it holds; fail after ``timeout`` s or when
    ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job exited with status {proc.returncode} before {what}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
