"""`listar` as one SELECT, for every SQL backend: its filters, its direction and its limit.

The backends differ only in how a parameter is written (`?` or `%s`) and in
the expression that finds `contiene` in `cliente`, so each passes those two and
gets the same query back.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Dialect(NamedTuple):
    mark: str  # a parameter: "?" (sqlite3) or "%s" (psycopg)
    # `cliente` contains the parameter, which is given lower-cased. Not LIKE,
    # whose '%' and '_' would be wildcards in the user's text.
    contains: str


def listing_query(
    dialect: Dialect,
    columns: str,
    estado: str | None,
    cliente: str | None,
    desde_id: int,
    limite: int,
    contiene: str | None,
    orden: str,
) -> tuple[str, tuple[Any, ...]]:
    """Up to `limite` orders after `desde_id`: ids above it, oldest first
    (`orden` "asc"), or below it, newest first ("desc"; 0 means from the
    newest); `contiene` is a case-insensitive substring of `cliente`. The cheap
    conditions come first, so that a `contiene` scan (no index serves a
    substring) tests them before it."""
    mark = dialect.mark
    newest_first = orden == "desc"
    where: list[str] = []
    params: list[Any] = []
    if not newest_first or desde_id > 0:
        where.append(f"id {'<' if newest_first else '>'} {mark}")
        params.append(desde_id)
    if estado is not None:
        where.append(f"estado = {mark}")
        params.append(estado)
    if cliente is not None:
        where.append(f"cliente = {mark}")
        params.append(cliente)
    if contiene is not None:
        where.append(dialect.contains)
        params.append(contiene.lower())
    query = (
        f"SELECT {columns} FROM pedidos WHERE {' AND '.join(where) or '1 = 1'} "
        f"ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT {mark}"
    )
    return query, (*params, limite)
