"""Task functions for tests/test_tasks.py, imported by the server's worker
processes (the test puts this directory on their PYTHONPATH).

`segun_cliente` does what the order's `cliente` names, so that one server
shows many behaviours. What must outlive a worker (how many calls an order
had, when, in which process) goes to files under PEDIDOS_PRUEBA_DIR, keyed by
the order's id: the idempotency pattern the docs recommend.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing.queues
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _calls(pedido: dict[str, Any]) -> int:
    """Record this call (time, pid, what the order said); how many so far."""
    path = Path(os.environ["PEDIDOS_PRUEBA_DIR"]) / f"{pedido['id']}.calls"
    entry = {
        "t": time.time(),
        "pid": os.getpid(),
        "intentos": pedido["intentos"],
        "fallos": pedido["fallos"],
        "error": pedido["error"],
    }
    with path.open("a") as file:
        file.write(json.dumps(entry) + "\n")
    return len(path.read_text().splitlines())


def devuelve(pedido: dict[str, Any]) -> Any:
    return {"albaran": f"A-{pedido['id']}", "productos": len(pedido["productos"]), "nota": "entregado ñ"}


def falla_dos_veces(pedido: dict[str, Any]) -> Any:
    n = _calls(pedido)
    if n <= 2:
        raise ValueError(f"fallo {n}")
    return {"llamadas": n}


def siempre_falla(pedido: dict[str, Any]) -> Any:
    _calls(pedido)
    raise RuntimeError("sin stock de pan")


def trabaja_diez(pedido: dict[str, Any]) -> Any:
    """Ten seconds of work, its start recorded: a test can tell that the call is running."""
    _calls(pedido)
    time.sleep(10)


def cuelga_una_vez(pedido: dict[str, Any]) -> Any:
    if _calls(pedido) == 1:
        time.sleep(3600)
    return {"pid": os.getpid()}


def hijo_cuelga(pedido: dict[str, Any]) -> Any:
    """The first call starts a program that would run for an hour and hangs
    waiting for it; the program's pid goes to ID.hijo."""
    if _calls(pedido) == 1:
        child = subprocess.Popen(["sleep", "3600"])
        where = Path(os.environ["PEDIDOS_PRUEBA_DIR"]) / f"{pedido['id']}.hijo"
        # Written aside and renamed: a test that waits for the file reads it whole.
        where.with_suffix(".tmp").write_text(str(child.pid))
        where.with_suffix(".tmp").rename(where)
        child.wait()
    return "hecho"


def sistema_cuelga(pedido: dict[str, Any]) -> Any:
    """As hijo_cuelga, through os.system: C code that waits for the program and
    retries on EINTR, so a Python signal handler does not run until it returns."""
    if _calls(pedido) == 1:
        where = Path(os.environ["PEDIDOS_PRUEBA_DIR"]) / f"{pedido['id']}.hijo"
        os.system(f"echo $$ > {where}.tmp && mv {where}.tmp {where} && exec sleep 3600")
    return "hecho"


def se_mata(pedido: dict[str, Any]) -> Any:
    _calls(pedido)
    os._exit(7)


def muere_con_sus_candados(pedido: dict[str, Any]) -> Any:
    """Dies by SIGKILL holding the locks its worker's own loop takes between
    orders, as a worker killed at that moment would: those of any
    multiprocessing `Event` (whose `is_set()` takes a lock shared with every
    process that has the event) and its task queue's reader lock."""
    _calls(pedido)
    for obj in gc.get_objects():
        if isinstance(obj, multiprocessing.synchronize.Event):
            obj._cond.acquire()
        elif isinstance(obj, multiprocessing.queues.Queue):
            obj._rlock.acquire(False)
    os.kill(os.getpid(), signal.SIGKILL)


def _hasta_la_parada() -> None:
    """Wait for the test to say that the server's stop has begun (a file)."""
    flag = Path(os.environ["PEDIDOS_PRUEBA_DIR"]) / "parar"
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def muere_en_la_parada(pedido: dict[str, Any]) -> Any:
    """Once the stop has begun, dies by SIGKILL holding the SQLite write lock,
    as a worker killed inside its own write would."""
    _calls(pedido)
    _hasta_la_parada()
    from pedidos.storage.sqlite.lock import WriteLock

    for obj in gc.get_objects():
        if isinstance(obj, WriteLock):
            obj.lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def termina_en_la_parada(pedido: dict[str, Any]) -> Any:
    """Finishes a moment after the stop has begun: its record needs the lock."""
    _calls(pedido)
    _hasta_la_parada()
    time.sleep(0.5)
    return "hecho"


def deja_un_programa_y_muere(pedido: dict[str, Any]) -> Any:
    """The first call leaves a program running that inherited the worker's
    descriptors (a shell's `&`), then its process dies; its pid goes to ID.hijo."""
    if _calls(pedido) == 1:
        where = Path(os.environ["PEDIDOS_PRUEBA_DIR"]) / f"{pedido['id']}.hijo"
        os.system(f"sleep 600 & echo $! > {where}.tmp && mv {where}.tmp {where}")
        os._exit(7)
    return "hecho"


def demasiado_grande(pedido: dict[str, Any]) -> Any:
    return "x" * (64 * 1024)  # 65 538 bytes as JSON, with its quotes


def no_json(pedido: dict[str, Any]) -> Any:
    return {"productos": set(pedido["productos"])}


class StrRoto(Exception):
    def __str__(self) -> str:
        raise RuntimeError("ni el mensaje")


def _raises(exc: BaseException) -> Any:
    def task(pedido: dict[str, Any]) -> Any:
        _calls(pedido)
        raise exc

    return task


def sale(pedido: dict[str, Any]) -> Any:
    _calls(pedido)
    sys.exit(3)  # a script turned task


def arreglable(pedido: dict[str, Any]) -> Any:
    """Fails until the file `arreglado-ID` exists: an outage fixed by hand."""
    _calls(pedido)
    if not (Path(os.environ["PEDIDOS_PRUEBA_DIR"]) / f"arreglado-{pedido['id']}").exists():
        raise ConnectionError("el servicio de pagos no responde")
    return "pagado"


BEHAVIOURS = {
    "devuelve": devuelve,
    "falla-dos-veces": falla_dos_veces,
    "siempre-falla": siempre_falla,
    "cuelga-una-vez": cuelga_una_vez,
    "hijo-cuelga": hijo_cuelga,
    "sistema-cuelga": sistema_cuelga,
    "se-mata": se_mata,
    "muere-con-candados": muere_con_sus_candados,
    "muere-en-la-parada": muere_en_la_parada,
    "termina-en-la-parada": termina_en_la_parada,
    "deja-programa-y-muere": deja_un_programa_y_muere,
    "grande": demasiado_grande,
    "no-json": no_json,
    "arreglable": arreglable,
    "sale": sale,
    "interrumpe": _raises(KeyboardInterrupt()),
    "cancelada": _raises(asyncio.CancelledError()),
    "str-roto": _raises(StrRoto()),
    "falla-largo": _raises(ValueError("muy " * 100_000)),
}


def segun_cliente(pedido: dict[str, Any]) -> Any:
    return BEHAVIOURS[pedido["cliente"]](pedido)


async def asincrona(pedido: dict[str, Any]) -> Any:
    await asyncio.sleep(0.01)
    return {"bucle": id(asyncio.get_running_loop()), "pid": os.getpid(), "id": pedido["id"]}


NO_ES_FUNCION = 42
