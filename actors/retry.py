"""Retry rules: how often and how long to wait before trying a failed item again.

Defaults (policy ``exponential_backoff``)
    One try, then up to ``max_attempts = 5`` retries, waiting 1, 2, 4, 8 and 16 seconds
    before them. ``max_attempts`` counts *retries after the first try*, so an item is
    tried at most ``max_attempts + 1`` times; ``0`` means "never retry".

Backoff
    The wait before retry ``n`` (1-based) is
    ``min(max_delay, base_delay * multiplier ** (n - 1))``. With jitter enabled the wait
    becomes ``d + d * uniform(-jitter_factor, +jitter_factor)`` (never negative), so
    workers that failed together do not all come back at the same instant.

What is retried
    Only failures classified as transient (``actors.classify``). Permanent failures
    (HTTP 404, an invalid URL, a bug in the scrape function) fail the item at once.
    A rate-limited response (HTTP 429, or 503 with Retry-After) counts as an attempt like
    any other failure.

Retry-After
    When the server sends Retry-After (delta-seconds or an HTTP-date), the wait is
    ``max(backoff, retry_after)``: never sooner than the server asked. If it asks for
    longer than ``max_retry_after`` (300 s by default), the item is not retried and
    fails as rate-limited -- holding a worker for hours helps nobody.

Limits checked when a policy is built (from code or from a config file)
    ``max_attempts`` 0..100, ``base_delay`` 0.1..60 s, ``multiplier`` 1..10,
    ``max_delay`` base_delay..3600 s, ``jitter_factor`` 0..1, ``max_retry_after``
    0..86400 s. Tests that need millisecond delays use ``RetryPolicy.for_testing``.

Built-in policies: ``exponential_backoff`` (the defaults), ``conservative`` (3 retries
from 2 s) and ``aggressive`` (10 retries from 0.5 s, multiplier 1.5, jitter 0.3).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any

import attrs

from actors.classify import Classification
from actors.serde import between

__all__ = [
    "POLICIES",
    "RetryDecision",
    "RetryPolicy",
    "UnknownPolicyError",
    "decide",
    "parse_retry_after",
    "policy",
]

_rng = random.Random()

# Off only inside ``RetryPolicy.for_testing``; a ContextVar keeps concurrent construction
# elsewhere (other threads or tasks) fully checked.
_range_checks: ContextVar[bool] = ContextVar("retry_policy_range_checks", default=True)


@contextmanager
def _without_range_checks() -> Iterator[None]:
    token = _range_checks.set(False)
    try:
        yield
    finally:
        _range_checks.reset(token)


def _user_range(lo: float, hi: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    check = between(lo, hi)

    def validate(inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if _range_checks.get():
            check(inst, attr, value)

    return validate


def _is_int(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    # bool is an int subclass, but ``max_attempts: true`` in a config is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{attr.name} must be an integer, got {value!r}")


def _is_number(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{attr.name} must be a number, got {value!r}")


def _not_negative(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
    # Holds even for test policies: a negative delay or count is never meaningful.
    if value < 0:
        raise ValueError(f"{attr.name} must not be negative, got {value!r}")


def _max_delay_check(inst: RetryPolicy, attr: attrs.Attribute[Any], value: float) -> None:
    if value < inst.base_delay:
        raise ValueError(
            f"{attr.name} must not be less than base_delay ({inst.base_delay:g}), got {value!r}"
        )


@attrs.frozen
class RetryPolicy:
    """How many retries a failed item gets and how long to wait before each.

    ``max_attempts`` is the number of retries after the first try (0 = never retry).
    Out-of-range values raise ``ValueError`` naming the field, e.g.
    ``base_delay must be between 0.1 and 60, got 0.01``.
    """

    name: str = attrs.field(default="exponential_backoff", validator=attrs.validators.min_len(1))
    max_attempts: int = attrs.field(
        default=5, validator=[_is_int, _not_negative, _user_range(0, 100)]
    )
    base_delay: float = attrs.field(
        default=1.0, validator=[_is_number, _not_negative, _user_range(0.1, 60)]
    )
    multiplier: float = attrs.field(
        default=2.0, validator=[_is_number, _not_negative, _user_range(1.0, 10.0)]
    )
    max_delay: float = attrs.field(
        default=60.0, validator=[_is_number, _max_delay_check, _user_range(0.1, 3600)]
    )
    jitter_factor: float = attrs.field(
        default=0.1, validator=[_is_number, _not_negative, _user_range(0.0, 1.0)]
    )
    jitter_enabled: bool = True
    max_retry_after: float = attrs.field(
        default=300.0, validator=[_is_number, _not_negative, _user_range(0, 86400)]
    )

    @classmethod
    def for_testing(cls, **fields: Any) -> RetryPolicy:
        """For tests only: build a policy skipping the user-facing range limits.

        Lets a test use e.g. ``base_delay=0.01``; type checks, non-negativity and
        ``max_delay >= base_delay`` still apply. Never use it for user configuration.
        """
        with _without_range_checks():
            return cls(**fields)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), jitter included."""
        if retry < 1:
            raise ValueError(f"retry must be 1 or more, got {retry!r}")
        try:
            raw = self.base_delay * self.multiplier ** (retry - 1)
        except OverflowError:
            raw = self.max_delay
        wait = min(self.max_delay, raw)
        if self.jitter_enabled and self.jitter_factor:
            f = self.jitter_factor
            # Same as d + d * u; this form keeps float rounding within d * (1 + f).
            wait *= 1 + (rng or _rng).uniform(-f, f)
        return max(0.0, wait)


class UnknownPolicyError(KeyError):
    """No built-in retry policy has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        # KeyError would otherwise print the repr of its argument, quotes and all.
        known = ", ".join(sorted(POLICIES))
        return f"unknown retry policy {self.name!r}; known policies: {known}"


POLICIES: Mapping[str, RetryPolicy] = MappingProxyType(
    {
        "exponential_backoff": RetryPolicy(),
        "conservative": RetryPolicy(
            name="conservative", max_attempts=3, base_delay=2.0, max_delay=60.0
        ),
        "aggressive": RetryPolicy(
            name="aggressive",
            max_attempts=10,
            base_delay=0.5,
            multiplier=1.5,
            max_delay=120.0,
            jitter_factor=0.3,
        ),
    }
)


def policy(name: str) -> RetryPolicy:
    """The built-in policy called ``name``; ``UnknownPolicyError`` if there is none."""
    try:
        return POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(name) from None


_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header value, or ``None`` if absent or unreadable.

    Accepts delta-seconds (``"120"``, also ``"1.5"``) or an HTTP-date, measured from
    ``now`` (default: the current UTC time); a date in the past gives ``0.0``.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # HTTP-dates are GMT by definition; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@attrs.frozen
class RetryDecision:
    """Whether to retry, after how many seconds, and why.

    ``reason`` is one of ``transient``, ``rate_limited``, ``permanent``,
    ``attempts_exhausted`` or ``retry_after_too_long``.
    """

    retry: bool
    delay: float
    reason: str


def decide(
    policy: RetryPolicy,
    attempt: int,
    classification: Classification,
    retry_after: float | None,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Decide what to do after try number ``attempt`` (1 after the first try) failed.

    ``retry_after`` is the server's Retry-After in seconds, if it sent one; it is
    honoured for any retryable failure, not only rate limiting.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt!r}")
    if not (classification.transient or classification.rate_limited):
        return RetryDecision(retry=False, delay=0.0, reason="permanent")
    if attempt > policy.max_attempts:
        return RetryDecision(retry=False, delay=0.0, reason="attempts_exhausted")
    if retry_after is not None and retry_after > policy.max_retry_after:
        return RetryDecision(retry=False, delay=0.0, reason="retry_after_too_long")
    wait = policy.delay(attempt, rng)
    if retry_after is not None:
        wait = max(wait, retry_after)
    reason = "rate_limited" if classification.rate_limited else "transient"
    return RetryDecision(retry=True, delay=wait, reason=reason)
