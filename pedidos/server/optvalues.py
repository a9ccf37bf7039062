"""What each of the server's options accepts: argparse types whose messages say
what was wrong with the value and what would be right."""

from __future__ import annotations

import argparse
import math
import re

from pedidos.domain import MAX_SECONDS, MIN_LEASE_S
from pedidos.logsetup import LEVELS
from pedidos.storage import is_postgres

# `scheme://`: a URL, never meant as a file (it was taken for a folder named `mysql:`).
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def parse_work_time(text: str) -> tuple[float, float]:
    """`S` or `MIN-MAX` seconds, as `--work-time` takes them."""
    low, dash, high = text.partition("-")
    try:
        bounds = (float(low), float(high if dash else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time in seconds: {text!r} (use S or MIN-MAX)") from None
    if not 0 <= bounds[0] <= bounds[1] or bounds[1] > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"work time must be 0 <= MIN <= MAX <= {MAX_SECONDS:g}, not {text!r}"
        )
    return bounds


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _finite(text: str) -> float:
    """A number of seconds, of any sign: each option says its own bounds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def seconds(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def lease(text: str) -> float:
    value = _finite(text)
    if value < MIN_LEASE_S:
        raise argparse.ArgumentTypeError(
            f"must be {MIN_LEASE_S:g} second or more (a shorter lease declares live nodes dead), not {text}"
        )
    return value


def port(text: str) -> int:
    value = whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def database(text: str) -> str:
    """A SQLite file or a PostgreSQL URL; an empty one (`--db "$DB"` with DB unset)
    would name the working directory, and leave a stray lock file beside it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a SQLite file (pedidos.db) or a postgresql:// URL")
    url = URL_SCHEME.match(text)
    if url and not is_postgres(text):
        # Only the scheme is shown: the rest may hold a password.
        raise argparse.ArgumentTypeError(
            f"a {url.group(1)}:// URL is not supported; "
            "give a SQLite file (pedidos.db) or a postgresql:// URL"
        )
    return text


def node_name(text: str) -> str:
    """A node's name: shown in logs, `estadisticas` and every order's `nodo`;
    a blank one (`--nodo "$NODE"` with NODE unset) would name no one. Trimmed,
    like every value the service stores: `" a "` and `"a"` are one node."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError(
            "empty; give this server a name, or leave --nodo out for HOSTNAME:PORT"
        )
    return name


def log_level(text: str) -> str:
    level = text.upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LEVELS)} (any case)")
    return level
