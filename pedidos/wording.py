"""How log lines and start errors word what the server and the panel both say:
counts, singular or plural as the number asks; a port that cannot be listened on."""

from __future__ import annotations

import errno


def count(n: int, singular: str, plural: str | None = None) -> str:
    """`count(1, "order")` is "1 order"; `count(2, "order")` is "2 orders"."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def port_advice(exc: OSError, option: str = "--port") -> str:
    """Why a port could not be listened on, and what to do: `option` names the
    flag that chose it (`--port`, or the panel's `--panel`)."""
    if exc.errno == errno.EADDRINUSE:
        return f"the address is already in use by another program; stop it, or choose another {option}"
    if exc.errno == errno.EACCES:
        return f"permission denied (ports below 1024 need privileges); choose another {option}"
    return exc.strerror or str(exc)
