"""The ``location`` and ``arm`` dialects, proven against the real SDK pollers through the proxy: azure-core's
``LROPoller`` with ``LROBasePolling`` (LocationPolling) and azure-mgmt-core's ``ARMPolling`` inside a real
azure-mgmt-resource client over TLS (LocationPolling for a delete, AzureAsyncOperationPolling plus the
final GET of the PUT's URL for a create). The shipped example scenarios are what is played.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.core.polling.arm_polling import ARMPolling

from proxy.operations import FinalRoute, recognise
from proxy.scenario.answer import Answer, OperationTag
from proxy.verdict import report
from tests.azure_pollers import (
    AZURE_CORE_INTERVAL,
    CLEAN,
    SUBSCRIPTION,
    arm_client,
    azure_core_client,
    begin,
    verdict,
)
from tests.conftest import ROOT
from tests.test_scenario_machine import BASE, ask, machine, request

SCENARIOS = ROOT / "scenarios"
LOCATION = SCENARIOS / "location-polling.yaml"
ARM = SCENARIOS / "arm-azure-async-operation.yaml"
INTERVAL = AZURE_CORE_INTERVAL
_client = azure_core_client  # tests/test_control_api.py drives its SDK pollers with these two


# -- location: azure-core LROBasePolling ----------------------------------------------------------------


def test_location_dialect_with_azure_core_location_polling(play: Any) -> None:
    proxy = play(LOCATION)
    started = time.monotonic()
    with azure_core_client(proxy.url) as client:
        poller = begin(client, "POST", f"{proxy.url}/batch")
        assert type(poller.polling_method()._operation).__name__ == "LocationPolling"  # type: ignore[attr-defined]
        result = json.loads(poller.result(timeout=60))
    assert time.monotonic() - started < INTERVAL
    assert result["summary"] == {"successfulRequests": 1, "totalRequests": 1}
    entries = proxy.journal.entries
    assert [(e.method, e.status) for e in entries] == [
        ("POST", 202),
        ("GET", 202),
        ("GET", 202),
        ("GET", 200),
    ]
    assert entries[0].status_urls and entries[0].status_urls[0].endswith("?api-version=1.0")
    assert [e.terminal for e in entries] == [False, False, False, True]
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN


FAILING_LOCATION = """
operations:
  - style: location
    start: {method: POST, path: /batch}
    status-path: /batch/results/{operationId}
    steps:
      - status: Running
      - status: Failed
        error: {code: BatchFailed, message: The batch failed.}
"""


def test_location_dialect_failure_is_an_error_status_azure_core_raises(play: Any) -> None:
    proxy = play(FAILING_LOCATION)
    with azure_core_client(proxy.url) as client:
        poller = begin(client, "POST", f"{proxy.url}/batch")
        with pytest.raises(HttpResponseError) as raised:
            poller.result(timeout=60)
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "BatchFailed"
    assert [e.status for e in proxy.journal.entries] == [202, 202, 400]
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN


# -- ARM: azure-mgmt-core ARMPolling in a real azure-mgmt-resource client ---------------------------------


def test_location_dialect_with_arm_polling_resource_group_delete(play: Any) -> None:
    proxy = play(LOCATION, mode="regular")
    started = time.monotonic()
    poller = arm_client(proxy).resource_groups.begin_delete("my-rg")
    assert isinstance(poller.polling_method(), ARMPolling)
    assert poller.result(timeout=60) is None
    assert time.monotonic() - started < INTERVAL
    entries = proxy.journal.entries
    assert [(e.method, e.status) for e in entries] == [
        ("DELETE", 202),
        ("GET", 202),
        ("GET", 202),
        ("GET", 204),
    ]
    assert entries[1].path.startswith(f"/subscriptions/{SUBSCRIPTION}/operationresults/")
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN


RESOURCE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa1"
)


def test_arm_dialect_with_arm_polling_create_and_final_get(play: Any) -> None:
    proxy = play(ARM, mode="regular")
    started = time.monotonic()
    poller = arm_client(proxy).resources.begin_create_or_update_by_id(
        RESOURCE_ID, api_version="2023-05-01", parameters={"location": "westeurope", "kind": "StorageV2"}
    )
    resource = poller.result(timeout=60)
    assert time.monotonic() - started < INTERVAL
    assert resource.properties["provisioningState"] == "Succeeded"
    assert (resource.id, resource.name) == (RESOURCE_ID, "sa1")
    entries = proxy.journal.entries
    assert [(e.method, e.status, e.op_status) for e in entries] == [
        ("PUT", 201, "InProgress"),  # the body says provisioningState: Accepted
        ("GET", 200, "InProgress"),
        ("GET", 200, "InProgress"),
        ("GET", 200, "Succeeded"),
        ("GET", 200, "Succeeded"),  # the final GET: the PUT's own URL
    ]
    assert "/asyncoperations/" in entries[1].path
    assert entries[-1].path.split("?")[0] == RESOURCE_ID and entries[-1].poll is None
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN
    # the journal carries the machine's facts as data (Exchange.tag), and recognise reads them
    rule = 'arm-azure-async-operation.yaml: operation "create storage account"'
    AAO = ("Azure-AsyncOperation",)
    assert [e.tag for e in entries] == [
        OperationTag(rule, "arm", "start", None, AAO),
        OperationTag(rule, "arm", "poll", 0, AAO),
        OperationTag(rule, "arm", "poll", 0, AAO),
        OperationTag(rule, "arm", "poll", 1, AAO),
        OperationTag(rule, "arm", "resource", None, AAO),
    ]
    [op] = recognise(entries)
    assert (op.dialect, op.given_by, op.outcome, op.operation_id) == (
        "arm",
        "Azure-AsyncOperation",
        "succeeded",
        entries[0].operation,
    )
    assert [(s.status, s.http_status, s.count) for s in op.steps] == [
        ("InProgress", 200, 2),
        ("Succeeded", 200, 1),
    ]
    # the journal's times: the InProgress step lasted from its first poll to the Succeeded poll
    assert op.steps[0].seconds == entries[3].monotonic - entries[1].monotonic
    assert op.steps[1].seconds is None
    assert op.final == FinalRoute("GET", RESOURCE_ID, 200, "start-url", 4)
    assert 'operation "create storage account"' in report(entries, [])


def test_arm_dialect_failure_raises_with_the_monitor_error_and_no_final_get(play: Any) -> None:
    text = ARM.read_text().replace(
        "- status: Succeeded ",
        "- {status: Failed, error: {code: QuotaExceeded, message: No more storage accounts.}} ",
    )
    proxy = play(text, mode="regular")
    poller = arm_client(proxy).resources.begin_create_or_update_by_id(
        RESOURCE_ID, api_version="2023-05-01", parameters={"location": "westeurope", "kind": "StorageV2"}
    )
    with pytest.raises(HttpResponseError) as raised:
        poller.result(timeout=60)
    assert raised.value.error is not None and raised.value.error.code == "QuotaExceeded"
    assert [(e.method, e.status) for e in proxy.journal.entries] == [("PUT", 201)] + [("GET", 200)] * 3
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN


VNET_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vn1"


def test_arm_dialect_without_a_monitor_is_polled_on_the_resource_body_content_polling(play: Any) -> None:
    proxy = play(ARM, mode="regular")
    started = time.monotonic()
    poller = arm_client(proxy).resources.begin_create_or_update_by_id(
        VNET_ID, api_version="2024-01-01", parameters={"location": "westeurope"}
    )
    assert type(poller.polling_method()._operation).__name__ == "BodyContentPolling"  # type: ignore[attr-defined]
    resource = poller.result(timeout=60)
    assert time.monotonic() - started < INTERVAL
    assert (resource.id, resource.properties["provisioningState"]) == (VNET_ID, "Succeeded")
    entries = proxy.journal.entries
    assert [(e.method, e.status, e.op_status, e.poll) for e in entries] == [
        ("PUT", 201, "Updating", None),
        ("GET", 200, "Updating", 1),
        ("GET", 200, "Updating", 2),
        ("GET", 200, "Succeeded", 3),  # no final GET: the last poll was the resource
    ]
    assert {e.path.split("?")[0] for e in entries} == {VNET_ID}
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN
    [op] = recognise(entries)
    # a test reading the resource it created is no poll after the end: the status URL is the resource
    arm_client(proxy).resources.get_by_id(VNET_ID, api_version="2024-01-01")
    assert len(proxy.journal.entries) == 5
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN
    assert (op.dialect, op.given_by, op.status_url, op.outcome, op.final) == (
        "arm",
        "start-url",
        entries[1].path,
        "succeeded",
        None,
    )


def test_arm_dialect_post_action_final_get_follows_the_location_of_the_start(play: Any) -> None:
    proxy = play(ARM)
    account = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa1"
    with azure_core_client(proxy.url) as client:
        poller = begin(client, "POST", f"{proxy.url}{account}/listKeys", ARMPolling(timeout=INTERVAL))
        result = json.loads(poller.result(timeout=60))
    assert result["keys"][0]["keyName"] == "key1"
    entries = proxy.journal.entries
    assert [(e.method, e.status) for e in entries] == [
        ("POST", 202),
        ("GET", 200),
        ("GET", 200),
        ("GET", 200),
    ]
    assert "/asyncoperations/" in entries[1].path and "/operationresults/" in entries[3].path
    [op] = recognise(entries)
    assert op.final is not None and (op.final.via, op.final.index) == ("resource", 3)
    assert verdict(proxy.journal.entries, "retry-after-202") == CLEAN


# -- what each renders, method by method (the machine alone) ----------------------------------------------

ARM_METHODS = """
operations:
  - style: arm
    start: {method: [PUT, PATCH, DELETE, POST], path: "/things/{name}"}
    status-path: /ops/{operationId}
    steps: [{status: InProgress}, {status: Succeeded}]
"""


def test_arm_start_codes_and_bodies_by_method() -> None:
    m, clock = machine(ARM_METHODS)
    put, patch, delete, post = (
        ask(m, method, f"/things/{n}") for n, method in enumerate(("PUT", "PATCH", "DELETE", "POST"))
    )
    assert [a.response.status for a in (put, patch, delete, post)] == [201, 200, 202, 202]
    assert json.loads(put.response.body) == {
        "id": "/things/0",
        "name": "0",
        "properties": {"provisioningState": "Accepted"},
    }
    assert delete.response.body == b"" and post.response.body == b""
    assert all(a.response.header("Azure-AsyncOperation") for a in (put, patch, delete, post))
    url = put.response.header("Azure-AsyncOperation")
    assert url is not None
    running = ask(m, "GET", url)
    body = json.loads(running.response.body)
    assert (body["status"], body["name"], "endTime" in body) == ("InProgress", running.operation, False)
    done = json.loads(ask(m, "GET", url).response.body)
    assert (done["status"], "endTime" in done) == ("Succeeded", True)
    clock.advance(5)  # the end time is when it ended, not when it is asked
    assert json.loads(ask(m, "GET", url).response.body)["endTime"] == done["endTime"]
    final: Answer = ask(m, "GET", "/things/0")
    assert json.loads(final.response.body)["properties"] == {"provisioningState": "Succeeded"}
    assert (final.poll, final.operation) == (None, put.operation)
    assert (
        json.loads(ask(m, "GET", "/things/1").response.body)["properties"]["provisioningState"]
        == "InProgress"
    )
    assert m.handle(request("GET", "/things/2"), BASE) is None  # a DELETE's URL is not a resource to GET


LOCATION_DELETE = """
operations:
  - style: location
    start: {method: [DELETE, POST], path: "/things/{name}"}
    status-path: /results/{operationId}
    retry-after: 2
    steps: [{status: Running}, {status: Succeeded}]
"""


def test_location_success_is_204_for_a_delete_and_200_with_the_result_otherwise() -> None:
    m, _ = machine(LOCATION_DELETE)
    for method, final in (("DELETE", 204), ("POST", 200)):
        start = ask(m, method, "/things/a")
        url = start.response.header("Location")
        assert start.response.status == 202 and url is not None
        running = ask(m, "GET", url)
        assert (running.response.status, running.response.body, running.response.header("Retry-After")) == (
            202,
            b"",
            "2",
        )
        done = ask(m, "GET", url)
        assert (done.response.status, done.terminal) == (final, True)


def test_an_arm_operation_without_a_monitor_must_start_with_put_or_patch(tmp_path: Path) -> None:
    from proxy.errors import ScenarioError
    from proxy.scenario.loader import load_scenarios

    path = tmp_path / "arm.yaml"
    path.write_text(
        ARM_METHODS.replace("style: arm", "style: arm\n    header: none").replace(
            "[PUT, PATCH, DELETE, POST]", "POST"
        )
    )
    with pytest.raises(ScenarioError) as raised:
        load_scenarios([path])
    assert "arm.yaml:3:" in str(raised.value) and "polled at the URL of its PUT or PATCH" in str(raised.value)
    path.write_text(ARM_METHODS.replace("style: arm", "style: arm\n    header: none"))
    assert load_scenarios([path])  # PUT among the methods: fine
