"""`python3 cliente.py`: send an order, or ask about orders, from a terminal.

Exit status: 0 success; 1 the server refused the request; 2 a usage error;
3 the server could not be reached or stopped answering.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from .client import DEFAULT_PORT, DEFAULT_TIMEOUT, Client, ConnectionProblem, Refused
from .protocol import RequestError
from .validation import (
    CLIENTE_MAX,
    DIRECCION_MAX,
    PRODUCTO_MAX,
    PRODUCTOS_MAX,
    order_products,
    order_text,
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cliente.py",
        description="Cliente del servidor de pedidos: envía un pedido y muestra la respuesta.",
        epilog='ejemplo: python3 cliente.py --cliente "Juan Pérez" --productos pan agua '
        '--direccion "Av. Siempre Viva 742"',
    )
    parser.add_argument(
        "--host", default="localhost", help="servidor: nombre, IPv4 o IPv6 (por defecto localhost)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"puerto (por defecto {DEFAULT_PORT})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="segundos de espera de la red")
    parser.add_argument("--cliente", help="nombre del cliente")
    parser.add_argument("--productos", nargs="+", metavar="PRODUCTO", help="uno o más productos")
    parser.add_argument("--direccion", help="dirección de entrega")
    parser.add_argument("--referencia", help="clave propia del pedido: reenviarlo no lo duplica")
    return parser


def main(argv: list[str] | None = None, stdin: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    given = [args.cliente, args.productos, args.direccion]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        parser.error("un pedido necesita --cliente, --productos y --direccion")
    if args.cliente is not None:
        order = {"cliente": args.cliente, "productos": args.productos, "direccion": args.direccion}
    elif stdin.isatty():
        try:
            order = ask_order(input)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            print("cliente.py: pedido no enviado.", file=sys.stderr)
            return EXIT_USAGE
    else:
        parser.error("sin terminal, indique el pedido con --cliente, --productos y --direccion")
    if args.referencia is not None:
        order["referencia"] = args.referencia
    try:
        with Client(args.host, args.port, args.timeout) as client:
            reply = client.request(order)
    except ConnectionProblem as exc:
        print(f"cliente.py: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"cliente.py: el servidor rechazó la conexión: {exc.mensaje}", file=sys.stderr)
        return EXIT_REFUSED
    if not reply.get("ok"):
        print(f"Pedido rechazado ({reply.get('error')}): {reply.get('mensaje')}", file=sys.stderr)
        return EXIT_REFUSED
    print(describe_receipt(reply))
    return EXIT_OK


def describe_receipt(reply: dict[str, Any]) -> str:
    if reply.get("duplicado"):
        return f"Pedido ya recibido antes: número {reply['id']}, estado {reply['estado']}."
    return f"Pedido recibido: número {reply['id']}, estado {reply['estado']}."


def ask_order(ask: Callable[[str], str]) -> dict[str, Any]:
    """Ask for the three fields, checking each with the server's own rules."""
    cliente = _ask_until_valid(
        ask,
        f"Cliente (hasta {CLIENTE_MAX} caracteres): ",
        lambda t: order_text({"cliente": t}, "cliente", CLIENTE_MAX),
    )
    productos = _ask_until_valid(
        ask,
        f"Productos, separados por comas (hasta {PRODUCTOS_MAX}, de {PRODUCTO_MAX} caracteres cada uno): ",
        lambda t: list(order_products([p for p in t.split(",")] if t.strip() else [])),
    )
    direccion = _ask_until_valid(
        ask,
        f"Dirección (hasta {DIRECCION_MAX} caracteres): ",
        lambda t: order_text({"direccion": t}, "direccion", DIRECCION_MAX),
    )
    return {"cliente": cliente, "productos": productos, "direccion": direccion}


def _ask_until_valid(ask: Callable[[str], str], prompt: str, check: Callable[[str], Any]) -> Any:
    while True:
        try:
            return check(ask(prompt))
        except RequestError as exc:
            print(f"  {exc.mensaje} Inténtelo de nuevo.", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
