"""Processing orders: the worker processes and the server's side of them.

`pool` starts the workers, hears from them and notices their death,
`dispatch` decides which worker gets which pending order, `supervisor` ties
them to the server's events, and `worker` is what runs inside a worker process
(which gets plain configuration, never a live connection). Imports the domain,
the events, the storage interface (and `storage.lease`) and the stdlib-only
helpers; never the server, the wire or a storage backend.
"""
