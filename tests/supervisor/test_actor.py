"""Actors and refs: cast, call, mailboxes, monitors, timers, stop hooks."""

import re
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from corehelp import Gate, Ticker, Worker, worker

from supervisor import (
    Actor,
    ActorExited,
    CallTimeout,
    ChildSpec,
    Down,
    EventLog,
    MailboxFull,
    Restart,
    SupervisorSpec,
    start_tree,
)

pytestmark = pytest.mark.anyio


def tree_of(*children: ChildSpec, **kw: Any) -> SupervisorSpec:
    return SupervisorSpec("root", intensity=kw.pop("intensity", 10), period=5.0,
                          children=children, **kw)


async def test_cast_then_call_sees_the_cast() -> None:
    """A call is handled after the casts sent before it, and returns the handler's reply."""
    async with start_tree(tree_of(worker("w"))) as tree:
        ref = tree.whereis("w")
        for _ in range(10):
            await ref.cast("inc")
        assert await ref.call("get", timeout=1.0) == ("w", 10)


async def test_call_reraises_handler_error_and_actor_restarts() -> None:
    """A failing call raises the handler's exception in the caller and the actor restarts."""
    log = EventLog()
    async with start_tree(tree_of(worker("w")), subscribe=[log]) as tree:
        ref = tree.whereis("w")
        with pytest.raises(ValueError, match=re.escape(
                "w crashed in call\nraised by actor root/w while handling a call")) as info:
            await ref.call("crash")
        assert info.value.__notes__ == ["raised by actor root/w while handling a call"]
        await log.wait_for("restarted", "root/w")
        assert not ref.alive
        assert await tree.whereis("w").call("get") == ("w", 0)


async def test_call_timeout_is_a_clear_error() -> None:
    """A call that gets no reply in time raises CallTimeout naming actor and timeout."""
    async with start_tree(tree_of(worker("w", shutdown=0.05))) as tree:
        with pytest.raises(CallTimeout, match=re.escape(
                "call to actor root/w timed out after 0.05 s (message ('sleep', 1))")):
            await tree.whereis("w").call(("sleep", 1), timeout=0.05)
        assert isinstance(CallTimeout("x", 1, None), TimeoutError)


async def test_call_to_dead_actor_raises_actor_exited() -> None:
    """A ref to an ended incarnation refuses casts and calls with ActorExited."""
    log = EventLog()
    spec = tree_of(worker("w", restart=Restart.TEMPORARY))
    async with start_tree(spec, subscribe=[log]) as tree:
        ref = tree.whereis("w")
        await ref.cast("stop")
        await log.wait_for("exited", "root/w")
        msg = "actor root/w has exited (normal)"
        with pytest.raises(ActorExited, match=re.escape(msg)):
            await ref.call("get")
        with pytest.raises(ActorExited, match=re.escape(msg)):
            await ref.cast("inc")
        with pytest.raises(ActorExited, match=re.escape(msg)):
            ref.cast_nowait("inc")


async def test_call_queued_behind_a_crash_fails_instead_of_hanging() -> None:
    """A call still in the mailbox when its actor crashes gets ActorExited, never a hang."""
    async with start_tree(tree_of(worker("w"))) as tree:
        ref = tree.whereis("w")
        await ref.cast(("sleep", 0.05))
        await ref.cast("crash")
        with anyio.fail_after(2), pytest.raises(ActorExited, match=re.escape(
                "actor root/w has exited (crashed with ValueError('w crashed'))"
                " before replying")):
            await ref.call("get", timeout=None)


async def test_dropped_casts_are_reported() -> None:
    """Casts queued when the actor crashes are reported in a dropped event with the messages."""
    log = EventLog()
    async with start_tree(tree_of(worker("w")), subscribe=[log]) as tree:
        ref = tree.whereis("w")
        await ref.cast(("sleep", 0.05))
        await ref.cast("crash")
        for i in range(3):
            ref.cast_nowait(i)
        event = await log.wait_for("dropped", "root/w")
        assert event.data["count"] == 3
        assert event.data["messages"] == [0, 1, 2]


async def test_cast_nowait_on_full_mailbox_raises() -> None:
    """cast_nowait fails clearly when the bounded mailbox is full."""
    spec = tree_of(ChildSpec("w", lambda: Worker("w"), mailbox_size=2, shutdown=0.05))
    async with start_tree(spec) as tree:
        ref = tree.whereis("w")
        gate = Gate()
        await ref.cast(gate)
        await gate.entered.wait()  # the gate is off the mailbox, holding the actor
        ref.cast_nowait(1)
        ref.cast_nowait(2)
        with pytest.raises(MailboxFull, match=re.escape(
                "mailbox of actor root/w is full (2 messages)")):
            ref.cast_nowait(3)


async def test_cast_waits_when_mailbox_is_full() -> None:
    """cast applies backpressure: it waits until the actor makes room."""
    spec = tree_of(ChildSpec("w", lambda: Worker("w"), mailbox_size=1))
    async with start_tree(spec) as tree:
        ref = tree.whereis("w")
        gate = Gate()
        await ref.cast(gate)
        await gate.entered.wait()
        await ref.cast(1)
        with anyio.move_on_after(0.05) as scope:
            await ref.cast(2)
        assert scope.cancelled_caught
        gate.release.set()
        with anyio.fail_after(5):
            await ref.cast(3)
        assert await ref.call("get") == ("w", 2)


class Sink(Actor):
    def __init__(self) -> None:
        self.seen = 0

    async def handle_cast(self, msg: int) -> None:
        self.seen += 1

    async def handle_call(self, msg: Any) -> int:
        return self.seen


async def test_flooding_producer_is_cancelled_promptly_and_others_run() -> None:
    """A producer casting in a tight loop yields to others and stops at once when cancelled."""
    async with start_tree(tree_of(ChildSpec("sink", Sink))) as tree:
        ref = tree.whereis("sink")
        ticker = Ticker()
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                await ref.cast(sent)
                sent += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            tg.start_soon(flood)
            while sent < 5000:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
        assert ticker.ticks >= sent // 64 - 1
        seen_at_cancel = sent
        assert await ref.call("get") == seen_at_cancel


async def test_monitor_delivers_one_down_and_demonitor_cancels_it() -> None:
    """monitor() sends one Down with the reason when the incarnation ends; demonitor stops it."""
    downs: list[Down] = []

    class Watcher(Actor):
        async def handle_call(self, msg: Any) -> Any:
            op, ref = msg
            if op == "monitor":
                return self.monitor(ref)
            self.demonitor(ref)
            return None

        async def handle_info(self, msg: Any) -> None:
            if isinstance(msg, Down):
                downs.append(msg)

    log = EventLog()
    spec = tree_of(ChildSpec("watcher", Watcher), worker("a"), worker("b"))
    async with start_tree(spec, subscribe=[log]) as tree:
        watcher = tree.whereis("watcher")
        a, b = tree.whereis("a"), tree.whereis("b")
        await watcher.call(("monitor", a))
        mref_b = await watcher.call(("monitor", b))
        await watcher.call(("demonitor", mref_b))
        await a.cast("crash")
        await b.cast("crash")
        await log.wait_for("restarted", "root/b")
        await log.wait_for("restarted", "root/a")
        with anyio.fail_after(1):
            while not downs:
                await anyio.sleep(0.001)
        await anyio.sleep(0.02)
        assert len(downs) == 1
        assert downs[0].ref == a
        assert repr(downs[0].reason) == "ValueError('a crashed')"
        # monitoring an incarnation that already ended delivers Down at once
        await watcher.call(("monitor", a))
        with anyio.fail_after(1):
            while len(downs) < 2:
                await anyio.sleep(0.001)


async def test_send_after_delivers_to_handle_info() -> None:
    """send_after delivers a message to handle_info after the delay; cancel() stops it."""
    got: list[str] = []

    class Timed(Actor):
        async def on_start(self) -> None:
            self.send_after(0.01, "tick")
            self.send_after(0.01, "never").cancel()

        async def handle_info(self, msg: Any) -> None:
            got.append(msg)

    async with start_tree(tree_of(ChildSpec("t", Timed))):
        with anyio.fail_after(1):
            while not got:
                await anyio.sleep(0.005)
        await anyio.sleep(0.03)
    assert got == ["tick"]


async def test_stop_hook_error_is_logged_and_does_not_block_shutdown() -> None:
    """An exception in on_stop becomes a stop_hook_failed event; shutdown goes on."""

    class BadStop(Worker):
        async def on_stop(self, reason: Any) -> None:
            raise OSError("disk gone")

    log = EventLog()
    journal: list[str] = []
    spec = tree_of(worker("a", journal), ChildSpec("bad", lambda: BadStop("bad", journal)))
    async with start_tree(spec, subscribe=[log]):
        pass
    (event,) = log.of("stop_hook_failed")
    assert event.path == "root/bad"
    assert repr(event.error) == "OSError('disk gone')"
    assert journal == ["start a", "start bad", "stop a"]


async def test_named_ref_reaches_the_new_incarnation() -> None:
    """A name resolves on each send, so it reaches the restarted incarnation."""
    log = EventLog()
    spec = tree_of(ChildSpec("w", lambda: Worker("w"), name="counter"))
    async with start_tree(spec, subscribe=[log]) as tree:
        named = tree.ref("counter")
        first = tree.whereis("counter")
        await named.cast("crash")
        await log.wait_for("restarted", "root/w")
        await named.cast(1)
        assert await named.call("get") == ("w", 1)
        assert tree.whereis("counter") != first


async def test_handler_exception_in_cast_crashes_the_actor() -> None:
    """A cast whose handler raises crashes the actor; a crashed event carries the error."""
    log = EventLog()
    async with start_tree(tree_of(worker("w")), subscribe=[log]) as tree:
        await tree.whereis("w").cast("crash")
        event = await log.wait_for("crashed", "root/w")
        assert repr(event.error) == "ValueError('w crashed')"
        assert event.correlation_id == tree.correlation_id


async def test_kill_ends_a_stuck_actor_and_its_supervisor_restarts_it() -> None:
    """ref.kill() cancels a stuck handler; the exit reason is killed and it is restarted."""
    log = EventLog()
    async with start_tree(tree_of(worker("w")), subscribe=[log]) as tree:
        ref = tree.whereis("w")
        await ref.cast(("sleep", 60))
        await anyio.sleep(0.01)
        ref.kill()
        event = await log.wait_for("restarted", "root/w")
        assert log.of("exited", "root/w")[0].data["reason"] == "killed"
        assert event.data["incarnation"] == 2
        assert ref.exit_reason == "killed"


async def test_notify_reaches_handle_info_even_when_the_mailbox_is_full() -> None:
    """notify() never blocks and never loses the message, even with a full mailbox."""
    got: list[Any] = []

    class Slow(Worker):
        async def handle_info(self, msg: Any) -> None:
            got.append(msg)

    spec = tree_of(ChildSpec("s", lambda: Slow("s"), mailbox_size=1, shutdown=0.1))
    async with start_tree(spec) as tree:
        ref = tree.whereis("s")
        await ref.cast(("sleep", 0.05))
        await anyio.sleep(0.01)
        await ref.cast(1)  # fills the mailbox
        ref._cell.actor.notify("hello")
        with anyio.fail_after(2):
            while not got:
                await anyio.sleep(0.01)
    assert got == ["hello"]
