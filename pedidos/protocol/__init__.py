"""The wire: what the bytes on a connection mean, in both directions.

`framing` (with `scanner`, and `telnet` taking telnet's commands out of the
stream first) turns a byte stream into JSON requests however it is cut,
`validation` turns a request into a checked order or command (the commands and
their fields in `commands`), and `replies` is the vocabulary of answers and how
they are written. Pure code: no sockets, no database, no event loop; imports
only `pedidos.domain` and the standard library, so the server and the tests can
use it alike.
"""
