"""How the server and its child processes write their log: text for a person,
or one JSON object per line for a log collector (`--log-format json`).

Configured once at the top of each process (the server's `main`, a worker's or
the writer's entry point), so that every line of one server looks alike.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Fields a log call may add with `extra=`; JSON lines carry them as they are.
FIELDS = ("event", "id", "worker", "peer")


# A traceback's lines are short but for its exception's message, which a task
# may make as long as it likes: a line of a megabyte is read by nobody.
MAX_EXCEPTION_LINE_CHARS = 2000


class _Formatter(logging.Formatter):
    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        text = super().formatException(ei)
        if len(text) <= MAX_EXCEPTION_LINE_CHARS:
            return text
        return "\n".join(_cut(line) for line in text.split("\n"))


def _cut(line: str) -> str:
    if len(line) <= MAX_EXCEPTION_LINE_CHARS:
        return line
    return f"{line[:MAX_EXCEPTION_LINE_CHARS]}… ({len(line) - MAX_EXCEPTION_LINE_CHARS} more characters)"


class JsonFormatter(_Formatter):
    """One compact JSON object per record: time, level, logger, message, fields."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self._name = name

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": self._name or record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: int, fmt: str = TEXT, name: str | None = None) -> None:
    """Log to stderr at `level`; `name` stands for the logger's in a child process
    ("worker 2", "writer")."""
    handler = logging.StreamHandler()
    if fmt == JSON:
        handler.setFormatter(JsonFormatter(name))
    else:
        who = name or "%(name)s"
        handler.setFormatter(_Formatter(f"%(asctime)s %(levelname)s {who}: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


MAX_KINDS = 100  # kinds of repeating error remembered at once (Repeating)
REPEAT_S = 10.0  # an error that repeats is logged at most this often per kind


class Repeating:
    """An error that comes once per request or batch while its cause lasts (a
    full disk, a locked database): logged the first time, then at most once
    every `every` seconds per kind, with how many were left out since. A
    thousand identical lines a second tell the operator nothing the first did,
    and on a full disk they make it worse. Kinds are told apart by `key` (by
    default the message): a new error is never hidden behind an old one."""

    def __init__(self, logger: logging.Logger, every: float = REPEAT_S) -> None:
        self._logger = logger
        self._every = every
        self._kinds: dict[object, tuple[float, int]] = {}  # key -> (next line due, left out since)

    def error(self, msg: str, *args: object, key: object = None) -> None:
        self._log(logging.ERROR, msg, args, key)

    def warning(self, msg: str, *args: object, key: object = None) -> None:
        self._log(logging.WARNING, msg, args, key)

    def info(self, msg: str, *args: object, key: object = None) -> None:
        self._log(logging.INFO, msg, args, key)

    def _log(self, level: int, msg: str, args: tuple[object, ...], key: object) -> None:
        now = time.monotonic()
        kind = msg if key is None else key
        due, left_out = self._kinds.get(kind, (0.0, 0))
        if now < due:
            self._kinds[kind] = (due, left_out + 1)
            return
        if left_out:
            msg += f" ({left_out} more like it since the last such line)"
        if len(self._kinds) >= MAX_KINDS:  # kinds keyed by text: keep the recent ones
            self._kinds = {k: v for k, v in self._kinds.items() if v[0] > now}
        self._kinds[kind] = (now + self._every, 0)
        self._logger.log(level, msg, *args)
