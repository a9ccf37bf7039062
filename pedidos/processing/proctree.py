"""A worker's process tree: the worker and every program its task started.

Killing the worker alone would leave those programs running, orphaned, once
the call is given up on (over --limite-tarea, at a stop, or by a worker whose
server is gone). Read from /proc, so Linux only; elsewhere only the worker
itself is killed. A program that detached itself (a double fork) is not found.
"""

from __future__ import annotations

import contextlib
import os
import signal


def handle(pid: int) -> int | None:
    """A pidfd for child `pid`, taken while it surely runs (just started):
    through it a signal reaches that process or none, never another one
    given the same pid once it has been reaped. None where there are none
    (Linux before 5.3, other systems)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def kill_tree(pid: int, pidfd: int | None) -> None:
    """SIGKILL process `pid` and every process below it. The tree is read
    first: once `pid` is dead its children belong to someone else. Through
    `pidfd` (from `handle`) nothing is done if the process was already
    reaped, when its pid, and so /proc's tree under it, may be another's."""
    if pidfd is None:
        _kill([pid, *descendants(pid)])
        return
    try:
        signal.pidfd_send_signal(pidfd, 0)  # not reaped: its pid is still its own
        below = descendants(pid)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:  # gone (and reaped) meanwhile: so are the pids we would read
        return
    _kill(below)


def kill_descendants(pid: int) -> None:
    """SIGKILL every process below `pid` (a worker ending itself)."""
    _kill(descendants(pid))


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (none where there is no /proc)."""
    try:
        return _descendants_by_children(pid)
    except OSError:  # a kernel without /proc/PID/task/TID/children
        return _descendants_by_scan(pid)


def _descendants_by_children(pid: int) -> list[int]:
    # Only the tree itself is read: a scan of all /proc costs ~20 us per
    # process on the machine, on the event loop, for every call stopped.
    found: list[int] = []
    todo = [pid]
    first = True
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            if first:
                raise
            continue  # gone meanwhile
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children", "rb") as file:
                    kids = [int(k) for k in file.read().split()]
            except FileNotFoundError:
                if first:
                    raise
                continue
            except OSError:
                continue
            found += kids
            todo += kids
        first = False
    return found


def _descendants_by_scan(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # gone meanwhile
        # The name, in parentheses, may hold spaces: the parent pid is the
        # second field after its closing one.
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found
