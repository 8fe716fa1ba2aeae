"""Crash safety of recording through the command line: SIGKILL, restart, and upstreams that fail.

A killed proxy gets no chance to save at exit: what is on disk is what ``CassetteWriter`` appended (one
fsync'd write per exchange, in the ``response`` hook, before the client gets the response). So every
response a client received must be in the cassette, and the file must always load with vcrpy and with
``proxy.cassette.load``.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from vcr.cassette import Cassette

from proxy.cassette import dumps, load
from tests.upstream import Upstream

TIMEOUT = 10


def _vcrpy_uris(path: Path) -> list[str]:
    cassette = Cassette.load(path=str(path), record_mode="none")
    return [r.uri for r in cassette.requests]


def _assert_valid(path: Path) -> list[str]:
    """The file is YAML, a vcrpy cassette, and ours; returns its request URIs (vcrpy's view)."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data["version"] == 1
    uris = _vcrpy_uris(path)
    ours = load(path)
    assert [i.request.url for i in ours] == uris
    assert len(data["interactions"]) == len(uris)
    return uris


def _kill(proc: Any) -> None:
    rc = proc.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL


# ----------------------------------------------------------------------------- 7. SIGKILL mid-session


def test_sigkill_keeps_every_completed_exchange(cli: Any, upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    sent = [f"/json?n={n}" for n in range(30)]
    try:
        with requests.Session() as s:
            for p in sent:
                r = s.get(proc.url + p, timeout=TIMEOUT)
                assert r.status_code == 200
                assert r.json()["query"] == {"n": [p.rsplit("=", 1)[1]]}
    finally:
        _kill(proc)
    assert _assert_valid(path) == [upstream.url + p for p in sent]
    assert [i.response.status for i in load(path)] == [200] * 30
    # Not the canonical rewrite a clean stop does: this is the append-as-you-go layout, still loadable.
    assert path.read_text().startswith("version: 1\ninteractions:\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_sigkill_under_load_keeps_every_received_response(
    cli: Any, upstream: Upstream, tmp_path: Path
) -> None:
    """Three clients hammer the proxy; it is killed mid-flight. Whatever a client got back is on disk."""
    path = tmp_path / "c.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    received: list[str] = []
    attempted: list[str] = []
    problems: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    killing = threading.Event()

    def hammer(t: int) -> None:
        with requests.Session() as s:
            for i in range(2000):
                p = f"/json?t={t}&i={i}"
                with lock:
                    attempted.append(p)
                try:
                    r = s.get(proc.url + p, timeout=5)
                except requests.RequestException as e:
                    if not killing.is_set():
                        problems.append(f"{p}: {e!r} before the kill")
                    return
                with lock:
                    if r.status_code != 200:
                        problems.append(f"{p}: {r.status_code} {r.text[:200]}")
                        return
                    received.append(p)
                    if len(received) >= 60:
                        enough.set()

    threads = [threading.Thread(target=hammer, args=(t,), daemon=True) for t in range(3)]
    for th in threads:
        th.start()
    try:
        assert enough.wait(60), f"only {len(received)} responses in 60 s: {problems}"
    finally:
        with lock:
            in_flight = len(attempted) - len(received)
        killing.set()
        _kill(proc)  # while the clients are still sending
        for th in threads:
            th.join(15)
    assert not any(th.is_alive() for th in threads)
    assert problems == []
    assert in_flight >= 1  # the kill came with requests on the wire
    on_disk = [uri.removeprefix(upstream.url) for uri in _assert_valid(path)]
    assert len(set(on_disk)) == len(on_disk), "an exchange was saved twice"
    missing = set(received) - set(on_disk)
    assert not missing, (
        f"{len(missing)} responses the clients received are not on disk: {sorted(missing)[:5]}"
    )
    assert set(on_disk) <= set(attempted)
    assert len(on_disk) >= 60


# ----------------------------------------------------------------------------- 8. restart after SIGKILL


def test_restart_after_sigkill_with_new_episodes(cli: Any, upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    old = [f"/json?old={n}" for n in range(5)]
    first = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    try:
        for p in old:
            assert requests.get(first.url + p, timeout=TIMEOUT).status_code == 200
    finally:
        _kill(first)
    assert len(load(path)) == 5
    assert len(upstream.requests) == 5

    second = cli(["record", upstream.url, "-o", str(path), "--port", "0", "--record-mode", "new_episodes"])
    try:
        replayed = [requests.get(second.url + p, timeout=TIMEOUT) for p in old]
        new = requests.post(second.url + "/echo", data=b"new episode", timeout=TIMEOUT)
        fresh = requests.get(second.url + "/json?new=1", timeout=TIMEOUT)
        # Router rule 4: once its recorded answers are played, a repeat is forwarded and recorded again
        # (unlike vcrpy, which would replay the just-recorded one: a poller would see one status forever).
        again = requests.get(second.url + "/json?new=1", timeout=TIMEOUT)
    finally:
        assert second.stop(signal.SIGTERM) == 0
    assert [r.json()["query"] for r in replayed] == [{"old": [str(n)]} for n in range(5)]
    assert new.status_code == 200 and new.json()["body"] == "new episode"
    assert fresh.json() == again.json() == {"hello": "world", "query": {"new": ["1"]}}
    # Only the new requests reached the upstream: none of the old ones.
    assert [r["path"] for r in upstream.requests[5:]] == ["/echo", "/json?new=1", "/json?new=1"]
    lines = [line for line in second.stderr_lines if " -> " in line]
    assert lines == [
        *(f"GET {p} -> 200 (cassette interaction #{n + 1})" for n, p in enumerate(old)),
        "POST /echo -> 200 (upstream recorded as #6)",
        "GET /json?new=1 -> 200 (upstream recorded as #7)",
        "GET /json?new=1 -> 200 (upstream recorded as #8)",
    ]
    uris = _assert_valid(path)
    assert uris == [upstream.url + p for p in [*old, "/echo", "/json?new=1", "/json?new=1"]]
    final = load(path)
    assert final[5].request.body == b"new episode"
    assert path.read_text() == dumps(final)  # canonical again after the clean stop
    assert not path.read_text().startswith("version:")  # vcrpy's key order: interactions, then version


# ----------------------------------------------------------------------------- 9. upstream failing


class RawUpstream:
    """A raw socket server: answers ``GET /ok`` properly, misbehaves on anything else.

    ``close``: reads the request and closes; ``reset``: reads it and resets (RST); ``garbage``: answers
    bytes that are not HTTP.
    """

    OK = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
        b'Connection: close\r\n\r\n{"ok": true}'
    )

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.requests.append(data)
            if data.startswith(b"GET /ok "):
                conn.sendall(self.OK)
            elif self.behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.behaviour == "garbage":
                conn.sendall(b"\x00\x01garbage, not HTTP\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def raw_upstream(request: pytest.FixtureRequest) -> Iterator[RawUpstream]:
    server = RawUpstream(request.param)
    try:
        yield server
    finally:
        server.close()


def test_upstream_port_closed(cli: Any, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    path = tmp_path / "c.yaml"
    proc = cli(["record", f"http://127.0.0.1:{dead}", "-o", str(path), "--port", "0"])
    try:
        first = requests.get(proc.url + "/json?a=1", timeout=TIMEOUT)
        second = requests.post(proc.url + "/echo", data=b"x", timeout=TIMEOUT)
        alive = proc.proc.poll() is None
    finally:
        assert proc.stop() == 0
    assert alive
    for r in (first, second):
        assert r.status_code == 502
        assert "connect" in r.text.lower() and str(dead) in r.text, r.text
    lines = [line for line in proc.stderr_lines if " -> " in line]
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("GET /json?a=1 -> 502 (upstream FAILED: "), lines[0]
    assert lines[1].startswith("POST /echo -> 502 (upstream FAILED: "), lines[1]
    assert str(dead) in lines[0]
    assert not path.exists()  # nothing was recorded, so nothing was written


@pytest.mark.parametrize("raw_upstream", ["close", "reset", "garbage"], indirect=True)
def test_upstream_misbehaving(cli: Any, raw_upstream: RawUpstream, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    proc = cli(["record", raw_upstream.url, "-o", str(path), "--port", "0"])
    try:
        ok1 = requests.get(proc.url + "/ok", timeout=TIMEOUT)
        bad = requests.get(proc.url + "/bad?n=1", timeout=TIMEOUT)
        bad2 = requests.post(proc.url + "/bad?n=2", data=b"payload", timeout=TIMEOUT)
        ok2 = requests.get(proc.url + "/ok", timeout=TIMEOUT)
        alive = proc.proc.poll() is None
    finally:
        assert proc.stop() == 0
    assert alive
    assert (ok1.status_code, ok2.status_code) == (200, 200)
    assert ok1.json() == ok2.json() == {"ok": True}
    assert (bad.status_code, bad2.status_code) == (502, 502), (bad.text, bad2.text)
    assert "502 Bad Gateway" in bad.text
    lines = [line for line in proc.stderr_lines if " -> " in line]
    assert len(lines) == 4, proc.stderr
    assert lines[0] == "GET /ok -> 200 (upstream recorded as #1)"
    assert lines[1].startswith("GET /bad?n=1 -> 502 (upstream FAILED: "), lines[1]
    assert lines[2].startswith("POST /bad?n=2 -> 502 (upstream FAILED: "), lines[2]
    assert lines[3] == "GET /ok -> 200 (upstream recorded as #2)"
    # The failures reached the upstream but left no trace in the cassette.
    assert sum(r.startswith(b"GET /bad?n=1 ") for r in raw_upstream.requests) >= 1
    assert _assert_valid(path) == [raw_upstream.url + "/ok"] * 2
    assert path.read_text() == dumps(load(path))
