"""The C load generator (loadgen.c): built once with the machine's compiler, run as subprocesses.

A request in Python costs the generator about as much CPU as it costs a Python
echo server, so a Python generator on a 2-core machine caps the very baselines
it is meant to measure. The C generator does the same dialogue for a small
fraction of that; when no C compiler is there, the benchmark falls back to the
Python generator and its headroom check says whether that capped the figures.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import tempfile
from array import array
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("loadgen.c")


class LoadgenUnavailable(Exception):
    """No C compiler, or the build failed: the message says which."""


def build() -> Path:
    """The generator's binary, compiled on first use and cached by its source's hash."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pedidos"
    binary = cache / f"loadgen-{digest}"
    if binary.exists():
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise LoadgenUnavailable("no C compiler (cc) on this machine")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".loadgen-{digest}-{os.getpid()}"
    done = subprocess.run(
        [compiler, "-O2", "-o", str(partial), str(SOURCE)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise LoadgenUnavailable(f"building loadgen.c failed: {done.stderr.strip()[-300:]}")
    partial.replace(binary)  # atomic: two benchmarks building at once both end with a whole binary
    return binary


class CLoad:
    """One C load process, with the same steps as a Python one: ready, go, done."""

    def __init__(self, binary: Path, spec: dict[str, Any]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="pedidos-loadgen-"))
        (self.tmp / "request").write_bytes(spec["line"])
        argv = [str(binary), spec["host"], str(spec["port"]), str(spec["conns"]), str(spec["depth"])]
        argv += [str(spec.get("limit") or 0), str(int(spec["greeting"])), str(int(spec["check"]))]
        argv += [str(self.tmp / "request"), str(self.tmp / "latencies")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def ready(self, timeout: float) -> dict[str, Any]:
        fields = self._line("ready", timeout)
        connected, failed, refused = map(int, fields[:3])
        connect_s = float(fields[3])
        return {"connected": connected, "connect_failed": failed, "refused": refused, "connect_s": connect_s}

    def go(self, start: float, warm: float, seconds: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"go {start!r} {warm!r} {seconds!r}\n")
        self.proc.stdin.flush()

    def done(self, ready: dict[str, Any], timeout: float) -> dict[str, Any]:
        count, bad, lost, unanswered, requests = map(int, self._line("done", timeout))
        self.proc.wait()
        latencies = array("d", (self.tmp / "latencies").read_bytes())
        return {
            "count": count,
            "bad": bad,
            "sample_bad": "",
            "lost": lost,
            "unanswered": unanswered,
            "requests": requests,
            **{k: ready[k] for k in ("connected", "connect_failed", "refused")},
            "latencies": latencies.tobytes(),
        }

    def _line(self, word: str, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        # It prints each line whole and nothing else, so a readable pipe means a whole line.
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise LoadgenUnavailable(f"loadgen said no {word!r} within {timeout:.0f} s")
        line = self.proc.stdout.readline().split()
        if not line or line[0] != word:
            raise LoadgenUnavailable(f"loadgen said {line!r} instead of {word!r} (exit {self.proc.poll()})")
        return line[1:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)
