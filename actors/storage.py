"""The one small file layer that every checkpoint and journal operation goes through.

Everything here is synchronous and blocking; an actor calls it from a worker thread
(``anyio.to_thread.run_sync``). Files and directories are created private to the user
(0o600 / 0o700): snapshots may hold browser cookies.

Durability contract
    ``write_atomic(path, data)`` writes ``data`` to a temporary file in the same directory
    (``.<name>.tmp-<random>``), flushes and fsyncs it, renames it over ``path`` and fsyncs
    the directory. Readers therefore see either the old file or the new one, never a mix.
    On any error before the rename the temporary file is removed and the old ``path`` is
    untouched; if only the final directory fsync fails, the new file is in place but its
    durability is unknown, and the error is still raised. A temporary file can survive
    only a killed process; ``CheckpointStore.lock`` sweeps those away.

    ``open_append(path)`` returns an ``AppendHandle`` for a journal: ``write`` goes straight
    to the kernel with ``os.write`` (no user-space buffer, so a killed process loses
    nothing it wrote), ``sync`` is ``fsync``. A newly created file has its directory fsynced.

Errors
    Every failure raises ``StorageError``, an ``OSError`` that keeps ``errno`` and says where
    and why, e.g. ``cannot write checkpoint file /x/y.json: No space left on device (ENOSPC)``.
    Callers name the file with ``what=`` (``"checkpoint file"``, ``"journal segment"``...).

Testing hooks
    ``FaultyStorage`` injects ``OSError(errno)`` into chosen primitive operations
    ("open", "write", "fsync", "rename", "unlink", "read", "listdir", "makedirs",
    "fsync_dir", "lock"); an injected "write" fault first writes half of the bytes, like a
    disk that fills up mid-write.

    Crash points: code calls ``storage.crash_point(name)`` at named moments
    (``"snapshot:after_fsync_before_rename"``, ``"journal:mid_group_commit"``). The hook
    given as ``crash_hook=`` is called there. TEST ONLY: when the environment variable
    ``SCOREWISE_TEST_CRASH_AT`` holds a point name at the moment a default ``Storage`` is
    built, that storage kills its own process with SIGKILL on reaching the point. Never set
    it in production.
"""

from __future__ import annotations

import errno as errno_mod
import fcntl
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

__all__ = [
    "CRASH_ENV_VAR",
    "AppendHandle",
    "FaultyStorage",
    "LockHandle",
    "Storage",
    "StorageError",
]

CRASH_ENV_VAR = "SCOREWISE_TEST_CRASH_AT"

StrPath = str | os.PathLike[str]


class StorageError(OSError):
    """A file operation failed: ``op`` on ``path`` because of ``errno_name`` (``message``).

    ``errno`` is the numeric code (``None`` for an unknown name); ``str()`` reads
    ``cannot <op> <what> <path>: <message> (<errno_name>)``.
    """

    def __init__(
        self, op: str, path: StrPath, errno_name: str, message: str, *, what: str = "file"
    ) -> None:
        super().__init__(getattr(errno_mod, errno_name, None), message)
        self.op = op
        self.path = os.fspath(path)
        self.errno_name = errno_name
        self.message = message
        self.what = what

    def __str__(self) -> str:
        return f"cannot {self.op} {self.what} {self.path}: {self.message} ({self.errno_name})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_storage_error,
            (self.op, self.path, self.errno_name, self.message, self.what),
        )


def _rebuild_storage_error(
    op: str, path: str, errno_name: str, message: str, what: str
) -> StorageError:
    return StorageError(op, path, errno_name, message, what=what)


def _errno_name(code: int | None) -> str:
    if code is None:
        return "EUNKNOWN"
    return errno_mod.errorcode.get(code, f"errno {code}")


@contextmanager
def _wrap(op: str, path: StrPath, what: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        message = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        raise StorageError(op, path, _errno_name(exc.errno), message, what=what) from exc


def _kill_self_at(point: str) -> Callable[[str], None]:
    def hook(name: str) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


class Storage:
    """Synchronous file operations with atomic replace, append handles and locks.

    ``crash_hook`` is called with the name of each crash point reached (see the module
    docstring); by default it comes from ``SCOREWISE_TEST_CRASH_AT`` (test only).
    """

    def __init__(self, *, crash_hook: Callable[[str], None] | None = None) -> None:
        if crash_hook is None:
            point = os.environ.get(CRASH_ENV_VAR)
            if point:
                crash_hook = _kill_self_at(point)
        self._crash_hook = crash_hook

    # -- hooks ---------------------------------------------------------------------------

    def _fault(self, op: str, path: StrPath) -> OSError | None:
        """The error to inject into primitive ``op`` on ``path``, if any (tests)."""
        return None

    def _check(self, op: str, path: StrPath) -> None:
        err = self._fault(op, path)
        if err is not None:
            raise err

    def crash_point(self, name: str) -> None:
        """Mark the named crash point; the crash hook, if any, may end the process here."""
        if self._crash_hook is not None:
            self._crash_hook(name)

    # -- primitives ----------------------------------------------------------------------

    def _write_all(self, fd: int, data: bytes | memoryview, path: StrPath) -> None:
        view = memoryview(data)
        err = self._fault("write", path)
        if err is not None:
            os.write(fd, view[: len(view) // 2])
            raise err
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _fsync(self, fd: int, path: StrPath) -> None:
        self._check("fsync", path)
        os.fsync(fd)

    def _open(self, path: StrPath, flags: int, mode: int = 0o600) -> int:
        self._check("open", path)
        return os.open(path, flags | os.O_CLOEXEC, mode)

    # -- public operations ---------------------------------------------------------------

    def write_atomic(
        self,
        path: StrPath,
        data: bytes,
        *,
        what: str = "file",
        before_rename: str | None = None,
    ) -> None:
        """Replace ``path`` with ``data`` atomically and durably.

        ``before_rename`` names the crash point fired after the temporary file is fsynced
        and before the rename. Raises ``StorageError``; the old file is then untouched and
        the temporary file removed (see the module docstring for the directory fsync).
        """
        path = os.fspath(path)
        directory, name = os.path.split(path)
        directory = directory or "."
        tmp = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(6)}")
        with _wrap("write", path, what):
            fd = self._open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                try:
                    self._write_all(fd, data, tmp)
                    self._fsync(fd, tmp)
                finally:
                    os.close(fd)
                if before_rename is not None:
                    self.crash_point(before_rename)
                self._check("rename", tmp)
                os.rename(tmp, path)
            except BaseException:
                try:
                    self._check("unlink", tmp)
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        self.fsync_dir(directory, what="directory of " + what)

    def append(self, path: StrPath, data: bytes, *, what: str = "file") -> None:
        """Append ``data`` to ``path`` (created if missing) and fsync it."""
        with self.open_append(path, what=what) as handle:
            handle.write(data)
            handle.sync()

    def open_append(self, path: StrPath, *, what: str = "file") -> AppendHandle:
        """Open ``path`` for appending (created if missing; then its directory is fsynced)."""
        path = os.fspath(path)
        with _wrap("open", path, what):
            try:
                fd = self._open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
                created = True
            except FileExistsError:
                fd = self._open(path, os.O_WRONLY | os.O_APPEND)
                created = False
        handle = AppendHandle(self, fd, path, what)
        if created:
            try:
                self.fsync_dir(os.path.dirname(path) or ".", what="directory of " + what)
            except BaseException:
                handle.close()
                raise
        return handle

    def read(self, path: StrPath, *, what: str = "file") -> bytes:
        """The whole content of ``path``."""
        with _wrap("read", path, what):
            self._check("read", path)
            with open(path, "rb") as f:
                return f.read()

    def read_from(self, path: StrPath, offset: int, *, what: str = "file") -> bytes:
        """The content of ``path`` from byte ``offset`` on (empty if it is shorter)."""
        with _wrap("read", path, what):
            self._check("read", path)
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read()

    def size(self, path: StrPath, *, what: str = "file") -> int:
        """The size of ``path`` in bytes, 0 if it does not exist."""
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            with _wrap("stat", path, what):
                raise exc

    def truncate(self, path: StrPath, size: int, *, what: str = "file") -> None:
        """Cut ``path`` back to ``size`` bytes and fsync it (drops a torn or failed write)."""
        with _wrap("truncate", path, what):
            self._check("truncate", path)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                self._fsync(fd, path)
            finally:
                os.close(fd)

    def listdir(self, path: StrPath, *, what: str = "directory") -> list[str]:
        """Sorted entry names of directory ``path``."""
        with _wrap("list", path, what):
            self._check("listdir", path)
            return sorted(os.listdir(path))

    def rename(self, src: StrPath, dst: StrPath, *, what: str = "file") -> None:
        """Rename ``src`` to ``dst`` (replacing it); call ``fsync_dir`` to make it durable."""
        with _wrap("rename", src, what):
            self._check("rename", src)
            os.rename(src, dst)

    def unlink(self, path: StrPath, *, what: str = "file", missing_ok: bool = False) -> None:
        """Delete ``path``; call ``fsync_dir`` to make it durable."""
        with _wrap("delete", path, what):
            self._check("unlink", path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def makedirs(self, path: StrPath, *, what: str = "directory", mode: int = 0o700) -> None:
        """Create directory ``path`` and missing parents, durably (an existing one is fine)."""
        missing: list[str] = []
        probe = os.path.abspath(path)
        while not os.path.isdir(probe):
            missing.append(probe)
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        with _wrap("create", path, what):
            self._check("makedirs", path)
            os.makedirs(path, mode=mode, exist_ok=True)
        for created in reversed(missing):
            self.fsync_dir(os.path.dirname(created), what="parent directory")

    def fsync_dir(self, path: StrPath, *, what: str = "directory") -> None:
        """Make entries created, renamed or removed in directory ``path`` durable."""
        with _wrap("sync", path, what):
            self._check("fsync_dir", path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def lock(self, path: StrPath, *, what: str = "lock file") -> LockHandle:
        """Take an exclusive non-blocking ``flock`` on ``path`` and write our pid into it.

        A lock held elsewhere raises ``StorageError`` with errno ``EWOULDBLOCK``. The lock
        ends when the handle is released or the process dies; the file itself stays.
        """
        path = os.fspath(path)
        with _wrap("lock", path, what):
            fd = self._open(path, os.O_RDWR | os.O_CREAT)
            try:
                self._check("lock", path)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
        return LockHandle(fd, path)


class AppendHandle:
    """An open append-only file: ``write`` bytes, ``sync`` (fsync), ``close`` (idempotent)."""

    def __init__(self, storage: Storage, fd: int, path: str, what: str) -> None:
        self._storage = storage
        self._fd: int | None = fd
        self.path = path
        self.what = what

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _fileno(self, op: str) -> int:
        if self._fd is None:
            raise StorageError(op, self.path, "EBADF", "handle is closed", what=self.what)
        return self._fd

    def write(self, data: bytes) -> None:
        """Write all of ``data`` at the end of the file (not yet durable: see ``sync``)."""
        with _wrap("append to", self.path, self.what):
            self._storage._write_all(self._fileno("append to"), data, self.path)

    def sync(self) -> None:
        """fsync: everything written so far survives a power cut once this returns."""
        with _wrap("sync", self.path, self.what):
            self._storage._fsync(self._fileno("sync"), self.path)

    def close(self) -> None:
        """Close the file; closing twice is fine."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with _wrap("close", self.path, self.what):
                os.close(fd)

    def __enter__(self) -> AppendHandle:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LockHandle:
    """A held ``flock``; ``release()`` (idempotent) or leaving the ``with`` block frees it."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> LockHandle:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class _Fault:
    def __init__(
        self, op: str | None, code: int, times: int | None, path_contains: str | None
    ) -> None:
        self.op = op
        self.code = code
        self.left = times
        self.path_contains = path_contains


class FaultyStorage(Storage):
    """A ``Storage`` whose primitive operations fail on demand (tests).

    ``fail(op, errno)`` makes operation ``op`` ("open", "write", "fsync", "rename",
    "unlink", "read", "listdir", "makedirs", "fsync_dir", "lock"; ``None`` for any) raise
    ``OSError(errno, os.strerror(errno))``, ``times`` times (``None``: until ``clear()``),
    only on paths containing ``path_contains`` when given. ``calls`` logs every primitive
    operation as ``(op, path)``.
    """

    def __init__(self, *, crash_hook: Callable[[str], None] | None = None) -> None:
        super().__init__(crash_hook=crash_hook)
        self._faults: list[_Fault] = []
        self.calls: list[tuple[str, str]] = []

    def fail(
        self,
        op: str | None,
        errno: int,
        times: int | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Inject ``errno`` into matching operations (see the class docstring)."""
        self._faults.append(_Fault(op, errno, times, path_contains))

    def clear(self) -> None:
        """Remove every injected fault."""
        self._faults.clear()

    def _fault(self, op: str, path: StrPath) -> OSError | None:
        p = os.fspath(path)
        self.calls.append((op, p))
        for fault in self._faults:
            if fault.op not in (None, op) or fault.left == 0:
                continue
            if fault.path_contains is not None and fault.path_contains not in p:
                continue
            if fault.left is not None:
                fault.left -= 1
            return OSError(fault.code, os.strerror(fault.code))
        return None
