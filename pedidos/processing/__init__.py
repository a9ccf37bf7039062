"""Processing orders: the worker processes and the server's side of them.

`pool` starts the workers, hears from them and notices their death,
`dispatch` decides which worker gets which pending order, `supervisor` ties
them to the server's events (and `handback` is what a worker's death does to
the orders it held, and who takes its place), and `worker` is what runs inside a worker process
(which gets plain configuration, never a live connection); `orphan` ends a
worker whose server died, `proctree` is a worker and the programs its task
started, and for `--tarea`, `task` loads and calls it, `retry` says when a
failure is tried again and `deadlines` which call ran over its limit. Imports the domain,
the events, the storage interface (and `storage.lease`) and the stdlib-only
helpers; never the server, the wire or a storage backend.
"""
