"""Lifecycle events: structured records, in-process subscribers, structlog output.

Every lifecycle step of every actor is an :class:`Event`. Events go first to the
tree's in-process subscribers (tests, the abort policy), then to structlog at DEBUG
(``intensity_exceeded`` and ``start_failed`` at ERROR): with the default INFO level the
DEBUG call is a no-op, so events cost little and a traceback is rendered only when a
sink accepts the event.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import structlog

__all__ = ["Event", "EventLog", "configure_logging", "new_correlation_id"]

_log = structlog.get_logger("supervisor")
_bound: tuple[Any, Any, Any, Any, Any] = (None, None, None, None, None)


def _logger() -> Any:
    """The events' logger, bound once per structlog configuration.

    Binding on every event (what a lazy proxy does when loggers are not cached) costs
    far more than a DEBUG call that the level filter turns into a no-op; comparing the
    configuration makes any ``structlog.configure`` call, ours or a user's, take effect
    at the next event.
    """
    global _bound
    cfg = structlog.get_config()
    processors, wrapper, factory, context, logger = _bound
    if (cfg["processors"] is not processors or cfg["wrapper_class"] is not wrapper
            or cfg["logger_factory"] is not factory or cfg["context_class"] is not context):
        logger = _log.bind()
        _bound = (cfg["processors"], cfg["wrapper_class"], cfg["logger_factory"],
                  cfg["context_class"], logger)
    return logger


#: Event kinds logged above DEBUG: a supervisor gave up, or a start failed.
_LOUD = {"intensity_exceeded": "error", "start_failed": "error"}


def new_correlation_id() -> str:
    """A short random id that ties related events together."""
    return uuid.uuid4().hex[:16]


def current_correlation_id() -> str | None:
    """The correlation id bound in this task's structlog context, if any."""
    return structlog.contextvars.get_contextvars().get("correlation_id")


@attrs.frozen
class Event:
    """One lifecycle step.

    ``kind`` is one of ``started``, ``start_failed``, ``crashed``, ``exited``,
    ``stopped``, ``killed``, ``restarted``, ``restart_failed``, ``backoff``,
    ``intensity_exceeded``, ``dropped``, ``stop_hook_failed``, ``terminated``,
    ``auto_shutdown``; ``path`` is the actor's path in its tree (``job/browser/tabs``);
    ``error`` the exception where there is one; ``data`` anything else (``delay`` of a
    backoff, ``count`` and ``messages`` of dropped casts, ``reason`` of an exit).
    """

    kind: str
    path: str
    correlation_id: str
    error: BaseException | None = None
    data: dict[str, Any] = attrs.field(factory=dict)
    time: float = attrs.field(factory=time.time)


Subscriber = Callable[[Event], None]


class EventBus:
    """Fans events out to subscribers and to structlog. One per tree."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(event)`` for every event; returns a function that unsubscribes."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def emit(
        self,
        kind: str,
        path: str,
        correlation_id: str,
        error: BaseException | None = None,
        **data: Any,
    ) -> None:
        if self._subscribers:
            event = Event(kind, path, correlation_id, error, data)
            for fn in tuple(self._subscribers):
                try:
                    fn(event)
                except Exception:  # a broken observer must not break the tree
                    _log.exception("event subscriber failed", subscriber=repr(fn))
        level = _LOUD.get(kind, "debug")
        fields = {k: v for k, v in data.items() if k != "messages"}
        if error is not None:
            fields["error"] = repr(error)
            if level != "debug":
                fields["exc_info"] = error
        getattr(_logger(), level)(kind, path=path, correlation_id=correlation_id, **fields)


class EventLog:
    """Records a tree's events in a list; handy in tests and tools.

    ``await log.wait_for(kind, path)`` waits (checkpointing) until such an event arrived
    and returns it; ``log.of(kind)`` lists events of a kind.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        # Wake every waiter of this generation; later waiters wait on the next one.
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def of(self, kind: str, path: str | None = None) -> list[Event]:
        """Events of ``kind`` (and ``path``, if given), oldest first."""
        return [e for e in self.events if e.kind == kind and (path is None or e.path == path)]

    def kinds(self, path: str | None = None) -> list[str]:
        """The kinds of the recorded events, oldest first."""
        return [e.kind for e in self.events if path is None or e.path == path]

    async def wait_for(self, kind: str, path: str | None = None, count: int = 1) -> Event:
        """Wait until ``count`` events of ``kind`` (at ``path``) were seen; the last one."""
        while True:
            found = self.of(kind, path)
            if len(found) >= count:
                return found[count - 1]
            await self._changed.wait()


def configure_logging(level: str | int = "INFO", *, json: bool = False, stream: Any = None) -> None:
    """Set up structlog for a program: level, console or JSON lines, on stderr.

    Context bound with ``structlog.contextvars`` (job id, actor path, correlation id)
    is merged into every line.
    """
    if isinstance(level, str):
        level = logging.getLevelNamesMapping()[level.upper()]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        # plain tracebacks: rich's renderer with locals costs seconds per crash report
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
