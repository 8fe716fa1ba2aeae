"""``proxy.operations.recognise``: every dialect the scenario machine renders is recognised again from the
traffic (render -> recognise round trip, one per dialect), and the shipped Creator recordings are read as
the operations they hold. Pure: the machine answers in-process; no sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from proxy.cassette import load
from proxy.model import Interaction, Request, Response
from proxy.operations import FinalRoute, Operation, StepFacts, exchanges_of, recognise
from proxy.scenario.answer import TERMINAL_STATUSES
from proxy.server import ReplayProxy
from tests.conftest import ROOT
from tests.test_scenario_machine import ask, machine, request

CASSETTES = ROOT / "cassettes" / "azure-maps"


def _played(text: str, start: tuple[str, str], final: str | None = None) -> list[Interaction]:
    """Interactions of one operation played to its end by the machine: the start, the polls until a
    terminal answer (at most 20), then a GET of ``final`` when given."""
    m, _ = machine(text)
    method, path = start
    out: list[Interaction] = []
    answer = ask(m, method, path)
    out.append(Interaction(request(method, path), answer.response))
    url = None
    for name in ("Azure-AsyncOperation", "Operation-Location", "Location"):
        url = url or answer.response.header(name)
    if url is None:  # AIP-151: the name in the body
        url = "/v1/" + answer.response.body.decode().split('"name": "')[1].split('"')[0]
    for _ in range(20):
        answer = ask(m, "GET", url)
        out.append(Interaction(request("GET", url), answer.response))
        if answer.terminal:
            break
    if final is not None:
        out.append(Interaction(request("GET", final), ask(m, "GET", final).response))
    return out


CASES = {
    "creator-v1": (
        """
operations:
  - style: creator-v1
    start: {method: POST, path: /tilesets}
    status-path: /tilesets/operations/{operationId}?api-version=2.0
    resource-path: /tilesets/{resourceId}
    id-format: counter
    retry-after: 2
    steps: [{status: NotStarted}, {status: Running, times: 2}, {status: Succeeded}]
""",
        ("POST", "/tilesets?api-version=2.0&datasetId=d1"),
        "/tilesets/1",
    ),
    "creator-v2": (
        """
operations:
  - style: creator-v2
    start: {method: POST, path: /conversions}
    status-path: /conversions/operations/{operationId}
    id-format: counter
    retry-after: 2
    steps: [{status: NotStarted}, {status: Running, times: 2}, {status: Failed}]
""",
        ("POST", "/conversions?udid=u1"),
        None,
    ),
    "aip-151": (
        """
operations:
  - style: aip-151
    start: {method: POST, path: "/v1/books:import"}
    status-path: /v1/operations/{operationId}
    id-format: counter
    retry-after: 2
    steps: [{status: NotStarted}, {status: Running, times: 2}, {status: Succeeded}]
""",
        ("POST", "/v1/books:import"),
        None,
    ),
    "location": (
        """
operations:
  - style: location
    start: {method: POST, path: /batch}
    status-path: /batch/results/{operationId}
    id-format: counter
    retry-after: 2
    steps: [{status: Running, times: 3}, {status: Succeeded}]
""",
        ("POST", "/batch"),
        None,
    ),
    "arm": (
        """
operations:
  - style: arm
    start: {method: PUT, path: "/subscriptions/{sub}/resourceGroups/rg/providers/P.X/things/{name}"}
    status-path: /subscriptions/{sub}/providers/P.X/locations/w/asyncoperations/{operationId}
    id-format: counter
    retry-after: 2
    steps: [{status: InProgress, times: 3}, {status: Succeeded}]
""",
        ("PUT", "/subscriptions/s1/resourceGroups/rg/providers/P.X/things/t1"),
        "/subscriptions/s1/resourceGroups/rg/providers/P.X/things/t1",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_dialect_rendered_is_recognised_again(name: str) -> None:
    text, start, final = CASES[name]
    interactions = _played(text, start, final)
    [op] = recognise(interactions)
    assert op.dialect == name
    assert op.start is not None and (op.start.method, op.start.path) == (start[0], start[1].split("?")[0])
    assert op.operation_id == "1"
    assert op.status_template is not None and "{operationId}" in op.status_template
    assert op.entries == tuple(range(len(interactions) - (1 if final else 0)))
    running = [s for s in op.steps[:-1]]
    assert all(s.retry_after == 2.0 for s in running)
    assert sum(s.count for s in op.steps) == len(op.entries) - 1
    if final is not None:
        assert op.final is not None and op.final.path == final and op.final.http_status == 200
        assert op.final.via == ("start-url" if name == "arm" else "resource")
    else:
        assert op.final is None


def test_recognised_steps_outcomes_and_how_the_url_was_given() -> None:
    v1 = recognise(_played(*CASES["creator-v1"][:2], CASES["creator-v1"][2]))[0]
    assert v1.steps == (
        StepFacts("NotStarted", 200, 2.0, 1),
        StepFacts("Running", 200, 2.0, 2),
        StepFacts("Succeeded", 201, None, 1),
    )
    assert (v1.given_by, v1.url_form, v1.outcome) == ("Location", "absolute", "succeeded")
    assert v1.status_template == "/tilesets/operations/{operationId}?api-version=2.0"
    v2 = recognise(_played(*CASES["creator-v2"][:2]))[0]
    assert (v2.given_by, v2.outcome, v2.terminal_status) == ("Operation-Location", "failed", "Failed")
    assert v2.error == {"code": "OperationFailed", "message": "The operation failed."}
    aip = recognise(_played(*CASES["aip-151"][:2]))[0]
    assert (aip.given_by, aip.outcome, aip.status_template) == (
        "body",
        "succeeded",
        "/v1/operations/{operationId}",
    )
    location = recognise(_played(*CASES["location"][:2]))[0]
    assert location.steps == (StepFacts(None, 202, 2.0, 3), StepFacts(None, 200, None, 1))
    assert (location.given_by, location.outcome) == ("Location", "done")
    arm = recognise(_played(*CASES["arm"][:2], CASES["arm"][2]))[0]
    assert (arm.given_by, arm.outcome, arm.start and arm.start.http_status) == (
        "Azure-AsyncOperation",
        "succeeded",
        201,
    )


def test_a_relative_status_url_is_recognised_as_relative() -> None:
    text = CASES["creator-v2"][0].replace("style: creator-v2", "style: creator-v2\n    url-form: relative")
    op = recognise(_played(text, CASES["creator-v2"][1]))[0]
    assert (op.given_by, op.url_form) == ("Operation-Location", "relative")


def test_an_operation_that_never_ended_is_unfinished() -> None:
    text = CASES["creator-v2"][0].replace("{status: Failed}", "{status: Running}")
    interactions = _played(text, CASES["creator-v2"][1])
    assert len(interactions) == 21
    op = recognise(interactions)[0]
    assert (op.outcome, op.terminal_status, op.final) == ("unfinished", None, None)
    assert op.steps == (StepFacts("NotStarted", 200, 2.0, 1), StepFacts("Running", 200, 2.0, 19))


def test_the_shipped_creator_recordings() -> None:
    found: dict[str, list[Operation]] = {
        path.stem: recognise(load(path)) for path in sorted(CASSETTES.glob("*.yaml"))
    }
    assert found["missing-dataset-id"] == []  # a 400: no operation
    ok = found["tileset-succeeds"][0]
    assert (ok.dialect, ok.given_by, ok.outcome) == ("creator-v1", "Location", "succeeded")
    assert [(s.status, s.http_status, s.count) for s in ok.steps] == [
        ("NotStarted", 200, 1),
        ("Running", 200, 2),
        ("Succeeded", 201, 1),
    ]
    assert ok.final == FinalRoute("GET", "/tilesets/83cb8fc5-c3eb-4128-9365-5b7b7c60a94f", 200, "resource", 5)
    assert ok.start is not None and ok.start.query["api-version"] == "2.0" and "datasetId" in ok.start.query
    failed = found["tileset-fails"][0]
    assert (failed.outcome, failed.error["code"]) == ("failed", "InvalidFeature")
    assert found["succeeds-without-resource"][0].final is None


def test_exchanges_of_a_recording_are_what_the_verdict_reads() -> None:
    from proxy.verdict import check

    entries = exchanges_of(load(CASSETTES / "tileset-succeeds.yaml"))
    assert [e.status for e in entries] == [202, 200, 200, 200, 201, 200]
    assert entries[0].status_urls and entries[4].terminal
    assert check(entries) == []  # one second apart, as the recording's Retry-After: 1 asked


# -- recordings made in the test run: client -> record proxy -> play (the loopback upstream) -----------------


def _poll_to_the_end(base: str, method: str, path: str, final: str | None) -> int:
    """A plain polling loop (no sleeping: the recording's Retry-After is kept, not obeyed): the start,
    the status URL from the headers or an AIP-151 name, polls until the end, the final GET. Returns
    how many requests it sent."""
    with requests.Session() as http:
        answer = http.request(method, base + path, timeout=10)
        sent = 1
        url = next(
            (
                answer.headers[h]
                for h in ("Azure-AsyncOperation", "Operation-Location", "Location")
                if h in answer.headers
            ),
            None,
        )
        url = urljoin(base, url) if url else f"{base}/v1/{answer.json()['name']}"
        for _ in range(20):
            answer = http.get(url, timeout=10)
            sent += 1
            body = answer.json() if answer.content else {}
            if "done" in body:
                end = body["done"] is True
            elif "status" in body:
                end = str(body["status"]).lower() in TERMINAL_STATUSES
            else:
                end = answer.status_code != 202
            if end:
                break
        if final is not None:
            http.get(base + final, timeout=10)
            sent += 1
    return sent


@pytest.mark.parametrize("name", list(CASES))
def test_a_recording_of_each_dialect_through_the_proxy_is_recognised(
    name: str, cli: Any, confdir: Path, tmp_path: Path
) -> None:
    text, (method, path), final = CASES[name]
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(text)
    upstream = cli(["play", str(scenario), "--port", "0"])
    assert upstream.url, upstream.ready_line + upstream.stderr
    cassette = tmp_path / f"{name}-recorded.yaml"
    with ReplayProxy(cassette, upstream.url, confdir=confdir, record_mode="all") as recorder:
        sent = _poll_to_the_end(recorder.url, method, path, final)
    interactions = load(cassette)
    assert len(interactions) == sent
    [op] = recognise(interactions)
    assert op.dialect == name
    assert op.outcome == ("failed" if name == "creator-v2" else "done" if name == "location" else "succeeded")
    assert op.start is not None and op.start.method == method
    assert [s.retry_after for s in op.steps[:-1]] == [2.0] * (len(op.steps) - 1)
    assert (op.final is not None) == (final is not None)


def test_an_http_date_retry_after_in_a_recording_counts_from_the_response_date() -> None:
    # recorded long ago: the Retry-After date is 30 s after the response's Date, long before now
    text, start, _ = CASES["creator-v2"]
    recorded = [
        Interaction(
            i.request,
            i.response.replace(
                headers=(
                    *((k, v) for k, v in i.response.headers if k.lower() != "retry-after"),
                    ("Date", "Sat, 05 Dec 2020 00:00:00 GMT"),
                    *(
                        (("Retry-After", "Sat, 05 Dec 2020 00:00:30 GMT"),)
                        if i.response.header("Retry-After")
                        else ()
                    ),
                )
            ),
        )
        for i in _played(text, start)
    ]
    op = recognise(recorded)[0]
    assert [s.retry_after for s in op.steps] == [30.0, 30.0, None]


def test_a_journal_of_recorded_answers_keeps_less_than_the_recording() -> None:
    # the same traffic as journal entries (no bodies, no header names): what still stands out
    for name, expected in (("location", "location"), ("creator-v2", "creator-v1")):
        text, start, final = CASES[name]
        [op] = recognise(exchanges_of(_played(text, start, final)))
        assert (op.dialect, op.given_by, op.url_form) == (expected, "header", None)


def test_the_start_of_a_recording_keeps_its_query_json_keys_and_form_fields() -> None:
    text, start, _ = CASES["location"]
    played = _played(text, start)
    form = Request(
        "POST",
        played[0].request.url,
        (("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),),
        b"Action=CreateStack&StackName=s1&Action=ignored",
    )
    op = recognise([Interaction(form, played[0].response), *played[1:]])[0]
    assert op.start is not None and op.start.form == {"Action": "CreateStack", "StackName": "s1"}
    as_json = Request("POST", played[0].request.url + "?mode=fast", (), b'{"inputs": [1], "priority": 2}')
    op = recognise([Interaction(as_json, played[0].response), *played[1:]])[0]
    assert op.start is not None
    assert (op.start.query, op.start.json_keys, op.start.form) == (
        {"mode": "fast"},
        ("inputs", "priority"),
        {},
    )


AZURE_CORPUS = ROOT / "tests" / "corpus" / "azure"


def test_real_azure_sdk_recordings() -> None:
    # public azure-sdk-for-python recordings: ARM's Azure-AsyncOperation with the final GET of the PUT's
    # URL, ARM's Location polling (202 then 200/204), Form Recognizer's Operation-Location
    deployments = recognise(load(AZURE_CORPUS / "test_mgmt_resource.test_deployments_basic.yaml"))
    assert [(op.dialect, op.start and op.start.method, op.given_by, op.outcome) for op in deployments] == [
        ("arm", "PUT", "Azure-AsyncOperation", "succeeded"),
        ("creator-v1", "POST", "Location", "failed"),  # whatIf: a status body at the Location
        ("location", "DELETE", "Location", "done"),
    ]
    put = deployments[0]
    assert put.final is not None and put.start is not None
    assert (put.final.via, put.final.path, put.final.index) == ("start-url", put.start.path, 3)
    assert put.status_template is not None and put.status_template.endswith(
        "/operationStatuses/{operationId}?api-version=2020-10-01"
    )
    assert deployments[1].error["code"] == "InvalidTemplate"
    assert [(s.http_status, s.count) for s in deployments[2].steps] == [(204, 1)]
    [delete] = recognise(load(AZURE_CORPUS / "test_mgmt_resource.test_resource_groups.yaml"))
    assert (delete.dialect, [(s.status, s.http_status) for s in delete.steps]) == (
        "location",
        [(None, 202), (None, 200)],
    )
    [copy] = recognise(load(AZURE_CORPUS / "test_copy_model.test_copy_model_successful.yaml"))
    assert (copy.given_by, copy.outcome, [(s.status, s.count) for s in copy.steps]) == (
        "Operation-Location",
        "succeeded",
        [("notStarted", 4), ("succeeded", 1)],
    )
    cards = recognise(load(AZURE_CORPUS / "test_business_card_from_url_async.test_polling_interval.yaml"))
    assert len(cards) == 2 and {op.status_template for op in cards} == {
        "/formrecognizer/v2.1-preview.2/prebuilt/businessCard/analyzeResults/{operationId}"
    }


def test_a_status_url_given_in_the_body_at_urls_get() -> None:
    # replicate/replicate-python's recording: 201 {status: starting, urls: {get, cancel}}, polled at
    # urls.get with 200 every time; the model-version GET between them is no part of it
    [op] = recognise(load(ROOT / "tests" / "corpus" / "replicate" / "run.yaml"))
    assert (op.given_by, op.given, op.url_form, op.outcome) == (
        "urls.get",
        "https://api.replicate.com/v1/predictions/azaq55dbukgxg6kubr4k6g3pby",
        "absolute",
        "succeeded",
    )
    assert op.start is not None and (op.start.method, op.start.path, op.start.http_status) == (
        "POST",
        "/v1/predictions",
        201,
    )
    assert op.entries == (0, *range(2, 13))
    assert [(s.status, s.http_status, s.count) for s in op.steps] == [
        ("starting", 200, 1),
        ("processing", 200, 9),
        ("succeeded", 200, 1),
    ]
    assert op.status_template == "/v1/predictions/{operationId}"


def test_urls_get_starts_nothing_in_a_finished_or_statusless_body() -> None:
    # a prediction answered already succeeded (Prefer: wait), or a body with urls.get and no status:
    # no operation to poll
    def answered(body: str) -> Interaction:
        return Interaction(
            request("POST", "/v1/predictions"),
            Response(201, headers=(("Content-Type", "application/json"),), body=body.encode()),
        )

    done = '{"id": "p1", "status": "succeeded", "urls": {"get": "/v1/predictions/p1"}}'
    plain = '{"id": "p1", "urls": {"get": "/v1/predictions/p1"}}'
    assert recognise([answered(done)]) == [] and recognise([answered(plain)]) == []
