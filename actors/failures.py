"""The failures actor: every failure as a structured event, counted for the summary.

Each failed attempt arrives as a :class:`~actors.records.FailureEvent` (the seeds' entity,
with severity, category, recovery action and correlation id). A retried attempt is
logged at INFO, an item that failed for good at WARNING. The counts feed the job's
summary; the abort policy will read the same stream.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog

from supervisor import Actor

from .records import FailureEvent

__all__ = ["FailuresActor"]

_log = structlog.get_logger("actors.failures")


class FailuresActor(Actor):
    """Counts failures by category and reason; see the module docstring."""

    def __init__(self) -> None:
        self.attempt_failures = 0
        self.final_failures = 0
        self.by_category: Counter[str] = Counter()
        self.by_reason: Counter[str] = Counter()
        self.recent: list[FailureEvent] = []

    async def handle_cast(self, msg: Any) -> None:
        match msg:
            case ("failure", FailureEvent() as event):
                self._record(event)
            case _:
                raise ValueError(f"failures actor: unexpected message {msg!r}")

    def _record(self, event: FailureEvent) -> None:
        self.attempt_failures += 1
        final = bool(event.context.get("final"))
        self.by_category[event.category.value] += 1
        if final:
            self.final_failures += 1
            self.by_reason[str(event.context.get("reason") or event.message)[:120]] += 1
        self.recent = [*self.recent[-999:], event]
        log = _log.warning if final else _log.info
        log("item failed" if final else "attempt failed; retrying",
            key=event.context.get("key"), attempt=event.context.get("attempt"),
            category=event.category.value, severity=event.severity.value,
            action=event.recovery_action.value, reason=event.context.get("reason"),
            delay=event.context.get("delay"), error=event.message[:300],
            correlation_id=event.correlation_id)

    async def handle_call(self, msg: Any) -> Any:
        if msg == ("stats",):
            return {"attempt_failures": self.attempt_failures,
                    "final_failures": self.final_failures,
                    "by_category": dict(self.by_category), "by_reason": dict(self.by_reason)}
        raise ValueError(f"failures actor: unknown call {msg!r}")
