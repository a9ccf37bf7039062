"""The SQLite backend: one file in WAL mode.

`backend` implements the storage interface; `store` is one connection with
every query (and `attempts`, a mixin of it, every statement that moves an
order between states once a worker may take it); `rows` is the table (schema,
row <-> order); `files` the file as the operator sees it (its lock file, and
what a failure to open or write it means); `writer` and `writer_process` are
the writer process that group-commits new orders; `lock` is the
`multiprocessing.Lock` that hands the file between the writer and the
workers; `opener` is how a worker opens its own connection. Imports the
domain, the rest of `pedidos.storage` (`base`, `intake`, `listing`) and the
stdlib-only helpers; nothing outside `pedidos.storage` imports it.
"""
