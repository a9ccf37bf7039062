"""A real task: write a delivery note (albarán) for each order.

    python3 servidor.py --tarea ejemplos.albaran:escribir

Each order gets one text file, `albaranes/albaran-000017.txt` (the folder is
PEDIDOS_ALBARANES if set), named by the order's `id`. Processing is at least
once: an order whose worker died after writing the file is done again. Keyed
by `id`, the second run overwrites the same file instead of printing a second
note; written to a temporary name and renamed, a reader never sees half a note.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def escribir(pedido: dict[str, Any]) -> dict[str, Any]:
    folder = Path(os.environ.get("PEDIDOS_ALBARANES", "albaranes"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"albaran-{pedido['id']:06d}.txt"
    lines = [
        f"ALBARÁN DE ENTREGA  n.º {pedido['id']}",
        f"Referencia: {pedido['referencia'] or '-'}",
        f"Recibido:   {pedido['fecha_recibido']}",
        "",
        f"Cliente:    {pedido['cliente']}",
        f"Dirección:  {pedido['direccion']}",
        "",
        *(f"  [ ] {producto}" for producto in pedido["productos"]),
        "",
        "Firma: ______________________",
    ]
    text = "\n".join(lines) + "\n"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)  # atomic: the old note, or the new one
    # What is returned is stored as the order's `resultado` (JSON, 64 KiB at most).
    return {"albaran": str(path), "lineas": len(lines)}
