"""Recording under load: 50 concurrent clients x 20 exchanges through `replay-proxy record` (the real
command, a subprocess) to a loopback upstream. Every exchange must be in the cassette exactly once with
both bodies byte-identical to what the client sent and got, and vcrpy must load the file.

(tests/test_record_replay.py checks 20 clients x 5 GETs through the embedded proxy; this one goes through
the command line's process and signal handling, with request bodies, 10 times the exchanges.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from proxy.cassette import dumps, load
from tests.reliability.traffic import Exchange, saved, send
from tests.upstream import Upstream

CLIENTS = 50
PER_CLIENT = 20


def test_fifty_concurrent_clients_every_exchange_saved_once_and_intact(
    cli: Any, busy_upstream: Upstream, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    upstream = busy_upstream
    path = tmp_path / "load.yaml"
    proc = cli(["record", upstream.url, "-o", str(path), "--port", "0", "-q"])
    got: dict[str, Exchange] = {}
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS, timeout=30)

    def client(c: int) -> None:
        try:
            with requests.Session() as s:
                s.trust_env = False
                start.wait()
                for n in range(PER_CLIENT):
                    ident = f"c{c:02d}-n{n:02d}"
                    exchange = send(s, proc.url, ident, size=64 + (c * PER_CLIENT + n) % 1000)
                    with lock:
                        got[ident] = exchange
        except Exception as e:  # reported below, with the others
            with lock:
                failures.append(f"client {c}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - began
    alive = [t for t in threads if t.is_alive()]
    rc = proc.stop()

    assert not alive, f"{len(alive)} clients still running after 120 s"
    assert failures == [], failures[:5]
    assert rc == 0, proc.stderr
    assert proc.stderr == ""  # -q: no exchange lines, and nothing went wrong
    assert len(got) == CLIENTS * PER_CLIENT
    on_disk = saved(path)
    assert on_disk == got  # each id once; request and response bodies byte-identical
    assert len(upstream.requests) == CLIENTS * PER_CLIENT  # none forwarded twice, none lost on the way
    assert path.read_text() == dumps(load(path))  # the clean stop's canonical layout

    size = path.stat().st_size
    rate = len(got) / elapsed
    print(
        f"\nrecord under load: {len(got)} exchanges, {CLIENTS} clients, {elapsed:.1f} s "
        f"({rate:.0f}/s), cassette {size / 1e6:.2f} MB"
    )
    record_property("record_load", {"exchanges": len(got), "seconds": elapsed, "cassette_bytes": size})
