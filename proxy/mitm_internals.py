"""Every place replay-proxy reaches into mitmproxy's internals, behind small named functions.

mitmproxy's documented API (addons, hooks, flows, options, ``mode_specs``) does not cover what follows;
each reach relies on undocumented classes or attributes that may change in any release. They sit here so
that an upgrade has one module to check, and ``tests/test_mitm_internals.py`` has a test for each that
fails with a message naming the mitmproxy version and what changed. Verified on mitmproxy 11.0.2
(CPython 3.11) and 12.3.1 (CPython 3.12).

1. ``HttpStream.handle_protocol_error`` (``mitmproxy.proxy.layers.http``) is wrapped:
   ``on_response_protocol_error``. It is the one place where the client's answer to a failed upstream
   exchange is decided; gateway.py rewrites its message (why the forward failed) and its status (504 on
   an upstream timeout). ``ResponseProtocolError.code`` is an ``int`` on 11 and an ``ErrorCode`` on 12
   (which has no 504): ``_error_code`` builds either.
2. ``Http1Server.read_headers`` (``mitmproxy.proxy.layers.http._http1``) is wrapped:
   ``limit_request_head``. mitmproxy buffers a request head without limit; request_head.py answers 431
   past its bound, with ``_http1.make_error_response``.
3. ``Proxyserver.connections`` (connection handlers by client id) and ``ConnectionHandler.transports``
   (``ConnectionIO``: ``handler`` task, ``reader``, ``writer`` per connection): ``client_writer``
   (faults.py resets or closes a client's socket), ``cancel_connection`` and ``ended_by_reset``
   (gateway.py ends an upstream that timed out, tells a reset from a close) and ``close_servers``
   (server.py closes listeners and client connections at stop, ``Proxyserver.servers.update([])``).
4. ``ProxyMode.parse`` caches the frozen mode it returns, and the proxy server parses the same spec:
   ``listen_on_tcp_only`` sets ``transport_protocol`` on that frozen object, so that ``reverse:https://``
   does not also listen on UDP (HTTP/3, whose Rust threads crashed the interpreter at exit).
5. The TLS connection's app data (``client_alpn``, ``server_alpn``, ``http2``), read by TlsConfig's ALPN
   callback: ``prefer_h2`` sets ``client_alpn`` so that a client offering h2 after http/1.1 gets h2.
6. ``Client.alpn`` set before the HTTP layer starts makes it speak HTTP/2: ``speak_h2_without_tls`` serves
   a plain connection that opens with the HTTP/2 preface (prior knowledge).
7. ``http.ResponseData``'s fields: ``response`` fills them without ``http.Response.__init__``, whose
   ``MessageData.__post_init__`` type-checks every field with ``typing`` introspection while Python runs
   without ``-O`` (18 of the 21 µs it takes; every answer the addon gives is built this way).

Also used directly where needed, from modules the API docs do not list but whose functions are plain and
stable (tested here too): ``mitmproxy.net.encoding.decode`` and
``mitmproxy.net.http.http1.assemble_response_head``. ``mitmproxy.net.http.status_codes.RESPONSES`` and
``mitmproxy.utils.human.parse_size`` have copies (proxy/reasons.py, ``settings.parse_size``), held equal
to them by tests/test_mitm_internals.py, so that the lean engine starts without importing mitmproxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import commands, events, mode_specs
from mitmproxy.proxy.layers import http as _http_layers
from mitmproxy.proxy.layers.http import _http1

VERIFIED_ON = ("11.0.2", "12.3.1")
"""The mitmproxy versions every reach below was verified on."""

http_layers: Any = _http_layers  # HttpStream, ResponseProtocolError
http1_layer: Any = _http1  # Http1Server, make_error_response

ProtocolErrorRewrite = Callable[[http.HTTPFlow, str], tuple[str, int | None] | None]
"""Given a flow and mitmproxy's message for its failed upstream exchange: the message the client gets
instead and its status (None: mitmproxy's), or None to leave mitmproxy's answer alone."""

_rewrite: ProtocolErrorRewrite | None = None

# -- 1. the answer to a failed upstream exchange ----------------------------------------------------------


def on_response_protocol_error(rewrite: ProtocolErrorRewrite) -> None:
    """Wrap ``HttpStream.handle_protocol_error`` (once): ``rewrite`` decides the client's answer."""
    global _rewrite
    _rewrite = rewrite
    stream = http_layers.HttpStream
    original = stream.handle_protocol_error
    if getattr(original, "replay_proxy", False):
        return

    def handle_protocol_error(self: Any, event: Any) -> Generator[Any, Any, None]:
        flow = getattr(self, "flow", None)
        if isinstance(event, http_layers.ResponseProtocolError) and flow is not None and _rewrite is not None:
            answer = _rewrite(flow, event.message)
            if answer is not None:
                event.message, status = answer
                if status is not None:
                    event.code = _error_code(event.code, status)
        yield from original(self, event)

    handle_protocol_error.replay_proxy = True  # type: ignore[attr-defined]
    stream.handle_protocol_error = handle_protocol_error


class _StatusCode:
    """An error code for ``status`` in mitmproxy 12's terms (its ErrorCode enum has no 504)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def http_status_code(self) -> int:
        return self.status


def _error_code(code: object, status: int) -> object:
    """``code`` (an int on mitmproxy 11, an ErrorCode on 12) changed to mean ``status``, if it does not."""
    if isinstance(code, int):
        return status
    current = getattr(code, "http_status_code", None)
    if callable(current) and current() == status:
        return code
    return _StatusCode(status)


# -- 2. a bound on HTTP/1 request heads -------------------------------------------------------------------


def limit_request_head(limit: int, status: int, message: str) -> None:
    """Wrap ``Http1Server.read_headers`` (once): a head still incomplete past ``limit`` bytes gets
    ``status`` with ``message``, and the connection is closed."""
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
            and len(self.buf) > limit
        ):
            yield commands.SendData(self.conn, http1_layer.make_error_response(status, message))
            yield commands.CloseConnection(self.conn)
            self.buf.maybe_extract_at_most(len(self.buf))  # release it now, not when the layer goes
            self.state = self.done

    read_headers.replay_proxy = True  # type: ignore[attr-defined]
    server.read_headers = read_headers


# -- 3. the proxy server's connections ---------------------------------------------------------------------


def _proxyserver() -> Any:
    master: Any = ctx.master
    return master.addons.get("proxyserver") if master is not None else None


def client_writer(client: Any) -> asyncio.StreamWriter | None:
    """The stream writer of a client connection, found in mitmproxy's proxy server."""
    server = _proxyserver()
    handler = server.connections.get(client.id) if server is not None else None
    io = handler.transports.get(handler.client) if handler is not None else None
    writer = io.writer if io is not None else None
    return writer if isinstance(writer, asyncio.StreamWriter) else None


def _connection_io(connection: Any) -> Any:
    """mitmproxy's ConnectionIO (task, reader, writer) of an (upstream) connection, if it is open."""
    proxyserver = _proxyserver()
    if proxyserver is None:
        return None
    for handler in list(proxyserver.connections.values()):
        io = handler.transports.get(connection)
        if io is not None:
            return io
    return None


def cancel_connection(connection: Any, reason: str) -> bool:
    """Cancel the task serving ``connection`` (its stream fails with a protocol error); False if not open."""
    io = _connection_io(connection)
    if io is None or io.handler is None:
        return False
    io.handler.cancel(reason)
    return True


def ended_by_reset(connection: Any) -> bool:
    """The connection ended with a TCP reset (its reader holds the ConnectionResetError)."""
    io = _connection_io(connection)
    reader = getattr(io, "reader", None)
    exception = getattr(reader, "exception", None)
    return callable(exception) and isinstance(exception(), ConnectionResetError)


async def close_servers(master: Any, timeout: float = 2.0) -> None:
    """Close listeners and client connections so asyncio.run's teardown has nothing left to cancel."""
    ps = master.addons.get("proxyserver")
    if ps is None:
        return
    try:
        await ps.servers.update([])
        for handler in list(ps.connections.values()):
            io = handler.transports.get(handler.client)
            if io is not None and io.handler is not None:
                io.handler.cancel("proxy shutdown")
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while ps.connections and loop.time() < end:
            await asyncio.sleep(0.01)
    except Exception:
        pass


# -- 4. listeners on TCP alone -----------------------------------------------------------------------------


def listen_on_tcp_only(specs: Sequence[str]) -> None:
    """Have mitmproxy listen on TCP alone for these mode specs, not on UDP too.

    For ``reverse:https://...`` mitmproxy also listens on UDP (HTTP/3), with a server in its Rust
    extension whose worker threads outlive the proxy: at interpreter exit one would take the GIL, be
    ended by Python's finalization and crash the process (exit 139 after a clean stop, ~1 run in 3).
    The proxy serves HTTP/1.1 and HTTP/2 over TCP. ``ProxyMode.parse`` caches the mode it returns and
    the proxy server parses the same spec, so the mode made TCP-only here is the one it listens with.
    """
    for spec in specs:
        mode = mode_specs.ProxyMode.parse(spec)
        if mode.transport_protocol != "tcp":
            object.__setattr__(mode, "transport_protocol", "tcp")  # the mode dataclass is frozen


# -- 5. and 6. HTTP/2 for clients that offer it ------------------------------------------------------------


def prefer_h2(tls_start: Any) -> None:
    """From ``tls_start_client``: select h2 when the client offers it, whatever its order of preference.

    This runs after mitmproxy's TlsConfig built the connection; its ALPN callback selects ``client_alpn``
    when the client offers it. Left alone when HTTP/2 is off or an upstream's protocol must be mirrored.
    """
    ssl_conn = getattr(tls_start, "ssl_conn", None)
    app = ssl_conn.get_app_data() if ssl_conn is not None else None
    if (
        isinstance(app, dict)
        and app.get("http2")
        and app.get("client_alpn") is None
        and app.get("server_alpn") is None  # no upstream connection whose protocol must be mirrored
        and b"h2" in (tls_start.context.client.alpn_offers or ())
    ):
        app["client_alpn"] = b"h2"


def speak_h2_without_tls(nextlayer: Any, preface: bytes) -> None:
    """From ``next_layer``: a plain connection whose data starts with ``preface`` is served as HTTP/2.

    mitmproxy's HTTP layer speaks HTTP/2 to a client whose negotiated protocol is h2; it starts after this
    hook, so an ``alpn`` set here is what it goes by.
    """
    client = nextlayer.context.client
    if not client.tls and client.alpn is None and nextlayer.data_client().startswith(preface):
        client.alpn = b"h2"


# -- 7. a response without the debug-mode type check -------------------------------------------------------


def response(
    status: int, reason: bytes, fields: tuple[tuple[bytes, bytes], ...], body: bytes, now: float
) -> http.Response:
    """``http.Response(b"HTTP/1.1", status, reason, Headers(fields), body, None, now, now)``, built without
    its ``__init__``: the values are already of the types it checks (mypy holds the callers to them)."""
    data = object.__new__(http.ResponseData)
    data.__dict__.update(
        http_version=b"HTTP/1.1",
        headers=http.Headers(fields),
        content=body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
        status_code=status,
        reason=reason,
    )
    made: http.Response = object.__new__(http.Response)
    made.data = data
    return made
