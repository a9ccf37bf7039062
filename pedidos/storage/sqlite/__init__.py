"""The SQLite backend: one file, WAL mode, a writer process for group commits,
and the `multiprocessing.Lock` that hands the file between the writer and the
workers."""
