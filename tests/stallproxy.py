"""A TCP proxy on loopback that can stall: it keeps taking bytes from both
sides and forwards none, as a middlebox whose far side went silent does (no
RST, no FIN: the sender's kernel sees its data acknowledged). It can also cut:
every connection closed, and new ones closed at once (`refused` counts them),
until `resume()`. Each connection is two threads; `stop()` ends them all."""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 65536


class StallProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._stopped = threading.Event()
        self._cutting = False
        self.refused = 0
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def stall(self) -> None:
        self._flowing.clear()

    def cut(self) -> None:
        self._cutting = True
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        self._cutting = False
        self._flowing.set()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            if self._cutting:
                near.close()
                self.refused += 1
                continue
            self._flowing.wait()  # a new connection gets no further than the handshake
            try:
                far = socket.create_connection(self.target)
            except OSError:
                near.close()
                continue
            self._sockets += [near, far]
            for a, b in ((near, far), (far, near)):
                thread = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(CHUNK):
                self._flowing.wait()
                if self._stopped.is_set():
                    break
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._stopped.set()
        self._flowing.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
