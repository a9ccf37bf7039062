"""The optional accelerators of `pip install 'pedidos[rapido]'`: uvloop's event loop and
orjson's decoding (protocol/codec.py). Each is used when installed, unless `--sin-rapido`;
without them, or with it, the server runs on the standard library alone, as it always did."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from pedidos.protocol import codec

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


def run(main: Coroutine[Any, Any, Any], accelerated: bool) -> Any:
    """`asyncio.run(main)`, on uvloop's loop when it is installed and `accelerated`;
    orjson's decoding switched the same way."""
    codec.use_orjson(accelerated)
    uvloop = _uvloop() if accelerated else None
    if uvloop is None:
        return asyncio.run(main)
    return uvloop.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: the loop actually running, for the `ready:` line."""
    return UVLOOP if type(loop).__module__.startswith(UVLOOP) else ASYNCIO


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """E.g. `loop uvloop, JSON orjson`: what the `ready:` line says is in use."""
    return f"loop {loop_name(loop)}, JSON {codec.name()}"
