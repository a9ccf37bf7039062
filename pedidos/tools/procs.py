"""The benchmark's and the soak's servers as subprocesses, and what /proc says about them.

Each server (the order server or an echo baseline) runs in a session of its
own, logging to a file; it is stopped by its pid with SIGTERM, and whatever of
its process group is still there after the deadline is killed, so no worker
outlives the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pedidos.tools.load import BenchError

# Where the `pedidos` package is, so that `sys.executable -m pedidos` finds it
# from a source tree as well as from an installed wheel.
PACKAGE_HOME = str(Path(__file__).resolve().parents[2])


def child_env() -> dict[str, str]:
    """The environment of a child Python process: ours, with the package on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_HOME, env.get("PYTHONPATH")]))
    return env


LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
WRITER_STARTED = re.compile(r"writer started \(pid (\d+)\)")
TICK = os.sysconf("SC_CLK_TCK")


class Child:
    """A server subprocess; `port` once it listens. `argv` is a Python command
    line unless `port` is given: then it is a whole program's, that listens on
    `port` and logs `ready_text` when it does (Redis, say)."""

    def __init__(
        self, argv: list[str], log: Path, ready_text: str = "listening on", port: int = 0, wait: bool = True
    ) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv if port else [sys.executable, *argv],
                cwd=log.parent,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops us
            )
        self.pid = self.proc.pid
        self.port = port
        self._ready_text = ready_text
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Return once it listens (several children started together are waited for in turn)."""
        try:
            self.port = self._wait_listening(self._ready_text, self.port)
        except BaseException:  # Ctrl-C while it starts, too
            self.stop(5)
            raise

    def writer_pid(self) -> int | None:
        """The pid of the server's writer process, as its log last named it."""
        found = WRITER_STARTED.findall(self.log.read_text("utf-8", "replace"))
        return int(found[-1]) if found else None

    def _wait_listening(self, ready_text: str, port: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text("utf-8", "replace")
            match = LISTENING.search(text)
            if (match or port) and ready_text in text:
                return port or int(match.group(1))  # type: ignore[union-attr]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchError(f"server did not start: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # our session: its workers, if any are left
        self.proc.wait()
        return code


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat(entry.name)[1]) == pid:
                    found.append(int(entry.name))
    return found


def _stat(pid: int | str) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, ... starttime."""
    return _stat_fields(Path(f"/proc/{pid}/stat"))


def _stat_fields(path: Path) -> list[str]:
    # The command name, in parentheses, may hold spaces and ")": split after its last ")".
    return path.read_text().rsplit(")", 1)[1].split()


Proc = tuple[int, str]  # (pid, start time): a pid that was reused is another process


def spawned_children(pid: int) -> list[Proc]:
    """The processes `pid` started through multiprocessing (its workers and
    writer), each with its start time, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = _stat(entry.name)
                if int(stat[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append((int(entry.name), stat[19]))
    return found


def alive(proc: Proc) -> bool:
    with contextlib.suppress(OSError):
        stat = _stat(proc[0])
        return stat[0] != "Z" and stat[19] == proc[1]
    return False


def kill(procs: list[Proc]) -> None:
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc[0], signal.SIGKILL)


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds so far of processes `roots` and all their descendants (every
    thread: /proc/PID/stat sums a process's threads). A process that exited is
    no longer counted: take both snapshots of a window while the same ones live."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int(_stat(entry.name)[1])
                kids.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(kids.get(pid, ()))
    return sum(_cpu(f"/proc/{pid}/stat") for pid in found)


def _cpu(stat_path: str) -> float:
    try:
        fields = _stat_fields(Path(stat_path))
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def machine_times(stat_path: str = "/proc/stat") -> tuple[float, float]:
    """CPU seconds so far of the whole machine: busy (not softirq time, mostly
    the loopback traffic of the benchmark itself), and stolen: time the
    hypervisor gave another guest while this one had work to run."""
    with open(stat_path) as stat:
        user, nice, system, _idle, _iowait, irq, _softirq, steal = map(int, stat.readline().split()[1:9])
    return (user + nice + system + irq) / TICK, steal / TICK


def machine_busy() -> float:
    """CPU seconds the machine has been busy or stolen from: either leaves
    less of it to a measurement."""
    busy, stolen = machine_times()
    return busy + stolen


def wait_quiet(limit_s: float, threshold: float = 0.25, sample_s: float = 1.0) -> float:
    """Wait (at most `limit_s`) until the machine is nearly idle: under
    `threshold` of one core busy over `sample_s`. The last share seen."""
    deadline = time.monotonic() + limit_s
    while True:
        before = machine_busy()
        time.sleep(sample_s)
        share = (machine_busy() - before) / sample_s
        if share < threshold or time.monotonic() >= deadline:
            return share


def cpu_snapshot(server: int | None, load: list[int], writer: int | None = None) -> dict[str, float]:
    """CPU seconds so far: the server's event loop thread, its other threads
    (readers, pool monitor, queue feeders), its writer process, its other
    children (workers), the load processes, everything else on the machine
    (other programs), and the time the host stole from this machine."""
    snap = {"loop": 0.0, "threads": 0.0, "writer": 0.0, "workers": 0.0}
    snap["load"] = sum(_cpu(f"/proc/{p}/stat") for p in load)
    snap["other"], stolen = machine_times()
    if server is not None:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{server}/task"):
                key = "loop" if int(task) == server else "threads"
                snap[key] += _cpu(f"/proc/{server}/task/{task}/stat")
        for pid in children(server):
            snap["writer" if pid == writer else "workers"] += _cpu(f"/proc/{pid}/stat")
    snap["other"] -= sum(value for key, value in snap.items() if key != "other")
    snap["steal"] = stolen
    return snap


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Percent of one core used over the window, by part. `other` is rough
    (about ±20): the kernel charges some network work to processes, some not."""
    share = {k: round(100 * (after[k] - before[k]) / seconds) for k in before}
    share["other"] = max(0, share["other"])
    return share


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process has had."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def ask(port: int, requests: list[dict[str, Any]] | dict[str, Any], timeout: float = 30.0) -> Any:
    """Send requests over one fresh connection; the replies (one, or a list)."""
    many = isinstance(requests, list)
    batch = requests if isinstance(requests, list) else [requests]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        data = "".join(json.dumps(r) + "\n" for r in batch).encode()
        sock.sendall(data)
        reader = sock.makefile("rb")
        reader.readline()  # the greeting
        replies = [json.loads(reader.readline()) for _ in batch]
    return replies if many else replies[0]


def stats(port: int) -> dict[str, Any]:
    reply = ask(port, {"accion": "estadisticas"})
    if not reply.get("ok"):
        raise BenchError(f"estadisticas failed: {reply}")
    return reply
