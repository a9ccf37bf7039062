"""Who may talk to the server: access tokens, their roles, and slowing down guessers.

Tokens come from `--token-file` (one per line, optionally followed by a role)
or from the environment variable PEDIDOS_TOKEN. A `cliente` token may submit
orders and see, wait for or cancel only its own; an `admin` token may do
everything. Orders remember their owner as a digest of the token, never the
token itself, and no token is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass

CLIENTE = "cliente"
ADMIN = "admin"
ROLES = (CLIENTE, ADMIN)
ENV_VAR = "PEDIDOS_TOKEN"
MAX_TOKEN_CHARS = 256
MIN_TOKEN_CHARS = 8


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


def load_tokens(path: str | None, environ: dict[str, str] | None = None) -> TokenBook | None:
    """The configured tokens, or None when access is open to everyone.

    In the file a token without a role is `cliente`; PEDIDOS_TOKEN, the
    operator's own token, is `admin` unless it names a role."""
    environ = os.environ if environ is None else environ
    entries: list[tuple[str, str]] = []
    if path is not None:
        try:
            with open(path, encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    try:
                        entry = parse_token_line(line, CLIENTE)
                    except TokenFileError as exc:
                        raise TokenFileError(f"{path}, line {number}: {exc}") from None
                    if entry is not None:
                        entries.append(entry)
        except OSError as exc:
            raise TokenFileError(f"cannot read the token file {path!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise TokenFileError(f"the token file {path!r} is not UTF-8") from None
        if not entries:
            raise TokenFileError(f"the token file {path!r} has no tokens")
    if environ.get(ENV_VAR):
        try:
            entry = parse_token_line(environ[ENV_VAR], ADMIN)
        except TokenFileError as exc:
            raise TokenFileError(f"{ENV_VAR}: {exc}") from None
        if entry is not None:
            entries.append(entry)
    return TokenBook(entries) if entries else None


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
