"""A bound on an HTTP/1 request head: past ``MAX_REQUEST_HEAD`` bytes without the blank line, answer 431.

mitmproxy buffers a request head until its blank line arrives, with no limit (its own source says "FIXME:
protect against header size DoS"): a client sending 256 MiB of header lines grew the proxy by 256 MiB.
Mature servers refuse such a head: Node.js answers 431 past 16 KiB, Go's net/http past 1 MiB, nginx
400 past its 8 KiB buffers. Here ``Http1Server.read_headers`` is wrapped: when the head is still
incomplete and the connection's buffer holds more than the limit, the client gets ``431 Request Header
Fields Too Large`` and the connection is closed. Like gateway.py, this reaches into mitmproxy internals
(the same on mitmproxy 11 and 12). HTTP/2 heads are left to the h2 library.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

http1_layer: Any = _http1  # internals: Http1Server, make_error_response (same on mitmproxy 11 and 12)

MAX_REQUEST_HEAD = 64 * 1024
"""Bytes of request line and headers a client may send (AWS ALB and Azure Front Door allow 64 and 32 KiB)."""

TOO_LARGE = 431


def install() -> None:
    """Wrap ``Http1Server.read_headers`` once, so an endless request head gets 431 instead of memory."""
    server = http1_layer.Http1Server
    original = server.read_headers
    if getattr(original, "replay_proxy", False):
        return

    def read_headers(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from original(self, event)
        # Still reading the head (the original found no blank line) and the buffer is past the limit.
        if (
            isinstance(event, events.DataReceived)
            and getattr(self.state, "__func__", None) is read_headers
            and len(self.buf) > MAX_REQUEST_HEAD
        ):
            message = (
                f"the request line and headers exceed {MAX_REQUEST_HEAD // 1024} KiB "
                "(replay-proxy's limit) without ending"
            )
            yield commands.SendData(self.conn, http1_layer.make_error_response(TOO_LARGE, message))
            yield commands.CloseConnection(self.conn)
            self.buf.maybe_extract_at_most(len(self.buf))  # release it now, not when the layer goes
            self.state = self.done

    read_headers.replay_proxy = True  # type: ignore[attr-defined]
    server.read_headers = read_headers
