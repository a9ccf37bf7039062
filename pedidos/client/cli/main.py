"""`python3 cliente.py`: send orders, one or thousands, and follow or query them.

Exit status: 0 success; 1 the server refused the request; 2 a usage error;
3 the server could not be reached or stopped answering; 4 the order followed
with --esperar ended fallido or cancelado; 130 interrupted (Ctrl-C). Every
failure says why in one line on stderr, never with a traceback.
The statuses are in `exits`, the options in `args`, what is shown to a person
in `show`, `--archivo` in `sendfile` (reading and sending in `bulk`, how a
cut-short run goes on in `resume`), the questions for an order at the
terminal in `ask`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pedidos.client.access import chosen_token
from pedidos.client.blocking import Client, ConnectionProblem, Order, Refused, ServerStopping
from pedidos.client.cli import args as cli
from pedidos.client.cli.ask import ask_order, is_terminal, prompter
from pedidos.client.cli.exits import (
    EXIT_INTERRUPTED,
    EXIT_NOT_LISTO,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Stop,
)
from pedidos.client.cli.invocation import as_typed, program_name
from pedidos.client.cli.sendfile import send_file
from pedidos.client.cli.show import count, order_lines, plain, receipt_line, state_line, stats_lines, table
from pedidos.client.cli.show import summary_lines as order_summary
from pedidos.client.records import list_request, order_of, orders_of, receipt_of, stats_of
from pedidos.domain import Estado
from pedidos.protocol.replies import NO_AUTORIZADO

PAGE = 1000  # the most orders the server lists in one reply


def main(argv: list[str] | None = None, stdin: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    prog = program_name(from_command_line=argv is None)
    args = cli.parse(argv, is_terminal(stdin), prog)
    args.again = as_typed(prog, argv)  # for a run cut short to say how to go on
    try:
        return _run(args, stdin)
    except Refused as exc:
        if args.json:
            _emit(exc.reply)
        mensaje = exc.mensaje
        if exc.code == NO_AUTORIZADO and chosen_token(args.token) is None:
            # The server's own words name the protocol; a person needs the option.
            mensaje = "el servidor pide un token: indíquelo con --token o con la variable PEDIDOS_TOKEN."
        return _fail(prog, EXIT_REFUSED, f"rechazado ({exc.code}): {mensaje}")
    except ConnectionProblem as exc:
        return _fail(prog, EXIT_UNREACHABLE, str(exc))
    except Stop as stop:
        return _fail(prog, stop.status, stop.why)
    except KeyboardInterrupt:
        return _fail(prog, EXIT_INTERRUPTED, "interrumpido.")
    except BrokenPipeError:
        # Whoever read our output (`| head`) has had enough: not a failure. The
        # redirection keeps the final flush at exit from complaining too.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _run(args: Any, stdin: TextIO) -> int:
    if args.mode == cli.FILE:
        return send_file(args, stdin, lambda: _client(args), _emit)
    order = _order_from(args, stdin) if args.mode == cli.ORDER else {}
    with _client(args) as client:
        if args.mode == cli.ORDER:
            return _send_order(client, order, args)
        if args.mode == cli.GET:
            return _show_order(client, args)
        if args.mode == cli.GET_REF:
            return _show_order(client, args, referencia=args.consultar_referencia)
        if args.mode == cli.CANCEL:
            return _cancel(client, args)
        if args.mode == cli.RETRY:
            return _retry(client, args)
        if args.mode == cli.LIST:
            return _list(client, args)
        return _stats(client, args)


def _client(args: Any) -> Client:
    return Client(args.host, args.port, args.timeout, token=args.token, tls=args.tls, cafile=args.cafile)


# --- one order ---------------------------------------------------------------------


def _send_order(client: Client, order: dict[str, Any], args: Any) -> int:
    reply = client.call(order)
    receipt = receipt_of(reply)  # checked with --json too: --esperar follows its id
    if args.json:
        _emit(reply, flush=True)
    else:
        print(receipt_line(receipt), flush=True)
    if args.esperar:
        _follow(client, receipt.id, args.json, known=True)
    return EXIT_OK


def _follow(client: Client, order_id: int, as_json: bool, known: bool = False) -> None:
    """Print the order at each change until it is final. `known`: the server
    has just answered for it (sent, found, retried), so it surely exists."""
    seen: Order | None = None
    try:
        for order in client.follow(order_id):
            seen = order
            if as_json:
                _emit({"ok": True, "pedido": order.as_dict()}, flush=True)
            else:
                print(state_line(order), flush=True)
    except KeyboardInterrupt:
        why = f"interrumpido; el pedido {order_id} sigue su curso (--consultar {order_id} lo muestra)"
        raise Stop(EXIT_INTERRUPTED, why) from None
    except ServerStopping as exc:
        again = f"cuando vuelva a estar en marcha, --consultar {order_id} --esperar lo sigue"
        raise Stop(EXIT_UNREACHABLE, f"{exc}; {again}") from None
    except ConnectionProblem as exc:
        if seen is None and not known:
            raise  # maybe no such order: nothing to resume
        # The order exists and goes on: only the waiting broke, so say how to resume it.
        again = f"el pedido {order_id} sigue su curso (--consultar {order_id} --esperar lo sigue)"
        raise Stop(EXIT_UNREACHABLE, f"{exc}; {again}") from None
    if seen is not None and seen.estado != Estado.LISTO:
        raise Stop(EXIT_NOT_LISTO, f"el pedido {order_id} terminó '{seen.estado}', no 'listo'")


def _order_from(args: Any, stdin: TextIO) -> dict[str, Any]:
    order: dict[str, Any] = {
        "cliente": args.cliente,
        "productos": args.productos,
        "direccion": args.direccion,
    }
    if args.ask:
        try:
            ask_order(prompter(stdin), order)
        except EOFError:
            # Ctrl-D leaves the cursor after the question, on stdout or (stdout redirected) stderr.
            if is_terminal(sys.stdout):
                print(flush=True)
            elif is_terminal(sys.stderr):
                print(file=sys.stderr, flush=True)
            raise Stop(EXIT_USAGE, "pedido no enviado (se acabó la entrada)") from None
        except KeyboardInterrupt:
            raise Stop(EXIT_INTERRUPTED, "interrumpido; pedido no enviado") from None
        print("\n".join(order_summary(order["cliente"], order["productos"], order["direccion"])), flush=True)
    if args.referencia is not None:
        order["referencia"] = args.referencia
    return order


# --- queries -------------------------------------------------------------------------


def _show_order(client: Client, args: Any, referencia: str | None = None) -> int:
    if args.esperar and referencia is None:
        _follow(client, args.consultar, args.json)
        return EXIT_OK
    key = {"id": args.consultar} if referencia is None else {"referencia": referencia}
    reply = client.call({"accion": "consultar", **key})
    if args.esperar:  # found by its key: follow it by its number
        _follow(client, order_of(reply).id, args.json, known=True)
        return EXIT_OK
    _out(args, reply, lambda: order_lines(order_of(reply)))
    return EXIT_OK


def _retry(client: Client, args: Any) -> int:
    reply = client.call({"accion": "reintentar", "id": args.reintentar})
    if args.esperar:
        _follow(client, args.reintentar, args.json, known=True)
        return EXIT_OK
    _out(args, reply, lambda: [f"Pedido {args.reintentar} de nuevo pendiente, con todos sus intentos."])
    return EXIT_OK


def _cancel(client: Client, args: Any) -> int:
    reply = client.call({"accion": "cancelar", "id": args.cancelar})
    _out(args, reply, lambda: [f"Pedido {args.cancelar} cancelado."])
    return EXIT_OK


def _list(client: Client, args: Any) -> int:
    orders: list[Order] = []
    after = args.desde_id
    orden = "desc" if args.recientes else "asc"
    while len(orders) < args.limite:
        want = min(PAGE, args.limite - len(orders))
        reply = client.call(list_request(args.estado, args.cliente, after, want, args.contiene, orden))
        if args.json:
            _emit(reply)
        page = orders_of(reply)
        orders += page
        if len(page) < want:
            break
        after = page[-1].id
    if args.json:
        return EXIT_OK
    if not orders:
        print("No hay pedidos que coincidan.")
        return EXIT_OK
    print("\n".join(table(orders)))
    if len(orders) == args.limite:
        more = args.again.with_option("--desde-id", orders[-1].id)
        print(f"(límite de {count(args.limite)} alcanzado; puede haber más: {more})")
    return EXIT_OK


def _stats(client: Client, args: Any) -> int:
    reply = client.call({"accion": "estadisticas"})
    _out(args, reply, lambda: stats_lines(stats_of(reply)))
    return EXIT_OK


# --- output ----------------------------------------------------------------------------


def _out(args: Any, reply: dict[str, Any], lines: Callable[[], list[str]]) -> None:
    """The reply as JSON for a program (`--json`), or as lines for a person."""
    if args.json:
        _emit(reply)
    else:
        print("\n".join(lines()))


def _emit(reply: dict[str, Any], flush: bool = False) -> None:
    print(json.dumps(reply, ensure_ascii=False), flush=flush)


def _fail(prog: str, status: int, why: str) -> int:
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    # A terminal echoes Ctrl-C as "^C" where the cursor was, mid-line.
    start = "\n" if status == EXIT_INTERRUPTED and is_terminal(sys.stderr) else ""
    print(f"{start}{prog}: {plain(why)}", file=sys.stderr, flush=True)  # the server's words too
    return status


if __name__ == "__main__":
    sys.exit(main())
