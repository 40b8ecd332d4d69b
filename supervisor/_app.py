"""Run a tree as a program: signals, orderly shutdown and exit statuses.

Exit statuses (:class:`ExitStatus`), the same for every command of the project:

====  =====================================================================
0     success: the tree ended normally
1     crash: a supervisor gave up (restart intensity exceeded) or a start failed
2     bad usage or configuration
3     aborted by policy
4     finished, but some items failed
130   stopped by SIGINT after an orderly shutdown
143   stopped by SIGTERM after an orderly shutdown
====  =====================================================================

The first SIGINT/SIGTERM asks for an orderly shutdown (children stop in reverse start
order within their shutdown timeouts); a second one cancels everything at once.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import structlog

from ._errors import SupervisionError
from ._events import Subscriber
from ._spec import SupervisorSpec
from ._tree import Tree, start_tree

__all__ = ["ExitStatus", "run_application", "serve"]

_log = structlog.get_logger("supervisor")


class ExitStatus(enum.IntEnum):
    """Process exit statuses of an application."""

    OK = 0
    CRASH = 1
    USAGE = 2
    ABORTED = 3
    FAILED_ITEMS = 4
    SIGINT = 130
    SIGTERM = 143


_SIGNAL_STATUS = {signal.SIGINT: ExitStatus.SIGINT, signal.SIGTERM: ExitStatus.SIGTERM}


async def serve(
    spec: SupervisorSpec,
    *,
    subscribe: Iterable[Subscriber] = (),
    on_started: Callable[[Tree], Awaitable[Any]] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run ``spec`` until it ends or a signal stops it; return the exit status.

    ``on_started(tree)`` runs once every child has started (for example to feed work).
    """
    try:
        async with start_tree(spec, subscribe=subscribe) as tree, anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_watch_signals, tree, tg.cancel_scope)
            if on_started is not None:
                await on_started(tree)
            await tree.wait()
            tg.cancel_scope.cancel()
    except SupervisionError as exc:
        _log.critical("application crashed", error=str(exc), exc_info=exc)
        return int(ExitStatus.CRASH)
    return int(tree.exit_code or 0)


async def _watch_signals(tree: Tree, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if tree.stop_reason is not None and tree.exit_code in _SIGNAL_STATUS.values():
                _log.warning("second signal: cancelling at once", signal=signum.name)
                scope.cancel()
                tree._root.kill() if tree._root is not None else None
                return
            _log.warning("signal received: shutting down", signal=signum.name)
            tree.shutdown(int(_SIGNAL_STATUS[signum]), f"signal {signum.name}")


def run_application(spec: SupervisorSpec, *, backend: str = "asyncio", **kwargs: Any) -> int:
    """Run ``spec`` as a program on ``backend`` and return its exit status."""
    return anyio.run(lambda: serve(spec, **kwargs), backend=backend)
