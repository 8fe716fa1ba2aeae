"""Scenario faults through the real addon and a real mitmproxy, as requests and httpx see them.

The router of a running ReplayProxy is swapped for one that answers fixed paths with fixed ``Answer``s
(``Scripted`` decisions), so every answer goes the real way: ReplayAddon.request → faults.deliver, and
the addon's responseheaders / client_disconnected / done hooks.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import urllib3

from proxy import faults
from proxy.model import Request, Response
from proxy.router import Decision, RecordMode, Router, Scripted
from proxy.scenario.answer import Answer
from proxy.server import ReplayProxy
from tests.conftest import ENGINES

JSON = (("Content-Type", "application/json"),)
BODY = json.dumps({"status": "Running", "padding": "x" * 80}).encode()
DRIBBLED = b"".join(b"part%02d;" % i for i in range(12))


def _answer(
    body: bytes = BODY, status: int = 200, headers: tuple[tuple[str, str], ...] = JSON, **kw: Any
) -> Answer:
    return Answer(Response(status, "", headers, body), source="test", **kw)


ANSWERS: dict[str, Answer] = {
    "/plain": _answer(),
    "/reset": _answer(fault="reset"),
    "/close": _answer(fault="close"),
    "/hang": _answer(fault="hang"),
    "/truncate": _answer(fault="truncate"),
    "/truncate-empty": _answer(b"", fault="truncate"),
    "/truncate-delay": _answer(fault="truncate", delay=0.3),
    "/malformed-json": _answer(BODY[: len(BODY) // 2], fault="malformed-json"),
    "/delay": _answer(delay=0.3),
    "/delay-reset": _answer(fault="reset", delay=0.3),
    "/busy": _answer(b'{"error": "busy"}', 503, (*JSON, ("Retry-After", "7"))),
    "/throttled": _answer(b'{"error": "throttled"}', 429, (*JSON, ("Retry-After", "2"))),
    "/dribble": _answer(
        DRIBBLED, headers=(("Content-Type", "text/plain"), ("X-Kind", "dribble")), dribble=1.0
    ),
    "/dribble-delay": _answer(DRIBBLED, dribble=0.5, delay=0.3),
    "/dribble-truncate": _answer(DRIBBLED, dribble=0.4, fault="truncate"),
    "/dribble-slow": _answer(DRIBBLED, dribble=60),
    "/dribble-quick": _answer(DRIBBLED, dribble=0.2),
}


class ScriptRouter(Router):
    """Answers the paths in ANSWERS as scripted; anything else goes to the normal router (no match)."""

    def decide(self, request: Request, base_url: str) -> Decision:
        answer = ANSWERS.get(request.path)
        if answer is not None:
            return Scripted(answer)
        return super().decide(request, base_url)


def _start(confdir: Path, mode: str = "reverse", engine: str = "mitmproxy") -> ReplayProxy:
    proxy = ReplayProxy(confdir=confdir, mode=mode, engine=engine).start()
    session = proxy.core.session
    assert session is not None
    proxy.core.session = session._replace(router=ScriptRouter(None, RecordMode.NONE, cassette_existed=False))
    return proxy


@pytest.fixture(scope="class", params=ENGINES)
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayProxy]:
    """The scripted proxy, once per engine: every fault is carried out by both (proxy/fault_plan.py)."""
    p = _start(tmp_path_factory.getbasetemp() / "replay-proxy-conf", engine=request.param)
    try:
        yield p
    finally:
        p.stop()


# -- three clients, one call shape: (status, body) or the exception --------------------------------------


def _requests(url: str, timeout: float) -> tuple[int, bytes]:
    r = requests.get(url, timeout=timeout)
    return r.status_code, r.content


def _httpx(url: str, timeout: float) -> tuple[int, bytes]:
    with httpx.Client(timeout=timeout) as client:
        r = client.get(url)
        return r.status_code, r.content


def _httpx_async(url: str, timeout: float) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.get(url)
            return r.status_code, r.content

    return asyncio.run(go())


CLIENTS: dict[str, Callable[[str, float], tuple[int, bytes]]] = {
    "requests": _requests,
    "httpx": _httpx,
    "httpx-async": _httpx_async,
}

# What each client raises, per fault (the table in docs/scenarios.md).
EXPECTED: dict[str, dict[str, type[BaseException]]] = {
    "reset": {
        "requests": requests.exceptions.ConnectionError,
        "httpx": httpx.ReadError,
        "httpx-async": httpx.ReadError,
    },
    "close": {
        "requests": requests.exceptions.ConnectionError,
        "httpx": httpx.RemoteProtocolError,
        "httpx-async": httpx.RemoteProtocolError,
    },
    "hang": {
        "requests": requests.exceptions.ReadTimeout,
        "httpx": httpx.ReadTimeout,
        "httpx-async": httpx.ReadTimeout,
    },
    "truncate": {
        "requests": requests.exceptions.ChunkedEncodingError,
        "httpx": httpx.RemoteProtocolError,
        "httpx-async": httpx.RemoteProtocolError,
    },
}

# The innermost cause requests reports (its exceptions wrap urllib3's, which wrap the socket's).
REQUESTS_CAUSE: dict[str, type[BaseException]] = {
    "reset": ConnectionResetError,
    "close": http.client.RemoteDisconnected,
    "truncate": urllib3.exceptions.IncompleteRead,
}


def _cause(exc: BaseException) -> BaseException:
    """The innermost wrapped exception: requests → urllib3 (MaxRetryError.reason, ProtocolError) → cause."""
    inner: BaseException = exc
    while True:
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        elif inner.args and isinstance(inner.args[-1], BaseException):
            inner = inner.args[-1]
        else:
            return inner


@pytest.mark.usefixtures("proxy")
class TestFaults:
    @pytest.mark.parametrize("client", CLIENTS)
    @pytest.mark.parametrize("fault", ["reset", "close", "truncate"])
    def test_fault_raises(self, proxy: ReplayProxy, client: str, fault: str) -> None:
        with pytest.raises(Exception) as caught:
            CLIENTS[client](proxy.url + "/" + fault, 5)
        assert type(caught.value) is EXPECTED[fault][client], repr(caught.value)
        if client == "requests":
            assert type(_cause(caught.value)) is REQUESTS_CAUSE[fault], repr(caught.value)
        if fault == "truncate" and client != "requests":
            full = len(BODY)
            assert f"received {full // 2} bytes, expected {full}" in str(caught.value)

    @pytest.mark.parametrize("client", CLIENTS)
    def test_hang_times_out(self, proxy: ReplayProxy, client: str) -> None:
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            CLIENTS[client](proxy.url + "/hang", 0.5)
        assert type(caught.value) is EXPECTED["hang"][client], repr(caught.value)
        assert time.monotonic() - started < 3

    def test_hang_does_not_block_others_and_is_released(self, proxy: ReplayProxy) -> None:
        with ThreadPoolExecutor(2) as pool:
            hanging = pool.submit(_requests, proxy.url + "/hang", 1)
            _wait_for(lambda: _count(proxy, "/hang") >= 1 and _waiting(proxy))
            started = time.monotonic()
            assert _requests(proxy.url + "/plain", 5) == (200, BODY)
            assert time.monotonic() - started < 1
            assert not hanging.done()
            with pytest.raises(requests.exceptions.ReadTimeout):
                hanging.result(10)
        # The client gave up and closed its connection: the hanging hook is released, nothing waits.
        _wait_for(lambda: not _waiting(proxy))

    def test_malformed_json(self, proxy: ReplayProxy) -> None:
        """A 200 with the cut body, delivered whole: the failure is the client's JSON decoding."""
        half = BODY[: len(BODY) // 2]
        r = requests.get(proxy.url + "/malformed-json", timeout=5)
        assert (r.status_code, r.content) == (200, half)
        with pytest.raises(Exception) as caught:
            r.json()
        assert type(caught.value) is requests.exceptions.JSONDecodeError
        h = httpx.get(proxy.url + "/malformed-json", timeout=5)
        assert (h.status_code, h.content) == (200, half)
        with pytest.raises(Exception) as caught:
            h.json()
        assert type(caught.value) is json.JSONDecodeError

    @pytest.mark.parametrize("client", CLIENTS)
    def test_status_answers_are_plain_responses(self, proxy: ReplayProxy, client: str) -> None:
        assert CLIENTS[client](proxy.url + "/busy", 5) == (503, b'{"error": "busy"}')
        assert CLIENTS[client](proxy.url + "/throttled", 5) == (429, b'{"error": "throttled"}')
        r = requests.get(proxy.url + "/busy", timeout=5)
        assert r.headers["Retry-After"] == "7"

    def test_delay_does_not_block_a_parallel_request(self, proxy: ReplayProxy) -> None:
        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            delayed = pool.submit(_timed, proxy.url + "/delay")
            _wait_for(lambda: _count(proxy, "/delay") >= 1)
            fast_status, fast_body, fast_elapsed = _timed(proxy.url + "/plain")
            status, body, elapsed = delayed.result(10)
        assert (status, body) == (200, BODY)
        assert elapsed >= 0.3
        assert time.monotonic() - started < 3
        assert (fast_status, fast_body) == (200, BODY)
        assert fast_elapsed < 0.2

    def test_delay_then_reset(self, proxy: ReplayProxy) -> None:
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectionError) as caught:
            requests.get(proxy.url + "/delay-reset", timeout=5)
        assert time.monotonic() - started >= 0.3
        assert type(_cause(caught.value)) is ConnectionResetError

    def test_truncate_after_delay(self, proxy: ReplayProxy) -> None:
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError, match=f"expected {len(BODY)}"):
            httpx.get(proxy.url + "/truncate-delay", timeout=5)
        assert time.monotonic() - started >= 0.3

    def test_truncate_on_the_wire(self, proxy: ReplayProxy) -> None:
        """What the client receives: the full Content-Length, half the body, then the connection closes."""
        head, body = _raw_get(proxy, "/truncate")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert f"content-length: {len(BODY)}\r\n".encode() in head.lower()
        assert body == BODY[: len(BODY) // 2]
        head, body = _raw_get(proxy, "/truncate-empty")
        assert b"content-length: 1\r\n" in head.lower()
        assert body == b""

    @pytest.mark.parametrize("client", ["requests", "httpx"])
    def test_truncate_empty_body(self, proxy: ReplayProxy, client: str) -> None:
        with pytest.raises(Exception) as caught:
            CLIENTS[client](proxy.url + "/truncate-empty", 5)
        assert type(caught.value) is EXPECTED["truncate"][client], repr(caught.value)

    def test_dribble_httpx_stream(self, proxy: ReplayProxy) -> None:
        arrivals: list[tuple[float, bytes]] = []
        started = time.monotonic()
        with httpx.Client(timeout=5) as client, client.stream("GET", proxy.url + "/dribble") as r:
            headers_at = time.monotonic() - started
            assert r.status_code == 200
            assert r.headers["x-kind"] == "dribble"
            assert r.headers["content-length"] == str(len(DRIBBLED))
            for chunk in r.iter_raw():
                arrivals.append((time.monotonic() - started, chunk))
        assert b"".join(c for _, c in arrivals) == DRIBBLED
        assert headers_at < 0.5
        assert arrivals[0][0] < 0.5
        assert arrivals[-1][0] >= 0.8
        assert arrivals[-1][0] < 3
        assert len(arrivals) >= 3

    def test_dribble_requests(self, proxy: ReplayProxy) -> None:
        started = time.monotonic()
        r = requests.get(proxy.url + "/dribble", timeout=5, stream=True)
        headers_at = time.monotonic() - started
        first = r.raw.read(1)
        first_at = time.monotonic() - started
        rest = r.raw.read()
        done_at = time.monotonic() - started
        assert r.status_code == 200
        assert first + rest == DRIBBLED
        assert headers_at < 0.5
        assert first_at < 0.5
        assert 0.8 <= done_at < 3

    def test_dribble_after_delay(self, proxy: ReplayProxy) -> None:
        started = time.monotonic()
        r = httpx.get(proxy.url + "/dribble-delay", timeout=5)
        elapsed = time.monotonic() - started
        assert (r.status_code, r.content) == (200, DRIBBLED)
        assert 0.7 <= elapsed < 3

    def test_dribbled_truncation(self, proxy: ReplayProxy) -> None:
        with pytest.raises(requests.exceptions.ChunkedEncodingError) as caught:
            requests.get(proxy.url + "/dribble-truncate", timeout=5)
        assert type(_cause(caught.value)) is urllib3.exceptions.IncompleteRead
        assert f"{len(DRIBBLED) // 2} bytes read" in str(caught.value)

    def test_dribble_with_request_bodies_keep_alive_and_head(self, proxy: ReplayProxy) -> None:
        """The fault backend reads request bodies (sized and chunked); one client connection serves
        several dribbles; a HEAD gets the headers only; every one-shot registration is used up."""
        with requests.Session() as session:
            r = session.post(proxy.url + "/dribble-quick", data=b"x" * 5000, timeout=5)
            assert (r.status_code, r.content) == (200, DRIBBLED)
            r = session.post(proxy.url + "/dribble-quick", data=iter([b"a" * 100, b"b" * 100]), timeout=5)
            assert r.request.headers["Transfer-Encoding"] == "chunked"
            assert (r.status_code, r.content) == (200, DRIBBLED)
            r = session.post(proxy.url + "/plain", json={"a": 1}, timeout=5)
            assert (r.status_code, r.content) == (200, BODY)
            r = session.head(proxy.url + "/dribble", timeout=5)
            assert (r.status_code, r.content) == (200, b"")
            assert r.headers["Content-Length"] == str(len(DRIBBLED))
        if proxy.engine == "mitmproxy":
            backend = faults._backend
            assert backend is not None
            assert backend.jobs == {}

    def test_faults_are_journaled(self, proxy: ReplayProxy) -> None:
        proxy.journal.clear()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(proxy.url + "/close", timeout=5)
        entry = _wait_for_entry(proxy, "/close")
        assert (entry.status, entry.source, entry.detail) == (None, "scenario", "test [fault: close]")

    def test_unscripted_paths_still_get_the_no_match_answer(self, proxy: ReplayProxy) -> None:
        r = requests.get(proxy.url + "/other", timeout=5)
        assert r.status_code == 599


@pytest.fixture(scope="class")
def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayProxy]:
    p = _start(tmp_path_factory.getbasetemp() / "replay-proxy-conf", mode="regular")
    try:
        yield p
    finally:
        p.stop()


TLS_URL = "https://localhost:1"
"""Never dialled: the proxy answers inside the intercepted TLS tunnel (lazy connection strategy)."""


class TestThroughConnectAndTls:
    """Regular (forward) mode, HTTPS intercepted with the proxy's CA."""

    def test_requests(self, forward_proxy: ReplayProxy) -> None:
        kw: dict[str, Any] = {
            "proxies": {"https": forward_proxy.url},
            "verify": str(forward_proxy.ca_cert),
            "timeout": 5,
        }
        r = requests.get(TLS_URL + "/dribble-quick", **kw)
        assert (r.status_code, r.content) == (200, DRIBBLED)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(TLS_URL + "/truncate", **kw)
        # Python's ssl module reads the RST under TLS as an unexpected EOF (curl below sees the RST), and
        # urllib3 reports a failure on a proxied connection as a proxy error.
        for fault in ("reset", "close"):
            with pytest.raises(requests.exceptions.ProxyError) as caught:
                requests.get(TLS_URL + "/" + fault, **kw)
            assert type(_cause(caught.value)) is http.client.RemoteDisconnected

    def test_httpx(self, forward_proxy: ReplayProxy) -> None:
        context = ssl.create_default_context(cafile=str(forward_proxy.ca_cert))
        with httpx.Client(proxy=forward_proxy.url, verify=context, timeout=5) as client:
            r = client.get(TLS_URL + "/dribble-quick")
            assert (r.status_code, r.content) == (200, DRIBBLED)
            for fault in ("truncate", "reset", "close"):
                with pytest.raises(httpx.RemoteProtocolError):
                    client.get(TLS_URL + "/" + fault)

    @pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
    @pytest.mark.parametrize("version", ["--http1.1", "--http2"])
    def test_curl(self, forward_proxy: ReplayProxy, version: str) -> None:
        """curl shows the RST itself, and HTTP/2 (which the Python clients never negotiate here)."""

        def curl(path: str) -> tuple[int, str, str]:
            done = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-o",
                    "-",
                    "-w",
                    "\n%{http_code} %{http_version}",
                    "--max-time",
                    "5",
                    version,
                    "--cacert",
                    str(forward_proxy.ca_cert),
                    "-x",
                    forward_proxy.url,
                    TLS_URL + path,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return done.returncode, done.stdout, done.stderr

        h2 = version == "--http2"
        rc, out, _ = curl("/dribble-quick")
        assert (rc, out) == (0, DRIBBLED.decode() + ("\n200 2" if h2 else "\n200 1.1"))
        rc, _, err = curl("/reset")
        # 56 "Recv failure", or 55 "Send failure" when curl was writing (HTTP/2 frames) as the RST came.
        assert rc in (55, 56) and "failure: Connection reset by peer" in err, err
        rc, _, err = curl("/truncate")
        assert (rc, "PROTOCOL_ERROR" in err) == ((92, True) if h2 else (18, False))
        rc, _, err = curl("/close")
        assert rc == (92 if h2 else 52), err


@pytest.mark.parametrize("engine", ENGINES)
def test_stopping_the_proxy_releases_a_hanging_request(confdir: Path, engine: str) -> None:
    proxy = _start(confdir, engine=engine)
    try:
        with ThreadPoolExecutor(1) as pool:
            hanging = pool.submit(_requests, proxy.url + "/hang", 30)
            _wait_for(lambda: _waiting(proxy))
            started = time.monotonic()
            proxy.stop()
            assert time.monotonic() - started < 5
            # Released and killed: the client sees the connection closed, not its 30 s timeout.
            with pytest.raises(requests.exceptions.ConnectionError) as caught:
                hanging.result(5)
            assert type(caught.value) is requests.exceptions.ConnectionError
            assert type(_cause(caught.value)) is http.client.RemoteDisconnected
        assert not _waiting(proxy)
        assert faults._backend is None
    finally:
        proxy.stop()


def test_stopping_the_proxy_ends_a_dribble(confdir: Path) -> None:
    """The fault backend stops with the proxy: a long dribble ends with a broken body, not a long wait."""
    proxy = _start(confdir)
    try:
        started = time.monotonic()
        r = requests.get(proxy.url + "/dribble-slow", timeout=10, stream=True)
        assert r.status_code == 200
        assert r.raw.read(1) == DRIBBLED[:1]
        backend = faults._backend
        assert backend is not None and backend.tasks and backend.server is not None
        backend_port = backend.server.sockets[0].getsockname()[1]
        proxy.stop()
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            r.content  # noqa: B018
        assert time.monotonic() - started < 8
        assert faults._backend is None
        assert not backend.tasks
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", backend_port), timeout=5).close()
    finally:
        proxy.stop()


# -- helpers -------------------------------------------------------------------------------------------


def _waiting(proxy: ReplayProxy) -> bool:
    """Whether an answer is waiting (delayed or hanging) in the proxy's engine."""
    if proxy.engine == "lean":
        assert proxy._lean is not None
        return proxy._lean.waiting() > 0
    return bool(faults._waiters)


def _timed(url: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    r = requests.get(url, timeout=5)
    return r.status_code, r.content, time.monotonic() - started


def _count(proxy: ReplayProxy, path: str) -> int:
    return sum(1 for e in proxy.journal.entries if e.path == path)


def _wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _wait_for_entry(proxy: ReplayProxy, path: str) -> Any:
    _wait_for(lambda: _count(proxy, path) >= 1)
    return next(e for e in proxy.journal.entries if e.path == path)


def _raw_get(proxy: ReplayProxy, path: str) -> tuple[bytes, bytes]:
    """Send a GET on a raw socket; read until the proxy closes; return the head and body bytes."""
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head + b"\r\n", body
