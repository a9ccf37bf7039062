"""The user's task (`--tarea MODULO:FUNCION`): loading it, calling it, and what
its outcome becomes in the order's row.

The server loads the task once before any worker starts, so that a typo stops
the start with one line instead of a loop of dying workers; each worker then
loads it again, once, in its own process. An `async def` task is awaited on
the worker's own event loop, created the first time one is needed.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pedidos.domain import MAX_ERROR_CHARS, MAX_RESULT_BYTES, RawJSON

if TYPE_CHECKING:
    import asyncio

Task = Callable[[dict[str, Any]], Any]
logger = logging.getLogger(__name__)
SLOW_IMPORT_S = 1.0  # an import at start longer than this is logged
CHECK_EXIT_S = 5.0  # how long the import check's process may take to end once it answered


class TaskError(Exception):
    """The task cannot be loaded; the message is one line for the operator."""


class ResultError(Exception):
    """What the task returned cannot be stored: a failed attempt."""


def load_task(spec: str) -> Task:
    """`MODULO:FUNCION` (FUNCION may be dotted: `module:Class.method`), imported
    as `python3 -m` would find it from the working directory."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise TaskError(f"--tarea must be MODULO:FUNCION, not {spec!r}")
    # The user's module is most often a file next to where they run the
    # server, as with `rq worker` or `celery -A`.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a module may fail any way at import
        dotted = module_name.removesuffix(".py").replace(os.sep, ".").strip(".")
        if dotted != module_name and isinstance(exc, ModuleNotFoundError):
            # A file's path where Python wants a module's name.
            raise TaskError(
                f"cannot import {module_name!r} for --tarea {spec}: name the module as Python "
                f"imports it, --tarea {dotted}:{attribute}"
            ) from None
        raise TaskError(
            f"cannot import {module_name!r} for --tarea {spec}: {describe(exc)}{_raised_at(exc)}"
        ) from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise TaskError(f"the module {module_name!r} has no {attribute!r} (--tarea {spec})") from None
    if not callable(target):
        kind = type(target).__name__
        raise TaskError(f"--tarea {spec} is not a function but {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    return target


# Frames of the import machinery, never the user's: `importlib.import_module` is
# where a module not found and a module that does not parse are raised from.
_IMPORTLIB = os.path.dirname(importlib.__file__ or "") + os.sep


def _raised_at(exc: BaseException) -> str:
    """Where the user's code raised `exc` while its module was imported:
    the innermost frame outside the import machinery and this file, which
    the one-line error would otherwise leave to guess."""
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        machinery = filename.startswith(("<frozen", _IMPORTLIB))  # a module not found, a SyntaxError
        if not machinery and filename != __file__:
            where = f" (at {filename}, line {tb.tb_lineno})"
        tb = tb.tb_next
    return where


def check_task(spec: str) -> None:
    """Load the task in a process of its own, once, before anything starts:
    TaskError if that fails. Not in the server's process: a module may end
    its process at import (`os._exit(0)`, a crash in a C extension), and the
    server would vanish without a word, exit 0, which a supervisor takes for
    a clean stop; nor need the server carry what the module imports."""
    import multiprocessing  # here: only a start with --tarea needs it

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_check_in_child, args=(spec, sender), name="pedidos-task-check")
    try:
        process.start()
        sender.close()
        if not receiver.poll(SLOW_IMPORT_S):
            # Nothing else is logged until it ends: say why the start waits.
            logger.info("importing the task %s (--tarea) is taking a while; waiting for it", spec)
        problem = receiver.recv()
    except EOFError:  # it ended before it could say
        process.join()
        code = process.exitcode
        how = f"by signal {_signal_name(-code)}" if code is not None and code < 0 else f"with status {code}"
        raise TaskError(f"importing --tarea {spec} ended its process {how}") from None
    except BaseException:  # Ctrl-C while a slow import runs: the import is of no use any more
        if process.pid is not None:  # started
            process.kill()
            process.join()
        raise
    finally:
        receiver.close()
    # The child ends itself at once (below); should it not, its answer is all
    # that was wanted from it.
    process.join(CHECK_EXIT_S)
    if process.exitcode is None:
        process.kill()
        process.join()
    if problem is not None:
        raise TaskError(problem)


def _check_in_child(spec: str, report: Any) -> None:
    import signal

    # Ctrl-C at the terminal reaches the whole group: the server decides, and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        load_task(spec)
    except TaskError as exc:
        report.send(str(exc))
    else:
        report.send(None)
    report.close()
    # Not a normal exit: that would wait for any thread the module started at
    # import (a client's keep-alive loop, say), for ever, and the start with it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class TaskRunner:
    """Calls the task in a worker process, sync or async."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, order: dict[str, Any]) -> Any:
        if isinstance(order.get("resultado"), RawJSON):  # the task sees values, as a client does
            order["resultado"] = order["resultado"].load()
        value = self._task(order)
        if inspect.isawaitable(value):
            if self._loop is None:
                # Imported here: only an async task needs an event loop, and
                # asyncio is most of what a worker process would import.
                import asyncio

                self._loop = asyncio.new_event_loop()
            try:
                value = self._loop.run_until_complete(value)
            finally:
                # A task that called `loop.stop()` left a stop waiting in the
                # loop: the next call, another order's, would end at once as a
                # failed attempt ("Event loop stopped before Future completed").
                # One more turn of the loop, told to stop after it, takes it.
                self._loop.call_soon(self._loop.stop)
                self._loop.run_forever()
        return value

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


# The JSON escape of a NUL character: \\u0000 after an even number of backslashes.
NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def encode_result(value: Any) -> str:
    """The task's return value as the JSON text of `resultado`, or ResultError."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ResultError(f"el resultado de la tarea no se puede guardar como JSON ({exc})") from None
    # Every backend must be able to store it: PostgreSQL's jsonb holds no NUL
    # character and no database takes half a surrogate pair. Refused here, the
    # worker records a failed attempt instead of retrying a write that can never work.
    if NUL_ESCAPE.search(text):
        raise ResultError("el resultado de la tarea contiene el carácter NUL, que no se puede guardar")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ResultError("el resultado de la tarea contiene texto que no es Unicode válido") from None
    if size > MAX_RESULT_BYTES:
        raise ResultError(
            f"el resultado de la tarea ocupa {size} bytes en JSON; el máximo es {MAX_RESULT_BYTES}"
        )
    return text


def describe(exc: BaseException) -> str:
    """An exception as the order's `error`: its type and message, never a
    traceback (that goes to the server's log), cut to a readable length."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the worker down with it
        message = "(el texto de la excepción no se pudo obtener)"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
