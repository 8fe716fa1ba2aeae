"""HAR 1.2: `--har FILE` writes the session, mitmproxy's reader opens it, and it replays like a cassette."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from mitmproxy import io as mitm_io

from proxy import ReplayProxy
from proxy.cassette import load
from proxy.creator_service import CreatorService
from tests.conftest import run_cli

TIMEOUT = 10
SECRET = "eyJhbGciOiJSUzI1NiJ9.har-canary-token-5d1e"


def _client_session(base: str) -> list[requests.Response]:
    """A client of the Creator API: start a tileset job with a bearer token, poll it to the end, fetch it."""
    auth = {"Authorization": f"Bearer {SECRET}"}
    got = [requests.post(f"{base}/tilesets?api-version=2.0&datasetId=abc", headers=auth, timeout=TIMEOUT)]
    status_url = got[0].headers["Location"]
    for _ in range(10):
        got.append(requests.get(status_url, headers=auth, timeout=TIMEOUT))
        if got[-1].status_code == 201:
            break
    got.append(requests.get(got[-1].headers["Location"], headers=auth, timeout=TIMEOUT))
    got.append(requests.post(f"{base}/tilesets?api-version=2.0", timeout=TIMEOUT))  # 400 from the service
    return got


def _shape(responses: list[requests.Response], base: str) -> list[tuple[int, str, str]]:
    """Status, Location and body of each answer, the proxy's own origin taken out (ports differ per run)."""
    return [
        (r.status_code, r.headers.get("Location", "").replace(base, "BASE"), r.text.replace(base, "BASE"))
        for r in responses
    ]


def test_a_recorded_session_as_har_opens_in_mitmproxy_and_replays_the_same(
    cli: Any, creator: CreatorService, tmp_path: Path
) -> None:
    har, cassette = tmp_path / "session.har", tmp_path / "c.yaml"
    page = tmp_path / "record.html"
    proc = cli(
        [
            "record",
            creator.url,
            "-o",
            str(cassette),
            "--har",
            str(har),
            "--report-html",
            str(page),
            "--port",
            "0",
        ]
    )
    try:
        recorded = _client_session(proc.url)
        recorded_shape = _shape(recorded, proc.url)
    finally:
        assert proc.stop() == 0, proc.stderr
    assert [r.status_code for r in recorded] == [202, 200, 200, 200, 201, 200, 400]
    assert f"HAR of 7 exchanges: {har}" in proc.stderr
    html = page.read_text(encoding="utf-8")  # the report of a recording: operations from status URLs
    assert "<h3>operation <code>/tilesets/operations/" in html and "Succeeded after 4 polls" in html
    assert ">201 Succeeded</text>" in html  # the terminal answer, marked

    text = har.read_text(encoding="utf-8")
    assert SECRET not in text and "<REDACTED-1>" in text  # secrets as the cassette hides them
    doc = json.loads(text)
    assert doc["log"]["version"] == "1.2" and doc["log"]["creator"]["name"] == "replay-proxy"
    entries = doc["log"]["entries"]
    assert [e["request"]["url"].replace(proc.url, "BASE") for e in entries][:2] == [
        "BASE/tilesets?api-version=2.0&datasetId=abc",
        recorded[0].headers["Location"].replace(proc.url, "BASE"),
    ]  # the URLs the client used, on the proxy
    assert entries[0]["comment"].startswith("replay-proxy: upstream recorded as #1")
    assert entries[1]["response"]["content"]["text"] == recorded[1].text  # the answer as served

    with open(har, "rb") as f:  # mitmproxy's own reader (FlowReader detects HAR)
        flows = list(mitm_io.FlowReader(f).stream())
    assert [(fl.request.method, fl.response.status_code) for fl in flows] == [  # type: ignore[union-attr]
        (r.request.method, r.status_code) for r in recorded
    ]

    proc = cli(["replay", str(har), "--port", "0"])
    try:
        replayed = _client_session(proc.url)
        replayed_shape = _shape(replayed, proc.url)
    finally:
        assert proc.stop() == 0, proc.stderr
    assert replayed_shape == recorded_shape
    assert "NO MATCH" not in proc.stderr


HAR_REQUIRED = {
    "entry": {"startedDateTime", "time", "request", "response", "cache", "timings"},
    "request": {
        "method", "url", "httpVersion", "cookies", "headers", "queryString", "headersSize", "bodySize",
    },
    "response": {
        "status", "statusText", "httpVersion", "cookies", "headers", "content", "redirectURL", "headersSize",
        "bodySize",
    },
    "content": {"size", "mimeType"},
    "timings": {"send", "wait", "receive"},
}  # fmt: skip
"""What HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/) requires of each entry."""


def test_every_entry_has_what_har_1_2_requires_even_without_a_response(tmp_path: Path) -> None:
    """flaky-polling resets one poll: its entry has no response, and is still a valid HAR entry."""
    har = tmp_path / "flaky.har"
    with ReplayProxy(scenarios=["scenarios/azure-maps/flaky-polling.yaml"], retry_after=0, har=har) as p:
        start = requests.post(f"{p.url}/tilesets?api-version=2.0&datasetId=abc", timeout=TIMEOUT)
        for _ in range(8):
            try:
                if requests.get(start.headers["Location"], timeout=TIMEOUT).status_code == 201:
                    break
            except requests.ConnectionError:
                pass
    doc = json.loads(har.read_text(encoding="utf-8"))
    assert {"version", "creator", "entries"} <= set(doc["log"]) and doc["log"]["version"] == "1.2"
    entries = doc["log"]["entries"]
    assert [e["response"]["status"] for e in entries] == [202, 200, 200, 503, 0, 200, 201]
    for e in entries:
        for part, required in HAR_REQUIRED.items():
            obj = {"entry": e, "content": e["response"]["content"], "timings": e["timings"]}.get(part) or e[
                part
            ]
            assert required <= set(obj), (part, required - set(obj), e)
    assert "reset" in entries[4]["comment"]  # what answered: the scripted fault
    mitmdump = Path(sys.executable).with_name("mitmdump")  # mitmproxy's own tool reads it (as mitmweb -r)
    shown = subprocess.run([str(mitmdump), "-n", "-r", str(har)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert (
        shown.stdout.count("<< ") == 7
        and "<< 202 Accepted" in shown.stdout
        and "<< 201 Created" in shown.stdout
    )


def test_convert_har_to_a_cassette_and_a_cassette_to_har(confdir: Path, tmp_path: Path) -> None:
    source = Path("cassettes/azure-maps/tileset-succeeds.yaml").resolve()
    har, back = tmp_path / "t.har", tmp_path / "t.yaml"
    done = run_cli(["convert", str(source), "-o", str(har)], confdir)
    assert done.returncode == 0, done.stderr
    original = load(source)
    assert f"wrote {len(original)} exchanges to {har}" in done.stderr
    done = run_cli(["convert", str(har), "-o", str(back)], confdir)
    assert done.returncode == 0, done.stderr
    again = load(back)  # vcrpy's format: the proxy's own reader (vcrpy's loader underneath)
    assert [(i.request.method, i.request.url, i.request.body) for i in again] == [
        (i.request.method, i.request.url, i.request.body) for i in original
    ]
    assert [(i.response.status, i.response.body) for i in again] == [
        (i.response.status, i.response.body) for i in original
    ]


def _entry(method: str, url: str, status: int, text: str = "", **response: Any) -> dict[str, Any]:
    """An entry as browsers write them (no comment, cookies, timings...)."""
    return {
        "startedDateTime": "2026-12-05T01:00:00.000Z",
        "time": 12,
        "request": {"method": method, "url": url, "httpVersion": "http/2.0", "headers": [], "cookies": []},
        "response": {
            "status": status,
            "statusText": "",
            "httpVersion": "http/2.0",
            "headers": response.pop("headers", []),
            "content": {"size": len(text), "mimeType": "application/json", "text": text, **response},
        },
    }


def test_a_browser_har_replays_and_what_cannot_be_replayed_is_left_out(tmp_path: Path) -> None:
    png = bytes(range(256))
    har = tmp_path / "chrome.har"
    har.write_text(
        json.dumps(
            {
                "log": {
                    "version": "1.2",
                    "creator": {"name": "WebInspector", "version": "537.36"},
                    "entries": [
                        _entry("GET", "https://api.example.com/items?page=1", 200, '{"items": [1, 2]}'),
                        _entry(
                            "GET",
                            "https://api.example.com/logo.png",
                            200,
                            base64.b64encode(png).decode(),
                            encoding="base64",
                            headers=[{"name": "Content-Type", "value": "image/png"}],
                        ),
                        _entry("GET", "https://api.example.com/cancelled", 0),
                        _entry(
                            "GET",
                            "https://api.example.com/missing",
                            599,
                            headers=[{"name": "X-Replay-Proxy", "value": "no-match"}],
                        ),
                    ],
                }
            }
        ),
        encoding="utf-8",
    )
    interactions = load(har)
    assert [i.request.path_and_query for i in interactions] == ["/items?page=1", "/logo.png"]
    with ReplayProxy(har) as p:
        items = requests.get(f"{p.url}/items?page=1", timeout=TIMEOUT)
        logo = requests.get(f"{p.url}/logo.png", timeout=TIMEOUT)
        missing = requests.get(f"{p.url}/missing", timeout=TIMEOUT)
    assert (items.status_code, items.json()) == (200, {"items": [1, 2]})
    assert (logo.status_code, logo.content) == (200, png)
    assert missing.status_code == 599 and missing.headers["X-Replay-Proxy"] == "no-match"


def test_a_broken_har_is_refused_saying_where(confdir: Path, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.har"
    bad_json.write_text('{"log": {"entries": [\n  {"request": }\n]}}', encoding="utf-8")
    done = run_cli(["replay", str(bad_json), "--port", "0"], confdir)
    assert done.returncode == 2
    assert f"{bad_json}:2:15: not a HAR file: invalid JSON" in done.stderr
    assert "Traceback" not in done.stderr

    no_url = tmp_path / "no-url.har"
    entry = _entry("GET", "https://x.example/a", 200)
    del entry["request"]["url"]
    no_url.write_text(json.dumps({"log": {"entries": [entry]}}), encoding="utf-8")
    done = run_cli(["convert", str(no_url), "-o", str(tmp_path / "c.yaml")], confdir)
    assert done.returncode == 2
    assert f"{no_url}: log.entries[0].request.url: missing or not a string" in done.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_cli(
        ["replay", "cassettes/azure-maps/tileset-succeeds.yaml", "--har", str(blocker / "s.har")], confdir
    )
    assert done.returncode == 2 and f"--har {blocker / 's.har'}: cannot create {blocker}" in done.stderr
    assert "replay-proxy on" not in done.stdout  # said at once, before serving

    done = run_cli(["record", "http://127.0.0.1:9", "-o", str(tmp_path / "new.har"), "--port", "0"], confdir)
    assert done.returncode == 2
    assert "a HAR file is replayed, not recorded to" in done.stderr


def test_learn_and_replay_read_har_entries_alike(tmp_path: Path) -> None:
    """One reader (``proxy.har.read_entry``) for ``--cassette x.har`` and ``learn``: both take an entry a
    tool wrote without what HAR 1.2 requires (httpVersion, content, time, startedDateTime, postData.text)
    and keep its statusText, which mitmproxy's reader alone would not; learn's errors name the entry."""
    import pytest

    from proxy.errors import CassetteError
    from proxy.recordings import RecordingError, read_recording

    sparse = {
        "request": {"method": "POST", "url": "https://x.example/jobs", "headers": [], "postData": {}},
        "response": {
            "status": 202,
            "statusText": "Queued Up",
            "headers": [{"name": "Retry-After", "value": "1"}],
        },
    }
    dated = _entry("GET", "https://x.example/jobs/1", 200, '{"status": "Running"}')
    har = tmp_path / "tool.har"
    har.write_text(json.dumps({"log": {"entries": [sparse, dated]}}), encoding="utf-8")
    replayed = load(har)
    learned = read_recording(har).exchanges
    for got in (replayed, [e.interaction for e in learned]):
        assert [(i.response.status, i.response.reason) for i in got] == [(202, "Queued Up"), (200, "OK")]
        assert [(i.request.method, i.request.body) for i in got] == [("POST", b""), ("GET", b"")]
        assert got[1].response.body == b'{"status": "Running"}'
    assert [e.at for e in learned] == [None, 1_796_432_400.0]  # the sparse entry does not say when

    bad_time = _entry("GET", "https://x.example/jobs/1", 200)
    bad_time["startedDateTime"] = "yesterday"
    no_url = _entry("GET", "https://x.example/jobs/1", 200)
    del no_url["request"]["url"]
    for entry, tripped in (
        (bad_time, "ValueError: Invalid isoformat string: 'yesterday'"),
        (no_url, "KeyError: 'url'"),
    ):
        har.write_text(json.dumps({"log": {"entries": [dated, entry]}}), encoding="utf-8")
        with pytest.raises(RecordingError) as learn_error:
            read_recording(har)
        assert (
            str(learn_error.value) == f"{har}: log.entries[1]: not a HAR entry mitmproxy can read ({tripped})"
        )
    bad = tmp_path / "bad-time.har"
    bad.write_text(json.dumps({"log": {"entries": [dated, bad_time]}}), encoding="utf-8")
    with pytest.raises(CassetteError) as replay_error:
        load(bad)
    assert str(replay_error.value) == (
        f"{bad}: log.entries[1]: mitmproxy's HAR reader cannot read it: "
        "ValueError: Invalid isoformat string: 'yesterday'"
    )


def test_the_lean_engine_refuses_har(tmp_path: Path) -> None:
    """HAR is built from mitmproxy's flows: the lean engine says so at once instead of writing nothing."""
    import pytest

    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lean engine does not write HAR .*--engine mitmproxy"):
        ReplayProxy(
            scenarios=["scenarios/azure-maps/tileset-succeeds.yaml"], engine="lean", har=tmp_path / "s.har"
        )
