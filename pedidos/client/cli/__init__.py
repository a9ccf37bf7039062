"""`python3 cliente.py`: options (`args`), what a person sees (`show`), `--archivo` (`bulk`), and `main`."""
