"""Who may talk to the server: access tokens, their roles, and slowing down guessers.

Tokens come from `--token-file` (one per line, optionally followed by a role)
and from the environment variable PEDIDOS_SERVIDOR_TOKENS (the same entries,
separated by commas). PEDIDOS_TOKEN is the *client's* token and the server
never reads it: one shell may export both without a shop's token becoming one
of the server's. A `cliente` token may submit orders and see, wait for or
cancel only its own; an `admin` token may do everything. A token has one role:
listed again with another role, the tokens are refused at start. Orders
remember their owner as a digest of the token, never the token itself, and no
token is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

from pedidos.domain import MAX_TOKEN_CHARS, TOKEN_ENV_VAR
from pedidos.protocol.replies import NO_AUTORIZADO, error_reply

CLIENTE = "cliente"
ADMIN = "admin"
ROLES = (CLIENTE, ADMIN)
ENV_VAR = "PEDIDOS_SERVIDOR_TOKENS"
CLIENT_ENV_VAR = TOKEN_ENV_VAR  # the client's own token: never read here
MIN_TOKEN_CHARS = 8

logger = logging.getLogger(__name__)
# A refused token is logged as the connection's event, under the logger it
# always had: log filters and collectors select on that name.
connection_log = logging.getLogger("pedidos.server.connection")


class TokenFileError(Exception):
    """The token file cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class Principal:
    """An authenticated connection: its role and the key its orders carry."""

    role: str
    owner: str  # digest of the token: stored with each order it submits

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


def owner_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]


class TokenBook:
    def __init__(self, entries: list[tuple[str, str]]) -> None:
        # Tokens are kept as digests of equal length, compared one by one in
        # constant time, and every entry is always compared: how long a wrong
        # guess takes says nothing about which part of it was wrong.
        self._entries = [(hashlib.sha256(t.encode()).digest(), role, owner_key(t)) for t, role in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for known, role, owner in self._entries:
            if hmac.compare_digest(known, digest) and found is None:
                found = Principal(role, owner)
        return found


def parse_token_line(line: str, default_role: str) -> tuple[str, str] | None:
    """`TOKEN [ROLE]`; None for a blank line or a comment."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split()
    if len(parts) > 2:
        raise TokenFileError("a token line is 'TOKEN' or 'TOKEN ROLE'")
    token, role = parts[0], parts[1] if len(parts) == 2 else default_role
    if role not in ROLES:
        raise TokenFileError(f"unknown role {role!r}: roles are {', '.join(ROLES)}")
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise TokenFileError(f"a token has {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters")
    return token, role


def load_tokens(path: str | None, environ: Mapping[str, str] | None = None) -> TokenBook | None:
    """The configured tokens, or None when access is open to everyone.

    A token without a role is `cliente`, in the file and in the variable alike."""
    environ = os.environ if environ is None else environ
    entries: list[tuple[str, str, str]] = []  # (token, role, where it was given)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    _add(entries, line, f"{path}, line {number}")
        except OSError as exc:
            raise TokenFileError(f"cannot read the token file {path!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise TokenFileError(f"the token file {path!r} is not UTF-8") from None
        if not entries:
            raise TokenFileError(f"the token file {path!r} has no tokens")
    listed = environ.get(ENV_VAR, "")
    for number, entry in enumerate(listed.replace("\n", ",").split(","), 1):
        _add(entries, entry, f"{ENV_VAR}, entry {number}")
    if listed.strip() and not any(where.startswith(ENV_VAR) for _, _, where in entries):
        raise TokenFileError(f"{ENV_VAR} is set but names no token")
    if not entries and environ.get(CLIENT_ENV_VAR):
        logger.warning(
            "%s is set, but it is a client's token and the server does not read it; "
            "give the server its tokens with --token-file or %s",
            CLIENT_ENV_VAR,
            ENV_VAR,
        )
    return TokenBook(_distinct(entries)) if entries else None


def _add(entries: list[tuple[str, str, str]], line: str, where: str) -> None:
    try:
        entry = parse_token_line(line, CLIENTE)
    except TokenFileError as exc:
        raise TokenFileError(f"{where}: {exc}") from None
    if entry is not None:
        entries.append((*entry, where))


def _distinct(entries: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Each token once. The same token with two roles is a mistake that would
    otherwise give someone the stronger role unnoticed: refused, naming both
    places. Given twice with the same role it is only a repetition."""
    first: dict[str, tuple[str, str]] = {}
    for token, role, where in entries:
        if token not in first:
            first[token] = (role, where)
            continue
        known_role, known_where = first[token]
        if role != known_role:
            raise TokenFileError(
                f"{where}: this token is already given at {known_where} with role {known_role!r}; "
                f"here it has role {role!r}, and a token has one role"
            )
        logger.warning("%s: the same token as %s again; it counts once", where, known_where)
    return [(token, role) for token, (role, _) in first.items()]


class FailureThrottle:
    """Slows down repeated failed attempts from one address: each failure
    doubles the delay before the next refusal is sent, up to `max_delay`."""

    def __init__(self, base_delay: float = 0.1, max_delay: float = 5.0, forget_after: float = 600.0) -> None:
        self._base = base_delay
        self._max = max_delay
        self._forget_after = forget_after
        self._failures: dict[str, tuple[int, float]] = {}

    def failed(self, address: str) -> float:
        """Record a failure; the delay to apply to its reply."""
        now = time.monotonic()
        count, last = self._failures.get(address, (0, now))
        if now - last > self._forget_after:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        if len(self._failures) > 100_000:  # bounded: forget the stalest half
            for key, _ in sorted(self._failures.items(), key=lambda kv: kv[1][1])[:50_000]:
                del self._failures[key]
        return min(self._max, self._base * 2 ** (count - 1)) if count > 1 else 0.0

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


Answer = Union[dict, "asyncio.Future[dict]"]


def answer_token(
    tokens: TokenBook | None,
    throttle: FailureThrottle,
    loop: asyncio.AbstractEventLoop,
    host: str,
    peer: str,
    token: str,
) -> tuple[Principal | None, Answer]:
    """The reply to `autenticar` from `host`, and who the token makes the
    connection (None: nobody, on a server with tokens; anybody, without)."""
    if tokens is None:
        return None, {"ok": True, "rol": ADMIN, "mensaje": "Este servidor no pide token."}
    principal = tokens.authenticate(token)
    if principal is not None:
        throttle.succeeded(host)
        return principal, {"ok": True, "rol": principal.role}
    connection_log.warning("failed authentication from %s", peer)
    refusal = error_reply(NO_AUTORIZADO, "Token no válido.")
    delay = throttle.failed(host)
    if not delay:
        return None, refusal
    # Repeated failures from one address wait longer and longer for their
    # answer, and so does everything sent after them on this connection.
    later: asyncio.Future[dict] = loop.create_future()
    loop.call_later(delay, lambda: later.done() or later.set_result(refusal))
    return None, later
