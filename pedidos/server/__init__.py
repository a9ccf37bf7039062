"""The order server: listeners, connections, what each request does, and its command line.

`server` owns the start and the stop (listeners, TLS, signals, wiring the
storage backend to processing and the service), `config` is what it is told,
`state` is all a connection may reach of it (settings, service, tokens, the
open connections), `connection` turns bytes into requests and replies in
order, `service` answers each request through the storage interface, `auth`
checks tokens, and `cli` is `python3 servidor.py`. It may import every other
layer but a storage backend's insides (it picks one with
`pedidos.storage.open_storage`); nothing imports it.
"""
