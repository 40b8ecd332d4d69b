"""OTP-style supervision trees on anyio, for asyncio and trio.

Actors with bounded mailboxes, supervisors with OTP's strategies, restart types and
intensity, dynamic children, a per-tree registry, monitors, structured lifecycle
events, and an application runner with documented exit statuses.

Importing the package configures structlog (INFO, stderr) unless the program already
configured it; call :func:`configure_logging` to choose otherwise.
"""

import structlog as _structlog

from ._actor import Actor, ActorRef, Down, MonitorRef, Timer
from ._app import ExitStatus, run_application, serve
from ._errors import (
    ActorExited,
    AlreadyRegistered,
    CallTimeout,
    ChildError,
    IntensityExceeded,
    MailboxFull,
    NoSuchActor,
    StartError,
    SupervisionError,
    WrongBackend,
)
from ._events import Event, EventLog, configure_logging, new_correlation_id
from ._spec import BRUTAL, AutoShutdown, Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
from ._supervisor import ChildCounts, ChildInfo, SupervisorRef, add_restart, should_restart
from ._tree import NamedRef, Tree, start_tree

__all__ = [
    "BRUTAL",
    "Actor",
    "ActorExited",
    "ActorRef",
    "AlreadyRegistered",
    "AutoShutdown",
    "Backoff",
    "CallTimeout",
    "ChildCounts",
    "ChildError",
    "ChildInfo",
    "ChildSpec",
    "Down",
    "Event",
    "EventLog",
    "ExitStatus",
    "IntensityExceeded",
    "MailboxFull",
    "MonitorRef",
    "NamedRef",
    "NoSuchActor",
    "Restart",
    "StartError",
    "Strategy",
    "SupervisionError",
    "SupervisorRef",
    "SupervisorSpec",
    "Timer",
    "Tree",
    "WrongBackend",
    "add_restart",
    "configure_logging",
    "new_correlation_id",
    "run_application",
    "serve",
    "should_restart",
    "start_tree",
]

if not _structlog.is_configured():
    configure_logging("INFO")
