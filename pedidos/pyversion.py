"""The Python pedidos runs on: 3.10 or newer (requires-python in pyproject.toml).

On 3.9 the server got as far as `ready` and then crashed with a traceback, so
each entry point (servidor.py, cliente.py, python -m pedidos) calls
`require_python` before it imports anything else of pedidos. Keep this module
readable by older Pythons: no f-strings, no annotations it would evaluate.
"""

import sys

OLDEST = (3, 10)


def too_old(program: str, spanish: bool) -> "str | None":
    """The one line to say when this Python is older than OLDEST, else None."""
    if tuple(sys.version_info[:2]) >= OLDEST:
        return None
    needed = ".".join(str(n) for n in OLDEST)
    this = ".".join(str(n) for n in sys.version_info[:3])
    if spanish:  # the client speaks Spanish, the server's start errors English
        return program + ": pedidos necesita Python " + needed + " o posterior; este es " + this
    return program + ": pedidos needs Python " + needed + " or newer; this is " + this


def require_python(program: str, spanish: bool = False) -> None:
    """Exit 1 with that line on standard error when this Python is too old."""
    line = too_old(program, spanish)
    if line is not None:
        sys.stderr.write(line + "\n")
        sys.exit(1)
