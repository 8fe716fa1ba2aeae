"""Operations whose status URL is in the body, judged from a replay's journal: the verdict sees what a
recording shows. Replicate's predictions give it at ``urls.get`` (replicate-python's ``Prediction.wait``
reloads ``GET /v1/predictions/{id}`` until succeeded, failed or canceled); an ARM resource answered to a
PUT with a running ``properties.provisioningState`` and no status header is polled at the PUT's own URL
(azure-mgmt-core's ``BodyContentPolling``). Real cassettes and clients, replayed by both engines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from azure.core.rest import HttpRequest
from azure.mgmt.core.polling.arm_polling import ARMPolling

from proxy.journal import Exchange
from proxy.operations import recognise
from proxy.server import ReplayProxy
from proxy.verdict import check
from tests.azure_pollers import CLEAN, SUBSCRIPTION, azure_core_client, begin, verdict
from tests.conftest import ENGINES, ROOT

REPLICATE = ROOT / "tests/corpus/replicate/run.yaml"
TERMINAL = ("succeeded", "failed", "canceled")
FAST = 0.01


def replicate_run(base: str, extra_polls: int = 0) -> str:
    """replicate-python's ``predictions.create`` then ``Prediction.wait``: ``reload`` (GET
    /v1/predictions/{id}) until a terminal status; ``extra_polls`` more reloads after it."""
    session = requests.Session()
    prediction = session.post(f"{base}/v1/predictions", json={"input": {}}, timeout=10).json()
    for _ in range(30):
        if prediction["status"] in TERMINAL:
            break
        prediction = session.get(f"{base}/v1/predictions/{prediction['id']}", timeout=10).json()
    for _ in range(extra_polls):
        session.get(f"{base}/v1/predictions/{prediction['id']}", timeout=10)
    return str(prediction["status"])


def replayed(
    engine: str, confdir: Path, cassette: Path, drive: Any, mode: str = "reverse"
) -> tuple[Any, list[Exchange]]:
    """``drive(proxy)`` against ``cassette`` replayed (``--retry-after`` short); its result and journal."""
    with ReplayProxy(cassette, confdir=confdir, engine=engine, mode=mode, retry_after=FAST) as p:
        out = drive(p)
        return out, list(p.journal.entries)


@pytest.mark.parametrize("engine", ENGINES)
def test_replicate_replayed_is_one_operation_polled_to_succeeded(engine: str, confdir: Path) -> None:
    status, entries = replayed(engine, confdir, REPLICATE, lambda p: replicate_run(p.url))
    assert status == "succeeded"
    assert [e.status for e in entries] == [201] + [200] * 11
    [op] = recognise(entries)
    assert (op.outcome, op.terminal_status, op.status_url) == (
        "succeeded",
        "succeeded",
        "/v1/predictions/azaq55dbukgxg6kubr4k6g3pby",
    )
    assert [(s.status, s.count) for s in op.steps] == [("starting", 1), ("processing", 9), ("succeeded", 1)]
    assert verdict(entries) == CLEAN


@pytest.mark.parametrize("engine", ENGINES)
def test_replicate_reading_the_prediction_after_it_succeeded_is_no_violation(
    engine: str, confdir: Path
) -> None:
    """``urls.get`` is the prediction itself: ``prediction.reload()`` after the end reads the result
    (the verdict cannot tell it from one more poll, so it does not fail a test for it); polls that came
    before the end are still judged (the Retry-After and unfinished checks)."""
    _, entries = replayed(engine, confdir, REPLICATE, lambda p: replicate_run(p.url, extra_polls=2))
    assert check(entries) == []
    (op,) = recognise(entries)
    assert op.terminal_status == "succeeded"


VNET_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vn1"
VNET_PATH = f"{VNET_ID}?api-version=2024-01-01"
VNET_URL = f"https://management.azure.com{VNET_PATH}"


def arm_cassette(tmp_path: Path) -> Path:
    """An ARM PUT answered 201 with ``provisioningState: Updating`` and no Azure-AsyncOperation or
    Location, then GETs of the resource: Updating twice, then Succeeded (what a virtual network's creation
    answers; Retry-After as ARM sends it)."""

    def answer(code: int, state: str) -> dict[str, Any]:
        body = {"id": VNET_ID, "name": "vn1", "properties": {"provisioningState": state}}
        return {
            "status": {"code": code, "message": "Created" if code == 201 else "OK"},
            "headers": {"Content-Type": ["application/json; charset=utf-8"], "Retry-After": ["1"]},
            "body": {"string": json.dumps(body)},
        }

    def request(method: str, body: str | None) -> dict[str, Any]:
        return {"method": method, "uri": VNET_URL, "body": body, "headers": {}}

    interactions = [
        {"request": request("PUT", '{"location": "westeurope"}'), "response": answer(201, "Updating")}
    ]
    for state in ("Updating", "Updating", "Succeeded"):
        interactions.append({"request": request("GET", None), "response": answer(200, state)})
    path = tmp_path / "vnet.yaml"
    path.write_text(yaml.safe_dump({"interactions": interactions, "version": 1}))
    return path


def begin_vnet(p: ReplayProxy, extra_gets: int = 0) -> Any:
    """azure-mgmt-core's ARMPolling on a PUT answered without a status header (BodyContentPolling), as
    generated management clients start it; then ``extra_gets`` more GETs of the resource, as a client
    polling past the end does."""
    client = azure_core_client(p.url)
    poller = begin(client, "PUT", p.url + VNET_PATH, ARMPolling(timeout=FAST))
    assert type(poller.polling_method()._operation).__name__ == "BodyContentPolling"  # type: ignore[attr-defined]
    resource = json.loads(poller.result(timeout=60))
    for _ in range(extra_gets):
        client.send_request(HttpRequest("GET", p.url + VNET_PATH))
    return resource["properties"]["provisioningState"]


@pytest.mark.parametrize("engine", ENGINES)
def test_arm_body_content_polling_replayed_is_recognised(engine: str, confdir: Path, tmp_path: Path) -> None:
    state, entries = replayed(engine, confdir, arm_cassette(tmp_path), begin_vnet)
    assert state == "Succeeded"
    assert [(e.method, e.status, e.op_status) for e in entries] == [
        ("PUT", 201, "Updating"),
        ("GET", 200, "Updating"),
        ("GET", 200, "Updating"),
        ("GET", 200, "Succeeded"),
    ]
    [op] = recognise(entries)
    assert (op.outcome, op.terminal_status, op.status_url) == (
        "succeeded",
        "Succeeded",
        VNET_ID + "?api-version=2024-01-01",
    )
    assert verdict(entries, "retry-after-202") == CLEAN  # azure-core polls at once, by design


@pytest.mark.parametrize("engine", ENGINES)
def test_arm_reading_the_resource_after_it_succeeded_is_no_violation(
    engine: str, confdir: Path, tmp_path: Path
) -> None:
    """BodyContentPolling polls the resource itself: a test that GETs the created resource afterwards
    (as tests do) reads it; the verdict does not call that polling after the end."""
    _, entries = replayed(engine, confdir, arm_cassette(tmp_path), lambda p: begin_vnet(p, extra_gets=1))
    assert len(entries) == 5
    assert check(entries, ["retry-after-202"]) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_arm_client_that_stops_while_updating_is_unfinished(
    engine: str, confdir: Path, tmp_path: Path
) -> None:
    """What the verdict still judges on a resource polled at its own URL: a client that gives up while
    ``provisioningState`` says Updating."""

    def give_up(p: ReplayProxy) -> None:
        requests.put(p.url + VNET_PATH, json={"location": "westeurope"}, timeout=10)
        time.sleep(FAST * 5)  # waits the Retry-After it was told (shortened to FAST)
        requests.get(p.url + VNET_PATH, timeout=10)

    _, entries = replayed(engine, confdir, arm_cassette(tmp_path), give_up)
    assert [v.rule for v in check(entries)] == ["unfinished"]


def test_the_same_operations_in_the_recording_and_in_a_replay_journal(confdir: Path, tmp_path: Path) -> None:
    """One rule (``journal.body_status_url``) for recordings and journals: the recording's operation is
    the journal's; ``learn`` does not write a resource polled at its own URL as an operation (yet): it stays
    recorded answers, as before."""
    from proxy.cassette import load
    from proxy.learn import find_operations

    cassette = arm_cassette(tmp_path)
    [recorded] = recognise(load(cassette))
    assert (recorded.given_by, recorded.outcome, recorded.terminal_status) == (
        "start-url",
        "succeeded",
        "Succeeded",
    )
    assert find_operations(load(cassette)) == []
    _, entries = replayed("lean", confdir, cassette, begin_vnet)
    [journaled] = recognise(entries)
    assert (journaled.status_url, journaled.entries, journaled.outcome) == (
        recorded.status_url,
        recorded.entries,
        recorded.outcome,
    )
    [replicate] = recognise(load(REPLICATE))
    assert replicate.given_by == "urls.get"


# -- AIP-151: the operation's name in the body, polled under the client's API base ----------------------

AIP_BASE = "https://example.googleapis.com"


def aip_cassette(tmp_path: Path, name: str = "operations/op-7f3a9c") -> Path:
    """A Google-style long-running operation (AIP-151): the start answers ``{"name": …, "done": false}``
    and the client polls ``GET /v1/operations/op-7f3a9c`` until ``done``: two polls running, the third
    done. ``name`` as GAPIC REST clients get it (``operations/op-7f3a9c``, polled at ``/v1/{name}``) or as
    google-api-core's HTTP/JSON helper does (``op-7f3a9c``, polled at ``/v1/operations/{name}``)."""

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": {"code": 200, "message": "OK"},
            "headers": {"Content-Type": ["application/json; charset=UTF-8"]},
            "body": {"string": json.dumps(body)},
        }

    empty = {"@type": "type.googleapis.com/google.protobuf.Empty"}
    running = {"name": name, "metadata": empty, "done": False}
    done = {**running, "done": True, "response": empty}
    start = {"method": "POST", "uri": f"{AIP_BASE}/v1/projects/p1/instances", "body": "{}", "headers": {}}
    poll = {"method": "GET", "uri": f"{AIP_BASE}/v1/operations/op-7f3a9c", "body": None, "headers": {}}
    interactions = [{"request": start, "response": answer(running)}]
    interactions += [{"request": poll, "response": answer(body)} for body in (running, running, done)]
    path = tmp_path / "aip.yaml"
    path.write_text(yaml.safe_dump({"interactions": interactions, "version": 1}))
    return path


def aip_run(base: str, extra_polls: int = 0) -> bool:
    """What google-api-core's REST operations client does: ``GET {base}/v1/{name}`` until ``done``."""
    session = requests.Session()
    operation = session.post(f"{base}/v1/projects/p1/instances", json={}, timeout=10).json()
    for _ in range(30):
        if operation["done"]:
            break
        operation = session.get(f"{base}/v1/{operation['name']}", timeout=10).json()
    for _ in range(extra_polls):
        session.get(f"{base}/v1/{operation['name']}", timeout=10)
    return bool(operation["done"])


@pytest.mark.parametrize("engine", ENGINES)
def test_aip_151_replayed_is_one_operation_polled_by_its_name(
    engine: str, confdir: Path, tmp_path: Path
) -> None:
    """A replay's journal follows the operation's name as a recording does (``link_named_polls``): the
    start and its three polls are one operation, done, and the verdict is clean."""
    done, entries = replayed(engine, confdir, aip_cassette(tmp_path), lambda p: aip_run(p.url))
    assert done is True
    assert entries[0].operation_name == "operations/op-7f3a9c" and not entries[0].status_urls
    [op] = recognise(entries)
    assert (op.status_url, op.outcome, op.entries) == ("/v1/operations/op-7f3a9c", "done", (0, 1, 2, 3))
    assert verdict(entries) == CLEAN


@pytest.mark.parametrize("engine", ENGINES)
def test_aip_151_polled_after_done_is_caught(engine: str, confdir: Path, tmp_path: Path) -> None:
    """Before, a replay's journal saw no operation here, so a client polling a done operation passed."""
    _, entries = replayed(engine, confdir, aip_cassette(tmp_path), lambda p: aip_run(p.url, extra_polls=2))
    found = [(v.rule, v.index, v.message) for v in check(entries)]
    assert [(rule, index) for rule, index, _ in found] == [("poll-after-terminal", 4)], found
    assert "after it answered done on poll 3 (and 1 more poll after it)" in found[0][2], found


def test_aip_151_the_same_operation_in_the_recording_and_in_a_replay_journal(
    confdir: Path, tmp_path: Path
) -> None:
    from proxy.cassette import load

    cassette = aip_cassette(tmp_path)
    [recorded] = recognise(load(cassette))
    _, entries = replayed("lean", confdir, cassette, lambda p: aip_run(p.url))
    [journaled] = recognise(entries)
    assert recorded.given_by == "body"
    assert (journaled.status_url, journaled.entries, journaled.outcome) == (
        recorded.status_url,
        recorded.entries,
        recorded.outcome,
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_aip_151_polled_by_google_api_core(engine: str, confdir: Path, tmp_path: Path) -> None:
    """google-api-core's own poller (``operation.from_http_json``: ``GET operations/{name}`` under the
    API's base until ``done``, then the result unpacked) on a replayed AIP-151 operation: the journal
    sees the operation and its three polls, and the verdict is clean."""
    from google.api_core import operation
    from google.api_core.future.polling import DEFAULT_POLLING
    from google.protobuf import empty_pb2

    def drive(p: ReplayProxy) -> Any:
        session = requests.Session()

        def api_request(method: str, path: str, **_: Any) -> Any:
            return session.request(method, f"{p.url}/v1/{path}", timeout=10).json()

        started = api_request("POST", "projects/p1/instances")
        polling = DEFAULT_POLLING.with_delay(initial=FAST, maximum=FAST)  # its own predicate: not done yet
        future = operation.from_http_json(started, api_request, empty_pb2.Empty, polling=polling)
        return future.result(timeout=10), future.done()

    (result, done), entries = replayed(engine, confdir, aip_cassette(tmp_path, "op-7f3a9c"), drive)
    assert isinstance(result, empty_pb2.Empty) and done
    assert [(e.method, e.path) for e in entries][1:] == [("GET", "/v1/operations/op-7f3a9c")] * 3
    [op] = recognise(entries)
    assert (op.status_url, op.outcome, op.entries) == ("/v1/operations/op-7f3a9c", "done", (0, 1, 2, 3))
    assert verdict(entries) == CLEAN
