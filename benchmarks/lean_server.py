"""The experiment: replay-proxy's router behind a lean asyncio HTTP/1.1 server, with no mitmproxy in the path.

Reverse mode only (clients use it as their base URL), plain HTTP/1.1, keep-alive and pipelining. Each
request goes through what ``proxy/addon.py``'s ``request`` hook does, with our own types: the session
built from the same ``replay_*`` options (``addon._build_session``), ``Router.decide``, ``--retry-after``
and URL rewriting (``proxy/rewrite.py``), the no-match diagnostic, the journal; scenario faults as
``proxy/faults.py`` delivers them (delay, close, reset, hang, truncate, malformed-json, dribble), written
here on an asyncio transport. What it cannot do: forward (record, ``--upstream``), TLS, HTTP/2, forward-
proxy mode (a ``Forward`` decision gets a 502 saying so).

HTTP parsing: h11 (a mitmproxy dependency, pure Python), or httptools (llhttp, C) when it can be
imported; the response bytes are ours either way, in mitmproxy's header order (recorded headers, then
``content-length``, then ``Connection: close`` when the client asked to close).

What offering it as an option would cost (no product change was made; the figures decide):

* Already flow-free and reused here as is: router, cassette playback, scenario machine, rewrite, redact,
  journal, diagnostic, verdict. Tied to mitmproxy flows: addon.py (request/URL/origin from the flow,
  ``_flow_response``, the journal entry, the ``response``/``error`` hooks that forward and record),
  faults.py (kill, TCP reset through proxyserver internals, dribble through a fault backend and
  streaming), server.py (the master's lifecycle).
* Adapter code: the server part of this file is ~400 lines (request → answer ~130, two parsers ~80,
  connection and faults ~120, serve/start ~50); in proxy/ with one parser, ~300. Plus: move
  ``_build_session``/``Session`` out of addon.py into a flow-free module and make ``addon.request`` a thin
  flow adapter over the same handler (otherwise two copies drift: ``duplicates`` already pairs
  ``Handler.handle`` with ``addon.request``); wire it through the CLI, ``ReplayProxy`` and the pytest
  plugin (``use()`` switching); run the play, fault and CLI tests against both servers.
* Lost in lean mode: forward-proxy mode (HTTP(S)_PROXY, CONNECT, TLS interception with our CA), TLS on
  the listener, HTTP/2, everything that forwards (``record``, ``play --upstream``, ``new_episodes``,
  ``once``), ``mitmdump -s`` loading, and mitmproxy's hardened HTTP/1 handling.

Public API::

    start(paths, port=0, retry_after=None, clock=None, parser="auto") -> Started  # a subprocess
    check(workdir=None) -> list[str]   # its answers vs replay-proxy's for the same requests ([]: same)
    bench(seconds=5.0) -> list[dict]   # wrk, c=1 and c=32: floor, lean (each parser), replay-proxy
    user_numbers(operations=200) -> list[UserNumber]   # user_suite's number with the lean server

Standalone::

    python benchmarks/lean_server.py serve scenarios/azure-maps/tileset-succeeds.yaml --port 8080
    python benchmarks/lean_server.py check              # exit 1 on any difference
    python benchmarks/lean_server.py bench --seconds 5  # prints a table, writes benchmarks/.work/lean.json
    python benchmarks/lean_server.py user               # the user's number, lean server in the proxy's place
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for _path in (ROOT, HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from mitmproxy.net.http.status_codes import RESPONSES as REASONS  # noqa: E402  (a table)

from proxy.addon import WIRE_HEADERS, Session, _build_session  # noqa: E402  (no flows in these)
from proxy.diagnostic import no_match_response  # noqa: E402
from proxy.errors import ReplayProxyError  # noqa: E402
from proxy.fault_plan import schedule as _schedule  # noqa: E402
from proxy.fault_plan import truncated as _truncated  # noqa: E402
from proxy.journal import Exchange, Journal, response_facts  # noqa: E402
from proxy.model import Request, Response, without_headers  # noqa: E402
from proxy.rewrite import rewrite_origins, rewrite_retry_after  # noqa: E402
from proxy.router import Decision, Forward, NoMatch, Replay, Scripted  # noqa: E402
from proxy.scenario.answer import Answer  # noqa: E402
from proxy.server import ReplayProxy, classify  # noqa: E402

try:
    import httptools  # type: ignore[import-not-found]
except ImportError:  # not a dependency: `uv pip install --target benchmarks/.work/pylib httptools`
    _pylib = HERE / ".work" / f"pylib-{sys.version_info[0]}.{sys.version_info[1]}"
    if _pylib.is_dir():
        sys.path.append(str(_pylib))
    try:
        import httptools
    except ImportError:
        httptools = None

import h11  # noqa: E402

if TYPE_CHECKING:
    from user_suite import Started

PARSERS = ("h11", "httptools") if httptools is not None else ("h11",)
_log = logging.getLogger("proxy")


# ----------------------------------------------------------------------------- requests → answers


@dataclass
class Incoming:
    """One parsed request: method, target (origin-form path and query), raw headers, body."""

    method: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    keep_alive: bool = True


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send: a response, and the scenario answer that says how (delay, fault, dribble), if any."""

    response: Response
    answer: Answer | None = None


def build_session(paths: Sequence[Path], retry_after: float | None, clock: str | None) -> Session:
    """The session replay-proxy would build for ``replay CASSETTE`` / ``play SCENARIO... [--cassette C]``."""
    cassettes = [p for p in paths if classify(p) == "cassette"]
    scenarios = [p for p in paths if p not in cassettes]
    if len(cassettes) > 1:
        raise SystemExit("lean_server: one cassette at most")
    proxy = ReplayProxy(
        cassettes[0] if cassettes else None, scenarios=scenarios, retry_after=retry_after, clock=clock
    )  # never started: it only computes the addon's replay_* options, as `replay` / `play` would
    options = proxy.replay_options
    return _build_session(SimpleNamespace(**options))


class Handler:
    """addon.ReplayAddon.request without flows: a request and the origin the client reached → a Reply."""

    def __init__(self, session: Session, journal: Journal) -> None:
        self.session = session
        self.journal = journal

    def handle(self, incoming: Incoming, origin: str) -> Reply:
        session = self.session
        url = (session.primary_origin or origin) + incoming.target
        request = Request(incoming.method, url, tuple(incoming.headers), bytes(incoming.body))
        arrived = time.time(), time.monotonic()
        try:
            decision: Decision = session.router.decide(request, origin)
        except ReplayProxyError as e:
            decision = NoMatch(request, f"scenario error: {e}")
        client_url = origin + incoming.target
        if isinstance(decision, Scripted):
            answer = decision.answer
            if session.retry_after is not None:
                answer = replace(answer, response=rewrite_retry_after(answer.response, session.retry_after))
            detail = answer.source + (f" [fault: {answer.fault}]" if answer.fault else "")
            if answer.delay:
                detail += f" [delay {answer.delay:g} s]"
            dropped = answer.fault in ("reset", "close", "hang")
            sent = None if dropped else answer.response
            status = None if dropped else answer.response.status
            self._journal(request, incoming, client_url, arrived, status, "scenario", detail, sent, answer)
            return Reply(answer.response, answer)
        if isinstance(decision, Replay):
            played = decision.played
            detail = f"#{played.index + 1}" + (
                ", repeated: the recorded sequence ran out" if played.extra else ""
            )
            response = played.interaction.response
            if session.origins:
                response = rewrite_origins(response, session.origins, origin)
            if session.retry_after is not None:
                response = rewrite_retry_after(response, session.retry_after)
            self._journal(
                request, incoming, client_url, arrived, response.status, "cassette", detail, response
            )
            return Reply(response)
        if isinstance(decision, NoMatch):
            detail = decision.reason
            if decision.nearest:
                index, interaction, diffs = decision.nearest[0]
                closest = interaction.request
                detail += f"; closest #{index + 1} {closest.method} {closest.path_and_query}"
                if diffs:
                    detail += f" ({'; '.join(diffs)})"
            response = no_match_response(decision, session.served)
            self._journal(request, incoming, client_url, arrived, response.status, "no-match", detail)
            return Reply(response)
        assert isinstance(decision, Forward)
        body = b"lean_server does not forward: no upstream, no recording (replay-proxy does)\n"
        return Reply(Response(502, "Bad Gateway", (("Content-Type", "text/plain"),), body))

    def _journal(
        self,
        request: Request,
        incoming: Incoming,
        client_url: str,
        arrived: tuple[float, float],
        status: int | None,
        source: str,
        detail: str,
        sent: Response | None = None,
        answer: Answer | None = None,
    ) -> None:
        """The entry addon._exchange writes, from our own types."""
        facts = response_facts(sent, client_url, now=arrived[0]) if sent is not None else None
        op_status, terminal = (facts.op_status, facts.terminal) if facts is not None else (None, False)
        if answer is not None and answer.operation is not None:
            op_status, terminal = answer.status, answer.terminal
        self.journal.add(
            Exchange(
                request.method,
                request.url,
                incoming.target,
                status,
                source,
                detail,
                time=arrived[0],
                monotonic=arrived[1],
                client_url=client_url,
                retry_after=facts.retry_after if facts is not None else None,
                status_urls=facts.status_urls if facts is not None else (),
                operation=answer.operation if answer is not None else None,
                poll=answer.poll if answer is not None else None,
                op_status=op_status,
                terminal=terminal,
            )
        )


def response_head(response: Response, body_length: int, close: bool, truncated: bool = False) -> bytes:
    """The status line and headers as mitmproxy sends a synthesized response: the reason from mitmproxy's
    own table (mitmproxy 11's has no 429: "HTTP/1.1 429 "), ``content-length`` after the recorded
    headers, then ``connection: close`` for a truncated body or ``Connection: close`` when the client
    asked to close."""
    reason = response.reason or REASONS.get(response.status, "")
    lines = [f"HTTP/1.1 {response.status} {reason}".encode()]
    has_connection = False
    for name, value in without_headers(response.headers, WIRE_HEADERS):
        has_connection = has_connection or name.lower() == "connection"
        lines.append(name.encode() + b": " + value.encode("utf-8", "surrogateescape"))
    lines.append(b"content-length: %d" % body_length)
    if truncated:
        lines.append(b"connection: close")
    elif close and not has_connection:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


# ----------------------------------------------------------------------------- HTTP/1.1 parsing


class _H11Parser:
    """h11 as a request parser only: one h11.Connection per request, fed what the previous one left."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.current: Incoming | None = None

    def feed(self, data: bytes) -> list[Incoming]:
        self.conn.receive_data(data)
        done: list[Incoming] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return done
            if isinstance(event, h11.Request):
                headers = [
                    (k.decode(), v.decode("utf-8", "surrogateescape")) for k, v in event.headers.raw_items()
                ]
                keep = event.http_version == b"1.1"
                for k, v in headers:
                    if k.lower() == "connection":
                        keep = "close" not in v.lower() and (keep or "keep-alive" in v.lower())
                self.current = Incoming(
                    event.method.decode(), event.target.decode(), headers, keep_alive=keep
                )
            elif isinstance(event, h11.Data):
                assert self.current is not None
                self.current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self.current is not None
                done.append(self.current)
                self.current = None
                rest, _closed = self.conn.trailing_data
                self.conn = h11.Connection(h11.SERVER)
                if rest:
                    self.conn.receive_data(bytes(rest))
            elif isinstance(event, h11.ConnectionClosed):
                return done


class _HttptoolsParser:
    """httptools (llhttp): callbacks fill an Incoming per message; pipelined messages all come out."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.current: Incoming | None = None
        self.url = b""
        self.done: list[Incoming] = []

    def on_message_begin(self) -> None:
        self.current = Incoming("", "")
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode(), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode()
        self.current.target = self.url.decode()
        self.current.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.done.append(self.current)
        self.current = None

    def feed(self, data: bytes) -> list[Incoming]:
        self.parser.feed_data(data)
        done, self.done = self.done, []
        return done


# ----------------------------------------------------------------------------- the server


class _Server:
    def __init__(self, handler: Handler, parser: str) -> None:
        self.handler = handler
        self.parser = _HttptoolsParser if parser == "httptools" else _H11Parser
        self.connections: set[_Connection] = set()


class _Connection(asyncio.Protocol):
    """One client connection: requests answered in order; slow answers (delay, dribble, hang) in a task."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.parser = server.parser()
        self.pending: deque[Incoming] = deque()
        self.task: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.origin = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.origin = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()
        self.server.connections.discard(self)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.pending.extend(self.parser.feed(data))
        except Exception:  # h11.RemoteProtocolError, httptools.HttpParserError: a 400, then close
            self._write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nConnection: close\r\n\r\n", True)
            return
        self._pump()

    def _pump(self) -> None:
        while self.pending and self.task is None and not self.gone.is_set():
            incoming = self.pending.popleft()
            reply = self.server.handler.handle(incoming, self.origin)
            answer = reply.answer
            if answer is not None and (
                answer.delay > 0 or answer.fault in ("hang", "close", "reset") or answer.dribble
            ):
                self.task = asyncio.get_running_loop().create_task(self._deliver_slow(incoming, reply))
                return
            self._send(incoming, reply)

    def _write(self, data: bytes, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if close:
            self.transport.close()
            self.gone.set()

    def _send(self, incoming: Incoming, reply: Reply) -> None:
        """Send at once: a response, truncated or malformed bodies included."""
        response = reply.response
        close = not incoming.keep_alive
        body = response.body
        announced = len(body)
        if reply.answer is not None and reply.answer.fault == "truncate":
            body, announced = _truncated(response.body), max(len(response.body), 1)
            close = True
        head = response_head(response, announced, close, truncated=announced != len(body))
        self._write(head if incoming.method == "HEAD" else head + body, close)

    async def _deliver_slow(self, incoming: Incoming, reply: Reply) -> None:
        answer = reply.answer
        assert answer is not None
        try:
            if answer.delay > 0 and await self._released(answer.delay):
                return
            if answer.fault == "hang":
                await self.gone.wait()
            elif answer.fault == "close":
                self._write(b"", True)
            elif answer.fault == "reset":
                self._reset()
            elif answer.dribble:
                await self._dribble(incoming, reply.response, answer)
            else:
                self._send(incoming, reply)
        finally:
            self.task = None
        self._pump()

    async def _released(self, seconds: float) -> bool:
        """Sleep; True when the client went away meanwhile (nothing more is sent)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), seconds)
        return self.gone.is_set()

    def _reset(self) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        self.gone.set()

    async def _dribble(self, incoming: Incoming, response: Response, answer: Answer) -> None:
        truncate = answer.fault == "truncate"
        sent = _truncated(response.body) if truncate else response.body
        announced = max(len(response.body), 1) if truncate else len(response.body)
        close = truncate or not incoming.keep_alive
        assert self.transport is not None
        self.transport.write(response_head(response, announced, not incoming.keep_alive))
        elapsed = 0.0
        for at, chunk in [] if incoming.method == "HEAD" else _schedule(sent, answer.dribble or 0.0):
            if at > elapsed and await self._released(at - elapsed):
                return
            elapsed = max(elapsed, at)
            self.transport.write(chunk)
        if close:
            self._write(b"", True)


async def serve(
    paths: Sequence[Path],
    host: str = "127.0.0.1",
    port: int = 0,
    retry_after: float | None = None,
    clock: str | None = None,
    parser: str = "auto",
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; ``ready(url)`` is called once the port is bound."""
    chosen = PARSERS[-1] if parser == "auto" else parser
    if chosen not in PARSERS:
        raise SystemExit(f"lean_server: parser {chosen!r} is not available (have: {', '.join(PARSERS)})")
    journal = Journal(listener=lambda e: _log.info(e.line()))
    server = _Server(Handler(build_session(paths, retry_after, clock), journal), chosen)
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(lambda: _Connection(server), host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = listening.sockets[0].getsockname()
    url = f"http://{bound[0]}:{bound[1]}"
    if ready is not None:
        ready(f"lean-server on {url} is serving {', '.join(map(str, paths))} (parser {chosen})")
    await stop.wait()
    listening.close()
    for connection in list(server.connections):
        if connection.transport is not None:
            connection.transport.close()
        connection.gone.set()


def start(
    paths: Sequence[Path],
    port: int = 0,
    retry_after: float | None = None,
    clock: str | None = None,
    parser: str = "auto",
) -> Started:
    """Start the lean server in a subprocess (its own CPU and RSS); returns once it listens."""
    from user_suite import start_process

    argv = [sys.executable, str(Path(__file__).resolve()), "serve", *map(str, paths), "--port", str(port)]
    argv += ["--parser", parser]
    if retry_after is not None:
        argv += ["--retry-after", f"{retry_after:g}"]
    if clock is not None:
        argv += ["--clock", clock]
    return start_process(argv)


# ----------------------------------------------------------------------------- correctness check

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CREATED = re.compile(rb"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M \+00:00")
_ISO = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)")

FAULTS_SCENARIO = """\
name: lean-faults
routes:
  - match: {method: GET, path: /delay}
    respond: {json: {late: true}, delay: 0.3}
  - match: {method: GET, path: /close}
    respond: {fault: close}
  - match: {method: GET, path: /reset}
    respond: {fault: reset}
  - match: {method: GET, path: /hang}
    respond: {fault: hang}
  - match: {method: GET, path: /truncate}
    respond: {json: {items: [1, 2, 3, 4, 5, 6, 7, 8]}, fault: truncate}
  - match: {method: GET, path: /malformed}
    respond: {json: {items: [1, 2, 3, 4, 5, 6, 7, 8]}, fault: malformed-json}
  - match: {method: GET, path: /dribble}
    respond: {json: {items: [1, 2, 3, 4, 5, 6, 7, 8]}, dribble: 0.5s}
  - match: {method: GET, path: /dribble-truncate}
    respond: {json: {items: [1, 2, 3, 4, 5, 6, 7, 8]}, dribble: 0.5s, fault: truncate}
  - match: {method: GET, path: /throttled}
    sequence:
      - {status: 429, retry-after: 2, json: {error: {code: TooManyRequests, message: slow down}}}
      - {status: 503, retry-after: {ms: 1500}}
      - {status: 200, text: "ok {{ request.query.x }} {{ request.headers['x-test'] }}", times: 2}
    when-exhausted: error
  - match: {method: POST, path: /things, json: {kind: tileset}}
    respond:
      status: 201
      headers: {Location: "{{ proxy_url }}/things/1"}
      json: {echo: "{{ request.json.name }}"}
  - match: {method: [GET, HEAD], path: "/things/{id}"}
    respond: {json: {id: "{{ request.params.id }}"}}
"""


def _raw(port: int, request: bytes, timeout: float = 2.0) -> tuple[str, bytes, float]:
    """Send one request on a fresh connection; (outcome, bytes received, seconds). Outcome: response | closed
    (EOF before a complete response) | reset | timeout."""
    began = time.monotonic()
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return (
                        "closed" if not _complete(data, request) else "response",
                        data,
                        time.monotonic() - began,
                    )
                data += chunk
                if _complete(data, request):
                    took = time.monotonic() - began
                    if request.startswith(b"HEAD"):  # a body after a HEAD response would be a bug: catch it
                        sock.settimeout(0.2)
                        with contextlib.suppress(TimeoutError, ConnectionError):
                            data += sock.recv(65536)
                    return "response", data, took
        except ConnectionResetError:
            return "reset", data, time.monotonic() - began
        except TimeoutError:
            return "timeout", data, time.monotonic() - began


def _complete(data: bytes, request: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return request.startswith(b"HEAD") or len(body) >= (int(m[1]) if m else 0)


def _normal(data: bytes, port: int) -> bytes:
    """Answers of two servers made comparable: their own port, fresh ids and times masked."""
    data = data.replace(b"127.0.0.1:%d" % port, b"127.0.0.1:PORT")
    ids: dict[bytes, bytes] = {}
    data = _UUID.sub(lambda m: ids.setdefault(m[0], b"<id-%d>" % len(ids)), data)
    return _ISO.sub(b"<time>", _CREATED.sub(b"<created>", data))


def _get(path: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _location(data: bytes) -> str:
    m = re.search(rb"(?im)^location:\s*http://[^/]+(\S+)", data)
    return m[1].decode() if m else "/missing-location"


def _run_sequence(port: int, kind: str) -> list[tuple[str, bytes, bool]]:
    """The requests of one check, in order; each answer as (outcome, normalised bytes, late)."""
    out: list[tuple[str, bytes, bool]] = []

    def ask(request: bytes, timeout: float = 2.0) -> bytes:
        outcome, data, took = _raw(port, request, timeout)
        out.append((outcome, _normal(data, port), took >= 0.25))
        return data

    if kind == "faults":
        for path in (
            "/delay",
            "/close",
            "/reset",
            "/truncate",
            "/malformed",
            "/dribble",
            "/dribble-truncate",
        ):
            ask(_get(path))
        ask(_get("/hang"), timeout=0.5)
        for _ in range(5):
            ask(_get("/throttled?x=1", "X-Test: yes"))
        thing = ask(
            _get(
                "/things",
                "Content-Type: application/json",
                method="POST",
                body=b'{"kind": "tileset", "name": "n"}',
            )
        )
        ask(_get(_location(thing)))
        ask(_get("/things", method="POST", body=b'{"kind": "other"}'))
        ask(_get("/things/2", "Connection: close"))
        return out
    if kind == "scenario":
        ask(_get("/tilesets?api-version=2.0", method="POST"))
        accepted = ask(_get("/tilesets?api-version=2.0&datasetId=abc", method="POST"))
        status = _location(accepted)
        last = b""
        for _ in range(5):
            last = ask(_get(status))
        ask(_get(status, method="HEAD"))
        ask(_get(_location(last)))
        ask(_get("/tilesets/operations/not-an-operation"))
        ask(_get("/nothing", "Connection: close"))
        return out
    # cassette: cassettes/azure-maps/tileset-succeeds.yaml, replayed
    accepted = ask(
        _get("/tilesets?api-version=2.0&datasetId=8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d", method="POST")
    )
    status = _location(accepted)
    last = b""
    for _ in range(5):
        last = ask(_get(status))
    ask(_get(_location(last)))  # the 201's Location: the created tileset
    ask(_get("/tilesets?api-version=2.0&datasetId=other", method="POST"))
    ask(_get("/tilesets/operations/unknown", "Connection: close"))
    return out


CHECKS: dict[str, tuple[list[str], float | None]] = {
    "scenario": (["scenarios/azure-maps/tileset-succeeds.yaml"], None),
    "cassette": (["cassettes/azure-maps/tileset-succeeds.yaml"], 0.0),
    "faults": (["{faults}"], 0.01),
}


def check(workdir: Path | None = None, parser: str = "auto") -> list[str]:
    """Play the same requests to ``replay-proxy`` and to the lean server; the differences, [] when none.

    Three sessions: the shipped scenario tileset-succeeds.yaml, the shipped cassette tileset-succeeds.yaml
    (``--retry-after 0``), and a scenario of every fault (``--retry-after 0.01``). Each request is sent
    on a fresh connection; what comes back (bytes, or closed / reset / timeout, and whether it was late)
    is compared after masking ports, operation ids and times.
    """
    from user_suite import start_replay_proxy

    tmp = Path(workdir or tempfile.mkdtemp(prefix="lean-check-"))
    tmp.mkdir(parents=True, exist_ok=True)
    faults = tmp / "lean-faults.yaml"
    faults.write_text(FAULTS_SCENARIO)
    differences: list[str] = []
    for kind, (files, retry_after) in CHECKS.items():
        paths = [Path(f.format(faults=faults)) if f.startswith("{") else ROOT / f for f in files]
        command = "replay" if kind == "cassette" else "play"
        extra = ["--retry-after", f"{retry_after:g}"] if retry_after is not None else []
        answers = []
        for target in ("replay-proxy", "lean"):
            if target == "replay-proxy":
                running = start_replay_proxy([command, *map(str, paths), *extra], tmp / "confdir")
            else:
                running = start(paths, retry_after=retry_after, parser=parser)
            try:
                answers.append(_run_sequence(running.port, kind))
            finally:
                running.stop()
        for i, (theirs, ours) in enumerate(zip(*answers, strict=True)):
            if theirs != ours:
                differences.append(
                    f"{kind} request {i + 1}:\n  replay-proxy: {theirs!r}\n  lean:         {ours!r}"
                )
    return differences


# ----------------------------------------------------------------------------- wrk against the floor


def _poll_path(started: Started, workload: str) -> str:
    """What the load polls: a finished operation's status URL (play) or a recorded poll (replay), both
    past their progression (the steady answer: a terminal status, or the last recording repeated)."""
    if workload == "play":
        _, data, _ = _raw(started.port, _get("/tilesets?api-version=2.0&datasetId=abc", method="POST"))
        path = _location(data)
    else:
        path = "/tilesets/operations/9a42dbc1-96c7-4b5c-b8b9-b180920caf3e"
    for _ in range(5):
        _raw(started.port, _get(path))
    return path


def bench(seconds: float = 5.0, connections: Sequence[int] = (1, 32)) -> list[dict[str, Any]]:
    """measure.load (wrk) on the floor, the lean server (each parser) and replay-proxy: play, replay."""
    from measure import ProcessTree, load
    from user_suite import start_process, start_replay_proxy

    scenario = ROOT / "scenarios/azure-maps/tileset-succeeds.yaml"
    recorded = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
    confdir = HERE / ".work" / "confdir"
    targets: list[tuple[str, str, Callable[[], Started]]] = [
        ("floor", "-", lambda: start_process([sys.executable, str(HERE / "floor_server.py")])),
    ]
    for parser in PARSERS:
        targets.append((f"lean ({parser})", "play", functools.partial(start, [scenario], parser=parser)))
        targets.append((f"lean ({parser})", "replay", functools.partial(start, [recorded], parser=parser)))
    targets.append(("replay-proxy", "play", lambda: start_replay_proxy(["play", str(scenario)], confdir)))
    targets.append(("replay-proxy", "replay", lambda: start_replay_proxy(["replay", str(recorded)], confdir)))
    rows: list[dict[str, Any]] = []
    for name, workload, launch in targets:
        running = launch()
        tree = ProcessTree(running.pid)
        try:
            path = "/" if workload == "-" else _poll_path(running, workload)
            for c in connections:
                cpu = tree.cpu_seconds()
                result = load(running.url, [path], c, seconds)
                cpu = tree.cpu_seconds() - cpu
                row = {"target": name, "workload": workload, **result.as_dict()}
                row["cpu_ms_per_req"] = round(cpu * 1000 / result.requests, 4) if result.requests else None
                rows.append(row)
            rows[-1]["peak_rss_mib"] = tree.peak_rss_mib()
        finally:
            running.stop()
    return rows


def user_numbers(operations: int = 200, workdir: Path | None = None) -> list[Any]:
    """The user's number (user_suite) with the lean server in replay-proxy's place: replay and play."""
    import user_suite

    work = workdir or HERE / ".work" / "user-suite"
    recorded = user_suite.write_cassette(work / f"lro-suite-{operations}.yaml", operations)
    replay = lambda: start([recorded], retry_after=0.0).launched()  # noqa: E731
    play = lambda: start([user_suite.SCENARIO], retry_after=0.0, clock="virtual").launched()  # noqa: E731
    return [
        user_suite.measure("lean server replay --retry-after 0", replay, operations),
        user_suite.measure("lean server play --clock virtual --retry-after 0", play, operations),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve scenarios and/or a cassette")
    s.add_argument("paths", nargs="+", type=Path)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--retry-after", type=float, default=None)
    s.add_argument("--clock", choices=("real", "virtual"), default=None)
    s.add_argument("--parser", choices=("auto", "h11", "httptools"), default="auto")
    c = sub.add_parser("check", help="compare the lean server's answers with replay-proxy's")
    c.add_argument("--parser", choices=("auto", "h11", "httptools"), default="auto")
    u = sub.add_parser("user", help="the user's number (benchmarks/user_suite.py) on the lean server")
    u.add_argument("--operations", type=int, default=200)
    b = sub.add_parser("bench", help="wrk: floor, lean server, replay-proxy at c=1 and c=32")
    b.add_argument("--seconds", type=float, default=5.0)
    b.add_argument("--out", type=Path, default=HERE / ".work" / "lean.json")
    args = parser.parse_args(argv)

    def ready(line: str) -> None:
        print(line, flush=True)

    if args.command == "serve":
        asyncio.run(serve(args.paths, args.host, args.port, args.retry_after, args.clock, args.parser, ready))
        return 0
    if args.command == "check":
        differences = check(parser=args.parser)
        for d in differences:
            print(d)
        print(
            f"{len(differences)} differences" if differences else "same answers: replay-proxy and lean server"
        )
        return 1 if differences else 0
    if args.command == "user":
        for n in user_numbers(args.operations):
            total = f"{n.total_s:.2f} s" if n.total_s is not None else f"FAILED ({n.error})"
            print(f"{n.target}: {total} (start-up {n.startup_s:.2f} s, {n.requests} requests)")
        return 0
    rows = bench(args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"cpus": os.cpu_count(), "python": sys.version.split()[0], "rows": rows}, indent=2)
    )
    print("| target | workload | c | req/s | p50 ms | p99 ms | CPU ms/req | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["target"], r["workload"], r["connections"], r["rps"], r["p50_ms"], r["p99_ms"]]
        cells += [r["cpu_ms_per_req"], r.get("peak_rss_mib", "")]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
