"""A bound on an HTTP/1 request head: past ``MAX_REQUEST_HEAD`` bytes without the blank line, answer 431.

mitmproxy buffers a request head until its blank line arrives, with no limit (its own source says "FIXME:
protect against header size DoS"): a client sending 256 MiB of header lines grew the proxy by 256 MiB.
Mature servers refuse such a head: Node.js answers 431 past 16 KiB, Go's net/http past 1 MiB, nginx
400 past its 8 KiB buffers. Here ``Http1Server.read_headers`` is wrapped: when the head is still
incomplete and the connection's buffer holds more than the limit, the client gets ``431 Request Header
Fields Too Large`` and the connection is closed; the wrapping is in mitm_internals.py. HTTP/2 heads are
left to the h2 library. The lean engine (proxy/lean.py) applies the same limit.
"""

from __future__ import annotations

MAX_REQUEST_HEAD = 64 * 1024
"""Bytes of request line and headers a client may send (AWS ALB and Azure Front Door allow 64 and 32 KiB)."""

TOO_LARGE = 431


def install() -> None:
    """Wrap ``Http1Server.read_headers`` once, so an endless request head gets 431 instead of memory.

    (mitm_internals is imported here: the lean engine reads ``MAX_REQUEST_HEAD`` without mitmproxy.)"""
    from proxy import mitm_internals

    message = (
        f"the request line and headers exceed {MAX_REQUEST_HEAD // 1024} KiB "
        "(replay-proxy's limit) without ending"
    )
    mitm_internals.limit_request_head(MAX_REQUEST_HEAD, TOO_LARGE, message)
