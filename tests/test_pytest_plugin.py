"""The pytest plugin through pytester: inner pytest sessions in subprocesses, as a user runs them.

Each inner session autoloads the plugin from the installed ``pytest11`` entry point (nothing names it),
runs real clients (requests, httpx) against the one proxy the session starts, and writes what it saw to
files the outer test reads. Inner runs are subprocesses: mitmproxy's context is global, one per process.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml

from proxy.creator_service import CreatorService
from proxy.server import ensure_ca

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
INNER_TIMEOUT = 120
INNER_ADDOPTS = "--strict-markers -p no:cacheprovider -p no:hypothesispytest -p no:anyio"
"""Inner sessions skip the dev plugins they do not use (hypothesis alone costs 0.8 s a run)."""

LITERAL_CASSETTE = """\
interactions:
- request:
    body: null
    headers: {}
    method: GET
    uri: http://api.example.test/things/1
  response:
    body:
      string: '{"id": 1, "name": "recorded thing"}'
    headers:
      Content-Type:
      - application/json
    status:
      code: 200
      message: OK
version: 1
"""

CLIENT = '''
import time

import requests

TIMEOUT = 5
TERMINAL = ("Succeeded", "Failed")


def run_tileset(base, dataset="dataset-1", honour_retry_after=True):
    """Start a tileset job, poll its Location until terminal; returns (statuses, last response)."""
    r = requests.post(f"{base}/tilesets?api-version=2.0&datasetId={dataset}", timeout=TIMEOUT)
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    statuses = []
    while True:
        if honour_retry_after:
            time.sleep(float(r.headers.get("Retry-After", 0)))
        r = requests.get(location, timeout=TIMEOUT)
        statuses.append(r.json()["status"])
        if statuses[-1] in TERMINAL:
            return statuses, r
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for every inner session (creating one costs a key generation)."""
    confdir = tmp_path_factory.mktemp("plugin-ca")
    ensure_ca(confdir)
    return confdir


@pytest.fixture
def inner(pytester: pytest.Pytester, shared_ca: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project for an inner session: the shipped Azure Maps scenarios, a literal cassette, a client."""
    monkeypatch.setenv("REPLAY_PROXY_CONFDIR", str(shared_ca))
    monkeypatch.setenv("COLUMNS", "200")  # summary lines are cut at the terminal's width
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    shutil.copytree(ROOT / "scenarios" / "azure-maps", pytester.path / "scenarios" / "azure-maps")
    (pytester.path / "cassettes").mkdir()
    (pytester.path / "cassettes" / "thing.yaml").write_text(LITERAL_CASSETTE)
    (pytester.path / "out").mkdir()
    pytester.makepyfile(lro_client=CLIENT)
    pytester.makeini(f"[pytest]\naddopts = {INNER_ADDOPTS}\n")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, timeout=INNER_TIMEOUT)


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    """The inner session's outcome counts, with its output attached to any assertion that reads them."""
    return result.parseoutcomes()


# ---------------------------------------------------------------------------- fixture, marker, use()

SWITCHING = """
import json
import statistics
import time
from pathlib import Path

import pytest
import requests

from lro_client import TIMEOUT, run_tileset
from proxy.errors import ScenarioError

SUCCEEDS = "scenarios/azure-maps/tileset-succeeds.yaml"
FAILS = "scenarios/azure-maps/tileset-fails.yaml"


def note(replay_proxy, name):
    with open("out/proxies.txt", "a") as f:
        f.write(f"{name} {replay_proxy.url} {replay_proxy.proxy_url} {id(replay_proxy.proxy)}\\n")


def test_switches_between_two_scenarios_and_a_cassette(replay_proxy):
    note(replay_proxy, "switches")
    assert replay_proxy.journal.entries == []
    replay_proxy.use(SUCCEEDS, retry_after=0)
    statuses, last = run_tileset(replay_proxy.url)
    assert statuses == ["NotStarted", "Running", "Running", "Succeeded"]
    assert last.status_code == 201
    assert len(replay_proxy.journal.entries) == 5

    replay_proxy.use(FAILS, retry_after=0)
    assert replay_proxy.journal.entries == []
    statuses, last = run_tileset(replay_proxy.url)
    assert statuses == ["NotStarted", "Running", "Running", "Failed"]
    assert last.json()["error"]["details"]["code"] == "NoGeometry"

    replay_proxy.use("cassettes/thing.yaml")
    r = requests.get(replay_proxy.url + "/things/1", timeout=TIMEOUT)
    assert (r.status_code, r.json()["name"]) == (200, "recorded thing")
    r = requests.post(replay_proxy.url + "/tilesets?api-version=2.0&datasetId=d", timeout=TIMEOUT)
    assert r.status_code == 599  # the scenario is gone: the cassette alone answers
    assert [e.source for e in replay_proxy.journal.entries] == ["cassette", "no-match"]
    replay_proxy.verify(disabled=["unmatched"])
    replay_proxy.use(SUCCEEDS, retry_after=0)  # teardown's verdict judges only this last part
    run_tileset(replay_proxy.url)


def test_switching_takes_milliseconds(replay_proxy):
    note(replay_proxy, "timing")
    timings = {}
    for label, paths in (
        ("scenario", [SUCCEEDS]),
        ("cassette", ["cassettes/thing.yaml"]),
        ("scenario+cassette", [FAILS, "cassettes/thing.yaml"]),
    ):
        times = []
        for _ in range(15):
            start = time.perf_counter()
            replay_proxy.use(*paths)
            times.append(time.perf_counter() - start)
        timings[label] = {"median": statistics.median(times), "max": max(times)}
    start = time.perf_counter()
    replay_proxy.reset()
    timings["reset"] = {"median": time.perf_counter() - start, "max": time.perf_counter() - start}
    Path("out/timings.json").write_text(json.dumps(timings))


def test_reset_and_identical_use_start_afresh(replay_proxy):
    note(replay_proxy, "reset")
    replay_proxy.use(SUCCEEDS, retry_after=0)
    r = requests.post(replay_proxy.url + "/tilesets?api-version=2.0&datasetId=d", timeout=TIMEOUT)
    first = r.headers["Location"]
    assert requests.get(first, timeout=TIMEOUT).json()["status"] == "NotStarted"
    assert requests.get(first, timeout=TIMEOUT).json()["status"] == "Running"
    replay_proxy.use(SUCCEEDS, retry_after=0)  # the same file again: still a fresh start
    assert replay_proxy.journal.entries == []
    assert requests.get(first, timeout=TIMEOUT).status_code == 599  # the old operation is forgotten
    statuses, _ = run_tileset(replay_proxy.url)
    assert statuses[0] == "NotStarted"
    replay_proxy.reset()
    assert replay_proxy.journal.entries == []
    statuses, _ = run_tileset(replay_proxy.url)
    assert statuses == ["NotStarted", "Running", "Running", "Succeeded"]


def test_a_bad_file_raises_and_the_proxy_keeps_serving(replay_proxy, tmp_path):
    note(replay_proxy, "errors")
    replay_proxy.use(SUCCEEDS, retry_after=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\\n  - match: {method: GET, path: /x}\\n")
    with pytest.raises(ScenarioError, match=r"bad.yaml:2:"):
        replay_proxy.use(bad)
    with pytest.raises(Exception, match="no such file"):
        replay_proxy.use("scenarios/azure-maps/typo.yaml")
    statuses, _ = run_tileset(replay_proxy.url)
    assert statuses[-1] == "Succeeded"


@pytest.mark.replay_proxy(FAILS, retry_after=0)
def test_marker_serves_the_file_with_fresh_state(replay_proxy):
    note(replay_proxy, "marker")
    assert replay_proxy.journal.entries == []
    statuses, last = run_tileset(replay_proxy.url)
    assert statuses == ["NotStarted", "Running", "Running", "Failed"]


@pytest.mark.replay_proxy("cassettes/thing.yaml")
class TestMarkerOnAClass:
    def test_cassette(self, replay_proxy):
        note(replay_proxy, "class-marker")
        r = requests.get(replay_proxy.url + "/things/1", timeout=TIMEOUT)
        assert r.json()["id"] == 1


def test_without_marker_nothing_is_served(replay_proxy):
    note(replay_proxy, "plain")
    r = requests.get(replay_proxy.url + "/things/1", timeout=TIMEOUT)
    assert r.status_code == 599
    replay_proxy.verify(disabled=["unmatched"])
    with pytest.raises(AssertionError, match="unmatched"):
        replay_proxy.verify()
"""


def test_one_proxy_serves_a_session_switching_scenarios_and_cassettes(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_switching=SWITCHING)
    result = run(inner, "-W", "error::pytest.PytestUnknownMarkWarning")
    assert outcomes(result) == {"passed": 7}, result.stdout.str()
    lines = (inner.path / "out" / "proxies.txt").read_text().splitlines()
    names = [line.split()[0] for line in lines]
    assert sorted(names) == sorted(
        ["switches", "timing", "reset", "errors", "marker", "class-marker", "plain"]
    )
    # One proxy for the whole session: the same object, the same two listeners, in every test.
    assert len({tuple(line.split()[1:]) for line in lines}) == 1
    url, proxy_url = lines[0].split()[1:3]
    assert url.startswith("http://127.0.0.1:") and proxy_url.startswith("http://127.0.0.1:")
    assert url != proxy_url

    timings = json.loads((inner.path / "out" / "timings.json").read_text())
    print(
        "\nuse() switching time, median of 15 (max): "
        + ", ".join(f"{k} {v['median'] * 1000:.1f} ms ({v['max'] * 1000:.1f})" for k, v in timings.items())
    )
    # A sanity bound only: switching rebuilds a session on the proxy's loop, no restart.
    assert all(v["median"] < 1.0 for v in timings.values()), timings


# ---------------------------------------------------------------------------- record -> replay, offline

RECORDED = """
from pathlib import Path

import requests

from lro_client import TIMEOUT, run_tileset


def test_tileset(replay_proxy, request):
    replay_proxy.use("cassettes/tileset.yaml", retry_after=0)
    statuses, last = run_tileset(replay_proxy.url, dataset="recorded-dataset")
    assert statuses == ["NotStarted", "Running", "Running", "Succeeded"]
    assert last.status_code == 201
    metadata = requests.get(last.headers["Location"], timeout=TIMEOUT)
    assert metadata.status_code == 200
    assert metadata.json()["datasetId"] == "recorded-dataset"
    mode = request.config.getoption("replay_record_mode") or "none"
    sources = " ".join(e.source for e in replay_proxy.journal.entries)
    Path(f"out/sources-{mode}.txt").write_text(sources)
"""


def test_record_once_then_replay_offline(inner: pytest.Pytester, creator: CreatorService) -> None:
    inner.makepyfile(test_recorded=RECORDED)
    cassette = inner.path / "cassettes" / "tileset.yaml"

    recorded = run(inner, "--replay-record-mode=once", f"--replay-upstream={creator.url}")
    assert outcomes(recorded) == {"passed": 1}, recorded.stdout.str()
    assert f"replay-proxy: record mode once, upstream {creator.url}" in recorded.stdout.str()
    assert (inner.path / "out" / "sources-once.txt").read_text() == " ".join(["upstream"] * 6)
    interactions = yaml.safe_load(cassette.read_text())["interactions"]
    assert [(i["request"]["method"], i["response"]["status"]["code"]) for i in interactions] == [
        ("POST", 202),
        ("GET", 200),
        ("GET", 200),
        ("GET", 200),
        ("GET", 201),
        ("GET", 200),
    ]
    assert all(i["request"]["uri"].startswith(creator.url + "/tilesets") for i in interactions)
    assert creator.connections > 0

    creator.stop()
    replayed = run(inner)  # default record mode none: replay only, and the service is gone
    assert outcomes(replayed) == {"passed": 1}, replayed.stdout.str()
    assert (inner.path / "out" / "sources-none.txt").read_text() == " ".join(["cassette"] * 6)
    assert "record mode" not in replayed.stdout.str()


OFFLINE = """
import pytest
import requests

from lro_client import TIMEOUT


@pytest.mark.replay_proxy("cassettes/thing.yaml", checks_disabled=["unmatched"])
def test_cassette_miss_is_answered_by_the_proxy(replay_proxy):
    assert requests.get(replay_proxy.url + "/things/1", timeout=TIMEOUT).status_code == 200
    r = requests.post(replay_proxy.url + "/tilesets?api-version=2.0&datasetId=d", timeout=TIMEOUT)
    assert r.status_code == 599
    assert r.json()["error"]["code"] == "ReplayProxyNoMatch"


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", verify=False)
def test_scenario_miss_is_answered_by_the_proxy(replay_proxy):
    assert requests.get(replay_proxy.url + "/tilesets/unknown", timeout=TIMEOUT).status_code == 599


def test_recording_without_an_upstream_is_refused(replay_proxy):
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match="--replay-upstream"):
        replay_proxy.use("cassettes/new.yaml", record_mode="once", upstream=None)
"""


def test_default_mode_sends_nothing_upstream(inner: pytest.Pytester, creator: CreatorService) -> None:
    inner.makepyfile(test_offline=OFFLINE)
    # An upstream is named, but record mode none never dials it: misses get the proxy's 599.
    result = run(inner, f"--replay-upstream={creator.url}")
    assert outcomes(result) == {"passed": 3}, result.stdout.str()
    assert creator.connections == 0
    assert creator.requests == []


def test_bad_options_are_usage_errors(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    mode = run(inner, "--replay-record-mode=sometimes")
    assert mode.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'sometimes'" in mode.stderr.str()
    upstream = run(inner, "--replay-upstream=atlas.microsoft.com")
    assert upstream.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-upstream: bad upstream URL 'atlas.microsoft.com'" in upstream.stderr.str()
    retry = run(inner, "--replay-retry-after=soon")
    assert retry.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-retry-after takes seconds" in retry.stderr.str()
    check = run(inner, "--replay-disable-check=retry_after")
    assert check.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-disable-check: unknown check retry_after; choose from: unmatched, retry-after" in (
        check.stderr.str()
    )


EXHAUSTED = """
import pytest
import requests


@pytest.mark.replay_proxy("cassettes/thing.yaml", verify=False)
def test_the_second_call_finds_the_recording_used_up(replay_proxy):
    url = replay_proxy.url + "/things/1"
    assert requests.get(url, timeout=5).status_code == 200
    assert requests.get(url, timeout=5).status_code == 599
"""


def test_a_run_option_has_a_pytest_option_and_an_ini_key(inner: pytest.Pytester) -> None:
    """From proxy/settings.py: --when-exhausted is --replay-when-exhausted and replay_when_exhausted."""
    inner.makepyfile(test_exhausted=EXHAUSTED)
    assert outcomes(run(inner)) == {"failed": 1}  # the default repeats the last answer
    assert outcomes(run(inner, "--replay-when-exhausted=error")) == {"passed": 1}
    inner.makeini(f"[pytest]\naddopts = {INNER_ADDOPTS}\nreplay_when_exhausted = error\n")
    assert outcomes(run(inner)) == {"passed": 1}
    assert outcomes(run(inner, "--replay-when-exhausted=repeat-last")) == {"failed": 1}  # the CLI wins


# ---------------------------------------------------------------------------- forward proxy

FORWARD = """
import os

import httpx
import pytest
import requests

from lro_client import TIMEOUT

DEAD = "http://127.0.0.1:{dead_port}"  # nothing listens there: only the proxy can answer
ATLAS = "https://atlas.microsoft.com"
SET = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
BEFORE = {name: os.environ.get(name) for name in SET}


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=0)
def test_hard_coded_http_base_url(replay_proxy_env):
    assert os.environ["HTTP_PROXY"] == replay_proxy_env.proxy_url
    assert "NO_PROXY" not in os.environ and "no_proxy" not in os.environ
    r = requests.post(DEAD + "/tilesets?api-version=2.0&datasetId=d", timeout=TIMEOUT)
    assert r.status_code == 202
    assert r.headers["Location"].startswith(DEAD + "/tilesets/operations/")
    with httpx.Client(timeout=TIMEOUT) as client:  # trust_env: HTTP_PROXY
        statuses = [client.get(r.headers["Location"]).json()["status"] for _ in range(4)]
    assert statuses == ["NotStarted", "Running", "Running", "Succeeded"]


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-fails.yaml", retry_after=0)
def test_hard_coded_https_base_url(replay_proxy_env):
    assert os.environ["REQUESTS_CA_BUNDLE"] == os.environ["SSL_CERT_FILE"] == str(replay_proxy_env.ca_cert)
    r = requests.post(ATLAS + "/tilesets?api-version=2.0&datasetId=d", timeout=TIMEOUT)
    assert r.status_code == 202
    location = r.headers["Location"]
    assert location.startswith(ATLAS + "/tilesets/operations/")
    with httpx.Client(timeout=TIMEOUT) as client:  # trust_env: HTTPS_PROXY and SSL_CERT_FILE
        answers = [client.get(location) for _ in range(4)]
    assert answers[-1].json()["error"]["code"] == "InvalidFeature"
    assert [e.url.split("?")[0] for e in replay_proxy_env.journal.entries][:1] == [ATLAS + "/tilesets"]


def test_the_environment_is_restored_after_the_test(replay_proxy):
    assert {name: os.environ.get(name) for name in SET} == BEFORE
    assert BEFORE["HTTPS_PROXY"] is None and BEFORE["REQUESTS_CA_BUNDLE"] != str(replay_proxy.ca_cert)
"""


def test_forward_proxy_fixture_sets_the_environment(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_forward=FORWARD.replace("{dead_port}", str(_free_port())))
    result = run(inner)
    assert outcomes(result) == {"passed": 3}, result.stdout.str()


# ---------------------------------------------------------------------------- xdist

XDIST = """
import os

import pytest

from lro_client import run_tileset


@pytest.mark.parametrize("n", range(6))
def test_worker(replay_proxy_env, n):
    replay_proxy = replay_proxy_env
    replay_proxy.use("scenarios/azure-maps/tileset-succeeds.yaml")
    statuses, _ = run_tileset(replay_proxy.url)  # honours Retry-After: the ini file made it 0
    assert statuses == ["NotStarted", "Running", "Running", "Succeeded"]
    # HTTPS through this worker's forward proxy: its certificates are signed by the CA on disk.
    statuses, _ = run_tileset("https://atlas.microsoft.com")
    assert statuses[-1] == "Succeeded"
    assert len(replay_proxy.journal.entries) == 10  # this test's exchanges only
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with open(f"out/worker-{n}.txt", "w") as f:
        f.write(f"{worker} {replay_proxy.url} {replay_proxy.proxy_url} {os.getpid()}")
"""


def test_xdist_runs_a_proxy_per_worker(
    inner: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No CA yet: both workers find none and create it at the same time; they must agree on one.
    confdir = tmp_path / "fresh-conf"
    monkeypatch.setenv("REPLAY_PROXY_CONFDIR", str(confdir))
    inner.makeini(f"[pytest]\naddopts = {INNER_ADDOPTS}\nreplay_retry_after = 0\n")
    inner.makepyfile(test_xdist=XDIST)
    result = run(inner, "-n", "2")
    assert outcomes(result) == {"passed": 6}, result.stdout.str()
    rows = [(inner.path / "out" / f"worker-{n}.txt").read_text().split() for n in range(6)]
    workers = {worker: (url, proxy_url, pid) for worker, url, proxy_url, pid in rows}
    assert sorted(workers) == ["gw0", "gw1"]
    # Each worker kept one proxy for all its tests; the two workers' proxies share no port.
    assert len({tuple(row) for row in rows}) == 2
    (url0, fwd0, pid0), (url1, fwd1, pid1) = workers.values()
    assert len({url0, fwd0, url1, fwd1}) == 4
    assert pid0 != pid1
    assert (confdir / "mitmproxy-ca-cert.pem").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".replay-proxy-ca-")] == []


# ---------------------------------------------------------------------------- the verdict at teardown

VERDICT = '''
import pytest

from lro_client import run_tileset

SUCCEEDS = "scenarios/azure-maps/tileset-succeeds.yaml"


def naive(base):
    """Polls as fast as it can: never looks at Retry-After."""
    return run_tileset(base, honour_retry_after=False)


@pytest.mark.replay_proxy(SUCCEEDS)
def test_naive(replay_proxy):
    statuses, _ = naive(replay_proxy.url)
    assert statuses[-1] == "Succeeded"  # the test itself passes: the verdict fails it


@pytest.mark.replay_proxy(SUCCEEDS, checks_disabled=["retry-after"])
def test_naive_with_the_check_off(replay_proxy):
    naive(replay_proxy.url)


@pytest.mark.replay_proxy(SUCCEEDS, verify=False)
def test_naive_unverified(replay_proxy):
    naive(replay_proxy.url)


@pytest.mark.replay_proxy(SUCCEEDS)
def test_naive_verified_by_the_test(replay_proxy):
    naive(replay_proxy.url)
    with pytest.raises(AssertionError, match="retry-after"):
        replay_proxy.verify()


@pytest.mark.replay_proxy(SUCCEEDS, retry_after=0)
def test_patient(replay_proxy):
    run_tileset(replay_proxy.url)


@pytest.mark.replay_proxy(SUCCEEDS, checks_disabled="retry-afterr")
def test_misspelt_check(replay_proxy):
    pass
'''


def test_the_verdict_fails_a_naive_client_at_teardown(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_verdict=VERDICT)
    result = run(inner)
    assert outcomes(result) == {"passed": 5, "errors": 2}, result.stdout.str()
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_misspelt_check*",
            "E   ValueError: unknown check retry-afterr; choose from:*",
        ]
    )
    assert "ERROR at teardown of test_naive _" in out
    assert "ERROR test_verdict.py::test_naive - AssertionError: replay-proxy verdict" in out
    section = out.split("ERROR at teardown of test_naive _", 1)[1].split("short test summary", 1)[0]
    # The violation, readable at a glance: the rule, the early poll, the delay it ignored, what to do.
    assert "AssertionError: replay-proxy verdict: 1 violation" in section, section
    assert "1. retry-after: GET /tilesets/operations/" in section, section
    assert "which said to wait 1 s" in section, section
    assert "the client should wait at least the Retry-After" in section, section
    assert "pytest_plugin.py" not in section  # the message alone, no traceback through the plugin

    # The automatic check is off; an explicit verify() still judges.
    assert outcomes(run(inner, "--replay-no-verify", "-k", "not misspelt")) == {"passed": 5, "deselected": 1}
    # The check is off for the session, explicit verify() included.
    disabled = run(inner, "--replay-disable-check=retry-after", "-k", "not misspelt")
    assert outcomes(disabled) == {"passed": 4, "failed": 1, "deselected": 1}, disabled.stdout.str()
    disabled.stdout.fnmatch_lines(["*_ test_naive_verified_by_the_test _*", "*Failed: DID NOT RAISE*"])


def test_marker_is_registered(inner: pytest.Pytester) -> None:
    result = run(inner, "--markers")
    assert result.ret == 0
    assert "@pytest.mark.replay_proxy(*paths, verify=True, checks_disabled=(), **options)" in (
        result.stdout.str()
    )
    helped = run(inner, "--help")
    for option in ("--replay-record-mode", "--replay-upstream", "--replay-retry-after", "--replay-no-verify"):
        assert option in helped.stdout.str()


def test_plugin_is_installed_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="pytest11") if ep.name == "replay_proxy"]
    assert [ep.value for ep in found] == ["proxy.pytest_plugin"]


# ---------------------------------------------------------------------------- ReplayProxy.use() itself


def test_use_records_through_an_upstream_given_at_switch_time(
    creator: CreatorService, tmp_path: Path, confdir: Path
) -> None:
    """A proxy started offline records when a switch names an upstream, then replays what it recorded."""
    import requests

    from proxy.errors import ConfigError, ReplayProxyError
    from proxy.server import ReplayProxy

    def run_tileset(base: str) -> list[tuple[int, str]]:
        """The start's status, then each poll's status code and operation status."""
        r = requests.post(f"{base}/tilesets?api-version=2.0&datasetId=d", timeout=5)
        location = r.headers["Location"]
        seen = [(r.status_code, "")]
        for _ in range(4):
            r = requests.get(location, timeout=5)
            seen.append((r.status_code, r.json()["status"]))
        return seen

    cassette = tmp_path / "switched.yaml"
    proxy = ReplayProxy(confdir=confdir)  # no upstream: its listener points nowhere
    with proxy:
        proxy.use(cassette, record_mode="once", upstream=creator.url, retry_after=0)
        recorded = run_tileset(proxy.url)
        assert recorded[-1] == (201, "Succeeded")
        assert {e.source for e in proxy.journal.entries} == {"upstream"}
        proxy.use()  # serving nothing: the recording is saved
        uris = [i["request"]["uri"] for i in yaml.safe_load(cassette.read_text())["interactions"]]
        assert len(uris) == 5 and all(u.startswith(creator.url + "/tilesets") for u in uris)
        polls_seen = len(creator.requests)

        proxy.use(cassette)  # replay: record mode none, offline
        assert run_tileset(proxy.url) == recorded
        assert {e.source for e in proxy.journal.entries} == {"cassette"}
        assert len(creator.requests) == polls_seen
    with pytest.raises(ReplayProxyError, match="not running"):
        proxy.use()
    with pytest.raises(ConfigError, match="forward_port"):
        ReplayProxy(forward_port=0)


# ---------------------------------------------------------------------------- the README's example


def readme_pytest_example() -> str:
    """The first Python block of the README's pytest section: what a new user copies."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing a client with pytest", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_pytest_example_passes_as_written(inner: pytest.Pytester) -> None:
    shutil.copy(ROOT / "examples" / "creator_client.py", inner.path / "creator_client.py")
    shutil.copytree(ROOT / "cassettes" / "azure-maps", inner.path / "cassettes" / "azure-maps")
    inner.makepyfile(test_readme=readme_pytest_example())
    result = run(inner)
    assert outcomes(result) == {"passed": 3}, result.stdout.str()


# ---------------------------------------------------------------------------- vcrpy's filters, JSON

FILTERED = """
import requests

from lro_client import TIMEOUT


def test_a_filtered_cassette_matches_live_requests(replay_proxy):
    replay_proxy.use("cassettes/thing.json")  # vcrpy's JSON, recorded with filter_query_parameters
    r = requests.get(replay_proxy.url + "/things/1?api_key=live-key", timeout=TIMEOUT)
    assert r.status_code == 200, r.json()["error"]["message"]
    assert r.json()["name"] == "recorded thing"
"""


def test_filter_options_and_a_json_cassette(inner: pytest.Pytester) -> None:
    """A cassette vcrpy recorded with ``filter_query_parameters=["api_key"]`` (in its JSON format) matches
    live requests that still carry the key with --replay-filter-query-parameter, or its ini key."""
    from proxy.cassette import load, save

    save(inner.path / "cassettes" / "thing.json", load(inner.path / "cassettes" / "thing.yaml"))
    inner.makepyfile(test_filtered=FILTERED)
    without = run(inner)
    assert outcomes(without) == {"failed": 1, "errors": 1}, without.stdout.str()  # and the verdict
    without.stdout.fnmatch_lines(
        ["*AssertionError: *Filter live requests the same way: --filter-query-parameter api_key*"]
    )
    assert outcomes(run(inner, "--replay-filter-query-parameter=api_key")) == {"passed": 1}
    inner.makeini(f"[pytest]\naddopts = {INNER_ADDOPTS}\nreplay_filter_query_parameters = api_key\n")
    assert outcomes(run(inner)) == {"passed": 1}
    bad = run(inner, "--replay-filter-header=bad name")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid header name 'bad name'" in bad.stderr.str()


# ---------------------------------------------------------------------------- --replay-report-html DIR

REPORTED = """
import pytest

from lro_client import run_tileset


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=0)
def test_patient(replay_proxy):
    run_tileset(replay_proxy.url)


@pytest.mark.replay_proxy("scenarios/azure-maps/tileset-succeeds.yaml", retry_after=1)
def test_impatient(replay_proxy):
    run_tileset(replay_proxy.url, honour_retry_after=False)


def test_without_the_proxy():
    pass
"""


def test_report_html_writes_a_page_per_test_and_links_the_failed_ones(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_reported=REPORTED)
    result = run(inner, "--replay-report-html", "reports")
    assert outcomes(result) == {"passed": 3, "errors": 1}, result.stdout.str()
    pages = sorted(p.name for p in (inner.path / "reports").iterdir())
    assert pages == ["test_reported.py_test_impatient.html", "test_reported.py_test_patient.html"]
    impatient = (inner.path / "reports" / pages[0]).read_text(encoding="utf-8")
    assert "replay-proxy report: test_reported.py::test_impatient" in impatient
    assert '<li id="v1" class="violation"><span class="rule">retry-after</span>' in impatient
    assert "no violations" in (inner.path / "reports" / pages[1]).read_text(encoding="utf-8")
    out = result.stdout.str()
    link = (inner.path / "reports" / pages[0]).resolve().as_uri()
    assert "test_reported.py::test_impatient: report: " in out and link in out  # the failed one, linked
    assert (inner.path / "reports" / pages[1]).resolve().as_uri() not in out  # not the passing one
    assert "replay-proxy: 2 HTML report(s) in" in out


def test_the_lean_engine_serves_the_same_session_switching(inner: pytest.Pytester) -> None:
    """--replay-engine lean (and ini replay_engine): the fixture, the marker, use() and the verdict work
    the same; there is no forward-proxy listener (proxy_url is empty)."""
    inner.makepyfile(test_switching=SWITCHING)
    inner.makeini(f"[pytest]\naddopts = {INNER_ADDOPTS}\nreplay_engine = lean\n")
    result = run(inner, "-W", "error::pytest.PytestUnknownMarkWarning")
    assert outcomes(result) == {"passed": 7}, result.stdout.str()
    lines = (inner.path / "out" / "proxies.txt").read_text().splitlines()
    assert all(len(line.split()) == 3 for line in lines), lines  # name, url, id: no proxy_url
    result = run(inner, "--replay-engine", "lean", "--replay-record-mode", "once")
    assert "--replay-engine lean replays and plays only" in result.stderr.str()
