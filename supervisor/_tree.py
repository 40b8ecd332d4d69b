"""A running tree: its root supervisor, registry, events, timers and shutdown.

``async with start_tree(spec) as tree:`` starts the root supervisor (and with it every
child, in order) and stops it in reverse order when the block ends. If the root gives up
(its restart intensity was exceeded), the block is cancelled and the root's
:class:`IntensityExceeded` is raised from the ``async with`` -- one exception, never an
ExceptionGroup. The registry belongs to the tree: two trees never see each other's names.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from ._actor import SHUTDOWN, ActorRef, Cell, Timer, get_async_backend, is_normal
from ._errors import AlreadyRegistered, NoSuchActor
from ._events import EventBus, Subscriber, new_correlation_id
from ._spec import SupervisorSpec
from ._supervisor import Supervisor, SupervisorRef

__all__ = ["NamedRef", "Tree", "start_tree"]


class NamedRef:
    """A ref that looks its name up on every send, so it reaches the current incarnation."""

    __slots__ = ("_name", "_tree")

    def __init__(self, tree: Tree, name: str) -> None:
        self._tree = tree
        self._name = name

    def __repr__(self) -> str:
        return f"<NamedRef {self._name!r}>"

    async def cast(self, msg: Any) -> None:
        """Cast to the current incarnation (see :meth:`ActorRef.cast`)."""
        await self._tree.whereis(self._name).cast(msg)

    def cast_nowait(self, msg: Any) -> None:
        """Cast without waiting (see :meth:`ActorRef.cast_nowait`)."""
        self._tree.whereis(self._name).cast_nowait(msg)

    async def call(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """Call the current incarnation (see :meth:`ActorRef.call`)."""
        return await self._tree.whereis(self._name).call(msg, timeout=timeout)

    async def info(self, msg: Any) -> None:
        """Send to ``handle_info`` of the current incarnation."""
        await self._tree.whereis(self._name).info(msg)


class Tree:
    """A supervision tree that runs while its ``async with`` block runs.

    Build it with :func:`start_tree`. ``exit_code`` is what an application exits with:
    set by :meth:`shutdown`, else 0 after a normal end and 1 after a crash of the root.
    """

    def __init__(
        self,
        spec: SupervisorSpec,
        *,
        correlation_id: str | None = None,
        clock: Callable[[], float] | None = None,
        subscribe: Iterable[Subscriber] = (),
    ) -> None:
        if not isinstance(spec, SupervisorSpec):
            raise TypeError(f"the root of a tree must be a SupervisorSpec, got {spec!r}")
        self.spec = spec
        self.events = EventBus()
        for fn in subscribe:
            self.events.subscribe(fn)
        self.correlation_id = correlation_id or new_correlation_id()
        self.clock: Callable[[], float] = clock or anyio.current_time
        self.exit_code: int | None = None
        self.stop_reason: str | None = None
        self.crash: BaseException | None = None
        self._names: dict[str, Cell] = {}
        self._system: set[anyio.CancelScope] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._root: Cell | None = None
        #: anyio's checkpoint_if_cancelled; the backend's own once the tree runs.
        self.checkpoint_if_cancelled: Callable[[], Awaitable[None]] = (
            anyio.lowlevel.checkpoint_if_cancelled)

    # -- running -----------------------------------------------------------------------

    async def __aenter__(self) -> Tree:
        if get_async_backend is not None:
            self.checkpoint_if_cancelled = get_async_backend().checkpoint_if_cancelled
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        spec = self.spec
        root = Cell(self, spec.id, Supervisor(spec), math.inf, 1, self,
                    name=spec.name)
        self._root = root
        if spec.name is not None:
            self.register(spec.name, root)
        root.spawn(tg)
        await root.wait_started()
        if root.start_error is not None:
            self._cancel_system()
            await tg.__aexit__(None, None, None)
            self.events.emit("start_failed", spec.id, self.correlation_id, root.start_error)
            raise root.start_error
        self.events.emit("started", spec.id, self.correlation_id, incarnation=1)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._tg is not None and self._root is not None
        with anyio.CancelScope(shield=True):
            await self._root.stop(None)
        self._cancel_system()
        if self.crash is not None and isinstance(exc, anyio.get_cancelled_exc_class()):
            # We cancelled the block because the root crashed: report the crash instead.
            await self._tg.__aexit__(exc_type, exc, tb)
            raise self.crash
        await self._tg.__aexit__(None, None, None)
        if self.crash is not None and exc is None:
            raise self.crash
        return False

    def child_exited(self, cell: Cell, reason: Any, correlation_id: str) -> None:
        """The root supervisor ended: record the exit code, report a crash."""
        assert self._tg is not None
        if is_normal(reason):
            self.events.emit("stopped", cell.path, correlation_id, reason=reason)
            if self.exit_code is None:
                self.exit_code = 0
            return
        self.crash = reason if isinstance(reason, BaseException) else RuntimeError(reason)
        if self.exit_code is None:
            self.exit_code = 1
        self.events.emit("crashed", cell.path, correlation_id, self.crash)
        self._tg.cancel_scope.cancel()

    def shutdown(self, exit_code: int = 0, reason: str = "shutdown requested") -> None:
        """Ask for an orderly stop of the whole tree; the first exit code asked wins."""
        if self.exit_code is None:
            self.exit_code = exit_code
            self.stop_reason = reason
        if self._root is not None:
            self._root.request_stop(SHUTDOWN)

    async def wait(self) -> None:
        """Wait until the root supervisor has ended (by shutdown, auto-shutdown or crash)."""
        assert self._root is not None
        await self._root.wait_done()

    @property
    def running(self) -> bool:
        """True while the root supervisor lives."""
        return self._root is not None and self._root.reason is None

    # -- registry ----------------------------------------------------------------------

    def register(self, name: str, cell: Cell) -> None:
        """Give ``cell`` the name; a live holder of the same name refuses it."""
        holder = self._names.get(name)
        if holder is not None and holder is not cell and holder.reason is None:
            raise AlreadyRegistered(name, holder.path)
        self._names[name] = cell

    def whereis(self, name: str) -> ActorRef:
        """The live actor registered as ``name``, or at path ``name`` below the root.

        Paths are child ids joined by ``/`` (``browser/tabs``), relative to the root or
        starting with the root's id. Raises :class:`NoSuchActor` if nothing lives there
        now (for example while it is being restarted).
        """
        cell = self._names.get(name)
        if cell is not None:
            if cell.reason is None:
                return cell.ref
            # A registered name never falls back to a path that happens to be spelt the
            # same: between two incarnations the name is simply not available.
            raise NoSuchActor(name, f" now: {cell.path} is not running (restarting or"
                                    " stopped)")
        ref = self._resolve(name)
        if ref is None:
            raise NoSuchActor(name, " in this tree (not registered, no such path,"
                                    " or not running now)")
        return ref

    def _resolve(self, path: str) -> ActorRef | None:
        root = self._root
        if root is None or root.reason is not None:
            return None
        parts = path.split("/")
        if parts[0] == self.spec.id and len(parts) > 1:
            found = self._walk(root, parts[1:])
            if found is not None:
                return found
        return self._walk(root, parts) if path != self.spec.id else root.ref

    @staticmethod
    def _walk(cell: Cell, parts: list[str]) -> ActorRef | None:
        ref = cell.ref
        for part in parts:
            actor = ref._cell.actor
            if not isinstance(actor, Supervisor):
                return None
            child = actor.child_ref(part)
            if child is None:
                return None
            ref = child
        return ref

    def ref(self, name: str) -> NamedRef:
        """A ref that resolves ``name`` on every send."""
        return NamedRef(self, name)

    def supervisor(self, name: str) -> SupervisorRef:
        """Like :meth:`whereis` for a supervisor, typed for its child-management calls."""
        ref = self.whereis(name)
        if not isinstance(ref, SupervisorRef):
            raise TypeError(f"actor {ref.path} is not a supervisor")
        return ref

    @property
    def root(self) -> SupervisorRef:
        """The root supervisor."""
        assert self._root is not None
        ref = self._root.ref
        assert isinstance(ref, SupervisorRef)
        return ref

    # -- events and background work ----------------------------------------------------

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Receive every event of this tree; returns the unsubscribe function."""
        return self.events.subscribe(fn)

    def spawn_system(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> anyio.CancelScope:
        """Run a helper task that the tree cancels when it ends."""
        assert self._tg is not None
        scope = anyio.CancelScope()
        self._system.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await fn(*args)
            finally:
                self._system.discard(scope)

        self._tg.start_soon(run)
        return scope

    def _cancel_system(self) -> None:
        for scope in tuple(self._system):
            scope.cancel()

    def send_after(self, ref: ActorRef, delay: float, msg: Any) -> Timer:
        """Deliver ``msg`` to ``ref``'s ``handle_info`` after ``delay`` seconds."""
        timer = Timer()

        async def fire() -> None:
            with timer._scope:
                await anyio.sleep(delay)
                timer.fired = True
                ref._cell.deliver(msg)

        self.spawn_system(fire)
        return timer


def start_tree(
    spec: SupervisorSpec,
    *,
    correlation_id: str | None = None,
    clock: Callable[[], float] | None = None,
    subscribe: Iterable[Subscriber] = (),
) -> Tree:
    """A tree for ``spec``; use it as ``async with start_tree(spec) as tree``.

    ``subscribe`` receives events from the first start on; ``clock`` replaces
    ``anyio.current_time`` for restart-intensity windows (tests).
    """
    return Tree(spec, correlation_id=correlation_id, clock=clock, subscribe=subscribe)
