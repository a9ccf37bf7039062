"""argparse speaking Spanish: its own words, its errors, and option values refused in Spanish.

argparse writes `usage:`, `options` and its errors in English. They are
translated only for the length of one parse (`argparse_in_spanish`), so any
other parser in the same program is left as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from pedidos.domain import ESTADOS

# Words argparse writes itself, looked up through its `_` in every version.
_SPANISH = {
    "usage: ": "uso: ",
    "options": "opciones",
    "positional arguments": "argumentos",
    "show this help message and exit": "muestra esta ayuda y termina",
}
# Its error messages, rewritten as a whole: not every version passes them through `_`.
_ERRORS = [
    (r"^argument (\S+): ", r"opción \1: "),
    (r"expected one argument$", "falta su valor"),
    (r"expected at least one argument$", "falta al menos un valor"),
    (r"^unrecognized arguments: ", "opciones desconocidas: "),
    (r"^ambiguous option: (\S+) could match ", r"\1 puede ser "),
    (r"^the following arguments are required: ", "faltan estas opciones: "),
]


class SpanishParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)$", message)
        for english, spanish in _ERRORS:
            message = re.sub(english, spanish, message)
        if unknown is not None:
            # `cliente.py estadisticas`: an option written without its dashes.
            known = {o for action in self._actions for o in action.option_strings}
            meant = [f"--{word}" for word in unknown.group(1).split() if f"--{word}" in known]
            if meant:
                message += f" (¿quiso decir {' '.join(meant)}?)"
        super().error(message)


@contextlib.contextmanager
def argparse_in_spanish() -> Iterator[None]:
    # argparse looks up its module-level `_` each time it speaks; swapping it
    # only for the length of one parse leaves every other parser untouched.
    english = argparse._  # type: ignore[attr-defined]
    argparse._ = lambda text: _SPANISH.get(text, english(text))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        argparse._ = english  # type: ignore[attr-defined]


def number(kind: Callable[[str], Any], low: float, high: float | None, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} no es {what}") from None
        # `value != value` is NaN, which compares false to every bound.
        if value != value or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} no es {what}")
        return value

    return parse


def estado_arg(text: str) -> str:
    if text not in ESTADOS:
        raise argparse.ArgumentTypeError(f"{text!r} no es un estado; los estados son: {', '.join(ESTADOS)}")
    return text
