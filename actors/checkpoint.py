"""The checkpoint actor: the one writer of outcomes, and the owner of durable progress.

Results go to ``<job dir>/results.jsonl`` and final failures to ``failures.jsonl``, one
JSON object a line, appended in group commits: records that arrive while a write is under
way are written and fsynced together in the next one. Only after the fsync does the work
queue hear ``("durable", ...)`` and count the items as done; a kill -9 therefore loses at
most the items in flight. On start the actor reads both files back (a torn last line --
a write cut by a kill -- is cut off) and tells the work queue which keys are finished.

Storage trouble (disk full, read-only, vanished directory) never loses a record: the
records stay in memory, a critical event says where and why, the work queue is paused so
nothing more finishes that cannot be made durable, and the write is retried with backoff
until it succeeds; then the queue resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from supervisor import Actor

from . import serde
from .storage import AppendHandle, Storage, StorageError

if TYPE_CHECKING:
    from .job import JobRuntime

__all__ = ["CheckpointActor", "read_records"]

_log = structlog.get_logger("actors.checkpoint")


class _Flush:
    pass


def read_records(storage: Storage, path: Path) -> tuple[list[dict[str, Any]], int, bool]:
    """Records of a JSON-lines file, the byte length of its whole lines, and whether a
    torn last line was found. A bad line in the middle is skipped with a warning."""
    try:
        raw = storage.read(path, what="results file")
    except StorageError as exc:
        if exc.errno == 2:  # ENOENT: nothing written yet
            return [], 0, False
        raise
    records: list[dict[str, Any]] = []
    end = raw.rfind(b"\n") + 1
    torn = end < len(raw)
    for number, line in enumerate(raw[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = serde.loads(line)
        except ValueError:
            _log.warning("skipping an unreadable line", file=str(path), line=number)
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            records.append(rec)
    return records, end, torn


class CheckpointActor(Actor):
    """See the module docstring."""

    def __init__(self, runtime: JobRuntime) -> None:
        self.runtime = runtime
        self.storage = runtime.storage
        self.dir = runtime.job_dir
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.browser_state: dict[str, Any] | None = None
        self.buffer: list[tuple[str, str, bytes]] = []
        self.flush_pending = False
        self.retry_delay = 0.0
        self.paused_work = False
        self.files: dict[str, AppendHandle] = {}

    @property
    def results_path(self) -> Path:
        return self.dir / "results.jsonl"

    @property
    def failures_path(self) -> Path:
        return self.dir / "failures.jsonl"

    async def on_start(self) -> None:
        await anyio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        self.storage.makedirs(self.dir, what="job directory")
        for kind, path in (("result", self.results_path), ("failure", self.failures_path)):
            records, end, torn = read_records(self.storage, path)
            if torn:
                _log.warning("dropping a torn last line", file=str(path))
                with open(path, "r+b") as fh:  # cut the partial write a kill left behind
                    fh.truncate(end)
                    os.fsync(fh.fileno())
            keys = {r["key"] for r in records}
            if kind == "result":
                self.done = keys
            else:
                self.failed = keys - self.done
            self.files[kind] = self.storage.open_append(path, what=f"{kind}s file")

    async def handle_call(self, msg: Any) -> Any:
        match msg:
            case ("known_keys",):
                return set(self.done), set(self.failed)
            case ("browser_state",):
                return self.browser_state
            case ("paths",):
                return {"results": self.results_path, "failures": self.failures_path}
        raise ValueError(f"checkpoint actor: unknown call {msg!r}")

    async def handle_cast(self, msg: Any) -> None:
        match msg:
            case ("result" | "failure" as kind, record):
                if record.key in self.done:
                    return  # never twice in the output
                line = serde.dumps(record) + b"\n"
                self.buffer.append((kind, record.key, line))
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

    async def _flush(self) -> None:
        self.flush_pending = False
        batch, self.buffer = self.buffer, []
        if not batch:
            return
        try:
            await anyio.to_thread.run_sync(self._write, batch)
        except StorageError as exc:
            self.buffer[:0] = batch
            await self._storage_trouble(exc)
            return
        if self.paused_work:
            self.paused_work = False
            self.retry_delay = 0.0
            _log.warning("storage recovered; resuming work", dir=str(self.dir))
            await self.tree.whereis("work").call(("resume",))
        durable: list[tuple[str, str]] = []
        for kind, key, _ in batch:
            (self.done if kind == "result" else self.failed).add(key)
            durable.append((kind, key))
        await self.tree.whereis("work").cast(("durable", durable))

    def _write(self, batch: list[tuple[str, str, bytes]]) -> None:
        touched = set()
        for kind in ("result", "failure"):
            data = b"".join(line for k, _, line in batch if k == kind)
            if data:
                self.files[kind].write(data)
                touched.add(kind)
        self.storage.crash_point("journal:mid_group_commit")
        for kind in touched:
            self.files[kind].sync()

    async def _storage_trouble(self, exc: StorageError) -> None:
        self.retry_delay = min(5.0, max(0.1, self.retry_delay * 2))
        _log.critical("cannot make results durable; work paused, retrying",
                      error=str(exc), dir=str(self.dir), retry_in=self.retry_delay,
                      waiting_records=len(self.buffer))
        self.tree.events.emit("storage_error", self.path, self.tree.correlation_id, exc,
                              dir=str(self.dir), waiting=len(self.buffer))
        if not self.paused_work:
            self.paused_work = True
            await self.tree.whereis("work").call(("pause",))
        self.flush_pending = True
        self.send_after(self.retry_delay, _Flush())

    async def on_stop(self, reason: Any) -> None:
        if self.buffer:
            try:
                await anyio.to_thread.run_sync(self._write, self.buffer)
                self.buffer = []
            except StorageError as exc:
                _log.critical("records could not be made durable at stop",
                              error=str(exc), lost=len(self.buffer))
        for handle in self.files.values():
            handle.close()
