"""Tools that run the real server to measure it: the benchmark (`bench`, with its
`scenarios`, the `baselines` of an `echo` server and of `redis`, `drive` running the
load generators (`load` in Python, `cload` in C), `panelwatch` for an open panel,
`slices` for steadiness, `report` for the table, the process helpers in `procs`,
and on PostgreSQL `pgnodes`, `pgtiming` and `pgdb`), `ceiling` (the two simplest
Python intakes on SQLite, measured beside Redis and the server: how far the design
can go) and the soak test (`soak`, `soak_nodes` for many nodes, and `soak_task`, a
task that fails at random).
Run as `python3 -m pedidos.bench` and `python3 -m pedidos.soak`; they start the
server as `sys.executable -m pedidos`, so they work from an installed wheel.
They speak to the server over the wire (the client library) and read a stopped
server's database only through `pedidos.storage`; besides, `pgdb` runs the
PostgreSQL backend's own intake statement with no server, to measure the
database's limit, `ceiling`'s models write SQLite files of their own in the
contract's table (`pedidos.storage.sqlite.rows.SCHEMA`), and the scenarios ask
`pedidos.panel` and `pedidos.server.rapido` only whether their extras are installed."""
