"""The live panel: a page in the browser and Prometheus `/metrics` (`--panel PORT`).

`web` is the HTTP side (aiohttp: the page's files, the event stream, tokens,
`/metrics`), `live` turns the event bus into what the page shows (coalesced
snapshots, a few a second at most), `nodes` reads the service's nodes on a
shared PostgreSQL database, `metrics` exposes the server's figures
(pedidos/stats.py) through a prometheus-client collector, `site` holds its
listening sockets (`MAX_CONNECTIONS` at most), and `static/` is the page
itself (HTML, CSS, JavaScript; nothing from another host).

The libraries are an optional extra (`pip install -e '.[panel]'`). Without
`--panel` only this module is imported (by the command line, for
`panel_missing`), and it imports nothing beyond the stdlib and
`pedidos.extras`; the server imports `web` inside its startup, only with
`--panel`. The panel may import the domain, the events, the stats, the
protocol's vocabulary and the stdlib-only helpers, never the server, processing or the
storage (tests/test_layers.py): what it reads of the server (counts, latest
orders, nodes, live figures, tokens) is handed to it as a `PanelSource`, so a
change of storage does not reach it.
"""

from __future__ import annotations

from pedidos.extras import install_hint

INSTALL_HINT = install_hint("panel")
# Connections the panel holds open at most (pages, their files, scrapers): its
# descriptors are reserved apart from the order port's (server/listener.py).
MAX_CONNECTIONS = 256
PANEL_HOST = "127.0.0.1"  # `--panel-host`'s default: the panel shows customers' names


def panel_missing() -> str | None:
    """Why the panel cannot run here (one line naming the install command), or None."""
    try:
        import aiohttp  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        return f"--panel needs the panel extra ({exc.name} is not installed): {INSTALL_HINT}"
    return None
