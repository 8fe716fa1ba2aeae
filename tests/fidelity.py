"""Cassette fidelity helpers: six HTTP clients behind one interface, an LRO-ish loopback service, and the
answer a client observed reduced to what a replay must reproduce (status, decoded body, Location-like
headers, Retry-After), with the origin of absolute URLs abstracted (a proxy points them at itself).

Used by tests/test_fidelity_recorded.py (cassettes vcrpy records during the run) and
tests/test_fidelity_corpus.py (real cassettes from public repositories, tests/corpus/).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import urlsplit

from mitmproxy.net import encoding

from tests.upstream import BINARY, Upstream, _read_body

TIMEOUT = 10

LOCATION_LIKE = (
    "location",
    "operation-location",
    "azure-asyncoperation",
    "content-location",
    "resource-location",
)
RETRY_AFTER = ("retry-after", "retry-after-ms", "x-ms-retry-after-ms")

EMOJI_TEXT = "caf\u00e9 \u2615 \U0001f680 \u65e5\u672c \u00a9"
"""Text that is not ASCII, with characters outside the BMP (JSON escapes them as surrogate pairs)."""


# ----------------------------------------------------------------------------- what a client saw


@dataclass(frozen=True)
class Seen:
    """One answer as a client observed it: status, header fields (lower-case names), decoded body."""

    status: int
    fields: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Essence:
    """What a replay must reproduce of an answer; origins of absolute URLs are written ``<origin>``."""

    status: int
    body: bytes
    locations: tuple[tuple[str, str], ...]
    retry_after: tuple[tuple[str, str], ...]


def essence(seen: Seen, origins: Iterable[str]) -> Essence:
    """``seen`` reduced to what is compared, each of ``origins`` (scheme://host[:port]) made ``<origin>``."""

    def norm(text: str) -> str:
        for origin in origins:
            text = text.replace(origin, "<origin>")
        return text

    body = _decoded(seen)
    for origin in origins:
        body = body.replace(origin.encode(), b"<origin>")
    if body[:1] in (b"{", b"["):  # JSON compares parsed: a proxy may re-serialize a body it rewrote
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), sort_keys=True, ensure_ascii=False).encode()
    return Essence(
        status=seen.status,
        body=body,
        locations=tuple(sorted((k, norm(v)) for k, v in seen.fields if k in LOCATION_LIKE)),
        retry_after=tuple(sorted((k, v) for k, v in seen.fields if k in RETRY_AFTER)),
    )


def _decoded(seen: Seen) -> bytes:
    """The body decoded by the Content-Encoding the client was given, when the client left it encoded.

    In-process vcrpy hands requests/urllib3 a recorded raw gzip body (older vcrpy stored those) with
    its Content-Encoding, and the client does not decode it; the proxy serves it decoded. The brief is
    the decoded body, so both are compared decoded.
    """
    coding = (seen.header("content-encoding") or "").strip().lower()
    if not seen.body or coding not in ("gzip", "x-gzip", "deflate", "br", "zstd"):
        return seen.body
    try:
        decoded = encoding.decode(seen.body, "gzip" if coding == "x-gzip" else coding)
    except ValueError:  # the client already decoded it (the header stays on some clients)
        return seen.body
    return decoded if isinstance(decoded, bytes) else seen.body


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# ----------------------------------------------------------------------------- clients, one shape


class Client(Protocol):
    name: str

    def send(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Seen: ...

    def close(self) -> None: ...


def _json_bytes(body: Any) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


def _split(body: Any) -> tuple[bytes | None, Any]:
    """(raw bytes, JSON value): a bytes body is sent as it is, anything else (not None) as JSON."""
    return (body, None) if isinstance(body, bytes) else (None, body)


class RequestsClient:
    name = "requests"

    def __init__(self) -> None:
        import requests

        self.session = requests.Session()
        self.session.trust_env = False

    def send(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Seen:
        raw, doc = _split(body)
        r = self.session.request(
            method, url, data=raw, json=doc, headers=headers, timeout=TIMEOUT, allow_redirects=False
        )
        return Seen(r.status_code, tuple((k.lower(), v) for k, v in r.headers.items()), r.content)

    def close(self) -> None:
        self.session.close()


class Urllib3Client:
    name = "urllib3"

    def __init__(self) -> None:
        import urllib3

        self.pool = urllib3.PoolManager(retries=False, timeout=TIMEOUT)

    def send(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Seen:
        all_headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            all_headers["Content-Type"] = "application/json"
        r = self.pool.request(method, url, body=_json_bytes(body), headers=all_headers, redirect=False)
        return Seen(r.status, tuple((k.lower(), v) for k, v in r.headers.items()), r.data)

    def close(self) -> None:
        self.pool.clear()


class HttpxClient:
    name = "httpx"

    def __init__(self) -> None:
        import httpx

        self.client = httpx.Client(trust_env=False, timeout=TIMEOUT)

    def send(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Seen:
        raw, doc = _split(body)
        r = self.client.request(method, url, content=raw, json=doc, headers=headers)
        return Seen(r.status_code, tuple(r.headers.multi_items()), r.content)

    def close(self) -> None:
        self.client.close()


class _LoopClient:
    """An async client driven from synchronous test code on a loop of its own (vcrpy's patches are
    process-wide, so they apply on that loop too)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))

    def close_loop(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


class HttpxAsyncClient(_LoopClient):
    name = "httpx-async"

    def __init__(self) -> None:
        import httpx

        super().__init__()
        self.client = httpx.AsyncClient(trust_env=False, timeout=TIMEOUT)

    def send(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Seen:
        raw, doc = _split(body)
        r = self.run(self.client.request(method, url, content=raw, json=doc, headers=headers))
        return Seen(r.status_code, tuple(r.headers.multi_items()), r.content)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.close_loop()


class AiohttpClient(_LoopClient):
    name = "aiohttp"

    def __init__(self) -> None:
        import aiohttp

        super().__init__()

        async def make() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(trust_env=False)

        self.session = self.run(make())

    def send(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Seen:
        async def go() -> Seen:
            raw, doc = _split(body)
            async with self.session.request(
                method, url, data=raw, json=doc, headers=headers, allow_redirects=False
            ) as r:
                data = await r.read()
                return Seen(r.status, tuple((k.lower(), v) for k, v in r.headers.items()), data)

        result: Seen = self.run(go())
        return result

    def close(self) -> None:
        self.run(self.session.close())
        self.close_loop()


class TornadoClient(_LoopClient):
    name = "tornado"

    def __init__(self) -> None:
        from tornado.httpclient import AsyncHTTPClient

        super().__init__()

        async def make() -> Any:
            return AsyncHTTPClient(force_instance=True)

        self.client = self.run(make())

    def send(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Seen:
        all_headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            all_headers["Content-Type"] = "application/json"

        async def go() -> Any:  # tornado binds the fetch's future to the loop it is called on
            return await self.client.fetch(
                url,
                method=method,
                body=_json_bytes(body),
                headers=all_headers,
                raise_error=False,
                follow_redirects=False,
                request_timeout=TIMEOUT,
                allow_nonstandard_methods=True,
            )

        r = self.run(go())
        return Seen(r.code, tuple((k.lower(), v) for k, v in r.headers.get_all()), r.body or b"")

    def close(self) -> None:
        self.client.close()
        self.close_loop()


CLIENTS: dict[str, Callable[[], Client]] = {
    "requests": RequestsClient,
    "urllib3": Urllib3Client,
    "httpx": HttpxClient,
    "httpx-async": HttpxAsyncClient,
    "aiohttp": AiohttpClient,
    "tornado": TornadoClient,
}


# ----------------------------------------------------------------------------- an LRO-ish service


RESULT = {
    "id": "r1",
    "title": EMOJI_TEXT,
    "items": [{"n": i, "label": f"\u00e9l\u00e9ment {i}"} for i in range(3)],
}


class LroUpstream(Upstream):
    """tests/upstream.py's server plus a job API: 202 + Location/Operation-Location + Retry-After, polls
    that progress Running → Running → Succeeded, a gzip result with non-ASCII text, a 429 with
    Retry-After, a 204, and a binary download."""

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        if not (
            path.startswith("/jobs") or path in ("/results/r1", "/blob", "/throttled", "/empty", "/see-other")
        ):
            super()._handle(h)
            return
        body = _read_body(h)
        with self._lock:
            self.requests.append(
                {"method": h.command, "path": h.path, "headers": dict(h.headers), "body": body}
            )
        headers: list[tuple[str, str]] = [("Content-Type", "application/json; charset=utf-8")]
        status, out = 200, b""
        if path == "/jobs" and h.command == "POST":
            status = 202
            sent = json.loads(body or b"null")
            out = json.dumps({"status": "NotStarted", "echo": sent}, ensure_ascii=False).encode()
            headers += [
                ("Location", f"{self.url}/jobs/j1/status"),
                ("Operation-Location", f"{self.url}/jobs/j1/status?api-version=1"),
                ("Retry-After", "1"),
            ]
        elif path == "/jobs/j1/status":
            with self._lock:
                n = self.polls["j1"] = self.polls.get("j1", 0) + 1
            if n < 3:
                out = json.dumps(
                    {"status": "Running", "percent": 40 * n, "note": EMOJI_TEXT}, ensure_ascii=False
                ).encode()
                headers.append(("Retry-After", str(n)))
            else:
                doc = {"status": "Succeeded", "resourceLocation": f"{self.url}/results/r1"}
                out = json.dumps(doc).encode()
        elif path == "/results/r1":
            out = gzip.compress(json.dumps(RESULT, ensure_ascii=False).encode(), mtime=0)
            headers.append(("Content-Encoding", "gzip"))
        elif path == "/throttled":
            status = 429
            out = json.dumps(
                {"error": {"code": "TooManyRequests", "message": "slow down \u23f3"}}, ensure_ascii=False
            ).encode()
            headers.append(("Retry-After", "7"))
        elif path == "/see-other":  # the end of an LRO that points at its result
            status = 303
            out = b'{"status": "Succeeded"}'
            headers.append(("Location", f"{self.url}/results/r1"))
        elif path == "/empty":
            status = 204
            headers = []
        elif path == "/blob":
            out = BINARY
            headers = [("Content-Type", "application/octet-stream")]
        else:
            status = 404
            out = b'{"error": "no such job"}'
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        if status != 204:
            h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        if status != 204:
            h.wfile.write(out)


def lro_flow(client: Client, base: str, *, binary: bool = True) -> list[Seen]:
    """A client of a long-running operation: start, follow the Location it is given, poll to the end,
    fetch the result named in the final body; then a throttled call, a 204 and (``binary``) a download."""
    seen = [client.send("POST", f"{base}/jobs?name=demo&tag=", {"name": EMOJI_TEXT, "n": 1})]
    status_url = seen[0].header("location")
    assert status_url, seen[0]
    for _ in range(5):  # bounded: the recording has three polls
        poll = client.send("GET", status_url)
        seen.append(poll)
        if poll.status != 200 or poll.json().get("status") in ("Succeeded", "Failed"):
            break
    seen.append(client.send("GET", seen[-1].json()["resourceLocation"]))
    seen.append(client.send("GET", f"{base}/throttled"))
    seen.append(client.send("GET", f"{base}/empty"))
    if binary:
        seen.append(client.send("GET", f"{base}/blob"))
    return seen
