"""Supervisors: every restart decision of the framework lives in this file.

A supervisor is an actor that starts its children in spec order, watches them, and
restarts them following Erlang/OTP's ``supervisor`` module:

* **Restart types** (:func:`should_restart`): permanent children are always restarted,
  transient ones only after an abnormal exit (anything but ``normal``/``shutdown``),
  temporary ones never (they are removed from the supervisor when they end).
* **Intensity** (:func:`add_restart`): every restart is recorded; when more than
  ``intensity`` restarts fall within ``period`` seconds, the supervisor stops all its
  children in reverse start order and exits with :class:`IntensityExceeded`. Its own
  supervisor sees that as a crash of a child (escalation). Intensity is checked before
  the strategy runs.
* **Strategies**: one_for_one restarts the child alone; one_for_all stops the other
  children (reverse order) and restarts all of them in order; rest_for_one does that for
  the child and those started after it. Temporary siblings stopped this way are removed.
* **Backoff** (an addition to OTP, as in Akka's BackoffSupervisor): a child whose spec has
  a :class:`Backoff` is restarted after a growing delay. The supervisor never sleeps: a
  timer sends it a message, and it keeps serving its mailbox (and stop requests) meanwhile.
  A restart that fails to start is retried the same way and counts as another restart.
* **Shutdown**: children stop in reverse start order, each asked first and cancelled after
  its ``shutdown`` seconds (``BRUTAL``: cancelled at once; ``None``: waited for ever).
  Dynamic children, which were started last and have no order among themselves, are
  all asked at once and then waited for, each up to its own ``shutdown`` (as OTP does
  for simple_one_for_one children); the static ones follow, one by one.
* **Dynamic children** (OTP's start_child/terminate_child/restart_child/delete_child/
  which_children/count_children, Elixir's DynamicSupervisor): through
  :class:`SupervisorRef`; ``max_children`` bounds them. Children started dynamically are
  forgotten when terminated; static ones stay listed as terminated until deleted.
  A child whose class has no ``on_start`` is started by ``start_child`` without a round
  trip when the supervisor is idle (:meth:`Supervisor.start_now`): the same steps the
  supervisor would run next, without a pause, in a copy of its context (the factory, the
  events and the child never see the caller's context variables).

Differences from OTP, forced by Python: exits are reported to the supervisor as messages
from the child's own task (there are no links); a child is "killed" by cancelling its
task, so code that swallows cancellation can delay its own end.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs

from ._actor import (
    SHUTDOWN,
    Actor,
    ActorRef,
    Cell,
    describe_reason,
    fast_path_checkpoint,
    is_normal,
    needs_start,
)
from ._errors import AlreadyRegistered, ChildError, IntensityExceeded, StartError
from ._spec import (
    BRUTAL,
    AnySpec,
    AutoShutdown,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
)

__all__ = [
    "ChildCounts",
    "ChildInfo",
    "Supervisor",
    "SupervisorRef",
    "add_restart",
    "should_restart",
]


def should_restart(restart: Restart, reason: Any) -> bool:
    """OTP's restart table: does a child of this type come back after this exit?"""
    match restart:
        case Restart.PERMANENT:
            return True
        case Restart.TEMPORARY:
            return False
        case Restart.TRANSIENT:
            return not is_normal(reason)
    raise AssertionError(restart)


def add_restart(
    restarts: tuple[float, ...], now: float, intensity: int, period: float
) -> tuple[bool, tuple[float, ...]]:
    """Record a restart at ``now``; return (allowed, new history).

    Restarts older than ``period`` seconds are forgotten (OTP keeps those with
    ``now - then <= period``); the restart is allowed while the history holds at most
    ``intensity`` entries.
    """
    kept = (*(t for t in restarts if now - t <= period), now)
    return len(kept) <= intensity, kept


@attrs.frozen
class ChildInfo:
    """One line of ``which_children``."""

    id: str
    ref: ActorRef | None
    state: str  # running | restarting | terminated
    supervisor: bool
    restarts: int


@attrs.frozen
class ChildCounts:
    """``count_children``: specs known, children running, of which supervisors/workers."""

    specs: int
    active: int
    supervisors: int
    workers: int


@attrs.define(eq=False)
class _Child:
    spec: AnySpec
    dynamic: bool
    cell: Cell | None = None
    state: str = "terminated"
    incarnation: int = 0
    restarts: int = 0
    consecutive: int = 0
    last_exit: float | None = None


@attrs.frozen
class _Exit:
    cell: Cell
    reason: Any
    correlation_id: str


@attrs.frozen
class _TryRestart:
    ids: tuple[str, ...]
    correlation_id: str


@attrs.frozen
class _Refused:
    error: Exception


def _deadline(asked: tuple[Cell, float | str | None]) -> float:
    shutdown = asked[1]
    if shutdown is None:
        return math.inf
    return -math.inf if shutdown == BRUTAL else float(shutdown)


class Supervisor(Actor):
    """The supervisor actor; build it from a :class:`SupervisorSpec`."""

    def __init__(self, spec: SupervisorSpec) -> None:
        self.spec = spec
        self._children: dict[str, _Child] = {}
        self._history: tuple[float, ...] = ()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopping = False
        self._rng = random.Random()
        # Where start_now runs; on_start replaces it with a copy of this actor's own.
        self._context = contextvars.copy_context()

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                yield
        finally:
            # A child task cancelled before its first step never ran its own cleanup;
            # finish it here so its mailbox is closed and its watchers hear of it.
            for child in self._children.values():
                if child.cell is not None and child.cell.reason is None:
                    child.cell.abandon()

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        self._context = contextvars.copy_context()
        for spec in self.spec.children:
            child = _Child(spec, dynamic=False)
            self._children[spec.id] = child
            try:
                await self._start(child)
            except Exception:
                # Whatever failed, the children already started must not outlive us.
                await self._terminate_all()
                raise

    async def on_stop(self, reason: Any) -> None:
        await self._terminate_all()

    async def _terminate_all(self) -> None:
        # Reverse start order; dynamic children were started after the static ones and
        # have no order among themselves, so they are asked all at once and then waited
        # for, each up to its own shutdown time (OTP's simple_one_for_one and Elixir's
        # DynamicSupervisor do the same).
        self._stopping = True
        children = list(self._children.values())
        await self._terminate_together([c for c in children if c.dynamic])
        for child in reversed(children):
            if not child.dynamic:
                await self._terminate(child)

    # -- starting and stopping one child ------------------------------------------------

    async def _start(self, child: _Child, actor: Actor | None = None) -> ActorRef:
        if actor is None:
            actor = self._make(child)
        cell = self._launch(child, actor)
        if needs_start(actor):
            await cell.wait_started()
        return self._started(child, cell)

    def _make(self, child: _Child) -> Actor:
        try:
            return child.spec.factory()
        except Exception as exc:
            path = f"{self.path}/{child.spec.id}"
            self.tree.events.emit("start_failed", path, self.tree.correlation_id, exc)
            raise StartError(path, exc) from exc

    def _launch(self, child: _Child, actor: Actor) -> Cell:
        """Make the incarnation of ``actor`` and start its task (in this context)."""
        spec = child.spec
        path = f"{self.path}/{spec.id}"
        tree = self.tree
        child.incarnation += 1
        cell = Cell(tree, path, actor, spec.mailbox_size, child.incarnation,
                    self, name=spec.name)
        if spec.name is not None:
            try:
                tree.register(spec.name, cell)
            except AlreadyRegistered as exc:
                cell.abandon()
                tree.events.emit("start_failed", path, tree.correlation_id, exc)
                raise StartError(path, exc) from exc
        child.cell = cell
        child.state = "running"
        assert self._tg is not None
        cell.spawn(self._tg)
        return cell

    def _started(self, child: _Child, cell: Cell) -> ActorRef:
        tree = self.tree
        if cell.start_error is not None:
            child.cell = None
            child.state = "terminated"
            tree.events.emit("start_failed", cell.path, tree.correlation_id, cell.start_error)
            raise StartError(cell.path, cell.start_error) from cell.start_error
        tree.events.emit("started", cell.path, tree.correlation_id,
                         incarnation=child.incarnation)
        return cell.ref

    async def _terminate(self, child: _Child) -> None:
        await self._terminate_together([child])

    async def _terminate_together(self, children: list[_Child]) -> None:
        asked = []
        for child in children:
            cell, child.cell, child.state = child.cell, None, "terminated"
            if cell is not None:
                cell.ask_stop(child.spec.shutdown)
                asked.append((cell, child.spec.shutdown))
        now = anyio.current_time()
        # Waited for by deadline, so one slow child never delays the kill of another.
        for cell, shutdown in sorted(asked, key=_deadline):
            await cell.await_stop(shutdown, now)
            self.tree.events.emit("terminated", cell.path, self.tree.correlation_id,
                                  reason=describe_reason(cell.reason))

    def child_exited(self, cell: Cell, reason: Any, correlation_id: str) -> None:
        # Called from the child's own task as it ends; the decision is taken in order
        # with the supervisor's other messages.
        if cell.start_error is None and not self._stopping:
            self._cell.deliver(_Exit(cell, reason, correlation_id))

    # -- the restart decision ---------------------------------------------------------

    async def handle_info(self, msg: Any) -> None:
        if isinstance(msg, _Exit):
            await self._on_exit(msg)
        elif isinstance(msg, _TryRestart):
            await self._try_restart(msg)

    async def _on_exit(self, msg: _Exit) -> None:
        # The child id is the last part of the path: no scan over (maybe many) children.
        child = self._children.get(msg.cell.path.rpartition("/")[2])
        if child is None or child.cell is not msg.cell or self._stopping:
            return  # an incarnation we stopped ourselves, or we are going down anyway
        child.cell = None
        child.state = "terminated"
        tree = self.tree
        error = None if isinstance(msg.reason, str) else msg.reason
        tree.events.emit("exited" if error is None else "crashed", msg.cell.path,
                         msg.correlation_id, error, reason=describe_reason(msg.reason))
        if not should_restart(child.spec.restart, msg.reason):
            if child.spec.restart is Restart.TEMPORARY or child.dynamic:
                del self._children[child.spec.id]
            self._auto_shutdown(child)
            return
        now = tree.clock()
        self._check_intensity(now, msg.cell.path, msg.reason, msg.correlation_id)
        group = self._restart_group(child)
        for other in reversed(group):
            if other is not child:
                await self._terminate(other)
        group = [c for c in group if c is child or c.spec.restart is not Restart.TEMPORARY]
        for other in self._children.copy().values():
            if other.state == "terminated" and other.spec.restart is Restart.TEMPORARY:
                del self._children[other.spec.id]
        await self._restart_after_backoff(child, group, now, msg.correlation_id)

    def _check_intensity(self, now: float, path: str, reason: Any, cid: str) -> None:
        ok, self._history = add_restart(self._history, now, self.spec.intensity,
                                        self.spec.period)
        if not ok:
            error = IntensityExceeded(self.path, self.spec.intensity, self.spec.period,
                                      path, reason)
            self.tree.events.emit("intensity_exceeded", self.path, cid, error,
                                  child=path, reason=describe_reason(reason))
            raise error

    def _restart_group(self, child: _Child) -> list[_Child]:
        children = list(self._children.values())
        match self.spec.strategy:
            case Strategy.ONE_FOR_ONE:
                return [child]
            case Strategy.ONE_FOR_ALL:
                return children
            case Strategy.REST_FOR_ONE:
                return children[children.index(child):]
        raise AssertionError(self.spec.strategy)

    async def _restart_after_backoff(
        self, child: _Child, group: list[_Child], now: float, cid: str, inline: bool = True
    ) -> None:
        delay = 0.0
        backoff = child.spec.backoff
        if backoff is not None:
            quiet = backoff.reset_after
            if child.last_exit is not None and quiet is not None and now - child.last_exit > quiet:
                child.consecutive = 0
            delay = backoff.delay(child.consecutive, self._rng)
            child.consecutive += 1
        child.last_exit = now
        for c in group:
            c.state = "restarting"
        ids = tuple(c.spec.id for c in group)
        if delay > 0:
            self.tree.events.emit("backoff", f"{self.path}/{child.spec.id}", cid,
                                  delay=delay, attempt=child.consecutive)
            self.send_after(delay, _TryRestart(ids, cid))
        elif inline:
            await self._try_restart(_TryRestart(ids, cid))
        else:
            # A failed restart is tried again through the mailbox (OTP's try_again_restart),
            # so exits and stop requests that arrived meanwhile are handled first.
            self.notify(_TryRestart(ids, cid))

    async def _try_restart(self, msg: _TryRestart) -> None:
        for i, cid_ in enumerate(msg.ids):
            child = self._children.get(cid_)
            if child is None or child.state != "restarting":
                continue
            try:
                ref = await self._start(child)
            except StartError as exc:
                child.state = "restarting"
                path = f"{self.path}/{cid_}"
                self.tree.events.emit("restart_failed", path, msg.correlation_id, exc.cause)
                now = self.tree.clock()
                self._check_intensity(now, path, exc.cause, msg.correlation_id)
                for rest in msg.ids[i + 1:]:
                    if rest in self._children:
                        self._children[rest].state = "restarting"
                await self._restart_after_backoff(
                    child, [self._children[r] for r in msg.ids[i:] if r in self._children],
                    now, msg.correlation_id, inline=False)
                return
            child.restarts += 1
            self.tree.events.emit("restarted", ref.path, msg.correlation_id,
                                  incarnation=child.incarnation, restarts=child.restarts)

    def _auto_shutdown(self, child: _Child) -> None:
        if not child.spec.significant:
            return
        mode = self.spec.auto_shutdown
        still = any(c.spec.significant and c.state != "terminated"
                    for c in self._children.values())
        if mode is AutoShutdown.ANY_SIGNIFICANT or (
            mode is AutoShutdown.ALL_SIGNIFICANT and not still
        ):
            self.tree.events.emit("auto_shutdown", self.path, self.tree.correlation_id,
                                  child=child.spec.id)
            self.stop(SHUTDOWN)

    # -- dynamic children ---------------------------------------------------------------

    async def handle_call(self, msg: Any) -> Any:
        op = getattr(self, f"_op_{msg[0]}", None) if isinstance(msg, tuple) and msg else None
        if op is None:
            # A bad request is the caller's error: refuse it, never crash the subtree.
            return _Refused(ChildError(f"supervisor {self.path}: unknown call {msg!r}"))
        try:
            return await op(*msg[1:])
        except (ChildError, StartError) as exc:
            return _Refused(exc)

    async def _op_start_child(self, spec: AnySpec, actor: Actor | None = None) -> ActorRef:
        child = self._add_dynamic(spec)
        try:
            return await self._start(child, actor)
        except StartError:
            del self._children[spec.id]
            raise

    def start_now(self, spec: ChildSpec) -> ActorRef | Actor | None:
        """``start_child`` done at once in the caller's task, when that changes nothing.

        That is when this supervisor waits on an empty mailbox (so the request would be
        the next message it handles) and the child's actor class has no ``on_start``
        (so handling it would not wait for anything): the start then runs to its end
        without a pause, in the supervisor's context, as the supervisor would run it,
        and saves the two task switches of a call. Returns the new child's ref; None
        when the request must go through the mailbox; or the actor itself when it has
        an ``on_start`` of its own after all (set on the instance), so that the
        supervisor starts that actor rather than building another.
        """
        factory = spec.factory
        if not (isinstance(factory, type) and not needs_start(factory)
                and self._cell.idle and not self._stopping):
            return None
        return self._context.run(self._start_now, spec)

    def _start_now(self, spec: ChildSpec) -> ActorRef | Actor:
        child = self._add_dynamic(spec)
        try:
            actor = self._make(child)
            if needs_start(actor):
                del self._children[spec.id]
                return actor
            return self._started(child, self._launch(child, actor))
        except StartError:
            self._children.pop(spec.id, None)
            raise

    def _add_dynamic(self, spec: AnySpec) -> _Child:
        if spec.id in self._children:
            raise ChildError(f"supervisor {self.path} already has a child {spec.id!r}")
        limit = self.spec.max_children
        if limit is not None and len(self._children) >= limit:
            raise ChildError(f"supervisor {self.path} has reached max_children={limit}")
        child = _Child(spec, dynamic=True)
        self._children[spec.id] = child
        return child

    def _get(self, child_id: str) -> _Child:
        try:
            return self._children[child_id]
        except KeyError:
            raise ChildError(f"supervisor {self.path} has no child {child_id!r}") from None

    async def _op_terminate_child(self, child_id: str) -> None:
        child = self._get(child_id)
        await self._terminate(child)
        if child.dynamic or child.spec.restart is Restart.TEMPORARY:
            del self._children[child_id]

    async def _op_restart_child(self, child_id: str) -> ActorRef:
        child = self._get(child_id)
        if child.state != "terminated":
            raise ChildError(f"child {child_id!r} of {self.path} is {child.state}")
        return await self._start(child)

    async def _op_delete_child(self, child_id: str) -> None:
        child = self._get(child_id)
        if child.state != "terminated":
            raise ChildError(f"child {child_id!r} of {self.path} is {child.state}")
        del self._children[child_id]

    async def _op_which_children(self) -> list[ChildInfo]:
        return [
            ChildInfo(c.spec.id, c.cell.ref if c.cell else None, c.state,
                      isinstance(c.spec, SupervisorSpec), c.restarts)
            for c in self._children.values()
        ]

    async def _op_count_children(self) -> ChildCounts:
        running = [c for c in self._children.values() if c.cell is not None]
        sups = sum(isinstance(c.spec, SupervisorSpec) for c in running)
        return ChildCounts(len(self._children), len(running), sups, len(running) - sups)

    def child_ref(self, child_id: str) -> ActorRef | None:
        """The running incarnation of a child, if any (used by path lookups)."""
        child = self._children.get(child_id)
        return child.cell.ref if child is not None and child.cell is not None else None


class SupervisorRef(ActorRef):
    """A ref to a supervisor, with OTP's child-management calls.

    Each call raises :class:`ChildError` when refused (unknown or duplicate id,
    ``max_children`` reached, child in the wrong state) and :class:`StartError` when the
    child's start fails; the supervisor itself carries on.
    """

    __slots__ = ()

    async def _op(self, *msg: Any, timeout: float | None) -> Any:
        result = await self.call(msg, timeout=timeout)
        if isinstance(result, _Refused):
            raise result.error
        return result

    async def start_child(self, spec: AnySpec, timeout: float | None = 30.0) -> ActorRef:
        """Start a new child from ``spec``; returns its ref once ``on_start`` is done.

        A child whose class has no ``on_start`` is started without a round trip when
        the supervisor is idle (see :meth:`Supervisor.start_now`); like a cast, that
        path honours cancellation and yields to the scheduler at least every 64 starts.
        """
        sup = self._cell.actor
        built = None
        if isinstance(spec, ChildSpec) and isinstance(sup, Supervisor):
            await fast_path_checkpoint(self._cell.checkpoint_if_cancelled)
            built = sup.start_now(spec)
            if isinstance(built, ActorRef):
                return built
        return await self._op("start_child", spec, built, timeout=timeout)

    async def terminate_child(self, child_id: str, timeout: float | None = None) -> None:
        """Stop a child as at shutdown; a dynamic child is forgotten."""
        await self._op("terminate_child", child_id, timeout=timeout)

    async def restart_child(self, child_id: str, timeout: float | None = 30.0) -> ActorRef:
        """Start again a terminated static child."""
        return await self._op("restart_child", child_id, timeout=timeout)

    async def delete_child(self, child_id: str, timeout: float | None = 5.0) -> None:
        """Forget a terminated static child's spec."""
        await self._op("delete_child", child_id, timeout=timeout)

    async def which_children(self, timeout: float | None = 5.0) -> list[ChildInfo]:
        """Every child with its state, in start order."""
        return await self._op("which_children", timeout=timeout)

    async def count_children(self, timeout: float | None = 5.0) -> ChildCounts:
        """How many children there are, by kind."""
        return await self._op("count_children", timeout=timeout)


Supervisor._ref_class = SupervisorRef
