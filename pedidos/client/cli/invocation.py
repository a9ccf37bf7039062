"""How the client was run: the name it answers to (`cliente.py` or the console
script) and the command line as the user typed it, to print what to run next.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

SCRIPT = "cliente.py"
CONSOLE_SCRIPT = "pedidos-cliente"  # pyproject's [project.scripts]


def program_name(from_command_line: bool) -> str:
    """The name the client was run as, for its help and its messages: the console
    script `pedidos-cliente` or `cliente.py`. A program calling `main(argv)`
    (and `python -m`, whose name is a module's file) gets `cliente.py`."""
    if not from_command_line or not sys.argv or not sys.argv[0]:
        return SCRIPT
    name = os.path.basename(sys.argv[0])
    stem = name[:-4] if name.lower().endswith(".exe") else name
    return stem if stem == CONSOLE_SCRIPT else SCRIPT


@dataclass(frozen=True)
class Typed:
    """A command line as the user typed it, to print what to run next."""

    prog: str  # "python3 cliente.py", or the console script
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join([self.prog, shlex.join(self.argv)]) if self.argv else self.prog

    def with_option(self, option: str, value: object) -> Typed:
        """The same command with `option` set to `value`, whatever it was."""
        kept: list[str] = []
        args = iter(self.argv)
        for arg in args:
            if arg == option:
                next(args, None)  # and its value
            elif not arg.startswith(option + "="):
                kept.append(arg)
        # Last, so that it wins even over an abbreviation argparse accepted.
        return Typed(self.prog, (*kept, option, str(value)))


def as_typed(prog: str, argv: Sequence[str] | None) -> Typed:
    """The command as typed (`prog` from `program_name`; `argv` None: the command
    line's own), for a run cut short to say how to go on."""
    typed = prog
    if prog == SCRIPT:
        script = sys.argv[0] if argv is None and sys.argv[0].endswith(SCRIPT) else SCRIPT
        typed = f"python3 {shlex.quote(script)}"
    return Typed(typed, tuple(sys.argv[1:] if argv is None else argv))
