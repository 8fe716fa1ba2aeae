"""The control API (/__replay-proxy/, proxy/control.py) through real HTTP: every endpoint and verb, the
refusals that change nothing, operations steered per status style, cancel requests and held starts in
scenarios, the token and loopback rules, forward mode, and 32 clients polling it at once."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from azure.core.exceptions import HttpResponseError
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LROBasePolling
from azure.core.rest import HttpRequest
from azure.mgmt.core.polling.arm_polling import ARMPolling

from examples.creator_client import CreatorClient, OperationTimeout
from proxy import verdict
from proxy.control import ENDPOINTS
from proxy.errors import ConfigError
from proxy.operations import recognise
from proxy.server import ReplayProxy
from tests.conftest import ENGINES, ROOT
from tests.test_dialects import INTERVAL as SDK_INTERVAL
from tests.test_dialects import _client as sdk_client
from tests.upstream import Upstream

TILESET = "scenarios/azure-maps/tileset-succeeds.yaml"
FAILS = "scenarios/azure-maps/tileset-fails.yaml"
CANCEL = "scenarios/examples/cancel.yaml"
HELD = "scenarios/examples/held-job.yaml"
C = "/__replay-proxy/"

pytest_plugins = ["pytester"]


@contextlib.contextmanager
def running(confdir: Path, **options: Any) -> Iterator[tuple[ReplayProxy, httpx.Client]]:
    options.setdefault("root", ROOT)
    with (
        ReplayProxy(confdir=confdir, **options) as proxy,
        httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as http,
    ):
        yield proxy, http


def state(proxy: ReplayProxy, http: httpx.Client) -> tuple[Any, ...]:
    """What a refused request must leave as it was: the journal, the operations, what is served."""
    journal = http.get(C + "journal").json()
    operations = http.get(C + "operations").json()
    return journal, operations, dict(proxy.replay_options)


def start_tileset(http: httpx.Client, dataset: str = "my-dataset") -> str:
    r = http.post(f"/tilesets?api-version=2.0&datasetId={dataset}")
    assert r.status_code == 202, r.text
    return r.headers["Location"]


# -- use, reset, journal, verdict -----------------------------------------------------------------------


def test_use_loads_scenarios_and_a_client_runs_against_them(confdir: Path) -> None:
    with running(confdir) as (proxy, http):
        r = http.post(C + "use", json={"scenarios": [TILESET], "retry_after": 0.01, "clock": "virtual"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {
            "loaded": {
                "scenarios": [TILESET],
                "cassette": None,
                "record_mode": "none",
                "retry_after": 0.01,
                "clock": "virtual",
                "upstream": None,
            }
        }
        tileset = CreatorClient(base_url=proxy.url).create_tileset("my-dataset")
        assert tileset["datasetId"] == "my-dataset"
        assert http.get(C + "verdict").json() == {"ok": True, "violations": []}
        # control requests are not in the journal; the client's are
        entries = http.get(C + "journal").json()["entries"]
        assert [e["method"] for e in entries] == ["POST", "GET", "GET", "GET", "GET", "GET"]
        assert all(C not in e["url"] for e in entries)


def test_use_a_cassette_and_keys_are_optional(confdir: Path) -> None:
    with running(confdir, retry_after=0.02) as (_proxy, http):
        r = http.post(C + "use", json={"cassette": "cassettes/azure-maps/tileset-succeeds.yaml"})
        assert r.status_code == 200, r.text
        loaded = r.json()["loaded"]
        assert loaded["cassette"] == "cassettes/azure-maps/tileset-succeeds.yaml"
        assert loaded["scenarios"] == [] and loaded["retry_after"] == 0.02  # kept from the constructor
        assert http.post(C + "use", json={"cassette": None, "retry_after": None}).json()["loaded"] == {
            **loaded,
            "cassette": None,
            "retry_after": None,
        }
        assert http.post(C + "use").status_code == 200  # an empty body: serve nothing


def test_paths_are_relative_to_the_root_and_use_reads_nothing_outside_it(
    confdir: Path, tmp_path: Path
) -> None:
    inside = tmp_path / "suite"
    (inside / "s").mkdir(parents=True)
    (inside / "s" / "x.yaml").write_text((ROOT / TILESET).read_text())
    outside = tmp_path / "secret.yaml"
    outside.write_text((ROOT / TILESET).read_text())
    (inside / "s" / "link.yaml").symlink_to(outside)
    with running(confdir, root=inside, scenarios=[inside / "s" / "x.yaml"]) as (proxy, http):
        before = state(proxy, http)
        for given in (str(outside), "../secret.yaml", "s/../../secret.yaml", "s/link.yaml"):
            for body in ({"scenarios": [given]}, {"cassette": given}):
                r = http.post(C + "use", json=body)
                assert r.status_code == 403, (given, r.text)
                assert (
                    "is outside the root" in r.json()["error"] and str(inside.resolve()) in r.json()["error"]
                )
        assert state(proxy, http) == before
        assert http.post(C + "use", json={"scenarios": ["s/x.yaml"]}).status_code == 200


def test_a_bad_scenario_is_400_with_the_problems_check_prints_and_changes_nothing(
    confdir: Path, tmp_path: Path
) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "bad.yaml").write_text(
        "operations:\n  - start: {method: POST, path: /x}\n    steps:\n      - stauts: Running\n"
    )
    (tmp_path / "s" / "ok.yaml").write_text((ROOT / TILESET).read_text())
    printed = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "s/bad.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 2
    with running(confdir, root=tmp_path, scenarios=[tmp_path / "s" / "ok.yaml"]) as (proxy, http):
        start_tileset(http)
        before = state(proxy, http)
        r = http.post(C + "use", json={"scenarios": ["s/bad.yaml"]})
        assert r.status_code == 400
        assert r.json()["problems"] == printed.stderr.splitlines()
        assert r.json()["problems"][0].startswith("s/bad.yaml:4:")
        missing = http.post(C + "use", json={"scenarios": ["s/no-such.yaml"]})
        assert missing.status_code == 400 and missing.json()["problems"] == ["s/no-such.yaml: file not found"]
        no_cassette = http.post(C + "use", json={"cassette": "s/no-such-cassette.yaml"})
        assert no_cassette.status_code == 400
        assert no_cassette.json()["error"].startswith("s/no-such-cassette.yaml: no such file")
        assert state(proxy, http) == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"scenario": ["x.yaml"]}', "unknown key scenario; use takes: scenarios, cassette, retry_after"),
        (b'{"scenarios": "x.yaml"}', "scenarios must be a list of paths"),
        (b'{"cassette": 3}', "cassette must be a path or null"),
        (b'{"retry_after": -1}', "retry_after must be zero or more seconds"),
        (b'{"retry_after": "fast"}', "retry_after must be zero or more seconds"),
        (b'{"clock": "sundial"}', 'clock must be "real" or "virtual"'),
    ],
)
def test_bad_use_requests_are_400_and_change_nothing(confdir: Path, body: bytes, says: str) -> None:
    with running(confdir, scenarios=[ROOT / TILESET]) as (proxy, http):
        start_tileset(http)
        before = state(proxy, http)
        r = http.post(C + "use", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert says in r.json()["error"]
        assert state(proxy, http) == before


def test_reset_starts_afresh(confdir: Path) -> None:
    with running(confdir, scenarios=[ROOT / TILESET]) as (_proxy, http):
        status_url = start_tileset(http)
        assert http.get(status_url).json()["status"] == "NotStarted"
        assert len(http.get(C + "operations").json()["operations"]) == 1
        r = http.post(C + "reset")
        assert r.status_code == 200 and r.json()["loaded"]["scenarios"] == [TILESET]
        assert http.get(C + "journal").json() == {"entries": []}
        assert http.get(C + "operations").json() == {"operations": []}
        assert http.get(status_url).status_code == 599  # the operation is gone


def test_journal_entries_carry_what_the_contract_lists_with_secrets_redacted(confdir: Path) -> None:
    with running(confdir, scenarios=[ROOT / TILESET], retry_after=0.05) as (proxy, http):
        secret = "c0ffee00control5ubkey0123456789ab"
        r = http.post(
            "/tilesets?api-version=2.0&datasetId=d1",
            headers={"Ocp-Apim-Subscription-Key": secret, "X-Trace": "t-1"},
            content=b"12345",
        )
        http.get(r.headers["Location"], headers={"Authorization": f"Bearer {secret}"})
        http.get("/nowhere")
        raw = http.get(C + "journal")
        assert secret not in raw.text
        assert secret not in repr(proxy.journal.entries)  # sealed: shown only through the redactor
        start, poll, unmatched = raw.json()["entries"]
    assert start["method"] == "POST" and start["status"] == 202 and start["source"] == "scenario"
    assert start["url"] == f"{proxy.url}/tilesets?api-version=2.0&datasetId=d1"
    assert start["time"].endswith("Z") and start["time"][:4].isdigit()
    assert start["request_body_size"] == 5
    assert start["request_headers"]["X-Trace"] == ["t-1"]
    assert start["request_headers"]["Host"] == [proxy.url.removeprefix("http://")]  # not the upstream's
    assert start["request_headers"]["Ocp-Apim-Subscription-Key"] == ["<REDACTED-1>"]
    assert start["operation"] and start["operation_status"] == "NotStarted" and start["poll"] is None
    assert poll["operation"] == start["operation"] and poll["poll"] == 1
    assert poll["operation_status"] == "NotStarted" and poll["terminal"] is False
    assert poll["retry_after"] == 0.05  # what was sent, after --retry-after
    assert poll["request_headers"]["Authorization"] == ["Bearer <REDACTED-1>"]
    assert poll["request_body_size"] == 0
    assert unmatched["status"] == 599 and unmatched["source"] == "no-match"
    assert "no scenario rule matches" in unmatched["detail"]


def test_the_verdict_is_the_plugins_and_skip_leaves_checks_out(confdir: Path) -> None:
    with running(confdir, scenarios=[ROOT / TILESET], retry_after=0.2) as (proxy, http):
        status_url = start_tileset(http)
        http.get(status_url)
        http.get(status_url)  # at once: earlier than the 0.2 s it was told
        r = http.get(C + "verdict")
        expected = verdict.check(proxy.journal.entries)
        assert r.status_code == 200
        assert r.json() == {
            "ok": False,
            "violations": [{"check": v.rule, "message": v.message} for v in expected],
        }
        assert {v["check"] for v in r.json()["violations"]} == {"retry-after", "unfinished"}
        skipped = http.get(C + "verdict", params={"skip": "retry-after,unfinished"})
        assert skipped.json() == {"ok": True, "violations": []}
        assert http.get(C + "verdict?skip=unfinished&skip=retry-after").json()["ok"] is True
        bad = http.get(C + "verdict", params={"skip": "retry-afterr"})
        assert bad.status_code == 400 and "unknown check retry-afterr" in bad.json()["error"]
        assert bad.json()["checks"] == list(verdict.RULES)
        assert http.get(C + "verdict", params={"skp": "x"}).status_code == 400


def test_unknown_paths_are_404_with_the_list_and_wrong_methods_405(confdir: Path) -> None:
    with running(confdir, scenarios=[ROOT / TILESET]) as (proxy, http):
        start_tileset(http)
        before = state(proxy, http)
        for method, path in [
            ("GET", C + "nope"),
            ("GET", C),
            ("POST", C + "operations/x"),
            ("GET", C + "use/x"),
        ]:
            r = http.request(method, path)
            assert r.status_code == 404, (method, path)
            assert r.json()["endpoints"] == list(ENDPOINTS)
            assert "no control endpoint" in r.json()["error"]
        for method, path in [("GET", C + "use"), ("POST", C + "journal"), ("GET", C + "operations/x/hold")]:
            r = http.request(method, path)
            assert r.status_code == 405, (method, path)
        assert state(proxy, http) == before


# -- operations ---------------------------------------------------------------------------------------------


def op_action(http: httpx.Client, op_id: str, action: str, body: Any = None) -> httpx.Response:
    return (
        http.post(f"{C}operations/{op_id}/{action}", json=body)
        if body is not None
        else http.post(f"{C}operations/{op_id}/{action}")
    )


def test_operations_lists_and_every_verb_steers(confdir: Path) -> None:
    with running(confdir, scenarios=[ROOT / TILESET]) as (_proxy, http):
        status_url = start_tileset(http)
        (op,) = http.get(C + "operations").json()["operations"]
        assert op["status"] == "NotStarted" and op["polls"] == 0 and op["held"] is False
        assert op["status_url"] == status_url and op["rule"] == "tileset"
        op_id = op["id"]
        held = op_action(http, op_id, "hold")
        assert held.status_code == 200 and held.json()["operation"]["held"] is True
        statuses = [http.get(status_url).json()["status"] for _ in range(5)]
        assert statuses == ["NotStarted"] * 5  # held: the scripted Running never comes
        assert op_action(http, op_id, "advance").json()["operation"]["step"] == 1
        assert [http.get(status_url).json()["status"] for _ in range(3)] == ["Running"] * 3  # still held
        released = op_action(http, op_id, "release").json()["operation"]
        assert released["held"] is False
        # Running lasts two polls, none of which came while held; then Succeeded
        assert [http.get(status_url).status_code for _ in range(3)] == [200, 200, 201]
        assert http.get(status_url).json()["status"] == "Succeeded"

        second = start_tileset(http)
        op2 = http.get(C + "operations").json()["operations"][-1]["id"]
        assert op_action(http, op2, "advance", {"steps": 2}).json()["operation"]["step"] == 2
        assert http.get(second).json()["status"] == "Succeeded"

        third = start_tileset(http)
        op3 = http.get(C + "operations").json()["operations"][-1]["id"]
        failed = op_action(http, op3, "fail", {"error": {"code": "NoGeometry", "message": "No geometry."}})
        assert failed.json()["operation"]["ended_by"] == "fail"
        assert failed.json()["operation"]["status"] == "Failed"  # what its next poll reports
        assert failed.json()["operation"]["terminal"] is True
        assert http.get(third).json()["error"] == {"code": "NoGeometry", "message": "No geometry."}
        assert http.get(third).json()["status"] == "Failed"
        conflict = op_action(http, op3, "advance")
        assert conflict.status_code == 409 and "release it first" in conflict.json()["error"]

        fourth = start_tileset(http)
        op4 = http.get(C + "operations").json()["operations"][-1]["id"]
        op_action(http, op4, "cancel")
        assert http.get(fourth).json()["status"] == "Canceled"
        assert op_action(http, op4, "succeed").status_code == 200
        assert http.get(fourth).status_code == 201  # succeed replaced the cancel: resource created
        listed = {o["id"]: o for o in http.get(C + "operations").json()["operations"]}
        assert listed[op4]["status"] == "Succeeded" and listed[op4]["terminal"] is True


@pytest.mark.parametrize(
    ("op_id", "action", "body", "status", "says"),
    [
        ("unknown-id", "hold", None, 404, "no operation 'unknown-id' was started since the last reset"),
        (None, "explode", None, 404, "unknown action 'explode'; choose from: hold, advance, succeed"),
        (None, "advance", {"steps": 0}, 400, "steps must be a whole number of 1 or more"),
        (None, "advance", {"steps": "2"}, 400, "steps must be a whole number"),
        (None, "advance", {"step": 2}, 400, "unknown key step; advance takes: steps"),
        (None, "hold", {"steps": 1}, 400, "unknown key steps; hold takes no body"),
        (None, "fail", {"error": "boom"}, 400, "error must be an object"),
        (None, "fail", {"error": {"message": "no code"}}, 400, "error must be an OData error"),
        (None, "succeed", "not json", 400, "the body is not JSON"),
    ],
)
def test_bad_operation_requests_are_4xx_and_change_nothing(
    confdir: Path, op_id: str | None, action: str, body: Any, status: int, says: str
) -> None:
    with running(confdir, scenarios=[ROOT / TILESET]) as (proxy, http):
        start_tileset(http)
        before = state(proxy, http)
        target = op_id or before[1]["operations"][0]["id"]
        if body == "not json":
            r = http.post(f"{C}operations/{target}/{action}", content=b"{oops")
        else:
            r = op_action(http, target, action, body)
        assert r.status_code == status, r.text
        assert says in r.json()["error"]
        assert state(proxy, http) == before


def test_steering_with_nothing_loaded_is_404(confdir: Path) -> None:
    with running(confdir) as (_, http):
        r = op_action(http, "x", "hold")
        assert r.status_code == 404 and "no scenario is loaded" in r.json()["error"]
        assert http.get(C + "operations").json() == {"operations": []}


# -- cancel, hold and fail, per status style ---------------------------------------------------------------

STYLES = {
    "creator-v1": ("/tilesets?api-version=2.0", "Location", ("DELETE", "{url}"), 200),
    "creator-v2": ("/conversions?udid=u1", "Operation-Location", ("POST", "{url}:cancel"), 202),
    "aip-151": ("/v1/datasets/d1:export", None, ("POST", "{url}:cancel"), 200),
}


def start_styled(http: httpx.Client, style: str) -> tuple[str, str]:
    """Start one operation of the cancel example in ``style``: (status URL, operation id)."""
    path, header, _, _ = STYLES[style]
    r = http.post(path)
    assert r.status_code in (200, 202), r.text
    url = f"{http.base_url}/v1/{r.json()['name']}" if header is None else r.headers[header]
    op_id = http.get(C + "operations").json()["operations"][-1]["id"]
    return url, op_id


def status_of(http: httpx.Client, url: str) -> tuple[str, bool, Any]:
    body = http.get(url).json()
    if "metadata" in body:
        return body["metadata"]["status"], body["done"], body.get("error")
    return body["status"], body["status"].lower() in ("succeeded", "failed", "canceled"), body.get("error")


@pytest.mark.parametrize("style", list(STYLES))
def test_a_cancel_request_of_the_scenario_cancels(confdir: Path, style: str) -> None:
    with running(confdir, scenarios=[ROOT / CANCEL], retry_after=0) as (proxy, http):
        url, op_id = start_styled(http, style)
        assert status_of(http, url)[1] is False
        (method, template), answered = STYLES[style][2], STYLES[style][3]
        r = http.request(method, template.format(url=url))
        assert r.status_code == answered, r.text
        status, done, error = status_of(http, url)
        assert status.lower() == "canceled" and done
        if style == "aip-151":
            assert r.json() == {} and error == {"code": 1, "message": "The operation was cancelled."}
        listed = http.get(C + "operations").json()["operations"][-1]
        assert listed["ended_by"] == "cancel" and listed["terminal"] is True
        assert [e.status for e in proxy.journal.entries if "cancel of operation" in e.detail] == [answered]
        assert http.get(C + "verdict").json() == {"ok": True, "violations": []}
        # a cancel of an unknown operation is not answered by the rule
        assert http.request(method, template.format(url=url.replace(op_id, "nope"))).status_code == 599


@pytest.mark.parametrize("style", list(STYLES))
def test_hold_then_fail_per_style(confdir: Path, style: str) -> None:
    with running(confdir, scenarios=[ROOT / CANCEL]) as (_, http):
        url, op_id = start_styled(http, style)
        op_action(http, op_id, "hold")
        first = status_of(http, url)
        assert [status_of(http, url) for _ in range(4)] == [first] * 4 and not first[1]
        op_action(http, op_id, "fail", {"error": {"code": "Quota", "message": "Out of quota."}})
        status, done, error = status_of(http, url)
        assert done and status.lower() == "failed"
        if style == "aip-151":
            assert error == {"code": 2, "message": "Out of quota."}  # google.rpc.Status: UNKNOWN
        else:
            assert error == {"code": "Quota", "message": "Out of quota."}


# -- the location and arm styles, with the real azure-core / azure-mgmt-core pollers ---------------------

SUB = "/subscriptions/s1/resourceGroups/rg/providers"
NEW_STYLES: dict[str, tuple[str, str, Any]] = {
    # style: (start method, start path, polling method); cancel.yaml's batch, storage account, network
    "location": ("POST", "/batches", LROBasePolling),
    "arm": ("PUT", f"{SUB}/Microsoft.Storage/storageAccounts/sa1", ARMPolling),
    "arm-none": ("PUT", f"{SUB}/Microsoft.Network/virtualNetworks/vn1", ARMPolling),
}
CANCELS = {  # the scenario's cancel request of each: (method, path template), what it answers
    "location": ("DELETE", "{status}", 204),
    "arm": ("DELETE", "{start}", 200),
    "arm-none": ("POST", "{start}/cancel", 200),
}
NEW_CLEAN = {"ok": True, "violations": []}


def sdk_start(
    proxy: ReplayProxy, client: Any, style: str, *, hold: bool = False
) -> tuple[LROPoller[Any], str]:
    """Start one operation of the cancel example in ``style`` and hand it to azure-core's LROPoller (which
    polls in its own thread); ``hold``: held before the poller's first poll. (poller, operation id)"""
    method, path, polling = NEW_STYLES[style]
    initial = client.send_request(HttpRequest(method, proxy.url + path), _return_pipeline_response=True)
    op = proxy.operations[-1]
    if hold:
        op.hold()
    poller: LROPoller[Any] = LROPoller(
        client, initial, lambda r: r.http_response.text(), polling(timeout=SDK_INTERVAL)
    )
    return poller, op.id


def polls_of(proxy: ReplayProxy, op_id: str) -> list[tuple[int, str | None]]:
    """(HTTP status, operation status) of each poll of ``op_id`` in the journal."""
    return [(e.status, e.op_status) for e in proxy.journal.entries if e.operation == op_id and e.poll]


@pytest.mark.parametrize("end", ["succeed", "fail", "cancel"])
@pytest.mark.parametrize("style", list(NEW_STYLES))
def test_hold_advance_and_end_with_the_sdk_pollers(confdir: Path, style: str, end: str) -> None:
    """Held: the poller polls and nothing moves; advance: one step on; then the end the SDK sees."""
    with (
        running(confdir, scenarios=[ROOT / CANCEL], retry_after=0.01) as (proxy, http),
        sdk_client(proxy.url) as client,
    ):
        poller, op_id = sdk_start(proxy, client, style, hold=True)
        poller.wait(0.4)
        assert not poller.done()
        held = polls_of(proxy, op_id)
        first = (202, "NotStarted") if style == "location" else (200, "Accepted")
        assert len(held) > 3 and set(held) == {first}
        (listed,) = http.get(C + "operations").json()["operations"]
        assert (listed["held"], listed["step"], listed["terminal"]) == (True, 0, False)
        assert op_action(http, op_id, "advance").status_code == 200
        poller.wait(0.2)
        assert not poller.done() and proxy.operations[-1].state.stage == 1
        nxt = {"location": (202, "Running"), "arm": (200, "InProgress"), "arm-none": (200, "Updating")}
        assert polls_of(proxy, op_id)[-1] == nxt[style]
        error = {"error": {"code": "Quota", "message": "Out of quota."}} if end == "fail" else None
        assert op_action(http, op_id, end, error).status_code == 200
        if end == "succeed":
            result = json.loads(poller.result(timeout=30))
            if style == "location":  # the result is the last poll's answer
                assert result == {"summary": {"successfulRequests": 1, "totalRequests": 1}}
            else:
                assert result["properties"] == {"provisioningState": "Succeeded"}
            assert poller.status() == "Succeeded"
        else:
            with pytest.raises(HttpResponseError) as raised:
                poller.result(timeout=30)
            assert poller.status() == ("Canceled" if end == "cancel" and style != "location" else "Failed")
            if style == "location":  # no status vocabulary: an error status code, the OData error says which
                assert raised.value.status_code == 400
                code = "Quota" if end == "fail" else "Canceled"
                assert raised.value.error is not None and raised.value.error.code == code
            elif end == "fail":
                assert raised.value.error is not None and raised.value.error.code == "Quota"
        entries = proxy.journal.entries
        final = [e for e in entries if e.operation == op_id and e.poll is None and e.method == "GET"]
        if style == "arm" and end == "succeed":  # the final GET of the PUT's URL, after the monitor said so
            assert [e.path for e in final] == [NEW_STYLES[style][1]] and entries[-1] is final[0]
        else:
            assert final == []  # no final GET after a failure or a cancel (nor ever in location, arm-none)
        [seen] = recognise(entries)
        outcome = {"succeed": "succeeded", "fail": "failed", "cancel": "canceled"}[end]
        assert (seen.dialect, seen.outcome) == (style.split("-")[0], outcome)
        statuses = [e.op_status for e in entries if e.poll]
        assert statuses[-1] == {"succeed": "Succeeded", "fail": "Failed", "cancel": "Canceled"}[end]
        assert http.get(C + "verdict", params={"skip": "retry-after-202"}).json() == NEW_CLEAN


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("style", list(NEW_STYLES))
def test_a_cancel_request_of_the_scenario_cancels_with_the_sdk_pollers(
    confdir: Path, style: str, engine: str
) -> None:
    with (
        running(confdir, scenarios=[ROOT / CANCEL], retry_after=0.01, engine=engine) as (proxy, http),
        sdk_client(proxy.url) as client,
    ):
        poller, op_id = sdk_start(proxy, client, style)
        poller.wait(0.2)
        assert not poller.done()  # it runs until canceled
        (method, template), answered = CANCELS[style][:2], CANCELS[style][2]
        op = proxy.operations[-1]
        start_path = NEW_STYLES[style][1]
        r = http.request(method, template.format(status=op.state.status_url, start=start_path))
        assert r.status_code == answered, r.text
        if style == "arm":
            assert r.json()["status"] == "Canceled"
        elif style == "arm-none":
            assert r.json()["properties"] == {"provisioningState": "Canceled"}
        else:
            assert r.content == b""
        with pytest.raises(HttpResponseError) as raised:
            poller.result(timeout=30)
        if style == "location":
            assert raised.value.status_code == 400
            assert raised.value.error is not None and raised.value.error.code == "Canceled"
        else:
            assert poller.status() == "Canceled"
        listed = http.get(C + "operations").json()["operations"][-1]
        assert (listed["ended_by"], listed["terminal"], listed["status"]) == ("cancel", True, "Canceled")
        cancels = [e for e in proxy.journal.entries if "cancel of operation" in e.detail]
        assert [(e.method, e.status, e.operation) for e in cancels] == [(method, answered, op_id)]
        assert http.get(C + "verdict", params={"skip": "retry-after-202"}).json() == NEW_CLEAN
        [seen] = recognise(proxy.journal.entries)  # what the verdict reads: one operation, canceled
        assert (seen.dialect, seen.outcome, seen.final) == (style.split("-")[0], "canceled", None)
        # a second operation at another URL is not canceled by the first one's cancel request
        other = start_path.replace("1", "2")
        assert http.request(method, template.format(status=op.state.status_url, start=other)).status_code in (
            (599,) if style != "location" else (204,)
        )


def test_a_held_start_lets_a_client_time_out_then_release_lets_it_finish(confdir: Path) -> None:
    """The client gives up at its own deadline (0.3 s, polling every 0.01 s): no waiting for a real job."""
    with running(confdir, scenarios=[ROOT / HELD], retry_after=0.01) as (proxy, http):
        client = CreatorClient(base_url=proxy.url, deadline=0.3)
        with pytest.raises(OperationTimeout, match="still Running"):
            client.create_tileset("d1")
        (op,) = proxy.operations
        assert op.state.held and op.status == "Running" and op.polls > 5
        off = http.get(C + "verdict", params={"skip": "unfinished"}).json()
        assert off == {"ok": True, "violations": []}
        assert [v["check"] for v in http.get(C + "verdict").json()["violations"]] == ["unfinished"]
        http.post(C + "reset")
        # released as soon as it starts: the same client now finishes
        released: list[str] = []

        def release_when_started() -> None:
            for _ in range(500):
                ops = proxy.operations
                if ops:
                    released.append(ops[0].release().id)
                    return
                threading.Event().wait(0.01)

        helper = threading.Thread(target=release_when_started)
        helper.start()
        assert CreatorClient(base_url=proxy.url, deadline=10).create_tileset("d2")["id"]
        helper.join(10)
        assert released


# -- Python: ReplayProxy.operations ------------------------------------------------------------------------


def test_replay_proxy_operations_steer_from_python(confdir: Path) -> None:
    with running(confdir, scenarios=[ROOT / FAILS], retry_after=0.01) as (proxy, http):
        assert proxy.operations == []
        status_url = start_tileset(http)
        ops = proxy.operations
        assert len(ops) == 1 and ops[-1].status == "NotStarted" and ops[-1].id in status_url
        ops[-1].fail({"code": "InvalidFeature", "message": "Steered from Python."})
        body = http.get(status_url).json()
        assert body["status"] == "Failed" and body["error"]["message"] == "Steered from Python."
        ops[-1].release().hold().advance(2)
        assert proxy.operations[-1].state.stage == 2
        with pytest.raises(ConfigError, match="steps must be a whole number"):
            ops[-1].advance(0)
        proxy.reset()
        with pytest.raises(ConfigError, match="the proxy was switched or reset"):
            ops[-1].succeed()


def test_the_pytest_fixture_has_operations(
    pytester: pytest.Pytester, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLAY_PROXY_CONFDIR", str(confdir))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    pytester.makepyfile(
        test_steer=f"""
        import httpx, pytest

        @pytest.mark.replay_proxy({str(ROOT / TILESET)!r})
        def test_fail_it(replay_proxy):
            r = httpx.post(replay_proxy.url + "/tilesets?datasetId=d", trust_env=False)
            replay_proxy.operations[-1].fail({{"code": "Boom", "message": "steered"}})
            body = httpx.get(r.headers["Location"], trust_env=False).json()
            assert body["status"] == "Failed" and body["error"]["code"] == "Boom"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


# -- safety --------------------------------------------------------------------------------------------------


def test_beyond_loopback_the_api_is_off_without_a_token(confdir: Path) -> None:
    with ReplayProxy(confdir=confdir, host="0.0.0.0", scenarios=[ROOT / TILESET], root=ROOT) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as http:
            start_tileset(http)
            r = http.get(C + "journal")
            assert r.status_code == 403 and "--control-token" in r.json()["error"]
            assert http.post(C + "reset").status_code == 403
            assert len(proxy.journal.entries) == 1  # not reset, and the refusals are not journaled


def test_with_a_token_every_control_request_needs_it(confdir: Path) -> None:
    token = "t0k3n-for-the-control-api"
    with ReplayProxy(
        confdir=confdir, host="0.0.0.0", scenarios=[ROOT / TILESET], root=ROOT, control_token=token
    ) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as http:
            start_tileset(http)
            for headers in ({}, {"X-Replay-Proxy-Token": "wrong"}, {"Authorization": "Bearer wrong"}):
                r = http.post(C + "reset", headers=headers)
                assert r.status_code == 401, headers
                assert "token" in r.json()["error"] and token not in r.text
            assert len(proxy.journal.entries) == 1
            assert http.get(C + "journal", headers={"X-Replay-Proxy-Token": token}).status_code == 200
            assert http.get(C + "journal", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert http.post(C + "reset", headers={"X-Replay-Proxy-Token": token}).status_code == 200
            assert proxy.journal.entries == []


def test_cli_serve_with_a_token_and_a_root(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text((ROOT / TILESET).read_text())
    proc = cli(["serve", "--port", "0", "--control-token", "s3cr3t", "--root", str(tmp_path), "-q"])
    assert "serving nothing yet" in proc.ready_line
    with httpx.Client(base_url=proc.url, trust_env=False, timeout=10) as http:
        nothing = http.post("/tilesets?datasetId=d")
        assert nothing.status_code == 599
        assert "POST /__replay-proxy/use" in nothing.json()["error"]["hint"]
        assert http.post(C + "use", json={"scenarios": ["x.yaml"]}).status_code == 401
        r = http.post(C + "use", json={"scenarios": ["x.yaml"]}, headers={"X-Replay-Proxy-Token": "s3cr3t"})
        assert r.status_code == 200, r.text
        assert start_tileset(http)
    assert proc.stop() == 0


def test_browsers_are_refused(confdir: Path) -> None:
    """A web page the developer opens must not drive the proxy on their loopback (CSRF): browsers send
    Origin on every cross-site request and every POST."""
    with running(confdir, scenarios=[ROOT / TILESET]) as (proxy, http):
        start_tileset(http)
        before = state(proxy, http)
        for method, path in [("POST", C + "reset"), ("GET", C + "journal")]:
            r = http.request(method, path, headers={"Origin": "https://evil.example"})
            assert r.status_code == 403 and "Origin" in r.json()["error"]
        assert state(proxy, http) == before


def test_control_requests_are_never_forwarded_nor_recorded(confdir: Path, tmp_path: Path) -> None:
    cassette = tmp_path / "rec.yaml"
    with Upstream() as up, running(confdir, cassette=cassette, upstream=up.url) as (_, http):
        assert http.get("/json").status_code == 200
        assert http.get(C + "journal").status_code == 200
        assert http.post(C + "nope").status_code == 404
        seen = list(up.requests)
    recorded = yaml.safe_load(cassette.read_text())["interactions"]
    assert [i["request"]["uri"].split("/", 3)[3] for i in recorded] == ["json"]
    assert all(C not in r["path"] for r in seen)


def test_forward_mode_answers_when_the_proxy_itself_is_addressed(confdir: Path) -> None:
    with ReplayProxy(confdir=confdir, mode="regular", scenarios=[ROOT / TILESET], root=ROOT) as proxy:
        with httpx.Client(trust_env=False, timeout=10) as direct:  # sent to the proxy itself
            assert direct.get(proxy.url + C + "operations").json() == {"operations": []}
        with httpx.Client(proxy=proxy.url, trust_env=False, timeout=10) as through:  # through it, to it
            assert through.get(proxy.url + C + "journal").status_code == 200
            elsewhere = through.get("http://api.example.test" + C + "journal")  # another host's path
            assert elsewhere.status_code == 599 and elsewhere.headers["x-replay-proxy"] == "no-match"
        assert [e.path for e in proxy.journal.entries] == [C + "journal"]


def test_32_clients_polling_the_control_api_at_once(confdir: Path) -> None:
    """32 threads poll the journal, the operations and the verdict while 4 clients run operations: every
    answer is 200 and whole JSON, and the clients finish as scripted."""
    errors: list[str] = []
    with running(confdir, scenarios=[ROOT / TILESET], retry_after=0.01) as (proxy, _):
        done = threading.Event()

        def poll_control(n: int) -> None:
            path = (C + "journal", C + "operations", C + "verdict?skip=unfinished")[n % 3]
            with httpx.Client(base_url=proxy.url, trust_env=False, timeout=30) as http:
                for _ in range(200):
                    r = http.get(path)
                    if r.status_code != 200:
                        errors.append(f"{path}: {r.status_code}")
                    json.loads(r.content)
                    if done.is_set():
                        return

        def run_client(n: int) -> None:
            try:
                CreatorClient(base_url=proxy.url).create_tileset(f"d{n}")
            except Exception as e:
                errors.append(f"client {n}: {e!r}")

        pollers = [threading.Thread(target=poll_control, args=(n,)) for n in range(32)]
        clients = [threading.Thread(target=run_client, args=(n,)) for n in range(4)]
        for t in pollers + clients:
            t.start()
        for t in clients:
            t.join(60)
        done.set()
        for t in pollers:
            t.join(60)
        assert not errors, errors[:5]
        assert len(proxy.operations) == 4 and all(o.status == "Succeeded" for o in proxy.operations)


def test_serve_help_shows_an_example(confdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert (
        result.returncode == 0
        and "__replay-proxy/use" in result.stdout
        and "--control-token" in result.stdout
    )


# -- the flow-free module on its own ---------------------------------------------------------------------


class BrokenHost:
    """A Host whose journal fails: a bug of ours must be a 500 with one line, not a dead request."""

    def use(self, scenarios: Any, cassette: Any, settings: Any) -> None: ...

    def reset(self) -> None: ...

    def entries(self) -> list[Any]:
        raise KeyError("boom")

    def machine(self) -> None:
        return None

    def loaded(self) -> dict[str, Any]:
        return {}


def test_handle_is_flow_free_and_a_failure_of_ours_is_a_500() -> None:
    from proxy.control import ControlAPI

    api = ControlAPI(BrokenHost(), root=ROOT)
    assert api.handle("GET", C + "journal") == (
        500,
        {"error": "replay-proxy failed to answer this control request: KeyError('boom')"},
    )
    assert api.handle("GET", C + "operations") == (200, {"operations": []})
    assert api.handle("POST", C + "reset", body=b'{"x": 1}') == (400, {"error": "reset takes no body"})
    off = ControlAPI(BrokenHost(), enabled=False, off_reason="off here")
    assert off.handle("GET", C + "operations") == (403, {"error": "off here"})


def test_replay_proxy_use_with_a_bad_file_keeps_its_operations(confdir: Path, tmp_path: Path) -> None:
    """mitmproxy restores the options after a failed update and calls configure again: that used to
    rebuild the session, so the operations, sequences and playback of what was served were lost."""
    from proxy.errors import ScenarioError

    bad = tmp_path / "bad.yaml"
    bad.write_text("operations: 3\n")
    with running(confdir, scenarios=[ROOT / TILESET]) as (proxy, http):
        status_url = start_tileset(http)
        with pytest.raises(ScenarioError):
            proxy.use(bad)
        assert [o.id for o in proxy.operations] == [status_url.rsplit("/", 1)[1]]
        assert http.get(status_url).json()["status"] == "NotStarted"  # still served, still known
