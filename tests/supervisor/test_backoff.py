"""Restart backoff: delays grow, reset after quiet periods, and never block the supervisor."""

import random
import re
from typing import Any

import anyio
import pytest
from corehelp import Worker

from supervisor import Actor, Backoff, ChildSpec, EventLog, SupervisorSpec, start_tree

pytestmark = pytest.mark.anyio


def test_backoff_delay_sequence() -> None:
    """First restart at once, then min, doubling, capped at max."""
    b = Backoff(min=0.5, max=30.0, multiplier=2.0)
    assert [b.delay(n) for n in range(9)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_backoff_jitter_stays_in_bounds() -> None:
    """Jitter spreads each delay by at most the jitter factor."""
    b = Backoff(min=1.0, max=8.0, jitter=0.25)
    rng = random.Random(3)
    for n in range(1, 6):
        base = min(8.0, 2.0 ** (n - 1))
        for _ in range(100):
            assert base * 0.75 <= b.delay(n, rng) <= base * 1.25


def test_backoff_validation() -> None:
    """Nonsense backoff settings are refused when built."""
    with pytest.raises(ValueError, match=re.escape("max must be >= min, got min=2 max=1")):
        Backoff(min=2, max=1)
    with pytest.raises(ValueError, match=re.escape("jitter must be between 0 and 1, got 2")):
        Backoff(jitter=2)


class CrashOnStart(Actor):
    """Crashes right after each start, recording when it started."""

    starts: list[float] = []

    async def on_start(self) -> None:
        CrashOnStart.starts.append(anyio.current_time())
        self.send_after(0, "die")

    async def handle_info(self, msg: Any) -> None:
        raise RuntimeError("crash loop")


async def test_restarts_are_spaced_by_the_backoff() -> None:
    """Consecutive restarts wait 0, min, 2*min, 4*min; the events say so."""
    CrashOnStart.starts = []
    log = EventLog()
    backoff = Backoff(min=0.05, max=0.2, multiplier=2.0, reset_after=10.0)
    spec = SupervisorSpec("root", intensity=100, period=10.0, children=[
        ChildSpec("c", CrashOnStart, backoff=backoff)])
    async with start_tree(spec, subscribe=[log]):
        with anyio.fail_after(3):
            await log.wait_for("restarted", "root/c", count=4)
    gaps = [b - a for a, b in zip(CrashOnStart.starts, CrashOnStart.starts[1:], strict=False)]
    # Never earlier than the backoff (a loaded machine may only make it later).
    for gap, want in zip(gaps[1:4], (0.05, 0.1, 0.2), strict=True):
        assert gap >= want
    assert gaps[0] < gaps[3]
    assert [e.data["delay"] for e in log.of("backoff")][:3] == [0.05, 0.1, 0.2]
    assert [e.data["attempt"] for e in log.of("backoff")][:3] == [2, 3, 4]


async def test_backoff_resets_after_a_quiet_period() -> None:
    """After reset_after seconds without a crash the next restart is immediate again."""
    log = EventLog()
    backoff = Backoff(min=0.2, max=1.0, reset_after=0.05)
    spec = SupervisorSpec("root", intensity=100, period=10.0, children=[
        ChildSpec("w", lambda: Worker("w"), backoff=backoff)])
    async with start_tree(spec, subscribe=[log]) as tree:
        await tree.whereis("w").cast("crash")
        await log.wait_for("restarted", "root/w")
        await anyio.sleep(0.1)
        await tree.whereis("w").cast("crash")
        await log.wait_for("restarted", "root/w", count=2)
    assert log.of("backoff") == []


async def test_supervisor_serves_calls_while_a_child_waits_out_its_backoff() -> None:
    """During a backoff wait the supervisor answers calls and can be shut down."""
    log = EventLog()
    backoff = Backoff(min=5.0, max=5.0, first=5.0)
    spec = SupervisorSpec("root", intensity=100, period=10.0, children=[
        ChildSpec("w", lambda: Worker("w"), backoff=backoff)])
    with anyio.fail_after(2):
        async with start_tree(spec, subscribe=[log]) as tree:
            await tree.whereis("w").cast("crash")
            await log.wait_for("backoff", "root/w")
            infos = await tree.root.which_children()
            assert [(i.id, i.state) for i in infos] == [("w", "restarting")]
