"""What the nodes of one database must agree on: each publishes its processing
options in `nodos.ajustes` (JSON: {option as typed: value as typed, None when not
given, True for a flag}), and a starting node compares its own with every live
node's (nodes.py)."""

from __future__ import annotations

import json
from typing import Any

# The options a node refuses to start beside a live node that differs in them:
# any node's workers take any pending order, so these decide what becomes of it
# (a node without the others' `--tarea` would mark `listo` orders the task never
# ran). The others (`--work-time`, `--sin-notify`) only change how soon: a
# warning. The benchmark runs a node with `--sin-notify` beside one without.
REQUIRED = frozenset({"--tarea", "--reintentos", "--limite-tarea"})


class SettingsDiffer(Exception):
    """Another live node differs in an option of `REQUIRED`; the message says how."""


def published(mine: dict[str, Any] | None) -> str | None:
    return None if mine is None else json.dumps(mine, sort_keys=True)


def _option(name: str, value: Any) -> str:
    if value is None:
        return f"no {name}"
    return name if value is True else f"{name} {value}"


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(option, theirs, mine), as typed, for each option the two nodes disagree on;
    of the options both have, if any differ (an option that applies to one node
    alone, `--work-time` without `--tarea`, follows from one that both have)."""
    both = [n for n in mine if n in theirs and mine[n] != theirs[n]]
    names = both or [n for n in {**theirs, **mine} if mine.get(n) != theirs.get(n)]
    return [(n, _option(n, theirs.get(n)), _option(n, mine.get(n))) for n in names]


# Why a difference in an option outside REQUIRED is worth a warning.
_SLOWER = {
    "--work-time": "its orders take this node's --work-time here, the other's there",
    "--sin-notify": (
        "a node with --sin-notify sends no hints, so an esperar on another node for an order it "
        "finished answers at that node's next poll (up to 2 s), not at once"
    ),
}


def compare(mine: dict[str, Any], others: list[tuple[str, str, int, str, float]]) -> list[str]:
    """Warnings for the live nodes `others` ((nodo, host, pid, ajustes, seconds
    since last seen) each) that differ from `mine` in how soon only; raise
    `SettingsDiffer` for the first that differs in what becomes of an order."""
    warnings = []
    for nodo, host, pid, text, seen in others:
        try:
            theirs = json.loads(text)
        except ValueError:
            continue  # not ours to read: written by another program
        differ = differences(mine, theirs) if isinstance(theirs, dict) else []
        if not differ:
            continue
        # "last seen": a node killed a moment ago is live until its lease runs out.
        said = (
            f"the live node {nodo!r} ({host}, pid {pid}, last seen {seen:.1f} s ago) runs with "
            f"{', '.join(t for _, t, _ in differ)}; this one with {', '.join(m for _, _, m in differ)}"
        )
        if any(name in REQUIRED for name, _, _ in differ):
            raise SettingsDiffer(
                f"{said}. Every node of one database must run with the same --tarea, --reintentos "
                "and --limite-tarea (any node's workers take any pending order): start this one with "
                "the same, or stop every node to change them (a node killed counts as live until "
                "its --lease runs out)"
            )
        why = "; ".join(_SLOWER[name] for name, _, _ in differ if name in _SLOWER)
        warnings.append(f"{said}: {why}" if why else said)
    return warnings
