"""Counts in log lines, singular or plural as the number asks."""

from __future__ import annotations


def count(n: int, singular: str, plural: str | None = None) -> str:
    """`count(1, "order")` is "1 order"; `count(2, "order")` is "2 orders"."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
