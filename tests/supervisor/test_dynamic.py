"""Dynamic children: start, terminate, restart, delete, list and count, under load."""

import re

import anyio
import pytest
from corehelp import Worker, worker

from supervisor import (
    ChildError,
    ChildSpec,
    EventLog,
    Restart,
    StartError,
    SupervisorSpec,
    start_tree,
)

pytestmark = pytest.mark.anyio

POOL = SupervisorSpec("root", children=[
    SupervisorSpec("pool", intensity=1000, period=1.0, max_children=50)])


async def test_start_terminate_and_list_dynamic_children() -> None:
    """start_child returns a live ref; which/count_children report; terminate forgets it."""
    async with start_tree(POOL) as tree:
        pool = tree.supervisor("pool")
        refs = [await pool.start_child(worker(f"w{i}")) for i in range(3)]
        assert [await r.call("get") for r in refs] == [("w0", 0), ("w1", 0), ("w2", 0)]
        infos = await pool.which_children()
        assert [(i.id, i.state, i.supervisor) for i in infos] == [
            ("w0", "running", False), ("w1", "running", False), ("w2", "running", False)]
        counts = await pool.count_children()
        assert (counts.specs, counts.active, counts.workers, counts.supervisors) == (3, 3, 3, 0)
        await pool.terminate_child("w1")
        assert not refs[1].alive
        assert [i.id for i in await pool.which_children()] == ["w0", "w2"]


async def test_static_child_terminate_restart_delete() -> None:
    """A static child stays listed when terminated, can be restarted, and deleted when stopped."""
    spec = SupervisorSpec("root", children=[worker("a"), worker("b")])
    async with start_tree(spec) as tree:
        root = tree.root
        await root.terminate_child("a")
        assert [(i.id, i.state) for i in await root.which_children()] == [
            ("a", "terminated"), ("b", "running")]
        with pytest.raises(ChildError, match=re.escape("child 'b' of root is running")):
            await root.delete_child("b")
        ref = await root.restart_child("a")
        assert await ref.call("get") == ("a", 0)
        await root.terminate_child("a")
        await root.delete_child("a")
        assert [i.id for i in await root.which_children()] == ["b"]
        with pytest.raises(ChildError, match=re.escape("supervisor root has no child 'a'")):
            await root.restart_child("a")


async def test_refusals_are_clear_and_leave_the_supervisor_running() -> None:
    """Duplicate ids, the max_children limit and start failures are refused, not crashes."""
    async with start_tree(POOL) as tree:
        pool = tree.supervisor("pool")
        await pool.start_child(worker("x"))
        with pytest.raises(ChildError, match=re.escape(
                "supervisor root/pool already has a child 'x'")):
            await pool.start_child(worker("x"))
        with pytest.raises(StartError, match=re.escape(
                "child root/pool/bad failed to start: RuntimeError('bad cannot start')")):
            await pool.start_child(ChildSpec("bad", lambda: Worker("bad", fail_start=True)))
        for i in range(49):
            await pool.start_child(worker(f"w{i}", restart=Restart.TEMPORARY))
        with pytest.raises(ChildError, match=re.escape(
                "supervisor root/pool has reached max_children=50")):
            await pool.start_child(worker("one-too-many"))
        assert (await pool.count_children()).active == 50


async def test_dynamic_children_under_load() -> None:
    """Many concurrent starts, crashes and terminations leave exactly the expected children."""
    log = EventLog()
    spec = SupervisorSpec("root", children=[SupervisorSpec("pool", intensity=10_000, period=1.0)])
    async with start_tree(spec, subscribe=[log]) as tree:
        pool = tree.supervisor("pool")

        async def life(i: int) -> None:
            ref = await pool.start_child(worker(f"w{i}"))
            await ref.cast("crash")
            await log.wait_for("restarted", f"root/pool/w{i}")
            if i % 2:
                await pool.terminate_child(f"w{i}")

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(life, i)
        infos = await pool.which_children()
        assert sorted(i.id for i in infos) == sorted(f"w{i}" for i in range(0, 200, 2))
        assert all(i.state == "running" and i.restarts == 1 for i in infos)
        for info in infos:
            assert info.ref is not None
            assert await info.ref.call("get") == (info.id, 0)


async def test_unknown_call_is_refused_and_the_supervisor_survives() -> None:
    """A malformed request to a supervisor is refused; it does not crash the subtree."""
    from supervisor import SupervisorRef

    async with start_tree(POOL) as tree:
        pool = tree.supervisor("pool")
        assert isinstance(pool, SupervisorRef)
        with pytest.raises(ChildError, match=re.escape(
                "supervisor root/pool: unknown call ('pid',)")):
            await pool._op("pid", timeout=1)
        assert (await pool.count_children()).active == 0
