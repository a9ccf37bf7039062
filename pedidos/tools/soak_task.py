"""A task for `python3 -m pedidos.soak --tarea`: fails at random, so that the
soak's chaos meets retries, backoff and `fallido` orders too."""

from __future__ import annotations

import random
import time
from typing import Any

FAILURE_SHARE = 0.3


def falla_a_veces(pedido: dict[str, Any]) -> dict[str, Any]:
    time.sleep(random.uniform(0, 0.02))
    if random.random() < FAILURE_SHARE:
        raise RuntimeError(f"fallo al azar en el intento {pedido['intentos'] + 1}")
    return {"id": pedido["id"]}
