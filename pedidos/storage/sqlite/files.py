"""The SQLite file as the operator sees it: the lock file that makes it one
server's, and what a failure to open or write it means, in one sentence that
says what to do.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import sqlite3
from typing import NamedTuple

from pedidos.storage.base import StorageError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
FULL_BELOW = 1024 * 1024  # free bytes under which a write error is the disk's being full


class DatabaseLock(NamedTuple):
    """What `lock_database` holds for the server's life."""

    fds: tuple[int, ...]  # the lock file's and the database file's descriptors
    file: tuple[int, int]  # the database file held: (st_dev, st_ino), see `same_file`

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)


def lock_database(path: str) -> DatabaseLock:
    """Make the database this process's alone: an exclusive `flock` on the
    database file itself and on a lock file beside it that holds this pid (for
    the message a second server gets). The file itself, because it is the same
    inode whatever name reaches it (a symlink) and a lock file may be deleted
    by hand as stale; the lock file is named after the real path, so that the
    pid is found by any name too. The kernel releases the locks when the
    process ends, however it ends. Workers and the writer are spawned without
    them. (SQLite locks with `fcntl`, which does not meet `flock` on Linux.)"""
    folder = _folder(path)
    if not os.path.isdir(folder):
        raise StorageError(
            f"cannot use the database {path}: the folder {folder} does not exist; "
            "create it, or give --db a file in an existing folder"
        )
    if os.path.isdir(path):
        raise StorageError(
            f"cannot use the database {path}: it is a folder; give --db a file, "
            f"such as {os.path.join(path, 'pedidos.db')}"
        )
    real = os.path.realpath(path)
    lock_path = real + LOCK_SUFFIX
    fd = _open_to_lock(path, lock_path, os.O_RDWR)
    try:
        # Read-only is enough to lock it; whether it can be written is SQLite's to say.
        db_fd = _open_to_lock(path, real, os.O_RDONLY)
    except StorageError:
        os.close(fd)
        raise
    try:
        for held in (db_fd, fd):
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise StorageError(
                        f"the database {path} is in use by another server (pid {holder}, see {lock_path}); "
                        "stop that server first, or give this one another --db"
                    ) from None
                raise StorageError(f"cannot lock {lock_path}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:  # a full disk, say
            raise StorageError(
                f"cannot use the database {path}: cannot write the lock file {lock_path}: {exc.strerror}"
            ) from None
    except BaseException:
        os.close(fd)
        os.close(db_fd)
        raise
    held_file = os.fstat(db_fd)
    return DatabaseLock((fd, db_fd), (held_file.st_dev, held_file.st_ino))


# SQLite's own files beside the database in WAL mode. The server's reader
# connections hold them open from its start to its stop, so they keep their
# identity all that time; deleted, the commits only the WAL holds go with it,
# and a connection opened later starts another index beside the one the open
# connections share, which corrupts the database.
SIDECARS = ("-wal", "-shm")


def file_id(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file `path` names now, or None."""
    try:
        now = os.stat(path)
    except OSError:
        return None
    return (now.st_dev, now.st_ino)


def watched_files(path: str, database: tuple[int, int]) -> tuple[tuple[str, tuple[int, int]], ...]:
    """The database (first, with the identity `lock_database` holds) and its
    -wal and -shm as they are now, each with its identity: what the writer
    checks before every acknowledgement. Beside the file a symbolic link
    names, where SQLite puts them, not beside the link."""
    files = [(path, database)]
    for suffix in SIDECARS:
        beside = os.path.realpath(path) + suffix
        file = file_id(beside)
        if file is not None:
            files.append((beside, file))
    return tuple(files)


def same_file(path: str, file: tuple[int, int]) -> bool:
    """Whether `path` still names the file the server holds. A file deleted or
    replaced while the server runs still takes its commits, on an inode no one
    will find again: nothing written there may be acknowledged."""
    return file_id(path) == file


def _open_to_lock(path: str, target: str, mode: int) -> int:
    try:
        return os.open(target, mode | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorageError(_read_only_folder(path)) from None
        raise StorageError(f"cannot create {target}: {exc.strerror}") from None


def database_error(path: str, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        if not os.access(_folder(path), os.W_OK):
            return _read_only_folder(path)
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return (
                f"the database file {path} is read-only; make it writable for the user running "
                f"the server, or give another --db (SQLite: {text})"
            )
        return f"cannot write the database {path} or the files beside it: {text}; check their permissions"
    if "locked" in text:
        return (
            f"cannot use the database {path}: another program holds a write transaction on it (an "
            f"open sqlite3 shell, a script); end it and start again (SQLite: {text})"
        )
    if "full" in text or "I/O" in text:
        folder = _folder(path)
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if free is not None and free < FULL_BELOW:
            # SQLite often calls a failed write to a full disk an "I/O error".
            return (
                f"cannot use the database {path}: the disk holding {folder} is full; "
                f"free some space and start again (SQLite: {text})"
            )
    return f"cannot use the database {path}: {text}"


def _read_only_folder(path: str) -> str:
    name = os.path.basename(path)
    return (
        f"cannot create files in {_folder(path)}: SQLite needs to write {name}-wal beside the "
        "database (and the server its lock file); make the folder writable"
    )


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))
