"""Failure classification: is a failed scrape worth retrying, and what kind of failure was it?

``FailureClassifier.classify`` looks at, in order:

1. the HTTP status (passed in, or a ``.status`` int on the exception): codes in
   ``rate_limit_status_codes`` mean rate limiting (a 5xx one only when the response
   carries Retry-After), then the retryable / non-retryable lists, then any other 5xx is
   transient and any other 4xx permanent;
2. the exception type: timeouts are transient network failures; Playwright errors are
   judged by their message (``net::ERR_*`` is a network failure, a closed or crashed
   page or browser a transient browser failure); connection errors are transient;
   ``MemoryError`` is a permanent system failure;
3. the message: permanent patterns win over block patterns (captcha, access denied ->
   rate limited), which win over transient patterns;
4. anything else is an application failure, permanent unless ``unknown_is_transient``
   (a bug in the scrape function is not retried blindly).

All patterns are case-insensitive regular expressions, searched anywhere in the message.
"""

from __future__ import annotations

import re
import socket
import ssl
from enum import StrEnum
from typing import Any

import attrs
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

__all__ = [
    "Classification",
    "FailureCategory",
    "FailureClassifier",
    "FailureSeverity",
    "RecoveryAction",
    "severity_for",
]


class FailureCategory(StrEnum):
    """What part of the system failed."""

    NETWORK = "network"
    BROWSER = "browser"
    SYSTEM = "system"
    APPLICATION = "application"
    EXTERNAL = "external"


class FailureSeverity(StrEnum):
    """How bad a failure event is."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class RecoveryAction(StrEnum):
    """What was done about a failure."""

    RETRY = "retry"
    RESTART = "restart"
    SKIP = "skip"
    ABORT = "abort"
    MANUAL = "manual"


@attrs.frozen(kw_only=True)
class Classification:
    """The verdict on one failure; ``reason`` is short text such as ``HTTP 503``."""

    transient: bool
    category: FailureCategory
    rate_limited: bool = False
    status: int | None = None
    reason: str


TRANSIENT_PATTERNS: tuple[str, ...] = (
    r"timeout|timed out",
    r"net::ERR_(CONNECTION_(RESET|REFUSED|CLOSED|ABORTED|TIMED_OUT)|EMPTY_RESPONSE"
    r"|NETWORK_CHANGED|INTERNET_DISCONNECTED|TIMED_OUT|NAME_NOT_RESOLVED|ADDRESS_UNREACHABLE)",
    r"Target page, context or browser has been closed|Target closed|Page crashed"
    r"|Browser has been closed|browser has disconnected",
    r"ECONNRESET|ECONNREFUSED|ETIMEDOUT|socket hang up",
    # A navigation cut short by another one (the page was still busy): try again.
    r"interrupted by another navigation|net::ERR_ABORTED",
    # Also a block pattern; kept here so emptying block_patterns still retries it.
    r"rate.?limit",
)
PERMANENT_PATTERNS: tuple[str, ...] = (
    r"net::ERR_(INVALID_URL|UNKNOWN_URL_SCHEME|BLOCKED_BY_CLIENT|CERT_\w+)",
    r"Cannot navigate to invalid URL",
    r"authentication failed",
)
BLOCK_PATTERNS: tuple[str, ...] = (
    r"captcha",
    r"access denied",
    r"too many requests",
    r"rate.?limit",
)
RETRYABLE_STATUS_CODES: tuple[int, ...] = (408, 425, 429, 500, 502, 503, 504)
NON_RETRYABLE_STATUS_CODES: tuple[int, ...] = (400, 401, 403, 404, 405, 410, 451)
RATE_LIMIT_STATUS_CODES: tuple[int, ...] = (429, 503)

_NETWORK_HINT = re.compile(r"timeout|timed out|ECONN|ETIMEDOUT|socket", re.I)
_BROWSER_HINT = re.compile(
    r"\b(target|page|context|browser)\b.*\b(closed|crashed|disconnected)\b", re.I
)
# Failures of the local environment that retrying will not fix.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _status_codes(_inst: Any, attr: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
    for code in value:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"{attr.name} must hold HTTP status codes (100-599), got {code!r}")


def _compile(field: str, patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except (re.error, TypeError) as exc:
            raise ValueError(
                f"{field} has an invalid regular expression {pattern!r}: {exc}"
            ) from None
    return tuple(compiled)


def _first_match(patterns: tuple[re.Pattern[str], ...], text: str) -> str | None:
    for pattern in patterns:
        if m := pattern.search(text):
            return m.group(0)
    return None


def _category_from(message: str, default: FailureCategory) -> FailureCategory:
    # Chromium's net::ERR_ codes first: "page.goto: net::ERR_CONNECTION_CLOSED" is not
    # a closed page.
    if "net::ERR_" in message:
        return FailureCategory.NETWORK
    if _BROWSER_HINT.search(message):
        return FailureCategory.BROWSER
    if _NETWORK_HINT.search(message):
        return FailureCategory.NETWORK
    return default


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


def _patterns_field(default: tuple[str, ...]) -> Any:
    return attrs.field(default=default, converter=_tuple)


@attrs.frozen
class FailureClassifier:
    """Rules deciding whether a failure is transient, rate limiting or permanent.

    Every list is configurable; regexes are compiled once, at construction, and a bad
    one raises ``ValueError`` naming the field and the pattern.
    """

    transient_patterns: tuple[str, ...] = _patterns_field(TRANSIENT_PATTERNS)
    permanent_patterns: tuple[str, ...] = _patterns_field(PERMANENT_PATTERNS)
    retryable_status_codes: tuple[int, ...] = attrs.field(
        default=RETRYABLE_STATUS_CODES, converter=_tuple, validator=_status_codes
    )
    non_retryable_status_codes: tuple[int, ...] = attrs.field(
        default=NON_RETRYABLE_STATUS_CODES, converter=_tuple, validator=_status_codes
    )
    rate_limit_status_codes: tuple[int, ...] = attrs.field(
        default=RATE_LIMIT_STATUS_CODES, converter=_tuple, validator=_status_codes
    )
    block_patterns: tuple[str, ...] = _patterns_field(BLOCK_PATTERNS)
    unknown_is_transient: bool = False

    _transient: tuple[re.Pattern[str], ...] = attrs.field(init=False, repr=False, eq=False)
    _permanent: tuple[re.Pattern[str], ...] = attrs.field(init=False, repr=False, eq=False)
    _block: tuple[re.Pattern[str], ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        both = sorted(set(self.retryable_status_codes) & set(self.non_retryable_status_codes))
        if both:
            codes = ", ".join(map(str, both))
            raise ValueError(
                f"status code(s) {codes} in both retryable_status_codes"
                " and non_retryable_status_codes"
            )
        # Frozen class: attrs' own __init__ uses the same bypass.
        set_ = object.__setattr__
        set_(self, "_transient", _compile("transient_patterns", self.transient_patterns))
        set_(self, "_permanent", _compile("permanent_patterns", self.permanent_patterns))
        set_(self, "_block", _compile("block_patterns", self.block_patterns))

    def classify(
        self, exc: BaseException, *, status: int | None = None, has_retry_after: bool = False
    ) -> Classification:
        """Classify ``exc``; ``status`` and ``has_retry_after`` describe the HTTP response.

        An exception's own ``.status`` (int) and ``.retry_after`` (not None) count too.
        """
        if isinstance(exc, BaseExceptionGroup):
            # Retry a group only if every part is worth retrying.
            parts = [
                self.classify(e, status=status, has_retry_after=has_retry_after)
                for e in exc.exceptions
            ]
            return next((c for c in parts if not c.transient), parts[0])
        if not isinstance(exc, Exception):
            # Cancellation, KeyboardInterrupt, SystemExit: stopping, never retried.
            return Classification(
                transient=False, category=FailureCategory.SYSTEM, reason=type(exc).__name__
            )
        if status is None:
            own = getattr(exc, "status", None)
            if isinstance(own, int) and not isinstance(own, bool):
                status = own
        if getattr(exc, "retry_after", None) is not None:
            has_retry_after = True
        if status is not None and (by_status := self._by_status(status, has_retry_after)):
            return by_status
        return self._by_exception(exc)

    def _by_status(self, status: int, has_retry_after: bool) -> Classification | None:
        reason = f"HTTP {status}"
        external = FailureCategory.EXTERNAL
        if status in self.rate_limit_status_codes and (status < 500 or has_retry_after):
            return Classification(
                transient=True, category=external, rate_limited=True, status=status, reason=reason
            )
        if status in self.non_retryable_status_codes:
            transient = False
        elif status in self.retryable_status_codes or 500 <= status <= 599:
            transient = True
        elif 400 <= status <= 499:
            transient = False
        else:
            # 1xx-3xx did not cause the failure; let the exception speak.
            return None
        return Classification(transient=transient, category=external, status=status, reason=reason)

    def _by_exception(self, exc: Exception) -> Classification:
        message = str(exc)
        if isinstance(exc, PlaywrightTimeoutError | TimeoutError):
            return Classification(
                transient=True, category=FailureCategory.NETWORK, reason="timeout"
            )
        if isinstance(exc, PlaywrightError):
            if by_message := self._by_message(message, FailureCategory.BROWSER):
                return by_message
            if any(t.__name__ == "TargetClosedError" for t in type(exc).__mro__):
                # Not exported publicly; matched by name to avoid a private import.
                return Classification(
                    transient=True, category=FailureCategory.BROWSER, reason="target closed"
                )
            return self._unknown(exc, FailureCategory.BROWSER)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Classification(
                transient=False,
                category=FailureCategory.NETWORK,
                reason="certificate verification failed",
            )
        if isinstance(exc, ConnectionError | socket.gaierror | socket.herror):
            return Classification(
                transient=True, category=FailureCategory.NETWORK, reason=type(exc).__name__
            )
        if isinstance(exc, OSError):
            return Classification(
                transient=not isinstance(exc, _PERMANENT_OS_ERRORS),
                category=FailureCategory.SYSTEM,
                reason=type(exc).__name__,
            )
        if isinstance(exc, MemoryError):
            return Classification(
                transient=False, category=FailureCategory.SYSTEM, reason="out of memory"
            )
        if by_message := self._by_message(message, FailureCategory.APPLICATION):
            return by_message
        return self._unknown(exc, FailureCategory.APPLICATION)

    def _by_message(self, message: str, default: FailureCategory) -> Classification | None:
        if found := _first_match(self._permanent, message):
            return Classification(
                transient=False, category=_category_from(message, default), reason=found
            )
        if found := _first_match(self._block, message):
            return Classification(
                transient=True,
                category=FailureCategory.EXTERNAL,
                rate_limited=True,
                reason=f"blocked: {found}",
            )
        if found := _first_match(self._transient, message):
            return Classification(
                transient=True, category=_category_from(message, default), reason=found
            )
        return None

    def _unknown(self, exc: Exception, category: FailureCategory) -> Classification:
        return Classification(
            transient=self.unknown_is_transient, category=category, reason=type(exc).__name__
        )


def severity_for(classification: Classification, final: bool) -> FailureSeverity:
    """Severity of a failure event.

    A failure that will be retried is LOW; one that fails the item is MEDIUM. Browser
    and system failures rank one step higher (MEDIUM / HIGH), since they affect every
    item sharing that browser or host. CRITICAL is never derived from one failure: it
    is for job-wide events such as an abort.
    """
    worse = classification.category in (FailureCategory.BROWSER, FailureCategory.SYSTEM)
    if not final:
        return FailureSeverity.MEDIUM if worse else FailureSeverity.LOW
    return FailureSeverity.HIGH if worse else FailureSeverity.MEDIUM
