"""The lean engine: replay and play on a plain asyncio server, without mitmproxy in the request path.

``--engine lean`` (``ReplayProxy(engine="lean")``) serves the same answers as the mitmproxy engine, from the
same core (proxy/handler.py: router, answers, rewrite, journal, fault plans), about four times faster. It
speaks HTTP/1.1 in reverse mode: keep-alive, pipelining (answers in order), chunked request bodies, the
body size limit (413) and a bounded request head (431, proxy/request_head.py). Every fault of a plan is
carried out on the asyncio transport (reset: SO_LINGER 0, then abort).

It cannot record, forward, act as a forward proxy, layer over an upstream, speak HTTP/2 or TLS:
``refusal`` says so at start (exit 2) and names ``--engine mitmproxy``.

The parser is httptools (llhttp, the parser of Node.js and uvicorn): in this repository's benchmark it
served 8,300 req/s where h11 served 6,200 with the same handler (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import httptools  # type: ignore[import-untyped,unused-ignore]

from proxy import control
from proxy.diagnostic import stopping_response
from proxy.errors import ConfigError
from proxy.fault_plan import FaultPlan
from proxy.handler import Arrival, Outcome, Wire, request_url
from proxy.model import Request, Response, set_header
from proxy.request_head import MAX_REQUEST_HEAD
from proxy.session import JOURNAL_OPTION, Core, build_session

logger = logging.getLogger("proxy")

ENGINES = ("mitmproxy", "lean")
DEFAULT_ENGINE = "mitmproxy"

LINGER = 2.0
"""Seconds a connection that was refused (400, 413, 431, 505) keeps reading before it closes."""

PAUSE_AT = 64
"""Pipelined requests waiting for their turn past which the connection stops reading (backpressure)."""

_HEAD_CACHE_SIZE = 4096
_UNSUPPORTED = "use --engine mitmproxy (engine='mitmproxy')"


def refusal(
    *, mode: str, record_mode: str, upstream: str | None, passthrough: bool, forward_port: int | None
) -> str | None:
    """Why the lean engine cannot run this session, or None when it can."""
    if mode != "reverse" or forward_port is not None:
        what = "forward-proxy mode (--mode regular, forward_port)"
    elif record_mode != "none":
        what = f"recording (record mode {record_mode})"
    elif upstream or passthrough:
        what = "forwarding to an upstream (--upstream)"
    else:
        return None
    return (
        f"the lean engine does not do {what}: it replays and plays offline, over HTTP/1.1 without TLS; "
        + _UNSUPPORTED
    )


def install_session(core: Core, options: dict[str, Any], max_body_size: int | None) -> None:
    """Build the session for ``options`` (the ``replay_*`` options) and make it ``core``'s, as the addon's
    ``configure`` does under mitmproxy (``--journal FILE`` included). Raises ReplayProxyError on a bad
    file or option."""
    core.open_journal_file(options.get(JOURNAL_OPTION))
    body_size_limit = str(max_body_size) if max_body_size else None
    core.begin(build_session(SimpleNamespace(**options, body_size_limit=body_size_limit)))


class LeanServer:
    """The listener and its connections; answers with ``core``'s session, handler and journal.

    ``target`` is the origin mitmproxy's reverse mode would be set up for (the upstream, else the
    cassette's origin, else an unreachable one): every request's Host header becomes its authority and the
    journal's ``url`` is on it, as under mitmproxy, so both engines hand the core the same request.
    """

    def __init__(self, core: Core, max_body_size: int | None, target: str) -> None:
        self.core = core
        """The engine-neutral state (proxy/session.py), under the name the request path reads."""
        self.max_body_size = max_body_size
        self.target = target
        self.host_header = authority(target)
        self.clients: set[_Connection] = set()
        self.server: asyncio.Server | None = None
        self._heads: dict[int, tuple[Wire, bytes]] = {}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        if not self.server.sockets:
            raise OSError("no listening socket")
        bound = self.server.sockets[0].getsockname()
        return bound[0], bound[1]

    async def close(self) -> None:
        """Stop listening; release every waiting answer and close every connection."""
        self.core.stopping = True
        if self.server is not None:
            self.server.close()
        for connection in list(self.clients):
            connection.drop()
        self.core.close_session()
        self.core.open_journal_file(None)

    def waiting(self) -> int:
        """Connections whose answer is being carried out over time (a delay, a dribble, a hang)."""
        return sum(1 for c in self.clients if c.task is not None)

    # -- one request -----------------------------------------------------------------------------------

    def outcome(self, incoming: _Incoming, origin: str) -> Outcome:
        """What ``incoming`` gets from the core (proxy/handler.py), journaled."""
        core = self.core
        session = core.session
        path = incoming.target
        client_url = origin + path
        if core.control is not None and path.startswith(control.PREFIX):  # never matched nor journaled
            asked = Request(incoming.method, client_url, tuple(incoming.headers), bytes(incoming.body))
            return Outcome("control", core.handler.wire(core.control.answer(asked)))
        if session is None:
            wire = core.handler.wire(stopping_response())
            return Outcome("stopping", wire)
        url = request_url(session, origin, path)
        request = Request(incoming.method, url, tuple(incoming.headers), bytes(incoming.body))
        arrival = Arrival(self.target + path, path, client_url, origin, origin, incoming.arrived)
        outcome = core.handler.handle(session, request, arrival)
        if outcome.exchange is not None:
            core.journal.add(outcome.exchange)
        if outcome.wire is None:  # refused at start: never here unless the router forwards
            body = b"replay-proxy: the lean engine does not forward; " + _UNSUPPORTED.encode() + b"\n"
            response = Response(502, "Bad Gateway", (("Content-Type", "text/plain"),), body)
            return Outcome("refused", core.handler.wire(response))
        return outcome

    def refused(self, incoming: _Incoming, origin: str, status: int, detail: str) -> None:
        """Journal a request the engine refused before the core saw it (413)."""
        path = incoming.target
        request = Request(incoming.method, origin + path, tuple(incoming.headers), b"")
        arrival = Arrival(self.target + path, path, origin + path, origin, origin, incoming.arrived)
        self.core.journal.add(self.core.handler.entry(request, arrival, status, "refused", detail))

    def head(self, wire: Wire) -> bytes:
        """The status line and header fields of ``wire`` (as mitmproxy writes them), cached per answer."""
        cached = self._heads.get(id(wire))
        if cached is not None and cached[0] is wire:
            return cached[1]
        head = _assemble(wire.status, wire.reason, wire.fields)
        if len(self._heads) >= _HEAD_CACHE_SIZE:
            self._heads = {}
        self._heads[id(wire)] = (wire, head)
        return head


def _assemble(status: int, reason: bytes, fields: Any) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines.extend(name + b": " + value + b"\r\n" for name, value in fields)
    lines.append(b"\r\n")
    return b"".join(lines)


def _error(status: int, reason: str, message: str) -> bytes:
    """The engine's own refusal (400, 413, 431, 505): a short text body, then the connection closes."""
    body = f"replay-proxy: {message}\n".encode()
    fields = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Connection", b"close"),
        (b"content-length", str(len(body)).encode()),
    ]
    return _assemble(status, reason.encode(), fields) + body


class _Incoming:
    """One parsed request: method, origin-form target, header fields, body, and how the client wants
    the connection handled."""

    __slots__ = ("arrived", "body", "close", "headers", "method", "target")

    def __init__(self, arrived: float) -> None:
        self.arrived = arrived
        self.method = ""
        self.target = ""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.close = False


class _Connection(asyncio.Protocol):
    """One client connection: requests answered in order; an answer with a fault plan runs as a task
    while the requests pipelined behind it wait."""

    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Incoming | None = None
        self.url = b""
        self.head_bytes = 0
        self.in_head = False
        self.refusing = False
        self.pending: deque[_Incoming | _Refusal] = deque()
        self.task: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.origin = ""
        self.paused = False
        self.close_when_done = False

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream one (uvloop's is no asyncio.Transport)
        host, port = transport.get_extra_info("sockname")[:2]
        self.origin = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()
        self.server.clients.discard(self)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.refusing or self.gone.is_set():
            return
        if self.in_head or self.current is None:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close_when_done = True  # answered as a plain request; no protocol switch
        except httptools.HttpParserError as e:
            if not self.refusing:
                self._refuse_now(*_parse_error(data, e))
            return
        if self.refusing:
            return
        if (self.in_head or self.current is None) and self.head_bytes > MAX_REQUEST_HEAD:
            message = (
                f"the request line and headers exceed {MAX_REQUEST_HEAD // 1024} KiB "
                "(replay-proxy's limit) without ending"
            )
            self._refuse_now(431, "Request Header Fields Too Large", message)
            return
        self._pump()

    def eof_received(self) -> bool | None:
        return None  # the client is gone: close (a hanging or delayed answer is released)

    # -- httptools callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = _Incoming(time.time())
        self.url = b""
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        incoming = self.current
        assert incoming is not None
        self.in_head = False
        self.head_bytes = 0
        incoming.method = self.parser.get_method().decode("latin-1")
        incoming.target = self.url.decode("utf-8", "surrogateescape")
        incoming.close = not self.parser.should_keep_alive()
        if incoming.method == "CONNECT":
            self._refuse_now(400, "Bad Request", f"CONNECT is for forward proxies; {_UNSUPPORTED}")
            return
        expect = False
        host = self.server.host_header
        for i, (name, value) in enumerate(incoming.headers):
            lower = name.lower()
            if lower == "host":
                incoming.headers[i] = (name, host)
            elif lower == "content-length" and self._too_large(_int(value)):
                self._refuse_body(incoming)
                return
            elif lower == "expect" and value.strip().lower() == "100-continue":
                expect = True
        if expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        incoming = self.current
        if incoming is None or self.refusing:
            return
        incoming.body += body
        if self._too_large(len(incoming.body)):
            self._refuse_body(incoming)

    def on_message_complete(self) -> None:
        incoming = self.current
        if self.refusing:
            return
        self.current = None
        self.head_bytes = 0
        if incoming is None or self.refusing:
            return
        self.pending.append(incoming)
        if len(self.pending) >= PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    # -- answering -------------------------------------------------------------------------------------

    def _too_large(self, size: int) -> bool:
        limit = self.server.max_body_size
        return limit is not None and size > limit

    def _refuse_body(self, incoming: _Incoming) -> None:
        """413 once the answers before it are out: the body is larger than ``--max-body-size``."""
        self.server.refused(incoming, self.origin, 413, "request body larger than --max-body-size")
        message = "Request body exceeds the body_size_limit (--max-body-size)"
        self.refusing = True
        self.current = None
        self.pending.append(_Refusal(413, "Payload Too Large", message))
        self._pump()

    def _refuse_now(self, status: int, reason: str, message: str) -> None:
        self.refusing = True
        self.pending.append(_Refusal(status, reason, message))
        self._pump()

    def _pump(self) -> None:
        """Answer the waiting requests in order, until one needs time (its plan runs as a task)."""
        while self.pending and self.task is None and not self.gone.is_set():
            incoming = self.pending.popleft()
            if isinstance(incoming, _Refusal):
                self._linger(_error(incoming.status, incoming.reason, incoming.message))
                return
            outcome = self.server.outcome(incoming, self.origin)
            wire = outcome.wire
            assert wire is not None
            if outcome.plan is None:
                self._send(incoming, wire)
            else:
                self.task = asyncio.get_running_loop().create_task(
                    self._carry_out(incoming, wire, outcome.plan)
                )
        if self.paused and len(self.pending) < PAUSE_AT // 2 and not self.gone.is_set():
            self.paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        if self.close_when_done and not self.pending and self.task is None and not self.gone.is_set():
            self._write(b"", close=True)

    def _linger(self, data: bytes) -> None:
        """Send a refusal, then close the sending side but read (and drop) what the client still sends
        for ``LINGER`` seconds: a client sending its whole body before it reads gets the answer, not a
        reset (a close with unread data sends RST, which discards the answer at the client)."""
        transport = self.transport
        assert transport is not None
        transport.write(data)
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER, transport.close)
            self.gone.set()
        else:
            self._write(b"", close=True)

    def _write(self, data: bytes, close: bool) -> None:
        transport = self.transport
        assert transport is not None
        if data:
            transport.write(data)
        if close:
            transport.close()
            self.gone.set()

    def _send(self, incoming: _Incoming, wire: Wire) -> None:
        """The whole answer at once; ``Connection: close`` when the client asked to close (as the addon
        says it), and the connection closed after it."""
        head = self.server.head(wire)
        if incoming.close:
            fields = list(wire.fields)
            if _asked_close(incoming) and not any(k.lower() == b"connection" for k, _ in fields):
                head = _assemble(wire.status, wire.reason, [*fields, (b"Connection", b"close")])
        self._write(head if incoming.method == "HEAD" else head + wire.body, incoming.close)

    async def _carry_out(self, incoming: _Incoming, wire: Wire, plan: FaultPlan) -> None:
        """Carry out ``plan``: wait, then drop the connection, or send (at once, truncated, dribbled)."""
        try:
            if plan.delay > 0 and await self._released(plan.delay):
                return
            if plan.action == "close":
                self._write(b"", close=True)
            elif plan.action == "reset":
                self._reset()
            elif plan.action == "hang":
                await self.gone.wait()
            elif plan.chunks is not None:
                await self._dribble(incoming, wire, plan)
            elif plan.close_after:  # truncated: announce the whole body, send part of it, close
                fields = set_header(wire.fields, b"content-length", str(plan.announced).encode())
                fields = set_header(fields, b"connection", b"close")
                head = _assemble(wire.status, wire.reason, fields)
                self._write(head if incoming.method == "HEAD" else head + plan.body, close=True)
            else:
                self._send(incoming, wire)
        finally:
            self.task = None
        self._pump()

    async def _released(self, seconds: float) -> bool:
        """Sleep; True when the client went away meanwhile (or the proxy stops): nothing more is sent."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), seconds)
        return self.gone.is_set()

    def _reset(self) -> None:
        """A TCP RST, not the FIN of a close."""
        transport = self.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        self.gone.set()

    async def _dribble(self, incoming: _Incoming, wire: Wire, plan: FaultPlan) -> None:
        fields = wire.fields
        if plan.close_after:
            fields = set_header(fields, b"content-length", str(plan.announced).encode())
        assert self.transport is not None
        self.transport.write(_assemble(wire.status, wire.reason, fields))
        elapsed = 0.0
        for at, chunk in [] if incoming.method == "HEAD" else plan.chunks or ():
            if at > elapsed and await self._released(at - elapsed):
                return
            elapsed = max(elapsed, at)
            self.transport.write(chunk)
        if plan.close_after or incoming.close:
            self._write(b"", close=True)

    def drop(self) -> None:
        """The proxy stops: release what waits, close the connection."""
        self.gone.set()
        if self.transport is not None:
            self.transport.close()


class _Refusal:
    """A refusal queued behind the answers pipelined before it."""

    __slots__ = ("message", "reason", "status")

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status, self.reason, self.message = status, reason, message


def _asked_close(incoming: _Incoming) -> bool:
    return any(k.lower() == "connection" and "close" in v.lower() for k, v in incoming.headers)


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        return 0


def _parse_error(data: bytes, error: Exception) -> tuple[int, str, str]:
    """The refusal for what the parser could not read: HTTP/2 and TLS by name, else 400."""
    if data.startswith(b"PRI * HTTP/2.0"):
        return 505, "HTTP Version Not Supported", f"the lean engine speaks HTTP/1.1 only; {_UNSUPPORTED}"
    if data[:1] == b"\x16":
        return 400, "Bad Request", f"the lean engine does not speak TLS; {_UNSUPPORTED}"
    return 400, "Bad Request", f"cannot read this HTTP/1.1 request: {error}"


def authority(origin: str) -> str:
    """``host[:port]`` of an origin, the port left out when it is the scheme's default (the Host header
    mitmproxy's reverse mode sends)."""
    parts = urlsplit(origin)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    default = 443 if parts.scheme == "https" else 80
    return shown if parts.port in (None, default) else f"{shown}:{parts.port}"


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop's event loop when uvloop is installed (a dependency but on Windows: about
    15% less CPU per request than asyncio's loop, measured by the benchmark), else on asyncio's."""
    try:
        import uvloop
    except ImportError:  # Windows, or installed without it
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def check_engine(engine: str) -> str:
    """``engine`` if it is one of ``ENGINES``, else a ConfigError."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose from: {', '.join(ENGINES)}")
    return engine
