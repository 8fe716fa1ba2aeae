"""``--journal FILE``: one JSON line per exchange, written as it happens, redacted as cassettes are.

Real proxies (the command line, ``ReplayProxy`` and the pytest plugin), real clients on loopback.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy.journal import read_journal
from proxy.server import ReplayProxy
from tests.conftest import ENGINES, ROOT, Cli

pytest_plugins = ["pytester"]

CASSETTE = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
SCENARIO = ROOT / "scenarios/azure-maps/tileset-succeeds.yaml"
DATASET_ID = "8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d"
START = f"/tilesets?api-version=2.0&datasetId={DATASET_ID}"
SECRET = "journal-canary-bearer-0d1e"


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for_lines(path: Path, n: int) -> list[dict[str, Any]]:
    """The file's lines once it has ``n`` (the proxy writes each before the client has its answer, but
    the test reads the file from another process: give it a moment, bounded)."""
    deadline = time.monotonic() + 10
    while True:
        lines = lines_of(path) if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


@pytest.mark.parametrize("engine", ENGINES)
def test_each_exchange_is_a_line_as_it_happens_and_a_kill_keeps_them(
    cli: type[Cli], tmp_path: Path, engine: str
) -> None:
    """Both engines (the lean one wrote no file, and kept the request headers unredacted in its journal)."""
    journal = tmp_path / "journal.jsonl"
    journal.write_text('{"event": "exchange", "from": "an older run"}\n')
    args = ["replay", str(CASSETTE), "--port", "0", "--retry-after", "0.05", "--journal", str(journal)]
    proxy = cli([*args, "--engine", engine])
    http = requests.Session()
    http.trust_env = False
    r = http.post(proxy.url + START, headers={"Authorization": f"Bearer {SECRET}"}, data=b"x" * 7, timeout=10)
    assert r.status_code == 202
    poll = http.get(r.headers["Location"], timeout=10)
    assert poll.status_code == 200
    miss = http.get(proxy.url + "/nothing-recorded", timeout=10)
    assert miss.status_code == 599
    lines = wait_for_lines(journal, 4)  # the proxy is still running: the lines are there already
    assert [line["event"] for line in lines] == ["load", "exchange", "exchange", "exchange"]
    load, start, first_poll, no_match = lines
    assert load["cassette"] == str(CASSETTE) and load["interactions"] == 6 and load["record_mode"] == "none"
    assert start["method"] == "POST" and start["status"] == 202 and start["source"] == "cassette"
    assert start["cassette"] == str(CASSETTE) and start["interaction"] == 0
    assert start["request_headers"]["Authorization"] == ["Bearer <REDACTED-1>"]
    assert SECRET not in journal.read_text()
    assert start["request_body_size"] == 7
    assert start["status_urls"] and start["retry_after"] == 0.05
    assert first_poll["interaction"] == 1 and first_poll["operation_status"] == "NotStarted"
    assert first_poll["terminal"] is False and first_poll["time"] >= start["time"]
    assert no_match["source"] == "no-match" and no_match["cassette"] is None and no_match["status"] == 599
    proxy.stop(signal.SIGKILL)  # a crash: every line written so far stays
    assert len(lines_of(journal)) == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_a_scenario_operation_is_named_with_its_status(tmp_path: Path, engine: str) -> None:
    journal = tmp_path / "j.jsonl"
    with ReplayProxy(scenarios=[SCENARIO], retry_after=0.05, journal_file=journal, engine=engine) as p:
        http = requests.Session()
        http.trust_env = False
        start = http.post(p.url + "/tilesets?api-version=2.0&datasetId=x", timeout=10)
        http.get(start.headers["Location"], timeout=10)
        entries = [e.to_json() for e in p.journal.entries]
    lines = [line for line in read_journal(journal) if line["event"] == "exchange"]
    assert [{k: v for k, v in line.items() if k != "event"} for line in lines] == entries
    assert lines[0]["operation"] and lines[1]["operation"] == lines[0]["operation"]
    assert lines[1]["operation_status"] == "NotStarted" and lines[1]["poll"] == 1
    assert lines[0]["source"] == "scenario" and lines[0]["cassette"] is None


def test_read_journal_leaves_out_a_torn_last_line_and_names_a_bad_one(tmp_path: Path) -> None:
    from proxy.errors import ConfigError

    path = tmp_path / "j.jsonl"
    path.write_text('{"event": "load"}\n{"event": "exch')
    assert read_journal(path) == [{"event": "load"}]
    path.write_text('{"event": "load"}\nnot json\n{"event": "load"}\n')
    with pytest.raises(ConfigError, match=r"j\.jsonl:2: not a journal line"):
        read_journal(path)


def test_an_unwritable_journal_is_a_usage_error(tmp_path: Path, confdir: Path) -> None:
    from tests.conftest import run_cli

    result = run_cli(["replay", str(CASSETTE), "--port", "0", "--journal", str(tmp_path)], confdir)
    assert result.returncode == 2
    assert f"replay-proxy: error: {tmp_path}: cannot write the journal there" in result.stderr


PLUGIN_TEST = f"""
import requests

def test_one(replay_proxy):
    replay_proxy.use({str(CASSETTE)!r}, retry_after=0.05)
    s = requests.Session(); s.trust_env = False
    assert s.post(replay_proxy.url + {START!r}, timeout=10).status_code == 202
    replay_proxy.verify_at_teardown = False

def test_two(replay_proxy):
    replay_proxy.use({str(SCENARIO)!r}, retry_after=0.05)
    s = requests.Session(); s.trust_env = False
    assert s.post(replay_proxy.url + "/tilesets?api-version=2.0&datasetId=x", timeout=10).status_code == 202
    replay_proxy.verify_at_teardown = False
"""


def test_the_plugin_writes_the_sessions_journal(
    pytester: pytest.Pytester, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLAY_PROXY_CONFDIR", str(confdir))
    pytester.makepyfile(test_client=PLUGIN_TEST)
    (pytester.path / "journal.jsonl").write_text("old\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--replay-journal", "journal.jsonl", timeout=120
    )
    result.assert_outcomes(passed=2)
    lines = read_journal(pytester.path / "journal.jsonl")
    exchanges = [line for line in lines if line["event"] == "exchange"]
    assert [e["source"] for e in exchanges] == ["cassette", "scenario"]
    assert [line["cassette"] for line in lines if line["event"] == "load"] == [str(CASSETTE)]


@pytest.mark.parametrize("engine", ENGINES)
def test_replay_proxy_refuses_a_journal_it_cannot_write(tmp_path: Path, engine: str) -> None:
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot write the journal there"):
        ReplayProxy(scenarios=[SCENARIO], journal_file=tmp_path, engine=engine).start()
