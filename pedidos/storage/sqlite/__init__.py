"""The SQLite backend: one file in WAL mode.

`backend` implements the storage interface; `store` is one connection with
every query; `rows` is the table (schema, row <-> order); `writer` and
`writer_process` are the writer process that group-commits new orders; `lock`
is the `multiprocessing.Lock` that hands the file between the writer and the
workers; `opener` is how a worker opens its own connection. Imports the
domain and `pedidos.storage.base` only; nothing outside `pedidos.storage`
imports it.
"""
