"""When a failed task is tried again: exponential backoff with jitter, up to
`--reintentos` retries. Used by the workers (the task raised) and by the
supervisor (the call went over `--limite-tarea`), so both decide alike."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pedidos.domain import DEFAULT_RETRIES

DEFAULT_BACKOFF_S = 2.0  # the first retry waits 1 to 2 s, the next 2 to 4 s, ...
MAX_BACKOFF_S = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = DEFAULT_RETRIES
    base_s: float = DEFAULT_BACKOFF_S
    cap_s: float = MAX_BACKOFF_S

    def delay(self, fallos: int) -> float:
        """Seconds to wait after failure number `fallos` (1, 2, ...): half of
        the exponential step for sure, the other half at random, so that
        orders that failed together do not all come back at once."""
        step = min(self.cap_s, self.base_s * 2 ** min(fallos - 1, 60))
        return step / 2 + random.uniform(0, step / 2)

    def retry_at(self, fallos: int) -> str | None:
        """The `reintentar_despues` after failure number `fallos`, or None
        when that was the last one allowed (the order is `fallido`)."""
        if fallos > self.retries:
            return None
        moment = datetime.now(timezone.utc) + timedelta(seconds=self.delay(fallos))
        return moment.isoformat(timespec="microseconds")
