"""Asking for an order at the terminal, field by field, with the server's own rules.

`python3 cliente.py` without the order's options asks for each field it lacks,
and checks each answer with the same code the server validates with
(`pedidos.protocol.validation`), so a person retypes one field at once instead
of learning of a mistake from the server's refusal after typing them all.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pedidos.client.cli.args import NOT_UTF8, is_utf8
from pedidos.domain import CLIENTE_MAX, DIRECCION_MAX, PRODUCTO_MAX, PRODUCTOS_MAX
from pedidos.protocol.replies import RequestError
from pedidos.protocol.validation import order_products, order_text

QUESTIONS: list[tuple[str, str, Callable[[str], Any]]] = [
    (
        "cliente",
        f"Cliente (hasta {CLIENTE_MAX} caracteres): ",
        lambda text: order_text({"cliente": text}, "cliente", CLIENTE_MAX),
    ),
    (
        "productos",
        f"Productos, separados por comas (de 1 a {PRODUCTOS_MAX}, de hasta {PRODUCTO_MAX} caracteres): ",
        lambda text: list(order_products(text.split(",") if text.strip() else [])),
    ),
    (
        "direccion",
        f"Dirección (hasta {DIRECCION_MAX} caracteres): ",
        lambda text: order_text({"direccion": text}, "direccion", DIRECCION_MAX),
    ),
]


def ask_order(ask: Callable[[str], str], order: dict[str, Any]) -> dict[str, Any]:
    """Ask for each field the order lacks until the answer passes the server's own rules."""
    for name, prompt, check in QUESTIONS:
        while order.get(name) is None:
            answer: str | None
            try:
                answer = ask(prompt)
            except UnicodeDecodeError:  # a strict stdin (a UTF-8 locale) refuses such bytes itself
                answer = None
            if answer is None or not is_utf8(answer):
                # Bytes that are no UTF-8 (another encoding at the terminal): no request carries them.
                print(f"  La respuesta {NOT_UTF8}. Inténtelo de nuevo.", file=sys.stderr, flush=True)
                continue
            try:
                order[name] = check(answer)
            except RequestError as exc:
                print(f"  {exc.mensaje} Inténtelo de nuevo.", file=sys.stderr, flush=True)
    return order


def prompter(stdin: TextIO) -> Callable[[str], str]:
    if stdin is sys.stdin and not is_terminal(sys.stdout):
        # `cliente.py > recibo.txt`: input() would write the questions into the
        # file; they are for the person at the terminal, as the complaints are.
        def ask_on_stderr(prompt: str) -> str:
            sys.stderr.write(prompt)
            sys.stderr.flush()
            return input()

        return ask_on_stderr
    if stdin is sys.stdin:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (arrow keys and history for input())
        return input

    def ask(prompt: str) -> str:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    return ask


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
