"""Faults while recording through `replay-proxy record` (the real command, a subprocess).

* The proxy is stopped (SIGTERM) or killed (SIGKILL) while 16 clients are sending checksummed bodies:
  every exchange a client got its answer for is in the cassette, once, intact; vcrpy loads the file.
* The upstream resets, closes, hangs, stalls mid-body, refuses connections or presents a self-signed TLS
  certificate: the client gets a 502 or 504 whose body says which, within ``--upstream-timeout`` when the
  upstream says nothing; other clients are served meanwhile; nothing of a failed exchange is saved.

tests/test_durability.py has the SIGKILL case with small GETs and the 502 of a closed port and of an
upstream that closes, resets or answers garbage; here the bodies are checked byte for byte and the
answers must name the cause.
"""

from __future__ import annotations

import datetime
import ipaddress
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.cassette import dumps, load
from tests.reliability.traffic import Exchange, saved, send
from tests.test_durability import RawUpstream
from tests.test_forward_mode import UpstreamTls, https_upstream
from tests.upstream import Upstream

# ----------------------------------------------------------------------------- stopped mid-traffic

CLIENTS = 16
ENOUGH = 150
"""Answers the clients must have had before the signal (it comes while they are still sending)."""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopped_mid_traffic_every_answered_exchange_is_saved_intact(
    cli: Any, busy_upstream: Upstream, tmp_path: Path, sig: int
) -> None:
    upstream = busy_upstream
    path = tmp_path / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    got: dict[str, Exchange] = {}
    tried: set[str] = set()
    problems: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    signalled = threading.Event()

    def client(c: int) -> None:
        with requests.Session() as s:
            s.trust_env = False
            for n in range(1000):
                ident = f"c{c:02d}-n{n:03d}"
                with lock:
                    tried.add(ident)
                size = 100 + (c * 7919 + n * 104729) % 32_000  # up to 32 KB: a kill may land mid-write
                try:
                    exchange = send(s, proc.url, ident, size=size, timeout=10)
                except Exception as e:
                    if not signalled.is_set():
                        problems.append(f"{ident}: {e!r} before the signal")
                    return  # the proxy is going away: this one was in flight
                with lock:
                    got[ident] = exchange
                    if len(got) >= ENOUGH:
                        enough.set()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(90), f"only {len(got)} answers in 90 s: {problems[:3]}"
    finally:
        signalled.set()
        rc = proc.stop(sig)  # the clients are still sending
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert problems == []

    on_disk = saved(path)  # vcrpy loads it; each id once; bodies intact and unmixed
    missing = set(got) - set(on_disk)
    assert not missing, f"{len(missing)} answered exchanges are not on disk, e.g. {sorted(missing)[:3]}"
    assert {i: on_disk[i] for i in got} == got  # byte-identical to what the clients sent and got
    assert set(on_disk) <= tried
    assert len(got) < len(tried)  # the signal came with requests in flight
    if sig == signal.SIGTERM:
        assert rc == 0, proc.stderr
        assert path.read_text() == dumps(load(path))  # the clean stop rewrote it canonically
    else:
        assert rc == -signal.SIGKILL
        assert path.read_text().startswith("version: 1\ninteractions:\n")  # the append-as-you-go layout
    print(
        f"\n{signal.Signals(sig).name} mid-traffic: {len(got)} answered, {len(on_disk)} saved, "
        f"{len(tried) - len(got)} in flight"
    )


# ----------------------------------------------------------------------------- upstream resets, hangs...

UPSTREAM_TIMEOUT = 1.0
LATE = 4.0
"""A hanging upstream answers after this long if its connection is still open (it must not be by then)."""


class PathFaults(RawUpstream):
    """``/ok`` answers; ``/reset`` resets (RST); ``/close`` closes (FIN); ``/hang`` says nothing; ``/stall``
    sends the headers and half the body, then nothing. Hanging connections answer at ``LATE`` seconds
    unless the proxy closed them first (``dropped``: request target -> seconds until it did)."""

    def __init__(self) -> None:
        self.dropped: dict[str, float] = {}
        self.late: list[str] = []
        super().__init__("by path")

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        target = ""
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests.append(head)
            target = head.split(b" ", 2)[1].decode()
            path = target.split("?", 1)[0]
            if path == "/ok":
                conn.sendall(self.OK)
            elif path == "/reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif path in ("/hang", "/stall"):
                if path == "/stall":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
                self._hang(conn, target)
        except OSError:
            pass
        finally:
            conn.close()

    def _hang(self, conn: socket.socket, target: str) -> None:
        started = time.monotonic()
        conn.settimeout(LATE)
        try:
            closed = conn.recv(1) == b""
        except TimeoutError:
            closed = False
        except OSError:
            closed = True
        if closed:
            self.dropped[target] = time.monotonic() - started
        else:
            self.late.append(target)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")


@pytest.fixture
def faulty() -> Iterator[PathFaults]:
    server = PathFaults()
    try:
        yield server
    finally:
        server.close()


def _get(url: str, timeout: float) -> tuple[int, str, float]:
    started = time.monotonic()
    r = requests.get(url, timeout=timeout)
    return r.status_code, r.text, time.monotonic() - started


def _wait_for(condition: Any, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.02)


def test_reset_close_hang_and_stall_get_clear_answers_while_others_are_served(
    cli: Any, faulty: PathFaults, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    where = faulty.url.removeprefix("http://")
    proc = cli(["record", faulty.url, "-o", str(path), "--port", "0", "--upstream-timeout", "1"])
    failing = ["/reset", "/close", "/hang?client=waits", "/stall"]
    served: list[str] = []
    try:
        with ThreadPoolExecutor(len(failing) + 1) as pool:
            pending: dict[str, Future[tuple[int, str, float]]] = {
                t: pool.submit(_get, proc.url + t, 10) for t in failing
            }
            gives_up = pool.submit(_get, proc.url + "/hang?client=gives-up", 0.3)
            with requests.Session() as s:  # meanwhile, another client
                for n in range(500):
                    if all(f.done() for f in pending.values()) and gives_up.done():
                        break
                    r = s.get(proc.url + f"/ok?n={n}", timeout=10)
                    assert (r.status_code, r.json()) == (200, {"ok": True})
                    served.append(f"/ok?n={n}")
            answers = {t: f.result(15) for t, f in pending.items()}
            with pytest.raises(requests.exceptions.ReadTimeout):
                gives_up.result(15)
        # The hanging upstream connections are closed by the proxy, long before they would answer.
        _wait_for(lambda: len(faulty.dropped) + len(faulty.late) == 3)
        alive = proc.proc.poll() is None
    finally:
        rc = proc.stop()
    assert alive and rc == 0, proc.stderr

    status, text, _ = answers["/reset"]
    assert status == 502 and f"the upstream {where} reset the connection (TCP RST)" in text, text
    status, text, _ = answers["/close"]
    assert status == 502 and f"the upstream {where} closed the connection before answering" in text, text
    for target in ("/hang?client=waits", "/stall"):
        status, text, elapsed = answers[target]
        assert status == 504, text
        assert f"the upstream {where} did not answer within 1 s: timed out" in text, text
        assert UPSTREAM_TIMEOUT <= elapsed < LATE  # the proxy's limit, not the upstream's late answer
    assert faulty.late == []
    assert sorted(faulty.dropped) == ["/hang?client=gives-up", "/hang?client=waits", "/stall"]
    assert max(faulty.dropped.values()) < LATE
    assert len(served) >= 3  # answered while the others hung

    lines = [line for line in proc.stderr_lines if " -> " in line]
    assert (
        f"GET /reset -> 502 (upstream FAILED: the upstream {where} reset the connection (TCP RST) "
        "before answering)" in lines
    )
    assert (
        f"GET /hang?client=waits -> 504 (upstream FAILED: the upstream {where} did not answer within "
        "1 s: timed out (--upstream-timeout sets the limit))" in lines
    )
    # Nothing half-made is saved: only the answered exchanges, in order.
    assert [i.request.url for i in load(path)] == [faulty.url + t for t in served]
    print(
        f"\nupstream faults: {len(served)} other exchanges served while 5 failed; hung upstream "
        f"connections dropped after {faulty.dropped['/hang?client=waits']:.2f} s (timeout) and "
        f"{faulty.dropped['/hang?client=gives-up']:.2f} s (client gave up)"
    )


# ----------------------------------------------------------------------------- refused, untrusted TLS


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> UpstreamTls:
    """A self-signed certificate for 127.0.0.1, which nothing trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path_factory.mktemp("self-signed") / "server.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return UpstreamTls(pem, context)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_and_untrusted_upstreams_get_clear_answers_while_others_are_served(
    cli: Any, confdir: Path, upstream: Upstream, self_signed: UpstreamTls, tmp_path: Path
) -> None:
    """Forward-proxy mode, so that one proxy reaches a good upstream, a closed port and a TLS upstream
    with a self-signed certificate at the same time."""
    path = tmp_path / "c.yaml"
    dead = _closed_port()
    proc = cli(["record", "--mode", "regular", "-o", str(path), "--port", "0"])

    def session() -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.proxies = {"http": proc.url, "https": proc.url}
        s.verify = str(confdir / "mitmproxy-ca-cert.pem")
        return s

    def fail_repeatedly(url: str) -> list[tuple[int, str]]:
        with session() as s:
            return [(r.status_code, r.text) for r in (s.get(f"{url}?n={n}", timeout=10) for n in range(10))]

    good: list[str] = []
    with https_upstream(self_signed) as tls:
        try:
            with ThreadPoolExecutor(2) as pool, session() as s:
                refused = pool.submit(fail_repeatedly, f"http://127.0.0.1:{dead}/x")
                untrusted = pool.submit(fail_repeatedly, tls.url + "/json")
                for n in range(500):  # meanwhile, another client
                    if refused.done() and untrusted.done() and n >= 3:
                        break
                    r = s.get(upstream.url + f"/json?n={n}", timeout=10)
                    assert r.status_code == 200, r.text
                    good.append(upstream.url + f"/json?n={n}")
                refused_answers, untrusted_answers = refused.result(30), untrusted.result(30)
            alive = proc.proc.poll() is None
        finally:
            rc = proc.stop()
        assert tls.requests == []  # no request went over the untrusted connection
    assert alive and rc == 0, proc.stderr
    for status, text in refused_answers:
        assert status == 502, text
        assert f"connection refused by the upstream 127.0.0.1:{dead}: is the service running there?" in text
    tls_where = tls.url.removeprefix("https://")
    for status, text in untrusted_answers:
        assert status == 502, text
        assert f"the TLS certificate of the upstream {tls_where} is not trusted" in text, text
        assert "self-signed certificate" in text and "--upstream-ca PEM" in text
    assert [i.request.url for i in load(path)] == good  # the failures left nothing behind
