"""vcrpy interop, both ways: proxy-recorded cassettes replay in-process with vcrpy (requests, httpx), and
cassettes vcrpy recorded in-process replay through the proxy. Every replay runs with the upstream stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import vcr
import yaml
from vcr.errors import CannotOverwriteExistingCassetteException

from proxy.creator_service import CreatorService
from proxy.server import ReplayProxy
from tests.upstream import BINARY, Upstream

TIMEOUT = 10
VCR_MATCH_ON = ["method", "scheme", "host", "port", "path", "query"]
"""vcrpy's own default: the whole URL identifies a request."""


# ----------------------------------------------------------------------------- clients, one shape


@dataclass(frozen=True)
class Answer:
    """What a client observed: status, header fields (lower-case names, repeats kept), decoded body."""

    status: int
    fields: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.fields if k == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


class RequestsClient:
    name = "requests"

    def __init__(self) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # no HTTP(S)_PROXY from the environment

    def send(self, method: str, url: str, body: Any = None) -> Answer:
        r = self.session.request(method, url, json=body, timeout=TIMEOUT, allow_redirects=False)
        fields = tuple((k.lower(), v) for k, v in r.raw.headers.items())  # urllib3: one item per field
        return Answer(r.status_code, fields, r.content)

    def close(self) -> None:
        self.session.close()


class HttpxClient:
    name = "httpx"

    def __init__(self) -> None:
        self.client = httpx.Client(trust_env=False, timeout=TIMEOUT)

    def send(self, method: str, url: str, body: Any = None) -> Answer:
        r = self.client.request(method, url, json=body)
        return Answer(r.status_code, tuple(r.headers.multi_items()), r.content)

    def close(self) -> None:
        self.client.close()


Client = RequestsClient | HttpxClient
CLIENTS: dict[str, Callable[[], Client]] = {"requests": RequestsClient, "httpx": HttpxClient}


# ----------------------------------------------------------------------------- the traffic


CALLS: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/json?b=2&a=1", None),
    ("GET", "/gzip", None),
    ("GET", "/binary", None),
    ("POST", "/echo", {"x": 1, "text": "h\u00e9llo"}),
    ("GET", "/status/503", None),
    ("GET", "/start", None),
    ("GET", "/operations/op1", None),
    ("GET", "/operations/op1", None),
    ("GET", "/operations/op1", None),
    ("GET", "/cookies", None),
)


def run_calls(client: Client, base: str) -> list[Answer]:
    return [client.send(method, base + path, body) for method, path, body in CALLS]


def check_answers(
    answers: list[Answer], location_origin: str, cookies: list[str], *, replayed: bool = True
) -> None:
    """The upstream's answers to CALLS, as any replay must reproduce them (``replayed=False``: live)."""
    assert len(answers) == len(CALLS)
    j, gz, binary, echo, unavailable, start, p1, p2, p3, cookie = answers

    assert j.status == 200
    assert j.json() == {"hello": "world", "query": {"b": ["2"], "a": ["1"]}}
    assert j.header("content-type") == "application/json"

    assert gz.status == 200
    assert gz.json() == {"compressed": "gzip", "pad": "x" * 200}
    if replayed:  # stored decoded, served decoded; live, the client itself decoded the gzip
        assert gz.header("content-encoding") is None
        assert gz.header("content-length") == str(len(gz.body))
    else:
        assert gz.header("content-encoding") == "gzip"

    assert binary.status == 200
    assert binary.body == BINARY
    assert binary.header("content-type") == "application/octet-stream"

    assert echo.status == 200
    assert echo.json()["method"] == "POST"
    assert json.loads(echo.json()["body"]) == {"x": 1, "text": "h\u00e9llo"}

    assert unavailable.status == 503
    assert unavailable.json() == {"status": 503}

    assert start.status == 202
    assert start.body == b""
    assert start.header("location") == f"{location_origin}/operations/op1"
    assert start.header("operation-location") == f"{location_origin}/operations/op1"

    polls = [(a.status, a.json()["status"], a.json()["poll"], a.header("retry-after")) for a in (p1, p2, p3)]
    assert polls == [(200, "Running", 1, "1"), (200, "Running", 2, "1"), (200, "Succeeded", 3, None)]

    assert cookie.status == 200
    assert cookie.all("set-cookie") == cookies


def cassette_data(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def response_for(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The recorded response of the first interaction whose URI ends with ``path``."""
    for item in data["interactions"]:
        if item["request"]["uri"].endswith(path):
            response: dict[str, Any] = item["response"]
            return response
    raise AssertionError(f"no interaction for {path}")


# ============================================================ 1. proxy records, vcrpy replays in-process


@dataclass(frozen=True)
class ProxyRecorded:
    path: Path
    upstream_url: str
    cookies: list[str]  # the Set-Cookie values as saved (redacted)


@pytest.fixture(scope="module")
def proxy_recorded(tmp_path_factory: pytest.TempPathFactory) -> ProxyRecorded:
    cassette = tmp_path_factory.mktemp("proxy-recorded") / "cassette.yaml"
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    with Upstream() as up:
        client = RequestsClient()
        try:
            with ReplayProxy(cassette, upstream=up.url, confdir=confdir) as proxy:
                live = run_calls(client, proxy.url)
        finally:
            client.close()
        seen = len(up.requests)
    assert seen == len(CALLS)
    # Live, the client was on the proxy: absolute upstream URLs were pointed at it, cookies were real.
    check_answers(
        live,
        proxy.url,
        ["session=s3cr3t-cookie; Path=/; HttpOnly", "b=2; Path=/"],
        replayed=False,
    )
    data = cassette_data(cassette)
    cookies = response_for(data, "/cookies")["headers"]["Set-Cookie"]
    assert cookies == ["session=<REDACTED-1>; Path=/; HttpOnly", "b=<REDACTED-2>; Path=/"]
    return ProxyRecorded(cassette, up.url, cookies)


def test_proxy_cassette_is_plain_vcrpy_yaml(proxy_recorded: ProxyRecorded) -> None:
    text = proxy_recorded.path.read_text(encoding="utf-8")
    data = cassette_data(proxy_recorded.path)
    assert sorted(data) == ["interactions", "version"]  # no `metadata:` (pytest-recording 0.14 rejects it)
    assert data["version"] == 1
    assert len(data["interactions"]) == len(CALLS)
    for item, (method, path, _) in zip(data["interactions"], CALLS, strict=True):
        assert sorted(item) == ["request", "response"]
        assert sorted(item["request"]) == ["body", "headers", "method", "uri"]
        assert item["request"]["method"] == method
        # The client talked to the proxy; the cassette holds the upstream's URL.
        assert item["request"]["uri"] == proxy_recorded.upstream_url + path
    gz = response_for(data, "/gzip")
    assert "Content-Encoding" not in gz["headers"]
    assert gz["body"]["string"] == json.dumps({"compressed": "gzip", "pad": "x" * 200})
    assert gz["headers"]["Content-Length"] == [str(len(gz["body"]["string"]))]
    assert response_for(data, "/binary")["body"]["string"] == BINARY
    assert "string: !!binary |" in text
    assert response_for(data, "/start")["headers"]["Location"] == [
        f"{proxy_recorded.upstream_url}/operations/op1"
    ]
    assert "s3cr3t-cookie" not in text


@pytest.mark.parametrize("client_name", ["requests", "httpx"])
def test_proxy_cassette_replays_in_process_with_vcrpy(
    proxy_recorded: ProxyRecorded, client_name: str
) -> None:
    client = CLIENTS[client_name]()
    try:
        with vcr.use_cassette(str(proxy_recorded.path), record_mode="none", match_on=VCR_MATCH_ON) as cass:
            answers = run_calls(client, proxy_recorded.upstream_url)
            # vcrpy plays identical requests once each, in recorded order: a 4th poll was never recorded.
            with pytest.raises(CannotOverwriteExistingCassetteException):
                client.send("GET", proxy_recorded.upstream_url + "/operations/op1")
            assert cass.play_count == len(CALLS)
            assert cass.all_played
    finally:
        client.close()
    # In-process there is no proxy to rewrite URLs: Location is the upstream's, as recorded.
    check_answers(answers, proxy_recorded.upstream_url, proxy_recorded.cookies)


def test_proxy_recorded_creator_lro_replays_in_process(
    creator: CreatorService, tmp_path: Path, confdir: Path
) -> None:
    """A real long-running operation: the in-process client follows the recorded (upstream) Locations."""
    cassette = tmp_path / "creator.yaml"

    def lro(client: Client, base: str) -> list[tuple[int, str | None, Any]]:
        out: list[tuple[int, str | None, Any]] = []
        a = client.send("POST", f"{base}/tilesets?api-version=2.0&datasetId=ds-1")
        out.append((a.status, a.header("retry-after"), None))
        location = a.header("location")
        assert location is not None
        while True:
            a = client.send("GET", location)
            out.append((a.status, a.header("retry-after"), a.json()["status"]))
            if a.status != 200:
                break
        resource = a.json()["resourceLocation"]
        assert a.header("location") == resource
        a = client.send("GET", f"{resource}?api-version=2.0&gzip=1")  # gzip-encoded by the service
        out.append((a.status, a.header("content-encoding"), a.json()["datasetId"]))
        return out

    expected = [
        (202, "1", None),
        (200, "1", "NotStarted"),
        (200, "1", "Running"),
        (200, "1", "Running"),
        (201, None, "Succeeded"),
        (200, None, "ds-1"),
    ]
    recorder = RequestsClient()
    try:
        with ReplayProxy(cassette, upstream=creator.url, confdir=confdir) as proxy:
            assert lro(recorder, proxy.url) == expected
    finally:
        recorder.close()
    creator.stop()
    data = cassette_data(cassette)
    assert [i["request"]["uri"].startswith(creator.url + "/tilesets") for i in data["interactions"]] == [
        True
    ] * len(expected)
    for name in ("requests", "httpx"):
        client = CLIENTS[name]()
        try:
            with vcr.use_cassette(str(cassette), record_mode="none", match_on=VCR_MATCH_ON) as cass:
                assert lro(client, creator.url) == expected, name
                assert cass.all_played
        finally:
            client.close()


PYTEST_RECORDING_TEST = """
import pytest
import requests

UPSTREAM = {upstream!r}


@pytest.mark.vcr
def test_replays() -> None:
    s = requests.Session()
    s.trust_env = False
    assert s.get(UPSTREAM + "/json?b=2&a=1", timeout=5).json()["hello"] == "world"
    assert s.get(UPSTREAM + "/gzip", timeout=5).json()["compressed"] == "gzip"
    assert s.get(UPSTREAM + "/binary", timeout=5).content == bytes(range(256)) * 4
    statuses = [s.get(UPSTREAM + "/operations/op1", timeout=5).json()["status"] for _ in range(3)]
    assert statuses == ["Running", "Running", "Succeeded"]
"""


def test_pytest_recording_loads_proxy_cassette(proxy_recorded: ProxyRecorded, tmp_path: Path) -> None:
    """pytest-recording 0.14 (it rejects vcrpy 9's `metadata:`) replays the cassette in a real pytest run."""
    (tmp_path / "cassettes" / "test_inner").mkdir(parents=True)
    (tmp_path / "cassettes" / "test_inner" / "test_replays.yaml").write_bytes(
        proxy_recorded.path.read_bytes()
    )
    code = PYTEST_RECORDING_TEST.format(upstream=proxy_recorded.upstream_url)
    (tmp_path / "test_inner.py").write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--record-mode=none",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            "test_inner.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# ============================================================ 2. vcrpy records in-process, the proxy replays


@dataclass(frozen=True)
class VcrRecorded:
    paths: dict[str, Path]  # "requests" / "httpx-decoded" / "httpx-raw" -> cassette


VCR_SHAPES = {
    # (client that records, decode_compressed_response)
    "requests": ("requests", False),  # decoded gzip body, Content-Encoding kept, compressed Content-Length
    "httpx-decoded": ("httpx", True),  # decoded body, no Content-Encoding
    "httpx-raw": ("httpx", False),  # the raw gzip bytes as !!binary, Content-Encoding: gzip
}


@pytest.fixture(scope="module")
def vcr_recorded(tmp_path_factory: pytest.TempPathFactory) -> VcrRecorded:
    directory = tmp_path_factory.mktemp("vcrpy-recorded")
    paths: dict[str, Path] = {}
    for shape, (client_name, decode) in VCR_SHAPES.items():
        path = directory / f"{shape}.yaml"
        with Upstream() as up:  # a fresh upstream each: its polls start over, its port is new
            client = CLIENTS[client_name]()
            try:
                with vcr.use_cassette(str(path), record_mode="all", decode_compressed_response=decode):
                    answers = run_calls(client, up.url)
            finally:
                client.close()
            assert len(up.requests) == len(CALLS)
        # In-process, nothing rewrites URLs and nothing is redacted.
        check_answers(
            answers, up.url, ["session=s3cr3t-cookie; Path=/; HttpOnly", "b=2; Path=/"], replayed=False
        )
        paths[shape] = path
    # Both shapes of a compressed body are really on disk.
    requests_gz = response_for(cassette_data(paths["requests"]), "/gzip")
    assert requests_gz["headers"]["Content-Encoding"] == ["gzip"]
    assert isinstance(requests_gz["body"]["string"], str)
    raw_gz = response_for(cassette_data(paths["httpx-raw"]), "/gzip")
    assert raw_gz["headers"]["content-encoding"] == ["gzip"]
    assert raw_gz["body"]["string"][:2] == b"\x1f\x8b"
    decoded_gz = response_for(cassette_data(paths["httpx-decoded"]), "/gzip")
    assert "content-encoding" not in decoded_gz["headers"]
    return VcrRecorded(paths)


@pytest.mark.parametrize("shape", list(VCR_SHAPES))
@pytest.mark.parametrize("client_name", ["requests", "httpx"])
def test_vcrpy_cassette_replays_through_proxy(
    vcr_recorded: VcrRecorded, shape: str, client_name: str, confdir: Path
) -> None:
    client = CLIENTS[client_name]()
    try:
        with ReplayProxy(vcr_recorded.paths[shape], confdir=confdir) as proxy:
            answers = run_calls(client, proxy.url)
            extra = client.send("GET", proxy.url + "/operations/op1")
            sources = [e.source for e in proxy.journal.entries]
    finally:
        client.close()
    # Reverse mode: recorded upstream URLs are pointed at the proxy, so the client stays on it.
    check_answers(answers, proxy.url, ["session=s3cr3t-cookie; Path=/; HttpOnly", "b=2; Path=/"])
    # Past the recorded polls the proxy repeats the last answer (vcrpy would refuse).
    assert (extra.status, extra.json()["status"], extra.json()["poll"]) == (200, "Succeeded", 3)
    assert sources == ["cassette"] * (len(CALLS) + 1)


def test_vcrpy_cassette_unmatched_request_is_not_forwarded(vcr_recorded: VcrRecorded, confdir: Path) -> None:
    client = RequestsClient()
    try:
        with ReplayProxy(vcr_recorded.paths["requests"], confdir=confdir) as proxy:
            miss = client.send("GET", proxy.url + "/json?b=3&a=1")
    finally:
        client.close()
    assert miss.status == 599
    assert miss.header("x-replay-proxy") == "no-match"
    assert miss.json()["error"]["code"] == "ReplayProxyNoMatch"
