"""Actors, their refs and the runtime of one incarnation.

An actor is a bounded mailbox (an anyio memory object stream) and a task that takes
messages off it one at a time. Three kinds of message reach the handlers:
``handle_cast`` (fire and forget), ``handle_call`` (request/reply) and ``handle_info``
(monitor ``Down`` notices, timers, anything the runtime or the actor sends itself).

Casting is fast: while the mailbox has room an item is put with ``send_nowait``, without
the scheduler round trip that ``await send`` always makes; cancellation is still honoured
at every cast, and the sender yields to the scheduler at least every 64 casts so a
producer flooding an actor never starves other tasks. When the mailbox is full the sender
waits (backpressure).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs
from anyio import BrokenResourceError, ClosedResourceError, WouldBlock
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

try:  # anyio's own backend lookup, done once per tree instead of on every cast
    from anyio._core._eventloop import get_async_backend
except ImportError:  # pragma: no cover - a later anyio moved it: use the public path
    get_async_backend = None

from ._errors import ActorExited, CallTimeout, MailboxFull
from ._events import current_correlation_id
from ._spec import BRUTAL

if TYPE_CHECKING:
    from anyio import TaskHandle
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._tree import Tree

__all__ = ["Actor", "ActorRef", "Down", "MonitorRef", "Timer"]

NORMAL = "normal"
SHUTDOWN = "shutdown"
KILLED = "killed"

_CAST, _CALL, _INFO, _WAKE = 0, 1, 2, 3
_WAKE_ITEM = (_WAKE, None, None)
_YIELD_EVERY = 64

# Counts casts that took the fast path since the last yield; one counter for the whole
# thread so that a producer casting to many actors still yields every 64 casts.
_fast_casts = 0


# Stateless, so one instance serves every actor that has no lifetime context.
_NO_LIFETIME: AbstractAsyncContextManager[Any] = contextlib.nullcontext()


class Parent(Protocol):
    """Who hears of an incarnation's end: its supervisor, or the tree for the root."""

    def child_exited(self, cell: Cell, reason: Any, correlation_id: str) -> None: ...


async def fast_path_checkpoint(
    if_cancelled: Callable[[], Awaitable[None]] = checkpoint_if_cancelled,
) -> None:
    """Honour cancellation; yield to the scheduler once every 64 calls.

    Operations that complete without waiting (a cast into a mailbox with room, a child
    started without a round trip) call this first, so a loop of them is still
    cancellable at every step and never starves the other tasks. ``if_cancelled`` is
    the tree's resolved ``checkpoint_if_cancelled`` where the caller has it.
    """
    global _fast_casts
    _fast_casts += 1
    if _fast_casts >= _YIELD_EVERY:
        _fast_casts = 0
        await checkpoint()
    else:
        await if_cancelled()


def needs_start(actor: Actor | type[Actor]) -> bool:
    """True if ``actor`` (an instance or a class) has an ``on_start`` to wait for."""
    if isinstance(actor, type):
        return actor.on_start is not Actor.on_start
    return type(actor).on_start is not Actor.on_start or "on_start" in getattr(
        actor, "__dict__", ())


def describe_reason(reason: Any) -> str:
    """``normal``/``shutdown``/``killed``, or ``crashed: ValueError('boom')``."""
    return reason if isinstance(reason, str) else f"crashed: {reason!r}"


def is_normal(reason: Any) -> bool:
    """True for the exits OTP calls normal: ``normal`` and ``shutdown``."""
    return reason in (NORMAL, SHUTDOWN)


@attrs.frozen
class Down:
    """Sent to a watcher's ``handle_info`` when a monitored incarnation ends."""

    ref: ActorRef
    reason: Any
    monitor: MonitorRef


@attrs.frozen(eq=False)
class MonitorRef:
    """Handle of one monitor; pass it to ``demonitor``."""

    target: ActorRef


class _Reply:
    """One-shot reply slot of a call."""

    __slots__ = ("abandoned", "done", "error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.done = False
        self.abandoned = False
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any) -> None:
        if not self.done:
            self.done = True
            self.value = value
            self.event.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self.event.set()


class Timer:
    """A pending ``send_after``; ``cancel()`` stops it if it has not fired yet."""

    def __init__(self) -> None:
        self._scope = anyio.CancelScope()
        self.fired = False

    def cancel(self) -> None:
        self._scope.cancel()


class Actor:
    """Base class of actors: override the hooks you need.

    ``on_start`` runs in the actor's own task before any message; if it raises, the
    start fails (and with it the supervisor's start, or ``start_child``). ``on_stop``
    runs after the last message with the exit reason, also after a crash; an exception
    in it is logged and does not block shutdown. A handler exception crashes the
    actor; its supervisor decides about a restart.
    """

    _cell: Cell
    _ref_class: type[ActorRef]

    async def on_start(self) -> None:
        """Prepare state before the first message."""

    async def handle_cast(self, msg: Any) -> None:
        """Handle a fire-and-forget message."""
        raise NotImplementedError(f"{type(self).__name__} does not handle casts: {msg!r}")

    async def handle_call(self, msg: Any) -> Any:
        """Handle a request and return the reply."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls: {msg!r}")

    async def handle_info(self, msg: Any) -> None:
        """Handle ``Down`` notices, timer messages and other runtime messages."""

    async def on_stop(self, reason: Any) -> None:
        """Release what ``on_start`` took; ``reason`` says why the actor ends."""

    def _lifetime(self) -> AbstractAsyncContextManager[Any]:
        # A supervisor replaces this with the task group its children live in.
        return _NO_LIFETIME

    # -- helpers for the actor's own code -------------------------------------------

    @property
    def ref(self) -> ActorRef:
        """This incarnation's ref."""
        return self._cell.ref

    @property
    def path(self) -> str:
        """This actor's path in its tree, e.g. ``job/browser/tabs/tab-1``."""
        return self._cell.path

    @property
    def tree(self) -> Tree:
        """The tree this actor runs in (registry, events, shutdown requests)."""
        return self._cell.tree

    def stop(self, reason: Any = NORMAL) -> None:
        """End this actor after the current message, with ``reason`` (default normal)."""
        self._cell.request_stop(reason)

    def monitor(self, ref: ActorRef) -> MonitorRef:
        """Get one ``Down`` in ``handle_info`` when ``ref``'s incarnation ends."""
        return ref._cell.add_monitor(self._cell)

    def demonitor(self, mref: MonitorRef) -> None:
        """Cancel a monitor; no ``Down`` for it arrives after this returns."""
        mref.target._cell.remove_monitor(mref)
        cell = self._cell
        if cell.cancelled_monitors is None:
            cell.cancelled_monitors = set()
        cell.cancelled_monitors.add(id(mref))

    def notify(self, msg: Any) -> None:
        """Deliver ``msg`` to this actor's own ``handle_info`` without waiting.

        Safe from synchronous callbacks of other libraries (a browser's "disconnected"
        event, say): it never blocks, and a full mailbox delays but never loses it.
        """
        self._cell.deliver(msg)

    def send_after(self, delay: float, msg: Any) -> Timer:
        """Deliver ``msg`` to this actor's ``handle_info`` after ``delay`` seconds."""
        return self._cell.tree.send_after(self._cell.ref, delay, msg)


class ActorRef:
    """A handle to one incarnation of an actor.

    After that incarnation ends every send raises :class:`ActorExited`; use a name
    (``tree.whereis`` or ``tree.ref(name)``) to reach whichever incarnation is current.
    Like Erlang pids, refs are values: two refs to the same incarnation compare equal
    and hash alike (use ``==``, not ``is``).
    """

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActorRef):
            return NotImplemented
        return other._cell is self._cell

    def __hash__(self) -> int:
        return object.__hash__(self._cell)

    def __repr__(self) -> str:
        state = "alive" if self.alive else "exited"
        return f"<ActorRef {self._cell.path} #{self._cell.incarnation} {state}>"

    @property
    def path(self) -> str:
        """The actor's path in its tree."""
        return self._cell.path

    @property
    def alive(self) -> bool:
        """True until this incarnation has ended."""
        return self._cell.reason is None

    @property
    def exit_reason(self) -> Any:
        """The exit reason once ended, else None."""
        return self._cell.reason

    def kill(self) -> None:
        """End this incarnation at once (OTP's ``exit(Pid, kill)``): its task is cancelled.

        Its supervisor sees the exit reason ``killed`` and restarts it as its spec says.
        For stuck actors only; ordinary code stops actors through their supervisor.
        """
        self._cell.kill()

    async def cast(self, msg: Any) -> None:
        """Send ``msg`` to ``handle_cast``; waits while the mailbox is full.

        Raises :class:`ActorExited` if the actor has ended.
        """
        global _fast_casts
        cell = self._cell
        # The cancellation point comes before the send: a cast that raised Cancelled
        # was never delivered. (fast_path_checkpoint, inlined: the hottest path.)
        _fast_casts += 1
        if _fast_casts >= _YIELD_EVERY:
            _fast_casts = 0
            await checkpoint()
        else:
            await cell.checkpoint_if_cancelled()
        try:
            cell._send.send_nowait((_CAST, msg, None))
        except WouldBlock:
            _fast_casts = 0
            await cell.send_waiting((_CAST, msg, None))
        except (BrokenResourceError, ClosedResourceError):
            raise cell.exited_error() from None

    def cast_nowait(self, msg: Any) -> None:
        """Like :meth:`cast` but never waits: raises :class:`MailboxFull` instead."""
        cell = self._cell
        try:
            cell._send.send_nowait((_CAST, msg, None))
        except WouldBlock:
            raise MailboxFull(cell.path, cell.mailbox_size) from None
        except (BrokenResourceError, ClosedResourceError):
            raise cell.exited_error() from None

    async def call(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """Send ``msg`` to ``handle_call`` and return its reply.

        Raises the handler's own exception if it failed (the actor crashes too),
        :class:`ActorExited` if the actor has ended or ends before replying, and
        :class:`CallTimeout` if no reply came within ``timeout`` seconds (None: no limit).
        """
        cell = self._cell
        reply = _Reply()
        item = (_CALL, msg, reply)
        try:
            cell._send.send_nowait(item)
        except WouldBlock:
            await cell.send_waiting(item)
        except (BrokenResourceError, ClosedResourceError):
            raise cell.exited_error() from None
        if timeout is None:
            await reply.event.wait()
        else:
            with anyio.move_on_after(timeout):
                await reply.event.wait()
            if not reply.done:
                reply.abandoned = True
                raise CallTimeout(cell.path, timeout, msg)
        if reply.error is not None:
            raise reply.error
        return reply.value

    async def info(self, msg: Any) -> None:
        """Send ``msg`` to ``handle_info`` (waits while the mailbox is full)."""
        cell = self._cell
        try:
            cell._send.send_nowait((_INFO, msg, None))
        except WouldBlock:
            await cell.send_waiting((_INFO, msg, None))
        except (BrokenResourceError, ClosedResourceError):
            raise cell.exited_error() from None
        await checkpoint_if_cancelled()


class Cell:
    """The runtime of one incarnation: mailbox, task, stop protocol and exit.

    Kept small because a tree may hold many thousands of idle actors: the events that
    ``started``/``done`` waiters use, and the monitor tables, exist only once somebody
    needs them; the task is killed through its anyio task handle's own cancel scope.
    Nothing points back at the cell once it has ended (refs are made on demand, the
    actor and task handle are let go), so a finished incarnation is freed by reference
    counting alone, without waiting for the cyclic garbage collector.
    """

    __slots__ = (
        "_done", "_parent", "_recv", "_ref_class", "_send", "_started", "actor",
        "cancelled_monitors", "checkpoint_if_cancelled", "current_reply", "handle",
        "incarnation", "kill_requested", "mailbox_size", "monitors", "name", "path",
        "reason", "start_error", "started", "stop_reason", "stopping", "tree",
    )

    def __init__(
        self,
        tree: Tree,
        path: str,
        actor: Actor,
        mailbox_size: float,
        incarnation: int,
        parent: Parent,
        name: str | None = None,
    ) -> None:
        self.tree = tree
        self.path = path
        #: The actor object while the incarnation lives; let go when it ends.
        self.actor: Actor | None = actor
        self.mailbox_size = mailbox_size
        self.incarnation = incarnation
        self.name = name
        self._parent = parent
        #: The backend's checkpoint_if_cancelled, resolved once (the tree's, shared).
        self.checkpoint_if_cancelled: Callable[[], Awaitable[None]] = (
            tree.checkpoint_if_cancelled)
        # Unsubscripted: calling a subscripted generic goes through typing's machinery.
        self._send: MemoryObjectSendStream[tuple[int, Any, Any]]
        self._recv: MemoryObjectReceiveStream[tuple[int, Any, Any]]
        self._send, self._recv = anyio.create_memory_object_stream(mailbox_size)
        self._ref_class: type[ActorRef] = getattr(actor, "_ref_class", ActorRef)
        self.reason: Any = None
        #: True once ``on_start`` has returned (or the incarnation ended without it).
        self.started = False
        self._started: anyio.Event | None = None
        self.start_error: BaseException | None = None
        self._done: anyio.Event | None = None
        self.stopping = False
        self.stop_reason: Any = NORMAL
        self.handle: TaskHandle[None] | None = None
        self.kill_requested = False
        self.monitors: dict[int, tuple[MonitorRef, Cell]] | None = None
        self.cancelled_monitors: set[int] | None = None
        self.current_reply: _Reply | None = None
        actor._cell = self

    @property
    def ref(self) -> ActorRef:
        """A ref to this incarnation (a new object each time; refs compare by cell)."""
        return self._ref_class(self)

    def spawn(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the incarnation's task in ``tg``, in a copy of the current context."""
        self.handle = tg.create_task(self.run(), name=self.path)
        if self.kill_requested:
            self.handle.cancel()

    @property
    def idle(self) -> bool:
        """True while the task waits on an empty mailbox and nothing was handed to it.

        A task that was asked to stop or was killed may still be listed as waiting until
        it runs again: it is not idle.
        """
        stats = self._recv.statistics()
        return (stats.tasks_waiting_receive > 0 and not stats.current_buffer_used
                and not self.stopping and not self.kill_requested and self.reason is None)

    async def wait_started(self) -> None:
        """Wait until ``on_start`` has returned or failed (or the incarnation ended)."""
        if not self.started:
            if self._started is None:
                self._started = anyio.Event()
            await self._started.wait()

    async def wait_done(self) -> None:
        """Wait until the incarnation has ended."""
        if self.reason is None:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    def _set_started(self) -> None:
        self.started = True
        if self._started is not None:
            self._started.set()

    # -- sending -----------------------------------------------------------------------

    async def send_waiting(self, item: tuple[int, Any, Any]) -> None:
        try:
            await self._send.send(item)
        except (BrokenResourceError, ClosedResourceError):
            raise self.exited_error() from None

    def exited_error(self) -> ActorExited:
        return ActorExited(self.path, self.reason if self.reason is not None else SHUTDOWN)

    def deliver(self, msg: Any) -> None:
        """Put a runtime message (Down, timer, exit notice) in the mailbox without waiting.

        When the mailbox is full a helper task of the tree delivers it later, so the
        message is never lost while the actor lives.
        """
        item = (_INFO, msg, None)
        try:
            self._send.send_nowait(item)
        except WouldBlock:
            self.tree.spawn_system(self._deliver_later, item)
        except (BrokenResourceError, ClosedResourceError):
            pass  # the watcher is gone: nobody to tell

    async def _deliver_later(self, item: tuple[int, Any, Any]) -> None:
        try:
            await self._send.send(item)
        except (BrokenResourceError, ClosedResourceError):
            pass

    # -- monitors ----------------------------------------------------------------------

    def add_monitor(self, watcher: Cell) -> MonitorRef:
        mref = MonitorRef(self.ref)
        if self.reason is not None:
            watcher.deliver(Down(self.ref, self.reason, mref))
        else:
            if self.monitors is None:
                self.monitors = {}
            self.monitors[id(mref)] = (mref, watcher)
        return mref

    def remove_monitor(self, mref: MonitorRef) -> None:
        if self.monitors is not None:
            self.monitors.pop(id(mref), None)

    # -- life --------------------------------------------------------------------------

    def request_stop(self, reason: Any = SHUTDOWN) -> None:
        """Ask the actor to end after its current message."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_reason = reason
        try:
            self._send.send_nowait(_WAKE_ITEM)
        except (WouldBlock, BrokenResourceError, ClosedResourceError):
            pass  # not idle (it sees the flag after this message) or already gone

    def kill(self) -> None:
        """Cancel the actor's task at once."""
        self.kill_requested = True
        if self.handle is not None:
            self.handle.cancel()

    async def stop(self, shutdown: float | str | None) -> None:
        """Stop as a supervisor does: ask, wait up to ``shutdown`` s, then cancel."""
        self.ask_stop(shutdown)
        await self.await_stop(shutdown, anyio.current_time())

    def ask_stop(self, shutdown: float | str | None) -> None:
        """First half of :meth:`stop`: ask the actor to end (``brutal``: kill it)."""
        if self.reason is None:
            if shutdown == BRUTAL:
                self.kill()
            else:
                self.request_stop(SHUTDOWN)

    async def await_stop(self, shutdown: float | str | None, asked_at: float) -> None:
        """Second half of :meth:`stop`: wait until ``asked_at + shutdown``, then kill."""
        if self.reason is None and shutdown is not None and shutdown != BRUTAL:
            with anyio.CancelScope(deadline=asked_at + float(shutdown)):  # type: ignore[arg-type]
                await self.wait_done()
            if self.reason is None:
                self.kill()
        await self.wait_done()

    async def run(self) -> None:
        """The incarnation's task: start, serve the mailbox, stop, report the exit.

        A kill cancels the task handle's scope, which encloses this coroutine.
        """
        reason: Any = None
        cid = ""
        actor = self.actor
        assert actor is not None
        try:
            async with actor._lifetime():
                try:
                    await actor.on_start()
                except Exception as exc:
                    self.start_error = exc
                    reason = exc
                    cid = current_correlation_id() or self.tree.correlation_id
                else:
                    self._set_started()
                    try:
                        await self._serve(actor)
                        reason = self.stop_reason
                    except Exception as exc:
                        reason = exc
                        cid = current_correlation_id() or self.tree.correlation_id
                        if self.current_reply is not None:
                            exc.add_note(f"raised by actor {self.path} while handling a call")
                            self.current_reply.fail(exc)
                    await self._stop_hook(actor, reason)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                if reason is None:
                    reason = KILLED
                raise
            if reason is None:
                reason = exc
            raise
        finally:
            self._finish(reason if reason is not None else KILLED, cid)

    async def _serve(self, actor: Actor) -> None:
        recv = self._recv
        receive_nowait: Any = recv.receive_nowait
        handle_cast: Any = actor.handle_cast
        handled = 0
        while not self.stopping:
            try:
                kind, msg, reply = receive_nowait()
                empty = False
            except WouldBlock:
                empty = True
            if empty:
                # Waiting outside the except clause: an idle actor must not keep the
                # WouldBlock, its traceback and frames alive (about 450 bytes each);
                # nor its last message, which may hold an ended incarnation, nor bound
                # methods (kept between messages only for speed).
                msg = reply = receive_nowait = handle_cast = None
                kind, msg, reply = await recv.receive()
                receive_nowait = recv.receive_nowait
                handle_cast = actor.handle_cast
                handled = 0
            else:
                handled += 1
                if handled >= _YIELD_EVERY:
                    handled = 0
                    await checkpoint()
            if kind == _CAST:
                await handle_cast(msg)
            elif kind == _CALL:
                if reply.abandoned:
                    continue
                self.current_reply = reply
                result = await actor.handle_call(msg)
                self.current_reply = None
                reply.set(result)
            elif kind == _INFO:
                cancelled = self.cancelled_monitors
                if cancelled and isinstance(msg, Down) and id(msg.monitor) in cancelled:
                    cancelled.discard(id(msg.monitor))
                    continue
                await actor.handle_info(msg)

    async def _stop_hook(self, actor: Actor, reason: Any) -> None:
        try:
            await actor.on_stop(reason)
        except Exception as exc:
            self.tree.events.emit(
                "stop_hook_failed", self.path, self.tree.correlation_id, exc
            )

    def abandon(self) -> None:
        """Finish an incarnation whose task never ran (or was cancelled before it began)."""
        self.start_error = self.start_error or RuntimeError(f"{self.path} never ran")
        self._finish(KILLED, self.tree.correlation_id)

    def _finish(self, reason: Any, cid: str) -> None:
        """Close the mailbox, fail what waits on it, tell monitors and the parent."""
        if self.reason is not None:
            return
        self.reason = reason
        dropped: list[Any] = []
        exited = ActorExited(self.path, reason, " before replying")
        if self.current_reply is not None:
            self.current_reply.fail(exited)
        # Drain without awaiting so no sender slips in between the drain and the close.
        while True:
            try:
                kind, msg, reply = self._recv.receive_nowait()
            except (WouldBlock, anyio.EndOfStream, ClosedResourceError):
                break
            if kind == _CALL:
                reply.fail(exited)
            elif kind == _CAST:
                dropped.append(msg)
        self._recv.close()
        self._send.close()
        self._set_started()
        if self._done is not None:
            self._done.set()
        if dropped:
            self.tree.events.emit(
                "dropped", self.path, cid or self.tree.correlation_id,
                count=len(dropped), messages=dropped,
            )
        if self.monitors:
            ref = self.ref
            for mref, watcher in self.monitors.values():
                watcher.deliver(Down(ref, reason, mref))
            self.monitors = None
        self.handle = None
        self.actor = None
        self._parent.child_exited(self, reason, cid or self.tree.correlation_id)
