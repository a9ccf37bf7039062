"""Processing orders: the worker processes and the server's side of them.

`pool` starts the workers, hears from them and notices their death,
`dispatch` decides which worker gets which pending order, `supervisor` ties
them to the server's events, and `worker` is what runs inside a worker process
(which gets plain configuration, never a live connection). Imports the domain,
the events and the storage interface; never the server or the wire.
"""
