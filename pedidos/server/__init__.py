"""The order server: listeners, connections, what each request does, and its command line.

`server` owns the start and the stop (signals, the order of both),
`preflight` what must hold before serving (sockets bound, the database locked,
TLS loaded), `listener` accepts connections within the descriptor limit,
`connection` turns bytes into requests and replies in order, `service` answers
each request through the storage interface, `auth` checks tokens, and `cli`
is `python3 servidor.py`. It may import every other layer; nothing imports it.
"""
