"""Failure classification: status codes, Playwright errors, message patterns."""

from __future__ import annotations

import re
import socket
import ssl

import pytest
from playwright._impl._errors import TargetClosedError  # raised by Playwright, not exported
from playwright.async_api import Error
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from actors.classify import (
    Classification,
    FailureCategory,
    FailureClassifier,
    FailureSeverity,
    RecoveryAction,
    severity_for,
)
from actors.serde import ConfigError, structure, unstructure

CLASSIFIER = FailureClassifier()
NETWORK = FailureCategory.NETWORK
BROWSER = FailureCategory.BROWSER
SYSTEM = FailureCategory.SYSTEM
APPLICATION = FailureCategory.APPLICATION
EXTERNAL = FailureCategory.EXTERNAL


class HttpStatusError(Exception):
    """What a scrape function might raise for a bad response."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def test_enum_values_are_lowercase_names() -> None:
    """Every enum's values are its lowercase member names."""
    for enum in (FailureCategory, FailureSeverity, RecoveryAction):
        assert [m.value for m in enum] == [m.name.lower() for m in enum]
    assert [m.name for m in FailureCategory] == [
        "NETWORK",
        "BROWSER",
        "SYSTEM",
        "APPLICATION",
        "EXTERNAL",
    ]
    assert [m.name for m in FailureSeverity] == ["LOW", "MEDIUM", "HIGH", "CRITICAL"]
    assert [m.name for m in RecoveryAction] == ["RETRY", "RESTART", "SKIP", "ABORT", "MANUAL"]


def test_playwright_timeout_is_transient_network() -> None:
    """A Playwright timeout is a transient network failure."""
    got = CLASSIFIER.classify(PlaywrightTimeoutError("Timeout 30000ms exceeded"))
    assert got == Classification(transient=True, category=NETWORK, reason="timeout")


def test_builtin_timeout_is_transient_network() -> None:
    """The builtin TimeoutError counts as a timeout too."""
    got = CLASSIFIER.classify(TimeoutError("read timed out"))
    assert got == Classification(transient=True, category=NETWORK, reason="timeout")


def test_connection_reset_is_transient_network() -> None:
    """Chromium's connection reset is a transient network failure."""
    got = CLASSIFIER.classify(Error("net::ERR_CONNECTION_RESET at http://example.com/match/1"))
    assert got == Classification(
        transient=True, category=NETWORK, reason="net::ERR_CONNECTION_RESET"
    )


def test_connection_closed_in_page_goto_is_network_not_browser() -> None:
    """``page.goto: ... CLOSED`` is a network failure, not a closed page."""
    got = CLASSIFIER.classify(Error("page.goto: net::ERR_CONNECTION_CLOSED at http://x/"))
    assert (got.transient, got.category) == (True, NETWORK)


def test_target_closed_is_transient_browser() -> None:
    """A closed page, context or browser is a transient browser failure."""
    got = CLASSIFIER.classify(Error("Target page, context or browser has been closed"))
    assert got == Classification(
        transient=True,
        category=BROWSER,
        reason="Target page, context or browser has been closed",
    )


def test_target_closed_error_class_is_transient_browser() -> None:
    """Playwright's TargetClosedError is transient even with an unfamiliar message."""
    assert CLASSIFIER.classify(TargetClosedError()).category is BROWSER
    got = CLASSIFIER.classify(TargetClosedError("gone away"))
    assert got == Classification(transient=True, category=BROWSER, reason="target closed")


@pytest.mark.parametrize("message", ["Page crashed", "Browser has been closed"])
def test_browser_crashes_are_transient_browser(message: str) -> None:
    """Crashed pages and closed browsers are transient browser failures."""
    got = CLASSIFIER.classify(Error(message))
    assert (got.transient, got.category, got.reason) == (True, BROWSER, message)


@pytest.mark.parametrize(
    "message",
    [
        "net::ERR_CERT_AUTHORITY_INVALID at https://x/",
        "net::ERR_INVALID_URL at foo",
        "net::ERR_BLOCKED_BY_CLIENT at https://x/",
    ],
)
def test_permanent_chromium_errors(message: str) -> None:
    """Certificate and URL errors are permanent network failures."""
    got = CLASSIFIER.classify(Error(message))
    assert (got.transient, got.category) == (False, NETWORK)
    assert got.reason == message.split(" at ")[0]


def test_unknown_playwright_error_is_permanent_browser() -> None:
    """A Playwright error no pattern knows is a permanent browser failure by default."""
    got = CLASSIFIER.classify(Error("strict mode violation: locator resolved to 2 elements"))
    assert got == Classification(transient=False, category=BROWSER, reason="Error")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 451, 418])
def test_client_errors_are_permanent(status: int) -> None:
    """Non-retryable and other 4xx statuses are permanent."""
    got = CLASSIFIER.classify(RuntimeError("bad response"), status=status)
    assert got == Classification(
        transient=False, category=EXTERNAL, status=status, reason=f"HTTP {status}"
    )


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504, 599])
def test_retryable_and_other_5xx_are_transient(status: int) -> None:
    """Retryable statuses and unknown 5xx are transient, not rate limiting."""
    got = CLASSIFIER.classify(RuntimeError("bad response"), status=status)
    assert got == Classification(
        transient=True, category=EXTERNAL, status=status, reason=f"HTTP {status}"
    )


def test_429_is_rate_limited() -> None:
    """429 is rate limiting with or without Retry-After."""
    expected = Classification(
        transient=True, category=EXTERNAL, rate_limited=True, status=429, reason="HTTP 429"
    )
    assert CLASSIFIER.classify(RuntimeError(), status=429) == expected
    assert CLASSIFIER.classify(RuntimeError(), status=429, has_retry_after=True) == expected


def test_503_with_retry_after_is_rate_limited() -> None:
    """503 carrying Retry-After is rate limiting."""
    got = CLASSIFIER.classify(RuntimeError(), status=503, has_retry_after=True)
    assert got == Classification(
        transient=True, category=EXTERNAL, rate_limited=True, status=503, reason="HTTP 503"
    )


def test_status_wins_over_exception_type() -> None:
    """An explicit status is judged before the exception."""
    got = CLASSIFIER.classify(PlaywrightTimeoutError("Timeout 30000ms exceeded"), status=404)
    assert (got.transient, got.status) == (False, 404)


def test_success_status_defers_to_the_exception() -> None:
    """A 2xx status did not cause the failure, so the exception decides."""
    got = CLASSIFIER.classify(PlaywrightTimeoutError("Timeout 30000ms exceeded"), status=200)
    assert got == Classification(transient=True, category=NETWORK, reason="timeout")


def test_exception_status_attribute_is_used() -> None:
    """An exception's own ``.status`` is judged like a passed status."""
    assert CLASSIFIER.classify(HttpStatusError(404)).transient is False
    got = CLASSIFIER.classify(HttpStatusError(503))
    assert (got.transient, got.rate_limited, got.status) == (True, False, 503)


def test_exception_retry_after_attribute_marks_rate_limiting() -> None:
    """An exception's ``.retry_after`` counts as Retry-After."""
    got = CLASSIFIER.classify(HttpStatusError(503, retry_after=30.0))
    assert (got.transient, got.rate_limited) == (True, True)


def test_non_int_status_attribute_is_ignored() -> None:
    """Only an int ``.status`` is taken as an HTTP status."""
    exc = RuntimeError("done")
    exc.status = "failed"  # type: ignore[attr-defined]
    assert CLASSIFIER.classify(exc).status is None


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionResetError("reset by peer"), "ConnectionResetError"),
        (socket.gaierror("name or service not known"), "gaierror"),
    ],
)
def test_connection_errors_are_transient_network(exc: Exception, reason: str) -> None:
    """Socket-level connection failures are transient network failures."""
    assert CLASSIFIER.classify(exc) == Classification(
        transient=True, category=NETWORK, reason=reason
    )


def test_certificate_verification_is_permanent() -> None:
    """A failed certificate check is not retried."""
    got = CLASSIFIER.classify(ssl.SSLCertVerificationError("certificate verify failed"))
    assert (got.transient, got.category) == (False, NETWORK)


def test_os_errors_are_system_failures() -> None:
    """Local file problems are permanent; other OS errors are transient."""
    assert CLASSIFIER.classify(FileNotFoundError("x.json")) == Classification(
        transient=False, category=SYSTEM, reason="FileNotFoundError"
    )
    assert CLASSIFIER.classify(OSError(24, "Too many open files")) == Classification(
        transient=True, category=SYSTEM, reason="OSError"
    )


def test_memory_error_is_permanent_system() -> None:
    """Running out of memory is a permanent system failure."""
    assert CLASSIFIER.classify(MemoryError()) == Classification(
        transient=False, category=SYSTEM, reason="out of memory"
    )


def test_cancellation_is_never_retried() -> None:
    """Exceptions outside Exception (KeyboardInterrupt, cancellation) are permanent."""
    assert CLASSIFIER.classify(KeyboardInterrupt()) == Classification(
        transient=False, category=SYSTEM, reason="KeyboardInterrupt"
    )


@pytest.mark.parametrize(
    ("message", "category", "reason"),
    [
        ("upstream read timed out", NETWORK, "timed out"),
        ("socket hang up", NETWORK, "socket hang up"),
        ("browser has disconnected", BROWSER, "browser has disconnected"),
    ],
)
def test_transient_message_patterns(message: str, category: FailureCategory, reason: str) -> None:
    """Messages matching transient patterns are retried."""
    assert CLASSIFIER.classify(RuntimeError(message)) == Classification(
        transient=True, category=category, reason=reason
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Please solve the CAPTCHA to continue", "blocked: CAPTCHA"),
        ("Access Denied", "blocked: Access Denied"),
        ("rate limit exceeded", "blocked: rate limit"),
    ],
)
def test_block_patterns_mean_rate_limiting(message: str, reason: str) -> None:
    """Anti-bot block pages are transient rate limiting."""
    assert CLASSIFIER.classify(ValueError(message)) == Classification(
        transient=True, category=EXTERNAL, rate_limited=True, reason=reason
    )


def test_permanent_pattern_wins_over_transient() -> None:
    """A message matching both lists is permanent."""
    got = CLASSIFIER.classify(RuntimeError("authentication failed after timeout"))
    assert got == Classification(transient=False, category=NETWORK, reason="authentication failed")


def test_permanent_pattern_wins_over_block() -> None:
    """Permanent patterns are checked before block patterns."""
    got = CLASSIFIER.classify(RuntimeError("authentication failed: access denied"))
    assert (got.transient, got.rate_limited) == (False, False)


def test_unknown_exception_is_permanent_application() -> None:
    """A bug in the scrape function is not retried by default."""
    assert CLASSIFIER.classify(KeyError("home_team")) == Classification(
        transient=False, category=APPLICATION, reason="KeyError"
    )


def test_unknown_is_transient_is_configurable() -> None:
    """unknown_is_transient=True retries unrecognised exceptions."""
    got = FailureClassifier(unknown_is_transient=True).classify(KeyError("home_team"))
    assert got == Classification(transient=True, category=APPLICATION, reason="KeyError")
    pw = FailureClassifier(unknown_is_transient=True).classify(Error("element detached"))
    assert (pw.transient, pw.category) == (True, BROWSER)


def test_exception_group_is_permanent_if_any_part_is() -> None:
    """A group is retried only when every part is transient."""
    mixed = ExceptionGroup("scrape", [TimeoutError("Timeout"), KeyError("x")])
    assert CLASSIFIER.classify(mixed).reason == "KeyError"
    both = ExceptionGroup("scrape", [TimeoutError("Timeout"), ConnectionResetError()])
    assert CLASSIFIER.classify(both).reason == "timeout"


def test_configurable_patterns() -> None:
    """Replaced pattern lists take effect, case-insensitively."""
    c = FailureClassifier(
        transient_patterns=["flaky backend"],
        permanent_patterns=["match cancelled"],
        block_patterns=["cloudflare"],
    )
    assert c.classify(RuntimeError("FLAKY BACKEND")).transient is True
    assert c.classify(RuntimeError("Match Cancelled")).transient is False
    assert c.classify(RuntimeError("Cloudflare check")).rate_limited is True
    assert c.classify(RuntimeError("operation timed out")).transient is False


def test_configurable_status_codes() -> None:
    """Replaced status lists take effect."""
    c = FailureClassifier(
        retryable_status_codes=[404],
        non_retryable_status_codes=[503],
        rate_limit_status_codes=[403],
    )
    assert c.classify(RuntimeError(), status=404).transient is True
    assert c.classify(RuntimeError(), status=503, has_retry_after=True).transient is False
    assert c.classify(RuntimeError(), status=403).rate_limited is True
    assert c.classify(RuntimeError(), status=429).rate_limited is False


def test_lists_are_stored_as_tuples() -> None:
    """Lists given at construction become tuples, keeping the classifier hashable."""
    c = FailureClassifier(transient_patterns=["a"], retryable_status_codes=[500])
    assert (c.transient_patterns, c.retryable_status_codes) == (("a",), (500,))
    assert hash(c) == hash(
        FailureClassifier(transient_patterns=("a",), retryable_status_codes=(500,))
    )


@pytest.mark.parametrize("field", ["transient_patterns", "permanent_patterns", "block_patterns"])
def test_invalid_regex_is_refused(field: str) -> None:
    """A bad regex raises ValueError naming the field and the pattern."""
    message = (
        f"{field} has an invalid regular expression '(oops': "
        "missing ), unterminated subpattern at position 0"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FailureClassifier(**{field: ["fine", "(oops"]})  # type: ignore[arg-type]


def test_status_codes_must_be_http_codes() -> None:
    """Status lists hold only 100-599."""
    message = "rate_limit_status_codes must hold HTTP status codes (100-599), got 42"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FailureClassifier(rate_limit_status_codes=[429, 42])


def test_status_code_cannot_be_both_retryable_and_not() -> None:
    """The retryable and non-retryable lists must not overlap."""
    message = (
        "status code(s) 404, 500 in both retryable_status_codes and non_retryable_status_codes"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FailureClassifier(retryable_status_codes=[500, 404], non_retryable_status_codes=[404, 500])


def test_classifier_round_trips_through_config() -> None:
    """A classifier structures from config and unstructures without compiled state."""
    data = {"block_patterns": ["cloudflare"], "unknown_is_transient": True}
    c = structure(data, FailureClassifier)
    assert c == FailureClassifier(block_patterns=("cloudflare",), unknown_is_transient=True)
    assert structure(unstructure(c), FailureClassifier) == c
    assert "_transient" not in unstructure(c)


def test_classifier_config_errors_are_readable() -> None:
    """A bad regex in config becomes one ConfigError line."""
    with pytest.raises(ConfigError) as info:
        structure({"permanent_patterns": ["["]}, FailureClassifier)
    assert info.value.errors == [
        "FailureClassifier: permanent_patterns has an invalid regular expression '[': "
        "unterminated character set at position 0"
    ]


@pytest.mark.parametrize(
    ("category", "final", "severity"),
    [
        (NETWORK, False, FailureSeverity.LOW),
        (NETWORK, True, FailureSeverity.MEDIUM),
        (EXTERNAL, True, FailureSeverity.MEDIUM),
        (BROWSER, False, FailureSeverity.MEDIUM),
        (BROWSER, True, FailureSeverity.HIGH),
        (SYSTEM, True, FailureSeverity.HIGH),
    ],
)
def test_severity_for(category: FailureCategory, final: bool, severity: FailureSeverity) -> None:
    """Retried failures are low, final ones medium, browser and system one step higher."""
    c = Classification(transient=True, category=category, reason="x")
    assert severity_for(c, final) is severity
