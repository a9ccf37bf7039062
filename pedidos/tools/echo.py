"""The benchmark's baseline: a bare asyncio line echo server.

`python3 -m pedidos.tools.echo streams|protocol [--port 0]` reads a line and
writes it back, one write per line, nothing else, either with streams (`asyncio.start_server`) or
with an `asyncio.Protocol`. It logs `listening on 127.0.0.1:PORT` and runs
until SIGTERM or SIGINT. What it serves is what one Python process can move
over a socket on this machine, which the order server is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

HOST = "127.0.0.1"
BACKLOG = 4096


async def _streams_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        start = 0
        write = self.transport.write
        while True:  # a line in, that line out: one write per line, as the streams echo
            end = data.find(b"\n", start) + 1
            if not end:
                break
            write(data[start:end])
            start = end
        self.buf = data[start:]


async def serve(mode: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if mode == "streams":
        server = await asyncio.start_server(_streams_client, HOST, port, backlog=BACKLOG)
    else:
        server = await loop.create_server(EchoProtocol, HOST, port, backlog=BACKLOG)
    print(f"listening on {HOST}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m pedidos.tools.echo", description=__doc__)
    parser.add_argument("mode", choices=["streams", "protocol"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.mode, args.port))


if __name__ == "__main__":
    main()
