"""``--max-body-size``: a request body over the limit is refused with 413, never buffered without end.

The limit is mitmproxy's ``body_size_limit``, set by ReplayProxy (``max_body_size``, default 100m). On
mitmproxy 11 and 12 alike it is checked on the request head (a Content-Length over the limit is refused
before a byte of the body is read) and again as a chunked body arrives (refused once the bytes read pass
the limit); either way the client gets ``413 Payload Too Large`` and the connection is closed. The proxy
is a `python -m proxy` subprocess, so its memory is its own: /proc's VmHWM (peak resident memory) shows
what a body cost it.
"""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import requests

from proxy.errors import ConfigError
from proxy.server import DEFAULT_MAX_BODY_SIZE, ReplayProxy, parse_size
from tests.conftest import ENGINES, ROOT, run_cli
from tests.reliability.procfs import memory
from tests.reliability.test_fuzz_requests import (
    DATASET_ID,
    KNOWN_GOOD,
    TIMEOUT,
    Answer,
    Proxy,
    exchange,
    start_proxy,
)

CASSETTE = "cassettes/azure-maps/tileset-succeeds.yaml"
LIMIT = 64 * 1024
ATTEMPT = 32 * 1024 * 1024
"""What a client tries to send: 512 times the limit."""
PIECE = 64 * 1024
START = f"/tilesets?api-version=2.0&datasetId={DATASET_ID}"
REFUSED = f"POST {START} -> 413 (refused request body larger than --max-body-size)"
"""The console line of a refusal: it names the option to change."""


def _pieces(total: int, chunked: bool) -> Iterator[bytes]:
    piece = b"x" * PIECE
    for _ in range(total // PIECE):
        yield b"%x\r\n%s\r\n" % (PIECE, piece) if chunked else piece
    if chunked:
        yield b"0\r\n\r\n"


def send_big(address: tuple[str, int], head: bytes, body: Iterable[bytes]) -> tuple[Answer, int]:
    """Send ``head``, then ``body`` from another thread while the response is read (a client that reads
    as it sends); the response, and how many body bytes the kernel took before the proxy closed."""
    sent = 0
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(head)

        def send() -> None:
            nonlocal sent
            try:
                for piece in body:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:  # the proxy closed: that is the point
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            answer = Answer(response.status, response.headers, response.read())
        finally:
            with contextlib.suppress(OSError):  # the proxy may have closed first (ENOTCONN)
                sock.shutdown(socket.SHUT_RDWR)
            sender.join(TIMEOUT)
    return answer, sent


@pytest.fixture(scope="module", params=ENGINES)
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """Replays the shipped cassette with a 64 KiB limit, on each engine; prints its exchange lines."""
    args = ["replay", CASSETTE, "--max-body-size", "64k", "--engine", request.param]
    yield from start_proxy(args, tmp_path_factory, quiet=False)


def _assert_refused(answer: Answer) -> None:
    assert answer.status == 413, answer
    assert answer.headers["Connection"] == "close"
    assert b"Request body exceeds" in answer.body and b"body_size_limit" in answer.body, answer.body


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413_and_costs_the_proxy_no_memory(limited: Proxy, framing: str) -> None:
    exchange(limited.address, KNOWN_GOOD.encode(), "POST")  # warm: the first exchange fills caches
    before = memory(limited.pid)["VmHWM"]
    if framing == "chunked":
        head = f"POST {START} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    else:
        head = f"POST {START} HTTP/1.1\r\nHost: x\r\nContent-Length: {ATTEMPT}\r\n\r\n".encode()
    answers = [send_big(limited.address, head, _pieces(ATTEMPT, framing == "chunked")) for _ in range(3)]
    growth = memory(limited.pid)["VmHWM"] - before

    for answer, sent in answers:
        _assert_refused(answer)
        assert sent < ATTEMPT, "the proxy took the whole body"
    print(
        f"\n{framing}: 3 x {ATTEMPT >> 20} MiB attempted, the kernel took"
        f" {[s >> 10 for s in (a[1] for a in answers)]} KiB before the close;"
        f" peak RSS {before / 2**20:.1f} MiB, +{growth / 2**20:.1f} MiB"
    )
    assert growth < 8 * 1024 * 1024, f"the proxy's peak memory grew by {growth / 2**20:.1f} MiB"
    assert exchange(limited.address, KNOWN_GOOD.encode(), "POST").status == 202  # still serving
    assert limited.cli.proc.poll() is None


def test_a_body_at_the_limit_is_served(limited: Proxy) -> None:
    body = b"y" * LIMIT
    head = f"POST {START} HTTP/1.1\r\nHost: x\r\nContent-Length: {LIMIT}\r\n\r\n".encode()
    assert exchange(limited.address, head + body, "POST").status == 202
    chunked = f"POST {START} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    assert exchange(limited.address, chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (LIMIT, body), "POST").status == 202


def _settled(proxy: Proxy) -> int:
    """How many console lines the proxy has printed once every earlier exchange's line is in: a marker
    request's line comes after them all (one pipe, in order), where counting at once could miss the line of
    the previous test's last request, still on its way."""
    marker = f"/settle-{time.monotonic_ns()}"
    exchange(proxy.address, f"GET {marker} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for i, line in enumerate(proxy.cli.stderr_lines):
            if marker in line:
                return i + 1
        time.sleep(0.01)
    raise AssertionError(f"no console line for {marker}: {proxy.cli.stderr}")


def test_real_clients_get_the_413(limited: Proxy) -> None:
    """requests and httpx read the early answer while sending; curl asks first (Expect: 100-continue)."""
    url = f"http://{limited.address[0]}:{limited.address[1]}{START}"
    big = b"z" * (4 * 1024 * 1024)

    def pieces() -> Iterator[bytes]:
        yield from _pieces(4 * 1024 * 1024, chunked=False)

    lines_before = _settled(limited)
    got = {
        "requests": requests.post(url, data=big, timeout=TIMEOUT).status_code,
        "requests-chunked": requests.post(url, data=pieces(), timeout=TIMEOUT).status_code,
        "httpx": httpx.post(url, content=big, timeout=TIMEOUT).status_code,
    }
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed on PATH"
    for name, extra in {"curl": [], "curl-no-expect": ["-H", "Expect:"]}.items():
        out = subprocess.run(
            [
                curl,
                "--noproxy",
                "*",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--data-binary",
                "@-",
                url,
                *extra,
            ],
            input=big,
            capture_output=True,
            timeout=TIMEOUT * 3,
        )
        got[name] = int(out.stdout or 0)
    assert got == dict.fromkeys(got, 413)
    deadline = time.monotonic() + TIMEOUT  # the lines come through a pipe and a thread
    while len(limited.cli.stderr_lines) < lines_before + len(got) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert limited.cli.stderr_lines[lines_before:] == [REFUSED] * len(got)


def test_the_default_limit_lets_large_bodies_through(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No option: 100m. A 24 MiB body is read and answered; the peak memory shows it was buffered (which
    is also what makes the measurement above able to fail)."""
    assert parse_size(DEFAULT_MAX_BODY_SIZE) == 100 * 1024 * 1024
    with contextlib.contextmanager(start_proxy)(["replay", CASSETTE], tmp_path_factory) as proxy:
        exchange(proxy.address, KNOWN_GOOD.encode(), "POST")
        before = memory(proxy.pid)["VmHWM"]
        size = 24 * 1024 * 1024
        head = f"POST {START} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
        answer, sent = send_big(proxy.address, head, _pieces(size, chunked=False))
        growth = memory(proxy.pid)["VmHWM"] - before
        print(
            f"\nno limit given: {size >> 20} MiB body -> {answer.status}, peak RSS +{growth / 2**20:.1f} MiB"
        )
        assert answer.status == 202 and sent == size
        assert growth > size


def test_replay_proxy_option_and_journal(confdir: Path) -> None:
    """The Python API takes the same sizes; a refusal is journaled (status 413, source "refused")."""
    with ReplayProxy(ROOT / CASSETTE, confdir=confdir, max_body_size="1k") as p:
        assert p.max_body_size == 1024
        address = (urlsplit(p.url).hostname or "", p.listen_port)
        head = f"POST {START} HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n".encode()
        _assert_refused(exchange(address, head + b"x" * 1025, "POST"))
        assert exchange(address, head.replace(b"1025", b"1024") + b"x" * 1024, "POST").status == 202
        assert [(e.status, e.source, e.method, e.path) for e in p.journal.entries] == [
            (413, "refused", "POST", START),
            (202, "cassette", "POST", START),
        ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("100m", 100 * 1024**2),
        ("1g", 1024**3),
        ("512k", 512 * 1024),
        ("64K", 64 * 1024),
        ("12", 12),
        ("12b", 12),
        (4096, 4096),
        ("0", None),
        (0, None),
        (None, None),
    ],
)
def test_sizes(given: str | int | None, expected: int | None) -> None:
    assert parse_size(given) == expected


@pytest.mark.parametrize("given", ["lots", "1.5m", "-1", "10x", "", "m", "1 0k", -5])
def test_bad_sizes(given: str | int) -> None:
    with pytest.raises(ConfigError, match="bad size"):
        parse_size(given)


def test_bad_size_on_the_command_line_is_one_line_and_status_2(confdir: Path) -> None:
    ran = run_cli(["replay", CASSETTE, "--max-body-size", "lots"], confdir)
    assert ran.returncode == 2
    assert ran.stderr.splitlines() == [
        "replay-proxy: error: argument --max-body-size: bad size 'lots': expected bytes with an optional "
        "k, m or g suffix, e.g. 100m (see --help)"
    ]
