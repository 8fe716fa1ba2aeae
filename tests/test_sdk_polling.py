"""Real SDK clients poll the proxy fast at the README's recommended ``--retry-after``, and the verdict is
right about them: azure-core (OperationResourcePolling, LocationPolling), azure-mgmt-core's ARMPolling
through a real azure-mgmt-resource client over TLS, urllib3's ``Retry`` under requests, and simple
requests/httpx pollers.

Each test prints its wall time (``pytest -s``); the polling intervals the SDKs are configured with are their
defaults (30 s for azure-core), so a test only finishes in seconds when the client was told a short delay it
could read. A client that ignores the delay is caught at the same setting.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import requests
from azure.mgmt.core.polling.arm_polling import ARMPolling
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from proxy.journal import Exchange
from proxy.verdict import check, report
from tests.azure_pollers import (
    AZURE_CORE_INTERVAL,
    CLEAN,
    SUBSCRIPTION,
    arm_client,
    azure_core_client,
    begin,
    verdict,
)
from tests.conftest import RECOMMENDED_RETRY_AFTER, ROOT

pytest_plugins = ["pytester"]

RECOMMENDED = RECOMMENDED_RETRY_AFTER
SIMPLE_POLLER_DEFAULT = 30.0
"""The simple pollers' own interval when an answer advertises no delay they can read."""
MAX_POLLS = 50


def _wall(name: str, started: float, polls: int) -> float:
    took = time.monotonic() - started
    print(f"\n{name}: finished in {took:.3f} s wall time ({polls} polls) at --retry-after {RECOMMENDED}")
    return took


def _polls(entries: list[Exchange]) -> int:
    return sum(1 for e in entries if e.method == "GET")


# -- what the client was told ----------------------------------------------------------------------------


def assert_told_the_recommended_delay(entries: list[Exchange]) -> None:
    """Every delay the client was told (the shortest header of each answer) is the recommended one: the
    scenario's 5 s and 1 s were rewritten, a 500's whole-second Retry-After included."""
    told = [e.retry_after for e in entries if e.retry_after is not None]
    assert told, "the scenario advertised delays"
    assert all(abs(t - RECOMMENDED) < 1e-9 for t in told), told


# -- azure-core: OperationResourcePolling ---------------------------------------------------------------

OPERATION_LOCATION = """
name: conversion-v2
routes:
  - name: start
    match: {method: POST, path: /conversions}
    respond:
      status: 202
      headers: {Operation-Location: "{{ proxy_url }}/conversions/operations/c1?api-version=2.0"}
      retry-after: 5
  - name: status monitor
    match: {method: GET, path: /conversions/operations/c1}
    sequence:
      - {json: {operationId: c1, status: NotStarted}, retry-after: 5}
      - {json: {operationId: c1, status: Running}, retry-after: 5}
      # a 500 whose body says Failed: retriable (the pipeline's RetryPolicy retries it); not the end
      - {status: 500, json: {operationId: c1, status: Failed, error: {code: Internal, message: Oops}},
         retry-after: 1}
      - {json: {operationId: c1, status: Succeeded}}
"""


def test_azure_core_operation_resource_polling(play: Any) -> None:
    proxy = play(OPERATION_LOCATION)
    started = time.monotonic()
    with azure_core_client(proxy.url) as client:
        poller = begin(client, "POST", f"{proxy.url}/conversions?api-version=2.0&udid=u1")
        assert type(poller.polling_method()._operation).__name__ == "OperationResourcePolling"  # type: ignore[attr-defined]
        result = poller.result(timeout=60)
    took = _wall("azure-core OperationResourcePolling", started, _polls(proxy.journal.entries))
    assert poller.done() and '"Succeeded"' in result
    entries = proxy.journal.entries
    assert [e.status for e in entries] == [202, 200, 200, 500, 200]
    assert took < AZURE_CORE_INTERVAL  # it slept the milliseconds, never its 30 s interval
    assert_told_the_recommended_delay(entries)
    # azure-core polls once immediately after the 202 (by design): the one check a team turns off for it
    assert [v.rule for v in check(entries)] == ["retry-after-202"]
    assert verdict(entries, "retry-after-202") == CLEAN


# -- azure-core: LocationPolling (202 while running, then the result) -----------------------------------

LOCATION_POLLING = """
name: location-polling
routes:
  - name: start
    match: {method: POST, path: /batch}
    respond:
      status: 202
      headers: {Location: "{{ proxy_url }}/batch/results/b1"}
      retry-after: 5
  - name: results
    match: {method: GET, path: /batch/results/b1}
    sequence:
      - {status: 202, retry-after: 5, times: 2}
      - {status: 200, json: {batchItems: [{statusCode: 200}], summary: {successfulRequests: 1}}}
"""


def test_azure_core_location_polling(play: Any) -> None:
    proxy = play(LOCATION_POLLING)
    started = time.monotonic()
    with azure_core_client(proxy.url) as client:
        poller = begin(client, "POST", f"{proxy.url}/batch")
        assert type(poller.polling_method()._operation).__name__ == "LocationPolling"  # type: ignore[attr-defined]
        result = poller.result(timeout=60)
    took = _wall("azure-core LocationPolling", started, _polls(proxy.journal.entries))
    assert "successfulRequests" in result
    entries = proxy.journal.entries
    assert [e.status for e in entries] == [202, 202, 202, 200]
    assert took < AZURE_CORE_INTERVAL
    # the 200 without a status field ends it: no false "unfinished"
    assert verdict(entries, "retry-after-202") == CLEAN
    assert "=> 200 (no status field: done) after 3 polls" in report(entries, [])


# -- azure-mgmt-core ARMPolling through a real azure-mgmt-resource client, over TLS ---------------------


ARM = """
name: arm
routes:
  # resource_groups.begin_delete: 202 + Location, the Location answers 202 until the group is gone, then 200
  - name: delete
    match: {method: DELETE, path: "/subscriptions/{sub}/resourcegroups/{rg}"}
    respond:
      status: 202
      headers:
        Location: >-
          {{ proxy_url }}/subscriptions/{{ request.params.sub }}/operationresults/rg1?api-version=2024-03-01
      retry-after: 15
  - name: delete result
    match: {method: GET, path: "/subscriptions/{sub}/operationresults/rg1"}
    sequence:
      - {status: 202, retry-after: 15, times: 2}
      - {status: 200}
  # resources.begin_create_or_update_by_id: 201 + Azure-AsyncOperation, then a GET of the resource
  - name: resource
    match:
      method: GET
      path: &account /subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa1
    respond:
      json:
        id: "{{ request.path }}"
        name: sa1
        type: Microsoft.Storage/storageAccounts
        location: westeurope
        properties: {provisioningState: Succeeded}
operations:
  - name: create storage account
    style: creator-v2
    start: {method: PUT, path: *account}
    status-path: >-
      /subscriptions/{sub}/providers/Microsoft.Storage/locations/westeurope/asyncoperations/{operationId}
    header: Azure-AsyncOperation
    accepted:
      status: 201
      json: {name: sa1, properties: {provisioningState: Creating}}
      retry-after: 17
    retry-after: 17
    steps:
      - {status: InProgress, times: 2}
      - {status: Succeeded, resource: false}
"""


def test_azure_mgmt_resource_group_delete_arm_polling(play: Any) -> None:
    proxy = play(ARM, mode="regular")
    started = time.monotonic()
    client = arm_client(proxy)
    poller = client.resource_groups.begin_delete("my-rg")  # its initial call int()s the 202's Retry-After
    assert isinstance(poller.polling_method(), ARMPolling)
    assert poller.result(timeout=60) is None
    took = _wall("azure-mgmt-resource resource_groups.begin_delete (ARMPolling, Location)", started, 3)
    entries = proxy.journal.entries
    assert [(e.method, e.status) for e in entries] == [
        ("DELETE", 202),
        ("GET", 202),
        ("GET", 202),
        ("GET", 200),
    ]
    assert took < AZURE_CORE_INTERVAL
    assert verdict(entries, "retry-after-202") == CLEAN


def test_azure_mgmt_create_by_id_arm_polling_azure_async_operation(play: Any) -> None:
    proxy = play(ARM, mode="regular")
    started = time.monotonic()
    client = arm_client(proxy)
    resource_id = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa1"
    )
    poller = client.resources.begin_create_or_update_by_id(
        resource_id, api_version="2023-05-01", parameters={"location": "westeurope", "kind": "StorageV2"}
    )
    resource = poller.result(timeout=60)
    took = _wall(
        "azure-mgmt-resource begin_create_or_update_by_id (ARMPolling, Azure-AsyncOperation)", started, 4
    )
    assert resource.properties["provisioningState"] == "Succeeded"
    entries = proxy.journal.entries
    assert [(e.method, e.status) for e in entries] == [
        ("PUT", 201),
        ("GET", 200),
        ("GET", 200),
        ("GET", 200),
        ("GET", 200),
    ]
    assert took < AZURE_CORE_INTERVAL
    assert verdict(entries, "retry-after-202") == CLEAN


# -- urllib3 Retry under requests, and simple requests / httpx pollers ----------------------------------


def strict_delay(headers: Any) -> float:
    """What a strict client waits: ``Retry-After`` as RFC 9110 says (``int()`` of delay-seconds, or an
    HTTP-date), else Azure's millisecond headers, else its own interval. ``int("0.05")`` raises."""
    value = headers.get("Retry-After")
    if value is not None:
        if any(c.isalpha() for c in value):
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        return int(value)
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        if headers.get(name) is not None:
            return int(headers[name]) / 1000
    return SIMPLE_POLLER_DEFAULT


def _requests_session(retry: Retry | None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    if retry is not None:
        session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def requests_poller(session: requests.Session, base: str, *, honour: bool = True) -> str:
    """Start a tileset job and poll it (Creator v1: Location), waiting what each answer says; the final
    status. ``honour=False`` is the classic bug: poll at once, whatever the answer said."""
    r = session.post(f"{base}/tilesets?api-version=2.0&datasetId=d1", timeout=10)
    assert r.status_code == 202, r.text
    url = urljoin(r.url, r.headers["Location"])
    if honour and ("Retry-After" in r.headers or "retry-after-ms" in r.headers):
        time.sleep(strict_delay(r.headers))
    for _ in range(MAX_POLLS):
        r = session.get(url, timeout=10)
        r.raise_for_status()
        status = str(r.json()["status"])
        if status.lower() in ("succeeded", "failed", "canceled"):
            return status
        if honour:
            time.sleep(strict_delay(r.headers))
    raise AssertionError("never finished")


def test_urllib3_retry_under_requests(play: Any) -> None:
    # a 429 on the start, then a 503 and a reset mid-poll: urllib3's Retry (respect_retry_after_header, the
    # default) retries them; a fractional Retry-After would raise InvalidHeader (urllib3#2861)
    throttled = (ROOT / "scenarios/azure-maps/throttled-start.yaml").read_text()
    flaky = (ROOT / "scenarios/azure-maps/flaky-polling.yaml").read_text()
    retry = Retry(total=5, allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
    for name, text, shape in [
        ("throttled-start", throttled, [429, 202, 200, 200, 201]),
        ("flaky-polling", flaky, [202, 200, 200, 503, None, 200, 201]),
    ]:
        proxy = play(text)
        started = time.monotonic()
        with _requests_session(retry) as session:
            assert requests_poller(session, proxy.url) == "Succeeded"
        _wall(f"urllib3 Retry + requests ({name})", started, _polls(proxy.journal.entries))
        entries = proxy.journal.entries
        assert [e.status for e in entries] == shape
        # urllib3 reads Retry-After (whole seconds: 1 for a 429/503 told 50 ms); polls read retry-after-ms
        assert verdict(entries) == CLEAN


async def httpx_poller(base: str) -> str:
    """An async httpx client: Creator v1, retries 429/503 after their delay itself."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        r = await http.post(f"{base}/tilesets?api-version=2.0&datasetId=d1")
        while r.status_code in (429, 503):
            await asyncio.sleep(strict_delay(r.headers))
            r = await http.post(f"{base}/tilesets?api-version=2.0&datasetId=d1")
        assert r.status_code == 202, r.text
        url = urljoin(str(r.url), r.headers["Location"])
        for _ in range(MAX_POLLS):
            try:
                r = await http.get(url)
            except httpx.TransportError:
                continue  # a reset: try again
            if r.status_code in (429, 503):
                await asyncio.sleep(strict_delay(r.headers))
                continue
            status = str(r.json()["status"])
            if status.lower() in ("succeeded", "failed", "canceled"):
                return status
            await asyncio.sleep(strict_delay(r.headers))
    raise AssertionError("never finished")


@pytest.mark.parametrize(
    "scenario", ["tileset-succeeds", "throttled-start", "flaky-polling", "tileset-fails"]
)
def test_httpx_async_poller(play: Any, scenario: str) -> None:
    proxy = play((ROOT / f"scenarios/azure-maps/{scenario}.yaml").read_text())
    started = time.monotonic()
    status = asyncio.run(httpx_poller(proxy.url))
    _wall(f"httpx async poller ({scenario})", started, _polls(proxy.journal.entries))
    assert status == ("Failed" if scenario == "tileset-fails" else "Succeeded")
    assert verdict(proxy.journal.entries) == CLEAN


def test_requests_poller_without_retry(play: Any) -> None:
    proxy = play((ROOT / "scenarios/azure-maps/tileset-succeeds.yaml").read_text())
    started = time.monotonic()
    with _requests_session(None) as session:
        assert requests_poller(session, proxy.url) == "Succeeded"
    took = _wall("requests poller", started, _polls(proxy.journal.entries))
    assert took < SIMPLE_POLLER_DEFAULT
    assert verdict(proxy.journal.entries) == CLEAN


# -- boto3 waiters: a fixed delay, Retry-After not read -------------------------------------------------

DYNAMODB = """
name: dynamodb
routes:
  - name: describe table
    match: {method: POST, path: /, headers: {X-Amz-Target: DynamoDB_20120810.DescribeTable}}
    sequence:
      - status: 200
        content-type: application/x-amz-json-1.0
        json: {Table: {TableName: t1, TableStatus: CREATING}}
        retry-after: 2
        times: 2
      - status: 200
        content-type: application/x-amz-json-1.0
        json: {Table: {TableName: t1, TableStatus: ACTIVE}}
"""


def test_boto3_waiter(play: Any) -> None:
    import boto3

    proxy = play(DYNAMODB)
    client = boto3.client(
        "dynamodb",
        endpoint_url=proxy.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    started = time.monotonic()
    # botocore waiters sleep their own fixed Delay and never read Retry-After (boto/botocore#1563)
    client.get_waiter("table_exists").wait(
        TableName="t1", WaiterConfig={"Delay": RECOMMENDED, "MaxAttempts": 10}
    )
    _wall("boto3 waiter (dynamodb table_exists)", started, len(proxy.journal.entries))
    entries = proxy.journal.entries
    assert [e.status for e in entries] == [200, 200, 200]
    assert verdict(entries) == CLEAN


# -- the pytest plugin: no error at teardown for an azure-core LocationPolling client -----------------------

PLUGIN_TEST = f"""
import pytest
from azure.core import PipelineClient
from azure.core.pipeline.policies import RequestIdPolicy, RetryPolicy
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LROBasePolling
from azure.core.rest import HttpRequest


def begin(base, path):
    client = PipelineClient(base_url=base, policies=[RequestIdPolicy(), RetryPolicy()])
    initial = client.send_request(HttpRequest("POST", base + path), _return_pipeline_response=True)
    return LROPoller(client, initial, lambda r: r.http_response.text(), LROBasePolling(timeout=30))


@pytest.mark.replay_proxy("location.yaml", retry_after={RECOMMENDED}, checks_disabled=["retry-after-202"])
def test_azure_core_location_polling(replay_proxy):
    assert "successfulRequests" in begin(replay_proxy.url, "/batch").result(timeout=60)


@pytest.mark.replay_proxy("location.yaml", retry_after={RECOMMENDED})
def test_the_202_check_is_on_by_default(replay_proxy):
    begin(replay_proxy.url, "/batch").result(timeout=60)
    with pytest.raises(AssertionError, match="retry-after-202: ignored the delay on the 202"):
        replay_proxy.verify()
"""


def test_pytest_plugin_passes_an_azure_core_location_polling_client(
    pytester: pytest.Pytester, confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLAY_PROXY_CONFDIR", str(confdir))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    (pytester.path / "location.yaml").write_text(LOCATION_POLLING)
    pytester.makepyfile(test_azure=PLUGIN_TEST)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest -p no:anyio\n")
    result = pytester.runpytest_subprocess(timeout=120)
    # before: "ERROR at teardown ... unfinished" (the 200 without a status field was not an end)
    assert result.parseoutcomes() == {"passed": 2}, result.stdout.str()


# -- the check can fire at the same setting ---------------------------------------------------------------


def test_a_client_that_ignores_the_delay_is_caught_at_the_recommended_setting(play: Any) -> None:
    proxy = play((ROOT / "scenarios/azure-maps/tileset-succeeds.yaml").read_text())
    with _requests_session(None) as session:
        assert requests_poller(session, proxy.url, honour=False) == "Succeeded"
    violations = check(proxy.journal.entries)
    assert [v.rule for v in violations] == ["retry-after"], report(proxy.journal.entries, violations)
    assert re.search(
        r"which said to wait 0\.05 s \(and \d more early polls? of this operation\); the client "
        r"should wait at least the Retry-After",
        violations[0].message,
    )


def test_the_readme_recommends_what_these_tests_prove() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"--retry-after {RECOMMENDED:g}" in readme
    assert re.search(rf"recommend\w*[^.]*`--retry-after {RECOMMENDED:g}`", readme), "README's recommendation"
