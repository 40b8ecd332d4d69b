"""The file layer: atomic replace, append handles, locks, errors and fault injection."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest

from actors.storage import FaultyStorage, Storage, StorageError


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """A successful atomic write replaces the content and leaves only the target."""
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    Storage().write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["a.json"]


def test_write_atomic_fsyncs_the_temp_file_before_the_rename(tmp_path: Path) -> None:
    """The temp file is written and fsynced before it is renamed, then the directory synced."""
    storage = FaultyStorage()
    storage.write_atomic(tmp_path / "a.json", b"data")
    ops = [op for op, _ in storage.calls]
    assert ops == ["open", "write", "fsync", "rename", "fsync_dir"]
    tmp_name = Path(storage.calls[0][1]).name
    assert tmp_name.startswith(".a.json.tmp-")


def test_enospc_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    """A disk that fills up mid-write leaves the old file and no temp file behind."""
    target = tmp_path / "cp.json"
    target.write_bytes(b"old content")
    storage = FaultyStorage()
    storage.fail("write", errno.ENOSPC)
    with pytest.raises(StorageError) as info:
        storage.write_atomic(target, b"x" * 10_000, what="checkpoint file")
    assert str(info.value) == (
        f"cannot write checkpoint file {target}: No space left on device (ENOSPC)"
    )
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old content"
    assert _names(tmp_path) == ["cp.json"]


def test_erofs_on_rename_keeps_the_old_file(tmp_path: Path) -> None:
    """A read-only file system at rename time leaves the old file and no temp file."""
    target = tmp_path / "cp.json"
    target.write_bytes(b"old")
    storage = FaultyStorage()
    storage.fail("rename", errno.EROFS)
    with pytest.raises(StorageError) as info:
        storage.write_atomic(target, b"new", what="checkpoint file")
    assert (
        str(info.value) == f"cannot write checkpoint file {target}: Read-only file system (EROFS)"
    )
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["cp.json"]


def test_eacces_on_open_creates_nothing(tmp_path: Path) -> None:
    """Permission denied when creating the temp file changes nothing."""
    storage = FaultyStorage()
    storage.fail("open", errno.EACCES)
    with pytest.raises(StorageError) as info:
        storage.write_atomic(tmp_path / "cp.json", b"new")
    assert (
        str(info.value) == f"cannot write file {tmp_path / 'cp.json'}: Permission denied (EACCES)"
    )
    assert _names(tmp_path) == []


def test_fault_times_and_path_filter(tmp_path: Path) -> None:
    """A fault fires only on matching paths and only as many times as asked."""
    storage = FaultyStorage()
    storage.fail("read", errno.EIO, times=1, path_contains="b.txt")
    (tmp_path / "a.txt").write_bytes(b"a")
    (tmp_path / "b.txt").write_bytes(b"b")
    assert storage.read(tmp_path / "a.txt") == b"a"
    with pytest.raises(StorageError) as info:
        storage.read(tmp_path / "b.txt", what="journal segment")
    assert (
        str(info.value)
        == f"cannot read journal segment {tmp_path / 'b.txt'}: Input/output error (EIO)"
    )
    assert storage.read(tmp_path / "b.txt") == b"b"


def test_clear_removes_faults(tmp_path: Path) -> None:
    """After clear() every operation works again."""
    storage = FaultyStorage()
    storage.fail(None, errno.ENOSPC)
    with pytest.raises(StorageError):
        storage.makedirs(tmp_path / "d")
    storage.clear()
    storage.makedirs(tmp_path / "d")
    assert (tmp_path / "d").is_dir()


def test_append_handle_writes_syncs_and_closes(tmp_path: Path) -> None:
    """An append handle adds to the end of the file and closing twice is fine."""
    path = tmp_path / "j.jsonl"
    storage = Storage()
    storage.append(path, b"one\n")
    handle = storage.open_append(path)
    handle.write(b"two\n")
    handle.sync()
    handle.close()
    handle.close()
    assert path.read_bytes() == b"one\ntwo\n"
    with pytest.raises(StorageError) as info:
        handle.write(b"three\n")
    assert str(info.value) == f"cannot append to file {path}: handle is closed (EBADF)"


def test_append_enospc_message(tmp_path: Path) -> None:
    """A failing append names the file and the reason."""
    storage = FaultyStorage()
    handle = storage.open_append(tmp_path / "j.jsonl", what="journal segment")
    storage.fail("fsync", errno.ENOSPC)
    handle.write(b"x\n")
    with pytest.raises(StorageError) as info:
        handle.sync()
    assert str(info.value) == (
        f"cannot sync journal segment {tmp_path / 'j.jsonl'}: No space left on device (ENOSPC)"
    )
    handle.close()


def test_missing_file_keeps_enoent(tmp_path: Path) -> None:
    """Reading a missing file is a StorageError with errno ENOENT."""
    with pytest.raises(StorageError) as info:
        Storage().read(tmp_path / "nope")
    assert info.value.errno == errno.ENOENT
    assert isinstance(info.value, OSError)
    assert (
        str(info.value)
        == f"cannot read file {tmp_path / 'nope'}: No such file or directory (ENOENT)"
    )


def test_listdir_rename_unlink(tmp_path: Path) -> None:
    """listdir is sorted; rename and unlink work, unlink can tolerate a missing file."""
    storage = Storage()
    (tmp_path / "b").write_bytes(b"")
    (tmp_path / "a").write_bytes(b"")
    assert storage.listdir(tmp_path) == ["a", "b"]
    storage.rename(tmp_path / "a", tmp_path / "c")
    storage.unlink(tmp_path / "b")
    storage.unlink(tmp_path / "b", missing_ok=True)
    storage.fsync_dir(tmp_path)
    assert storage.listdir(tmp_path) == ["c"]


def test_storage_error_pickles() -> None:
    """A StorageError survives pickling with its message and errno."""
    err = StorageError("write", "/x/y.json", "ENOSPC", "No space left on device", what="x file")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == "cannot write x file /x/y.json: No space left on device (ENOSPC)"
    assert copy.errno == errno.ENOSPC


def test_lock_is_exclusive_and_records_the_pid(tmp_path: Path) -> None:
    """A second flock on the same file fails with EAGAIN until the first is released."""
    storage = Storage()
    path = tmp_path / ".lock"
    first = storage.lock(path)
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(StorageError) as info:
        storage.lock(path)
    assert info.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    first.release()
    with storage.lock(path) as again:
        assert again.held
    assert not again.held


def test_crash_hook_is_called_at_named_points(tmp_path: Path) -> None:
    """The crash hook sees the point between fsync and rename."""
    seen: list[str] = []
    storage = Storage(crash_hook=seen.append)
    storage.write_atomic(tmp_path / "a", b"x", before_rename="snapshot:after_fsync_before_rename")
    assert seen == ["snapshot:after_fsync_before_rename"]


def test_exception_in_crash_hook_removes_the_temp_file(tmp_path: Path) -> None:
    """An error raised at the crash point aborts the write without leftovers."""

    def boom(name: str) -> None:
        raise RuntimeError(name)

    (tmp_path / "a").write_bytes(b"old")
    with pytest.raises(RuntimeError, match=r"^p$"):
        Storage(crash_hook=boom).write_atomic(tmp_path / "a", b"new", before_rename="p")
    assert _names(tmp_path) == ["a"]
    assert (tmp_path / "a").read_bytes() == b"old"
