"""Child and supervisor specifications: plain, validated data.

Specs are frozen attrs records, checked when they are built (a bad intensity is an error
at definition time, not at the first crash).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._actor import Actor


class Restart(enum.Enum):
    """When a child is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  #: always
    TRANSIENT = "transient"  #: only after an abnormal exit (a crash or a kill)
    TEMPORARY = "temporary"  #: never; it is removed from its supervisor when it ends


class Strategy(enum.Enum):
    """What else is restarted when one child ends and must be restarted."""

    ONE_FOR_ONE = "one_for_one"  #: only that child
    ONE_FOR_ALL = "one_for_all"  #: every child (the others are stopped first)
    REST_FOR_ONE = "rest_for_one"  #: that child and those started after it


class AutoShutdown(enum.Enum):
    """When a supervisor stops by itself because significant children ended (OTP 24)."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


#: ``shutdown=BRUTAL`` cancels a child at once instead of asking it to stop.
BRUTAL = "brutal"


def _positive(_i: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be > 0, got {value!r}")


def _non_negative(_i: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value!r}")


@attrs.frozen
class Backoff:
    """Delays between consecutive restarts of one child, so a crash loop is not a hot loop.

    The first restart after a quiet period happens after ``first`` seconds (0: at once);
    the next after ``min``, then each delay is multiplied by ``multiplier`` up to ``max``.
    ``jitter`` spreads each delay by ``delay * uniform(-jitter, +jitter)``. After
    ``reset_after`` seconds without a crash the sequence starts again from ``first``.
    """

    min: float = attrs.field(default=0.5, validator=_non_negative)
    max: float = attrs.field(default=30.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    jitter: float = attrs.field(default=0.0, validator=_non_negative)
    reset_after: float | None = attrs.field(default=60.0, validator=_non_negative)
    first: float = attrs.field(default=0.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.max < self.min:
            raise ValueError(f"max must be >= min, got min={self.min!r} max={self.max!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, consecutive: int, rng: random.Random | None = None) -> float:
        """Delay before restart number ``consecutive`` (0 = first after a quiet period)."""
        if consecutive <= 0:
            base = self.first
        else:
            base = min(self.max, self.min * self.multiplier ** (consecutive - 1))
        if self.jitter and base:
            base += base * (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base)


def _child_id(_i: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{attr.name} must be a non-empty string without '/', got {value!r}")


@attrs.frozen
class ChildSpec:
    """How a supervisor starts, restarts and stops one worker actor.

    ``factory`` is called with no arguments for every incarnation and returns a fresh
    :class:`~supervisor.Actor` (an Actor subclass itself works). ``shutdown`` is the
    number of seconds the child gets to stop after being asked (then it is cancelled),
    ``None`` to wait for ever, or ``BRUTAL`` to cancel at once. ``name`` registers the
    actor in its tree's registry; each restarted incarnation takes the name over.
    ``significant`` children end their supervisor when ``auto_shutdown`` says so.
    """

    id: str = attrs.field(validator=_child_id)
    factory: Callable[[], Actor] = attrs.field()
    restart: Restart = Restart.PERMANENT
    shutdown: float | str | None = attrs.field(default=5.0)
    backoff: Backoff | None = None
    name: str | None = None
    mailbox_size: int = attrs.field(default=1000)
    significant: bool = False

    @factory.validator
    def _check_factory(self, _a: attrs.Attribute[Any], value: object) -> None:
        if not callable(value):
            raise ValueError(f"factory of child {self.id!r} must be callable, got {value!r}")

    @shutdown.validator
    def _check_shutdown(self, _a: attrs.Attribute[Any], value: object) -> None:
        _check_shutdown_value(self.id, value)

    @mailbox_size.validator
    def _check_mailbox(self, _a: attrs.Attribute[Any], value: int) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"mailbox_size of child {self.id!r} must be >= 1, got {value!r}")


def _check_shutdown_value(child: str, value: object) -> None:
    if value is None or value == BRUTAL:
        return
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(
            f"shutdown of child {child!r} must be seconds >= 0, None or BRUTAL, got {value!r}"
        )


@attrs.frozen
class SupervisorSpec:
    """A supervisor and its static children, started in order.

    More than ``intensity`` restarts within ``period`` seconds make the supervisor stop
    all its children (reverse start order) and exit with :class:`IntensityExceeded`,
    which its own supervisor sees as a crash. ``max_children`` bounds dynamic children.
    A supervisor used as a child of another has its own ``restart`` and ``shutdown``
    (default: wait for ever, as OTP does for supervisors).
    """

    id: str = attrs.field(validator=_child_id)
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = attrs.field(default=3)
    period: float = attrs.field(default=5.0, validator=_positive)
    children: Sequence[ChildSpec | SupervisorSpec] = attrs.field(default=(), converter=tuple)
    restart: Restart = Restart.PERMANENT
    shutdown: float | str | None = attrs.field(default=None)
    backoff: Backoff | None = None
    name: str | None = None
    max_children: int | None = None
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER
    significant: bool = False

    @intensity.validator
    def _check_intensity(self, _a: attrs.Attribute[Any], value: int) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"intensity of supervisor {self.id!r} must be >= 0, got {value!r}")

    @children.validator
    def _check_children(self, _a: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        seen: set[str] = set()
        for child in value:
            if not isinstance(child, ChildSpec | SupervisorSpec):
                raise ValueError(
                    f"children of supervisor {self.id!r} must be ChildSpec or SupervisorSpec,"
                    f" got {child!r}"
                )
            if child.id in seen:
                raise ValueError(f"duplicate child id {child.id!r} in supervisor {self.id!r}")
            seen.add(child.id)

    @shutdown.validator
    def _check_shutdown(self, _a: attrs.Attribute[Any], value: object) -> None:
        _check_shutdown_value(self.id, value)

    @property
    def mailbox_size(self) -> float:
        # Exit notices must never wait for room: a supervisor's mailbox is unbounded.
        return float("inf")

    def factory(self) -> Actor:
        from ._supervisor import Supervisor

        return Supervisor(self)


AnySpec = ChildSpec | SupervisorSpec
