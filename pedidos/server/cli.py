"""`python3 servidor.py`: the server's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from pedidos import __version__
from pedidos.domain import DEFAULT_LEASE_S, DEFAULT_RETRIES
from pedidos.extras import install_hint
from pedidos.logsetup import FORMATS, TEXT, configure_logging
from pedidos.panel import PANEL_HOST, panel_missing
from pedidos.processing.retry import DEFAULT_BACKOFF_S
from pedidos.processing.task import TaskError, check_task
from pedidos.protocol.framing import DEFAULT_MAX_REQUEST_BYTES
from pedidos.server import optvalues as value
from pedidos.server import rapido
from pedidos.server.config import (
    DEFAULT_DB,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WORK_TIME,
    DEFAULT_WORKERS,
)
from pedidos.server.server import Server, ServerConfig, StartupError
from pedidos.storage import POSTGRES_INSTALL, is_postgres, postgres_driver_missing

logger = logging.getLogger(__name__)

DB_ENV_VAR = "PEDIDOS_DB"  # the default for --db


def program_name() -> str:
    """How the user called the server: servidor.py, pedidos-servidor, or python3 -m pedidos."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "servidor.py"
    return "python3 -m pedidos" if name == "__main__.py" else name


def build_parser() -> argparse.ArgumentParser:
    prog = program_name()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Order server: takes JSON orders over TCP (IPv4 and IPv6) and "
        "processes them with worker processes.",
        epilog=f"example: {prog} --host :: --port {DEFAULT_PORT} --workers {DEFAULT_WORKERS}",
    )
    parser.add_argument("--version", action="version", version=f"pedidos {__version__}")
    parser.add_argument(
        "--host",
        action="append",
        help="address or name to listen on; repeat for more (default: localhost, "
        "i.e. 127.0.0.1 and ::1; '::' means every interface of both families)",
    )
    parser.add_argument(
        "--port",
        type=value.port,
        default=DEFAULT_PORT,
        help=f"TCP port; 0 picks a free one (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--workers",
        type=value.positive_int,
        default=DEFAULT_WORKERS,
        help=f"worker processes (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get(DB_ENV_VAR, "").strip() or DEFAULT_DB,
        type=value.database,
        help="a SQLite file, or a postgresql:// URL to share one database among many servers "
        f"(default: ${DB_ENV_VAR}, else {DEFAULT_DB})",
    )
    parser.add_argument(
        "--nodo",
        type=value.node_name,
        metavar="NAME",
        help="this server's name among those sharing a PostgreSQL database "
        "(default HOSTNAME:PORT: the machine's name and the port)",
    )
    parser.add_argument(
        "--lease",
        type=value.lease,
        default=DEFAULT_LEASE_S,
        metavar="S",
        help="on PostgreSQL: a node silent this long is declared dead and its orders taken over "
        f"(default {DEFAULT_LEASE_S:g})",
    )
    parser.add_argument(
        "--sin-notify",
        action="store_true",
        help="on PostgreSQL: no LISTEN/NOTIFY, only polling (for poolers that drop LISTEN)",
    )
    parser.add_argument(
        "--work-time",
        type=value.parse_work_time,
        default=DEFAULT_WORK_TIME,
        metavar="S|MIN-MAX",
        help="simulated seconds of work per order, fixed or random in a range "
        f"(default {DEFAULT_WORK_TIME[0]:g}-{DEFAULT_WORK_TIME[1]:g}; 0 for none); not with --tarea",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=value.positive_int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest request accepted (default {DEFAULT_MAX_REQUEST_BYTES})",
    )
    parser.add_argument(
        "--max-connections",
        type=value.positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"open connections at most (default {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=value.seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        help="close a connection that begins and finishes no request for this many seconds "
        f"(default {DEFAULT_IDLE_TIMEOUT:g}; 0: never)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=value.seconds,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        help=f"seconds to wait for replies and workers when stopping (default {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="access tokens, one per line, each optionally followed by its role (cliente, the default, "
        "or admin); PEDIDOS_SERVIDOR_TOKENS in the environment adds more, the same entries separated "
        "by commas (PEDIDOS_TOKEN is the client's and is not read)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    parser.add_argument(
        "--tls-key", metavar="FILE", help="the certificate's private key (PEM), if not in --tls-cert"
    )
    tasks = parser.add_argument_group(
        "real work (instead of the simulated --work-time; the same on every node of a PostgreSQL --db)"
    )
    tasks.add_argument(
        "--tarea",
        metavar="MODULO:FUNCION",
        help="each worker imports FUNCION from MODULO once and calls it with every order (a dict); "
        "what it returns is stored as 'resultado', what it raises as 'error', and the order retried",
    )
    tasks.add_argument(
        "--reintentos",
        type=value.non_negative_int,
        metavar="N",
        help=f"with --tarea: retries of an order whose task failed, before it is 'fallido' "
        f"(default {DEFAULT_RETRIES}; waits grow exponentially, with jitter)",
    )
    tasks.add_argument(
        "--limite-tarea",
        type=value.positive_seconds,
        metavar="S",
        help="with --tarea: a call running longer is stopped (its worker process is replaced) "
        "and counts as a failed attempt (default: no limit)",
    )
    # The first retry's wait; tests shorten it. Not in --help: the default suits real work.
    tasks.add_argument(
        "--reintento-base", type=value.positive_seconds, default=DEFAULT_BACKOFF_S, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--panel",
        type=value.port,
        metavar="PORT",
        help="serve a live page and Prometheus /metrics over HTTP on this port (0 picks a free one); "
        f"needs {install_hint('panel')}",
    )
    parser.add_argument(
        "--panel-host",
        metavar="HOST",
        help=f"with --panel: address the panel listens on (default {PANEL_HOST})",
    )
    parser.add_argument(
        "--sin-rapido",
        action="store_true",
        help=f"asyncio's own event loop even when the rapido extra (uvloop: {install_hint('rapido')}) "
        "is installed",
    )
    parser.add_argument(
        "--log-level",
        type=value.log_level,
        default="INFO",
        metavar="LEVEL",
        help="DEBUG (adds a line per connection and per order: its id, never its contents), "
        "INFO (default), WARNING or ERROR; any case",
    )
    parser.add_argument(
        "--log-format",
        type=str.lower,  # any case, as --log-level
        choices=FORMATS,
        default=TEXT,
        help="text (default) for a person, or json: one object per line (time, level, logger, "
        "message, and fields such as event and id) for a log collector",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if is_postgres(args.db) and postgres_driver_missing():
        parser.exit(2, f"servidor.py: error: a PostgreSQL database needs its driver: {POSTGRES_INSTALL}\n")
    if args.tls_key is not None and args.tls_cert is None:
        parser.error("--tls-key needs --tls-cert")  # a usage error: exit 2
    for flag, given in (("--reintentos", args.reintentos), ("--limite-tarea", args.limite_tarea)):
        if given is not None and args.tarea is None:
            parser.error(f"{flag} only applies with --tarea")
    if args.panel_host is not None and args.panel is None:
        parser.error("--panel-host only applies with --panel PORT")
    # argparse leaves the default object itself when the flag is not given.
    shared = (("--nodo", args.nodo is not None), ("--lease", args.lease is not DEFAULT_LEASE_S))
    for flag, given in (*shared, ("--sin-notify", args.sin_notify)):
        if given and not is_postgres(args.db):
            parser.error(f"{flag} only applies with a PostgreSQL --db (postgresql://...), not a SQLite file")
    if args.tarea is not None and args.work_time is not DEFAULT_WORK_TIME:
        parser.error("--work-time is the simulated work; with --tarea the task is the work")
    if args.panel is not None:
        missing = panel_missing()
        if missing:  # before anything starts: one line, and exit 2 as for a usage error
            print(f"{program_name()}: {missing}", file=sys.stderr)
            return 2
    level = getattr(logging, args.log_level)
    configure_logging(level, args.log_format)
    if args.tarea is not None:
        # SIGTERM as Ctrl-C meanwhile: its default ended the server with status
        # 143 and no word, and left the import's process running on its own.
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_IGN:  # whoever started it may have asked for none
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            # Before any worker starts: a typo is one line and exit 2, never
            # a loop of workers dying at their start. Exit 2 for every import
            # failure (a module missing or raising, a function missing), not
            # the 1 of other start failures: the contract (section 11) says 2.
            check_task(args.tarea)
        except TaskError as exc:
            logger.error("%s", exc)
            return 2
        except KeyboardInterrupt:  # a stop (contract: exit 0) before anything started
            logger.info("interrupted while importing the task; nothing was started")
            return 0
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    config = ServerConfig(
        hosts=args.host or ["localhost"],
        port=args.port,
        workers=args.workers,
        db=args.db,
        nodo=args.nodo,
        lease=args.lease,
        hints=not args.sin_notify,
        work_time=args.work_time,
        max_request_bytes=args.max_request_bytes,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        shutdown_timeout=args.shutdown_timeout,
        log_level=level,
        log_format=args.log_format,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        task=args.tarea,
        retries=DEFAULT_RETRIES if args.reintentos is None else args.reintentos,
        task_limit=args.limite_tarea,
        backoff=args.reintento_base,
        panel_port=args.panel,
        panel_host=PANEL_HOST if args.panel_host is None else args.panel_host,
    )
    try:
        rapido.run(Server(config).serve(), accelerated=not args.sin_rapido)
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
