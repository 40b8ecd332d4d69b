"""Retry policy: backoff delays, validation, named policies, Retry-After, decisions."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.classify import Classification, FailureCategory
from actors.retry import (
    POLICIES,
    RetryDecision,
    RetryPolicy,
    UnknownPolicyError,
    decide,
    parse_retry_after,
    policy,
)
from actors.serde import ConfigError, structure, unstructure

NOW = datetime(2025, 1, 27, 15, 30, 0, tzinfo=UTC)

TRANSIENT = Classification(transient=True, category=FailureCategory.NETWORK, reason="timeout")
PERMANENT = Classification(
    transient=False, category=FailureCategory.EXTERNAL, status=404, reason="HTTP 404"
)
RATE_LIMITED = Classification(
    transient=True,
    category=FailureCategory.EXTERNAL,
    rate_limited=True,
    status=429,
    reason="HTTP 429",
)
NO_JITTER = RetryPolicy(jitter_enabled=False)


def test_default_delays_double_from_one_second() -> None:
    """Defaults without jitter wait 1, 2, 4, 8 and 16 seconds."""
    assert [NO_JITTER.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_defaults_match_the_specification() -> None:
    """The default policy allows five retries after the first try."""
    p = RetryPolicy()
    assert (p.name, p.max_attempts, p.base_delay, p.multiplier) == (
        "exponential_backoff",
        5,
        1.0,
        2.0,
    )
    assert (p.max_delay, p.jitter_factor, p.jitter_enabled, p.max_retry_after) == (
        60.0,
        0.1,
        True,
        300.0,
    )


def test_delay_is_capped_at_max_delay() -> None:
    """Backoff stops growing at max_delay."""
    p = RetryPolicy(max_delay=10.0, jitter_enabled=False)
    assert [p.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_delay_survives_huge_retry_numbers() -> None:
    """An overflowing power still yields max_delay."""
    assert NO_JITTER.delay(100_000) == 60.0


def test_jitter_factor_zero_means_no_jitter() -> None:
    """A zero jitter factor gives exact delays even with jitter enabled."""
    p = RetryPolicy(jitter_factor=0.0)
    assert p.delay(3, random.Random(1)) == 4.0


def test_jitter_stays_within_bounds() -> None:
    """Jittered delays stay within delay * (1 +/- jitter_factor) and actually vary."""
    p = RetryPolicy(jitter_factor=0.3)
    rng = random.Random(42)
    draws = [p.delay(3, rng) for _ in range(2000)]
    assert all(4.0 * 0.7 <= d <= 4.0 * 1.3 for d in draws)
    assert min(draws) < 3.0 and max(draws) > 5.0


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    """The same seed gives the same delays."""
    p = RetryPolicy()
    assert [p.delay(2, random.Random(7)) for _ in range(3)] == [p.delay(2, random.Random(7))] * 3


def test_full_jitter_never_goes_negative() -> None:
    """jitter_factor 1.0 may reach zero but never below."""
    p = RetryPolicy(jitter_factor=1.0)
    rng = random.Random(3)
    assert all(0.0 <= p.delay(1, rng) <= 2.0 for _ in range(1000))


def test_delay_rejects_retry_zero() -> None:
    """Retries are numbered from 1."""
    with pytest.raises(ValueError, match=re.escape("retry must be 1 or more, got 0")):
        NO_JITTER.delay(0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": -1}, "max_attempts must not be negative, got -1"),
        ({"max_attempts": 101}, "max_attempts must be between 0 and 100, got 101"),
        ({"max_attempts": 2.5}, "max_attempts must be an integer, got 2.5"),
        ({"max_attempts": True}, "max_attempts must be an integer, got True"),
        ({"base_delay": 0.01}, "base_delay must be between 0.1 and 60, got 0.01"),
        (
            {"base_delay": 61.0, "max_delay": 100.0},
            "base_delay must be between 0.1 and 60, got 61.0",
        ),
        ({"base_delay": "1"}, "base_delay must be a number, got '1'"),
        ({"multiplier": 0.5}, "multiplier must be between 1 and 10, got 0.5"),
        ({"multiplier": 10.5}, "multiplier must be between 1 and 10, got 10.5"),
        ({"max_delay": 0.5}, "max_delay must not be less than base_delay (1), got 0.5"),
        ({"max_delay": 3601.0}, "max_delay must be between 0.1 and 3600, got 3601.0"),
        ({"jitter_factor": -0.1}, "jitter_factor must not be negative, got -0.1"),
        ({"jitter_factor": 1.5}, "jitter_factor must be between 0 and 1, got 1.5"),
        ({"max_retry_after": -1.0}, "max_retry_after must not be negative, got -1.0"),
        ({"max_retry_after": 86401.0}, "max_retry_after must be between 0 and 86400, got 86401.0"),
        ({"base_delay": float("nan")}, "base_delay must be a number, got nan"),
    ],
)
def test_out_of_range_values_are_refused(fields: dict[str, object], message: str) -> None:
    """Each limit is enforced at construction with a message naming the field."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_limits_are_inclusive() -> None:
    """The documented bounds themselves are accepted."""
    RetryPolicy(max_attempts=0, base_delay=0.1, multiplier=1.0, max_delay=0.1, jitter_factor=0.0)
    RetryPolicy(max_attempts=100, base_delay=60, multiplier=10, max_delay=3600, jitter_factor=1)
    RetryPolicy(max_retry_after=0)
    RetryPolicy(max_retry_after=86400)


def test_for_testing_allows_short_delays_the_constructor_refuses() -> None:
    """for_testing skips the range limits; the normal constructor still enforces them."""
    fast = RetryPolicy.for_testing(base_delay=0.01, max_delay=0.05, jitter_enabled=False)
    assert [fast.delay(n) for n in range(1, 5)] == [0.01, 0.02, 0.04, 0.05]
    with pytest.raises(ValueError, match=re.escape("base_delay must be between 0.1 and 60")):
        RetryPolicy(base_delay=0.01, max_delay=0.05)


def test_for_testing_keeps_the_sanity_checks() -> None:
    """for_testing still refuses negative values and max_delay below base_delay."""
    with pytest.raises(ValueError, match=re.escape("base_delay must not be negative, got -1")):
        RetryPolicy.for_testing(base_delay=-1)
    with pytest.raises(
        ValueError, match=re.escape("max_delay must not be less than base_delay (0.5), got 0.1")
    ):
        RetryPolicy.for_testing(base_delay=0.5, max_delay=0.1)


def test_for_testing_does_not_leak_into_later_construction() -> None:
    """Range checks are back on after for_testing, even when it raised."""
    with pytest.raises(ValueError):
        RetryPolicy.for_testing(base_delay=-1)
    with pytest.raises(ValueError, match=re.escape("base_delay must be between 0.1 and 60")):
        RetryPolicy(base_delay=0.01)


def test_structure_builds_a_policy_from_config() -> None:
    """A config dict becomes a policy through the shared converter."""
    p = structure({"name": "slow", "max_attempts": 2, "base_delay": 5}, RetryPolicy)
    assert p == RetryPolicy(name="slow", max_attempts=2, base_delay=5.0)
    assert structure(unstructure(p), RetryPolicy) == p


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"base_delay": 0.01}, "RetryPolicy: base_delay must be between 0.1 and 60, got 0.01"),
        ({"max_attempts": 101}, "RetryPolicy: max_attempts must be between 0 and 100, got 101"),
        ({"max_atempts": 3}, "RetryPolicy: unknown field(s): max_atempts"),
        (
            {"base_delay": "soon"},
            "RetryPolicy.base_delay: could not convert string to float: 'soon'",
        ),
    ],
)
def test_structure_reports_readable_config_errors(data: dict[str, object], line: str) -> None:
    """Bad config raises ConfigError with one readable line naming the field."""
    with pytest.raises(ConfigError) as info:
        structure(data, RetryPolicy)
    assert info.value.errors == [line]
    assert str(info.value) == f"invalid RetryPolicy:\n  {line}"


def test_named_policies() -> None:
    """The three built-in policies have the documented settings."""
    assert sorted(POLICIES) == ["aggressive", "conservative", "exponential_backoff"]
    assert policy("exponential_backoff") == RetryPolicy()
    assert policy("conservative") == RetryPolicy(
        name="conservative", max_attempts=3, base_delay=2.0, max_delay=60.0
    )
    assert policy("aggressive") == RetryPolicy(
        name="aggressive",
        max_attempts=10,
        base_delay=0.5,
        multiplier=1.5,
        max_delay=120.0,
        jitter_factor=0.3,
    )
    assert all(p.name == name for name, p in POLICIES.items())


def test_named_policies_cannot_be_replaced() -> None:
    """POLICIES is read-only."""
    with pytest.raises(TypeError):
        POLICIES["conservative"] = RetryPolicy()  # type: ignore[index]


def test_unknown_policy_lists_known_names() -> None:
    """An unknown name raises a KeyError subclass listing the known policies."""
    message = (
        "unknown retry policy 'fast'; known policies: aggressive, conservative, exponential_backoff"
    )
    with pytest.raises(UnknownPolicyError, match=f"^{re.escape(message)}$"):
        policy("fast")
    with pytest.raises(KeyError):
        policy("fast")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 0 ", 0.0), ("1.5", 1.5), ("Mon, 27 Jan 2025 15:32:00 GMT", 120.0)],
)
def test_parse_retry_after(value: str, seconds: float) -> None:
    """Delta-seconds and HTTP-dates both give seconds from now."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_parse_retry_after_date_in_the_past_is_zero() -> None:
    """A date already passed means retry now."""
    assert parse_retry_after("Mon, 27 Jan 2025 15:00:00 GMT", now=NOW) == 0.0


def test_parse_retry_after_accepts_naive_now_as_utc() -> None:
    """A naive ``now`` is taken as UTC, like HTTP-dates."""
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Mon, 27 Jan 2025 15:30:30 -0000", now=naive) == 30.0


def test_parse_retry_after_defaults_now_to_current_time() -> None:
    """Without ``now`` a date is measured from the current time."""
    soon = datetime.now(UTC) + timedelta(seconds=100)
    header = soon.strftime("%a, %d %b %Y %H:%M:%S GMT")
    seconds = parse_retry_after(header)
    assert seconds is not None and 90.0 <= seconds <= 100.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1e3", "inf", "Mon, 99 Foo 2025"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    """Missing or unreadable values give None."""
    assert parse_retry_after(value, now=NOW) is None


def test_decide_retries_transient_failures_with_backoff() -> None:
    """A transient failure is retried after the backoff delay for that attempt."""
    assert decide(NO_JITTER, 1, TRANSIENT, None) == RetryDecision(True, 1.0, "transient")
    assert decide(NO_JITTER, 3, TRANSIENT, None) == RetryDecision(True, 4.0, "transient")


def test_decide_never_retries_permanent_failures() -> None:
    """A permanent failure fails at once."""
    assert decide(NO_JITTER, 1, PERMANENT, None) == RetryDecision(False, 0.0, "permanent")


def test_decide_gives_six_tries_with_five_retries() -> None:
    """With max_attempts=5 the item is tried six times; the sixth failure is final."""
    decisions = [decide(NO_JITTER, attempt, TRANSIENT, None) for attempt in range(1, 7)]
    assert [d.delay for d in decisions[:5]] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert all(d.retry for d in decisions[:5])
    assert decisions[5] == RetryDecision(False, 0.0, "attempts_exhausted")


def test_decide_with_zero_max_attempts_never_retries() -> None:
    """max_attempts=0 means a single try."""
    p = RetryPolicy(max_attempts=0)
    assert decide(p, 1, TRANSIENT, None) == RetryDecision(False, 0.0, "attempts_exhausted")


def test_decide_rejects_attempt_zero() -> None:
    """Attempts are counted from the first try."""
    with pytest.raises(ValueError, match=re.escape("attempt must be 1 or more, got 0")):
        decide(NO_JITTER, 0, TRANSIENT, None)


def test_rate_limited_without_retry_after_uses_backoff() -> None:
    """Rate limiting with no Retry-After waits the normal backoff."""
    assert decide(NO_JITTER, 2, RATE_LIMITED, None) == RetryDecision(True, 2.0, "rate_limited")


def test_rate_limited_waits_for_a_longer_retry_after() -> None:
    """Retry-After longer than the backoff wins."""
    assert decide(NO_JITTER, 2, RATE_LIMITED, 30.0) == RetryDecision(True, 30.0, "rate_limited")


def test_rate_limited_keeps_a_longer_backoff() -> None:
    """Retry-After shorter than the backoff does not shorten the wait."""
    assert decide(NO_JITTER, 5, RATE_LIMITED, 3.0) == RetryDecision(True, 16.0, "rate_limited")


def test_retry_after_beyond_limit_fails_the_item() -> None:
    """Retry-After above max_retry_after is not waited for."""
    assert decide(NO_JITTER, 1, RATE_LIMITED, 301.0) == RetryDecision(
        False, 0.0, "retry_after_too_long"
    )
    assert decide(NO_JITTER, 1, RATE_LIMITED, 300.0) == RetryDecision(True, 300.0, "rate_limited")


def test_rate_limited_attempts_count_like_any_other() -> None:
    """A 429 after the last retry is final."""
    assert decide(NO_JITTER, 6, RATE_LIMITED, 1.0) == RetryDecision(
        False, 0.0, "attempts_exhausted"
    )


def test_retry_after_is_honoured_for_transient_failures() -> None:
    """A server's Retry-After on a plain 5xx is respected too."""
    assert decide(NO_JITTER, 1, TRANSIENT, 5.0) == RetryDecision(True, 5.0, "transient")


def test_decide_passes_the_rng_to_jitter() -> None:
    """A seeded rng makes jittered decisions reproducible."""
    p = RetryPolicy()
    first = decide(p, 4, TRANSIENT, None, random.Random(9))
    assert first == decide(p, 4, TRANSIENT, None, random.Random(9))
    assert 8.0 * 0.9 <= first.delay <= 8.0 * 1.1


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(0, 100),
    base_delay=st.floats(0.1, 60),
    multiplier=st.floats(1.0, 10.0),
    max_delay=st.floats(60, 3600),
    jitter_factor=st.floats(0.0, 1.0),
    jitter_enabled=st.booleans(),
)


@given(policies, st.integers(1, 10_000), st.integers(0, 2**32))
def test_delay_stays_within_bounds(p: RetryPolicy, retry: int, seed: int) -> None:
    """Any delay lies in [0, max_delay * (1 + jitter_factor)]."""
    d = p.delay(retry, random.Random(seed))
    assert 0.0 <= d <= p.max_delay * (1 + p.jitter_factor)


@given(policies, st.integers(1, 10_000))
def test_delay_never_shrinks_without_jitter(p: RetryPolicy, retry: int) -> None:
    """Without jitter the delay is non-decreasing in the retry number."""
    p = attrs.evolve(p, jitter_enabled=False)
    assert p.delay(retry) <= p.delay(retry + 1) <= p.max_delay
