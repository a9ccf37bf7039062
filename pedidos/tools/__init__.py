"""Tools that run the real server to measure it: the benchmark (`bench`, with its
`scenarios`, the echo and Redis `baselines`, `drive` running the load generators
(`load` in Python, `cload` in C) and the process helpers in `procs`) and the soak
test (`soak`). Run as `python3 -m pedidos.bench` and `python3 -m pedidos.soak`;
they start the server as `sys.executable -m pedidos`, so they work from an
installed wheel. They speak to the server over the wire (the client library)
and read a stopped server's database only through `pedidos.storage`."""
