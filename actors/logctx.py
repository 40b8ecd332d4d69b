"""Bind log context for a block and restore exactly what it overwrote.

``with bound(job_id="j", item_key="k"):`` adds the keys to every structlog line emitted
by this task inside the block (through ``structlog.contextvars``), then puts back the
previous values, or removes keys that were not bound before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

__all__ = ["bound"]

_MISSING = object()


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind ``values`` in this task's log context for the duration of the block."""
    before = structlog.contextvars.get_contextvars()
    saved = {k: before.get(k, _MISSING) for k in values}
    structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        restore = {k: v for k, v in saved.items() if v is not _MISSING}
        drop = [k for k, v in saved.items() if v is _MISSING]
        if restore:
            structlog.contextvars.bind_contextvars(**restore)
        if drop:
            structlog.contextvars.unbind_contextvars(*drop)
