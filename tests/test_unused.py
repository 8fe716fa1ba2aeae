"""Interactions loaded for replay and never played: listed at the end of a session with file:line.

``--report`` on the command line and the pytest plugin's terminal summary, through real proxies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml

from proxy import cassette
from proxy.unused import interaction_lines
from tests.conftest import ROOT, Cli

pytest_plugins = ["pytester"]

CASSETTE = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
FAILS = ROOT / "cassettes/azure-maps/tileset-fails.yaml"
DATASET_ID = "8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d"
START = f"/tilesets?api-version=2.0&datasetId={DATASET_ID}"
EVERY_CASSETTE = sorted(
    p
    for p in [*ROOT.glob("cassettes/**/*"), *ROOT.glob("tests/corpus/**/*")]
    if p.suffix in (".yaml", ".yml", ".json")
)


def composed_lines(path: Path) -> list[int]:
    """The slow, sure way: YAML's own nodes (JSON's surrogate escapes made composable)."""
    text = cassette._composable(path) or path.read_text()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    items = next(v for k, v in root.value if k.value == "interactions")
    return [node.start_mark.line + 1 for node in items.value]


@pytest.mark.parametrize("path", EVERY_CASSETTE, ids=[str(p.relative_to(ROOT)) for p in EVERY_CASSETTE])
def test_each_interactions_line_is_where_yaml_puts_it(path: Path) -> None:
    expected = composed_lines(path)
    assert interaction_lines(path, len(cassette.load(path))) == expected


def test_a_layout_the_fast_scan_does_not_know_is_composed(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    data = yaml.safe_load(CASSETTE.read_text())
    path.write_text(
        "# a comment\nversion: 1\ninteractions:\n"
        + "".join(f"  - {json.dumps(item)}\n" for item in data["interactions"])
    )
    assert interaction_lines(path, 6) == [4, 5, 6, 7, 8, 9]
    assert interaction_lines(path, 5) is None  # not the file that was loaded


def test_the_report_lists_what_was_never_played(cli: type[Cli]) -> None:
    proxy = cli(["replay", str(CASSETTE.relative_to(ROOT)), "--port", "0", "--report", "--retry-after", "0"])
    http = requests.Session()
    http.trust_env = False
    start = http.post(proxy.url + START, timeout=10)
    http.get(start.headers["Location"], timeout=10)
    assert proxy.stop() == 0
    out = proxy.proc.stdout.read() if proxy.proc.stdout else ""
    assert "Recorded interactions loaded but never played (`replay-proxy prune` drops them):" in out
    assert "  cassettes/azure-maps/tileset-succeeds.yaml: 4 of 6 interactions never played" in out
    at = "    cassettes/azure-maps/tileset-succeeds.yaml:69: #3 GET http://127.0.0.1:44099/tilesets/operations/"
    assert at in out
    assert "    cassettes/azure-maps/tileset-succeeds.yaml:169: #6 GET " in out
    assert ":2: #1" not in out and ":36: #2" not in out


def test_a_fully_played_cassette_is_not_listed(cli: type[Cli]) -> None:
    path = ROOT / "cassettes/azure-maps/missing-dataset-id.yaml"
    proxy = cli(["replay", str(path), "--port", "0", "--report"])
    http = requests.Session()
    http.trust_env = False
    for item in cassette.load(ROOT / "cassettes/azure-maps/missing-dataset-id.yaml"):
        http.request(item.request.method, proxy.url + item.request.path_and_query, timeout=10)
    assert proxy.stop() == 0
    out = proxy.proc.stdout.read() if proxy.proc.stdout else ""
    assert "never played" not in out


PLUGIN_TESTS = f"""
import requests

def test_start_only(replay_proxy):
    replay_proxy.use({str(CASSETTE)!r}, retry_after=0)
    s = requests.Session(); s.trust_env = False
    s.post(replay_proxy.url + {START!r}, timeout=10)
    replay_proxy.verify_at_teardown = False

def test_start_and_a_poll(replay_proxy):
    replay_proxy.use({str(CASSETTE)!r}, retry_after=0)
    s = requests.Session(); s.trust_env = False
    r = s.post(replay_proxy.url + {START!r}, timeout=10)
    s.get(r.headers["Location"], timeout=10)
    s.get(r.headers["Location"], timeout=10)
    replay_proxy.verify_at_teardown = False

def test_loads_but_sends_nothing(replay_proxy):
    replay_proxy.use({str(FAILS)!r})
"""


def test_the_plugin_summary_lists_what_no_test_played(
    pytester: pytest.Pytester, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLAY_PROXY_CONFDIR", str(confdir))
    pytester.makepyfile(test_client=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*- replay-proxy: unused recorded interactions -*",
            "Recorded interactions loaded but never played*",
            f"  {CASSETTE}: 3 of 6 interactions never played",
            f"    {CASSETTE}:102: #4 GET *",
            f"    {CASSETTE}:135: #5 GET *",
            f"    {CASSETTE}:169: #6 GET *",
            f"  {FAILS}: none of its * interactions played (the cassette is unused)",
        ]
    )
