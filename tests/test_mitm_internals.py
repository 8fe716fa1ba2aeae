"""Each reach into mitmproxy's internals (proxy/mitm_internals.py) still holds on the installed mitmproxy.

For each reach: the internal it relies on exists with the shape assumed, and the behaviour built on it
takes effect through a real proxy on loopback. A failure names the installed mitmproxy version and what
changed, so that an upgrade that breaks a reach says which one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import inspect
import os
import socket
import ssl
import struct
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import ctx, http
from mitmproxy.addons import proxyserver, tlsconfig
from mitmproxy.net import encoding
from mitmproxy.net.http import status_codes
from mitmproxy.net.http.http1 import assemble_response_head
from mitmproxy.proxy import mode_specs, server
from mitmproxy.utils import human
from mitmproxy.version import VERSION

from proxy import gateway, mitm_internals, request_head, settings
from proxy.reasons import REASONS
from proxy.server import ReplayProxy

TIMEOUT = 10

SCENARIO = """\
name: internals
routes:
  - match: {method: GET, path: /x}
    respond: {json: {ok: true}}
"""


def changed(what: str) -> str:
    """The assertion message: which mitmproxy, what no longer holds, where to look."""
    verified = " and ".join(mitm_internals.VERIFIED_ON)
    return (
        f"mitmproxy {VERSION}: {what} (verified on mitmproxy {verified}); "
        "update proxy/mitm_internals.py for this version"
    )


def params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "internals.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


def on_loop(proxy: ReplayProxy, make: Callable[[], Any]) -> Any:
    """Run the coroutine ``make()`` returns on the proxy's loop, where mitmproxy's objects live."""
    assert proxy._loop is not None
    return asyncio.run_coroutine_threadsafe(make(), proxy._loop).result(TIMEOUT)


def get(port: int, target: str, timeout: float = TIMEOUT) -> bytes:
    """One HTTP/1.1 GET on a fresh connection; the raw answer up to the close (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_all(s)


def read_response(s: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length and (chunk := s.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def read_all(s: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            data += chunk
    return data


# ============================================================ 1. HttpStream.handle_protocol_error


class FailingUpstream:
    """A loopback HTTP/1.1 upstream that fails each request as its path says: /close (FIN), /reset
    (TCP RST) or /hang (no answer until the proxy gives up)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FailingUpstream:
        self.accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for t in self.threads:
            t.join(TIMEOUT)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self.threads.append(t)
                t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if path == b"/reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif path == b"/hang":
                read_all(conn)  # until the proxy closes its side (or TIMEOUT)


def test_protocol_errors_of_watched_flows_are_rewritten(tmp_path: Path, confdir: Path) -> None:
    """gateway.py decides the client's answer to a failed forward in ``HttpStream.handle_protocol_error``:
    the message (close vs reset: ``ended_by_reset`` reads the upstream reader's exception) and 504 after
    the upstream timeout (``cancel_connection`` cancels the upstream's task; the code is an int on
    mitmproxy 11 and an ``ErrorCode`` on 12)."""
    from mitmproxy.proxy.layers import http as http_layers

    stream = http_layers.HttpStream
    assert params(stream.handle_protocol_error) == ["self", "event"], changed(
        "HttpStream.handle_protocol_error(self, event) changed its signature"
    )
    assert inspect.isgeneratorfunction(inspect.unwrap(stream.handle_protocol_error)), changed(
        "HttpStream.handle_protocol_error is no longer a command generator"
    )
    assert "flow" in stream.__annotations__, changed("HttpStream no longer has a .flow")
    assert params(http_layers.ResponseProtocolError) == ["stream_id", "message", "code"], changed(
        "ResponseProtocolError(stream_id, message, code) changed"
    )

    with FailingUpstream() as up:
        where = up.url.removeprefix("http://")
        with ReplayProxy(tmp_path / "c.yaml", up.url, confdir=confdir, upstream_timeout=0.5) as proxy:
            assert getattr(stream.handle_protocol_error, "replay_proxy", False), changed(
                "the wrap of HttpStream.handle_protocol_error was not installed"
            )
            closed = get(proxy.listen_port, "/close")
            reset = get(proxy.listen_port, "/reset")
            hung = get(proxy.listen_port, "/hang")
    assert closed.startswith(b"HTTP/1.1 502 ") and (
        f"the upstream {where} closed the connection before answering".encode() in closed
    ), changed(f"a failed forward is no longer explained: {closed[:300]!r}")
    assert reset.startswith(b"HTTP/1.1 502 ") and (
        f"the upstream {where} reset the connection (TCP RST)".encode() in reset
    ), changed(f"an upstream reset is not told from a close (ConnectionIO.reader): {reset[:300]!r}")
    assert hung.startswith(b"HTTP/1.1 504 ") and (
        f"the upstream {where} did not answer within 0.5 s".encode() in hung
    ), changed(f"the upstream timeout no longer cancels the upstream task with a 504: {hung[:300]!r}")


def test_the_error_code_becomes_the_status_asked() -> None:
    """mitmproxy 11 takes an int code; 12 an object with ``http_status_code()`` (kept when it already
    means the status asked)."""
    assert mitm_internals._error_code(502, 504) == 504
    code: Any = mitm_internals._error_code(object(), 504)
    assert code.http_status_code() == 504
    try:
        from mitmproxy.proxy.layers.http import ErrorCode  # type: ignore[attr-defined]
    except ImportError:  # mitmproxy 11: plain ints
        return
    generic = ErrorCode.GENERIC_SERVER_ERROR
    assert generic.http_status_code() == 502, changed("ErrorCode.GENERIC_SERVER_ERROR is not 502")
    assert mitm_internals._error_code(generic, 502) is generic


# ============================================================ 2. Http1Server.read_headers


def test_an_endless_request_head_gets_431(scenario: Path, confdir: Path) -> None:
    """request_head.py wraps ``Http1Server.read_headers``: it reads ``self.buf`` and ``self.state`` and
    answers with ``make_error_response``."""
    from mitmproxy.proxy.layers.http import _http1

    assert params(_http1.Http1Server.read_headers) == ["self", "event"], changed(
        "Http1Server.read_headers(self, event) changed its signature"
    )
    assert callable(getattr(_http1.Http1Server, "done", None)), changed("Http1Server.done is gone")
    assert params(_http1.make_error_response)[:2] == ["status_code", "message"], changed(
        "make_error_response(status_code, message) changed"
    )
    assert _http1.make_error_response(431, "too large").startswith(b"HTTP/1.1 431 "), changed(
        "make_error_response no longer builds an HTTP/1.1 response"
    )

    with ReplayProxy(scenarios=[scenario], confdir=confdir) as proxy:
        assert getattr(_http1.Http1Server.read_headers, "replay_proxy", False), changed(
            "the wrap of Http1Server.read_headers was not installed"
        )
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=TIMEOUT) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")
            line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
            with contextlib.suppress(OSError):  # the proxy may close before all is sent
                for _ in range(request_head.MAX_REQUEST_HEAD // len(line) + 8):
                    s.sendall(line)
            answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 431 "), changed(
        f"a request head past the limit is no longer refused (Http1Server.buf/state): {answer[:200]!r}"
    )


# ============================================================ 3. Proxyserver.connections, transports


def test_the_connection_walk_finds_the_clients_transport(scenario: Path, confdir: Path) -> None:
    """faults.py finds a client's socket in ``Proxyserver.connections[client.id].transports[client]``;
    server.py closes every client that way at stop (``close_servers``)."""
    assert "connections" in proxyserver.Proxyserver.__annotations__, changed(
        "Proxyserver.connections is gone"
    )
    fields = [f.name for f in dataclasses.fields(server.ConnectionIO)]
    assert fields[:3] == ["handler", "reader", "writer"], changed(f"ConnectionIO's fields are now {fields}")
    assert "transports" in server.ConnectionHandler.__annotations__, changed(
        "ConnectionHandler.transports is gone"
    )

    with (
        ReplayProxy(scenarios=[scenario], confdir=confdir) as proxy,
        socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=TIMEOUT) as s,
    ):
        s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: the connection stays open
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
        me = s.getsockname()[:2]

        async def find() -> tuple[int, Any]:
            ps = ctx.master.addons.get("proxyserver")
            clients = [h.client for h in ps.connections.values() if tuple(h.client.peername[:2]) == me]
            writer = mitm_internals.client_writer(clients[0]) if clients else None
            return len(clients), writer.get_extra_info("sockname") if writer is not None else None

        found, sockname = on_loop(proxy, find)
        assert found == 1, changed("Proxyserver.connections no longer holds a handler per client")
        assert sockname is not None and tuple(sockname[:2]) == tuple(s.getpeername()[:2]), changed(
            "the client's transports entry no longer holds its asyncio StreamWriter"
        )

        async def close() -> int:
            await mitm_internals.close_servers(ctx.master, TIMEOUT)
            return len(ctx.master.addons.get("proxyserver").connections)

        left = on_loop(proxy, close)
        assert left == 0, changed("cancelling each ConnectionIO.handler no longer ends its connection")
        assert read_all(s) == b"", changed("close_servers left the client's connection open")
        with pytest.raises(OSError):  # the listener is closed too (Proxyserver.servers.update([]))
            socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=TIMEOUT).close()


# ============================================================ 4. the frozen, cached ProxyMode


def udp_sockets_of_this_process() -> set[str]:
    """The inodes of this process's UDP sockets (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            inodes |= {line.split()[9] for line in f.readlines()[1:]}
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    return inodes & mine


def test_listeners_are_made_tcp_only(tmp_path: Path, confdir: Path) -> None:
    """``ProxyMode.parse`` caches a frozen mode, the proxy server parses the same spec, and
    ``listen_on_tcp_only`` changes the cached one: ``reverse:https://`` listens on TCP alone."""
    spec = f"reverse:https://{uuid.uuid4().hex}.invalid"  # a spec nothing parsed before
    mode = mode_specs.ProxyMode.parse(spec)
    assert isinstance(mode, mode_specs.ReverseMode), changed("reverse: no longer parses to a ReverseMode")
    assert type(mode).__dataclass_params__.frozen, changed("ProxyMode is no longer frozen")
    assert mode.transport_protocol == "both", changed(
        f"reverse:https:// now listens on {mode.transport_protocol!r}, not TCP and UDP"
    )
    assert mode_specs.ProxyMode.parse(spec) is mode, changed("ProxyMode.parse no longer caches its modes")
    mitm_internals.listen_on_tcp_only([spec])
    assert mode_specs.ProxyMode.parse(spec).transport_protocol == "tcp"

    before = udp_sockets_of_this_process()
    with ReplayProxy(tmp_path / "c.yaml", "https://127.0.0.1:1", confdir=confdir) as proxy:
        ps = proxy._master.addons.get("proxyserver") if proxy._master is not None else None
        protocols = {instance.mode.transport_protocol for instance in ps.servers} if ps is not None else set()
        opened = udp_sockets_of_this_process() - before
    assert protocols == {"tcp"}, changed(f"the proxy server listens with modes {protocols}")
    assert not opened, changed(f"reverse:https:// still listens on UDP (sockets {opened})")


# ============================================================ 5. and 6. HTTP/2 for clients that offer it


def test_a_tls_client_offering_h2_second_gets_h2(scenario: Path, confdir: Path) -> None:
    """``prefer_h2`` sets ``client_alpn`` in the TLS connection's app data, which TlsConfig's ALPN
    callback selects when the client offers it."""
    keys = set(tlsconfig.AppData.__annotations__)
    assert keys == {"client_alpn", "server_alpn", "http2"}, changed(f"TlsConfig's AppData keys are {keys}")
    assert params(tlsconfig.alpn_select_callback) == ["conn", "options"], changed(
        "tlsconfig.alpn_select_callback(conn, options) changed"
    )

    with ReplayProxy(scenarios=[scenario], confdir=confdir) as proxy:
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        context.set_alpn_protocols(["http/1.1", "h2"])  # as httpx offers them
        with (
            socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            selected = tls.selected_alpn_protocol()
    assert selected == "h2", changed(f"a client offering http/1.1 then h2 got {selected!r}")


def test_the_http2_preface_on_plain_http_is_served_as_http2(scenario: Path, confdir: Path) -> None:
    """``speak_h2_without_tls`` sets ``client.alpn`` in ``next_layer``; the HTTP layer that starts next
    speaks HTTP/2 (its first frame is SETTINGS)."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
    with (
        ReplayProxy(scenarios=[scenario], confdir=confdir) as proxy,
        socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=TIMEOUT) as s,
    ):
        s.sendall(preface + settings)
        first = b""
        while len(first) < 9 and (chunk := s.recv(9 - len(first))):
            first += chunk
    assert len(first) == 9 and first[3] == 0x04, changed(
        f"the HTTP/2 preface is no longer answered with an HTTP/2 SETTINGS frame: {first!r}"
    )


# ============================================================ plain helpers of undocumented modules


def test_helper_functions_of_undocumented_modules() -> None:
    """status_codes, human.parse_size, net.encoding and http1.assemble_response_head, used directly."""
    assert status_codes.RESPONSES.get(404) == "Not Found", changed("status_codes.RESPONSES changed")
    assert human.parse_size("512k") == 512 * 1024, changed("human.parse_size changed")
    assert encoding.decode(gzip.compress(b"hi"), "gzip") == b"hi", changed("net.encoding.decode changed")
    head = assemble_response_head(http.Response.make(200, b"", {"Content-Length": "0"}))
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n"), changed(
        "http1.assemble_response_head changed"
    )


def test_our_size_parser_reads_what_mitmproxys_does() -> None:
    """settings.parse_size reads ``--max-body-size`` as mitmproxy's ``body_size_limit`` does, without
    importing mitmproxy (the lean engine starts without it)."""
    for text in (
        "0",
        "1",
        "1048576",
        "512k",
        "100m",
        "1g",
        "2t",
        "7b",
        "-3",
        "-1k",
        "k",
        "1.5m",
        "1x",
        "",
        "m1",
    ):
        try:
            theirs: int | None = human.parse_size(text)
        except ValueError:
            theirs = None
        try:
            ours: int | None = settings._size_in_bytes(text)
        except ValueError:
            ours = None
        assert ours == theirs, changed(f"human.parse_size({text!r}) is now {theirs!r}; ours says {ours!r}")


def test_the_reason_phrases_are_mitmproxys() -> None:
    """proxy/reasons.py is mitmproxy 12's table; mitmproxy 11's has fewer codes (and "Reset Content.")."""
    ours, theirs = REASONS, status_codes.RESPONSES
    if int(VERSION.split(".")[0]) >= 12:
        assert ours == theirs, changed("status_codes.RESPONSES changed: update proxy/reasons.py")
    else:
        differ = {code for code, reason in theirs.items() if ours.get(code) != reason}
        assert differ == {205}, changed(f"status_codes.RESPONSES differs from mitmproxy 12's at {differ}")


def test_no_other_module_reaches_into_mitmproxy_internals() -> None:
    """The product's modules reach mitmproxy's internals only through proxy/mitm_internals.py."""
    root = Path(__file__).resolve().parent.parent / "proxy"
    reaching = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "mitm_internals.py":
            continue
        text = path.read_text(encoding="utf-8")
        if any(s in text for s in ("mitmproxy.proxy.layers", ".transports", ".connections.", "__setattr__")):
            reaching.append(path.name)
    assert reaching == [], f"these modules reach into mitmproxy outside mitm_internals.py: {reaching}"


def test_the_wraps_are_installed_once() -> None:
    """Each proxy's addon installs the wraps; a second install keeps the first (no wrap of a wrap)."""
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers.http import _http1

    gateway.install()
    request_head.install()
    wrapped = (http_layers.HttpStream.handle_protocol_error, _http1.Http1Server.read_headers)
    gateway.install()
    request_head.install()
    assert (http_layers.HttpStream.handle_protocol_error, _http1.Http1Server.read_headers) == wrapped


def test_a_response_built_without_init_is_the_one_init_builds() -> None:
    """``response`` fills ``http.ResponseData`` without ``Response.__init__`` (its debug type check costs
    18 µs an answer): the same state, the same head on the wire, and it can be changed and copied."""
    names = {f.name for f in dataclasses.fields(http.ResponseData)}
    filled = vars(mitm_internals.response(200, b"OK", (), b"", 0.0).data).keys()
    assert filled == names, changed(f"http.ResponseData's fields are {sorted(names)}")
    cases = [
        (200, b"OK", ((b"content-type", b"application/json"), (b"content-length", b"2")), b"{}"),
        (202, b"Accepted", ((b"Location", b"/x"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")), b""),
        (599, b"", (), b"\x00\xff"),
    ]
    for status, reason, fields, body in cases:
        ours = mitm_internals.response(status, reason, fields, body, 1.5)
        theirs = http.Response(b"HTTP/1.1", status, reason, http.Headers(fields), body, None, 1.5, 1.5)
        assert ours.get_state() == theirs.get_state(), changed("Response's state differs from __init__'s")
        assert vars(ours) == {"data": ours.data} and vars(ours.data).keys() == vars(theirs.data).keys()
        assert assemble_response_head(ours) == assemble_response_head(theirs)
        assert ours.headers.get_all("set-cookie") == theirs.headers.get_all("set-cookie")
        copied = ours.copy()
        copied.headers["Connection"] = "close"
        copied.content = b"changed"
        assert copied.content == b"changed" and "connection" not in ours.headers
        assert ours.raw_content == body


def test_only_addons_with_work_to_do_stay_in_the_chain(scenario: Path, confdir: Path) -> None:
    """mitmproxy offers each of a request's eight events to every addon in its chain: once running, the
    start-up notifier leaves it, and the chain is the minimal master's (core, proxyserver, next_layer,
    tlsconfig) plus replay-proxy's addon."""
    with ReplayProxy(scenarios=[scenario], confdir=confdir) as proxy:
        assert proxy._master is not None
        chain = [type(addon).__name__ for addon in proxy._master.addons.chain]
        with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5) as conn:
            conn.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: conn.recv(65536), b""))
    assert chain == ["Core", "Proxyserver", "NextLayer", "TlsConfig", "ReplayAddon"], chain
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"ok": true}')  # served after it left
