"""The checkpoint store of one job: snapshots, journal segments, retention and recovery.

Layout of ``<root>/<job_id>/`` (created 0o700)::

    .lock                        flock held by the running job; holds its pid
    checkpoint-000012.json       snapshot 12 (``.json.gz`` gzipped, ``.json.enc`` encrypted)
    checkpoint-000011.json.corrupt   a damaged snapshot, kept for inspection
    journal-000012.jsonl         journal records after snapshot 12
    journal-000000.jsonl         journal records before the first snapshot

Recovery, as an owner of a job does it (everything here is synchronous and blocking;
call it from a worker thread)::

    store = CheckpointStore(root, job_id, key=load_key())
    store.lock()                                  # JobLockedError if another run has it
    loaded = store.latest_valid()                 # newest snapshot that decodes
    replay = store.journal_after(loaded.sequence) # records since that snapshot
    journal = store.open_journal()                # appends after them
    ...
    journal.append(record); journal.commit()      # each completed item, durable
    ...
    journal.commit()
    store.save(Checkpoint(job_id=job_id, sequence_number=store.next_sequence(), ...))
    journal.close(); journal = store.open_journal(next_seq=journal.next_seq)

Rules
    - Sequence numbers never repeat: ``next_sequence()`` is one more than any number used by
      a snapshot, a quarantined snapshot or a journal segment, and ``save`` refuses smaller
      ones. A new journal segment starts after each snapshot.
    - ``latest_valid`` tries snapshots newest first. A damaged one is renamed
      ``*.corrupt`` and reported in ``LoadResult.corrupted``, and the previous one is
      tried; replaying every segment from the chosen snapshot on rebuilds what was lost.
      A snapshot of a newer schema major (``CheckpointVersionError``) or one that cannot be
      decrypted (``CheckpointKeyError``) is not damaged: the load stops with that error
      and nothing is renamed or overwritten, since falling back would discard newer work.
    - Retention after each ``save``: once the newest ``retention`` snapshots have been
      verified, older snapshots are deleted, and so are the journal segments numbered
      below the oldest snapshot kept (no kept snapshot can need them). Unverified snapshots
      newer than that are kept; the newest valid snapshot is never deleted; quarantined
      files are never deleted automatically. A retention failure is logged, not raised:
      the new snapshot is already safe.

Events
    ``events=`` takes a callable ``(event_type, data)`` called synchronously, from whatever
    thread runs the store, with the seeds' checkpoint events: ``checkpoint_created``
    (sequence_number, id, path, size), ``checkpoint_loaded`` (sequence_number, id, path),
    ``checkpoint_corrupted`` (path, moved_to, reason) and ``checkpoint_deleted``
    (sequence_number, path, reason: ``"retention"`` or ``"requested"``). Keep it cheap.

Configuration
    The seeds' ``CheckpointConfiguration`` maps as ``storage_path`` -> ``root_dir``,
    ``retention_count`` -> ``retention``, ``compression_enabled`` -> ``gzip``,
    ``encryption_enabled`` -> ``key=load_key()`` (which must then not be ``None``).
    Checksums are always verified: there is no switch to load unverified state.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from actors.journal import Journal, JournalEntry, read_journal
from actors.snapshot import (
    Checkpoint,
    CheckpointCorruptionError,
    CheckpointCreationError,
    CheckpointError,
    CheckpointKeyError,
    CheckpointNotFoundError,
    CheckpointStatus,
    CheckpointValidationError,
    CheckpointVersionError,
    check_key,
    decode,
    encode,
    verify,
)
from actors.storage import LockHandle, Storage, StorageError

__all__ = [
    "CRASH_BEFORE_RENAME",
    "CheckpointStore",
    "JobLockedError",
    "LoadResult",
    "Replay",
    "SnapshotInfo",
    "validate_job_id",
]

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], None]

CRASH_BEFORE_RENAME = "snapshot:after_fsync_before_rename"

_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SNAPSHOT_RE = re.compile(r"checkpoint-(\d{6,})\.json(\.gz|\.enc)?")
_QUARANTINED_RE = re.compile(r"checkpoint-(\d{6,})\.json(?:\.gz|\.enc)?\.corrupt(?:-\d+)?")
_SEGMENT_RE = re.compile(r"journal-(\d{6,})\.jsonl")
_TEMP_RE = re.compile(r"\..+\.tmp-[0-9a-f]+")


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a safe directory name, else raise ``ValueError``.

    Rule: 1 to 128 characters, letters, digits, ``.``, ``_`` and ``-`` only, starting with
    a letter or digit, and no ``..``.
    """
    if not isinstance(job_id, str):
        raise ValueError(f"job id must be a string, got {type(job_id).__name__}")
    if not job_id:
        raise ValueError("job id must not be empty")
    if len(job_id) > 128:
        raise ValueError(f"job id {job_id!r} is too long: {len(job_id)} characters, at most 128")
    if not job_id[0].isascii() or not job_id[0].isalnum():
        raise ValueError(f"job id {job_id!r} must start with a letter or digit")
    if not _JOB_ID_RE.fullmatch(job_id):
        bad = next(c for c in job_id if not (c.isascii() and (c.isalnum() or c in "._-")))
        raise ValueError(
            f"job id {job_id!r} contains {bad!r}: only letters, digits, '.', '_' and '-' "
            "are allowed"
        )
    if ".." in job_id:
        raise ValueError(f"job id {job_id!r} must not contain '..'")
    return job_id


class JobLockedError(CheckpointError):
    """Another process holds the job's lock; ``pid`` is its process id when known."""

    def __init__(self, job_id: str, pid: int | None, path: Path) -> None:
        self.job_id = job_id
        self.pid = pid
        self.path = path
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"job {job_id!r} is locked by {holder} (lock file {path})")


@attrs.frozen
class LoadResult:
    """The outcome of ``latest_valid``: the chosen snapshot (or none) and what was skipped.

    ``corrupted`` lists ``(path, reason)`` for each damaged snapshot met on the way, with
    the path it now has (``*.corrupt``).
    """

    checkpoint: Checkpoint | None
    path: Path | None
    corrupted: list[tuple[Path, str]]

    @property
    def sequence(self) -> int:
        """The chosen snapshot's sequence number, or 0 when there is none."""
        return self.checkpoint.sequence_number if self.checkpoint is not None else 0


@attrs.frozen
class Replay:
    """Journal records after snapshot ``after_sequence``, across its segments, in order.

    ``torn_tails`` names segments whose torn last line was dropped; ``bad_records`` holds
    ``(segment, line_no, reason)`` for skipped lines.
    """

    after_sequence: int
    segments: list[Path]
    entries: list[JournalEntry]
    torn_tails: list[Path]
    bad_records: list[tuple[Path, int, str]]

    @property
    def records(self) -> list[dict[str, Any]]:
        return [e.record for e in self.entries]

    @property
    def last_seq(self) -> int:
        """The highest journal ``seq`` read, or 0 when there is none."""
        return self.entries[-1].seq if self.entries else 0


@attrs.frozen
class SnapshotInfo:
    """One snapshot file as ``list()`` sees it; the id, timestamp and status need a valid file."""

    sequence_number: int
    path: Path
    size: int
    valid: bool
    quarantined: bool
    reason: str | None = None
    id: str | None = None
    timestamp: datetime | None = None
    status: CheckpointStatus | None = None


@attrs.frozen
class _Listing:
    snapshots: dict[int, str]
    quarantined: dict[int, list[str]]
    segments: dict[int, str]
    temps: list[str]

    def highest(self) -> int:
        return max([*self.snapshots, *self.quarantined, *self.segments], default=0)


class CheckpointStore:
    """Snapshots and journal segments of one job under ``root_dir/job_id`` (module docstring).

    ``retention`` (>= 1) snapshots are kept; ``gzip`` and ``key`` (32 bytes, AES-GCM)
    choose how new snapshots are written; any format is read. ``events`` receives the
    checkpoint events. Raises ``ValueError`` for a bad job id or retention and
    ``CheckpointKeyError`` for an unusable key.
    """

    def __init__(
        self,
        root_dir: str | Path,
        job_id: str,
        *,
        storage: Storage | None = None,
        retention: int = 10,
        gzip: bool = False,
        key: bytes | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.job_id = validate_job_id(job_id)
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            raise ValueError(f"retention must be a whole number of at least 1, got {retention!r}")
        if key is not None:
            check_key(key)
        self.directory = Path(root_dir) / self.job_id
        self.storage = storage if storage is not None else Storage()
        self.retention = retention
        self.gzip = gzip
        self.key = key
        self._verified: set[str] = set()
        self._lock: LockHandle | None = None
        self._events = events

    def _emit(self, event_type: str, **data: Any) -> None:
        if self._events is not None:
            self._events(event_type, data)

    # -- names ---------------------------------------------------------------------------

    def snapshot_path(self, seq: int) -> Path:
        """Where snapshot ``seq`` is written with the current settings."""
        suffix = ".json.enc" if self.key is not None else ".json.gz" if self.gzip else ".json"
        return self.directory / f"checkpoint-{seq:06d}{suffix}"

    def segment_path(self, seq: int) -> Path:
        """The journal segment that follows snapshot ``seq`` (0: before the first one)."""
        return self.directory / f"journal-{seq:06d}.jsonl"

    def _scan(self) -> _Listing:
        try:
            names = self.storage.listdir(self.directory, what="job directory")
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
            names = []
        snapshots: dict[int, str] = {}
        quarantined: dict[int, list[str]] = {}
        segments: dict[int, str] = {}
        temps: list[str] = []
        for name in names:
            if m := _SNAPSHOT_RE.fullmatch(name):
                snapshots[int(m[1])] = name
            elif m := _QUARANTINED_RE.fullmatch(name):
                quarantined.setdefault(int(m[1]), []).append(name)
            elif m := _SEGMENT_RE.fullmatch(name):
                segments[int(m[1])] = name
            elif _TEMP_RE.fullmatch(name):
                temps.append(name)
        return _Listing(snapshots, quarantined, segments, temps)

    def next_sequence(self) -> int:
        """One more than every sequence number used by any snapshot or segment file."""
        return self._scan().highest() + 1

    # -- lock ----------------------------------------------------------------------------

    def lock(self) -> LockHandle:
        """Take the job's exclusive lock (non-blocking) and sweep leftover temporary files.

        Raises ``JobLockedError`` naming the holder's pid when another process has it.
        The lock lasts until ``unlock()``, the handle's release, or the process's end.
        """
        if self._lock is not None and self._lock.held:
            return self._lock
        self.storage.makedirs(self.directory, what="job directory")
        path = self.directory / ".lock"
        try:
            handle = self.storage.lock(path, what="job lock file")
        except StorageError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            raise JobLockedError(self.job_id, self._holder(path), path) from None
        self._lock = handle
        listing = self._scan()
        for name in listing.temps:
            try:
                self.storage.unlink(self.directory / name, what="temporary file", missing_ok=True)
            except StorageError as exc:
                log.warning("cannot remove leftover temporary file: %s", exc)
        return handle

    def _holder(self, path: Path) -> int | None:
        try:
            text = self.storage.read(path, what="job lock file").decode("ascii", "replace")
        except StorageError:
            return None
        text = text.strip()
        return int(text) if text.isdigit() else None

    def unlock(self) -> None:
        """Release the lock taken by ``lock()``, if any."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- saving --------------------------------------------------------------------------

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically and apply retention; return its path.

        Raises ``CheckpointValidationError`` for another job's checkpoint and
        ``CheckpointCreationError`` when the sequence number is not new or the write fails
        (the ``StorageError`` is chained).
        """
        seq = checkpoint.sequence_number
        if checkpoint.job_id != self.job_id:
            raise CheckpointValidationError(
                f"checkpoint is for job {checkpoint.job_id!r}, this store holds job {self.job_id!r}"
            )
        what = f"cannot save checkpoint {seq} of job {self.job_id!r}"
        try:
            highest = self._scan().highest()
        except StorageError as exc:
            raise CheckpointCreationError(f"{what}: {exc}") from exc
        if seq <= highest:
            raise CheckpointCreationError(
                f"{what}: sequence number must be greater than {highest}, the highest in use; "
                "use next_sequence()"
            )
        raw = encode(checkpoint, gzip=self.gzip, key=self.key)
        path = self.snapshot_path(seq)
        try:
            self.storage.makedirs(self.directory, what="job directory")
            self.storage.write_atomic(
                path, raw, what="checkpoint file", before_rename=CRASH_BEFORE_RENAME
            )
        except StorageError as exc:
            raise CheckpointCreationError(f"{what}: {exc}") from exc
        self._verified.add(path.name)
        self._emit(
            "checkpoint_created",
            sequence_number=seq,
            id=checkpoint.id,
            path=str(path),
            size=len(raw),
        )
        try:
            self._retain()
        except StorageError as exc:
            log.warning("checkpoint retention for job %r failed: %s", self.job_id, exc)
        return path

    def _is_verified(self, name: str) -> bool:
        if name in self._verified:
            return True
        try:
            verify(self.storage.read(self.directory / name, what="checkpoint file"), key=self.key)
        except (CheckpointError, StorageError):
            return False
        self._verified.add(name)
        return True

    def _retain(self) -> None:
        listing = self._scan()
        kept = 0
        floor = 0
        doomed: list[str] = []
        for seq in sorted(listing.snapshots, reverse=True):
            name = listing.snapshots[seq]
            if kept >= self.retention:
                doomed.append(name)
            elif self._is_verified(name):
                kept += 1
                floor = seq
        if kept < self.retention:
            return
        doomed += [name for seq, name in listing.segments.items() if seq < floor]
        for name in doomed:
            self.storage.unlink(self.directory / name, what="old checkpoint file", missing_ok=True)
            self._verified.discard(name)
            if m := _SNAPSHOT_RE.fullmatch(name):
                self._emit(
                    "checkpoint_deleted",
                    sequence_number=int(m[1]),
                    path=str(self.directory / name),
                    reason="retention",
                )
        if doomed:
            self.storage.fsync_dir(self.directory, what="job directory")

    # -- loading -------------------------------------------------------------------------

    def _decode(self, path: Path, raw: bytes, seq: int | None) -> Checkpoint:
        try:
            cp = decode(raw, key=self.key)
        except CheckpointCorruptionError as exc:
            raise CheckpointCorruptionError(f"{path}: {exc}") from None
        except CheckpointVersionError as exc:
            raise CheckpointVersionError(f"{path}: {exc}") from None
        except CheckpointKeyError as exc:
            raise CheckpointKeyError(f"{path}: {exc}") from None
        if seq is not None and cp.sequence_number != seq:
            raise CheckpointCorruptionError(
                f"{path}: file name says sequence {seq}, content says {cp.sequence_number}"
            )
        if cp.job_id != self.job_id:
            raise CheckpointCorruptionError(
                f"{path}: checkpoint belongs to job {cp.job_id!r}, not {self.job_id!r}"
            )
        return cp

    def latest_valid(self) -> LoadResult:
        """The newest snapshot that decodes, quarantining damaged ones on the way.

        Raises ``CheckpointVersionError`` / ``CheckpointKeyError`` (nothing renamed) and
        ``StorageError`` when a file cannot be read or listed.
        """
        listing = self._scan()
        corrupted: list[tuple[Path, str]] = []
        for seq in sorted(listing.snapshots, reverse=True):
            path = self.directory / listing.snapshots[seq]
            try:
                raw = self.storage.read(path, what="checkpoint file")
            except StorageError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise
            try:
                cp = self._decode(path, raw, seq)
            except CheckpointCorruptionError as exc:
                reason = str(exc).removeprefix(f"{path}: ")
                corrupted.append((self._quarantine(path, seq, listing, reason), reason))
                continue
            self._verified.add(path.name)
            self._emit("checkpoint_loaded", sequence_number=seq, id=cp.id, path=str(path))
            return LoadResult(cp, path, corrupted)
        return LoadResult(None, None, corrupted)

    def _quarantine(self, path: Path, seq: int, listing: _Listing, reason: str) -> Path:
        taken = set(listing.quarantined.get(seq, []))
        target = path.with_name(path.name + ".corrupt")
        n = 1
        while target.name in taken:
            n += 1
            target = path.with_name(f"{path.name}.corrupt-{n}")
        log.warning("checkpoint %s is corrupt (%s); kept as %s", path, reason, target.name)
        try:
            self.storage.rename(path, target, what="corrupt checkpoint file")
            self.storage.fsync_dir(self.directory, what="job directory")
        except StorageError as exc:
            log.warning("cannot set corrupt checkpoint %s aside: %s", path, exc)
            target = path
        else:
            listing.quarantined.setdefault(seq, []).append(target.name)
        self._verified.discard(path.name)
        self._emit("checkpoint_corrupted", path=str(path), moved_to=str(target), reason=reason)
        return target

    # -- journal -------------------------------------------------------------------------

    def journal_after(self, seq: int) -> Replay:
        """Journal records after snapshot ``seq``: every segment numbered ``seq`` or more.

        ``seq`` 0 means from the start. ``seq`` numbers must grow across segments; a record
        that breaks that is reported in ``bad_records`` and skipped. Raises ``StorageError``
        when a segment cannot be read.
        """
        listing = self._scan()
        numbers = sorted(n for n in listing.segments if n >= seq)
        segments = [self.directory / listing.segments[n] for n in numbers]
        entries: list[JournalEntry] = []
        torn: list[Path] = []
        bad: list[tuple[Path, int, str]] = []
        for path in segments:
            read = read_journal(self.storage, path, after_seq=entries[-1].seq if entries else 0)
            entries += read.entries
            bad += [(path, line, reason) for line, reason in read.bad_records]
            if read.torn_tail:
                torn.append(path)
        return Replay(seq, segments, entries, torn, bad)

    def open_journal(self, next_seq: int | None = None) -> Journal:
        """A ``Journal`` appending to the newest segment (created when missing).

        A torn last line left by a crash is cut off first (atomic rewrite). Without
        ``next_seq`` the numbering continues after the last record on disk.
        """
        listing = self._scan()
        path = self.segment_path(listing.highest())
        self.storage.makedirs(self.directory, what="job directory")
        if path.name in listing.segments.values():
            read = read_journal(self.storage, path)
            if read.torn_tail:
                data = self.storage.read(path, what="journal segment")
                self.storage.write_atomic(path, data[: read.valid_length], what="journal segment")
        if next_seq is None:
            next_seq = 1
            for n in sorted(listing.segments, reverse=True):
                last = read_journal(self.storage, self.directory / listing.segments[n]).last_seq
                if last:
                    next_seq = last + 1
                    break
        return Journal(self.storage, path, next_seq=next_seq)

    # -- inspection ----------------------------------------------------------------------

    def _files(self) -> Iterable[tuple[int, str, bool]]:
        listing = self._scan()
        for seq, name in listing.snapshots.items():
            yield seq, name, False
        for seq, names in listing.quarantined.items():
            for name in names:
                yield seq, name, True

    def list(self) -> list[SnapshotInfo]:
        """Every snapshot file, quarantined ones included, by sequence number."""
        infos: list[SnapshotInfo] = []
        for seq, name, quarantined in sorted(self._files()):
            path = self.directory / name
            try:
                raw = self.storage.read(path, what="checkpoint file")
            except StorageError as exc:
                infos.append(SnapshotInfo(seq, path, 0, False, quarantined, str(exc)))
                continue
            try:
                cp = self._decode(path, raw, seq)
            except CheckpointError as exc:
                reason = str(exc).removeprefix(f"{path}: ")
                infos.append(SnapshotInfo(seq, path, len(raw), False, quarantined, reason))
                continue
            infos.append(
                SnapshotInfo(
                    seq,
                    path,
                    len(raw),
                    True,
                    quarantined,
                    None,
                    cp.id,
                    cp.timestamp,
                    cp.status,
                )
            )
        return infos

    def _find(self, seq_or_id: int | str) -> tuple[Path, int]:
        files = sorted(self._files(), key=lambda f: (f[0], not f[2]), reverse=True)
        if isinstance(seq_or_id, int) or seq_or_id.isdigit():
            # Newest first, and a live snapshot before a quarantined one of the same number.
            for seq, name, _quarantined in files:
                if seq == int(seq_or_id):
                    return self.directory / name, seq
        else:
            for seq, name, _quarantined in files:
                try:
                    raw = self.storage.read(self.directory / name, what="checkpoint file")
                    if verify(raw, key=self.key).get("id") == seq_or_id:
                        return self.directory / name, seq
                except (CheckpointError, StorageError):
                    continue
        raise CheckpointNotFoundError(f"job {self.job_id!r} has no checkpoint {seq_or_id!r}")

    def show(self, seq_or_id: int | str) -> Checkpoint:
        """The checkpoint with this sequence number or id (quarantined ones too).

        Raises ``CheckpointNotFoundError`` or the decoding error, prefixed by the path.
        """
        path, seq = self._find(seq_or_id)
        return self._decode(path, self.storage.read(path, what="checkpoint file"), seq)

    def verify(self, seq_or_id: int | str) -> tuple[bool, str]:
        """``(True, "ok")`` or ``(False, reason)``; raises ``CheckpointNotFoundError``."""
        path, seq = self._find(seq_or_id)
        try:
            self._decode(path, self.storage.read(path, what="checkpoint file"), seq)
        except (CheckpointError, StorageError) as exc:
            return False, str(exc).removeprefix(f"{path}: ")
        return True, "ok"

    def delete(self, seq_or_id: int | str) -> Path:
        """Delete one snapshot file and return its path; journal segments are left alone.

        Raises ``CheckpointNotFoundError`` or ``StorageError``.
        """
        path, seq = self._find(seq_or_id)
        self.storage.unlink(path, what="checkpoint file")
        self.storage.fsync_dir(self.directory, what="job directory")
        self._verified.discard(path.name)
        self._emit("checkpoint_deleted", sequence_number=seq, path=str(path), reason="requested")
        return path
