"""Record and replay through the embedded ``ReplayProxy`` (one at a time in this process) and the CLI.

Real loopback services (``CreatorService``, ``tests.upstream.Upstream``), real clients (requests, httpx sync
and async), real mitmproxy. Every client call has a timeout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import yaml
from vcr.cassette import Cassette

from proxy.cassette import save
from proxy.creator_service import CreatorService
from proxy.model import Interaction, Request, Response
from proxy.server import ReplayProxy
from tests.conftest import ENGINES
from tests.upstream import BINARY, Upstream

TIMEOUT = 10
START = "/tilesets?api-version=2.0&datasetId=abc"
MAX_POLLS = 10
_JSON = {"Content-Type": "application/json"}


# ----------------------------------------------------------------------------- clients, one shape


@dataclass(frozen=True)
class Seen:
    """What a client observed for one exchange: method, URL it asked, status, headers (lower-case), body."""

    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Send = Callable[..., Awaitable[Seen]]


def _requests_send(session: requests.Session) -> Send:
    async def send(method: str, url: str, **kw: Any) -> Seen:
        r = session.request(method, url, timeout=TIMEOUT, allow_redirects=False, **kw)
        return Seen(method, url, r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    return send


def _httpx_send(client: httpx.Client) -> Send:
    async def send(method: str, url: str, **kw: Any) -> Seen:
        r = client.request(method, url, **kw)
        return Seen(method, url, r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    return send


def _httpx_async_send(client: httpx.AsyncClient) -> Send:
    async def send(method: str, url: str, **kw: Any) -> Seen:
        r = await client.request(method, url, **kw)
        return Seen(method, url, r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    return send


CLIENTS = ("requests", "httpx", "httpx-async")


def run_with(client: str, script: Callable[[Send], Awaitable[Any]]) -> Any:
    """Run ``script(send)`` with one fresh client of the named kind (no proxy from the environment)."""

    async def main() -> Any:
        if client == "requests":
            with requests.Session() as s:
                s.trust_env = False
                return await script(_requests_send(s))
        if client == "httpx":
            with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
                return await script(_httpx_send(c))
        async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as ac:
            return await script(_httpx_async_send(ac))

    return asyncio.run(main())


def get(url: str, **kw: Any) -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        return s.get(url, timeout=TIMEOUT, allow_redirects=False, **kw)


def post(url: str, **kw: Any) -> requests.Response:
    with requests.Session() as s:
        s.trust_env = False
        return s.post(url, timeout=TIMEOUT, allow_redirects=False, **kw)


# ----------------------------------------------------------------------------- the Creator flow


async def creator_flow(send: Send, base: str) -> list[Seen]:
    """POST the tileset job, follow the Location it gave through every poll, then GET the resource."""
    seen = [await send("POST", base + START)]
    assert seen[0].status == 202, seen[0]
    url = seen[0].headers["location"]
    for _ in range(MAX_POLLS):
        poll = await send("GET", url)
        seen.append(poll)
        if poll.status != 200:
            break
    else:
        pytest.fail(f"the operation did not finish within {MAX_POLLS} polls")
    done = seen[-1]
    assert done.status == 201, done
    seen.append(await send("GET", done.json()["resourceLocation"]))
    return seen


def assert_creator_flow(seen: list[Seen], proxy_url: str) -> None:
    """The client went POST -> NotStarted, Running, Running, 201 Succeeded -> resource, all on the proxy."""
    assert [s.method for s in seen] == ["POST", "GET", "GET", "GET", "GET", "GET"]
    assert [s.status for s in seen] == [202, 200, 200, 200, 201, 200]
    assert [s.json()["status"] for s in seen[1:5]] == ["NotStarted", "Running", "Running", "Succeeded"]
    assert all(s.url.startswith(proxy_url + "/") for s in seen), [s.url for s in seen]
    followed = [seen[0].headers["location"], seen[4].headers["location"], seen[4].json()["resourceLocation"]]
    for url in followed:
        assert url.startswith(proxy_url + "/"), url
    assert seen[4].headers["location"] == seen[4].json()["resourceLocation"]
    assert seen[5].json()["url"] == seen[4].json()["resourceLocation"]  # JSON body URL rewritten too


def interactions(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text("utf-8"))
    assert set(data) == {"version", "interactions"}
    items: list[dict[str, Any]] = data["interactions"]
    return items


def header(headers: dict[str, list[str]], name: str) -> list[str] | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def body_text(item: dict[str, Any]) -> str:
    body = item["response"]["body"]["string"]
    return body.decode() if isinstance(body, bytes) else str(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass(frozen=True)
class Recorded:
    path: Path
    service_url: str
    port: int
    url: str
    """The recording proxy's URL: the one the recorded client saw."""
    seen: list[Seen]


def _on(body: bytes, proxy_url: str) -> bytes:
    return body.replace(proxy_url.encode(), b"<proxy>")


@pytest.fixture(scope="module")
def creator_cassette(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """The Creator flow recorded once with requests; the service is stopped before any test replays it."""
    path = tmp_path_factory.mktemp("creator") / "tileset.yaml"
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    service = CreatorService(running_polls=2, retry_after=1).start()
    try:
        with ReplayProxy(path, service.url, confdir=confdir) as proxy:
            seen = run_with("requests", lambda send: creator_flow(send, proxy.url))
            assert_creator_flow(seen, proxy.url)
    finally:
        service.stop()
    yield Recorded(path, service.url, service.port, proxy.url, seen)


# ----------------------------------------------------------------------------- 1. recording


@pytest.mark.parametrize("client", CLIENTS)
def test_record_creator_flow_follows_locations_on_the_proxy_and_saves_real_urls(
    client: str, creator: CreatorService, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "tileset.yaml"
    with ReplayProxy(path, creator.url, confdir=confdir) as proxy:
        seen = run_with(client, lambda send: creator_flow(send, proxy.url))
    assert_creator_flow(seen, proxy.url)
    # Every exchange reached the real service, in order.
    assert [m for m, _ in creator.requests] == ["POST", "GET", "GET", "GET", "GET", "GET"]

    items = interactions(path)
    assert len(items) == 6
    op_path = seen[0].headers["location"][len(proxy.url) :]
    resource_path = seen[4].json()["resourceLocation"][len(proxy.url) :]
    assert [(i["request"]["method"], i["request"]["uri"]) for i in items] == [
        ("POST", creator.url + START),
        *[("GET", creator.url + op_path)] * 4,
        ("GET", creator.url + resource_path),
    ]
    assert [i["response"]["status"]["code"] for i in items] == [202, 200, 200, 200, 201, 200]
    assert [json.loads(body_text(i))["status"] for i in items[1:5]] == [
        "NotStarted",
        "Running",
        "Running",
        "Succeeded",
    ]
    # The file keeps the service's own URLs, never the proxy's.
    assert header(items[0]["response"]["headers"], "Location") == [creator.url + op_path]
    assert header(items[4]["response"]["headers"], "Location") == [creator.url + resource_path]
    assert json.loads(body_text(items[4]))["resourceLocation"] == creator.url + resource_path
    assert json.loads(body_text(items[5]))["url"] == creator.url + resource_path
    assert proxy.url not in path.read_text("utf-8")


# ----------------------------------------------------------------------------- 2. offline replay


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("service_state", ["stopped", "listening"])
@pytest.mark.parametrize("client", CLIENTS)
def test_replay_creator_flow_offline_never_connects(
    client: str, service_state: str, engine: str, creator_cassette: Recorded, confdir: Path
) -> None:
    service = None
    if service_state == "listening":
        # A fresh service on the very origin the cassette recorded: the proxy could reach it, but must not.
        service = CreatorService(port=creator_cassette.port).start()
        assert service.url == creator_cassette.service_url
    saved = creator_cassette.path.read_bytes()
    try:
        before = service.connections if service else 0
        with ReplayProxy(creator_cassette.path, confdir=confdir, engine=engine) as proxy:
            seen = run_with(client, lambda send: creator_flow(send, proxy.url))
            entries = proxy.journal.entries
        assert_creator_flow(seen, proxy.url)
        if service is not None:
            assert service.connections == before == 0
            assert service.requests == []
    finally:
        if service is not None:
            service.stop()
    recorded = creator_cassette.seen
    assert [s.status for s in seen] == [s.status for s in recorded]
    # The same bodies in recorded order (each session's proxy URL aside).
    assert [_on(s.body, proxy.url) for s in seen] == [_on(s.body, creator_cassette.url) for s in recorded]
    assert [e.source for e in entries] == ["cassette"] * 6
    assert [e.detail for e in entries] == ["#1", "#2", "#3", "#4", "#5", "#6"]
    assert creator_cassette.path.read_bytes() == saved  # replay never writes


# ----------------------------------------------------------------------------- 3. exhaustion


def _finish_flow(proxy: ReplayProxy) -> tuple[str, list[Seen]]:
    seen = run_with("requests", lambda send: creator_flow(send, proxy.url))
    return seen[0].headers["location"], seen


@pytest.mark.parametrize("engine", ENGINES)
def test_exhausted_sequence_repeats_the_last_answer_and_journal_flags_it(
    creator_cassette: Recorded, confdir: Path, engine: str
) -> None:
    with ReplayProxy(creator_cassette.path, confdir=confdir, engine=engine) as proxy:
        status_url, seen = _finish_flow(proxy)
        extra = [get(status_url) for _ in range(2)]
        entries = proxy.journal.entries
    assert [r.status_code for r in extra] == [201, 201]
    assert all(r.content == seen[4].body for r in extra)
    assert extra[0].json()["status"] == "Succeeded"
    assert [e.detail for e in entries[-2:]] == ["#5, repeated: the recorded sequence ran out"] * 2
    assert [e.source for e in entries[-2:]] == ["cassette", "cassette"]
    assert not any("repeated" in e.detail for e in entries[:-2])


def test_exhausted_sequence_cycles_from_the_first_answer(creator_cassette: Recorded, confdir: Path) -> None:
    with ReplayProxy(creator_cassette.path, confdir=confdir, when_exhausted="cycle") as proxy:
        status_url, _ = _finish_flow(proxy)
        extra = [get(status_url) for _ in range(5)]
    assert [r.status_code for r in extra] == [200, 200, 200, 201, 200]
    assert [r.json()["status"] for r in extra] == [
        "NotStarted",
        "Running",
        "Running",
        "Succeeded",
        "NotStarted",
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_exhausted_sequence_with_error_policy_answers_599(
    creator_cassette: Recorded, confdir: Path, engine: str
) -> None:
    with ReplayProxy(creator_cassette.path, confdir=confdir, when_exhausted="error", engine=engine) as proxy:
        status_url, _ = _finish_flow(proxy)
        extra = get(status_url)
        entries = proxy.journal.entries
    assert extra.status_code == 599
    assert extra.headers["X-Replay-Proxy"] == "no-match"
    error = extra.json()["error"]
    assert error["code"] == "ReplayProxyNoMatch"
    assert "all 4 recorded interactions matching this request were already played" in error["message"]
    assert entries[-1].source == "no-match"
    assert entries[-1].status == 599


# ----------------------------------------------------------------------------- 4. no match


def test_unmatched_request_gets_599_diagnostic_and_is_never_forwarded(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "c.yaml"
    with ReplayProxy(path, upstream.url, confdir=confdir) as proxy:
        assert get(proxy.url + "/json?region=eu&size=2").status_code == 200
        assert get(proxy.url + "/binary").status_code == 200
    connections, seen_requests = upstream.connections, len(upstream.requests)

    # The upstream keeps listening on the recorded origin: a forward would reach it.
    with ReplayProxy(path, confdir=confdir) as proxy:
        r = get(proxy.url + "/json?region=us&size=2")
        entries = proxy.journal.entries
    assert upstream.connections == connections
    assert len(upstream.requests) == seen_requests

    assert r.status_code == 599
    assert r.headers["X-Replay-Proxy"] == "no-match"
    assert r.headers["Content-Type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "ReplayProxyNoMatch"
    assert error["request"] == {"method": "GET", "uri": upstream.url + "/json?region=us&size=2"}
    closest = error["closest"]
    assert closest[0]["uri"] == upstream.url + "/json?region=eu&size=2"
    assert closest[0]["method"] == "GET"
    assert closest[0]["differences"] == ["query: missing region=eu; unexpected region=us"]
    assert "region=eu" in error["message"] and "region=us" in error["message"]
    assert "size" not in closest[0]["differences"][0]  # only the differing parameter is named
    assert entries[-1].source == "no-match"
    assert "closest #1 GET /json?region=eu&size=2" in entries[-1].detail


# ----------------------------------------------------------------------------- 5. matching


def test_query_order_does_not_matter_by_default(upstream: Upstream, tmp_path: Path, confdir: Path) -> None:
    path = tmp_path / "c.yaml"
    with ReplayProxy(path, upstream.url, confdir=confdir) as proxy:
        recorded = get(proxy.url + "/json?a=1&b=2")
    with ReplayProxy(path, confdir=confdir) as proxy:
        replayed = get(proxy.url + "/json?b=2&a=1")
        other = get(proxy.url + "/json?a=1&b=3")
    assert replayed.status_code == 200
    assert replayed.content == recorded.content
    assert other.status_code == 599


def test_body_matcher_distinguishes_json_bodies_ignoring_key_order(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "c.yaml"
    with ReplayProxy(path, upstream.url, confdir=confdir) as proxy:
        first = post(proxy.url + "/echo", json={"a": 1, "b": 2})
        second = post(proxy.url + "/echo", json={"a": 1, "b": 3})
    assert first.json()["body"] != second.json()["body"]
    match_on = ["method", "path", "query", "body"]
    with ReplayProxy(path, confdir=confdir, match_on=match_on) as proxy:
        # Asked in the other order, keys reordered: each body still finds its own answer.
        got_second = post(proxy.url + "/echo", data=b'{"b": 3, "a": 1}', headers=_JSON)
        got_first = post(proxy.url + "/echo", data=b'{"b": 2, "a": 1}', headers=_JSON)
        unknown = post(proxy.url + "/echo", json={"a": 1, "b": 4})
    assert got_first.status_code == got_second.status_code == 200
    assert got_first.content == first.content
    assert got_second.content == second.content
    assert unknown.status_code == 599
    assert any(d.startswith("body") for d in unknown.json()["error"]["closest"][0]["differences"])


def test_match_headers_distinguishes_by_that_header(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "c.yaml"
    with ReplayProxy(path, upstream.url, confdir=confdir) as proxy:
        a = get(proxy.url + "/echo", headers={"X-Tenant": "alpha"})
        b = get(proxy.url + "/echo", headers={"X-Tenant": "beta"})
    assert a.json()["headers"]["X-Tenant"] == "alpha"
    with ReplayProxy(path, confdir=confdir, match_headers=["x-tenant"]) as proxy:
        got_b = get(proxy.url + "/echo", headers={"x-tenant": "beta"})
        got_a = get(proxy.url + "/echo", headers={"x-tenant": "alpha"})
        unknown = get(proxy.url + "/echo", headers={"x-tenant": "gamma"})
    assert got_b.content == b.content
    assert got_a.content == a.content
    assert unknown.status_code == 599
    assert unknown.json()["error"]["closest"][0]["differences"] == ["header x-tenant: 'gamma' != 'alpha'"]
    # Without the option the header is not part of a request's identity: recorded order wins.
    with ReplayProxy(path, confdir=confdir) as proxy:
        assert get(proxy.url + "/echo", headers={"x-tenant": "beta"}).content == a.content


# ----------------------------------------------------------------------------- 6. Retry-After


def test_retry_after_is_rewritten_for_the_client_while_recording_but_saved_as_sent(
    creator: CreatorService, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "tileset.yaml"
    with ReplayProxy(path, creator.url, confdir=confdir, retry_after=0.01) as proxy:
        seen = run_with("httpx", lambda send: creator_flow(send, proxy.url))
    assert_creator_flow(seen, proxy.url)
    # 0.01 is no valid Retry-After (RFC 9110: whole seconds): the 202 and the polls carry it in milliseconds
    assert [s.headers.get("retry-after") for s in seen] == [None] * 6
    assert [s.headers.get("retry-after-ms") for s in seen] == ["10", "10", "10", "10", None, None]
    items = interactions(path)
    assert [header(i["response"]["headers"], "Retry-After") for i in items] == [["1"]] * 4 + [None, None]


def _throttled_cassette(path: Path, origin: str = "http://service.example") -> None:
    save(
        path,
        [
            Interaction(
                Request("GET", origin + "/ops/1"),
                Response(
                    200,
                    "OK",
                    (
                        ("Content-Type", "application/json"),
                        ("Retry-After", "30"),
                        ("retry-after-ms", "30000"),
                        ("x-ms-retry-after-ms", "30000"),
                    ),
                    b'{"status": "Running"}',
                ),
            )
        ],
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_retry_after_api_option_rewrites_seconds_and_milliseconds(
    tmp_path: Path, confdir: Path, engine: str
) -> None:
    path = tmp_path / "throttled.yaml"
    _throttled_cassette(path)
    before = path.read_bytes()
    with ReplayProxy(path, confdir=confdir, retry_after=0.01, engine=engine) as proxy:
        r = get(proxy.url + "/ops/1")
    assert r.status_code == 200
    assert "Retry-After" not in r.headers  # a fraction is no valid Retry-After: the ms headers carry it
    assert r.headers["retry-after-ms"] == "10"
    assert r.headers["x-ms-retry-after-ms"] == "10"
    assert path.read_bytes() == before


def test_retry_after_cli_option_zero(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "throttled.yaml"
    _throttled_cassette(path)
    before = path.read_bytes()
    proc = cli(["replay", str(path), "--port", "0", "--retry-after", "0"])
    found = re.search(r"http://127\.0\.0\.1:\d+", proc.ready_line)
    assert found, proc.ready_line
    try:
        r = get(found[0] + "/ops/1")
    finally:
        assert proc.stop() == 0
    assert r.status_code == 200
    assert r.headers["Retry-After"] == "0"
    assert r.headers["retry-after-ms"] == "0"
    assert r.headers["x-ms-retry-after-ms"] == "0"
    assert r.json() == {"status": "Running"}
    assert path.read_bytes() == before
    assert "GET /ops/1 -> 200 (cassette interaction #1)" in proc.stderr


# ----------------------------------------------------------------------------- 7. redaction


TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.Zm9vYmFyMTIzNDU2"
SUB_KEY = "0123456789abcdef0123456789abcdef"
QUERY_KEY = "q-secret-4f1c2b9d8e7a"
COOKIE = "c00kie-value-7d3e9a1b"
PASSWORD = "hunter2-correct-horse-battery"
UPSTREAM_COOKIE = "s3cr3t-cookie"


def _send_secrets(base: str, token: str, key: str, qkey: str, cookie: str, password: str) -> list[Any]:
    with requests.Session() as s:
        s.trust_env = False
        out = [
            s.get(
                f"{base}/echo?subscription-key={qkey}&region=eu",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Ocp-Apim-Subscription-Key": key,
                    "Cookie": f"session={cookie}",
                },
                timeout=TIMEOUT,
            ),
            s.get(f"{base}/cookies", timeout=TIMEOUT),
            s.post(f"{base}/echo", json={"user": "bob", "password": password}, timeout=TIMEOUT),
        ]
    return out


def test_secrets_never_reach_the_cassette_and_replay_matches_other_secrets(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "secrets.yaml"
    with ReplayProxy(path, upstream.url, confdir=confdir, redact_json=["password"]) as proxy:
        live = _send_secrets(proxy.url, TOKEN, SUB_KEY, QUERY_KEY, COOKIE, PASSWORD)
    assert [r.status_code for r in live] == [200, 200, 200]

    # Live traffic untouched: the upstream got the real values, the client the real Set-Cookie.
    echo_get, cookies, echo_post = upstream.requests
    assert cookies["path"] == "/cookies"
    assert echo_get["path"] == f"/echo?subscription-key={QUERY_KEY}&region=eu"
    assert echo_get["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert echo_get["headers"]["Ocp-Apim-Subscription-Key"] == SUB_KEY
    assert echo_get["headers"]["Cookie"] == f"session={COOKIE}"
    assert json.loads(echo_post["body"]) == {"user": "bob", "password": PASSWORD}
    assert live[1].cookies.get("session") == UPSTREAM_COOKIE
    assert live[0].json()["headers"]["Authorization"] == f"Bearer {TOKEN}"

    text = path.read_text("utf-8")
    for secret in (TOKEN, SUB_KEY, QUERY_KEY, COOKIE, PASSWORD, UPSTREAM_COOKIE):
        assert secret not in text, secret
    items = interactions(path)
    assert len(items) == 3
    assert "REDACTED" in header(items[0]["request"]["headers"], "Authorization")[0]  # type: ignore[index]
    assert "region=eu" in items[0]["request"]["uri"]
    assert json.loads(items[2]["request"]["body"])["user"] == "bob"

    # Other secrets, same requests: still matched when secret fields are compared.
    replay_opts: dict[str, Any] = {
        "match_on": ["method", "path", "query", "body"],
        "match_headers": ["authorization", "ocp-apim-subscription-key", "cookie"],
        "redact_json": ["password"],
    }
    with ReplayProxy(path, confdir=confdir, **replay_opts) as proxy:
        replayed = _send_secrets(
            proxy.url, "other-token-abcdefgh", "f" * 32, "q-other-12345678", "x" * 12, "pw2"
        )
        # A difference outside the secrets still counts.
        wrong_user = post(proxy.url + "/echo", json={"user": "alice", "password": PASSWORD})
        entries = proxy.journal.entries
    assert [r.status_code for r in replayed] == [200, 200, 200]
    assert [e.source for e in entries[:3]] == ["cassette"] * 3
    assert replayed[0].content == items[0]["response"]["body"]["string"].encode()
    assert TOKEN not in replayed[0].text
    assert wrong_user.status_code == 599


# ----------------------------------------------------------------------------- 8. encodings, binary


def test_compressed_bodies_are_saved_decoded_and_binary_as_binary(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "bodies.yaml"
    with (
        ReplayProxy(path, upstream.url, confdir=confdir) as proxy,
        httpx.Client(trust_env=False, timeout=TIMEOUT) as c,
    ):
        for p in ("/gzip", "/br", "/zstd", "/binary"):
            # Read the bytes as they travel: the client need not decode every encoding.
            with c.stream("GET", proxy.url + p) as r:
                assert b"".join(r.iter_raw())
                assert r.status_code == 200

    text = path.read_text("utf-8")
    assert "content-encoding" not in text.lower()
    assert text.count("!!binary") == 1
    items = interactions(path)
    assert [i["request"]["uri"] for i in items] == [
        upstream.url + p for p in ("/gzip", "/br", "/zstd", "/binary")
    ]
    for item, name in zip(items[:3], ("gzip", "br", "zstd"), strict=True):
        decoded = json.dumps({"compressed": name, "pad": "x" * 200})
        body = item["response"]["body"]["string"]
        assert isinstance(body, str), f"{name}: saved as {type(body).__name__}, not text"
        assert body == decoded
        assert header(item["response"]["headers"], "Content-Length") == [str(len(decoded))]
    binary = items[3]["response"]["body"]["string"]
    assert isinstance(binary, bytes)
    assert binary == BINARY
    assert header(items[3]["response"]["headers"], "Content-Length") == [str(len(BINARY))]

    upstream.stop()
    with ReplayProxy(path, confdir=confdir) as proxy:
        for client in ("requests", "httpx", "httpx-async"):

            async def fetch(send: Send) -> list[Seen]:
                return [await send("GET", proxy.url + p) for p in ("/gzip", "/br", "/zstd", "/binary")]

            seen = run_with(client, fetch)
            for s, name in zip(seen[:3], ("gzip", "br", "zstd"), strict=True):
                assert s.status == 200
                assert "content-encoding" not in s.headers, (client, s.headers)
                assert s.json() == {"compressed": name, "pad": "x" * 200}
                assert s.headers["content-length"] == str(len(s.body))
            assert seen[3].body == BINARY, client
            assert seen[3].headers["content-type"] == "application/octet-stream"


# ----------------------------------------------------------------------------- 9. record modes


def _ids(path: Path) -> list[tuple[str, str | None]]:
    """(query of each interaction, its X-Run request header) in file order."""
    out = []
    for i in interactions(path):
        uri = i["request"]["uri"]
        session = header(i["request"]["headers"], "X-Run")
        out.append((uri.split("?", 1)[1], session[0] if session else None))
    return out


def _record_base(upstream: Upstream, path: Path, confdir: Path) -> None:
    with ReplayProxy(path, upstream.url, confdir=confdir) as proxy:
        for q in ("a=1", "b=2"):
            assert get(f"{proxy.url}/json?{q}", headers={"X-Run": "1"}).status_code == 200
    assert _ids(path) == [("a=1", "1"), ("b=2", "1")]


def test_record_mode_all_rerecords_matching_and_keeps_the_rest(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "c.yaml"
    _record_base(upstream, path, confdir)
    seen = len(upstream.requests)
    with ReplayProxy(path, upstream.url, confdir=confdir, record_mode="all") as proxy:
        for q in ("a=1", "c=3"):
            assert get(f"{proxy.url}/json?{q}", headers={"X-Run": "2"}).status_code == 200
    assert [r["path"] for r in upstream.requests[seen:]] == ["/json?a=1", "/json?c=3"]
    assert _ids(path) == [("b=2", "1"), ("a=1", "2"), ("c=3", "2")]


def test_record_mode_new_episodes_replays_matches_and_records_the_rest(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "c.yaml"
    _record_base(upstream, path, confdir)
    old = interactions(path)
    seen = len(upstream.requests)
    with ReplayProxy(path, upstream.url, confdir=confdir, record_mode="new_episodes") as proxy:
        answers = [get(f"{proxy.url}/json?{q}", headers={"X-Run": "2"}) for q in ("a=1", "c=3", "b=2", "d=4")]
        entries = proxy.journal.entries
    assert [r.status_code for r in answers] == [200] * 4
    assert [r.json()["query"] for r in answers] == [{"a": ["1"]}, {"c": ["3"]}, {"b": ["2"]}, {"d": ["4"]}]
    assert [e.source for e in entries] == ["cassette", "upstream", "cassette", "upstream"]
    assert [r["path"] for r in upstream.requests[seen:]] == ["/json?c=3", "/json?d=4"]
    assert _ids(path) == [("a=1", "1"), ("b=2", "1"), ("c=3", "2"), ("d=4", "2")]
    assert interactions(path)[:2] == old


def test_record_mode_once_on_an_existing_cassette_only_replays(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "c.yaml"
    _record_base(upstream, path, confdir)
    before = path.read_bytes()
    seen, connections = len(upstream.requests), upstream.connections
    with ReplayProxy(path, upstream.url, confdir=confdir, record_mode="once") as proxy:
        known = get(proxy.url + "/json?a=1")
        unknown = get(proxy.url + "/json?z=9")
    assert known.status_code == 200
    assert known.json()["query"] == {"a": ["1"]}
    assert unknown.status_code == 599
    assert unknown.json()["error"]["code"] == "ReplayProxyNoMatch"
    assert len(upstream.requests) == seen
    assert upstream.connections == connections
    assert path.read_bytes() == before


def test_record_mode_once_on_a_missing_cassette_records(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    path = tmp_path / "new" / "c.yaml"
    with ReplayProxy(path, upstream.url, confdir=confdir, record_mode="once") as proxy:
        assert get(proxy.url + "/json?a=1", headers={"X-Run": "1"}).status_code == 200
        assert get(proxy.url + "/json?b=2", headers={"X-Run": "1"}).status_code == 200
    assert [r["path"] for r in upstream.requests] == ["/json?a=1", "/json?b=2"]
    assert _ids(path) == [("a=1", "1"), ("b=2", "1")]


# ----------------------------------------------------------------------------- 10. upstream down


def test_unreachable_upstream_gives_502_keeps_serving_and_saves_nothing(
    tmp_path: Path, confdir: Path
) -> None:
    port = free_port()
    path = tmp_path / "c.yaml"
    with ReplayProxy(path, f"http://127.0.0.1:{port}", confdir=confdir) as proxy:
        first = get(proxy.url + "/json?a=1")
        second = get(proxy.url + "/json?b=2")
        entries = proxy.journal.entries
    for r in (first, second):
        assert r.status_code == 502
        assert re.search(r"(?i)connect call failed|connection refused", r.text), r.text
    assert [e.source for e in entries] == ["error", "error"]
    assert [e.status for e in entries] == [502, 502]
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 11. concurrency


def test_twenty_concurrent_clients_all_recorded_once_and_unmixed(
    upstream: Upstream, tmp_path: Path, confdir: Path
) -> None:
    clients, per_client = 20, 5
    path = tmp_path / "concurrent.yaml"
    failures: list[str] = []
    start = threading.Barrier(clients, timeout=TIMEOUT)

    def worker(i: int) -> None:
        try:
            with requests.Session() as s:
                s.trust_env = False
                start.wait()
                for j in range(per_client):
                    r = s.get(f"{proxy.url}/json?client={i}&n={j}", timeout=TIMEOUT)
                    if r.status_code != 200 or r.json()["query"] != {"client": [str(i)], "n": [str(j)]}:
                        failures.append(f"client {i} request {j}: {r.status_code} {r.text[:200]}")
        except Exception as e:  # reported below, with the others
            failures.append(f"client {i}: {type(e).__name__}: {e}")

    with ReplayProxy(path, upstream.url, confdir=confdir) as proxy:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    assert failures == []

    items = interactions(path)
    assert len(items) == clients * per_client
    uris = [i["request"]["uri"] for i in items]
    expected = {f"{upstream.url}/json?client={i}&n={j}" for i in range(clients) for j in range(per_client)}
    assert sorted(uris) == sorted(expected)
    for item in items:
        query = item["request"]["uri"].split("?", 1)[1]
        client, n = (kv.split("=")[1] for kv in query.split("&"))
        assert json.loads(body_text(item))["query"] == {"client": [client], "n": [n]}
    cassette = Cassette.load(path=str(path), record_mode="none")
    assert len(cassette) == clients * per_client


# ----------------------------------------------------------------------------- 12. start / stop


def test_start_stop_cycles(
    tmp_path: Path, confdir: Path, record_property: Callable[[str, object], None]
) -> None:
    path = tmp_path / "c.yaml"
    _throttled_cassette(path)
    figures = []
    for _ in range(3):
        t0 = time.perf_counter()
        proxy = ReplayProxy(path, confdir=confdir).start()
        t1 = time.perf_counter()
        try:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", proxy.url), proxy.url
            assert proxy.url == f"http://127.0.0.1:{proxy.listen_port}"
            assert 0 < proxy.listen_port < 65536
            assert get(proxy.url + "/ops/1").status_code == 200
        finally:
            t2 = time.perf_counter()
            proxy.stop()
            t3 = time.perf_counter()
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.settimeout(TIMEOUT)
            s.connect(("127.0.0.1", proxy.listen_port))
        figures.append((t1 - t0, t3 - t2))
    shown = ", ".join(f"start {a * 1000:.0f} ms / stop {b * 1000:.0f} ms" for a, b in figures)
    print(f"\nReplayProxy start/stop cycles: {shown}")
    record_property("start_stop_seconds", figures)
    for started, stopped in figures:
        assert started < 5 and stopped < 5
