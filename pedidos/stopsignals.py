"""Who handles Ctrl-C and SIGTERM: the server alone, never its children.

A terminal's Ctrl-C, systemd's default `KillMode=control-group`, `timeout` and
`kill -- -PGID` signal every process in the group at once. A worker or the
writer process that died of that signal would cut the server's graceful stop
short (unanswered requests, a writer restarted while stopping), so the
children ignore both signals and the server stops them in order.

A child is started with the two signals blocked, so that one arriving between
its start and its `leave_stop_to_the_server()` stays pending instead of
killing it, and is then discarded.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def blocked_for_children() -> Iterator[None]:
    """Around starting a child process: the child inherits the blocked mask."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def leave_stop_to_the_server() -> None:
    """In a child process: ignore Ctrl-C and SIGTERM, then unblock them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
