"""Large cassettes at start-up (issue 16): they start, saying how far the load got, or are refused.

The command used to give the proxy 30 s to start, so a 1,000,000-interaction cassette (202 MB) could not
be replayed at all. Now it waits as long as loading takes and says on stderr how far it got once that
takes more than a few seconds; a cassette that cannot fit in the memory left is refused at once with a
message saying why and what to do.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.conftest import Cli
from tests.reliability.test_hostile_files import ERROR, MEMORY_LIMIT, run_proxy

HEADERS = 40
ITEMS = 30_000
"""A cassette of many small nodes: ~35 MB that loads in ~5 s (9 s on a busy 2-core machine)."""


def _slow_cassette(path: Path, items: int = ITEMS) -> Path:
    headers = "".join(f"      X-H{j}:\n      - v{j}\n" for j in range(HEADERS))
    response = (
        "  response:\n    body:\n      string: ok\n    headers:\n"
        + headers
        + "    status:\n      code: 200\n      message: OK\n"
    )
    with path.open("w") as f:
        f.write("interactions:\n")
        for i in range(items):
            f.write(f"- request:\n    body: null\n    headers: {{}}\n    method: GET\n    uri: http://h/i/{i}\n")
            f.write(response)
        f.write("version: 1\n")
    return path


def test_a_slow_start_shows_progress_then_serves(cli: type[Cli], tmp_path: Path) -> None:
    path = _slow_cassette(tmp_path / "slow.yaml")
    proxy = cli(["replay", str(path), "--port", "0"])
    assert proxy.url, proxy.stderr
    with urllib.request.urlopen(f"{proxy.url}/i/29999", timeout=30) as response:
        assert response.status == 200 and response.read() == b"ok"
    proxy.stop()
    progress = [line for line in proxy.stderr_lines if line.startswith(f"replay-proxy: loading {path} (")]
    print("\n" + "\n".join(progress))
    assert progress, proxy.stderr
    assert " % read after " in progress[0] or " interactions after " in progress[0]


def test_a_cassette_too_large_for_the_memory_left_is_refused_at_once(tmp_path: Path, confdir: Path) -> None:
    """Under RLIMIT_AS 2 GiB, 300,000 interactions (333 MB) would need several GB: before, the load ran
    until it failed or was killed."""
    path = _slow_cassette(tmp_path / "huge.yaml", items=300_000)
    run = run_proxy(["replay", str(path)], tmp_path, confdir)
    mib = run.peak_rss / 2**20
    print(f"\nexit {run.status} in {run.seconds:.1f} s, peak RSS {mib:.0f} MiB: {run.stderr}")
    assert run.status == 2, run.stderr
    assert run.stderr.startswith(f"{ERROR}{path}: too large to load here: a 333 MB cassette needs about "), (
        run.stderr
    )
    assert "split it into smaller cassettes" in run.stderr
    assert run.peak_rss < MEMORY_LIMIT // 8
