"""The records that travel between the scraping actors and end up on disk.

Words: an *item* is one page to scrape, with a stable ``key`` (``match-000123/statistics``);
an *attempt* is one try of an item by a tab; ``attempts`` in a record counts the tries, so
it is the seeds' ``retry_count`` + 1; ``key`` is their ``item_id``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from .classify import FailureCategory, FailureSeverity, RecoveryAction

__all__ = [
    "MAX_KEY_LENGTH",
    "Attempt",
    "FailureEvent",
    "FailureRecord",
    "Lease",
    "ResultRecord",
    "check_item",
]

MAX_KEY_LENGTH = 512


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def check_item(item: object) -> str:
    """The item's key; raises ValueError saying what is wrong with a bad item."""
    if not isinstance(item, Mapping):
        raise ValueError(f"an item must be a mapping with a 'key', got {type(item).__name__}")
    key = item.get("key")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"item has no 'key' (a non-empty string): {dict(item)!r:.200}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"item key is longer than {MAX_KEY_LENGTH} characters: {key[:80]!r}...")
    return key


@attrs.frozen
class Lease:
    """An item handed to a tab for one attempt, until ``deadline`` (monotonic seconds)."""

    id: int
    key: str
    item: Mapping[str, Any]
    attempt: int
    correlation_id: str
    deadline: float


@attrs.frozen
class Attempt:
    """What a tab reports about one attempt: ``data`` on success, else the failure."""

    lease_id: int
    key: str
    ok: bool
    data: dict[str, Any] | None = None
    error_type: str = ""
    message: str = ""
    stack: str = ""
    transient: bool = False
    category: FailureCategory = FailureCategory.APPLICATION
    rate_limited: bool = False
    status: int | None = None
    retry_after: float | None = None
    reason: str = ""
    restart_tab: bool = False
    elapsed: float = 0.0


@attrs.frozen
class ResultRecord:
    """One completed item in ``results.jsonl``."""

    key: str
    data: dict[str, Any]
    attempts: int
    correlation_id: str
    scraped_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class FailureRecord:
    """One item that failed for good, in ``failures.jsonl``."""

    key: str
    category: FailureCategory
    reason: str
    error_type: str
    message: str
    stack: str
    attempts: int
    correlation_id: str
    status: int | None = None
    failed_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class FailureEvent:
    """A failure as the seeds describe it: what, where, how bad, and what was done."""

    severity: FailureSeverity
    category: FailureCategory
    source: str
    message: str
    recovery_action: RecoveryAction
    correlation_id: str
    context: dict[str, Any] = attrs.field(factory=dict)
    stack_trace: str = ""
    resolution_time: float = 0.0
    id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    timestamp: datetime = attrs.field(factory=utcnow)
    monotonic: float = attrs.field(factory=time.monotonic)
