"""``replay-proxy drift``: a recording checked against a loopback upstream that changed its API since.

The upstream (tests/upstream.py ``/api/``) serves version 1 while the proxy records a client's LRO flow,
then version 2 (the status URL moved to Operation-Location, no Retry-After, "InProgress" for "Running",
fields removed, retyped and added, an endpoint gone) while drift re-sends the recording.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy import cassette
from proxy.drift import Step, compare
from proxy.model import Interaction, Request, Response
from proxy.server import ReplayProxy
from tests.upstream import Upstream

SECRET = "drift-canary-token-5c6d"


def drift(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "drift", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Upstream, Path]]:
    """A cassette of version 1: a job started, polled to the end, its item read, a legacy endpoint."""
    path = tmp_path / "jobs.yaml"
    with Upstream() as up:
        with ReplayProxy(path, upstream=up.url) as p:
            http = requests.Session()
            http.trust_env = False
            http.headers["Authorization"] = f"Bearer {SECRET}"
            start = http.post(p.url + "/api/jobs", timeout=10)
            assert start.status_code == 202
            while (poll := http.get(start.headers["Location"], timeout=10)).json()["status"] != "Succeeded":
                pass
            http.get(poll.json()["resourceLocation"], timeout=10)
            http.get(p.url + "/api/legacy", timeout=10)
        assert SECRET not in path.read_text()
        yield up, path


def test_an_unchanged_api_has_no_drift(recorded: tuple[Upstream, Path]) -> None:
    up, path = recorded
    seen = len(up.requests)
    result = drift(
        path.parent, "jobs.yaml", "--upstream", up.url, "--unsafe", "-H", "Authorization: Bearer live"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"drift of jobs.yaml against {up.url}: 6 requests sent"
    assert result.stdout.splitlines()[-1] == "no drift"
    sent = up.requests[seen:]
    assert [r["path"] for r in sent] == [
        "/api/jobs",
        *["/api/jobs/operations/job2"] * 3,  # the new job's status URL, followed as a client would
        "/api/items/job2",
        "/api/legacy",
    ]
    assert all(r["headers"]["Authorization"] == "Bearer live" for r in sent)


def test_a_changed_api_is_reported_by_severity(recorded: tuple[Upstream, Path]) -> None:
    up, path = recorded
    up.api = 2
    result = drift(path.parent, "jobs.yaml", "--upstream", up.url, "--unsafe")
    assert result.returncode == 3, result.stdout + result.stderr
    out = result.stdout
    lines = [" ".join(line.split()) for line in out.splitlines()]

    def has(severity: str, category: str, text: str) -> bool:
        return any(line.startswith(f"{severity} {category} ") and text in line for line in lines)

    assert has(
        "breaking", "lro-header", "POST /api/jobs: Location vanished (the recording had it) (jobs.yaml:2)"
    )
    assert has("breaking", "lro-header", "POST /api/jobs: Retry-After vanished")
    assert has(
        "warning", "lro-header", "POST /api/jobs: Operation-Location appeared (the recording had none)"
    )
    assert has(
        "breaking",
        "status-vocabulary",
        "GET /api/jobs/operations/job1: operation status InProgress, which the recording never had "
        "(it had Running, Succeeded)",
    )
    assert has(
        "warning", "status-vocabulary", "recorded operation status Running never came (live: InProgress"
    )
    assert has("info", "json-field", "GET /api/jobs/operations/job1: $.percentComplete added (number)")
    assert has("breaking", "json-field", "GET /api/items/job1: $.name removed (string)")
    assert has("breaking", "json-field", "GET /api/items/job1: $.size retyped: number -> string")
    assert has("info", "json-field", "GET /api/items/job1: $.tags added (array)")
    assert has("breaking", "status", "GET /api/legacy: status 410 where the recording had 200")
    assert has("breaking", "lro-header", "GET /api/jobs/operations/job1: Retry-After vanished")
    severities = [line.split()[0] for line in lines if line.split()[0] in ("breaking", "warning", "info")]
    assert severities == sorted(severities, key=["breaking", "warning", "info"].index)  # worst first
    assert "note: POST /api/jobs: sent without Authorization (redacted in the cassette;" in out
    assert "replay-proxy drift: " in result.stderr and "breaking" in result.stderr


def test_unsafe_methods_are_not_sent_unless_asked(recorded: tuple[Upstream, Path]) -> None:
    up, path = recorded
    seen = len(up.requests)
    result = drift(path.parent, "jobs.yaml", "--upstream", up.url)
    assert (
        "; 1 recorded request not sent (unsafe method: --unsafe sends them;" in result.stdout.splitlines()[0]
    )
    assert all(r["method"] == "GET" for r in up.requests[seen:])


def test_fail_on_sets_the_least_severity_that_fails(recorded: tuple[Upstream, Path]) -> None:
    """A recording of the item read without its ``name`` field: live has one more field (info only)."""
    up, path = recorded
    (item,) = [i for i in cassette.load(path) if "/api/items/" in i.request.url]
    doc = json.loads(item.response.body)
    del doc["name"]
    edited = Interaction(item.request, item.response.replace(body=json.dumps(doc).encode()))
    cassette.save(path.parent / "item.yaml", [edited])
    strict = drift(path.parent, "item.yaml", "--upstream", up.url)
    assert strict.returncode == 3
    assert "info json-field GET /api/items/job1: $.name added (string)" in " ".join(strict.stdout.split())
    assert drift(path.parent, "item.yaml", "--upstream", up.url, "--fail-on", "warning").returncode == 0
    up.api = 2
    assert drift(path.parent, "item.yaml", "--upstream", up.url, "--fail-on", "breaking").returncode == 3


def test_an_error_instead_of_an_answer_is_one_finding_and_ends_the_polling(
    recorded: tuple[Upstream, Path],
) -> None:
    """Without --unsafe the polls ask about the recorded job; a service that forgot it answers 404: one
    status finding (not its error body's fields), and no polling on past what the recording did."""
    _, path = recorded
    with Upstream() as other:  # a service that never knew job1
        seen = len(other.requests)
        result = drift(path.parent, "jobs.yaml", "--upstream", other.url)
        polls = [r for r in other.requests[seen:] if "/operations/" in r["path"]]
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert result.returncode == 3
    job = [line for line in lines if "/api/jobs/operations/job1" in line and not line.startswith("note")]
    assert len(job) == 1, lines
    assert job[0].startswith(
        "breaking status GET /api/jobs/operations/job1: status 404 where the recording had 200"
    )
    assert len(polls) == 3  # as many as recorded


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml", "--upstream", "http://127.0.0.1:9"], "missing.yaml: cassette not found"),
        (["jobs.yaml", "--upstream", "ftp://x"], "bad upstream URL 'ftp://x'"),
        (["jobs.yaml", "--upstream", "http://127.0.0.1:9"], "the upstream did not answer"),
        (["jobs.yaml", "--upstream", "http://127.0.0.1:9", "-H", "nocolon"], "is not 'NAME: VALUE'"),
    ],
)
def test_bad_input_exits_2(recorded: tuple[Upstream, Path], args: list[str], message: str) -> None:
    _, path = recorded
    result = drift(path.parent, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def _step(recorded: list[Response], live: list[Response]) -> list[tuple[str, str, str]]:
    step = Step(0, [Interaction(Request("GET", "http://h/x"), r) for r in recorded], list(live))
    return list(compare(step))


def _json_response(doc: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, "", (("Content-Type", "application/json"), *headers), json.dumps(doc).encode())


def test_null_against_a_value_is_info_and_a_new_success_code_a_warning() -> None:
    recorded = [_json_response({"a": None, "b": 1})]
    found = _step(recorded, [_json_response({"a": "x", "b": 1}), _json_response({"a": "x", "b": 1}, 201)])
    assert found == [
        ("warning", "status", "status 201 where the recording had 200"),  # beside the recorded 200
        ("info", "json-field", "$.a was null, now string"),
    ]
    instead = _step(recorded, [_json_response({"a": None, "b": 1}, 201)])  # none of the recorded codes
    assert instead == [("breaking", "status", "status 201 where the recording had 200")]


def test_a_body_that_is_no_longer_json_is_breaking_and_nested_removals_are_reported_once() -> None:
    gone = _step([_json_response({"a": {"b": {"c": 1}}})], [Response(200, "", (), b"<html>")])
    assert gone == [("breaking", "json-field", "the body is no longer JSON")]
    nested = _step([_json_response({"a": {"b": {"c": 1}}, "d": [1]})], [_json_response({"d": ["1"]})])
    assert nested == [
        ("breaking", "json-field", "$.a removed (object)"),
        ("breaking", "json-field", "$.d[] retyped: number -> string"),
    ]
