"""When forwarding fails: a 502 or 504 that says what happened, and an upstream timeout.

mitmproxy answers a failed upstream exchange itself, with an HTML 502 whose message is terse ("server closed
connection" for a reset as for a close, "[Errno 111] Connect call failed ..." for a refusal), and it never
gives up on an upstream that accepts a request and then says nothing (only its idle timeout, 10 minutes,
ends the client's connection). For the flows the addon forwards:

* ``watch(flow, timeout)`` starts a deadline for the complete response; when it passes, the upstream
  connection is cancelled and the client gets ``504`` saying the upstream did not answer in time;
* the client's 502 (and the journal's line) names the cause: connection refused, connection reset or
  closed before an answer, TLS certificate not trusted, or mitmproxy's own message for anything else.

Nothing of a failed exchange is recorded: mitmproxy calls the ``error`` hook, never ``response``. Like
faults.py, this module reaches into mitmproxy: ``HttpStream.handle_protocol_error`` is wrapped (the one
place where the client's error answer is decided) and the upstream connection is found in the proxy
server's connection handlers. Verified on mitmproxy 11 and 12.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy.layers import http as _http_layers

http_layers: Any = _http_layers  # internals: HttpStream, ResponseProtocolError (same on mitmproxy 11 and 12)

DEFAULT_UPSTREAM_TIMEOUT = 60.0
"""Seconds to wait for an upstream's complete response before answering 504."""

WATCHED = "replay_proxy_watched"
"""flow.metadata key: a forwarded flow whose failures this module explains."""

TIMER = "replay_proxy_upstream_timer"
TIMED_OUT = "replay_proxy_timed_out"
"""flow.metadata key: the upstream timeout (seconds) that expired for this flow."""

GATEWAY_TIMEOUT = 504


def watch(flow: http.HTTPFlow, timeout: float | None) -> None:
    """Explain this forwarded flow's failures; with ``timeout``, give up on the upstream after that long."""
    flow.metadata[WATCHED] = True
    if timeout:
        loop = asyncio.get_running_loop()
        flow.metadata[TIMER] = loop.call_later(timeout, _expire, flow, timeout)


def settle(flow: http.HTTPFlow) -> None:
    """The exchange is over (answered or failed): stop its deadline."""
    timer = flow.metadata.pop(TIMER, None)
    if isinstance(timer, asyncio.TimerHandle):
        timer.cancel()


def status(flow: http.HTTPFlow) -> int:
    """The status the client got for a failed forwarded flow."""
    return GATEWAY_TIMEOUT if TIMED_OUT in flow.metadata else 502


def _expire(flow: http.HTTPFlow, timeout: float) -> None:
    flow.metadata.pop(TIMER, None)
    if flow.error is not None or not flow.live:
        return
    flow.metadata[TIMED_OUT] = timeout
    io = _connection_io(flow.server_conn)
    if io is not None and io.handler is not None:
        io.handler.cancel("upstream timeout")  # the stream fails; handle_protocol_error says why
    elif flow.killable:
        flow.kill()  # type: ignore[no-untyped-call]  # no connection found: end it rather than wait


def _connection_io(server: Any) -> Any:
    """mitmproxy's ConnectionIO (task, reader, writer) of an upstream connection, if it is open."""
    master: Any = ctx.master
    proxyserver = master.addons.get("proxyserver") if master is not None else None
    if proxyserver is None:
        return None
    for handler in list(proxyserver.connections.values()):
        io = handler.transports.get(server)
        if io is not None:
            return io
    return None


def _was_reset(server: Any) -> bool:
    """The upstream connection ended with a TCP reset (its reader holds the ConnectionResetError)."""
    io = _connection_io(server)
    reader = getattr(io, "reader", None)
    exception = getattr(reader, "exception", None)
    return callable(exception) and isinstance(exception(), ConnectionResetError)


def explain(flow: http.HTTPFlow, message: str) -> str:
    """mitmproxy's message for a failed forward, as a sentence naming the upstream and the cause."""
    where = f"{flow.request.host}:{flow.request.port}"
    timeout = flow.metadata.get(TIMED_OUT)
    if timeout is not None:
        return (
            f"replay-proxy: the upstream {where} did not answer within {timeout:g} s: timed out "
            "(--upstream-timeout sets the limit)"
        )
    low = message.lower()
    if "errno 111" in low or "refused" in low:
        return f"replay-proxy: connection refused by the upstream {where}: is the service running there?"
    if "certificate verify failed" in low:
        return (
            f"replay-proxy: the TLS certificate of the upstream {where} is not trusted ({message}); "
            "to trust a private CA, pass --upstream-ca PEM"
        )
    if low.startswith("server closed connection"):
        if _was_reset(flow.server_conn):
            return f"replay-proxy: the upstream {where} reset the connection (TCP RST) before answering"
        return f"replay-proxy: the upstream {where} closed the connection before answering"
    return f"replay-proxy: the upstream {where} failed: {message}"


class _GatewayTimeout:
    """mitmproxy 12's error code for a 504 (its ErrorCode enum has none); mitmproxy 11 takes the int."""

    def http_status_code(self) -> int:
        return GATEWAY_TIMEOUT


def _timeout_code(code: object) -> object:
    return GATEWAY_TIMEOUT if isinstance(code, int) else _GatewayTimeout()


def install() -> None:
    """Wrap ``HttpStream.handle_protocol_error`` once, so watched flows fail with our message and status."""
    stream = http_layers.HttpStream
    original = stream.handle_protocol_error
    if getattr(original, "replay_proxy", False):
        return

    def handle_protocol_error(self: Any, event: Any) -> Generator[Any, Any, None]:
        flow = getattr(self, "flow", None)
        if (
            isinstance(event, http_layers.ResponseProtocolError)
            and flow is not None
            and flow.metadata.get(WATCHED)
        ):
            event.message = explain(flow, event.message)
            if TIMED_OUT in flow.metadata and not (flow.response is not None and flow.response.stream):
                event.code = _timeout_code(event.code)
        yield from original(self, event)

    handle_protocol_error.replay_proxy = True  # type: ignore[attr-defined]
    stream.handle_protocol_error = handle_protocol_error
