"""The checkpoint actor: the one writer of outcomes, and the owner of durable progress.

What is on disk, under ``<output_dir>/<job id>/``:

* ``results.jsonl`` -- one line per completed item (key, data, attempts, correlation id);
  ``failures.jsonl`` -- one line per item that failed for good. These are the job's output
  and the record of what is finished: an item counts as done only once its line is fsynced.
* ``journal-NNNNNN.jsonl`` -- every finished item again, as a record with a sequence number
  and a CRC, appended in the same group commit, after the output lines.
* ``checkpoint-NNNNNN.json`` -- snapshots of the state (done/failed/pending keys, counters,
  the browser's storage state, errors since the last snapshot, the byte lengths of the
  output files), written atomically, every ``interval`` seconds and every
  ``every_items`` finished items, and once more at every orderly stop and abort.

Group commit: records that arrive while a write is under way are written and fsynced
together in the next one; only then does the work queue hear ``("durable", ...)``. A kill -9
therefore loses at most the items in flight, and never writes an item twice.

Resume = the newest valid snapshot + the journal after it + the output lines written
after the snapshot's recorded lengths (a crash between an output line and its journal
record leaves the line, which counts). A torn last line is cut off; a corrupt snapshot is
renamed ``*.corrupt``, reported, and the previous one used.

Storage trouble (disk full, read-only, permission, vanished directory): a failed write is
cut back so no half line stays, the records stay in memory, a critical ``storage_error``
event says where and why, and the write is retried with backoff. ``on_storage_error``
decides meanwhile: ``pause`` (default) stops the work queue from handing out leases,
``continue`` lets it go on, ``abort`` stops the job with exit status 3.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import attrs
import orjson
import psutil
import structlog

from supervisor import Actor, ExitStatus

from . import serde
from .checkpoints import CheckpointStore
from .journal import Journal
from .serde import between
from .snapshot import (
    Checkpoint,
    CheckpointCreationError,
    CheckpointData,
    CheckpointMetadata,
    ErrorRecord,
    ProgressState,
    ResourceSnapshot,
)
from .storage import AppendHandle, Storage, StorageError

if TYPE_CHECKING:
    from .job import JobRuntime

__all__ = ["CheckpointActor", "CheckpointConfig", "item_digest", "read_records"]

_log = structlog.get_logger("actors.checkpoint")


@attrs.frozen
class CheckpointConfig:
    """The seeds' CheckpointConfiguration, with this project's defaults.

    Snapshots every ``interval`` s and every ``every_items`` finished items, ``retention``
    kept. ``encryption`` takes the key from ``SCOREWISE_CHECKPOINT_KEY`` or ``key_file``
    (needs the ``crypto`` extra). ``storage_path`` defaults to the job's output directory.
    """

    interval: float = attrs.field(default=300.0, validator=between(1, 86400))
    every_items: int = attrs.field(default=500, validator=between(1, 10_000_000))
    retention: int = attrs.field(default=10, validator=between(1, 1000))
    compression: bool = False
    encryption: bool = False
    key_file: str | None = None
    storage_path: str | None = None
    on_storage_error: Literal["pause", "continue", "abort"] = attrs.field(
        default="pause", validator=attrs.validators.in_(("pause", "continue", "abort")))


def item_digest(item: Mapping[str, Any]) -> str:
    """A short fingerprint of an item, to notice a changed URL on resume."""
    return hashlib.sha1(orjson.dumps(dict(item), option=orjson.OPT_SORT_KEYS),
                        usedforsecurity=False).hexdigest()[:12]


def read_records(storage: Storage, path: Path, offset: int = 0
                 ) -> tuple[list[dict[str, Any]], int, bool]:
    """Records of a JSON-lines file from byte ``offset``; the byte length up to the last
    whole line; whether a torn last line was found. Unreadable lines are skipped, logged."""
    try:
        raw = storage.read_from(path, offset, what="output file")
    except StorageError as exc:
        if exc.errno == 2:  # ENOENT: nothing written yet
            return [], 0, False
        raise
    records: list[dict[str, Any]] = []
    end = raw.rfind(b"\n") + 1
    for number, line in enumerate(raw[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            _log.warning("skipping an unreadable line", file=str(path), line=number,
                         after_byte=offset)
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            records.append(rec)
    return records, offset + end, end < len(raw)


class _Flush:
    pass


class _Snapshot:
    pass


KINDS = ("result", "failure")


class CheckpointActor(Actor):
    """See the module docstring."""

    def __init__(self, runtime: JobRuntime) -> None:
        self.runtime = runtime
        self.config: CheckpointConfig = runtime.job.checkpoint
        self.store: CheckpointStore = runtime.store
        self.storage: Storage = runtime.storage
        self.dir: Path = runtime.job_dir
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.digests: dict[str, str] = {}
        self.browser_state: dict[str, Any] | None = None
        self.buffer: list[tuple[str, str, str, bytes]] = []
        self.flush_pending = False
        self.retry_delay = 0.0
        self.trouble = False
        self.files: dict[str, AppendHandle] = {}
        self.sizes: dict[str, int] = {"result": 0, "failure": 0}
        self.journal: Journal | None = None
        self.errors: list[ErrorRecord] = []
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()
        self.processing_before = 0.0
        self.started = time.monotonic()

    def path_of(self, kind: str) -> Path:
        """The output file of ``kind`` (result or failure)."""
        return self.dir / ("results.jsonl" if kind == "result" else "failures.jsonl")

    # -- start: rebuild the state --------------------------------------------------------

    async def on_start(self) -> None:
        await anyio.to_thread.run_sync(self._recover)
        self.send_after(self.config.interval, _Snapshot())

    def _recover(self) -> None:
        self.storage.makedirs(self.dir, what="job directory")
        loaded = self.store.latest_valid()
        for path, reason in loaded.corrupted:
            _log.critical("corrupt checkpoint set aside; using the previous one",
                          path=str(path), reason=reason)
            self.tree.events.emit("checkpoint_corrupted", self.path, self.tree.correlation_id,
                                  None, file=str(path), reason=reason)
        offsets = {"result": 0, "failure": 0}
        cp = loaded.checkpoint
        if cp is not None:
            self.done = set(cp.data.progress.completed_items)
            self.failed = set(cp.data.progress.failed_items)
            self.browser_state = cp.data.browser_state
            state = cp.data.job_state
            offsets = {"result": int(state.get("results_offset", 0)),
                       "failure": int(state.get("failures_offset", 0))}
            self.digests = dict(state.get("digests", {}))
            self.processing_before = cp.metadata.processing_time
        replay = self.store.journal_after(loaded.sequence)
        for segment in replay.torn_tails:
            _log.warning("dropped a torn last journal record", segment=str(segment))
        for segment, line, reason in replay.bad_records:
            _log.error("skipped a damaged journal record", segment=str(segment), line=line,
                       reason=reason)
        for rec in replay.records:
            key = rec.get("key")
            if isinstance(key, str):
                (self.done if rec.get("kind") == "result" else self.failed).add(key)
                if rec.get("digest"):
                    self.digests[key] = rec["digest"]
        for kind in KINDS:
            self._reconcile(kind, offsets[kind])
        self.failed -= self.done
        self.journal = self.store.open_journal()
        _log.info("checkpoint state recovered", snapshot=loaded.sequence or None,
                  journal_records=len(replay.entries), done=len(self.done),
                  failed=len(self.failed))

    def _reconcile(self, kind: str, offset: int) -> None:
        path = self.path_of(kind)
        size = self.storage.size(path, what="output file")
        if size < offset:
            _log.warning("output file is shorter than the snapshot says; reading it all",
                         file=str(path), expected=offset, size=size)
            offset = 0
        records, end, torn = read_records(self.storage, path, offset)
        if torn:
            _log.warning("dropping a torn last line", file=str(path))
            self.storage.truncate(path, end, what="output file")
        target = self.done if kind == "result" else self.failed
        target.update(r["key"] for r in records)
        self.sizes[kind] = end
        self.files[kind] = self.storage.open_append(path, what=f"{kind}s file")

    # -- calls and casts -----------------------------------------------------------------

    async def handle_call(self, msg: Any) -> Any:
        match msg:
            case ("known_keys",):
                return set(self.done), set(self.failed)
            case ("digests",):
                return dict(self.digests)
            case ("browser_state",):
                return self.browser_state
            case ("snapshot",):
                return await self._snapshot("requested")
        raise ValueError(f"checkpoint actor: unknown call {msg!r}")

    async def handle_cast(self, msg: Any) -> None:
        match msg:
            case ("result" | "failure" as kind, record, str() as digest):
                if record.key in self.done:
                    return  # never twice in the output
                line = serde.dumps(record) + b"\n"
                self.buffer.append((kind, record.key, digest, line))
                if kind == "failure":
                    self.errors.append(ErrorRecord(
                        timestamp=record.failed_at, item_id=record.key,
                        error_type=record.error_type, error_message=record.message[:500],
                        retry_count=record.attempts - 1))
                if not self.flush_pending:
                    self.flush_pending = True
                    self.notify(_Flush())
            case ("browser_state", state):
                self.browser_state = state
            case _:
                raise ValueError(f"checkpoint actor: unexpected message {msg!r}")

    async def handle_info(self, msg: Any) -> None:
        if isinstance(msg, _Flush):
            await self._flush()
        elif isinstance(msg, _Snapshot):
            if time.monotonic() - self.last_snapshot >= self.config.interval * 0.99:
                await self._snapshot("interval")
            self.send_after(max(0.05, self.config.interval
                                - (time.monotonic() - self.last_snapshot)), _Snapshot())

    # -- group commit --------------------------------------------------------------------

    async def _flush(self) -> None:
        self.flush_pending = False
        batch, self.buffer = self.buffer, []
        if not batch:
            return
        written: list[str] = []
        try:
            await anyio.to_thread.run_sync(self._write, batch, written)
        except StorageError as exc:
            # Lines of a kind already written and fsynced are durable: keep only the rest.
            self.buffer[:0] = [rec for rec in batch if rec[0] not in written]
            batch = [rec for rec in batch if rec[0] in written]
            if batch:
                await anyio.to_thread.run_sync(self._journal, batch)
                await self._made_durable(batch)
            await self._storage_trouble(exc)
            return
        await self._made_durable(batch)
        if self.trouble:
            await self._recovered()
        if self.since_snapshot >= self.config.every_items:
            await self._snapshot("items")

    async def _made_durable(self, batch: list[tuple[str, str, str, bytes]]) -> None:
        durable: list[tuple[str, str]] = []
        for kind, key, digest, _ in batch:
            (self.done if kind == "result" else self.failed).add(key)
            if digest:
                self.digests[key] = digest
            durable.append((kind, key))
        self.since_snapshot += len(batch)
        await self.tree.whereis("work").cast(("durable", durable))

    def _write(self, batch: list[tuple[str, str, str, bytes]],
               written: list[str] | None = None) -> None:
        for kind in KINDS:
            data = b"".join(line for k, _, _, line in batch if k == kind)
            if not data:
                continue
            try:
                self.files[kind].write(data)
                self.files[kind].sync()
            except StorageError:
                self._cut_back(kind)
                raise
            self.sizes[kind] += len(data)
            if written is not None:
                written.append(kind)
        self._journal(batch)

    def _cut_back(self, kind: str) -> None:
        # A write that failed half way must not leave half a line for the next one to
        # be glued to: cut the file back to its last durable length.
        try:
            self.storage.truncate(self.path_of(kind), self.sizes[kind], what="output file")
        except StorageError as exc:
            _log.critical("cannot cut back a failed write", error=str(exc))

    def _journal(self, batch: list[tuple[str, str, str, bytes]]) -> None:
        if self.journal is None:
            return  # broken since a failed commit: the output lines and the next snapshot
        try:
            for kind, key, digest, _ in batch:
                self.journal.append({"kind": kind, "key": key, "digest": digest})
            self.journal.commit()
        except StorageError as exc:
            # The output lines are already durable, so the items are safe; the journal
            # only speeds up resume. The next snapshot starts a fresh segment.
            _log.error("journal write failed; the next snapshot starts a new segment",
                       error=str(exc))
            self.journal.close()
            self.journal = None

    async def _storage_trouble(self, exc: StorageError) -> None:
        policy = self.config.on_storage_error
        self.retry_delay = min(5.0, max(0.1, self.retry_delay * 2))
        _log.critical("cannot make results durable; keeping them in memory and retrying",
                      error=str(exc), dir=str(self.dir), policy=policy,
                      retry_in=self.retry_delay, waiting_records=len(self.buffer))
        self.tree.events.emit("storage_error", self.path, self.tree.correlation_id, exc,
                              dir=str(self.dir), waiting=len(self.buffer), policy=policy)
        if not self.trouble:
            self.trouble = True
            if policy == "pause":
                await self.tree.whereis("work").call(("pause",))
            elif policy == "abort":
                self.tree.shutdown(int(ExitStatus.ABORTED), f"storage error: {exc}")
        self.flush_pending = True
        self.send_after(self.retry_delay, _Flush())

    async def _recovered(self) -> None:
        self.trouble = False
        self.retry_delay = 0.0
        _log.warning("storage recovered", dir=str(self.dir))
        self.tree.events.emit("storage_recovered", self.path, self.tree.correlation_id)
        if self.config.on_storage_error == "pause":
            await self.tree.whereis("work").call(("resume",))

    # -- snapshots -----------------------------------------------------------------------

    async def _snapshot(self, why: str) -> int | None:
        if self.buffer:
            await self._flush()
        if self.buffer:  # storage is failing: a snapshot now would claim too little
            return None
        cp = self._build()
        try:
            seq = await anyio.to_thread.run_sync(self._save, cp)
        except (StorageError, OSError, CheckpointCreationError) as exc:
            _log.critical("snapshot failed; the journal and output still hold every item",
                          error=str(exc), reason=why)
            self.tree.events.emit("storage_error", self.path, self.tree.correlation_id, exc,
                                  dir=str(self.dir), waiting=0, policy="snapshot")
            return None
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()
        self.errors = []
        _log.info("checkpoint saved", sequence=seq, reason=why, done=len(self.done),
                  failed=len(self.failed))
        return seq

    def _save(self, cp: Checkpoint) -> int:
        if self.journal is not None:
            self.journal.commit()
            self.journal.close()
        self.journal = None
        try:
            self.store.save(cp)
        finally:
            try:
                self.journal = self.store.open_journal()
            except StorageError as exc:
                _log.error("cannot open a journal segment", error=str(exc))
        return cp.sequence_number

    def _build(self) -> Checkpoint:
        items = self.runtime.items
        pending = [k for k in items if k not in self.done and k not in self.failed]
        total = len(items)
        finished = len(self.done) + len(self.failed)
        processing = self.processing_before + (time.monotonic() - self.started)
        job_state = {
            "results_offset": self.sizes["result"],
            "failures_offset": self.sizes["failure"],
            "digests": self.digests,
            "retries": self.runtime.last_stats.get("retries", 0),
        }
        return Checkpoint(
            job_id=self.runtime.job.id,
            sequence_number=self.store.next_sequence(),
            metadata=CheckpointMetadata(
                total_items=total, completed_items=len(self.done),
                failed_items=len(self.failed), processing_time=processing,
                browser_sessions=[str(self.runtime.browser_pid)] if self.runtime.browser_pid
                else [],
                system_resources=_resources(self.dir)),
            data=CheckpointData(
                job_state=job_state, browser_state=self.browser_state,
                progress=ProgressState(
                    completed_items=sorted(self.done), failed_items=sorted(self.failed),
                    pending_items=pending, total_count=total,
                    completion_percentage=min(100.0, 100.0 * finished / total)
                    if total else 100.0),
                errors=self.errors))

    async def on_stop(self, reason: Any) -> None:
        if self.buffer:
            try:
                await anyio.to_thread.run_sync(self._write, self.buffer)
                self.buffer = []
            except StorageError as exc:
                _log.critical("records could not be made durable at stop; their items will"
                              " be scraped again on resume", error=str(exc),
                              items=len(self.buffer))
        if reason in ("normal", "shutdown"):
            await self._snapshot("stop")
        if self.journal is not None:
            self.journal.close()
        for handle in self.files.values():
            handle.close()


def _resources(directory: Path) -> ResourceSnapshot | None:
    try:
        me = psutil.Process()
        tree = [me, *me.children(recursive=True)]
        rss = 0
        for proc in tree:
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                pass
        return ResourceSnapshot(
            timestamp=datetime.now(UTC), memory_usage=rss // 2**20,
            cpu_usage=psutil.cpu_percent(interval=None),
            disk_usage=psutil.disk_usage(str(directory)).used // 2**20,
            network_connections=len(me.net_connections()), process_count=len(tree))
    except (psutil.Error, OSError):
        return None
