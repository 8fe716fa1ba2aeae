"""Carry out a fault plan (proxy/fault_plan.py) on a mitmproxy flow: late, slow, truncated, reset, closed
or never. What to do is decided flow-free (proxy/handler.py, proxy/fault_plan.py); this is only how
mitmproxy does it. The lean engine (proxy/lean.py) carries out the same plans on an asyncio transport.

The only module besides addon.py and server.py that touches mitmproxy flows. The addon calls
``deliver`` from its async ``request`` hook and forwards three more hooks here: ``responseheaders``
(dribbled bodies are streamed), ``client_disconnected`` (release what waits for that client) and
``done`` → ``release_all`` (release everything and stop the fault backend).

How each fault reaches the client (HTTP/1.1; verified with requests and httpx on mitmproxy 11 and 12):

* ``delay``: the hook sleeps; other flows go on (each hook is its own task). A client that goes away
  meanwhile, or the proxy stopping, ends the wait and the flow is killed (nothing is forwarded).
* ``close``: ``flow.kill()``: the connection is closed (FIN) with no response.
* ``reset``: SO_LINGER(1, 0) on the client socket, then ``transport.abort()``: a real TCP RST. Over
  HTTP/2 it resets the whole connection, every stream on it.
* ``hang``: no response ever; the hook waits until the client disconnects or the proxy stops, then kills
  the flow. Nothing leaks and other clients are served meanwhile.
* ``truncate``: the headers announce the full Content-Length, about half the body follows, then the
  connection closes (``Connection: close``: a client does not wait for the rest until its timeout).
* ``malformed-json``: delivered as is (the scenario machine already cut the body).
* ``dribble``: a synthesized mitmproxy response is always sent in one piece, so a dribbled answer is
  served by a tiny HTTP/1.1 "fault backend" on 127.0.0.1 (port 0), started lazily on the proxy's loop:
  the flow is pointed at it (``/<token>``, a one-shot registration) and marked with ``STREAM`` so that
  ``responseheaders`` streams the body through as the backend writes it, chunk by chunk over
  ``dribble`` seconds. The URL the client asked for stays in ``flow.metadata[ORIGINAL_URL]``.
  ``truncate`` with ``dribble`` dribbles the first half, then the backend closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
from dataclasses import dataclass
from typing import Any

from mitmproxy import http
from mitmproxy.net.http.http1 import assemble_response_head

from proxy import mitm_internals
from proxy.fault_plan import FaultPlan

STREAM = "replay_proxy_stream"
"""flow.metadata key: stream this flow's response body (set on dribbled flows; see ``responseheaders``)."""

ORIGINAL_URL = "replay_proxy_original_url"
"""flow.metadata key: the URL the client asked for, before a dribbled flow was pointed at the backend."""

logger = logging.getLogger("proxy")

# client connection id -> events set when that client disconnects (or the proxy stops)
_waiters: dict[str, set[asyncio.Event]] = {}
_backend: _FaultBackend | None = None


async def deliver(flow: http.HTTPFlow, response: http.Response, plan: FaultPlan) -> None:
    """Answer ``flow`` with ``response`` as ``plan`` says (see the module docstring)."""
    if plan.delay > 0 and await _wait(flow, plan.delay):
        _kill(flow)  # the client went away or the proxy is stopping: nothing more to send
        return
    if plan.action == "close":
        _kill(flow)
    elif plan.action == "reset":
        _reset(flow)
    elif plan.action == "hang":
        await _wait(flow, None)
        _kill(flow)
    elif plan.chunks is not None:
        if plan.close_after:
            response.headers["content-length"] = str(plan.announced)
        job = _Job(assemble_response_head(response), list(plan.chunks), plan.close_after)
        await _retarget(flow, job)
    elif plan.close_after:
        # Announce the whole body (at least one byte, so that something is missing), then close.
        response.raw_content = plan.body
        response.headers["content-length"] = str(plan.announced)
        response.headers["connection"] = "close"
        flow.response = response
    else:
        flow.response = response


def responseheaders(flow: http.HTTPFlow) -> None:
    """The addon's ``responseheaders`` hook: stream the body of flows that dribble."""
    if flow.metadata.get(STREAM) and flow.response is not None:
        flow.response.stream = True


def client_disconnected(client: Any) -> None:
    """The addon's ``client_disconnected`` hook: release that client's delayed and hanging flows."""
    for event in _waiters.pop(client.id, set()):
        event.set()
    if _backend is not None:
        _backend.forget_client(client.id)


def is_backend(address: Any) -> bool:
    """Whether ``address`` (host, port) is the fault backend's: the proxy's own, not an upstream."""
    server = _backend.server if _backend is not None else None
    if server is None or not address or not server.sockets:
        return False
    return bool(tuple(address[:2]) == tuple(server.sockets[0].getsockname()[:2]))


def release_all() -> None:
    """The addon's ``done`` hook: release every waiting flow and stop the fault backend."""
    global _backend
    waiters = list(_waiters.values())
    _waiters.clear()
    for events in waiters:
        for event in events:
            event.set()
    if _backend is not None:
        _backend.close()
        _backend = None


# -- waiting, killing, resetting ------------------------------------------------------------------------


async def _wait(flow: http.HTTPFlow, timeout: float | None) -> bool:
    """Sleep ``timeout`` seconds (None: forever); True when released early (client gone, proxy stopping)."""
    client = flow.client_conn
    if client.timestamp_end is not None:
        return True
    event = asyncio.Event()
    events = _waiters.setdefault(client.id, set())
    events.add(event)
    try:
        if timeout is None:
            await event.wait()
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True
    finally:
        events.discard(event)
        if not events and _waiters.get(client.id) is events:
            del _waiters[client.id]


def _kill(flow: http.HTTPFlow) -> None:
    if flow.killable:
        flow.kill()


def _client_writer(flow: http.HTTPFlow) -> asyncio.StreamWriter | None:
    """The stream writer of the flow's client connection, found in mitmproxy's proxy server."""
    return mitm_internals.client_writer(flow.client_conn)


def close_client_later(flow: http.HTTPFlow, delay: float) -> None:
    """Close the flow's client connection in ``delay`` seconds, once what was written to it is sent.

    The connection is looked up now: mitmproxy may have let go of it by then without closing it.
    """
    writer = _client_writer(flow)
    if writer is not None:
        asyncio.get_running_loop().call_later(delay, writer.transport.close)


def _reset(flow: http.HTTPFlow) -> None:
    """Abort the client connection with a TCP RST (not the FIN of ``flow.kill()``), then kill the flow."""
    writer = _client_writer(flow)
    if writer is not None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    _kill(flow)


# -- the fault backend: serves dribbled answers ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    """One registered answer: the response head, the timed body chunks, whether to close afterwards."""

    head: bytes
    chunks: list[tuple[float, bytes]]
    close: bool


async def _retarget(flow: http.HTTPFlow, job: _Job) -> None:
    """Point ``flow`` at the fault backend, which will serve ``job``."""
    global _backend
    loop = asyncio.get_running_loop()
    if _backend is None or _backend.loop is not loop:
        _backend = _FaultBackend(loop)
    backend = _backend
    try:
        port = await backend.port()
    except OSError as e:
        # Out of file descriptors, say: the next dribbled answer starts a backend afresh.
        if _backend is backend:
            _backend = None
        backend.close()
        logger.warning("replay-proxy: error: a dribbled answer could not be served: %s", e)
        _kill(flow)  # never forward a scripted request because the backend could not listen
        return
    token = backend.register(job, flow.client_conn.id)
    flow.metadata[ORIGINAL_URL] = flow.request.url
    flow.metadata[STREAM] = True
    flow.request.scheme = "http"
    flow.request.host = "127.0.0.1"
    flow.request.port = port
    flow.request.path = f"/{token}"


class _FaultBackend:
    """A minimal HTTP/1.1 server on the proxy's loop: each request path is a one-shot token for a _Job."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: dict[str, _Job] = {}
        self.tokens_by_client: dict[str, set[str]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None
        self.closed = False
        self.started = loop.create_task(self._start())

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        if not self.server.sockets:
            # asyncio skips an address whose socket() fails (EMFILE when out of file descriptors) and
            # returns a server listening nowhere.
            self.server.close()
            raise OSError("its local server could not open a socket (out of file descriptors?)")
        if self.closed:
            self.server.close()
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def port(self) -> int:
        return await asyncio.shield(self.started)

    def register(self, job: _Job, client_id: str) -> str:
        token = secrets.token_hex(12)
        self.jobs[token] = job
        self.tokens_by_client.setdefault(client_id, set()).add(token)
        return token

    def forget_client(self, client_id: str) -> None:
        """Drop the jobs of a client that went away before the backend was asked for them."""
        for token in self.tokens_by_client.pop(client_id, set()):
            self.jobs.pop(token, None)

    def close(self) -> None:
        self.closed = True
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        self.jobs.clear()
        self.tokens_by_client.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            while not self.closed:
                method, target = await _read_request(reader)
                job = self.jobs.pop(target.lstrip("/"), None)
                if job is None:
                    writer.write(b"HTTP/1.1 410 Gone\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                writer.write(job.head)
                await writer.drain()
                elapsed = 0.0
                for at, chunk in job.chunks if method != "HEAD" else []:
                    if at > elapsed:
                        await asyncio.sleep(at - elapsed)
                        elapsed = at
                    writer.write(chunk)
                    await writer.drain()
                if job.close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # the proxy closed the connection, or sent something this server does not read
        finally:
            if task is not None:
                self.tasks.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Read one request (head and body) from mitmproxy; return its method and target."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            await reader.readexactly(size + 2)
    elif headers.get("content-length"):
        await reader.readexactly(int(headers["content-length"]))
    return method, target
