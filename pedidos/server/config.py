"""What the server is told to do: its settings, as the command line gives them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pedidos.domain import DEFAULT_LEASE_S, DEFAULT_PORT, DEFAULT_RETRIES
from pedidos.panel import PANEL_HOST
from pedidos.processing.retry import DEFAULT_BACKOFF_S
from pedidos.protocol.framing import DEFAULT_MAX_REQUEST_BYTES

# The command line's defaults, said once: cli.py offers them and shows them in --help.
DEFAULT_WORKERS = 2
DEFAULT_DB = "pedidos.db"
DEFAULT_WORK_TIME = (1.0, 3.0)
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0


@dataclass
class ServerConfig:
    hosts: list[str] = field(default_factory=lambda: ["localhost"])
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    db: str = DEFAULT_DB  # a SQLite file path or a PostgreSQL URL; storage.open_storage picks
    nodo: str | None = None  # this server's name on a shared database (default HOSTNAME:PORT)
    lease: float = DEFAULT_LEASE_S  # seconds a node may miss renewing before it is declared dead
    hints: bool = True  # LISTEN/NOTIFY on a shared database; False: polling only
    work_time: tuple[float, float] = DEFAULT_WORK_TIME
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    log_level: int = logging.INFO
    log_format: str = "text"  # or "json" (logsetup.py)
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    task: str | None = None  # `--tarea MODULO:FUNCION`: what a worker does; None: the simulated sleep
    retries: int = DEFAULT_RETRIES  # `--reintentos`
    task_limit: float | None = None  # `--limite-tarea` seconds; None: no limit
    backoff: float = DEFAULT_BACKOFF_S  # the first retry's wait (tests make it short)
    panel_port: int | None = None  # `--panel`; None: no panel, nothing of pedidos/panel/web imported
    panel_host: str = PANEL_HOST  # `--panel-host`

    def processing_options(self) -> dict[str, Any]:
        """How this server processes orders, as its command line says it: what every
        node of one database must agree on ({option: value as typed, None when not
        given, True for a flag}; the options that apply, `--work-time` only without
        `--tarea`)."""
        options: dict[str, Any] = {"--tarea": self.task}
        if self.task is None:
            options["--work-time"] = "-".join(f"{t:g}" for t in sorted(set(self.work_time)))
        else:
            options["--reintentos"] = self.retries
            options["--limite-tarea"] = None if self.task_limit is None else f"{self.task_limit:g}"
        options["--sin-notify"] = None if self.hints else True
        return options
