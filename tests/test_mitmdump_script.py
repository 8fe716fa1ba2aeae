"""The addon also loads into mitmproxy's own mitmdump with -s, as the README says."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from mitmproxy import io

ROOT = Path(__file__).resolve().parent.parent
CASSETTE = ROOT / "cassettes" / "azure-maps" / "tileset-succeeds.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mitmdump_loads_the_addon_and_replays(confdir: Path, tmp_path: Path) -> None:
    """...and each flow's comment (what mitmweb shows beside it) says what answered it."""
    port = _free_port()
    flows = tmp_path / "flows.mitm"
    mitmdump = Path(sys.executable).parent / "mitmdump"
    proc = subprocess.Popen(
        [
            str(mitmdump),
            "-q",
            "-s",
            str(ROOT / "proxy" / "addon.py"),
            "--mode",
            "reverse:http://127.0.0.1:9",
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(port),
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"confdir={confdir}",
            "--set",
            f"replay_cassette={CASSETTE}",
            "-w",
            str(flows),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "mitmdump did not listen"
                time.sleep(0.1)
        s = requests.Session()
        s.trust_env = False
        r = s.post(
            f"{url}/tilesets?api-version=2.0&datasetId=8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d", timeout=5
        )
        assert r.status_code == 202
        assert r.headers["Location"].startswith(url + "/tilesets/operations/")
        statuses = [s.get(r.headers["Location"], timeout=5).json()["status"] for _ in range(4)]
        assert statuses == ["NotStarted", "Running", "Running", "Succeeded"]
        assert s.get(f"{url}/nope", timeout=5).status_code == 599
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    # mitmdump itself may print a CancelledError traceback for a connection open at exit: only ours count.
    assert str(ROOT / "proxy") not in out, out
    with flows.open("rb") as f:
        comments = [flow.comment for flow in io.FlowReader(f).stream()]
    assert comments == [
        "replay-proxy: cassette interaction #1",
        "replay-proxy: cassette interaction #2",
        "replay-proxy: cassette interaction #3",
        "replay-proxy: cassette interaction #4",
        "replay-proxy: cassette interaction #5",
        comments[-1],
    ]
    assert comments[-1].startswith("replay-proxy: NO MATCH: no recorded interaction matches"), comments[-1]
