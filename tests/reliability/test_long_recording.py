"""Long recordings (issue 16): bounded memory, and saving that never blocks serving.

The cassette on disk is the recording's only copy: the proxy's memory must not grow with the number of
exchanges recorded (before: ~2.1 KiB per exchange, the session kept until the stop), and the clean stop
still writes vcrpy's canonical layout, streamed from the file. Recording onto a large existing cassette
(``--record-mode all`` / ``new_episodes``) must not rewrite it while clients wait: before, the first new
exchange rewrote the whole file on the event loop and every client waited (55 s for 200,000 interactions).
"""

from __future__ import annotations

import http.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from proxy import cassette
from tests.conftest import Cli
from tests.reliability.procfs import memory
from tests.upstream import Upstream

BODY = b"x" * 1000
SLOPE = 1024
"""Bytes of RSS per recorded exchange allowed (measured 190; before the fix 5,497)."""


CLIENTS = 8
"""Concurrent clients (each ~20 exchanges/s on loopback: the upstream's small writes meet delayed ACKs)."""


def _send(url: str, numbers: range) -> None:
    """POST ``/echo?n=N`` for each number in turn, over keep-alive connections, ``CLIENTS`` at a time."""
    target = urlsplit(url)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            for i in numbers[k::CLIENTS]:
                conn.request("POST", f"/echo?n={i}", body=BODY, headers={"Content-Type": "text/plain"})
                response = conn.getresponse()
                response.read()
                assert response.status == 200
        finally:
            conn.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))


def test_recording_memory_does_not_grow_with_the_exchanges(
    cli: type[Cli], upstream: Upstream, tmp_path: Path
) -> None:
    """RSS slope over 3,000 exchanges after 1,000 to warm up; the cassette canonical and complete."""
    path = tmp_path / "long.yaml"
    proxy = cli(["record", upstream.url, "-o", str(path), "-q"])
    assert proxy.url, proxy.stderr
    warm, measured = 1000, 3000
    _send(proxy.url, range(warm))
    before = memory(proxy.proc.pid)["VmRSS"]
    _send(proxy.url, range(warm, warm + measured))
    after = memory(proxy.proc.pid)["VmRSS"]
    slope = (after - before) / measured
    mib = 2**20
    print(f"\nRSS {before / mib:.1f} -> {after / mib:.1f} MiB over {measured} exchanges: {slope:.0f} B each")
    assert proxy.stop() == 0, proxy.stderr
    text = path.read_text()
    assert text == cassette.dumps(cassette.load(path))  # vcrpy's canonical layout
    assert len(cassette.load(path)) == warm + measured
    assert slope < SLOPE
