"""Offline means offline: in replay and play, the real upstream listening next door gets no connection.

`replay-proxy replay` and `play` run as processes, in reverse mode and in forward mode (HTTP and HTTPS,
the client trusting the proxy's CA), with the upstream the cassette recorded listening on loopback: a bare
TCP listener that counts every connection the kernel completes. Clients send matched, unmatched, random,
fault-triggering and malformed requests, and requests for hosts the cassette does not know, all aimed at
the listener's port. The pytest plugin's default mode is covered by
tests/test_pytest_plugin.py::test_default_mode_sends_nothing_upstream.

Found this way: raw bytes in a CONNECT tunnel (neither TLS nor HTTP) were relayed to the named host, since
no request hook sees them (the addon's ``server_connect`` now refuses every upstream connection of a
session that forwards nothing); and a HEAD answer carried the body, which a client reusing the
connection read as the next response (httpx: "illegal status line").
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from proxy.cassette import save
from proxy.model import Interaction, Request, Response
from proxy.server import ReplayProxy

TIMEOUT = 10
HANG_TIMEOUT = 0.5
"""The client's read timeout for the `hang` fault."""
RANDOM_REQUESTS = 30
JSON = (("Content-Type", "application/json"),)
CLOSE = "Connection: close\r\n\r\n"


class CountingListener:
    """A TCP listener on 127.0.0.1 that accepts, records and closes every connection; it answers nothing.

    ``close()`` also drains the backlog, so a connection the kernel completed but nobody accepted yet
    still counts: a leak cannot hide in a race with the accepting thread.
    """

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.origin = f"127.0.0.1:{self.port}"
        self.accepted: list[bytes] = []
        """The first bytes each connection sent."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self._record(conn)

    def _record(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.2)
            try:
                self.accepted.append(conn.recv(4096))
            except OSError:
                self.accepted.append(b"")

    def close(self) -> list[bytes]:
        """Stop listening; every connection ever made, accepted now if it was still waiting."""
        if self._stop.is_set():
            return self.accepted
        self._stop.set()
        self._thread.join(5)
        self._sock.setblocking(False)
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                break
            self._record(conn)
        self._sock.close()
        return self.accepted


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    counting = CountingListener()
    yield counting
    counting.close()


def write_cassette(path: Path, origin: str) -> Path:
    """A small recording of the listener's origin, over http and https."""
    http, https = f"http://{origin}", f"https://{origin}"
    save(
        path,
        [
            Interaction(Request("GET", f"{http}/things/1"), Response(200, "OK", JSON, b'{"id": 1}')),
            Interaction(
                Request("POST", f"{http}/jobs"), Response(202, "Accepted", (("Location", f"{http}/jobs/1"),))
            ),
            Interaction(
                Request("GET", f"{http}/jobs/1"), Response(200, "OK", JSON, b'{"status": "Running"}')
            ),
            Interaction(
                Request("GET", f"{http}/jobs/1"), Response(200, "OK", JSON, b'{"status": "Succeeded"}')
            ),
            Interaction(Request("GET", f"{https}/things/1"), Response(200, "OK", JSON, b'{"id": "tls"}')),
        ],
    )
    return path


SCENARIO = """\
name: offline-faults
routes:
  - match: {path: /faults/reset}
    respond: {fault: reset}
  - match: {path: /faults/close}
    respond: {fault: close}
  - match: {path: /faults/truncate}
    respond: {json: {pad: "0123456789012345678901234567890123456789"}, fault: truncate}
  - match: {path: /faults/malformed}
    respond: {json: {a: 1, b: [1, 2, 3]}, fault: malformed-json}
  - match: {path: /faults/hang}
    respond: {fault: hang}
  - match: {path: /faults/slow}
    respond: {json: {ok: true}, delay: 0.05, dribble: 0.05}
  - match: {path: /faults/throttled}
    sequence:
      - {status: 429, retry-after: 1}
      - {status: 503, retry-after: 1}
operations:
  - start: {method: POST, path: /ops}
    status-path: /ops/{operationId}
    steps:
      - status: Running
      - status: Succeeded
        resource: false
"""
FAULTS = {
    "reset": "error",
    "close": "error",
    "truncate": "error",
    "malformed": 200,
    "hang": "timeout",
    "slow": 200,
    "throttled": 429,
}
"""What the client sees for each fault route, the first time."""


# ----------------------------------------------------------------------------- clients


class Client:
    """requests and httpx, both aimed at the proxy: as a base URL (reverse) or as their proxy (regular)."""

    def __init__(self, proxy_url: str, mode: str, ca: Path) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        self.httpx = httpx.Client(trust_env=False, timeout=TIMEOUT)
        if mode == "regular":
            self.session.proxies = {"http": proxy_url, "https": proxy_url}
            self.session.verify = str(ca)
            context = ssl.create_default_context(cafile=str(ca))
            self.httpx = httpx.Client(proxy=proxy_url, verify=context, trust_env=False, timeout=TIMEOUT)
        self.sent = 0
        self.errors: list[str] = []

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()
        self.httpx.close()

    def status(self, method: str, url: str, use_httpx: bool = False, **kw: Any) -> int | str:
        """The status code, or "timeout" / "error" when the exchange broke."""
        self.sent += 1
        try:
            if use_httpx:
                return self.httpx.request(method, url, **kw).status_code
            return self.session.request(method, url, timeout=kw.pop("timeout", TIMEOUT), **kw).status_code
        except (requests.Timeout, httpx.TimeoutException):
            return "timeout"
        except (requests.RequestException, httpx.HTTPError) as e:
            self.errors.append(f"{method} {url}: {e!r}")
            return "error"


def random_requests(client: Client, bases: list[str], seed: str) -> list[int | str]:
    """Seeded random methods, paths, queries, headers and bodies (by requests and httpx in turn)."""
    rng = random.Random(seed)

    def word(low: int, high: int) -> str:
        return "".join(rng.choice("abcXYZ019-._~!$'()*+,;=:@") for _ in range(rng.randint(low, high)))

    out = []
    for i in range(RANDOM_REQUESTS):
        method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PURGE"])
        url = rng.choice(bases) + "/random/" + "/".join(word(1, 12) for _ in range(rng.randint(1, 4)))
        params = {f"q{j}": word(0, 8) for j in range(rng.randint(0, 3))}
        headers = {f"X-Random-{j}": word(1, 40) for j in range(3)}
        body = rng.randbytes(rng.randint(1, 2048)) if method in ("POST", "PUT", "PATCH") else None
        if i % 2:
            out.append(client.status(method, url, True, params=params, headers=headers, content=body))
        else:
            out.append(client.status(method, url, params=params, headers=headers, data=body))
    return out


def raw(port: int, data: bytes, wait: float = 0.3) -> bytes:
    """Send bytes to the proxy; what came back until it closed, or for ``wait`` seconds of silence."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got


def malformed(port: int, target: str) -> list[bytes]:
    """Requests no client library sends, each naming the listener (``target``) one way or another."""
    host = b"Host: " + target.encode() + b"\r\n"
    close = CLOSE.encode()
    connect = b"CONNECT " + target.encode() + b" HTTP/1.1\r\n" + host + b"\r\n"
    sent = [
        b"\x00\x01\x02 not http at all\r\n\r\n",
        b"GET http://" + target.encode() + b"/things/9 HTTP/1.1\r\n" + host + close,
        connect,
        connect + b"\x00\x01 raw bytes in the tunnel, neither TLS nor HTTP\r\n",
        connect + b"GET /things/9 HTTP/1.1\r\n" + host + close,
        b"GET /things/9 HTTP/1.1\r\n" + host + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST /things/9 HTTP/1.1\r\n"
        + host
        + b"Content-Length: 5\r\nExpect: 100-continue\r\n"
        + close
        + b"hello",
        b"GET /things/9 HTTP/1.0\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",  # the start of a TLS ClientHello, cut short
    ]
    return [raw(port, data) for data in sent]


# ----------------------------------------------------------------------------- the test


CONFIGS = {
    "replay-reverse": ("replay", "reverse"),
    "play-over-cassette-reverse": ("play", "reverse"),  # the listener is the origin it would forward to
    "replay-regular": ("replay", "regular"),
    "play-regular": ("play", "regular"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_upstream_gets_no_connection(
    name: str, listener: CountingListener, cli: Any, confdir: Path, tmp_path: Path
) -> None:
    command, mode = CONFIGS[name]
    cassette = write_cassette(tmp_path / "recorded.yaml", listener.origin)
    scenario = tmp_path / "faults.yaml"
    scenario.write_text(SCENARIO)
    serves_cassette = command == "replay" or mode == "reverse"
    args = ["replay", str(cassette)] if command == "replay" else ["play", str(scenario)]
    if command == "play" and serves_cassette:
        args += ["--cassette", str(cassette)]
    proc = cli([*args, "--mode", mode, "--port", "0", "--when-exhausted", "error", "-q"])
    proxy_port = int(proc.url.rsplit(":", 1)[1])
    listener_http, listener_https = f"http://{listener.origin}", f"https://{listener.origin}"
    other_host = [f"http://localhost:{listener.port}", f"https://localhost:{listener.port}"]
    seen: dict[str, list[int | str]] = {}
    try:
        with Client(proc.url, mode, confdir / "mitmproxy-ca-cert.pem") as client:
            bases = [proc.url] if mode == "reverse" else [listener_http, listener_https, *other_host]
            base = bases[0]
            if serves_cassette:
                seen["matched"] = [
                    client.status("GET", f"{base}/things/1"),
                    client.status("POST", f"{base}/jobs"),
                    client.status("GET", f"{base}/jobs/1"),
                    client.status("GET", f"{base}/jobs/1", True),
                    client.status("GET", f"{base}/jobs/1"),  # the recorded sequence ran out: error
                ]
                if mode == "regular":
                    seen["matched"].append(client.status("GET", f"{listener_https}/things/1", True))
            if command == "play":
                start = client.session.post(f"{base}/ops", timeout=TIMEOUT)
                client.sent += 1
                seen["operation"] = [
                    start.status_code,
                    client.status("GET", start.headers["Location"]),
                    client.status("GET", start.headers["Location"], True),
                ]
                seen["faults"] = [
                    client.status("GET", f"{b}/faults/{f}", timeout=HANG_TIMEOUT if f == "hang" else TIMEOUT)
                    for b in bases[: 2 if mode == "regular" else 1]
                    for f in FAULTS
                ]
            seen["unmatched"] = [
                client.status(method, b + path, i % 2 == 1)
                for b in bases
                for i, (method, path) in enumerate(
                    [("GET", "/things/2"), ("DELETE", "/things/1"), ("GET", "/things/1?x=1"), ("PUT", "/ops")]
                )
            ]
            seen["random"] = random_requests(client, bases, seed=name)
            answers = malformed(proxy_port, listener.origin)
            seen["alive"] = [client.status("GET", f"{base}/things/2")]
            sent = client.sent + len(answers)
    finally:
        assert proc.stop() == 0, proc.stderr
    accepted = listener.close()

    assert accepted == [], f"{name}: {sent} requests, {len(accepted)} reached the upstream: {accepted}"
    if serves_cassette:
        assert seen["matched"] == [200, 202, 200, 200, 599] + ([200] if mode == "regular" else [])
    if command == "play":
        assert seen["operation"] == [202, 200, 200]
        again = {**FAULTS, "throttled": 503}  # the throttled route's second answer, and every later one
        assert seen["faults"] == [*FAULTS.values(), *(again.values() if mode == "regular" else ())]
    assert set(seen["unmatched"]) == {599}, seen["unmatched"]
    assert set(seen["random"]) == {599}, client.errors
    assert seen["alive"] == [599]
    assert answers[0].startswith(b"HTTP/1.1 400 "), answers[0]
    assert answers[1].startswith(b"HTTP/1.1 599 "), answers[1]


def test_a_head_answer_has_no_body(listener: CountingListener, confdir: Path, tmp_path: Path) -> None:
    """HEAD then GET on one connection: the HEAD's answer (diagnostic, cassette, scenario) ends with its
    headers, or the client reads the body as the next response (httpx: "illegal status line")."""
    cassette = write_cassette(tmp_path / "recorded.yaml", listener.origin)
    scenario = tmp_path / "faults.yaml"
    scenario.write_text(SCENARIO)
    with ReplayProxy(cassette, scenarios=[scenario], confdir=confdir) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        heads = {}
        for path in ("/things/2", "/faults/malformed", "/faults/slow"):
            pipelined = f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET /things/2 HTTP/1.1\r\nHost: x\r\n{CLOSE}"
            first, _, rest = raw(port, pipelined.encode(), wait=TIMEOUT).partition(b"\r\n\r\n")
            heads[path] = (first.split(b" ", 2)[1], rest[:24])
    assert listener.close() == []
    next_answer = b"HTTP/1.1 599 No Match (r"
    assert heads == {
        "/things/2": (b"599", next_answer),
        "/faults/malformed": (b"200", next_answer),
        "/faults/slow": (b"200", next_answer),
    }
