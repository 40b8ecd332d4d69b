"""An append-only journal with group commit: what happened since the last snapshot.

Line format
    One record per line, each line a JSON object written exactly as::

        {"seq":<n>,"crc":<crc32>,"rec":<REC>}\\n

    where ``REC`` is the compact JSON of the record (a dict) and ``crc`` is the CRC-32 of
    those ``REC`` bytes as they appear in the line. ``seq`` numbers count up by one per
    record and continue across segment files.

Group commit
    ``Journal.append`` only buffers and returns the record's ``seq``; ``commit`` writes the
    whole group in one go and fsyncs once, so a record is durable when the ``commit`` that
    follows its ``append`` returns. A crash during a commit leaves at most a torn last line,
    which readers drop. After a commit fails (disk full...) the journal refuses further
    use (``JournalError``): what it wrote is a prefix of the history, and carrying on
    could leave a gap. Take a snapshot and open a new segment instead.

Reading
    ``read_journal`` returns the records in order. An incomplete or garbled LAST line is
    dropped and reported as ``torn_tail``; a bad line elsewhere is reported in
    ``bad_records`` as ``(line_no, reason)`` and skipped: a read never aborts on content.
    A record whose ``seq`` does not exceed the previous one is skipped the same way.

Segments
    ``CheckpointStore`` keeps one file per snapshot: ``journal-000012.jsonl`` holds the
    records after snapshot 12 (``journal-000000.jsonl`` those before the first snapshot).
"""

from __future__ import annotations

import os
import re
import zlib
from types import TracebackType
from typing import Any

import attrs
import orjson

from actors.serde import dumps
from actors.storage import Storage, StrPath

__all__ = [
    "CRASH_MID_COMMIT",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalRead",
    "read_journal",
]

CRASH_MID_COMMIT = "journal:mid_group_commit"
_WHAT = "journal segment"
_LINE_RE = re.compile(rb'\{"seq":(\d+),"crc":(\d+),"rec":(.*)\}')


class JournalError(Exception):
    """The journal cannot be used: it is closed, or an earlier commit failed."""


@attrs.frozen
class JournalEntry:
    """One record read back, with its sequence number."""

    seq: int
    record: dict[str, Any]


@attrs.frozen
class JournalRead:
    """What ``read_journal`` found.

    ``valid_length`` is the byte length of the file without its torn tail (the whole file
    when ``torn_tail`` is false).
    """

    entries: list[JournalEntry]
    torn_tail: bool
    bad_records: list[tuple[int, str]]
    valid_length: int

    @property
    def records(self) -> list[dict[str, Any]]:
        return [e.record for e in self.entries]

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` read, or 0 when there is none."""
        return self.entries[-1].seq if self.entries else 0


def _encode_line(seq: int, record: dict[str, Any]) -> bytes:
    rec = dumps(record)
    return b'{"seq":%d,"crc":%d,"rec":%b}\n' % (seq, zlib.crc32(rec), rec)


def _parse_line(line: bytes) -> tuple[int, dict[str, Any]] | str:
    m = _LINE_RE.fullmatch(line)
    if m is None:
        return "not a journal line"
    rec = m[3]
    crc = zlib.crc32(rec)
    if crc != int(m[2]):
        return f"crc mismatch (stored {int(m[2])}, computed {crc})"
    try:
        record = orjson.loads(rec)
    except orjson.JSONDecodeError as exc:
        return f"record is not valid JSON: {exc.msg}"
    if not isinstance(record, dict):
        return f"record is not an object but {type(record).__name__}"
    return int(m[1]), record


def read_journal(storage: Storage, path: StrPath, *, after_seq: int = 0) -> JournalRead:
    """The records of one segment file, in order (see the module docstring).

    Records must have ``seq`` greater than ``after_seq`` and than their predecessor.
    Raises ``StorageError`` when the file cannot be read.
    """
    data = storage.read(path, what=_WHAT)
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    entries: list[JournalEntry] = []
    bad: list[tuple[int, str]] = []
    last = after_seq
    offset = 0
    valid_length = 0
    torn = bool(tail)
    for index, line in enumerate(lines):
        line_no = index + 1
        offset += len(line) + 1
        parsed = _parse_line(line)
        if isinstance(parsed, str):
            if index == len(lines) - 1 and not tail:
                torn = True
                break
            bad.append((line_no, parsed))
        elif parsed[0] <= last:
            bad.append((line_no, f"seq {parsed[0]} does not follow {last}"))
        else:
            last = parsed[0]
            entries.append(JournalEntry(parsed[0], parsed[1]))
        valid_length = offset
    if not torn:
        valid_length = len(data)
    return JournalRead(entries, torn, bad, valid_length)


class Journal:
    """Appends records to one segment file with group commit (see the module docstring).

    ``next_seq`` is the sequence number the first appended record gets. Use it as a
    context manager or call ``close()``. Not thread-safe: one owner at a time.
    """

    def __init__(self, storage: Storage, path: StrPath, *, next_seq: int = 1) -> None:
        if next_seq < 1:
            raise ValueError(f"next_seq must be at least 1, got {next_seq}")
        self.path = os.fspath(path)
        self._storage = storage
        self._handle = storage.open_append(self.path, what=_WHAT)
        self._next_seq = next_seq
        self._buffer: list[bytes] = []
        self._failure: BaseException | None = None

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next appended record will get."""
        return self._next_seq

    @property
    def pending(self) -> int:
        """Records appended but not yet committed."""
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def _usable(self) -> None:
        if self._failure is not None:
            raise JournalError(
                f"journal {self.path} is unusable after a failed commit ({self._failure}); "
                "save a snapshot and open a new journal"
            )
        if self._handle.closed:
            raise JournalError(f"journal {self.path} is closed")

    def append(self, record: dict[str, Any]) -> int:
        """Buffer ``record`` and return its ``seq``; durable after the next ``commit()``.

        Raises ``TypeError`` when ``record`` is not a JSON-serialisable dict.
        """
        self._usable()
        if not isinstance(record, dict):
            raise TypeError(f"journal records must be dicts, got {type(record).__name__}")
        try:
            line = _encode_line(self._next_seq, record)
        except orjson.JSONEncodeError as exc:
            raise TypeError(f"journal record cannot be written as JSON: {exc}") from None
        self._buffer.append(line)
        self._next_seq += 1
        return self._next_seq - 1

    def commit(self) -> None:
        """Write the buffered records and fsync once. Raises ``StorageError`` on failure."""
        self._usable()
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        half = len(data) // 2
        try:
            self._handle.write(data[:half])
            self._storage.crash_point(CRASH_MID_COMMIT)
            self._handle.write(data[half:])
            self._handle.sync()
        except BaseException as exc:
            self._failure = exc
            raise
        self._buffer.clear()

    def close(self) -> None:
        """Commit what is pending, then close; closing twice is fine."""
        if self._handle.closed:
            return
        try:
            if self._failure is None:
                self.commit()
        finally:
            self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
