"""Forward ("regular") mode: the proxy as HTTP(S)_PROXY, recording real origin URLs and replaying them
offline; a host the cassette does not know gets the 599 answer and no connection. Plus `replay-proxy ca`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.certs import CertStore

from proxy.server import ReplayProxy
from tests.conftest import run_cli
from tests.upstream import BINARY, Upstream

TIMEOUT = 10
PATHS = (
    "/json?b=2&a=1",
    "/gzip",
    "/binary",
    "/start",
    "/operations/op1",
    "/operations/op1",
    "/operations/op1",
)
"""What the requests client asks (httpx then asks /cookies)."""


def no_proxy_env() -> dict[str, str]:
    """The environment without proxy variables, for subprocess clients (curl)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


# ----------------------------------------------------------------------------- TLS for the upstream


@dataclass(frozen=True)
class UpstreamTls:
    ca: Path  # the upstream's CA certificate (PEM)
    context: ssl.SSLContext  # server context with a 127.0.0.1 certificate signed by that CA


@pytest.fixture(scope="module")
def upstream_tls(tmp_path_factory: pytest.TempPathFactory) -> UpstreamTls:
    directory = tmp_path_factory.mktemp("upstream-ca")
    store = CertStore.from_store(directory, "upstream", 2048)
    entry = store.get_cert("127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    key = entry.privatekey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "server.pem").write_bytes(entry.cert.to_pem() + key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem")
    return UpstreamTls(directory / "upstream-ca-cert.pem", context)


def https_upstream(tls: UpstreamTls) -> Upstream:
    """tests/upstream.py's handler over TLS (handshakes happen in the handler threads)."""
    up = Upstream()
    up.server.socket = tls.context.wrap_socket(
        up.server.socket, server_side=True, do_handshake_on_connect=False
    )
    up.url = up.url.replace("http://", "https://")
    return up


# ----------------------------------------------------------------------------- clients through the proxy


def requests_session(proxy: ReplayProxy) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"http": proxy.url, "https": proxy.url}
    s.verify = str(proxy.ca_cert)
    return s


def httpx_client(proxy: ReplayProxy) -> httpx.Client:
    return httpx.Client(
        proxy=proxy.url,
        verify=ssl.create_default_context(cafile=str(proxy.ca_cert)),
        trust_env=False,
        timeout=TIMEOUT,
    )


def traffic(proxy: ReplayProxy, origin: str) -> list[tuple[Any, ...]]:
    """The observable answers to PATHS (requests) and /cookies (httpx), through ``proxy``."""
    out: list[tuple[Any, ...]] = []
    with requests_session(proxy) as s:
        for path in PATHS:
            r = s.get(origin + path, timeout=TIMEOUT)
            body: Any = r.content if path == "/binary" else (r.json() if r.content else b"")
            out.append((path, r.status_code, r.headers.get("Location"), body))
    with httpx_client(proxy) as h:
        r = h.get(origin + "/cookies")
        out.append(("/cookies", r.status_code, r.headers.get_list("set-cookie"), r.json()))
    return out


def expected(origin: str, cookies: list[str]) -> list[tuple[Any, ...]]:
    """What the upstream answers to ``traffic``: forward mode leaves every URL as the origin's."""
    return [
        ("/json?b=2&a=1", 200, None, {"hello": "world", "query": {"b": ["2"], "a": ["1"]}}),
        ("/gzip", 200, None, {"compressed": "gzip", "pad": "x" * 200}),
        ("/binary", 200, None, BINARY),
        ("/start", 202, f"{origin}/operations/op1", b""),
        ("/operations/op1", 200, None, {"id": "op1", "status": "Running", "poll": 1}),
        ("/operations/op1", 200, None, {"id": "op1", "status": "Running", "poll": 2}),
        ("/operations/op1", 200, None, {"id": "op1", "status": "Succeeded", "poll": 3}),
        ("/cookies", 200, cookies, {}),
    ]


WRITE_OUT = ("--write-out", "\n<<%{http_code}>>\n")
LIVE_COOKIES = ["session=s3cr3t-cookie; Path=/; HttpOnly", "b=2; Path=/"]
SAVED_COOKIES = ["session=<REDACTED-1>; Path=/; HttpOnly", "b=<REDACTED-2>; Path=/"]


def recorded_uris(cassette: Path) -> list[str]:
    data = yaml.safe_load(cassette.read_text(encoding="utf-8"))
    return [item["request"]["uri"] for item in data["interactions"]]


def assert_no_match(answer: requests.Response | httpx.Response) -> None:
    assert answer.status_code == 599
    assert answer.headers["X-Replay-Proxy"] == "no-match"
    assert answer.json()["error"]["code"] == "ReplayProxyNoMatch"


@pytest.fixture
def bystander() -> Iterator[Upstream]:
    """A live loopback server the cassettes do not know: a replay must never connect to it."""
    with Upstream() as up:
        yield up


# ============================================================ plain HTTP origin


def test_forward_mode_records_and_replays_plain_http(
    upstream: Upstream, bystander: Upstream, tmp_path: Path, confdir: Path
) -> None:
    cassette = tmp_path / "forward-http.yaml"
    with ReplayProxy(cassette, mode="regular", record_mode="all", confdir=confdir) as proxy:
        live = traffic(proxy, upstream.url)
    assert live == expected(upstream.url, LIVE_COOKIES)
    assert len(upstream.requests) == len(PATHS) + 1
    assert recorded_uris(cassette) == [upstream.url + p for p in (*PATHS, "/cookies")]
    upstream.stop()

    with ReplayProxy(cassette, mode="regular", confdir=confdir) as proxy:
        replayed = traffic(proxy, upstream.url)
        with requests_session(proxy) as s:
            unknown = s.get(bystander.url + "/x", timeout=TIMEOUT)
            closed = s.get("http://127.0.0.1:1/x", timeout=TIMEOUT)
        sources = [e.source for e in proxy.journal.entries]
    assert replayed == expected(upstream.url, SAVED_COOKIES)
    assert_no_match(unknown)
    assert_no_match(closed)
    assert unknown.json()["error"]["request"]["uri"] == bystander.url + "/x"
    assert bystander.connections == 0
    assert sources == ["cassette"] * (len(PATHS) + 1) + ["no-match", "no-match"]


# ============================================================ HTTPS origin


@dataclass(frozen=True)
class HttpsRecorded:
    cassette: Path
    origin: str


@pytest.fixture(scope="module")
def https_recorded(tmp_path_factory: pytest.TempPathFactory, upstream_tls: UpstreamTls) -> HttpsRecorded:
    cassette = tmp_path_factory.mktemp("forward-https") / "cassette.yaml"
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    with https_upstream(upstream_tls) as up:
        with ReplayProxy(
            cassette, mode="regular", record_mode="all", confdir=confdir, upstream_ca=upstream_tls.ca
        ) as proxy:
            live = traffic(proxy, up.url)
        assert len(up.requests) == len(PATHS) + 1
    assert live == expected(up.url, LIVE_COOKIES)
    return HttpsRecorded(cassette, up.url)


def test_https_cassette_keeps_the_origin_urls(https_recorded: HttpsRecorded) -> None:
    origin = https_recorded.origin
    assert origin.startswith("https://127.0.0.1:")
    assert recorded_uris(https_recorded.cassette) == [origin + p for p in (*PATHS, "/cookies")]
    text = https_recorded.cassette.read_text(encoding="utf-8")
    assert f"- {origin}/operations/op1" in text  # the Location header, as the origin sent it
    assert "s3cr3t-cookie" not in text


def test_https_replay_answers_offline_and_refuses_unknown_hosts(
    https_recorded: HttpsRecorded, bystander: Upstream, confdir: Path
) -> None:
    origin = https_recorded.origin
    bystander_tls = bystander.url.replace("http://", "https://")
    with ReplayProxy(https_recorded.cassette, mode="regular", confdir=confdir) as proxy:
        replayed = traffic(proxy, origin)
        with requests_session(proxy) as s:
            misses = [
                s.get(bystander_tls + "/x", timeout=TIMEOUT),  # CONNECT, then TLS with the proxy's CA
                s.get(bystander.url + "/x", timeout=TIMEOUT),
            ]
        with httpx_client(proxy) as h:
            misses.append(h.get("https://127.0.0.1:1/x"))
        sources = [e.source for e in proxy.journal.entries]
    assert replayed == expected(origin, SAVED_COOKIES)
    for miss in misses:
        assert_no_match(miss)
    assert [m.json()["error"]["request"]["uri"] for m in misses] == [
        bystander_tls + "/x",
        bystander.url + "/x",
        "https://127.0.0.1:1/x",
    ]
    assert bystander.connections == 0
    assert sources == ["cassette"] * (len(PATHS) + 1) + ["no-match"] * 3


def test_https_replay_refuses_a_recorded_path_on_another_host(
    https_recorded: HttpsRecorded, bystander: Upstream, confdir: Path
) -> None:
    with (
        ReplayProxy(https_recorded.cassette, mode="regular", confdir=confdir) as proxy,
        requests_session(proxy) as s,
    ):
        other = s.get(bystander.url + "/json?b=2&a=1", timeout=TIMEOUT)
    assert bystander.connections == 0
    assert_no_match(other)


def test_https_record_without_trusting_the_upstream_ca_records_nothing(
    upstream_tls: UpstreamTls, tmp_path: Path, confdir: Path
) -> None:
    """The proxy verifies the origin's certificate: an unknown CA is a 502, and no cassette is written."""
    cassette = tmp_path / "untrusted.yaml"
    with https_upstream(upstream_tls) as up:
        with ReplayProxy(cassette, mode="regular", record_mode="all", confdir=confdir) as proxy:
            with requests_session(proxy) as s:
                r = s.get(up.url + "/json", timeout=TIMEOUT)
            sources = [e.source for e in proxy.journal.entries]
        assert up.requests == []
    assert r.status_code == 502
    assert "certificate verify failed" in r.text.lower()
    assert sources == ["error"]
    assert not cassette.exists()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_forward_replay_trusting_the_printed_ca(
    https_recorded: HttpsRecorded, tmp_path: Path
) -> None:
    confdir = tmp_path / "conf"
    printed = run_cli(["ca", "--confdir", str(confdir)], confdir=tmp_path / "unused")
    assert printed.returncode == 0, printed.stderr
    ca = printed.stdout.strip()
    origin = https_recorded.origin
    urls = [origin + "/json?b=2&a=1", *(origin + "/operations/op1",) * 3, "https://127.0.0.1:1/x"]
    with ReplayProxy(https_recorded.cassette, mode="regular", confdir=confdir) as proxy:
        assert str(proxy.ca_cert) == ca
        result = subprocess.run(
            # --write-out is printed after each transfer
            ["curl", "-sS", "--max-time", "10", "--proxy", proxy.url, "--cacert", ca, *WRITE_OUT, *urls],
            capture_output=True,
            text=True,
            timeout=60,
            env=no_proxy_env(),
        )
    assert result.returncode == 0, result.stderr
    pieces = re.split(r"\n<<(\d+)>>\n", result.stdout)
    assert pieces[-1] == ""
    codes = [int(c) for c in pieces[1::2]]
    bodies = [json.loads(b) for b in pieces[0:-1:2]]
    assert codes == [200, 200, 200, 200, 599]
    assert bodies[0] == {"hello": "world", "query": {"b": ["2"], "a": ["1"]}}
    assert [b["status"] for b in bodies[1:4]] == ["Running", "Running", "Succeeded"]
    assert bodies[4]["error"]["code"] == "ReplayProxyNoMatch"


# ============================================================ replay-proxy ca


def _is_ca_certificate(path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)


def test_ca_prints_one_existing_pem_path_and_is_idempotent(tmp_path: Path) -> None:
    confdir, env_confdir = tmp_path / "conf", tmp_path / "from-env"
    first = run_cli(["ca", "--confdir", str(confdir)], confdir=env_confdir)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert first.stdout.splitlines() == [str(confdir / "mitmproxy-ca-cert.pem")]
    path = Path(first.stdout.strip())
    assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert _is_ca_certificate(path)
    assert not env_confdir.exists()  # --confdir wins over REPLAY_PROXY_CONFDIR
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    second = run_cli(["ca", "--confdir", str(confdir)], confdir=env_confdir)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_ca_honours_replay_proxy_confdir(tmp_path: Path) -> None:
    env_confdir = tmp_path / "from-env"
    result = run_cli(["ca"], confdir=env_confdir)  # run_cli sets REPLAY_PROXY_CONFDIR
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(env_confdir / "mitmproxy-ca-cert.pem")]
    assert _is_ca_certificate(env_confdir / "mitmproxy-ca-cert.pem")
