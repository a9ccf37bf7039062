"""The order server: listeners, connections, what each request does, and its command line.

`server` owns the start and the stop (signals, the order of both, wiring the
storage backend to processing and the service; `starting` gives up a
storage start that waits when a stop signal comes; `rapido` picks the event
loop), `preflight` what must hold before serving (sockets bound, TLS loaded;
the database is the storage's), `announce` what the log says at the start and
of each order, `listener` accepts connections within the descriptor limit,
`config` is what the server is told, `state` is all a connection may reach of
it (settings, service, tokens, the open connections), `connection` turns bytes
into requests and replies in order (and `closing` ends it: once answered,
idle, or at once, without losing replies; `failures` turns a request that
came to grief into its error reply), `service` answers each request through
the storage interface, `auth` checks tokens, and `cli` is `python3
servidor.py` (with `optvalues`, what each option accepts). It may
import every other layer but a storage backend's insides (it picks one with
`pedidos.storage.open_storage`); nothing imports it.
"""
