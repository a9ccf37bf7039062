"""`python3 cliente.py`: options (`args`), what a person sees (`show`), `--archivo` (`bulk`),
and `main`. Imports the client library, the domain and the protocol's validation (to
check input before sending it); never the server."""
