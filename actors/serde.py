"""The project's one cattrs converter, and readable validation errors.

Every record that goes to disk or comes from a config file passes through ``converter``
(cattrs' orjson preconfiguration: datetimes as ISO 8601 strings, enums by value).
``structure`` turns cattrs' nested validation groups into one ``ConfigError`` whose
lines name the path of each bad field, e.g. ``retry.max_attempts: must be between 0 and
100, got 101`` -- users never read a raw ExceptionGroup to learn what broke.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import orjson
from cattrs import transform_error
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.preconf.orjson import make_converter

__all__ = [
    "ConfigError",
    "between",
    "converter",
    "dumps",
    "loads",
    "structure",
    "unstructure",
]

T = TypeVar("T")

converter = make_converter(detailed_validation=True, forbid_extra_keys=True)


class ConfigError(ValueError):
    """Bad configuration or input; ``errors`` holds one readable line per problem."""

    def __init__(self, what: str, errors: list[str]) -> None:
        self.what = what
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"invalid {what}:\n{lines}")


def _describe(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown field(s): " + ", ".join(sorted(exc.extra_fields))
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    if type_ is not None:
        return f"expected {getattr(type_, '__name__', type_)}, got {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def structure(data: Any, cls: type[T], what: str | None = None) -> T:
    """Build ``cls`` from plain data, raising ``ConfigError`` with one line per bad field.

    Unknown keys are errors too (a misspelt option must not be silently ignored).
    """
    name = what or cls.__name__
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        lines = transform_error(exc, path=name, format_exception=_describe)
        raise ConfigError(name, [_flip(line) for line in lines]) from None


def _flip(line: str) -> str:
    # cattrs says "message @ path"; a path first reads better in a list of problems.
    message, sep, path = line.rpartition(" @ ")
    return f"{path}: {message}" if sep else line


def unstructure(obj: Any) -> Any:
    """Plain data (dicts, lists, strings, numbers) for ``obj``."""
    return converter.unstructure(obj)


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes for ``obj`` (attrs classes are unstructured first)."""
    return orjson.dumps(converter.unstructure(obj))


def loads(data: bytes | str) -> Any:
    """Parse JSON text into plain data."""
    return orjson.loads(data)


def between(lo: float, hi: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator: ``lo <= value <= hi``, with the message users see."""

    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if not lo <= value <= hi:
            raise ValueError(f"{attr.name} must be between {lo:g} and {hi:g}, got {value!r}")

    return check
