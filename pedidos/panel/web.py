"""The panel's HTTP side: aiohttp on the server's own event loop.

Routes: `/` and `/static/...` (the page: no data in it, so it is served to
anyone), `/eventos` (Server-Sent Events: one JSON picture per message, see
live.py) and `/metrics` (Prometheus). With tokens, `/eventos` and `/metrics`
want `Authorization: Bearer TOKEN` with an `admin` token; anything else gets
401 (403 for a `cliente` token) and never the data. The page sends the header
with fetch(), since EventSource cannot send one.

aiohttp's own limits guard the port (request line and header sizes, body
size); nothing on it can hold up the order port beyond its share of the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from pedidos.panel.live import Live, LiveSource, unreadable
from pedidos.panel.metrics import make_registry
from pedidos.panel.site import CappedSite
from pedidos.wording import port_advice

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_LINE = 8190  # request line and each header, as aiohttp's defaults; stated so they stay
MAX_BODY = 64 * 1024  # the panel takes no uploads
SHUTDOWN_S = 2.0
KEEPALIVE_S = 75.0  # an idle keep-alive connection holds a slot (site.py) this long at most
# Nothing from another host, no framing by another site, no guessing of types.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _not_bad_input(record: logging.LogRecord) -> bool:
    """aiohttp logs a traceback for every malformed request it refuses (with a
    400): that is the client's fault, answered already, and a way to flood the
    log. Handler errors still get logged."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, HttpProcessingError)


class PanelError(Exception):
    """The panel cannot start; the message is one line for the operator."""


@dataclass
class PanelSource(LiveSource):
    tokens: Any = None  # pedidos.server.auth.TokenBook, or None: no tokens
    throttle: Any = None  # pedidos.server.auth.FailureThrottle


class Panel:
    def __init__(self, source: PanelSource) -> None:
        self._source = source
        self._live = Live(source)
        self._registry, self._collector = make_registry(source.stats)
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.addresses: list[tuple[str, int]] = []

    async def start(self, host: str, port: int) -> None:
        aiohttp_server_log = logging.getLogger("aiohttp.server")
        if _not_bad_input not in aiohttp_server_log.filters:
            aiohttp_server_log.addFilter(_not_bad_input)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/", self._index)
        app.router.add_get("/eventos", self._events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_static("/static/", STATIC, show_index=False)
        app.on_response_prepare.append(_security_headers)
        self._runner = web.AppRunner(
            app,
            access_log=None,  # requests are not events worth a log line each
            shutdown_timeout=SHUTDOWN_S,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            keepalive_timeout=KEEPALIVE_S,
        )
        await self._runner.setup()
        site = CappedSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise PanelError(
                f"cannot listen for the panel on {host}:{port}: {port_advice(exc, '--panel')}"
            ) from None
        self._live.start()
        for address in self._runner.addresses:
            bound, bound_port = address[0], address[1]
            self.addresses.append((bound, bound_port))
            shown = f"[{bound}]" if ":" in bound else bound
            logger.info("panel on http://%s:%d/", shown, bound_port)
        exposed = [a for a, _ in self.addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
        if exposed and self._source.tokens is None:
            logger.warning(
                "panel listening beyond this machine (%s) with no access token: anyone who can reach it "
                "sees the orders; see --token-file",
                ", ".join(exposed),
            )

    async def stop(self) -> None:
        self._closing = True
        for viewer in list(self._live.viewers):
            viewer.wake.set()  # every open stream ends now, so cleanup need not wait
        await self._live.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- handlers ---------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
        if request.method == "HEAD":
            # The headers alone: aiohttp would stream the body to a HEAD too,
            # for ever, and count a page that is none.
            return web.Response(headers=headers)
        response = web.StreamResponse(headers=headers)
        viewer = None
        try:
            # Inside the try: a client that sent its request and left at once
            # (a reset) makes the headers' write fail, once per such request.
            await response.prepare(request)
            viewer = await self._live.join()
            await response.write(b"retry: 1000\n\n")
            while not self._closing:
                await viewer.wake.wait()
                if self._closing:
                    break
                await response.write(viewer.take())
        except ConnectionError:
            pass  # the page went away
        finally:
            if viewer is not None:
                self._live.leave(viewer)
        return response

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        try:
            counts: dict[str, int] | None = await self._live.current_counts()
        except Exception as exc:
            # The database is down: the server's own figures are what the
            # operator needs now; the counts per estado are unknown, so absent.
            unreadable.warning("/metrics without pedidos_estado: the database could not be read: %s", exc)
            counts = None
        body = self._collector.render(self._registry, counts, self._source.figures(), len(self._live.viewers))
        return web.Response(
            body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
        )

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """None if the request may have the data; else the response that refuses it."""
        tokens = self._source.tokens
        if tokens is None:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        principal = tokens.authenticate(token) if scheme.lower() == "bearer" and token else None
        host = request.remote or "?"
        if principal is not None and principal.is_admin:
            self._source.throttle.succeeded(host)
            return None
        if principal is not None:
            return web.Response(status=403, text="El panel requiere un token de administrador.\n")
        if header:
            logger.warning("panel: failed authentication from %s", host)
            delay = self._source.throttle.failed(host)
            if delay:
                await asyncio.sleep(delay)  # repeated guesses from one address wait longer and longer
        return web.Response(
            status=401,
            text="El panel requiere un token de administrador (Authorization: Bearer TOKEN).\n",
            headers={"WWW-Authenticate": 'Bearer realm="pedidos"'},
        )


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)
    response.headers.setdefault("Cache-Control", "no-cache")
