"""When forwarding fails: a 502 or 504 that says what happened, and an upstream timeout.

mitmproxy answers a failed upstream exchange itself, with an HTML 502 whose message is terse ("server closed
connection" for a reset as for a close, "[Errno 111] Connect call failed ..." for a refusal), and it never
gives up on an upstream that accepts a request and then says nothing (only its idle timeout, 10 minutes,
ends the client's connection). For the flows the addon forwards:

* ``watch(flow, timeout)`` starts a deadline for the complete response; when it passes, the upstream
  connection is cancelled and the client gets ``504`` saying the upstream did not answer in time;
* the client's 502 (and the journal's line) names the cause: connection refused, connection reset or
  closed before an answer, TLS certificate not trusted, or mitmproxy's own message for anything else.

Nothing of a failed exchange is recorded: mitmproxy calls the ``error`` hook, never ``response``. The
reaches into mitmproxy this needs (the wrapped ``HttpStream.handle_protocol_error``, the upstream
connection found in the proxy server's connection handlers) are in mitm_internals.py.
"""

from __future__ import annotations

import asyncio

from mitmproxy import http

from proxy import mitm_internals

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
    # The stream fails; the protocol error's rewrite (``_answer``) says why.
    if not mitm_internals.cancel_connection(flow.server_conn, "upstream timeout") and flow.killable:
        flow.kill()  # type: ignore[no-untyped-call]  # no connection found: end it rather than wait


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
        if mitm_internals.ended_by_reset(flow.server_conn):
            return f"replay-proxy: the upstream {where} reset the connection (TCP RST) before answering"
        return f"replay-proxy: the upstream {where} closed the connection before answering"
    return f"replay-proxy: the upstream {where} failed: {message}"


def _answer(flow: http.HTTPFlow, message: str) -> tuple[str, int | None] | None:
    """What a watched flow's client gets when its upstream exchange fails: our message, 504 on a timeout."""
    if not flow.metadata.get(WATCHED):
        return None
    timed_out = TIMED_OUT in flow.metadata and not (flow.response is not None and flow.response.stream)
    return explain(flow, message), GATEWAY_TIMEOUT if timed_out else None


def install() -> None:
    """Have watched flows fail with our message and status (``HttpStream.handle_protocol_error``)."""
    mitm_internals.on_response_protocol_error(_answer)
