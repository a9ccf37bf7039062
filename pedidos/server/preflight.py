"""What must hold before the server serves: its sockets bound and the TLS
files loaded (the database is the storage backend's: `Storage.start`). Each
failure is one sentence for the operator that names the file or address and
what to do (`StartupError`, exit 1).

The order matters (server.py): bind first, then start the storage, which
makes the database this server's and only then takes up what a crash left
`en proceso`, so that a second start on the same database changes nothing of
the running server's orders.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl

from pedidos.wording import port_advice

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096
# Only a family or address this machine does not have may be left out; an
# address in use, or refused, is a failure (contract §1).
MISSING_ON_THIS_MACHINE = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})
FREE_PORT_TRIES = 5  # --port 0: a free port on the first address may be taken on the next


class StartupError(Exception):
    """The server cannot start; the message is one line for the operator."""


# --- the listening sockets ------------------------------------------------------


def listen_addresses(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) pairs that `--host` names."""
    if host.lower().rstrip(".") == "localhost":  # names are case-blind; a final dot is the root
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    if host in ("::", "[::]"):
        return [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        # `localhost:8888`: one colon is no IPv6 address, but a port in the wrong place.
        hint = "; the port goes in --port" if host.count(":") == 1 else ""
        raise StartupError(f"cannot resolve host {host!r}: {exc.strerror}{hint}") from None
    pairs = []
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr[0]) not in pairs:
            pairs.append((family, sockaddr[0]))
    return pairs


class _PortTaken(Exception):
    pass


def bind_sockets(hosts: list[str], port: int) -> list[socket.socket]:
    """One listening socket per address; an IPv6 socket is v6-only, so the
    families never share one. An address or family this machine lacks is
    logged and skipped; any other failure, or nothing to listen on, stops the start."""
    pairs = planned_addresses(hosts, port)
    for _ in range(FREE_PORT_TRIES if port == 0 else 1):
        try:
            return _bind_all(pairs, port)
        except _PortTaken:
            continue  # --port 0: the port picked on the first address was taken on another
    raise StartupError("cannot find a port free on every address; give --port")


# The address that takes every address of its family: with it bound, another
# address of that family on the same port is in use by this very server.
WILDCARDS = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def planned_addresses(hosts: list[str], port: int) -> list[tuple[int, str]]:
    """(family, address) pairs to bind, each once. An address of a family whose
    wildcard is also named (`--host :: --host 127.0.0.1`) is left out, and logged:
    the wildcard already listens on it, and binding it too would fail as if
    another program held the port."""
    pairs: list[tuple[int, str]] = []
    for host in hosts:
        for pair in listen_addresses(host, port):
            if pair not in pairs:
                pairs.append(pair)
    covered = {family for family, address in pairs if WILDCARDS.get(family) == address}
    kept = []
    for family, address in pairs:
        if family in covered and address != WILDCARDS[family]:
            logger.info("%s is covered by %s: listening there", _shown(address), _shown(WILDCARDS[family]))
            continue
        kept.append((family, address))
    return kept


def _bind_all(pairs: list[tuple[int, str]], port: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    skipped = []
    picked = port == 0
    try:
        for family, address in pairs:
            try:
                sock = _listen(family, address, port)
            except OSError as exc:
                shown = _shown(address)
                reason = exc.strerror or str(exc)
                if exc.errno in MISSING_ON_THIS_MACHINE:
                    logger.warning(
                        "cannot listen on %s:%d: %s (no such address or family on this machine); "
                        "going on without it",
                        shown,
                        port,
                        reason,
                    )
                    skipped.append(f"{shown}: {reason}")
                    continue
                if exc.errno == errno.EADDRINUSE and picked and sockets:
                    raise _PortTaken from None
                raise StartupError(f"cannot listen on {shown}:{port}: {port_advice(exc)}") from None
            if port == 0:  # the other addresses take the same free port
                port = sock.getsockname()[1]
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise StartupError("cannot listen on any address (" + "; ".join(skipped) + ")")
    return sockets


def _listen(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _shown(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --- TLS ---------------------------------------------------------------------------


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2 at least), or None for plain TCP."""
    if cert is None and key is None:
        return None
    if cert is None:
        raise StartupError("--tls-key needs --tls-cert")
    where = f"cannot load the TLS certificate {cert}"
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not os.path.isfile(path):
            raise StartupError(f"{where}: the {flag} file {path} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # A passphrase would be asked on the terminal; a server has none to give.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:  # before OSError, of which it is a kind
        raise StartupError(f"{where}: {_tls_advice(cert, key or cert, exc)}") from None
    except OSError as exc:
        raise StartupError(f"{where}: {exc.strerror or exc}") from None
    return context


def _tls_advice(cert: str, key: str, exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"the key {key} does not belong to this certificate; give --tls-key the key made with it"
    if "BEGIN CERTIFICATE" not in _head(cert):
        return f"{cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----); check --tls-cert"
    key_text = _head(key)
    if "ENCRYPTED" in key_text or "Proc-Type: 4,ENCRYPTED" in key_text:
        return f"the key {key} is protected by a passphrase; give the server a key without one"
    if "PRIVATE KEY-----" not in key_text:
        which = "--tls-key" if key != cert else "--tls-key (or the certificate file)"
        return f"{key} holds no PEM private key (-----BEGIN PRIVATE KEY-----); check {which}"
    return f"OpenSSL refused the files ({exc.reason or exc}); check --tls-cert and --tls-key"


def _head(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read(1 << 20).decode("ascii", "replace")
    except OSError:
        return ""
