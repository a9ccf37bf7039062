"""How `cliente.py` shows orders, states and figures to a person, in Spanish.

Times are shown in the local time zone; the server stores them in UTC.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from datetime import datetime

from pedidos.client.records import Order, Receipt, Stats
from pedidos.domain import Estado

NONE = "-"

# What a stored value may carry that a terminal would obey rather than show:
# C0 and C1 controls (ESC starts the commands that clear a screen, retitle a
# window, move the cursor; CR overwrites a line) and the bidirectional
# overrides that make text read other than it is. Any client may store them in
# an order, so whoever lists it sees them escaped, as Python writes them.
_ESCAPED = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPED |= {c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
_ESCAPED |= {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}


def plain(text: str) -> str:
    """`text` with what a terminal would obey shown escaped (`\\x1b`, `\\r`)."""
    return text.translate(_ESCAPED)


def count(n: int) -> str:
    """Thousands set apart with a space from five digits on, as the RAE asks:
    2000, 12 000, 100 000 (and scripts can grep a four-digit count as it is)."""
    if -10_000 < n < 10_000:
        return str(n)
    return f"{n:,}".replace(",", " ")


def plural(n: int, one: str, many: str) -> str:
    return f"{count(n)} {one if n == 1 else many}"


def seconds(value: float | None) -> str:
    if value is None:
        return NONE
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _local(moment: datetime | None) -> datetime | None:
    return moment.astimezone() if moment is not None else None


def date_time(moment: datetime | None) -> str:
    local = _local(moment)
    return local.strftime("%Y-%m-%d %H:%M:%S") if local else NONE


def clock(moment: datetime | None) -> str:
    local = _local(moment)
    return local.strftime("%H:%M:%S") if local else NONE


def receipt_line(receipt: Receipt) -> str:
    if receipt.duplicado:
        return plain(f"Pedido ya recibido antes: número {receipt.id}, estado {receipt.estado}.")
    return plain(f"Pedido recibido: número {receipt.id}, estado {receipt.estado}.")


def state_line(order: Order) -> str:
    """One line for each state an order goes through, as `--esperar` shows it."""
    return plain(_state_line(order))


def _state_line(order: Order) -> str:
    head = f"Pedido {order.id}: {order.estado}"
    if order.estado == Estado.PENDIENTE and order.reintentar_despues:
        return (
            f"{head}; la tarea falló ({order.error or NONE}), se reintenta a las"
            f" {clock(order.retry_at)} ({plural(order.intentos, 'intento', 'intentos')} hasta ahora)."
        )
    if order.estado == Estado.PENDIENTE:
        tries = plural(order.intentos, "intento interrumpido", "intentos interrumpidos")
        again = f", de nuevo tras {tries}" if order.intentos else ""
        return f"{head}{again} (recibido a las {clock(order.received_at)})."
    if order.estado == Estado.EN_PROCESO:
        return f"{head} en el worker {_worker(order)} desde las {clock(order.started_at)}."
    if order.estado == Estado.LISTO:
        return (
            f"{head} a las {clock(order.finished_at)}; tardó {seconds(order.duration)}"
            f" (worker {_worker(order)}, empezó a las {clock(order.started_at)})."
            + (f" Resultado: {_short(result_text(order))}" if order.resultado is not None else "")
        )
    if order.estado == Estado.FALLIDO and order.error:
        return f"{head} tras {plural(order.intentos, 'intento', 'intentos')}: {order.error}"
    if order.estado == Estado.FALLIDO:
        return f"{head} tras {plural(order.intentos, 'intento interrumpido', 'intentos interrumpidos')}."
    return f"{head}."


def _worker(order: Order) -> str:
    """The worker's number, and its server when several share the database."""
    return f"{order.worker} del nodo {order.nodo}" if order.nodo else f"{order.worker}"


def order_lines(order: Order) -> list[str]:
    worker = f" (worker {_worker(order)})" if order.worker is not None else ""
    lines = [
        f"Pedido {order.id}",
        f"  cliente:    {order.cliente}",
        f"  productos:  {', '.join(order.productos)}",
        f"  dirección:  {order.direccion}",
        f"  referencia: {order.referencia or NONE}",
        f"  estado:     {order.estado}",
        f"  recibido:   {date_time(order.received_at)}",
        f"  inicio:     {date_time(order.started_at)}{worker if order.started_at else ''}",
        f"  fin:        {date_time(order.finished_at)}",
        f"  duración:   {seconds(order.duration)}",
        f"  intentos:   {order.intentos}",
    ]
    if order.fallos:
        lines[-1] += f" ({plural(order.fallos, 'fallo', 'fallos')} de la tarea)"
    if order.reintentar_despues:
        lines.append(f"  reintento:  {date_time(order.retry_at)}")
    if order.error is not None:
        lines.append(f"  error:      {order.error}")
    if order.resultado is not None:
        lines.append(f"  resultado:  {result_text(order)}")
    return [plain(line) for line in lines]


def result_text(order: Order) -> str:
    """`resultado` as JSON, non-ASCII as is: what the task returned."""
    return json.dumps(order.resultado, ensure_ascii=False)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_lines(cliente: str, productos: Sequence[str], direccion: str) -> list[str]:
    lines = [
        "Pedido a enviar:",
        f"  cliente:   {cliente}",
        f"  productos: {', '.join(productos)}",
        f"  dirección: {direccion}",
    ]
    return [plain(line) for line in lines]


def width(text: str) -> int:
    """Columns a text takes on a terminal: wide (CJK) characters take two,
    combining accents none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text
    )


def _cut(text: str, limit: int) -> str:
    if width(text) <= limit:
        return text
    while width(text) > limit - 1:
        text = text[:-1]
    return text + "…"


def table(orders: Sequence[Order], cliente_width: int = 30) -> list[str]:
    header: tuple[str, ...] = ("id", "cliente", "estado", "recibido", "inicio", "fin", "duración")
    rows: list[tuple[str, ...]] = [
        (
            str(o.id),
            _cut(plain(o.cliente), cliente_width),
            plain(o.estado),
            date_time(o.received_at),
            clock(o.started_at),
            clock(o.finished_at),
            seconds(o.duration),
        )
        for o in orders
    ]
    if any(o.nodo for o in orders):  # many servers on one database: which one has it
        header += ("nodo",)
        rows = [(*row, _cut(plain(o.nodo or NONE), 20)) for row, o in zip(rows, orders, strict=True)]
    widths = [max(width(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {0, 6}  # numbers line up on the right

    def line(row: Sequence[str]) -> str:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        return "  ".join(cells).rstrip()

    return [line(header), *(line(row) for row in rows)]


def stats_lines(stats: Stats) -> list[str]:
    estados = {plain(name): n for name, n in stats.get("estados", {}).items()}
    label = max((width(name) for name in estados), default=0)
    digits = max((len(count(n)) for n in estados.values()), default=0)
    lines = ["Pedidos por estado:"]
    lines += [f"  {name}{' ' * (label - width(name))}  {count(n):>{digits}}" for name, n in estados.items()]
    lines += [
        f"En cola: {count(stats.get('en_cola', 0))}",
        f"Workers vivos: {stats.get('workers', 0)}",
        f"Conexiones abiertas: {stats.get('conexiones', 0)}",
        f"Esperas en curso: {stats.get('esperando', 0)}",
        f"En marcha desde hace: {seconds(stats.get('uptime_s'))}",
    ]
    nodos = stats.get("nodos")
    if nodos:
        lines.append(f"Nodos vivos: {len(nodos)}")
        names = [plain(n["nodo"]) for n in nodos]
        most = max(width(name) for name in names)
        lines += [
            f"  {name}{' ' * (most - width(name))}  "
            f"{plural(n['workers'], 'worker', 'workers')}, "
            f"{plural(n['conexiones'], 'conexión', 'conexiones')}, "
            f"{count(n['en proceso'])} en proceso, visto a las {clock(_moment(n['visto']))}"
            for name, n in zip(names, nodos, strict=True)
        ]
    return lines


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
