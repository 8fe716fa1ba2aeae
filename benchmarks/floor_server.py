"""The floor: a minimal asyncio HTTP/1.1 server answering every request with the same small JSON body.

Nothing can serve a recorded answer faster from Python on this machine; every other target is compared to
it. Keep-alive, Content-Length request bodies, pipelining; no routing, no parsing beyond the head.
``python benchmarks/floor_server.py [--port 0] [--body-file F] [--loop uvloop]`` prints its URL on one line
when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

DEFAULT_BODY = b'{"operationId": "0", "status": "Running"}'


class FloorProtocol(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : line_end if line_end >= 0 else len(head)].strip() or 0)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(self.response)
            if b"\r\nconnection: close" in head:
                self.transport.close()
                return


def response_bytes(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def serve(host: str, port: int, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    response = response_bytes(body)
    server = await loop.create_server(lambda: FloorProtocol(response), host, port)
    bound = server.sockets[0].getsockname()
    print(f"floor on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--body-file", type=Path, help="the body to answer (default: a small JSON object)")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop (the lean engine's: uvloop)",
    )
    args = parser.parse_args(argv)
    body = args.body_file.read_bytes() if args.body_file else DEFAULT_BODY
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.host, args.port, body))
    else:
        asyncio.run(serve(args.host, args.port, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
