"""Who handles Ctrl-C and SIGTERM: the server alone, never its children.

A terminal's Ctrl-C, systemd's default `KillMode=control-group`, `timeout` and
`kill -- -PGID` signal every process in the group at once. A worker or the
writer process that died of that signal would cut the server's graceful stop
short (unanswered requests, a writer restarted while stopping), so the
children ignore both signals and the server stops them in order.

A signal that reaches a child in the fraction of a second between its start
and its call of `leave_stop_to_the_server()` still ends it. Closing that gap
is not possible from here: a blocked mask set around the start does not reach
the spawned interpreter, and ignoring the signals in the server while it
starts a child would lose a stop meant for the server. So the server says
`ready` only once its children ignore them (`ignores_stop`, read from the
kernel): a stop at any time after that is clean.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOP_MASK = sum(1 << (signum - 1) for signum in STOP_SIGNALS)  # as /proc shows ignored signals


def ignores_stop(pid: int) -> bool | None:
    """Whether process `pid` ignores Ctrl-C and SIGTERM (Linux's
    /proc/PID/status `SigIgn`); None where that cannot be read (another
    system, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigIgn:"):
                    return int(line.split()[1], 16) & _STOP_MASK == _STOP_MASK
    except (OSError, ValueError, IndexError):
        return None
    return None


def leave_stop_to_the_server() -> None:
    """In a child process, first thing: ignore Ctrl-C and SIGTERM."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
