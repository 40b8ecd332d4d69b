"""Starting without a round trip, stopping dynamic children together, freeing ended actors.

These are the paths that make 10,000 actors cheap; each test checks that they behave
exactly as the slow paths do where a caller can tell.
"""

from __future__ import annotations

import contextvars
import gc
import re
import weakref
from typing import Any

import anyio
import pytest
from corehelp import Gate, Ticker, Worker

from supervisor import (
    Actor,
    ActorExited,
    ChildError,
    ChildSpec,
    Event,
    EventLog,
    NoSuchActor,
    Restart,
    StartError,
    SupervisorSpec,
    start_tree,
)
from supervisor._supervisor import Supervisor

pytestmark = pytest.mark.anyio

POOL = SupervisorSpec("root", children=[
    SupervisorSpec("pool", intensity=100, period=1.0, max_children=3)])

caller_var: contextvars.ContextVar[str] = contextvars.ContextVar("caller_var", default="unset")


class Plain(Actor):
    """No on_start: its start has nothing to wait for."""

    async def handle_call(self, msg: Any) -> Any:
        if msg == "var":
            return caller_var.get()
        return ("plain", msg)


class Broken(Actor):
    def __init__(self) -> None:
        raise RuntimeError("cannot build")


def plain(child_id: str, **kw: Any) -> ChildSpec:
    return ChildSpec(child_id, Plain, restart=Restart.TEMPORARY, **kw)


class CallSpy:
    """Counts the requests that reach the supervisor's mailbox."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Any] = []
        original = Supervisor.handle_call

        async def handle_call(sup: Supervisor, msg: Any) -> Any:
            self.calls.append(msg[0])
            return await original(sup, msg)

        monkeypatch.setattr(Supervisor, "handle_call", handle_call)


async def test_an_idle_supervisor_starts_a_plain_child_without_a_round_trip(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Same result, same events, same errors, but the request never queues."""
    spy = CallSpy(monkeypatch)
    log = EventLog()
    async with start_tree(POOL, subscribe=[log]) as tree:
        pool = tree.supervisor("pool")
        ref = await pool.start_child(plain("a", name="a"))
        assert spy.calls == []
        assert await ref.call(1) == ("plain", 1)
        assert tree.whereis("a") == ref
        assert [e.path for e in log.of("started")][-1] == "root/pool/a"
        with pytest.raises(ChildError, match="already has a child 'a'"):
            await pool.start_child(plain("a"))
        with pytest.raises(StartError, match=re.escape("root/pool/b")) as info:
            await pool.start_child(ChildSpec("b", Broken))
        assert "cannot build" in str(info.value)
        with pytest.raises(StartError, match="already registered"):
            await pool.start_child(plain("c", name="a"))
        await pool.start_child(plain("c"))
        await pool.start_child(plain("d"))
        with pytest.raises(ChildError, match="max_children=3"):
            await pool.start_child(plain("e"))
        assert spy.calls == []
        assert [i.id for i in await pool.which_children()] == ["a", "c", "d"]
        # A child with on_start still goes through the mailbox and waits for it.
        await pool.terminate_child("d")
        journal: list[str] = []
        await pool.start_child(ChildSpec("w", lambda: Worker("w", journal)))
        assert journal == ["start w"]
        assert "start_child" in spy.calls


async def test_a_busy_supervisor_takes_the_start_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the supervisor handles something else, the request waits its turn."""
    spy = CallSpy(monkeypatch)
    log = EventLog()
    spec = SupervisorSpec("root", children=[SupervisorSpec("pool")])
    async with start_tree(spec, subscribe=[log]) as tree:
        pool = tree.supervisor("pool")
        await pool.start_child(ChildSpec("slow", lambda: Worker("slow"), shutdown=5.0))
        gate = Gate()
        await tree.whereis("pool/slow").cast(gate)
        await gate.entered.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.terminate_child, "slow")  # held up by the gate
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(pool.start_child, plain("p"))
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(NoSuchActor):
                tree.whereis("pool/p")
            gate.release.set()
        kinds = [(e.kind, e.path) for e in log.events]
        assert kinds.index(("terminated", "root/pool/slow")) < kinds.index(
            ("started", "root/pool/p"))
        assert spy.calls == ["start_child", "terminate_child", "start_child"]


async def test_children_run_in_the_supervisors_context_not_the_callers() -> None:
    """The factory, the event subscribers and the child never see the caller's variables."""
    seen: list[tuple[str, str]] = []

    class Recorder(Plain):  # a class without on_start: the quick path
        def __init__(self) -> None:
            seen.append(("factory", caller_var.get()))

    def on_event(event: Event) -> None:
        if event.kind == "started" and event.path.startswith("root/pool/"):
            seen.append(("event", caller_var.get()))

    async with start_tree(POOL, subscribe=[on_event]) as tree:
        pool = tree.supervisor("pool")
        token = caller_var.set("caller's value")
        try:
            ref = await pool.start_child(ChildSpec("a", Recorder))
        finally:
            caller_var.reset(token)
        assert await ref.call("var") == "unset"
    assert seen == [("factory", "unset"), ("event", "unset")]


async def test_a_loop_of_starts_lets_others_run_and_is_cancellable() -> None:
    spec = SupervisorSpec("root", children=[SupervisorSpec("pool")])
    async with start_tree(spec) as tree:
        pool = tree.supervisor("pool")
        ticker = Ticker()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await anyio.lowlevel.checkpoint()
            before = ticker.ticks
            for i in range(256):
                await pool.start_child(plain(f"p{i}"))
            assert ticker.ticks - before >= 256 // 64 - 1
            tg.cancel_scope.cancel()
        assert (await pool.count_children()).active == 256
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.start_child(plain("never"))
        assert scope.cancelled_caught
        assert (await pool.count_children()).active == 256


class AwaitsEveryone(Actor):
    """Its stop ends only once every sibling has been asked to stop too."""

    def __init__(self, asked: list[str], everyone: anyio.Event, n: int) -> None:
        self.asked, self.everyone, self.n = asked, everyone, n

    async def on_stop(self, reason: Any) -> None:
        self.asked.append(self.path)
        if len(self.asked) == self.n:
            self.everyone.set()
        await self.everyone.wait()


async def test_dynamic_children_are_asked_to_stop_together() -> None:
    """As OTP's simple_one_for_one: one stopping child does not hold up the others."""
    n = 5
    asked: list[str] = []
    everyone = anyio.Event()
    log = EventLog()
    spec = SupervisorSpec("root", children=[SupervisorSpec("pool")])
    async with start_tree(spec, subscribe=[log]) as tree:
        pool = tree.supervisor("pool")
        for i in range(n):
            await pool.start_child(ChildSpec(
                f"c{i}", lambda: AwaitsEveryone(asked, everyone, n), shutdown=10.0))
        with anyio.fail_after(5):
            tree.shutdown()
            await tree.wait()
    terminated = [e for e in log.of("terminated") if e.path.startswith("root/pool/c")]
    assert sorted(e.path for e in terminated) == [f"root/pool/c{i}" for i in range(n)]
    assert {e.data["reason"] for e in terminated} == {"shutdown"}


class SlowToStop(Actor):
    async def on_stop(self, reason: Any) -> None:
        await anyio.sleep(0.5)


async def test_a_slow_dynamic_child_does_not_delay_the_kill_of_a_stuck_one() -> None:
    """Each dynamic child is killed at its own deadline, whatever its siblings do."""
    spec = SupervisorSpec("root", children=[SupervisorSpec("pool")])
    log = EventLog()
    async with start_tree(spec, subscribe=[log]) as tree:
        pool = tree.supervisor("pool")
        slow = await pool.start_child(ChildSpec("slow", SlowToStop, shutdown=5.0))
        stuck = await pool.start_child(ChildSpec("stuck", lambda: Worker("stuck"),
                                                 shutdown=0.1))
        gate = Gate()
        await stuck.cast(gate)
        await gate.entered.wait()
    assert stuck.exit_reason == "killed"
    assert slow.exit_reason == "shutdown"
    assert [e.path for e in log.of("terminated") if "/pool/" in e.path] == [
        "root/pool/stuck", "root/pool/slow"]


async def test_a_killed_supervisor_refuses_starts_on_both_paths() -> None:
    """Between a kill and its task's next step the supervisor is not idle."""
    spec = SupervisorSpec("root", children=[SupervisorSpec("pool", restart=Restart.TEMPORARY)])
    async with start_tree(spec) as tree:
        pool = tree.supervisor("pool")
        pool._cell.kill()
        with pytest.raises(ActorExited, match="root/pool"):
            await pool.start_child(plain("p"))
        with pytest.raises(ActorExited, match="root/pool"):
            await pool.start_child(ChildSpec("w", lambda: Worker("w")))


async def test_an_on_start_set_on_the_instance_is_waited_for() -> None:
    built: list[Plain] = []

    async def refuse() -> None:
        raise RuntimeError("not today")

    class SelfStarting(Plain):
        """Its class has no on_start (so start_child tries the quick path); its instance does."""

        def __init__(self) -> None:
            self.on_start = refuse  # type: ignore[method-assign]
            built.append(self)

    async with start_tree(POOL) as tree:
        pool = tree.supervisor("pool")
        with pytest.raises(StartError, match="not today"):
            await pool.start_child(ChildSpec("odd", SelfStarting))
        assert len(built) == 1
        assert await pool.which_children() == []


async def test_refs_are_values() -> None:
    async with start_tree(POOL) as tree:
        pool = tree.supervisor("pool")
        ref = await pool.start_child(plain("a", name="a"))
        same = tree.whereis("a")
        assert ref == same and hash(ref) == hash(same)
        assert {ref: 1}[same] == 1
        assert ref != tree.whereis("pool") and ref != "a"


async def test_an_ended_incarnation_is_freed_without_the_cycle_collector() -> None:
    """Nothing points back at an ended actor, so reference counting frees it at once."""
    async with start_tree(POOL) as tree:
        pool = tree.supervisor("pool")
        gc.collect()
        gc.disable()
        try:
            ref = await pool.start_child(plain("a"))
            actor = weakref.ref(ref._cell.actor)  # type: ignore[arg-type]
            mailbox = weakref.ref(ref._cell._recv)
            assert await ref.call(1) == ("plain", 1)
            await pool.terminate_child("a")
            assert mailbox() is not None  # the ref keeps its incarnation's record
            del ref
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            assert actor() is None
            assert mailbox() is None
        finally:
            gc.enable()
