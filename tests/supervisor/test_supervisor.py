"""Supervisors after OTP's supervisor_SUITE: strategies, restart types, intensity, start, stop."""

import re
from typing import Any

import anyio
import pytest
from corehelp import FakeClock, Worker, incarnations, worker

from supervisor import (
    BRUTAL,
    Actor,
    AutoShutdown,
    ChildSpec,
    EventLog,
    IntensityExceeded,
    Restart,
    StartError,
    Strategy,
    SupervisorSpec,
    add_restart,
    should_restart,
    start_tree,
)

pytestmark = pytest.mark.anyio

IDS = ("a", "b", "c")


def three(strategy: Strategy, journal: list[str] | None = None) -> SupervisorSpec:
    return SupervisorSpec("root", strategy=strategy, intensity=10, period=5.0,
                          children=[worker(i, journal) for i in IDS])


async def settle(log: EventLog, restarted: list[str]) -> None:
    for child in restarted:
        await log.wait_for("restarted", f"root/{child}")


@pytest.mark.parametrize(
    ("strategy", "crashed", "restarted"),
    [
        (Strategy.ONE_FOR_ONE, "a", ["a"]),
        (Strategy.ONE_FOR_ONE, "b", ["b"]),
        (Strategy.ONE_FOR_ONE, "c", ["c"]),
        (Strategy.ONE_FOR_ALL, "a", ["a", "b", "c"]),
        (Strategy.ONE_FOR_ALL, "b", ["a", "b", "c"]),
        (Strategy.ONE_FOR_ALL, "c", ["a", "b", "c"]),
        (Strategy.REST_FOR_ONE, "a", ["a", "b", "c"]),
        (Strategy.REST_FOR_ONE, "b", ["b", "c"]),
        (Strategy.REST_FOR_ONE, "c", ["c"]),
    ],
)
async def test_strategy_restarts_the_right_children(
    strategy: Strategy, crashed: str, restarted: list[str]
) -> None:
    """Each strategy restarts its group: siblings stop in reverse, all start in order."""
    log = EventLog()
    journal: list[str] = []
    async with start_tree(three(strategy, journal), subscribe=[log]) as tree:
        journal.clear()
        await tree.whereis(crashed).cast("crash")
        await settle(log, restarted)
        for child in IDS:
            assert incarnations(log, f"root/{child}") == (2 if child in restarted else 1), child
        others = [c for c in restarted if c != crashed]
        expected = [f"stop {crashed}"] + [f"stop {c}" for c in reversed(others)]
        expected += [f"start {c}" for c in restarted]
        assert journal == expected


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        (Restart.PERMANENT, "normal", True),
        (Restart.PERMANENT, "shutdown", True),
        (Restart.PERMANENT, "crash", True),
        (Restart.TRANSIENT, "normal", False),
        (Restart.TRANSIENT, "shutdown", False),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TEMPORARY, "normal", False),
        (Restart.TEMPORARY, "shutdown", False),
        (Restart.TEMPORARY, "crash", False),
    ],
)
async def test_restart_type_table(restart: Restart, how: str, restarted: bool) -> None:
    """Permanent always, transient only after an abnormal exit, temporary never."""
    log = EventLog()
    spec = SupervisorSpec("root", children=[worker("w", restart=restart), worker("x")])
    msg = {"normal": "stop", "shutdown": ("stop", "shutdown"), "crash": "crash"}[how]
    async with start_tree(spec, subscribe=[log]) as tree:
        await tree.whereis("w").cast(msg)
        await log.wait_for("crashed" if how == "crash" else "exited", "root/w")
        # This call is served after the supervisor finished handling the exit.
        children = {c.id: c.state for c in await tree.root.which_children()}
        assert incarnations(log, "root/w") == (2 if restarted else 1)
        if restarted:
            assert children["w"] == "running"
        elif restart is Restart.TEMPORARY:
            assert "w" not in children
        else:
            assert children["w"] == "terminated"


def test_should_restart_matches_otp() -> None:
    """The pure restart table: killed counts as abnormal."""
    assert should_restart(Restart.TRANSIENT, "killed")
    assert not should_restart(Restart.TRANSIENT, "normal")
    assert should_restart(Restart.PERMANENT, "normal")
    assert not should_restart(Restart.TEMPORARY, ValueError())


def test_add_restart_window_is_inclusive_and_forgets_old_entries() -> None:
    """Intensity is a pure function: entries older than the period are dropped."""
    ok, hist = add_restart((), 100.0, 2, 5.0)
    assert ok and hist == (100.0,)
    ok, hist = add_restart(hist, 103.0, 2, 5.0)
    assert ok and hist == (100.0, 103.0)
    ok, hist = add_restart(hist, 105.0, 2, 5.0)  # 105 - 100 <= 5: still inside
    assert not ok and hist == (100.0, 103.0, 105.0)
    ok, hist = add_restart((100.0, 103.0), 105.5, 2, 5.0)
    assert ok and hist == (103.0, 105.5)
    assert add_restart((), 1.0, 0, 5.0)[0] is False


async def test_intensity_not_reached_across_the_period() -> None:
    """Restarts spread wider than the period never add up to the intensity."""
    clock = FakeClock()
    log = EventLog()
    spec = SupervisorSpec("root", intensity=2, period=10.0, children=[worker("w")])
    async with start_tree(spec, clock=clock, subscribe=[log]) as tree:
        for i in range(6):
            await tree.whereis("w").cast("crash")
            await log.wait_for("restarted", "root/w", count=i + 1)
            clock.now += 6.0
        assert tree.running


async def test_intensity_reached_inside_the_period_escalates() -> None:
    """The third crash within the period exceeds intensity 2: children stop, the tree raises."""
    clock = FakeClock()
    log = EventLog()
    journal: list[str] = []
    spec = SupervisorSpec("root", intensity=2, period=10.0,
                          children=[worker("a", journal), worker("w", journal)])
    msg = ("supervisor root reached its restart intensity (2 restarts in 10 s);"
           " last exit: root/w ValueError('w crashed')")
    with pytest.raises(IntensityExceeded, match=re.escape(msg)):
        async with start_tree(spec, clock=clock, subscribe=[log]) as tree:
            for i in range(3):
                await tree.whereis("w").cast("crash")
                if i < 2:
                    await log.wait_for("restarted", "root/w", count=i + 1)
                    clock.now += 4.0
            await tree.wait()
    assert journal[-2:] == ["stop w", "stop a"]
    assert log.of("intensity_exceeded")[0].path == "root"


async def test_escalation_through_two_levels() -> None:
    """A sub-supervisor that gives up is a crash of a child for its parent, which restarts it."""
    log = EventLog()
    inner = SupervisorSpec("inner", intensity=1, period=5.0, children=[worker("w")])
    spec = SupervisorSpec("root", intensity=3, period=5.0, children=[worker("x"), inner])
    async with start_tree(spec, subscribe=[log]) as tree:
        old_x = tree.whereis("x")
        await tree.whereis("inner/w").cast("crash")
        await log.wait_for("restarted", "root/inner/w")
        await tree.whereis("inner/w").cast("crash")
        crashed = await log.wait_for("crashed", "root/inner")
        assert isinstance(crashed.error, IntensityExceeded)
        await log.wait_for("restarted", "root/inner")
        assert await tree.whereis("inner/w").call("get") == ("w", 0)
        assert tree.whereis("x") == old_x


async def test_restart_storm_ends_in_clean_escalation() -> None:
    """A child that crashes on every start ends the whole tree with one clear error."""

    class Doomed(Actor):
        async def on_start(self) -> None:
            self.send_after(0, "die")

        async def handle_info(self, msg: Any) -> None:
            raise RuntimeError("storm")

    inner = SupervisorSpec("inner", intensity=5, period=5.0,
                           children=[ChildSpec("d", Doomed)])
    spec = SupervisorSpec("root", intensity=2, period=5.0, children=[inner])
    log = EventLog()
    with anyio.fail_after(5), pytest.raises(IntensityExceeded) as info:
        async with start_tree(spec, subscribe=[log]) as tree:
            await tree.wait()
    assert info.value.supervisor == "root"
    assert isinstance(info.value.last_reason, IntensityExceeded)
    assert len(log.of("intensity_exceeded", "root/inner")) == 3


async def test_start_failure_names_the_child_and_stops_the_started_ones() -> None:
    """A child that fails to start fails the tree's start; earlier children stop in reverse."""
    journal: list[str] = []
    spec = SupervisorSpec("root", children=[
        worker("a", journal), worker("b", journal),
        ChildSpec("c", lambda: Worker("c", journal, fail_start=True)), worker("d", journal),
    ])
    with pytest.raises(StartError, match=re.escape(
            "child root/c failed to start: RuntimeError('c cannot start')")):
        async with start_tree(spec):
            pass
    assert journal == ["start a", "start b", "stop b", "stop a"]


async def test_nested_start_failure_propagates_with_the_deepest_name() -> None:
    """A start failure deep in the tree names the child that failed."""
    inner = SupervisorSpec("inner", children=[
        ChildSpec("bad", lambda: Worker("bad", fail_start=True))])
    with pytest.raises(StartError, match=re.escape("child root/inner failed to start")) as info:
        async with start_tree(SupervisorSpec("root", children=[inner])):
            pass
    assert isinstance(info.value.cause, StartError)
    assert info.value.cause.child == "root/inner/bad"


class Stubborn(Worker):
    async def on_stop(self, reason: Any) -> None:
        self.journal.append(f"stopping {self.name}")
        await anyio.sleep(30)


async def test_shutdown_is_ordered_and_timeouts_cancel_stubborn_children() -> None:
    """Children stop in reverse order; one ignoring its stop is cancelled at its timeout."""
    journal: list[str] = []
    spec = SupervisorSpec("root", children=[
        worker("a", journal),
        ChildSpec("s", lambda: Stubborn("s", journal), shutdown=0.1),
        worker("c", journal),
        ChildSpec("k", lambda: Stubborn("k", journal), shutdown=BRUTAL),
    ])
    start = anyio.current_time()
    async with start_tree(spec):
        journal.clear()
    elapsed = anyio.current_time() - start
    assert journal == ["stop c", "stopping s", "stop a"]
    assert 0.1 <= elapsed < 1.0


async def test_auto_shutdown_when_a_significant_child_ends() -> None:
    """any_significant: a significant transient child ending normally stops the supervisor."""
    log = EventLog()
    spec = SupervisorSpec("root", auto_shutdown=AutoShutdown.ANY_SIGNIFICANT, children=[
        worker("other"),
        ChildSpec("job", lambda: Worker("job"), restart=Restart.TRANSIENT, significant=True),
    ])
    async with start_tree(spec, subscribe=[log]) as tree:
        await tree.whereis("job").cast("stop")
        with anyio.fail_after(2):
            await tree.wait()
    assert tree.exit_code == 0
    assert log.of("auto_shutdown")[0].data["child"] == "job"


async def test_body_exception_stops_the_tree_and_propagates_unwrapped() -> None:
    """An error in the async-with body stops the tree and propagates as itself."""
    journal: list[str] = []
    spec = SupervisorSpec("root", children=[worker("a", journal)])
    with pytest.raises(KeyError, match="'oops'"):
        async with start_tree(spec):
            raise KeyError("oops")
    assert journal == ["start a", "stop a"]


def test_spec_validation_errors_are_clear() -> None:
    """Bad specs fail when built, with messages naming the field."""
    with pytest.raises(ValueError, match=re.escape(
            "intensity of supervisor 'root' must be >= 0, got -1")):
        SupervisorSpec("root", intensity=-1)
    with pytest.raises(ValueError, match=re.escape("duplicate child id 'a' in supervisor 'r'")):
        SupervisorSpec("r", children=[worker("a"), worker("a")])
    with pytest.raises(ValueError, match=re.escape(
            "id must be a non-empty string without '/', got 'a/b'")):
        worker("a/b")
    with pytest.raises(ValueError, match=re.escape(
            "shutdown of child 'a' must be seconds >= 0, None or BRUTAL, got -1")):
        worker("a", shutdown=-1)
    with pytest.raises(ValueError, match=re.escape("period must be > 0, got 0")):
        SupervisorSpec("r", period=0)


async def test_failed_restart_is_retried_through_the_mailbox() -> None:
    """A restart whose start fails is tried again after other messages, until intensity ends it."""
    starts: list[int] = []

    class FailsAfterFirst(Worker):
        async def on_start(self) -> None:
            starts.append(1)
            if len(starts) > 1:
                raise RuntimeError("cannot come back")

    log = EventLog()
    spec = SupervisorSpec("root", intensity=3, period=10.0, children=[
        ChildSpec("f", lambda: FailsAfterFirst("f")), worker("other")])
    with anyio.fail_after(5), pytest.raises(IntensityExceeded):
        async with start_tree(spec, subscribe=[log]) as tree:
            await tree.whereis("f").cast("crash")
            await tree.wait()
    assert len(log.of("restart_failed", "root/f")) == 3
    assert len(starts) == 4
