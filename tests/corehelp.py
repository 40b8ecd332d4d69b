"""Small actors and helpers shared by the supervision-core tests."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel

from supervisor import Actor, ChildSpec, Event, EventLog, Restart

Journal = list[str]


class Worker(Actor):
    """Counts casts; ``"crash"`` raises, ``"stop"``/``("stop", reason)`` ends it, calls answer."""

    def __init__(self, name: str = "w", journal: Journal | None = None,
                 fail_start: bool = False) -> None:
        self.name = name
        self.journal = journal if journal is not None else []
        self.fail_start = fail_start
        self.count = 0

    async def on_start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.journal.append(f"start {self.name}")

    async def handle_cast(self, msg: Any) -> None:
        if msg == "crash":
            raise ValueError(f"{self.name} crashed")
        if msg == "stop":
            self.stop()
        elif isinstance(msg, tuple) and msg[0] == "stop":
            self.stop(msg[1])
        elif isinstance(msg, tuple) and msg[0] == "sleep":
            await anyio.sleep(msg[1])
        elif isinstance(msg, Gate):
            msg.entered.set()
            await msg.release.wait()
        else:
            self.count += 1

    async def handle_call(self, msg: Any) -> Any:
        if msg == "crash":
            raise ValueError(f"{self.name} crashed in call")
        if isinstance(msg, tuple) and msg[0] == "sleep":
            await anyio.sleep(msg[1])
        return (self.name, self.count)

    async def on_stop(self, reason: Any) -> None:
        self.journal.append(f"stop {self.name}")


class Ticker:
    """A task body that counts how often the scheduler let it run."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await anyio.lowlevel.checkpoint()


class Gate:
    """A cast that holds its actor until ``release`` is set; ``entered`` says it is held."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()


def worker(child_id: str, journal: Journal | None = None, restart: Restart = Restart.PERMANENT,
           **kw: Any) -> ChildSpec:
    """A ChildSpec for a :class:`Worker` named like its id."""
    return ChildSpec(child_id, lambda: Worker(child_id, journal), restart=restart, **kw)


def incarnations(log: EventLog, path: str) -> int:
    """How many times the actor at ``path`` has started."""
    return len(log.of("started", path))


def kinds_at(events: list[Event], path: str) -> list[str]:
    return [e.kind for e in events if e.path == path]


class FakeClock:
    """A clock tests move by hand (for restart-intensity windows)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
