"""The lean engine (proxy/lean.py): the same answers as the mitmproxy engine, HTTP/1.1 on a plain socket.

The byte-identity tests send the same requests, each on a fresh raw connection, to both engines for every
shipped scenario and cassette, and compare what came back (status line, header fields in order, body, or
how the connection ended) after masking what differs by nature: the proxy's port, generated ids and times.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
import requests
import yaml

from proxy.cassette import read
from proxy.errors import ConfigError
from proxy.request_head import MAX_REQUEST_HEAD
from proxy.server import ReplayProxy
from tests.conftest import ENGINES, ROOT

SCENARIOS = sorted(p for p in (ROOT / "scenarios").rglob("*.yaml"))
CASSETTES = sorted((ROOT / "cassettes").rglob("*.yaml"))
TIMEOUT = 5.0
DATASET_ID = "8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d"

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CREATED = re.compile(rb"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M \+00:00")
_ISO = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)?")
_HTTP_DATE = re.compile(rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")


# -- raw exchanges ---------------------------------------------------------------------------------------


def _raw(port: int, request: bytes, timeout: float = TIMEOUT) -> tuple[str, bytes]:
    """Send one request on a fresh connection: (outcome, bytes received); outcome is response, closed
    (EOF before a complete response), reset or timeout."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            while not _complete(data, request):
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed", data
                data += chunk
        except ConnectionResetError:
            return "reset", data
        except TimeoutError:
            return "timeout", data
    return "response", data


def _complete(data: bytes, request: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return request.startswith(b"HEAD") or len(body) >= (int(m[1]) if m else 0)


def _request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: x", *headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _status_url(data: bytes) -> str:
    m = re.search(rb"(?im)^(?:operation-location|location):\s*(\S+)", data)
    return (
        urlsplit(m[1].decode()).path + ("?" + urlsplit(m[1].decode()).query if b"?" in m[1] else "")
        if m
        else ""
    )


def _normal(data: bytes, port: int) -> bytes:
    """What differs by nature masked: the port, generated ids (numbered in order of appearance), times."""
    data = data.replace(b"127.0.0.1:%d" % port, b"127.0.0.1:PORT")
    ids: dict[bytes, bytes] = {}
    data = _UUID.sub(lambda m: ids.setdefault(m[0], b"<id-%d>" % len(ids)), data)
    return _HTTP_DATE.sub(b"<date>", _ISO.sub(b"<time>", _CREATED.sub(b"<created>", data)))


# -- what is sent: derived from each file ---------------------------------------------------------------


def _target(match: dict[str, Any]) -> tuple[str, str]:
    """A request a rule's ``match`` (or an operation's ``start``) accepts, as far as method/path/query go."""
    method = match.get("method", "GET")
    method = method[0] if isinstance(method, list) else str(method)
    path = re.sub(r"\{[^}]+\}", "x1", str(match.get("path", "/")))
    query: dict[str, str] = {}
    for name, value in (match.get("query") or {}).items():
        if value is None:
            continue
        query[name] = value if isinstance(value, str) else DATASET_ID
    return method, path + ("?" + urlencode(query) if query else "")


def _scenario_requests(port: int, path: Path) -> list[tuple[str, bytes]]:
    """Each route once, each operation started and polled to its end (or 8 polls) and its resource
    fetched, a HEAD of a status URL, and a request nothing answers."""
    spec = yaml.safe_load(path.read_text())
    out: list[tuple[str, bytes]] = []
    body = b'{"kind": "tileset", "name": "n"}'

    def ask(request: bytes) -> bytes:
        outcome, data = _raw(port, request)
        out.append((outcome, _normal(data, port)))
        return data

    for route in spec.get("routes") or []:
        method, target = _target(route.get("match") or {})
        ask(_request(method, target, "Content-Type: application/json", body=body if method != "GET" else b""))
    for operation in spec.get("operations") or []:
        method, target = _target(operation.get("start") or {})
        data = ask(_request(method, target, "Content-Type: application/json", body=body))
        status_url = _status_url(data)
        for _ in range(8):
            if not status_url:
                break
            data = ask(_request("GET", status_url))
            if re.search(rb'(?i)"status":\s*"(succeeded|failed|canceled|cancelled)"', data):
                break
            status_url = _status_url(data) or status_url
        if status_url:
            ask(_request("HEAD", status_url))
        resource = re.search(rb'(?i)"resourceLocation":\s*"([^"]+)"', data)
        if resource:
            ask(_request("GET", urlsplit(resource[1].decode()).path))
    ask(_request("GET", "/nothing/here", "Connection: close"))
    return out


def _cassette_requests(port: int, path: Path) -> list[tuple[str, bytes]]:
    """Every recorded request in order, then the first once more (repeat-last), then one nothing answers."""
    out: list[tuple[str, bytes]] = []
    recorded = read(path, None).interactions
    for interaction in [*recorded, *recorded[:1]]:
        request = interaction.request
        keep = [f"{k}: {v}" for k, v in request.headers if k.lower() in ("content-type", "accept")]
        raw = _request(request.method, request.path_and_query, *keep, body=request.body)
        outcome, data = _raw(port, raw)
        out.append((outcome, _normal(data, port)))
    outcome, data = _raw(port, _request("GET", "/nothing", "Connection: close"))
    out.append((outcome, _normal(data, port)))
    return out


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[tuple[str, bytes]]]]:
    """Every shipped file's answers from each engine: one proxy per engine, switched with ``use``."""
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    result: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    for engine in ENGINES:
        got: dict[str, list[tuple[str, bytes]]] = {}
        with ReplayProxy(confdir=confdir, engine=engine) as proxy:
            for path in SCENARIOS:
                proxy.use(scenarios=[path], clock="virtual", retry_after=None)
                got[str(path)] = _scenario_requests(proxy.listen_port, path)
            for path in CASSETTES:
                proxy.use(cassette=path, retry_after=0)
                got[str(path)] = _cassette_requests(proxy.listen_port, path)
        result[engine] = got
    return result


@pytest.mark.parametrize("path", [*SCENARIOS, *CASSETTES], ids=lambda p: str(p.relative_to(ROOT)))
def test_both_engines_answer_byte_for_byte_alike(answers: dict[str, Any], path: Path) -> None:
    mitm, lean = answers["mitmproxy"][str(path)], answers["lean"][str(path)]
    assert len(mitm) == len(lean)
    assert any(outcome == "response" and not data.startswith(b"HTTP/1.1 599") for outcome, data in mitm)
    for i, (theirs, ours) in enumerate(zip(mitm, lean, strict=True)):
        assert ours == theirs, f"request {i + 1} of {path.name}"


# -- what only the lean engine needs saying ---------------------------------------------------------------


@pytest.fixture
def lean_proxy(confdir: Path) -> Iterator[ReplayProxy]:
    with ReplayProxy(
        ROOT / "cassettes/azure-maps/tileset-succeeds.yaml", confdir=confdir, engine="lean"
    ) as p:
        yield p


START = f"/tilesets?api-version=2.0&datasetId={DATASET_ID}"


def test_pipelined_requests_are_answered_in_order(lean_proxy: ReplayProxy) -> None:
    pipelined = _request("POST", START) + _request("GET", "/nothing") + _request("POST", START)
    with socket.create_connection(("127.0.0.1", lean_proxy.listen_port), timeout=TIMEOUT) as sock:
        sock.sendall(pipelined)
        data = b""
        while data.count(b"HTTP/1.1 ") < 3:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    statuses = re.findall(rb"HTTP/1.1 (\d+)", data)
    assert statuses == [b"202", b"599", b"202"]


def test_a_chunked_request_body_is_read(confdir: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "echo.yaml"
    scenario.write_text(
        "routes:\n  - match: {method: POST, path: /echo}\n    respond: {text: 'got {{ request.json.a }}'}\n"
    )
    with ReplayProxy(scenarios=[scenario], confdir=confdir, engine="lean") as proxy:
        r = requests.post(proxy.url + "/echo", data=iter([b'{"a": "abc', b'def"}']), timeout=TIMEOUT)
        assert r.request.headers["Transfer-Encoding"] == "chunked"
        assert (r.status_code, r.text) == (200, "got abcdef")


def test_an_endless_request_head_gets_431(lean_proxy: ReplayProxy) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * (MAX_REQUEST_HEAD + 1024)
    _, data = _raw(lean_proxy.listen_port, head)
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert _raw(lean_proxy.listen_port, _request("POST", START))[1].startswith(b"HTTP/1.1 202")


def test_a_body_over_the_limit_gets_413_and_is_journaled(confdir: Path) -> None:
    cassette = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
    with ReplayProxy(cassette, confdir=confdir, engine="lean", max_body_size="1k") as proxy:
        _, data = _raw(proxy.listen_port, _request("POST", START, body=b"x" * 2048))
        assert data.startswith(b"HTTP/1.1 413 "), data
        assert b"Connection: close" in data
        assert [(e.status, e.source) for e in proxy.journal.entries] == [(413, "refused")]
        assert _raw(proxy.listen_port, _request("POST", START, body=b"x" * 1024))[1].startswith(
            b"HTTP/1.1 202"
        )


def test_http2_and_tls_are_refused_by_name(lean_proxy: ReplayProxy) -> None:
    _, data = _raw(lean_proxy.listen_port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 505 ") and b"--engine mitmproxy" in data, data
    _, data = _raw(lean_proxy.listen_port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40)
    assert data.startswith(b"HTTP/1.1 400 ") and b"TLS" in data, data


def test_use_switches_what_the_lean_engine_serves(lean_proxy: ReplayProxy) -> None:
    assert requests.post(lean_proxy.url + START, timeout=TIMEOUT).status_code == 202
    lean_proxy.use(ROOT / "scenarios/azure-maps/tileset-fails.yaml")
    assert lean_proxy.journal.entries == []
    r = requests.post(lean_proxy.url + "/tilesets?api-version=2.0&datasetId=abc", timeout=TIMEOUT)
    assert r.status_code == 202
    assert [e.source for e in lean_proxy.journal.entries] == ["scenario"]
    with pytest.raises(ConfigError, match="--engine mitmproxy"):
        lean_proxy.use(upstream="http://127.0.0.1:9")


@pytest.mark.parametrize(
    "options",
    [
        {"upstream": "http://127.0.0.1:9"},
        {"cassette": "new.yaml", "upstream": "http://127.0.0.1:9"},
        {"mode": "regular"},
        {"forward_port": 9},
        {"cassette": "c.yaml", "record_mode": "new_episodes"},
    ],
)
def test_the_lean_engine_refuses_what_it_cannot_do(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="--engine mitmproxy"):
        ReplayProxy(engine="lean", **options)


def test_a_status_url_follows_to_the_lean_proxy(lean_proxy: ReplayProxy) -> None:
    r = requests.post(lean_proxy.url + START, timeout=TIMEOUT)
    assert urljoin(lean_proxy.url, r.headers["Location"]).startswith(lean_proxy.url)
    with contextlib.suppress(KeyError):
        assert r.headers["Connection"] != "close"


def test_the_lean_engine_runs_on_uvloop_when_it_is_installed(lean_proxy: ReplayProxy) -> None:
    """uvloop is a dependency (but on Windows): the lean engine's loop is libuv's, and it answers."""
    pytest.importorskip("uvloop", reason="uvloop is not installed on Windows")
    assert type(lean_proxy._loop).__module__.startswith("uvloop")
    assert requests.get(f"{lean_proxy.url}/nothing-here", timeout=10).status_code == 599


def test_without_uvloop_the_lean_engine_runs_on_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import builtins

    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    from proxy import lean

    async def loop_module() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("asyncio")

    lean.run(loop_module())
