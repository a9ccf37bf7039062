"""One coroutine run as a background task, from `start()` until `stop()`.

The panel's ticker, the PostgreSQL listener and a node's lease renewal each
run a loop of their own beside the server's work. This is their one way to
start and stop it: `stop` cancels the task and waits until it has ended, so
none of it runs once `stop` returns. The standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class Background:
    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._run = run
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
