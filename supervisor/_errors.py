"""Exceptions of the supervision core; each message names the actor it is about."""

from __future__ import annotations

from typing import Any


class SupervisionError(Exception):
    """Base class of every error raised by the supervision core."""


class ActorExited(SupervisionError):
    """The actor a message was meant for has ended (or ended before it replied).

    ``reason`` is the exit reason: ``"normal"``, ``"shutdown"``, ``"killed"`` or the
    exception that crashed it.
    """

    def __init__(self, path: str, reason: Any, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        why = reason if isinstance(reason, str) else f"crashed with {reason!r}"
        super().__init__(f"actor {path} has exited ({why}){detail}")


class MailboxFull(SupervisionError):
    """``cast_nowait`` found the actor's mailbox full."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        super().__init__(f"mailbox of actor {path} is full ({size} messages)")


class CallTimeout(SupervisionError, TimeoutError):
    """``call`` got no reply within its timeout; the actor may still be busy."""

    def __init__(self, path: str, timeout: float, msg: Any) -> None:
        self.path = path
        self.timeout = timeout
        super().__init__(f"call to actor {path} timed out after {timeout:g} s (message {msg!r})")


class StartError(SupervisionError):
    """A child failed to start; ``child`` is its path, ``__cause__`` the original error."""

    def __init__(self, child: str, cause: BaseException) -> None:
        self.child = child
        self.cause = cause
        super().__init__(f"child {child} failed to start: {cause!r}")


class IntensityExceeded(SupervisionError):
    """A supervisor saw more restarts than its intensity allows and gave up.

    ``last_child`` and ``last_reason`` name the exit that tipped it over.
    """

    def __init__(
        self, supervisor: str, intensity: int, period: float, last_child: str, last_reason: Any
    ) -> None:
        self.supervisor = supervisor
        self.intensity = intensity
        self.period = period
        self.last_child = last_child
        self.last_reason = last_reason
        super().__init__(
            f"supervisor {supervisor} reached its restart intensity"
            f" ({intensity} restarts in {period:g} s); last exit: {last_child} {last_reason!r}"
        )


class NoSuchActor(SupervisionError, LookupError):
    """No live actor answers to that name or path."""

    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        super().__init__(f"no actor named {name!r}{detail}")


class AlreadyRegistered(SupervisionError):
    """A name is already held by a live actor of the same tree."""

    def __init__(self, name: str, holder: str) -> None:
        self.name = name
        self.holder = holder
        super().__init__(f"name {name!r} is already registered by {holder}")


class ChildError(SupervisionError):
    """A dynamic-children operation was refused (unknown id, duplicate id, limit...)."""


class WrongBackend(SupervisionError):
    """An actor needs an async backend other than the one running."""
