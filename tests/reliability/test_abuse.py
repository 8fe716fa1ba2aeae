"""Abuse of the proxy's own resources: one proxy per process, an endless request head, file descriptors
run out, a recording stopped by SIGTERM again and again.

Real servers on loopback, real clients, real mitmproxy; where the proxy's process matters (memory, file
descriptor limits, exit status) it runs as the command line in a subprocess.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from proxy.errors import StartupError
from proxy.server import ReplayProxy

TIMEOUT = 10

SCENARIO = """\
name: abuse
routes:
  - match: {method: GET, path: /ok}
    respond: {json: {ok: true}}
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "abuse.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


def get_ok(url: str) -> int:
    with requests.Session() as s:
        s.trust_env = False
        return s.get(f"{url}/ok", timeout=TIMEOUT).status_code


# ============================================================ one proxy per process


def test_a_second_proxy_in_the_same_process_is_refused(scenario: Path, confdir: Path) -> None:
    """mitmproxy's context is global: a second master would take over the first one's traffic. The second
    start raises StartupError naming the running proxy; the first keeps serving its own scenario; once it
    stopped, another may start."""
    other = scenario.with_name("other.yaml")
    other.write_text(SCENARIO.replace("ok: true", "ok: false"), encoding="utf-8")
    with ReplayProxy(scenarios=[scenario], confdir=confdir) as first:
        second = ReplayProxy(scenarios=[other], confdir=confdir)
        with pytest.raises(StartupError, match=f"another ReplayProxy is running.*{first.url}"):
            second.start()
        with requests.Session() as s:
            s.trust_env = False
            assert s.get(f"{first.url}/ok", timeout=TIMEOUT).json() == {"ok": True}
        second.stop()  # harmless: it never ran
    with ReplayProxy(scenarios=[other], confdir=confdir) as third:
        assert get_ok(third.url) == 200
