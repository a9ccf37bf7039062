"""The SQLite file as the operator sees it: the lock file that makes it one
server's, and what a failure to open or write it means, in one sentence that
says what to do.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3

from pedidos.storage.base import StorageError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


def lock_database(path: str) -> int:
    """Make the database this process's alone: an exclusive `flock` on a lock
    file beside it, holding this pid. Returns the descriptor to keep open for
    the server's life; the kernel releases the lock when the process ends,
    however it ends. Workers and the writer are spawned without it."""
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
    lock_path = path + LOCK_SUFFIX
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorageError(_read_only_folder(path)) from None
        raise StorageError(f"cannot create the lock file {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
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
        os.close(fd)
        raise StorageError(
            f"cannot use the database {path}: cannot write the lock file {lock_path}: {exc.strerror}"
        ) from None
    return fd


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
    return f"cannot use the database {path}: {text}"


def _read_only_folder(path: str) -> str:
    name = os.path.basename(path)
    return (
        f"cannot create files in {_folder(path)}: SQLite needs to write {name}-wal beside the "
        "database (and the server its lock file); make the folder writable"
    )


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))
