"""A real task: tell another service about each order, over HTTP, with a timeout.

    python3 ejemplos/servicio_avisos.py --port 8000 &      # the service to call
    python3 servidor.py --tarea ejemplos.aviso_http:avisar --reintentos 5 --limite-tarea 30

Anything that goes wrong raises: a refused connection, a timeout, an HTTP
error status. The server records the exception as the order's `error` and
tries again after a growing wait, up to `--reintentos` times. The request
carries an `Idempotency-Key` made of the order's `id`, so a service that
honours it (this one does) counts a retried order once, even if an earlier
try reached it and only its answer was lost.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

URL = "http://127.0.0.1:8000/avisos"  # PEDIDOS_AVISOS_URL overrides it
TIMEOUT_S = 5.0  # keep it below --limite-tarea: a clear error beats being killed

# A service on this machine: straight to it, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def avisar(pedido: dict[str, Any]) -> dict[str, Any]:
    body = {k: pedido[k] for k in ("id", "cliente", "productos", "direccion", "referencia")}
    request = urllib.request.Request(
        os.environ.get("PEDIDOS_AVISOS_URL", URL),
        data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        headers={"Content-Type": "application/json", "Idempotency-Key": f"pedido-{pedido['id']}"},
        method="POST",
    )
    # urlopen raises HTTPError for a 4xx/5xx answer, URLError when nobody
    # listens, TimeoutError when the service is too slow: each one a retry.
    with _DIRECT.open(request, timeout=TIMEOUT_S) as response:
        answer = json.loads(response.read().decode("utf-8"))
    return {"aviso": answer["aviso"], "repetido": answer["repetido"]}
