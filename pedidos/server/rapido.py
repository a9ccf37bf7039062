"""The optional accelerator of `pip install -e '.[rapido]'`: uvloop's event loop, used when
installed unless `--sin-rapido`. Without it, or with that option, the server runs on the
standard library alone, as it always did.

orjson for decoding requests was tried and dropped: it saved ~0.25 µs of the ~33 µs the event
loop spends per order, and reads some input differently from `json` (an integer past 64 bits
becomes a float), so it had to be fenced off; see docs/benchmarks.md, "The rapido extra".
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

ASYNCIO = "asyncio"
UVLOOP = "uvloop"


def _uvloop() -> Any:
    if sys.platform == "win32":  # uvloop has no Windows build
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def installed() -> bool:
    """Whether uvloop can be used here (the benchmark measures both loops then)."""
    return _uvloop() is not None


def run(main: Coroutine[Any, Any, Any], accelerated: bool) -> Any:
    """`asyncio.run(main)`, on uvloop's loop when it is installed and `accelerated`."""
    uvloop = _uvloop() if accelerated else None
    if uvloop is None:
        return asyncio.run(main)
    return uvloop.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: the loop actually running, for the `ready:` line."""
    return UVLOOP if type(loop).__module__.startswith(UVLOOP) else ASYNCIO


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """E.g. `loop uvloop`: what the `ready:` line says is in use."""
    return f"loop {loop_name(loop)}"
