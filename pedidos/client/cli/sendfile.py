"""`--archivo`: one run over a file of orders, from reading it to the summary.

Reading and sending are in `bulk`, what a run cut short says in `resume`; this
module strings them together and decides how the run ends."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from pedidos.client.blocking import Client, ConnectionProblem
from pedidos.client.cli.bulk import Outcome, Progress, send_entries, summary_lines
from pedidos.client.cli.entries import BadInput, read_entries
from pedidos.client.cli.exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, Stop
from pedidos.client.cli.resume import auto_referencias, interruption_lines, refused_hint
from pedidos.client.cli.show import plural
from pedidos.client.problems import reason

Emit = Callable[[dict[str, Any]], None]


def send_file(args: Any, stdin: TextIO, connect: Callable[[], Client], emit: Emit) -> int:
    """Read the file (or standard input), send every order in it, print the summary."""
    source = "la entrada estándar" if args.archivo == "-" else args.archivo
    try:
        if args.archivo == "-":
            data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
        else:
            with open(args.archivo, "rb") as file:
                data = file.read()
        entries = read_entries(data)
        plain = entries  # before --referencias-auto: the keys of the file's own
        if args.referencias_auto:
            entries = auto_referencias(entries, data)  # from the whole file: the same keys
        if args.desde_linea is not None:
            entries = [e for e in entries if e.line >= args.desde_linea]
            source += f" desde la línea {args.desde_linea}"
    except OSError as exc:
        raise Stop(EXIT_USAGE, f"no se puede leer {source}: {reason(exc)}") from None
    except BadInput as exc:
        raise Stop(EXIT_USAGE, f"{source}: {exc}") from None
    if not entries:
        print(f"No hay pedidos en {source}.")
        return EXIT_OK
    outcome = Outcome(len(entries))
    progress = Progress(len(entries), sys.stderr)
    report = sys.stderr if args.json else sys.stdout
    note = " (con la misma entrada)" if args.archivo == "-" else ""

    def cut_short() -> None:
        progress.close()
        lines = interruption_lines(outcome, entries, source, args.again, note)
        print("\n".join(lines), file=report, flush=True)

    try:
        with connect() as client:
            send_entries(client, entries, outcome, progress, emit if args.json else None)
    except ConnectionProblem as exc:
        if not outcome.sent:
            raise
        cut_short()
        raise ConnectionProblem(f"{exc}; {outcome.so_far()}") from None
    except KeyboardInterrupt:
        cut_short()
        raise Stop(EXIT_INTERRUPTED, f"interrumpido; {outcome.so_far()}") from None
    finally:
        progress.close()
    print("\n".join(summary_lines(outcome, source)), file=report)
    if outcome.refused:
        print(refused_hint(plain, outcome), file=report)
        n = len(outcome.refused)
        detailed = "detallado" if n == 1 else "detallados"
        raise Stop(
            EXIT_REFUSED, f"{plural(n, 'pedido rechazado', 'pedidos rechazados')}, {detailed} en el resumen"
        )
    return EXIT_OK
