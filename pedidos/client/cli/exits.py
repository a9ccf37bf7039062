"""How a `cliente.py` run ends: its exit statuses, and `Stop`, which ends it early."""

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_NOT_LISTO = 4  # --esperar saw the order end `fallido` or `cancelado`: `cmd && next` must not go on


class Stop(Exception):
    """Ends the run early with an exit status and the one line that says why."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why
