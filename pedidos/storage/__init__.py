"""Where orders live: the storage interface and its backends.

Every backend keeps the table of the contract (section 7) and the promise
that an order is durable before its acknowledgement. `sqlite/` is the
default, with its writer process and its write lock. Imports only the domain;
the server and processing reach storage only through the interface.
"""
