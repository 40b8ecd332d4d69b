"""The append-only journal: group commit, torn tails, bad records, failures."""

from __future__ import annotations

import errno
import zlib
from pathlib import Path

import pytest

from actors.journal import Journal, JournalEntry, JournalError, read_journal
from actors.storage import FaultyStorage, Storage, StorageError


def test_group_commit_writes_once_and_reads_back(tmp_path: Path) -> None:
    """Appended records are written in one write and one fsync, then read back in order."""
    storage = FaultyStorage()
    path = tmp_path / "journal-000000.jsonl"
    with Journal(storage, path) as journal:
        seqs = [journal.append({"item": f"match-{i}", "ok": True}) for i in range(1, 4)]
        assert seqs == [1, 2, 3]
        assert journal.pending == 3
        assert path.read_bytes() == b""
        storage.calls.clear()
        journal.commit()
        assert [op for op, _ in storage.calls] == ["write", "write", "fsync"]
        assert journal.pending == 0
    read = read_journal(storage, path)
    assert read.entries == [JournalEntry(i, {"item": f"match-{i}", "ok": True}) for i in (1, 2, 3)]
    assert read.records[0] == {"item": "match-1", "ok": True}
    assert (read.torn_tail, read.bad_records, read.last_seq) == (False, [], 3)


def test_line_format(tmp_path: Path) -> None:
    """Each line carries seq, the CRC-32 of the record text and the record."""
    path = tmp_path / "j.jsonl"
    with Journal(Storage(), path, next_seq=41) as journal:
        journal.append({"a": 1})
    rec = b'{"a":1}'
    assert path.read_bytes() == b'{"seq":41,"crc":%d,"rec":%s}\n' % (zlib.crc32(rec), rec)


def test_commit_with_nothing_pending_writes_nothing(tmp_path: Path) -> None:
    """An empty commit touches no file."""
    storage = FaultyStorage()
    journal = Journal(storage, tmp_path / "j.jsonl")
    storage.calls.clear()
    journal.commit()
    assert storage.calls == []
    journal.close()


def test_close_commits_pending_records(tmp_path: Path) -> None:
    """Closing commits what is buffered; using a closed journal is an error."""
    path = tmp_path / "j.jsonl"
    journal = Journal(Storage(), path)
    journal.append({"x": 1})
    journal.close()
    journal.close()
    assert read_journal(Storage(), path).records == [{"x": 1}]
    with pytest.raises(JournalError) as info:
        journal.append({"x": 2})
    assert str(info.value) == f"journal {path} is closed"


def test_torn_tail_is_dropped_and_reported(tmp_path: Path) -> None:
    """An incomplete last line is dropped, reported, and not counted as a bad record."""
    path = tmp_path / "j.jsonl"
    with Journal(Storage(), path) as journal:
        for i in range(3):
            journal.append({"i": i})
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    read = read_journal(Storage(), path)
    assert read.records == [{"i": 0}, {"i": 1}]
    assert read.torn_tail
    assert read.bad_records == []
    assert read.valid_length == len(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])


def test_garbled_last_line_counts_as_torn_tail(tmp_path: Path) -> None:
    """A complete but damaged last line is dropped as a torn tail."""
    path = tmp_path / "j.jsonl"
    with Journal(Storage(), path) as journal:
        journal.append({"i": 0})
        journal.append({"i": 1})
    data = path.read_bytes()
    path.write_bytes(data[:-4] + b"X" + data[-3:])
    read = read_journal(Storage(), path)
    assert (read.records, read.torn_tail, read.bad_records) == ([{"i": 0}], True, [])


def test_bad_middle_record_is_reported_and_skipped(tmp_path: Path) -> None:
    """A damaged line in the middle is skipped with its line number and reason."""
    path = tmp_path / "j.jsonl"
    with Journal(Storage(), path) as journal:
        for i in range(4):
            journal.append({"item": f"k{i}"})
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"k1", b"k9")
    lines[2] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    read = read_journal(Storage(), path)
    assert read.records == [{"item": "k0"}, {"item": "k3"}]
    crc_stored = zlib.crc32(b'{"item":"k1"}')
    crc_now = zlib.crc32(b'{"item":"k9"}')
    assert read.bad_records == [
        (2, f"crc mismatch (stored {crc_stored}, computed {crc_now})"),
        (3, "not a journal line"),
    ]
    assert not read.torn_tail


def test_record_must_be_an_object_and_json(tmp_path: Path) -> None:
    """Lines whose record is valid-CRC but not a JSON object are bad records."""
    path = tmp_path / "j.jsonl"
    good = b'{"seq":3,"crc":%d,"rec":{}}' % zlib.crc32(b"{}")
    lines = [
        b'{"seq":1,"crc":%d,"rec":[1]}' % zlib.crc32(b"[1]"),
        b'{"seq":2,"crc":%d,"rec":{"a"}}' % zlib.crc32(b'{"a"}'),
        good,
        good,
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    read = read_journal(Storage(), path)
    assert read.entries == [JournalEntry(3, {})]
    assert read.bad_records == [
        (1, "record is not an object but list"),
        (2, "record is not valid JSON: unexpected character, expected ':' after key"),
        (4, "seq 3 does not follow 3"),
    ]


def test_appending_rejects_non_dicts_and_unserialisable_values(tmp_path: Path) -> None:
    """Bad records are refused at append time and take no sequence number."""
    journal = Journal(Storage(), tmp_path / "j.jsonl")
    with pytest.raises(TypeError) as info:
        journal.append([1])  # type: ignore[arg-type]
    assert str(info.value) == "journal records must be dicts, got list"
    with pytest.raises(TypeError) as info2:
        journal.append({"x": object()})
    assert str(info2.value) == (
        "journal record cannot be written as JSON: Type is not JSON serializable: object"
    )
    assert journal.append({"x": 1}) == 1
    journal.close()


def test_failed_commit_makes_the_journal_unusable(tmp_path: Path) -> None:
    """After ENOSPC mid-commit the journal refuses further work; what landed is a prefix."""
    storage = FaultyStorage()
    path = tmp_path / "j.jsonl"
    journal = Journal(storage, path)
    journal.append({"i": 0})
    journal.commit()
    for i in range(1, 4):
        journal.append({"i": i})
    storage.fail("write", errno.ENOSPC)
    with pytest.raises(StorageError) as info:
        journal.commit()
    assert str(info.value) == (
        f"cannot append to journal segment {path}: No space left on device (ENOSPC)"
    )
    with pytest.raises(JournalError) as info2:
        journal.append({"i": 4})
    assert str(info2.value) == (
        f"journal {path} is unusable after a failed commit ({info.value}); "
        "save a snapshot and open a new journal"
    )
    journal.close()
    storage.clear()
    read = read_journal(storage, path)
    assert read.records[0] == {"i": 0}
    assert read.records == [{"i": i} for i in range(len(read.records))]


def test_seq_continues_in_a_new_segment(tmp_path: Path) -> None:
    """A journal opened with next_seq continues the numbering in a new file."""
    storage = Storage()
    with Journal(storage, tmp_path / "journal-000000.jsonl") as first:
        first.append({"a": 1})
        first.append({"a": 2})
    with Journal(storage, tmp_path / "journal-000001.jsonl", next_seq=first.next_seq) as second:
        assert second.append({"a": 3}) == 3
    read = read_journal(storage, tmp_path / "journal-000001.jsonl", after_seq=2)
    assert read.entries == [JournalEntry(3, {"a": 3})]
    stale = read_journal(storage, tmp_path / "journal-000000.jsonl", after_seq=1)
    assert stale.bad_records == [(1, "seq 1 does not follow 1")]


def test_next_seq_must_be_positive(tmp_path: Path) -> None:
    """A journal cannot start at seq 0."""
    with pytest.raises(ValueError, match=r"^next_seq must be at least 1, got 0$"):
        Journal(Storage(), tmp_path / "j.jsonl", next_seq=0)
