"""Trees: registry, path lookups, events, logging, no leaked tasks, public surface."""

import io
import json
import re

import anyio
import pytest
import structlog
from corehelp import worker

import supervisor
from supervisor import (
    AlreadyRegistered,
    ChildSpec,
    EventLog,
    NoSuchActor,
    StartError,
    SupervisorSpec,
    configure_logging,
    start_tree,
)

pytestmark = pytest.mark.anyio


async def test_registry_is_per_tree() -> None:
    """Two trees register the same name without seeing each other."""
    spec = SupervisorSpec("root", children=[ChildSpec("w", lambda: __import__(
        "corehelp").Worker("w"), name="counter")])
    async with start_tree(spec) as one, start_tree(spec) as two:
        a, b = one.whereis("counter"), two.whereis("counter")
        assert a is not b
        await a.cast(1)
        assert await a.call("get") == ("w", 1)
        assert await b.call("get") == ("w", 0)


async def test_lookups_of_absent_names_fail_clearly() -> None:
    """whereis raises NoSuchActor naming what was asked for."""
    async with start_tree(SupervisorSpec("root", children=[worker("w")])) as tree:
        with pytest.raises(NoSuchActor, match=re.escape(
                "no actor named 'nope' in this tree (not registered, no such path,"
                " or not running now)")):
            tree.whereis("nope")
        assert tree.whereis("root/w") == tree.whereis("w")
        assert tree.whereis("root") == tree.root
        with pytest.raises(TypeError, match="actor root/w is not a supervisor"):
            tree.supervisor("w")


async def test_duplicate_name_refuses_the_second_start() -> None:
    """A name held by a live actor cannot be taken by another."""
    spec = SupervisorSpec("root", children=[worker("a", name="n"), worker("b", name="n")])
    with pytest.raises(StartError, match=re.escape(
            "child root/b failed to start: AlreadyRegistered(\"name 'n' is already"
            " registered by root/a\")")) as info:
        async with start_tree(spec):
            pass
    assert isinstance(info.value.cause, AlreadyRegistered)


async def test_events_carry_path_and_correlation_id_and_reach_structlog() -> None:
    """Lifecycle events have the actor path and the tree's correlation id, also in the log."""
    out = io.StringIO()
    configure_logging("DEBUG", json=True, stream=out)
    try:
        log = EventLog()
        spec = SupervisorSpec("root", children=[worker("w")])
        async with start_tree(spec, subscribe=[log], correlation_id="cid-123") as tree:
            await tree.whereis("w").cast("crash")
            await log.wait_for("restarted", "root/w")
    finally:
        configure_logging("INFO")
    assert [(e.kind, e.path) for e in log.events] == [
        ("started", "root/w"), ("started", "root"), ("crashed", "root/w"),
        ("started", "root/w"), ("restarted", "root/w"), ("terminated", "root/w"),
        ("stopped", "root")]
    assert {e.correlation_id for e in log.events} == {"cid-123"}
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    crashed = next(x for x in lines if x["event"] == "crashed")
    assert crashed["path"] == "root/w"
    assert crashed["correlation_id"] == "cid-123"
    assert crashed["level"] == "debug"
    assert crashed["error"] == "ValueError('w crashed')"


async def test_a_broken_subscriber_does_not_break_the_tree() -> None:
    """An exception in an event subscriber is logged and the tree goes on."""

    def broken(_event: object) -> None:
        raise RuntimeError("observer bug")

    async with start_tree(SupervisorSpec("root", children=[worker("w")]),
                          subscribe=[broken]) as tree:
        assert await tree.whereis("w").call("get") == ("w", 0)


async def test_no_task_outlives_the_tree() -> None:
    """After the tree ends (even after crashes and timers) no task of it remains."""
    before = {t.id for t in anyio.get_running_tasks()}
    log = EventLog()
    pool = SupervisorSpec("pool", intensity=100, period=1.0)
    spec = SupervisorSpec("root", children=[worker("a"), pool])
    async with start_tree(spec, subscribe=[log]) as tree:
        p = tree.supervisor("pool")
        for i in range(20):
            ref = await p.start_child(worker(f"w{i}"))
            await ref.cast("crash")
        await log.wait_for("restarted", count=20)
        assert len(anyio.get_running_tasks()) > len(before) + 20
    after = {t.id for t in anyio.get_running_tasks()}
    assert after == before


def test_public_surface_is_stable() -> None:
    """The package exports exactly its documented names, all of them importable."""
    assert sorted(supervisor.__all__) == sorted([
        "BRUTAL", "Actor", "ActorExited", "ActorRef", "AlreadyRegistered", "AutoShutdown",
        "Backoff", "CallTimeout", "ChildCounts", "ChildError", "ChildInfo", "ChildSpec",
        "Down", "Event", "EventLog", "ExitStatus", "IntensityExceeded", "MailboxFull",
        "MonitorRef", "NamedRef", "NoSuchActor", "Restart", "StartError", "Strategy",
        "SupervisionError", "SupervisorRef", "SupervisorSpec", "Timer", "Tree",
        "WrongBackend", "add_restart", "configure_logging", "new_correlation_id",
        "run_application", "serve", "should_restart", "start_tree"])
    for name in supervisor.__all__:
        obj = getattr(supervisor, name)
        assert getattr(obj, "__doc__", None) or not callable(obj), name


def test_structlog_is_configured_on_import() -> None:
    """Importing the package leaves structlog configured (INFO to stderr by default)."""
    assert structlog.is_configured()


async def test_a_registered_name_never_resolves_to_a_same_named_path() -> None:
    """While a named actor restarts, its name is unavailable, not another actor's path."""
    backoff = __import__("supervisor").Backoff(min=5.0, max=5.0, first=5.0)
    inner = SupervisorSpec("w", children=[worker("x")])
    spec = SupervisorSpec("root", children=[
        ChildSpec("named", lambda: __import__("corehelp").Worker("n"), name="w",
                  backoff=backoff), inner])
    log = EventLog()
    async with start_tree(spec, subscribe=[log]) as tree:
        assert tree.whereis("w").path == "root/named"
        await tree.whereis("w").cast("crash")
        await log.wait_for("backoff", "root/named")
        with pytest.raises(NoSuchActor, match=re.escape(
                "no actor named 'w' now: root/named is not running (restarting or stopped)")):
            tree.whereis("w")
        assert tree.whereis("root/w").path == "root/w"
