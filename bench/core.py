#!/usr/bin/env python3
"""Core benchmarks of the supervision framework, each against a raw anyio baseline.

    python bench/core.py                      every figure, both backends (about 2-3 min)
    python bench/core.py --only tell,call     some figures
    python bench/core.py --backend trio       one backend
    python bench/core.py --runs 9             more measured runs per side

Prints one JSON line per figure on stdout and nothing else there; progress goes to
stderr. Each backend runs in a fresh subprocess (``--worker BACKEND``), one after the
other; ``spawn_memory`` runs in one more fresh subprocess per backend
(``--memory-worker BACKEND``, these two side by side since byte counts do not depend on
timing), so allocation tracing never slows down the timed figures.

Method, for every figure: one warm-up run of each side (discarded), then ``--runs``
measured runs of each side, alternating (ours first on even runs, the baseline first on
odd runs), each run in its own event loop (``anyio.run``) after a ``gc.collect()``, with
the garbage collector left on. The reported value is the median over the runs.

Clocks: the totals (``tell``, ``tell_queue``, ``spawn_time``) are taken in CPU time of
the benchmark process (``time.process_time``). These loops are single-threaded and do
no I/O, so on an idle machine CPU time equals wall time; on a shared 2-core machine it
stays meaningful when other processes compete for the cores. The wall-clock value of
every run is logged on stderr next to it. ``call`` and ``restart`` are wall-clock
(``time.perf_counter``) per round trip, and each run's value is the median of its round
trips, which a preemption now and then does not move. Logging keeps the package's
default configuration (structlog at INFO on stderr).

Figures (see bench/README.md for the results and the goals):

``tell``         200,000 casts to an actor under a tree (mailbox 1000), one producer,
                 vs a raw memory object stream (buffer 1000) with ``await send`` and an
                 ``async for`` consumer; msg/s from the first send until the handler has
                 processed the last message.
``tell_queue``   the same actor vs ``asyncio.Queue(1000)`` with ``await put``/``await get``
                 (asyncio only).
``call``         ``await ref.call(msg, timeout=5.0)`` vs a raw request/reply server task
                 where each request carries a fresh one-shot reply stream; median us.
``restart``      a permanent child of a one_for_one supervisor crashed by a cast; time
                 from the crash cast until the new incarnation has handled its next
                 message, vs a raw respawn loop (a parent task that runs the child in its
                 own task group, catches its exception and starts a new one); median us.
``spawn_time``   10,000 TEMPORARY children started with ``start_child`` under one
                 dynamic supervisor, then all stopped by shutting the tree down, vs 10,000
                 raw tasks each with its own memory stream, stopped by closing the send
                 streams; seconds. Both loops let the scheduler run every 64 starts
                 (``start_child`` does so itself, like a cast; the raw loop calls
                 ``checkpoint()``), so on both sides the tasks reach their idle wait on
                 the stream while the loop runs: the figure compares 10,000 idle actors
                 with 10,000 idle tasks, the same ones ``spawn_memory`` weighs. (A raw
                 loop that never yields only creates tasks that first run once their
                 streams are closed; ``--raw-never-yields`` measures that variant.)
``spawn_memory`` bytes per idle actor among 10,000: tracemalloc, started just before the
                 first child and read once all 10,000 wait on their mailboxes (after a
                 ``gc.collect()``), divided by 10,000; child specs included (the
                 supervisor keeps them), tree and supervisors excluded (they exist
                 before). Same for the raw task + stream.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from anyio.lowlevel import checkpoint  # noqa: E402

from supervisor import (  # noqa: E402
    Actor,
    ChildSpec,
    Restart,
    SupervisorSpec,
    start_tree,
)

perf = time.perf_counter
cpu = time.process_time


def stamp() -> tuple[float, float]:
    """(wall, CPU) time now; totals are reported in CPU time, see the module docstring."""
    return perf(), cpu()


def rates(n: int, t0: tuple[float, float], t1: tuple[float, float]) -> tuple[float, float]:
    """(per CPU second, per wall second)."""
    return n / (t1[1] - t0[1]), n / (t1[0] - t0[0])


BACKENDS = ("asyncio", "trio")
FIGURES = ("tell", "tell_queue", "call", "restart", "spawn_time", "spawn_memory")

TELL_N = 200_000
CALL_N = 20_000
RESTART_N = 2_000
SPAWN_N = 10_000
MAILBOX = 1000


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench.core +{time.perf_counter() - _T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


# -- tell -------------------------------------------------------------------------------


class _Sink(Actor):
    """Adds up what it is cast; notes the time when the last message has been handled."""

    def __init__(self, last: int, done: list[Any]) -> None:
        self.total = 0
        self.last = last
        self.done = done  # [anyio.Event, end stamp]

    async def handle_cast(self, msg: int) -> None:
        self.total += msg
        if msg == self.last:
            self.done[1] = stamp()
            self.done[0].set()


async def tell_ours(n: int) -> tuple[float, float]:
    done: list[Any] = [anyio.Event(), None]
    spec = SupervisorSpec("root", children=[
        ChildSpec("sink", lambda: _Sink(n - 1, done), mailbox_size=MAILBOX),
    ])
    async with start_tree(spec) as tree:
        ref = tree.whereis("sink")
        cast = ref.cast
        t0 = stamp()
        for i in range(n):
            await cast(i)
        await done[0].wait()
        return rates(n, t0, done[1])


async def tell_stream(n: int) -> tuple[float, float]:
    send, recv = anyio.create_memory_object_stream[int](MAILBOX)
    done: list[Any] = [anyio.Event(), None]
    last = n - 1

    async def consumer() -> None:
        total = 0
        async with recv:
            async for msg in recv:
                total += msg
                if msg == last:
                    done[1] = stamp()
                    done[0].set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        async with send:
            t0 = stamp()
            for i in range(n):
                await send.send(i)
            await done[0].wait()
    return rates(n, t0, done[1])


async def tell_queue(n: int) -> tuple[float, float]:
    import asyncio

    q: asyncio.Queue[int] = asyncio.Queue(MAILBOX)
    done: list[Any] = [anyio.Event(), None]
    last = n - 1

    async def consumer() -> None:
        total = 0
        while True:
            msg = await q.get()
            total += msg
            if msg == last:
                done[1] = stamp()
                done[0].set()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        t0 = stamp()
        for i in range(n):
            await q.put(i)
        await done[0].wait()
    return rates(n, t0, done[1])


# -- call -------------------------------------------------------------------------------


class _Echo(Actor):
    async def handle_call(self, msg: int) -> int:
        return msg + 1


async def call_ours(n: int) -> tuple[float, float]:
    spec = SupervisorSpec("root", children=[ChildSpec("echo", _Echo)])
    times = [0.0] * n
    async with start_tree(spec) as tree:
        call = tree.whereis("echo").call
        for i in range(n):
            t0 = perf()
            await call(i, timeout=5.0)
            times[i] = perf() - t0
    return statistics.median(times) * 1e6, statistics.fmean(times) * 1e6


async def call_stream(n: int) -> tuple[float, float]:
    send, recv = anyio.create_memory_object_stream[tuple[int, Any]](MAILBOX)
    times = [0.0] * n

    async def server() -> None:
        async with recv:
            async for msg, reply in recv:
                with reply:
                    await reply.send(msg + 1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        async with send:
            for i in range(n):
                t0 = perf()
                reply_send, reply_recv = anyio.create_memory_object_stream[int](1)
                await send.send((i, reply_send))
                with reply_recv:
                    await reply_recv.receive()
                times[i] = perf() - t0
    return statistics.median(times) * 1e6, statistics.fmean(times) * 1e6


# -- restart ----------------------------------------------------------------------------
#
# Both sides use the same probe: the driver casts "crash"; the child raises; whoever
# supervises it starts a new incarnation, whose start sets ``ready``; the driver then
# looks the new incarnation up and casts "ping", and the handler of "ping" notes the
# time and sets ``pinged``. One sample is the time from just before the crash cast to
# the moment "ping" was handled, so it covers crash, exit report, restart decision,
# start of the new incarnation and delivery of one message to it.


class _Crash(Exception):
    pass


class _Probe:
    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.pinged = anyio.Event()
        self.t_end = 0.0


class _Crashy(Actor):
    def __init__(self, probe: _Probe) -> None:
        self.probe = probe

    async def on_start(self) -> None:
        self.probe.ready.set()

    async def handle_cast(self, msg: str) -> None:
        if msg == "crash":
            raise _Crash("crash requested")
        self.probe.t_end = perf()
        self.probe.pinged.set()


async def restart_ours(n: int) -> tuple[float, float]:
    probe = _Probe()
    spec = SupervisorSpec("root", intensity=1_000_000, period=1.0, children=[
        ChildSpec("crashy", lambda: _Crashy(probe)),
    ])
    times = [0.0] * n
    async with start_tree(spec) as tree:
        whereis = tree.whereis
        for i in range(n):
            probe.ready = anyio.Event()
            probe.pinged = anyio.Event()
            t0 = perf()
            await whereis("crashy").cast("crash")
            await probe.ready.wait()
            await whereis("crashy").cast("ping")
            await probe.pinged.wait()
            times[i] = probe.t_end - t0
    return statistics.median(times) * 1e6, statistics.fmean(times) * 1e6


async def restart_raw(n: int) -> tuple[float, float]:
    probe = _Probe()
    current: list[Any] = [None]  # the send stream of the live incarnation

    async def child() -> None:
        send, recv = anyio.create_memory_object_stream[str](MAILBOX)
        current[0] = send
        probe.ready.set()
        with recv:
            async for msg in recv:
                if msg == "crash":
                    raise _Crash("crash requested")
                probe.t_end = perf()
                probe.pinged.set()

    async def parent() -> None:
        while True:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(child)
            except* _Crash:
                pass
            current[0].close()

    times = [0.0] * n
    async with anyio.create_task_group() as tg:
        tg.start_soon(parent)
        await probe.ready.wait()
        for i in range(n):
            probe.ready = anyio.Event()
            probe.pinged = anyio.Event()
            t0 = perf()
            await current[0].send("crash")
            await probe.ready.wait()
            await current[0].send("ping")
            await probe.pinged.wait()
            times[i] = probe.t_end - t0
        tg.cancel_scope.cancel()
    return statistics.median(times) * 1e6, statistics.fmean(times) * 1e6


# -- spawn ------------------------------------------------------------------------------


class _Idle(Actor):
    pass


def _dynamic_tree() -> SupervisorSpec:
    return SupervisorSpec("root", children=[SupervisorSpec("workers")])


async def _idle_task(recv: Any) -> None:
    with recv:
        async for _msg in recv:
            pass


async def spawn_ours(n: int) -> tuple[float, float]:
    async with start_tree(_dynamic_tree()) as tree:
        start_child = tree.supervisor("workers").start_child
        await checkpoint()
        t0 = stamp()
        for i in range(n):
            await start_child(ChildSpec(f"w{i}", _Idle, restart=Restart.TEMPORARY))
        t1 = stamp()
    t2 = stamp()
    log(f"  ours: started in {t1[1] - t0[1]:.3f} s, stopped {t2[1] - t1[1]:.3f} s later (CPU)")
    return t2[1] - t0[1], t2[0] - t0[0]


RAW_YIELD_EVERY = 64  # as start_child's and cast's fast path; 0: never (see the docstring)


async def spawn_raw(n: int) -> tuple[float, float]:
    sends = []
    every = RAW_YIELD_EVERY
    async with anyio.create_task_group() as tg:
        await checkpoint()
        t0 = stamp()
        for i in range(n):
            if every and i % every == every - 1:
                await checkpoint()
            send, recv = anyio.create_memory_object_stream[Any](MAILBOX)
            sends.append(send)
            tg.start_soon(_idle_task, recv)
        t1 = stamp()
        for send in sends:
            send.close()
    t2 = stamp()
    log(f"  raw:  started in {t1[1] - t0[1]:.3f} s, stopped {t2[1] - t1[1]:.3f} s later (CPU)")
    return t2[1] - t0[1], t2[0] - t0[0]


def _trace_start() -> int:
    """Collect garbage, start tracing allocations; the reference point (0 bytes)."""
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    return tracemalloc.get_traced_memory()[0]


def _trace_stop(before: int, n: int) -> float:
    """Bytes per actor still allocated since ``_trace_start``; stops tracing."""
    import tracemalloc

    gc.collect()
    per = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    return per


async def memory_ours(n: int) -> tuple[float, float]:
    # Allocations are traced only while the n children are started (the tree and its
    # supervisors exist before): what they keep is each child's whole footprint, its
    # spec included since its supervisor keeps it. Shutdown runs untraced.
    async with start_tree(_dynamic_tree()) as tree:
        sup = tree.supervisor("workers")
        await sup.start_child(ChildSpec("first", _Idle, restart=Restart.TEMPORARY))
        await sup.terminate_child("first")
        await anyio.wait_all_tasks_blocked()
        before = _trace_start()
        for i in range(n):
            await sup.start_child(ChildSpec(f"w{i}", _Idle, restart=Restart.TEMPORARY))
        await anyio.wait_all_tasks_blocked()
        per = _trace_stop(before, n)
    return per, per


async def memory_raw(n: int) -> tuple[float, float]:
    sends = []
    async with anyio.create_task_group() as tg:
        await checkpoint()
        before = _trace_start()
        for _ in range(n):
            send, recv = anyio.create_memory_object_stream[Any](MAILBOX)
            sends.append(send)
            tg.start_soon(_idle_task, recv)
        await anyio.wait_all_tasks_blocked()
        per = _trace_stop(before, n)
        for send in sends:
            send.close()
    return per, per


# -- harness ----------------------------------------------------------------------------

# name: (unit, ours, baseline, n, warm-up n, backends, digits)
BENCHES: dict[str, tuple[str, Any, Any, int, int, tuple[str, ...], int]] = {
    "tell": ("msg/s", tell_ours, tell_stream, TELL_N, 20_000, BACKENDS, 0),
    "tell_queue": ("msg/s", tell_ours, tell_queue, TELL_N, 20_000, ("asyncio",), 0),
    "call": ("us", call_ours, call_stream, CALL_N, 2_000, BACKENDS, 2),
    "restart": ("us", restart_ours, restart_raw, RESTART_N, 200, BACKENDS, 1),
    "spawn_time": ("s", spawn_ours, spawn_raw, SPAWN_N, 1_000, BACKENDS, 3),
    "spawn_memory": ("bytes", memory_ours, memory_raw, SPAWN_N, 200, BACKENDS, 0),
}


# What the second value of each run is, logged on stderr next to the reported one.
ALT = {"msg/s": "per wall second", "us": "mean", "s": "wall", "bytes": "same"}


def _one(fn: Any, n: int, backend: str) -> tuple[float, float]:
    gc.collect()
    return anyio.run(fn, n, backend=backend)


def measure(name: str, backend: str, runs: int) -> dict[str, Any]:
    unit, ours_fn, base_fn, n, warm_n, _, digits = BENCHES[name]
    log(f"{name} [{backend}]: warm-up")
    _one(ours_fn, warm_n, backend)
    _one(base_fn, warm_n, backend)
    ours: list[tuple[float, float]] = []
    base: list[tuple[float, float]] = []
    for r in range(runs):
        order = ((ours_fn, ours), (base_fn, base))
        for fn, out in order if r % 2 == 0 else order[::-1]:
            out.append(_one(fn, n, backend))
        log(f"{name} [{backend}] run {r + 1}/{runs}: ours {ours[-1][0]:.6g}"
            f" baseline {base[-1][0]:.6g} {unit}  ({ALT[unit]}: ours {ours[-1][1]:.6g}"
            f" baseline {base[-1][1]:.6g})")
    o, b = statistics.median(x[0] for x in ours), statistics.median(x[0] for x in base)
    oa, ba = statistics.median(x[1] for x in ours), statistics.median(x[1] for x in base)
    log(f"{name} [{backend}] medians: ours {o:.6g} baseline {b:.6g} {unit} ratio {o / b:.3f};"
        f" {ALT[unit]}: ours {oa:.6g} baseline {ba:.6g} ratio {oa / ba:.3f}")
    return {
        "bench": name,
        "backend": backend,
        "ours": round(o, digits) if digits else round(o),
        "baseline": round(b, digits) if digits else round(b),
        "unit": unit,
        "ratio": round(o / b, 3),
        "runs": runs,
    }


def worker(backend: str, only: list[str], runs: int) -> None:
    log(f"{backend} worker: supervisor/ sources {_fingerprint()}")
    for name in only:
        if name == "spawn_memory" or backend not in BENCHES[name][5]:
            continue
        print(json.dumps(measure(name, backend, runs)), flush=True)


def memory_worker(backend: str, runs: int) -> None:
    log(f"{backend} memory worker: supervisor/ sources {_fingerprint()}")
    print(json.dumps(measure("spawn_memory", backend, runs)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(FIGURES),
                        help="comma-separated figures (default: all)")
    parser.add_argument("--backend", choices=BACKENDS, action="append",
                        help="backend to run (repeatable; default: both)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side")
    parser.add_argument("--raw-never-yields", action="store_true",
                        help="spawn_time baseline: start the raw tasks without letting"
                             " them run (they first run once their streams are closed)")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    global RAW_YIELD_EVERY
    if args.raw_never_yields:
        RAW_YIELD_EVERY = 0
    if args.worker:
        worker(args.worker, only, args.runs)
        return 0
    if args.memory_worker:
        memory_worker(args.memory_worker, args.runs)
        return 0

    started = perf()
    log(f"python {sys.version.split()[0]}, anyio {_version('anyio')}, trio"
        f" {_version('trio')}, {os.cpu_count()} CPUs, load average {_load()},"
        f" supervisor/ sources {_fingerprint()}")
    backends = args.backend or list(BACKENDS)
    common = ["--only", ",".join(only), "--runs", str(args.runs),
              *(["--raw-never-yields"] if args.raw_never_yields else [])]
    if set(only) - {"spawn_memory"}:
        for backend in backends:  # one after the other: timings need a quiet machine
            proc = subprocess.run([sys.executable, __file__, "--worker", backend, *common],
                                  stdout=subprocess.PIPE, text=True, check=False)
            sys.stdout.write(proc.stdout)
            sys.stdout.flush()
            if proc.returncode != 0:
                log(f"--worker {backend} failed with status {proc.returncode}")
                return proc.returncode
    if "spawn_memory" in only:
        # Byte counts do not depend on timing, so these workers may run side by side.
        procs = [subprocess.Popen([sys.executable, __file__, "--memory-worker", backend,
                                   *common], stdout=subprocess.PIPE, text=True)
                 for backend in backends]
        for backend, proc in zip(backends, procs, strict=True):
            out, _ = proc.communicate()
            sys.stdout.write(out)
            sys.stdout.flush()
            if proc.returncode != 0:
                log(f"--memory-worker {backend} failed with status {proc.returncode}")
                return proc.returncode
    log(f"done in {perf() - started:.0f} s, load average {_load()}")
    return 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _fingerprint() -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "supervisor").glob("*.py")):
        digest.update(path.read_bytes())
    return f"sha256:{digest.hexdigest()[:12]}"


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
