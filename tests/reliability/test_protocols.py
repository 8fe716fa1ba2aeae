"""What clients speak to the proxy, carried in record, replay and play.

HTTP/1.1 keep-alive and pipelining; HTTP/2 over TLS (ALPN) in reverse and forward mode and without TLS
(prior knowledge); chunked request bodies; gzip, br and zstd answers of the upstream; 50 MB bodies, with
the proxy's peak memory measured. Real loopback servers (tests/upstream.py), real clients (requests,
httpx, http.client, curl, raw sockets) and real mitmproxy; the memory test runs the command line, so the
memory measured is the proxy's own.

Each test records from the upstream, replays the cassette it recorded (the upstream stopped or not
asked), then plays a scenario answering the same requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import yaml
from mitmproxy.net import encoding
from requests.adapters import HTTPAdapter

from proxy.cassette import load
from proxy.server import ReplayProxy
from tests.reliability.procfs import memory
from tests.test_forward_mode import UpstreamTls, https_upstream, no_proxy_env
from tests.test_forward_mode import upstream_tls as upstream_tls  # the fixture, used by its name
from tests.upstream import Upstream, payload

TIMEOUT = 10
STAGES = ("record", "replay", "play")

SCENARIO = """\
name: protocols
description: Answers what the upstream answers in tests/upstream.py, in its own words.
routes:
  - match: {method: GET, path: /json}
    respond: {json: {played: "{{ request.query.n }}"}}
  - match: {method: GET, path: /start}
    respond: {status: 202, headers: {Location: "{{ proxy_url }}/operations/op1"}}
  - match: {method: POST, path: /echo, json: {kind: upload}}
    respond: {json: {parts: "{{ request.json.parts | length }}"}}
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "protocols.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@dataclass(frozen=True)
class Stages:
    """The three ways the proxy answers, one after the other on one cassette."""

    cassette: Path
    scenario: Path
    confdir: Path
    upstream: str | None = None
    """Where reverse-mode recording forwards (forward mode records whatever host the client names)."""
    mode: str = "reverse"
    upstream_ca: Path | None = None

    def proxy(self, stage: str, **options: Any) -> ReplayProxy:
        common: dict[str, Any] = {"mode": self.mode, "confdir": self.confdir, **options}
        if stage == "record":
            if self.mode == "regular":
                return ReplayProxy(self.cassette, record_mode="all", upstream_ca=self.upstream_ca, **common)
            return ReplayProxy(self.cassette, self.upstream, **common)
        if stage == "replay":
            return ReplayProxy(self.cassette, **common)
        return ReplayProxy(scenarios=[self.scenario], **common)


def answer_to_json(stage: str, n: int) -> dict[str, Any]:
    """What ``GET /json?n=N`` answers: the upstream's echo of the query (recorded), or the scenario's."""
    if stage == "play":
        return {"played": str(n)}
    return {"hello": "world", "query": {"n": [str(n)]}}


def recorded_uris(cassette: Path) -> list[str]:
    data = yaml.safe_load(cassette.read_text(encoding="utf-8"))
    return [item["request"]["uri"] for item in data["interactions"]]


def sources(proxy: ReplayProxy) -> set[str]:
    return {e.source for e in proxy.journal.entries}


SOURCE = {"record": "upstream", "replay": "cassette", "play": "scenario"}


# ============================================================ HTTP/1.1: keep-alive and pipelining


def test_keep_alive_serves_many_requests_on_one_connection(
    upstream: Upstream, scenario: Path, tmp_path: Path, confdir: Path
) -> None:
    """20 requests on one pooled requests connection, 20 on one http.client socket: every answer right,
    and neither client ever opened a second connection (nor, recording, did the proxy to the upstream)."""
    stages = Stages(tmp_path / "keep-alive.yaml", scenario, confdir, upstream.url)
    for stage in STAGES:
        with stages.proxy(stage) as proxy:
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            with requests.Session() as s:
                s.trust_env = False
                s.mount("http://", adapter)
                pooled = [s.get(f"{proxy.url}/json?n={n}", timeout=TIMEOUT) for n in range(20)]
                pools = adapter.poolmanager.pools
                opened = [pools[key].num_connections for key in pools.keys()]  # noqa: SIM118 (no __iter__)
                assert (stage, opened) == (stage, [1])  # one pool, one connection ever opened in it

            parts = urlsplit(proxy.url)
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)
            try:
                conn.connect()
                first, local = conn.sock, conn.sock.getsockname()
                raw = []
                for n in range(20, 40):
                    conn.request("GET", f"/json?n={n}")
                    response = conn.getresponse()
                    raw.append((response.status, json.loads(response.read())))
                    # http.client reconnects silently when the server closed: the socket must be the same one
                    assert conn.sock is first and conn.sock.getsockname() == local, (stage, n)
            finally:
                conn.close()
            assert sources(proxy) == {SOURCE[stage]}
        assert [r.status_code for r in pooled] == [200] * 20
        assert [r.json() for r in pooled] == [answer_to_json(stage, n) for n in range(20)], stage
        assert raw == [(200, answer_to_json(stage, n)) for n in range(20, 40)], stage
        if stage == "record":
            assert upstream.connections == 2  # one per client connection, each reused
            assert len(recorded_uris(stages.cassette)) == 40


def read_response(fp: BinaryIO) -> tuple[int, bytes]:
    """One HTTP/1.1 response from a stream that may hold the next ones too (status, body)."""
    status_line = fp.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = http.client.parse_headers(fp)  # type: ignore[arg-type]
    length = headers["Content-Length"]
    assert length is not None, f"no Content-Length: {headers.items()}"
    return int(status_line.split()[1]), fp.read(int(length))


def pipeline(url: str, targets: list[str]) -> list[tuple[int, Any]]:
    """Send every request before reading any answer (HTTP/1.1 pipelining); the answers, in order."""
    parts = urlsplit(url)
    address = (parts.hostname or "", parts.port or 80)
    requests_ = b"".join(f"GET {t} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode() for t in targets)
    with socket.create_connection(address, timeout=TIMEOUT) as sock, sock.makefile("rb") as fp:
        sock.sendall(requests_)
        answers = [read_response(fp) for _ in targets]
    return [(status, json.loads(body)) for status, body in answers]


def test_pipelined_requests_are_answered_in_order(
    upstream: Upstream, scenario: Path, tmp_path: Path, confdir: Path
) -> None:
    """Three requests sent back to back on one socket before reading: three answers, in request order."""
    stages = Stages(tmp_path / "pipelined.yaml", scenario, confdir, upstream.url)
    targets = [f"/json?n={n}" for n in (3, 1, 2)]
    for stage in STAGES:
        with stages.proxy(stage) as proxy:
            answers = pipeline(proxy.url, targets)
        assert answers == [(200, answer_to_json(stage, n)) for n in (3, 1, 2)], stage
        if stage == "record":
            assert [r["path"] for r in upstream.requests] == targets
            assert recorded_uris(stages.cassette) == [upstream.url + t for t in targets]
            assert upstream.connections == 1


# ============================================================ HTTP/2


class Transfer(NamedTuple):
    """One of curl's transfers, as curl reports it."""

    version: str  # "1.1", "2"
    status: int
    connects: int  # connections curl opened for it (0: it reused one)
    location: str
    encoding: str  # the Content-Encoding it was sent ("" for none)
    body: bytes  # as curl outputs it (decoded, with --compressed)


def curl(*args: str) -> list[Transfer]:
    """Run curl (proxy variables unset) and split its output into transfers."""
    assert shutil.which("curl"), "curl is needed: apt-get install curl"
    out = "\n<<%{http_version} %{http_code} %{num_connects} %header{location} %header{content-encoding}>>\n"
    result = subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), "--write-out", out, *args],
        capture_output=True,
        timeout=60,
        env=no_proxy_env(),
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    pieces = re.split(rb"\n<<(\S+) (\d+) (\d+) (\S*) (\S*)>>\n", result.stdout)
    assert pieces[-1] == b"", result.stdout[-300:]
    return [
        Transfer(
            pieces[i + 1].decode(),
            int(pieces[i + 2]),
            int(pieces[i + 3]),
            pieces[i + 4].decode(),
            pieces[i + 5].decode(),
            pieces[i],
        )
        for i in range(0, len(pieces) - 1, 6)
    ]


def httpx_h2(ca: str, urls: list[str], proxy: str | None = None) -> list[tuple[str, int, Any]]:
    """GET each URL with httpx ``http2=True``, then with ``http1=False`` too: (version, status, JSON)."""
    answers = []
    for http1 in (True, False):
        with httpx.Client(
            http1=http1, http2=True, verify=ca, proxy=proxy, trust_env=False, timeout=TIMEOUT
        ) as c:
            for url in urls:
                r = c.get(url)
                answers.append((r.http_version, r.status_code, r.json()))
    return answers


def test_http2_over_tls_in_reverse_mode(
    upstream: Upstream, scenario: Path, tmp_path: Path, confdir: Path
) -> None:
    """A client reaching the reverse proxy over https negotiates h2 (ALPN) with the proxy's certificate,
    curl and httpx (http2=True, and http1=False) alike: several streams on one connection, the upstream's
    Location rewritten to the proxy's https URL."""
    stages = Stages(tmp_path / "h2-reverse.yaml", scenario, confdir, upstream.url)
    for stage in STAGES:
        with stages.proxy(stage) as proxy:
            base = f"https://127.0.0.1:{proxy.listen_port}"
            ca = str(proxy.ca_cert)
            transfers = curl(
                "--http2", "--cacert", ca, f"{base}/json?n=1", f"{base}/json?n=2", f"{base}/start"
            )
            # httpx offers ALPN http/1.1 before h2; mitmproxy alone took the client's first choice, so
            # httpx with http2=True got HTTP/1.1, and with http1=False spoke h2 on it (``PRI *``, a 599).
            answers = httpx_h2(ca, [f"{base}/json?n={n}" for n in (3, 4)])
            assert sources(proxy) == {SOURCE[stage]}
        assert [(t.version, t.status) for t in transfers] == [("2", 200), ("2", 200), ("2", 202)], stage
        assert [t.connects for t in transfers] == [1, 0, 0]  # one connection, reused
        assert [json.loads(t.body) for t in transfers[:2]] == [answer_to_json(stage, n) for n in (1, 2)]
        assert transfers[2].location == f"{base}/operations/op1", stage
        assert answers == [("HTTP/2", 200, answer_to_json(stage, n)) for n in (3, 4)] * 2, stage
        if stage == "record":
            assert [r["path"] for r in upstream.requests] == ["/json?n=1", "/json?n=2", "/start"] + [
                f"/json?n={n}" for n in (3, 4)
            ] * 2


def test_http2_with_prior_knowledge_on_plain_http(
    upstream: Upstream, scenario: Path, tmp_path: Path, confdir: Path
) -> None:
    """HTTP/2 without TLS ("prior knowledge", h2c) is served as HTTP/2, and only the real requests are
    recorded (mitmproxy alone took the preface for a request ``PRI *``, forwarded and saved it)."""
    stages = Stages(tmp_path / "h2c.yaml", scenario, confdir, upstream.url)
    for stage in STAGES:
        with stages.proxy(stage) as proxy:
            # One URL per curl: curl 7.88 fails reusing a prior-knowledge connection (curl/curl#10634)
            transfers = [curl("--http2-prior-knowledge", f"{proxy.url}/json?n={n}")[0] for n in (1, 2)]
            with httpx.Client(http1=False, http2=True, trust_env=False, timeout=TIMEOUT) as c:
                answers = [c.get(f"{proxy.url}/json?n={n}") for n in (3, 4, 5)]
            assert sources(proxy) == {SOURCE[stage]}
        assert [(t.version, t.status, json.loads(t.body)) for t in transfers] == [
            ("2", 200, answer_to_json(stage, n)) for n in (1, 2)
        ], stage
        assert [(a.http_version, a.status_code, a.json()) for a in answers] == [
            ("HTTP/2", 200, answer_to_json(stage, n)) for n in (3, 4, 5)
        ], stage
        if stage == "record":
            assert recorded_uris(stages.cassette) == [f"{upstream.url}/json?n={n}" for n in range(1, 6)]


def test_http2_through_the_forward_proxy(
    upstream_tls: UpstreamTls, scenario: Path, tmp_path: Path, confdir: Path
) -> None:
    """curl --http2 and httpx (http2=True, and http1=False) through the forward proxy to an https origin:
    h2 with the proxy (CONNECT, then ALPN on the proxy's certificate for the origin), HTTP/1.1 from the
    proxy to the origin."""
    stages = Stages(tmp_path / "h2.yaml", scenario, confdir, mode="regular", upstream_ca=upstream_tls.ca)
    transfers: dict[str, list[Transfer]] = {}
    answers: dict[str, list[tuple[str, int, Any]]] = {}
    with https_upstream(upstream_tls) as origin:
        urls = [f"{origin.url}/json?n=1", f"{origin.url}/json?n=2", f"{origin.url}/start"]
        with stages.proxy("record") as proxy:
            transfers["record"] = curl("--http2", "--proxy", proxy.url, "--cacert", str(proxy.ca_cert), *urls)
            answers["record"] = httpx_h2(str(proxy.ca_cert), urls[:2], proxy.url)
        assert recorded_uris(stages.cassette) == urls + urls[:2] * 2
        # (mitmproxy opens an HTTP/1.1 connection to the origin per HTTP/2 stream)
    for stage in ("replay", "play"):  # the origin is gone
        with stages.proxy(stage) as proxy:
            transfers[stage] = curl("--http2", "--proxy", proxy.url, "--cacert", str(proxy.ca_cert), *urls)
            answers[stage] = httpx_h2(str(proxy.ca_cert), urls[:2], proxy.url)
            assert sources(proxy) == {SOURCE[stage]}
    for stage, seen in transfers.items():
        assert [(t.version, t.status) for t in seen] == [("2", 200), ("2", 200), ("2", 202)], stage
        assert [json.loads(t.body) for t in seen[:2]] == [answer_to_json(stage, n) for n in (1, 2)]
        # httpx http2=True, then http1=False: h2 as well (it offers http/1.1 first)
        assert answers[stage] == [("HTTP/2", 200, answer_to_json(stage, n)) for n in (1, 2)] * 2, stage
    # Forward mode keeps the origin's URLs; the scenario's proxy_url is the origin the client named.
    assert {seen[2].location for seen in transfers.values()} == {f"{origin.url}/operations/op1"}
    assert [t.connects for t in transfers["replay"]] == [1, 0, 0]  # one tunnel, its h2 connection reused


# ============================================================ chunked request bodies


PARTS = [{"id": i, "text": f"part {i} " * 40} for i in range(6)]
UPLOAD = json.dumps({"kind": "upload", "parts": PARTS}).encode()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of ``size``: a generator body, which requests sends chunked."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_chunked_request_bodies_are_recorded_whole_and_matched_on_replay(
    upstream: Upstream, scenario: Path, tmp_path: Path, confdir: Path
) -> None:
    stages = Stages(tmp_path / "chunked.yaml", scenario, confdir, upstream.url)
    json_type = {"Content-Type": "application/json"}

    def post(proxy: ReplayProxy, body: Any, **headers: str) -> requests.Response:
        with requests.Session() as s:
            s.trust_env = False
            return s.post(f"{proxy.url}/echo", data=body, headers={**json_type, **headers}, timeout=TIMEOUT)

    with stages.proxy("record") as proxy:
        recorded = post(proxy, pieces(UPLOAD, 100))
    assert recorded.status_code == 200
    assert recorded.json()["body"] == UPLOAD.decode()  # the upstream got it all
    assert upstream.requests[0]["headers"]["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in upstream.requests[0]["headers"]
    (item,) = yaml.safe_load(stages.cassette.read_text(encoding="utf-8"))["interactions"]
    assert item["request"]["body"] == UPLOAD.decode()  # whole, as text
    assert item["request"]["headers"]["Transfer-Encoding"] == ["chunked"]

    with stages.proxy("replay", match_on=["method", "path", "query", "body"]) as proxy:
        other_pieces = post(proxy, pieces(UPLOAD, 7))
        in_one_piece = post(proxy, UPLOAD)  # Content-Length this time
        other = post(proxy, pieces(UPLOAD.replace(b"part 5", b"part 6"), 100))
    assert [other_pieces.status_code, in_one_piece.status_code] == [200, 200]
    assert other_pieces.content == in_one_piece.content == recorded.content
    assert other.status_code == 599
    assert other.json()["error"]["closest"][0]["differences"][0].startswith("body")

    with stages.proxy("play") as proxy:
        played = post(proxy, pieces(UPLOAD, 100))
        not_an_upload = post(proxy, pieces(b'{"kind": "other"}', 5))
    assert played.status_code == 200
    assert played.json() == {"parts": str(len(PARTS))}
    assert not_an_upload.status_code == 599


# ============================================================ compressed answers


ENCODINGS = ("gzip", "br", "zstd")


def compressed_answer(name: str) -> dict[str, Any]:
    return {"compressed": name, "pad": "x" * 200}


def fetch_all(proxy: ReplayProxy, origin: str) -> dict[str, list[tuple[int, str | None, Any]]]:
    """Every encoding by three clients: http.client (which asks for identity), curl --compressed (gzip,
    deflate, br, zstd), requests (gzip, deflate and what urllib3 can decode). Per client and path: (status,
    the Content-Encoding the client was sent, the body it was sent, decoded by its Content-Encoding)."""
    seen: dict[str, list[tuple[int, str | None, Any]]] = {"http.client": [], "curl": [], "requests": []}
    forward = proxy.mode == "regular"
    base = origin if forward else proxy.url
    parts = urlsplit(proxy.url)
    for name in ENCODINGS:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)
        try:
            conn.request("GET", f"{base}/{name}" if forward else f"/{name}")
            r = conn.getresponse()
            raw, ce = r.read(), r.getheader("Content-Encoding")
            assert r.getheader("Content-Length") == str(len(raw))
            seen["http.client"].append((r.status, ce, json.loads(encoding.decode(raw, ce) if ce else raw)))
        finally:
            conn.close()
    proxy_args = ["--proxy", proxy.url] if forward else []
    for t in curl("--compressed", *proxy_args, *(f"{base}/{n}" for n in ENCODINGS)):
        seen["curl"].append((t.status, t.encoding or None, json.loads(t.body)))  # decoded by curl
    with requests.Session() as s:
        s.trust_env = False
        if forward:
            s.proxies = {"http": proxy.url}
        for name in ENCODINGS:
            with s.get(f"{base}/{name}", timeout=TIMEOUT, stream=True) as r:
                raw, ce = r.raw.read(decode_content=False), r.headers.get("Content-Encoding")
            seen["requests"].append((r.status_code, ce, json.loads(encoding.decode(raw, ce) if ce else raw)))
    return seen


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_compressed_answers_are_saved_decoded_and_served_to_every_client(
    mode: str, upstream: Upstream, scenario: Path, tmp_path: Path, confdir: Path
) -> None:
    """gzip, br and zstd from the upstream: carried to each client while recording, saved decoded (text,
    no Content-Encoding, the decoded length), then replayed (and played over the cassette) decoded to
    clients that ask for compression and to one that asks for identity."""
    cassette = tmp_path / f"compressed-{mode}.yaml"
    stages = Stages(cassette, scenario, confdir, upstream.url if mode == "reverse" else None, mode=mode)
    want = [compressed_answer(n) for n in ENCODINGS]

    with stages.proxy("record") as proxy:
        live = fetch_all(proxy, upstream.url)
    # The upstream compresses whatever was asked; recording passes its answer through as it came.
    for client, answers in live.items():
        assert [(status, ce, body) for status, ce, body in answers] == [
            (200, n, b) for n, b in zip(ENCODINGS, want, strict=True)
        ], client
    items = yaml.safe_load(cassette.read_text(encoding="utf-8"))["interactions"]
    assert len(items) == 3 * len(ENCODINGS)
    assert "content-encoding" not in cassette.read_text(encoding="utf-8").lower()
    for item in items:
        name = urlsplit(item["request"]["uri"]).path[1:]
        text = json.dumps(compressed_answer(name))
        assert item["response"]["body"]["string"] == text  # a str: readable in the file
        assert item["response"]["headers"]["Content-Length"] == [str(len(text))]

    upstream.stop()
    replay = stages.proxy("replay")
    play = ReplayProxy(cassette, scenarios=[scenario], mode=mode, confdir=confdir)  # over the cassette
    for stage, proxy in (("replay", replay), ("play", play)):
        with proxy:
            served = fetch_all(proxy, upstream.url)
            assert sources(proxy) == {"cassette"}
        for client, answers in served.items():
            assert answers == [(200, None, b) for b in want], (stage, client)


# ============================================================ 50 MB bodies, memory


MiB = 1024 * 1024
LARGE = 50 * MiB


def geojson_upload(size: int) -> bytes:
    """A FeatureCollection of exactly ``size`` bytes (padded with JSON whitespace)."""
    feature = (
        b'{"type":"Feature","geometry":{"type":"Point","coordinates":[12.5683,55.6761]},"properties":{}}'
    )
    head, tail = b'{"type":"FeatureCollection","features":[', b"]}"
    count = (size - len(head) - len(tail)) // (len(feature) + 1)
    body = head + b",".join([feature] * count) + tail
    return body + b" " * (size - len(body))


def stop_and_peak(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, int]:
    """SIGTERM the proxy; (its exit status, its peak RSS in bytes, the final save included).

    The peak is VmHWM read every few milliseconds until the process has released its memory: it only
    grows, and Python's shutdown after the save takes far longer than that. (The peak the kernel reports
    at exit, wait4's ru_maxrss, is no use here: it includes the test process's own size at the fork.)
    """
    proc.send_signal(signal.SIGTERM)
    peak, deadline = 0, time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError):  # gone, or a zombie without memory
            peak = max(peak, memory(proc.pid)["VmHWM"])
        time.sleep(0.002)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(10), peak


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fifty_megabyte_bodies_recorded_and_replayed_in_bounded_memory(
    upstream: Upstream, cli: Any, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """A 50 MiB binary download and a 50 MiB JSON upload, recorded (`replay-proxy record`) and replayed
    (`replay-proxy replay --match-on ...,body`), byte for byte; the proxy's peak memory is measured.

    What a 50 MiB body costs at the peak (mitmproxy 11 and 12): mitmproxy buffers it and briefly holds
    it two to three times over; saving it, PyYAML's emitter holds the body's cassette text three times
    (as str, as UTF-8, in libyaml), and base64 makes a binary body's text a third larger. The recorder
    keeps what it saved until the clean stop rewrites the file. Measured: recording peaks ~6.5 copies
    over the baseline, replaying ~4. Before the cassette was written and read as streams, binary bodies
    were redacted as Latin-1, bodies without a secret's name were no longer parsed to redact them, and
    identical bodies matched without vcrpy parsing them, the same run peaked at 12 and 20 copies.
    """
    download, upload = payload(LARGE), geojson_upload(LARGE)
    cassette = tmp_path / "large.yaml"
    session = requests.Session()
    session.trust_env = False
    figures: dict[str, float] = {}

    def transfer(stage: str, url: str) -> tuple[requests.Response, requests.Response]:
        t0 = time.perf_counter()
        got = session.get(f"{url}/bytes/{LARGE}", timeout=60)
        t1 = time.perf_counter()
        sent = session.post(
            f"{url}/digest", data=upload, headers={"Content-Type": "application/json"}, timeout=60
        )
        figures[f"{stage} download s"], figures[f"{stage} upload s"] = t1 - t0, time.perf_counter() - t1
        return got, sent

    proc = cli(["record", upstream.url, "-o", str(cassette), "--port", "0", "-q"])
    assert session.get(f"{proc.url}/json?warm=up", timeout=TIMEOUT).status_code == 200
    baseline = memory(proc.proc.pid)["VmRSS"]
    got, sent = transfer("record", proc.url)
    during = memory(proc.proc.pid)["VmHWM"]
    t0 = time.perf_counter()
    status, record_peak = stop_and_peak(proc.proc)
    figures["record stop s"] = time.perf_counter() - t0
    assert status == 0, proc.stderr
    assert got.status_code == 200 and got.content == download
    assert sent.status_code == 200 and sent.json() == {"length": LARGE, "sha256": sha(upload)}

    saved = load(cassette)
    assert [(i.request.method, i.request.path_and_query) for i in saved] == [
        ("GET", "/json?warm=up"),
        ("GET", f"/bytes/{LARGE}"),
        ("POST", "/digest"),
    ]
    assert saved[1].response.body == download and saved[2].request.body == upload
    cassette_mib = cassette.stat().st_size / MiB
    del saved

    t0 = time.perf_counter()
    proc = cli(["replay", str(cassette), "--port", "0", "-q", "--match-on", "method,path,query,body"])
    figures["replay start s"] = time.perf_counter() - t0
    got, sent = transfer("replay", proc.url)
    status, replay_peak = stop_and_peak(proc.proc)
    assert status == 0, proc.stderr
    assert got.status_code == 200 and got.content == download
    assert sent.status_code == 200 and sent.json() == {"length": LARGE, "sha256": sha(upload)}
    assert "replay-proxy" not in proc.stderr  # -q: nothing to say
    cassette.unlink()  # 125 MiB

    copies = {
        "record during exchanges": (during - baseline) / LARGE,
        "record incl. final save": (record_peak - baseline) / LARGE,
        "replay incl. load": (replay_peak - baseline) / LARGE,
    }
    shown = ", ".join(f"{k} +{v:.1f}" for k, v in copies.items())
    timing = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
    print(f"\n50 MiB bodies: baseline RSS {baseline / MiB:.0f} MiB, peak in 50 MiB copies: {shown}")
    print(f"cassette {cassette_mib:.0f} MiB; {timing}")
    record_property("large_body_copies", copies)
    record_property("large_body_seconds", figures)
    assert copies["record incl. final save"] < 7.5, shown
    assert copies["replay incl. load"] < 6, shown  # measured 4.1-4.2, once 5.0 on a busy machine; was 19.8
