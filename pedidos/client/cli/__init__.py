"""`python3 cliente.py`: options (`args`, argparse speaking Spanish in `spanish`), how it
was run (`invocation`: its name, the command as typed), what a person sees (`show`), the
questions for an order at the terminal (`ask`), `--archivo` (`sendfile`: the file read by
`entries`, sent by `bulk`, and, for a run cut short, `resume`), how a run ends (`exits`),
and `main`. Imports the client library, the domain and the protocol's validation (to
check input before sending it); never the server."""
