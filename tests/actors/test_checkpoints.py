"""The checkpoint store: saving, retention, recovery, journal replay, locks and crashes."""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import actors
from actors.checkpoints import CheckpointStore, JobLockedError, validate_job_id
from actors.journal import JournalEntry
from actors.snapshot import (
    Checkpoint,
    CheckpointCreationError,
    CheckpointData,
    CheckpointKeyError,
    CheckpointNotFoundError,
    CheckpointStatus,
    CheckpointValidationError,
    CheckpointVersionError,
    ProgressState,
    encode,
)
from actors.storage import FaultyStorage

JOB = "league-2026"
KEY = bytes(range(32))
ROOT_OF_PROJECT = str(Path(actors.__file__).resolve().parent.parent)


def checkpoint(seq: int, done: int = 0, job: str = JOB) -> Checkpoint:
    items = [f"match-{i:06d}/summary" for i in range(1, done + 1)]
    return Checkpoint(
        job_id=job,
        sequence_number=seq,
        data=CheckpointData(
            job_state={"done": done},
            progress=ProgressState(completed_items=items, total_count=100),
        ),
    )


def names(store: CheckpointStore) -> list[str]:
    return sorted(p.name for p in store.directory.iterdir() if p.name != ".lock")


def run_child(
    code: str, root: Path, crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SCOREWISE_TEST_CRASH_AT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT_OF_PROJECT, env.get("PYTHONPATH")]))
    if crash_at is not None:
        env["SCOREWISE_TEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-c", code, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_job_id_validation() -> None:
    """Job ids must be safe directory names; each rule has its own message."""
    for good in ("a", "league-2026", "A.b_c-9", "x" * 128):
        assert validate_job_id(good) == good
    cases = {
        "": "job id must not be empty",
        "x" * 129: f"job id {'x' * 129!r} is too long: 129 characters, at most 128",
        ".hidden": "job id '.hidden' must start with a letter or digit",
        "-flag": "job id '-flag' must start with a letter or digit",
        "a/b": "job id 'a/b' contains '/': only letters, digits, '.', '_' and '-' are allowed",
        "a b": "job id 'a b' contains ' ': only letters, digits, '.', '_' and '-' are allowed",
        "é": "job id 'é' must start with a letter or digit",
        "a..b": "job id 'a..b' must not contain '..'",
    }
    for bad, message in cases.items():
        with pytest.raises(ValueError) as info:
            validate_job_id(bad)
        assert str(info.value) == message
    with pytest.raises(ValueError) as info2:
        CheckpointStore("/tmp", "../etc")
    assert str(info2.value) == "job id '../etc' must start with a letter or digit"


def test_store_arguments_are_checked(tmp_path: Path) -> None:
    """Retention below one and a short key are refused when the store is built."""
    with pytest.raises(
        ValueError, match=r"^retention must be a whole number of at least 1, got 0$"
    ):
        CheckpointStore(tmp_path, JOB, retention=0)
    with pytest.raises(CheckpointKeyError, match=r"^checkpoint key must be 32 bytes, got 3 bytes$"):
        CheckpointStore(tmp_path, JOB, key=b"abc")


def test_save_and_load_the_latest(tmp_path: Path) -> None:
    """Saved snapshots are private files named by sequence; the newest loads."""
    store = CheckpointStore(tmp_path, JOB)
    assert store.next_sequence() == 1
    assert store.latest_valid().checkpoint is None
    store.save(checkpoint(1, done=1))
    path = store.save(checkpoint(2, done=2))
    assert path == tmp_path / JOB / "checkpoint-000002.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    loaded = store.latest_valid()
    assert loaded.path == path
    assert loaded.sequence == 2
    assert loaded.checkpoint is not None
    assert loaded.checkpoint.data.job_state == {"done": 2}
    assert loaded.corrupted == []
    assert store.next_sequence() == 3


def test_gzip_and_encrypted_stores_use_their_suffix(tmp_path: Path) -> None:
    """The file suffix says how a snapshot was written; any store reads any format."""
    CheckpointStore(tmp_path, JOB, gzip=True).save(checkpoint(1))
    secret = CheckpointStore(tmp_path, JOB, gzip=True, key=KEY)
    secret.save(checkpoint(2))
    assert names(secret) == ["checkpoint-000001.json.gz", "checkpoint-000002.json.enc"]
    assert secret.latest_valid().sequence == 2
    assert CheckpointStore(tmp_path, JOB, key=KEY).show(1).sequence_number == 1


def test_save_refuses_reused_sequence_and_other_jobs(tmp_path: Path) -> None:
    """A snapshot must be newer than every file and belong to the store's job."""
    store = CheckpointStore(tmp_path, JOB)
    store.save(checkpoint(3))
    with pytest.raises(CheckpointCreationError) as info:
        store.save(checkpoint(3))
    assert str(info.value) == (
        f"cannot save checkpoint 3 of job {JOB!r}: sequence number must be greater than 3, "
        "the highest in use; use next_sequence()"
    )
    with pytest.raises(CheckpointValidationError) as info2:
        store.save(checkpoint(4, job="other"))
    assert str(info2.value) == f"checkpoint is for job 'other', this store holds job {JOB!r}"


def test_save_on_a_full_disk_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    """ENOSPC while saving raises a creation error and leaves the old snapshot loadable."""
    storage = FaultyStorage()
    store = CheckpointStore(tmp_path, JOB, storage=storage)
    store.save(checkpoint(1, done=5))
    storage.fail("write", errno.ENOSPC)
    with pytest.raises(CheckpointCreationError) as info:
        store.save(checkpoint(2, done=9))
    target = store.directory / "checkpoint-000002.json"
    assert str(info.value) == (
        f"cannot save checkpoint 2 of job {JOB!r}: cannot write checkpoint file {target}: "
        "No space left on device (ENOSPC)"
    )
    assert info.value.__cause__ is not None
    assert getattr(info.value.__cause__, "errno", None) == errno.ENOSPC
    assert names(store) == ["checkpoint-000001.json"]
    storage.clear()
    assert store.latest_valid().checkpoint == store.show(1)


def test_latest_valid_falls_back_past_a_corrupt_file(tmp_path: Path) -> None:
    """A damaged newest snapshot is renamed *.corrupt, reported, and the previous one used."""
    store = CheckpointStore(tmp_path, JOB)
    store.save(checkpoint(1, done=1))
    newest = store.save(checkpoint(2, done=2))
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    loaded = CheckpointStore(tmp_path, JOB).latest_valid()
    assert loaded.sequence == 1
    quarantined = store.directory / "checkpoint-000002.json.corrupt"
    assert loaded.corrupted == [
        (
            quarantined,
            "checksum mismatch: the content does not hash to the stored SHA-256 "
            "(the file is damaged or was edited)",
        )
    ]
    assert names(store) == ["checkpoint-000001.json", "checkpoint-000002.json.corrupt"]
    assert store.next_sequence() == 3
    infos = store.list()
    assert [(i.sequence_number, i.valid, i.quarantined) for i in infos] == [
        (1, True, False),
        (2, False, True),
    ]
    assert infos[0].status is CheckpointStatus.COMPLETED
    assert store.verify(2) == (False, loaded.corrupted[0][1])


def test_every_snapshot_corrupt_gives_no_checkpoint(tmp_path: Path) -> None:
    """When nothing decodes, the result is empty and lists every quarantined file."""
    store = CheckpointStore(tmp_path, JOB)
    store.save(checkpoint(1)).write_bytes(b'{"truncated": ')
    loaded = store.latest_valid()
    assert loaded.checkpoint is None
    assert loaded.sequence == 0
    assert loaded.corrupted == [
        (
            store.directory / "checkpoint-000001.json.corrupt",
            "not valid JSON: unexpected end of data at byte 14",
        )
    ]


def test_a_file_under_the_wrong_number_is_corrupt(tmp_path: Path) -> None:
    """A snapshot whose content disagrees with its file name is not trusted."""
    store = CheckpointStore(tmp_path, JOB)
    store.save(checkpoint(1))
    (store.directory / "checkpoint-000002.json").write_bytes(encode(checkpoint(7)))
    loaded = store.latest_valid()
    assert loaded.sequence == 1
    assert loaded.corrupted[0][1] == "file name says sequence 2, content says 7"


def test_quarantine_rename_failure_still_falls_back(tmp_path: Path) -> None:
    """If the corrupt file cannot be renamed it is reported where it is."""
    storage = FaultyStorage()
    store = CheckpointStore(tmp_path, JOB, storage=storage)
    store.save(checkpoint(1))
    bad = store.save(checkpoint(2))
    bad.write_bytes(b"")
    storage.fail("rename", errno.EROFS)
    loaded = store.latest_valid()
    assert loaded.sequence == 1
    assert loaded.corrupted == [(bad, "file is empty")]


def test_key_error_aborts_the_load_and_renames_nothing(tmp_path: Path) -> None:
    """A snapshot encrypted with another key stops the load; no file is renamed."""
    CheckpointStore(tmp_path, JOB).save(checkpoint(1))
    CheckpointStore(tmp_path, JOB, key=KEY).save(checkpoint(2))
    before = names(CheckpointStore(tmp_path, JOB))
    path = tmp_path / JOB / "checkpoint-000002.json.enc"
    with pytest.raises(CheckpointKeyError) as info:
        CheckpointStore(tmp_path, JOB).latest_valid()
    assert str(info.value) == (
        f"{path}: checkpoint is encrypted and no key was given (set SCOREWISE_CHECKPOINT_KEY)"
    )
    with pytest.raises(CheckpointKeyError):
        CheckpointStore(tmp_path, JOB, key=bytes(32)).latest_valid()
    assert names(CheckpointStore(tmp_path, JOB)) == before


def test_version_error_aborts_the_load_and_renames_nothing(tmp_path: Path) -> None:
    """A snapshot from a newer major schema stops the load untouched."""
    store = CheckpointStore(tmp_path, JOB)
    store.save(checkpoint(1))
    future = store.directory / "checkpoint-000002.json"
    future.write_bytes(b'{"version": "2.0.0", "checksum": "' + b"0" * 64 + b'"}')
    with pytest.raises(CheckpointVersionError) as info:
        store.latest_valid()
    assert str(info.value) == (
        f"{future}: checkpoint schema 2.0.0 is newer than this program supports (1.x); "
        "upgrade scorewise"
    )
    assert names(store) == ["checkpoint-000001.json", "checkpoint-000002.json"]


def test_retention_keeps_the_newest_n_and_their_segments(tmp_path: Path) -> None:
    """With retention 3, older snapshots go, with the journal segments no kept one needs."""
    store = CheckpointStore(tmp_path, JOB, retention=3)
    with store.open_journal() as journal:
        journal.append({"before": "first snapshot"})
    for seq in range(1, 6):
        store.save(checkpoint(seq))
        with store.open_journal() as journal:
            journal.append({"after": seq})
    assert names(store) == [
        "checkpoint-000003.json",
        "checkpoint-000004.json",
        "checkpoint-000005.json",
        "journal-000003.jsonl",
        "journal-000004.jsonl",
        "journal-000005.jsonl",
    ]


def test_retention_counts_only_verified_snapshots(tmp_path: Path) -> None:
    """Damaged snapshots do not count toward retention; verified older ones are kept."""
    CheckpointStore(tmp_path, JOB, retention=10).save(checkpoint(1))
    first = CheckpointStore(tmp_path, JOB, retention=10)
    for seq in (2, 3):
        first.save(checkpoint(seq))
    (tmp_path / JOB / "checkpoint-000003.json").write_bytes(b"{}")
    store = CheckpointStore(tmp_path, JOB, retention=2)
    store.save(checkpoint(4))
    assert names(store) == [
        "checkpoint-000002.json",
        "checkpoint-000003.json",
        "checkpoint-000004.json",
    ]
    store.save(checkpoint(5))
    assert names(store) == ["checkpoint-000004.json", "checkpoint-000005.json"]


def test_retention_never_deletes_the_newest_valid_snapshot(tmp_path: Path) -> None:
    """Even with retention 1 and damaged neighbours, the newest valid snapshot stays."""
    store = CheckpointStore(tmp_path, JOB, retention=1)
    store.save(checkpoint(1))
    store.save(checkpoint(2))
    assert names(store) == ["checkpoint-000002.json"]
    assert store.latest_valid().sequence == 2


def test_retention_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed cleanup does not fail the save that already succeeded."""
    storage = FaultyStorage()
    store = CheckpointStore(tmp_path, JOB, storage=storage, retention=1)
    store.save(checkpoint(1))
    storage.fail("unlink", errno.EACCES)
    with caplog.at_level(logging.WARNING, logger="actors.checkpoints"):
        store.save(checkpoint(2))
    old = store.directory / "checkpoint-000001.json"
    assert caplog.messages == [
        f"checkpoint retention for job {JOB!r} failed: cannot delete old checkpoint file "
        f"{old}: Permission denied (EACCES)"
    ]
    assert store.latest_valid().sequence == 2


def test_journal_replay_after_the_chosen_snapshot(tmp_path: Path) -> None:
    """Replay covers every segment from the snapshot on, with seq numbers continuing."""
    store = CheckpointStore(tmp_path, JOB)
    with store.open_journal() as journal:
        assert journal.append({"item": "a"}) == 1
    store.save(checkpoint(1))
    with store.open_journal(next_seq=journal.next_seq) as journal:
        assert journal.path == str(store.segment_path(1))
        journal.append({"item": "b"})
        journal.append({"item": "c"})
    store.save(checkpoint(2))
    with store.open_journal() as journal:
        assert journal.next_seq == 4
        journal.append({"item": "d"})
    assert store.journal_after(2).entries == [JournalEntry(4, {"item": "d"})]
    replay = store.journal_after(1)
    assert [e.seq for e in replay.entries] == [2, 3, 4]
    assert replay.records == [{"item": "b"}, {"item": "c"}, {"item": "d"}]
    assert replay.segments == [store.segment_path(1), store.segment_path(2)]
    assert store.journal_after(0).last_seq == 4
    assert (replay.torn_tails, replay.bad_records) == ([], [])


def test_replay_reports_bad_records_per_segment(tmp_path: Path) -> None:
    """A damaged middle line is reported with its segment and skipped."""
    store = CheckpointStore(tmp_path, JOB)
    with store.open_journal() as journal:
        for i in range(3):
            journal.append({"i": i})
    segment = store.segment_path(0)
    lines = segment.read_bytes().split(b"\n")
    lines[1] = b"oops"
    segment.write_bytes(b"\n".join(lines))
    replay = store.journal_after(0)
    assert replay.records == [{"i": 0}, {"i": 2}]
    assert replay.bad_records == [(segment, 2, "not a journal line")]


def test_show_verify_delete_by_sequence_and_id(tmp_path: Path) -> None:
    """Snapshots are found by sequence number (int or digits) or by id."""
    store = CheckpointStore(tmp_path, JOB)
    first = checkpoint(1)
    store.save(first)
    store.save(checkpoint(2))
    assert store.show(1).id == first.id
    assert store.show("2").sequence_number == 2
    assert store.show(first.id).sequence_number == 1
    assert store.verify(first.id) == (True, "ok")
    assert store.list()[0].id == first.id
    assert store.delete(first.id) == store.directory / "checkpoint-000001.json"
    with pytest.raises(CheckpointNotFoundError) as info:
        store.show(1)
    assert str(info.value) == f"job {JOB!r} has no checkpoint 1"
    with pytest.raises(CheckpointNotFoundError):
        store.verify("no-such-id")


def test_events_follow_the_checkpoint_lifecycle(tmp_path: Path) -> None:
    """The store reports created, loaded, corrupted and deleted checkpoints."""
    seen: list[tuple[str, dict[str, object]]] = []
    store = CheckpointStore(tmp_path, JOB, retention=1, events=lambda t, d: seen.append((t, d)))
    first = checkpoint(1)
    store.save(first)
    second = store.save(checkpoint(2))
    one = str(store.directory / "checkpoint-000001.json")
    assert [t for t, _ in seen] == [
        "checkpoint_created",
        "checkpoint_created",
        "checkpoint_deleted",
    ]
    assert seen[0][1] == {
        "sequence_number": 1,
        "id": first.id,
        "path": one,
        "size": len(encode(first)),
    }
    assert seen[2][1] == {"sequence_number": 1, "path": one, "reason": "retention"}
    seen.clear()
    second.write_bytes(b"junk")
    assert store.latest_valid().checkpoint is None
    quarantined = store.directory / "checkpoint-000002.json.corrupt"
    store.delete(2)
    reason = "not valid JSON: unexpected character, expected a JSON value at byte 0"
    assert seen == [
        (
            "checkpoint_corrupted",
            {"path": str(second), "moved_to": str(quarantined), "reason": reason},
        ),
        (
            "checkpoint_deleted",
            {"sequence_number": 2, "path": str(quarantined), "reason": "requested"},
        ),
    ]


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    """A second process holding the lock makes lock() fail with its pid."""
    code = (
        "import sys\n"
        "from actors.checkpoints import CheckpointStore\n"
        f"CheckpointStore(sys.argv[1], {JOB!r}).lock()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT_OF_PROJECT)
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "locked\n"
        store = CheckpointStore(tmp_path, JOB)
        with pytest.raises(JobLockedError) as info:
            store.lock()
        lock_path = tmp_path / JOB / ".lock"
        assert (
            str(info.value)
            == f"job {JOB!r} is locked by process {child.pid} (lock file {lock_path})"
        )
        assert info.value.pid == child.pid
        child.stdin.close()
        assert child.wait(timeout=30) == 0
        handle = store.lock()
        assert lock_path.read_text() == f"{os.getpid()}\n"
        store.unlock()
        assert not handle.held
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_crash_mid_group_commit_leaves_a_torn_tail_that_is_dropped(tmp_path: Path) -> None:
    """A process killed halfway through a group commit loses only that group's tail."""
    store = CheckpointStore(tmp_path, JOB)
    store.save(checkpoint(1))
    with store.open_journal() as journal:
        journal.append({"item": "early-0"})
        journal.append({"item": "early-1"})
    code = (
        "import sys\n"
        "from actors.checkpoints import CheckpointStore\n"
        f"store = CheckpointStore(sys.argv[1], {JOB!r})\n"
        "store.lock()\n"
        "journal = store.open_journal()\n"
        "for i in range(3):\n"
        "    journal.append({'item': f'late-{i}'})\n"
        "journal.commit()\n"
        "print('not reached')\n"
    )
    child = run_child(code, tmp_path, crash_at="journal:mid_group_commit")
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout == ""
    recovered = CheckpointStore(tmp_path, JOB)
    recovered.lock()
    loaded = recovered.latest_valid()
    assert loaded.sequence == 1
    replay = recovered.journal_after(loaded.sequence)
    assert replay.records == [{"item": "early-0"}, {"item": "early-1"}, {"item": "late-0"}]
    assert replay.torn_tails == [recovered.segment_path(1)]
    with recovered.open_journal() as journal:
        assert journal.append({"item": "again"}) == 4
    replay = recovered.journal_after(1)
    assert [e.seq for e in replay.entries] == [1, 2, 3, 4]
    assert (replay.torn_tails, replay.bad_records) == ([], [])


def test_crash_between_fsync_and_rename_keeps_the_old_snapshot(tmp_path: Path) -> None:
    """A process killed before the rename leaves the old snapshot current and valid."""
    store = CheckpointStore(tmp_path, JOB)
    store.save(checkpoint(1, done=3))
    code = (
        "import sys\n"
        "from actors.checkpoints import CheckpointStore\n"
        "from actors.snapshot import Checkpoint\n"
        f"store = CheckpointStore(sys.argv[1], {JOB!r})\n"
        "store.lock()\n"
        f"store.save(Checkpoint(job_id={JOB!r}, sequence_number=store.next_sequence()))\n"
        "print('not reached')\n"
    )
    child = run_child(code, tmp_path, crash_at="snapshot:after_fsync_before_rename")
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = [n for n in names(store) if n.startswith(".checkpoint-000002.json.tmp-")]
    assert len(leftovers) == 1
    recovered = CheckpointStore(tmp_path, JOB)
    recovered.lock()
    assert names(recovered) == ["checkpoint-000001.json"]
    loaded = recovered.latest_valid()
    assert loaded.sequence == 1
    assert loaded.corrupted == []
    assert loaded.checkpoint is not None
    assert loaded.checkpoint.data.job_state == {"done": 3}
    assert recovered.next_sequence() == 2
