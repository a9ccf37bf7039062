"""A tiny HTTP service for `ejemplos/aviso_http.py` to call: standard library only.

    python3 ejemplos/servicio_avisos.py [--port 8000] [--fallos 0.3]

POST /avisos with a JSON body answers `{"aviso": N, "repetido": false}`; the
same `Idempotency-Key` again answers the same N with `"repetido": true`, so a
retried order is never counted twice. `--fallos P` answers 503 to a share P
of the requests, to watch the order service retry (see `error` and
`reintentar_despues` with `cliente.py --consultar ID`). GET /avisos lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Avisos(BaseHTTPRequestHandler):
    server: Service

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.path != "/avisos":
            return self._answer(404, {"error": "no existe"})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        if random.random() < self.server.fallos:
            return self._answer(503, {"error": "ocupado, pruebe más tarde"})
        key = self.headers.get("Idempotency-Key") or str(id(body))
        with self.server.guard:
            repetido = key in self.server.avisos
            if not repetido:
                self.server.avisos[key] = (len(self.server.avisos) + 1, body)
            number = self.server.avisos[key][0]
        self._answer(200, {"aviso": number, "repetido": repetido})

    def do_GET(self) -> None:  # noqa: N802
        with self.server.guard:
            listed = [{"aviso": n, "clave": k, "pedido": b} for k, (n, b) in self.server.avisos.items()]
        self._answer(200, {"avisos": listed})

    def _answer(self, status: int, data: Any) -> None:
        payload = json.dumps(data, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class Service(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], fallos: float = 0.0) -> None:
        super().__init__(address, Avisos)
        self.fallos = fallos
        self.avisos: dict[str, tuple[int, Any]] = {}
        self.guard = threading.Lock()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fallos", type=float, default=0.0, help="share of requests answered 503")
    args = parser.parse_args(argv)
    with Service(("127.0.0.1", args.port), args.fallos) as service:
        print(f"avisos en http://127.0.0.1:{service.server_address[1]}/avisos", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            service.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
