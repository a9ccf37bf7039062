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


def kill_tree(pid: int) -> None:
    """SIGKILL process `pid` and every process below it. The tree is read
    first: once `pid` is dead its children belong to someone else."""
    below = descendants(pid)
    _kill([pid, *below])


def kill_descendants(pid: int) -> None:
    """SIGKILL every process below `pid` (a worker ending itself)."""
    _kill(descendants(pid))


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (none where there is no /proc)."""
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
