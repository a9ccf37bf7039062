"""What an open panel costs the server: a page reading `/eventos` and
Prometheus scraping `/metrics` every second, as the benchmark's
"panel open" scenario runs them next to its load. Stdlib only."""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
import time
import urllib.parse
from pathlib import Path

PANEL_ON = re.compile(r"panel on (http://\S+/)")


def panel_url(log: Path, timeout: float = 30.0) -> str:
    """The panel's address, from the server's log (`--panel 0` picks the port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = PANEL_ON.search(log.read_text("utf-8", "replace"))
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise TimeoutError(f"no 'panel on' line in {log}")


class PanelWatcher:
    def __init__(self, url: str, scrape_every: float = 1.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._every = scrape_every
        self._stop = threading.Event()
        self._stream: http.client.HTTPConnection | None = None
        self._threads = [
            threading.Thread(target=self._read_stream, daemon=True),
            threading.Thread(target=self._scrape, daemon=True),
        ]
        self.messages = 0
        self.scrapes = 0

    def __enter__(self) -> PanelWatcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.sock.shutdown(2)  # type: ignore[union-attr]  # wakes its readline
        for thread in self._threads:
            thread.join(10)

    def _read_stream(self) -> None:
        self._stream = http.client.HTTPConnection(self._host, self._port, timeout=10)
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            self._stream.request("GET", "/eventos")
            response = self._stream.getresponse()
            while not self._stop.is_set():
                line = response.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    self.messages += 1
        self._stream.close()

    def _scrape(self) -> None:
        while not self._stop.wait(self._every):
            conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn.request("GET", "/metrics")
                if conn.getresponse().read():
                    self.scrapes += 1
            conn.close()
