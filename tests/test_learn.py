"""`replay-proxy learn`: a recording becomes a scenario that a real client cannot tell from the recording.

Round trips: a recording (made here through the recording proxy from a loopback upstream, or a shipped /
public cassette) is learned; the client then runs against `replay cassette` and against `play learned.yaml`,
and must see the same sequence of (HTTP status, operation status, terminal) and the same result, with a
clean verdict on both. Every style of the language: creator-v1 (the reference service), creator-v2
(Operation-Location), AIP-151 (body name), arm (Azure-AsyncOperation, then the final GET) and location
(202 until done). Learn's operations are proxy.operations.recognise's, the verdict's recogniser.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests
import yaml
from azure.core import PipelineClient
from azure.core.pipeline.policies import RequestIdPolicy, SansIOHTTPPolicy
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LocationPolling, LROBasePolling, OperationResourcePolling
from azure.core.rest import HttpRequest

from proxy.cli import main
from proxy.creator_service import CreatorService
from proxy.learn import find_operations
from proxy.recordings import RecordingError, read_recording
from proxy.scenario.loader import check_scenarios
from proxy.server import ReplayProxy
from proxy.verdict import check
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))
from creator_client import CreatorClient, CreatorError

FAST = 0.05
TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}


# -- a loopback service of every other style ---------------------------------------------------------


class StylesService:
    """creator-v2, AIP-151, ARM Azure-AsyncOperation and Location-polling operations, by poll count."""

    def __init__(self) -> None:
        self.polls: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

            do_POST = do_PUT = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        path = urlsplit(h.path).path
        base = self.url
        status, headers, body = 404, {}, {"error": {"code": "NotFound", "message": path}}
        parts = path.strip("/").split("/")
        if h.command == "POST" and path == "/conversions":
            op = str(uuid.uuid4())
            status, body = 202, None
            headers = {
                "Operation-Location": f"{base}/conversions/operations/{op}?api-version=2.0",
                "Retry-After": "1",
            }
        elif path.startswith("/conversions/operations/"):
            op = parts[-1]
            n = self.polls[op] = self.polls.get(op, 0) + 1
            state = ["NotStarted", "Running", "Running"][n - 1] if n <= 3 else "Succeeded"
            status, body = 200, {"operationId": op, "created": "2026-12-05T00:00:00+00:00", "status": state}
            if state == "Succeeded":
                headers = {"Resource-Location": f"{base}/conversions/c-{op[:8]}?api-version=2.0"}
            else:
                headers = {"Retry-After": "1"}
        elif h.command == "GET" and path.startswith("/conversions/c-"):
            status, body = 200, {"conversionId": parts[-1], "ontology": "facility-2.0"}
        elif h.command == "POST" and path == "/v1/projects/p1/instances":
            op = uuid.uuid4().hex
            status, body = 200, {"name": f"operations/{op}", "done": False}
        elif path.startswith("/v1/operations/"):
            op = parts[-1]
            n = self.polls[op] = self.polls.get(op, 0) + 1
            body = {"name": f"operations/{op}", "done": n > 2, "metadata": {"progress": min(100, n * 40)}}
            if n > 2:
                body["response"] = {"name": "projects/p1/instances/i1", "state": "READY"}
            status = 200
        elif h.command == "PUT" and path == "/subscriptions/s1/resourceGroups/g1/providers/Demo/things/t1":
            op = str(uuid.uuid4())
            status, body = 201, {"id": "/things/t1", "properties": {"provisioningState": "Accepted"}}
            headers = {
                "Azure-AsyncOperation": f"{base}/subscriptions/s1/providers/Demo/locations/westus/"
                f"operationStatuses/{op}?api-version=2024-01-01",
                "Retry-After": "1",
            }
        elif "/operationStatuses/" in path:
            op = parts[-1]
            n = self.polls[op] = self.polls.get(op, 0) + 1
            status, body = 200, {"id": op, "status": "InProgress" if n < 3 else "Succeeded"}
            headers = {"Retry-After": "1"} if n < 3 else {}
        elif h.command == "GET" and path == "/subscriptions/s1/resourceGroups/g1/providers/Demo/things/t1":
            status, body = 200, {"id": "/things/t1", "properties": {"provisioningState": "Succeeded"}}
        elif h.command == "POST" and path == "/things/t3/listKeys":
            op = str(uuid.uuid4())
            status, body = 202, None
            headers = {
                "Azure-AsyncOperation": f"{base}/subscriptions/s1/providers/Demo/locations/westus/"
                f"operationStatuses/{op}?api-version=2024-01-01",
                "Location": f"{base}/keyresults/{op}?api-version=2024-01-01",
                "Retry-After": "1",
            }
        elif h.command == "GET" and path.startswith("/keyresults/"):
            status, body = 200, {"keys": [{"keyName": "key1", "permissions": "FULL"}]}
        elif h.command == "DELETE" and path == "/things/t2":
            op = str(uuid.uuid4())
            status, body = 202, None
            headers = {"Location": f"{base}/operationresults/{op}", "Retry-After": "1"}
        elif path.startswith("/operationresults/"):
            op = parts[-1]
            n = self.polls[op] = self.polls.get(op, 0) + 1
            status, body = (202, None) if n < 3 else (200, None)
            headers = {"Location": f"{base}/operationresults/{op}", "Retry-After": "1"} if n < 3 else {}
        data = b"" if body is None else json.dumps(body).encode()
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if data:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture
def styles() -> Iterator[StylesService]:
    service = StylesService()
    yield service
    service.stop()


# -- clients ---------------------------------------------------------------------------------


SEEN: list[tuple[Any, ...]] = []
"""What the client saw of each answer: (method, HTTP status, the operation status in the body)."""


def _saw(method: str, status: int, text: str) -> None:
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    op = None
    if isinstance(body, dict):
        op = body.get("status") if "status" in body else body.get("done")
    SEEN.append((method, status, op))


class Seen(SansIOHTTPPolicy):  # type: ignore[type-arg]
    def on_response(self, request: Any, response: Any) -> None:
        r = response.http_response
        _saw(r.request.method, r.status_code, r.text())


def azure_core(base: str, method: str, path: str, algorithm: Any) -> tuple[str, Any]:
    """azure-core's LROPoller with one polling algorithm: its final status and result."""
    client = PipelineClient(base, policies=[RequestIdPolicy(), Seen()])
    start = client.send_request(HttpRequest(method, f"{base}{path}"), _return_pipeline_response=True)
    polling = LROBasePolling(timeout=FAST, lro_algorithms=[algorithm])

    def result(r: Any) -> Any:
        text = r.http_response.text()
        return json.loads(text) if text else None

    poller = LROPoller(client, start, result, polling)
    out = poller.result(timeout=30)
    return poller.status(), _stable(out)


def polling_loop(base: str, method: str, path: str) -> tuple[str, Any]:
    """A plain loop: status URL from the headers or the AIP-151 name, honouring Retry-After."""
    session = _seeing_session()
    r = session.request(method, f"{base}{path}", timeout=10)
    url = (
        r.headers.get("Azure-AsyncOperation")
        or r.headers.get("Operation-Location")
        or r.headers.get("Location")
    )
    url = urljoin(r.url, url) if url else f"{base}/v1/{r.json()['name']}"
    for _ in range(30):
        time.sleep(float(r.headers.get("retry-after-ms", 0)) / 1000 or FAST)
        r = session.get(url, timeout=10)
        body = r.json() if r.content else {}
        if (
            body.get("done") is True
            or str(body.get("status", "")).lower() in TERMINAL
            or (r.status_code in (200, 201) and not body.get("status") and "done" not in body)
        ):
            return str(body.get("status") or body.get("done")), _stable(body)
    raise AssertionError("never finished")


def _seeing_session() -> requests.Session:
    session = requests.Session()
    session.hooks["response"].append(lambda r, **_: _saw(r.request.method, r.status_code, r.text))
    return session


VOLATILE = ("id", "creat", "name", "url", "location", "date", "time", "token")
"""Keys whose values differ from run to run (ids, dates, URLs) or are secrets (redacted when learned)."""


def _stable(value: Any) -> Any:
    """A result without what differs from run to run; an empty body and {} alike."""
    if value is None or value == {}:
        return None
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def trace(entries: list[Any]) -> list[tuple[Any, ...]]:
    """What the client saw of each answer (``SEEN``), checked against what the journal says was sent."""
    seen = list(SEEN)
    SEEN.clear()
    assert [(m, s) for m, s, _ in seen] == [(e.method, e.status) for e in entries]
    return seen


def round_trip(
    tmp_path: Path, confdir: Path, cassette: Path, client: Callable[[str], Any], *, skip: tuple[str, ...] = ()
) -> tuple[Path, Any]:
    """Learn ``cassette``; run ``client(base_url)`` against replay and against play; the same on both."""
    learned = tmp_path / "learned.yaml"
    assert main(["learn", str(cassette), "-o", str(learned)]) == 0
    _loaded, problems = check_scenarios([learned])
    assert not problems, problems
    seen = []
    for kwargs in ({"cassette": cassette}, {"scenarios": [learned]}):
        SEEN.clear()
        with ReplayProxy(confdir=confdir, retry_after=FAST, **kwargs) as p:
            outcome = client(p.url)
            entries = list(p.journal.entries)
        violations = check(entries, skip)
        assert not violations, (kwargs, violations)
        seen.append((trace(entries), outcome))
    assert seen[0] == seen[1], f"replay: {seen[0]}\nplay:   {seen[1]}"
    return learned, seen[0]


def record(tmp_path: Path, confdir: Path, upstream: str, drive: Callable[[str], Any]) -> Path:
    cassette = tmp_path / "recorded.yaml"
    with ReplayProxy(cassette, upstream=upstream, confdir=confdir) as p:
        drive(p.url)
    return cassette


# -- round trips ---------------------------------------------------------------------------------


def creator_outcome(base: str, dataset: str) -> Any:
    client = CreatorClient(base_url=base, default_interval=FAST, session=_seeing_session())
    try:
        return _stable(client.create_tileset(dataset))
    except CreatorError as e:
        return ("error", e.code, e.message, e.details)


def test_creator_v1_recorded_from_the_reference_service(tmp_path: Path, confdir: Path) -> None:
    """Three outcomes of the reference service in one recording: three entries, told apart by datasetId."""
    datasets = ["8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d", "invalid-1", "noresource-1"]
    with CreatorService() as service:
        cassette = record(
            tmp_path, confdir, service.url, lambda base: [creator_outcome(base, d) for d in datasets]
        )
    learned, (_, outcomes) = round_trip(
        tmp_path, confdir, cassette, lambda base: [creator_outcome(base, d) for d in datasets]
    )
    assert outcomes[1][:2] == ("error", "InvalidFeature")
    scenario = yaml.safe_load(learned.read_text())
    assert [len(o["steps"]) for o in scenario["operations"]] == [3, 3, 3]
    assert learned.read_text().startswith("# yaml-language-server: $schema=")


@pytest.mark.parametrize("name", ["tileset-succeeds", "tileset-fails", "succeeds-without-resource"])
def test_shipped_creator_cassettes(tmp_path: Path, confdir: Path, name: str) -> None:
    cassette = ROOT / "cassettes" / "azure-maps" / f"{name}.yaml"
    dataset = dict(next(iter(read_recording(cassette).exchanges)).interaction.request.query)["datasetId"]
    learned, _ = round_trip(tmp_path, confdir, cassette, lambda base: creator_outcome(base, dataset))
    text = learned.read_text()
    assert text.count("- {status: Running, times: 2}") == 1  # one entry, not one route per poll
    assert "routes:" not in text


def test_learned_operation_serves_concurrent_operations(tmp_path: Path, confdir: Path) -> None:
    learned = tmp_path / "learned.yaml"
    assert main(["learn", str(ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"), "-o", str(learned)]) == 0
    with ReplayProxy(scenarios=[learned], confdir=confdir, retry_after=FAST) as p:
        results: list[Any] = []
        threads = [
            threading.Thread(
                target=lambda d=d: results.append(CreatorClient(base_url=p.url).create_tileset(d))
            )
            for d in ("a-dataset-0001", "b-dataset-0002")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not check(list(p.journal.entries))
    assert sorted(r["datasetId"] for r in results) == ["a-dataset-0001", "b-dataset-0002"]
    assert len({r["tilesetId"] for r in results}) == 2


def test_creator_v2_operation_location_with_azure_core(
    tmp_path: Path, confdir: Path, styles: StylesService
) -> None:
    def client(base: str) -> Any:
        return azure_core(base, "POST", "/conversions?api-version=2.0&udid=u1", OperationResourcePolling())

    cassette = record(tmp_path, confdir, styles.url, client)
    learned, (_entries, outcome) = round_trip(tmp_path, confdir, cassette, client, skip=("retry-after-202",))
    assert outcome[0] == "Succeeded"
    op = yaml.safe_load(learned.read_text())["operations"][0]
    assert op["style"] == "creator-v2" and op["header"] == "Operation-Location"
    assert op["status-path"] == "/conversions/operations/{operationId}?api-version=2.0"


def test_aip_151_with_a_polling_loop(tmp_path: Path, confdir: Path, styles: StylesService) -> None:
    def client(base: str) -> Any:
        return polling_loop(base, "POST", "/v1/projects/p1/instances")

    cassette = record(tmp_path, confdir, styles.url, client)
    learned, (_, outcome) = round_trip(tmp_path, confdir, cassette, client)
    assert outcome[0] == "True"
    op = yaml.safe_load(learned.read_text())["operations"][0]
    assert op["style"] == "aip-151" and op["status-path"] == "/v1/operations/{operationId}"


def test_azure_async_operation_with_azure_core(tmp_path: Path, confdir: Path, styles: StylesService) -> None:
    def client(base: str) -> Any:
        path = "/subscriptions/s1/resourceGroups/g1/providers/Demo/things/t1?api-version=2024-01-01"
        return azure_core(base, "PUT", path, OperationResourcePolling("azure-asyncoperation"))

    cassette = record(tmp_path, confdir, styles.url, client)
    learned, (_, outcome) = round_trip(tmp_path, confdir, cassette, client, skip=("retry-after-202",))
    assert outcome[0] == "Succeeded"
    text = learned.read_text()
    op = yaml.safe_load(text)["operations"][0]
    assert op["style"] == "arm" and op["header"] == "Azure-AsyncOperation"
    assert "status" not in op["accepted"]  # a PUT's 201 is the arm style's own
    assert "resource" in op and "routes:" not in text  # the final GET of the PUT's URL: the operation's


def test_arm_post_with_a_location_beside_azure_async_operation(
    tmp_path: Path, confdir: Path, styles: StylesService
) -> None:
    """An ARM action: 202 with Azure-AsyncOperation (polled) and another URL in Location (fetched after
    success, azure-core's final-state-via rule for a POST). Each learned operation gives its own result
    URL, and the result GET is the operation's, not a route of the one recorded URL."""

    def client(base: str) -> Any:
        polling = OperationResourcePolling("azure-asyncoperation")
        return azure_core(base, "POST", "/things/t3/listKeys", polling)

    cassette = record(tmp_path, confdir, styles.url, client)
    learned, (entries, outcome) = round_trip(tmp_path, confdir, cassette, client, skip=("retry-after-202",))
    assert [e[1] for e in entries] == [202, 200, 200, 200, 200]
    assert outcome == ("Succeeded", {"keys": [{"permissions": "FULL"}]})  # (names are left out)
    text = learned.read_text()
    op = yaml.safe_load(text)["operations"][0]
    assert op["style"] == "arm" and op["header"] == "Azure-AsyncOperation"
    assert op["accepted"]["headers"] == {"Location": "{{ operation.resource_url }}"}
    assert op["resource-path"] == "/keyresults/{resourceId}" and op["resource"]["json"]["keys"]
    assert "routes:" not in text


def test_location_polling_with_azure_core(tmp_path: Path, confdir: Path, styles: StylesService) -> None:
    def client(base: str) -> Any:
        return azure_core(base, "DELETE", "/things/t2", LocationPolling())

    cassette = record(tmp_path, confdir, styles.url, client)
    learned, (entries, outcome) = round_trip(tmp_path, confdir, cassette, client, skip=("retry-after-202",))
    assert [e[1] for e in entries] == [202, 202, 202, 200]
    assert outcome[0] == "Succeeded"
    op = yaml.safe_load(learned.read_text())["operations"][0]
    assert op["style"] == "location" and op["header"] == "Location"
    assert all("json" not in step for step in op["steps"][:-1])  # 202 without a body, as recorded
    with ReplayProxy(confdir=confdir, retry_after=FAST, scenarios=[learned]) as p:
        start = requests.delete(f"{p.url}/things/t2", timeout=10)
        poll = requests.get(urljoin(start.url, start.headers["Location"]), timeout=10)
    assert (start.status_code, poll.status_code, poll.content) == (202, 202, b"")  # not {}


def test_real_azure_sdk_recording_copy_model(tmp_path: Path, confdir: Path) -> None:
    """Azure/azure-sdk-for-python's form recognizer copy: Operation-Location, lower-case statuses, no
    Retry-After; azure-core's OperationResourcePolling on both."""
    cassette = ROOT / "tests/corpus/azure/test_copy_model.test_copy_model_successful.yaml"
    path = "/formrecognizer/v2.0-preview/custom/models/c885a510-785f-402b-a69b-650d581331db/copy"

    def client(base: str) -> Any:
        return azure_core(base, "POST", path, OperationResourcePolling())

    learned, (entries, outcome) = round_trip(tmp_path, confdir, cassette, client, skip=("retry-after-202",))
    assert outcome[0] == "succeeded"
    assert [e[2] for e in entries] == [
        None,
        "notStarted",
        "notStarted",
        "notStarted",
        "notStarted",
        "succeeded",
    ]
    assert [e[1] for e in entries] == [202, 200, 200, 200, 200, 200]
    assert "accessToken: <REDACTED-1>" in learned.read_text()  # a secret's name: redacted when learned


def test_real_arm_delete_location_polling(tmp_path: Path, confdir: Path) -> None:
    """azure-mgmt-resource's recording: DELETE 202 + Location, polled 202 then 200 (LocationPolling)."""
    cassette = ROOT / "tests/corpus/azure/test_mgmt_resource.test_resource_groups.yaml"
    path = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/"
        "test_mgmt_resource_test_resource_groups457f1050?api-version=2019-10-01"
    )

    def client(base: str) -> Any:
        return azure_core(base, "DELETE", path, LocationPolling())

    learned, (entries, outcome) = round_trip(tmp_path, confdir, cassette, client)
    assert [e[1] for e in entries] == [202, 202, 200] and outcome[0] == "Succeeded"
    assert yaml.safe_load(learned.read_text())["operations"][0]["style"] == "location"


def test_learn_reads_operations_with_the_verdicts_recogniser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One module infers operations: learn's come from proxy.operations.recognise, whose walk
    (``Timeline``) is the one the verdict judges."""
    import proxy.operations
    import proxy.verdict

    assert proxy.verdict._Analysis is proxy.operations.Timeline
    cassette = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
    walks: list[int] = []

    class Counting(proxy.operations.Timeline):
        def __init__(self, entries: Any) -> None:
            walks.append(len(entries))
            super().__init__(entries)

    monkeypatch.setattr(proxy.operations, "Timeline", Counting)
    interactions = [e.interaction for e in read_recording(cassette).exchanges]
    assert len(find_operations(interactions)) == 1 and walks == [len(interactions)]
    monkeypatch.setattr(proxy.operations, "recognise", lambda items: [])
    assert find_operations(interactions) == []
    assert main(["learn", str(cassette), "-o", str(tmp_path / "l.yaml")]) == 0
    assert "operations:" not in (tmp_path / "l.yaml").read_text()


# -- shapes ---------------------------------------------------------------------------------


def test_no_operation_gives_routes_and_sequences(tmp_path: Path) -> None:
    cassette = ROOT / "tests/corpus/vcrpy/cassette_with_duplicate_requests.yaml"
    learned = tmp_path / "l.yaml"
    assert main(["learn", str(cassette), "-o", str(learned)]) == 0
    text = learned.read_text()
    assert "operations:" not in text and "routes:" in text
    assert not check_scenarios([learned])[1]


def test_identical_requests_become_a_sequence(tmp_path: Path) -> None:
    cassette = ROOT / "tests/corpus/tweepy/testblocksids.json"
    learned = tmp_path / "l.yaml"
    assert main(["learn", str(cassette), "-o", str(learned)]) == 0
    assert not check_scenarios([learned])[1]


def test_unfinished_operation_is_learned_as_far_as_it_went(tmp_path: Path) -> None:
    src = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
    data = yaml.safe_load(src.read_text())
    data["interactions"] = data["interactions"][:3]  # the start, NotStarted, Running
    cassette = tmp_path / "cut.yaml"
    cassette.write_text(yaml.safe_dump(data))
    learned = tmp_path / "l.yaml"
    assert main(["learn", str(cassette), "-o", str(learned)]) == 0
    text = learned.read_text()
    assert "never finishes" in text
    assert [s["status"] for s in yaml.safe_load(text)["operations"][0]["steps"]] == ["NotStarted", "Running"]


def test_not_a_recording_is_a_located_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.yaml"
    bad.write_text("hello: world\n")
    assert main(["learn", str(bad), "-o", str(tmp_path / "x.yaml")]) == 2
    assert f"{bad}:1:1: no 'interactions'" in capsys.readouterr().err
    broken = tmp_path / "b.har"
    broken.write_text('{"log": {"entries": [}')
    assert main(["learn", str(broken), "-o", str(tmp_path / "x.yaml")]) == 2
    assert f"{broken}:1:" in capsys.readouterr().err
    with pytest.raises(RecordingError, match="no such file"):
        read_recording(tmp_path / "missing.yaml")
    assert not (tmp_path / "x.yaml").exists()


def test_har_and_flow_dumps_read_with_mitmproxy(tmp_path: Path) -> None:
    """The same exchanges as a HAR file and a mitmproxy flow dump learn the same operation."""
    from mitmproxy import http
    from mitmproxy.io import FlowWriter
    from mitmproxy.test import tflow

    cassette = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
    exchanges = read_recording(cassette).exchanges
    entries, flows = [], []
    for n, ex in enumerate(exchanges):
        req, resp = ex.interaction.request, ex.interaction.response
        started = datetime.fromtimestamp(1_800_000_000 + n * 1.5, UTC).isoformat().replace("+00:00", "Z")
        entries.append(
            {
                "startedDateTime": started,
                "time": 5,
                "request": {"method": req.method, "url": req.url, "httpVersion": "HTTP/1.1",
                            "headers": [{"name": k, "value": v} for k, v in req.headers]},
                "response": {"status": resp.status, "httpVersion": "HTTP/1.1",
                             "headers": [{"name": k, "value": v} for k, v in resp.headers],
                             "content": {"text": resp.body.decode()}},
            }
        )  # fmt: skip
        f = tflow.tflow(resp=True)
        f.request = http.Request.make(req.method, req.url, req.body, dict(req.headers))
        f.request.timestamp_start = 1_800_000_000 + n * 1.5
        f.response = http.Response.make(resp.status, resp.body, dict(resp.headers))
        flows.append(f)
    har = tmp_path / "rec.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "entries": entries}}))
    dump = tmp_path / "rec.flows"
    with open(dump, "wb") as fo:
        writer = FlowWriter(fo)
        for f in flows:
            writer.add(f)
    for source in (har, dump):
        recording = read_recording(source)
        assert recording.times == "request"
        ops = find_operations([e.interaction for e in recording.exchanges])
        assert [len(o.polls) for o in ops] == [4]
        learned = tmp_path / f"{source.suffix[1:]}.yaml"
        assert main(["learn", str(source), "-o", str(learned)]) == 0
        assert "- {status: NotStarted}   # 3 s in the recording" in learned.read_text()  # from the start
        assert main(["learn", str(source), "-o", str(learned), "--timing", "time"]) == 0
        assert "{status: NotStarted, for: 3s}" in learned.read_text()
        assert not check_scenarios([learned])[1]


def test_real_arm_deployments_three_operations(tmp_path: Path, confdir: Path) -> None:
    """azure-mgmt-resource's deployment test (trimmed, see SOURCES.md): a PUT answered 201 +
    Azure-AsyncOperation (azure-core with the ARM header), a POST whatIf polled via Location to Failed
    with the service's error (a polling loop that reads the status), a DELETE polled to 204
    (LocationPolling)."""
    cassette = ROOT / "tests/corpus/azure/test_mgmt_resource.test_deployments_basic.yaml"
    deployment = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rgname/providers/"
        "Microsoft.Resources/deployments/pytestdeployment667e10fe"
    )
    query = "?api-version=2020-10-01"

    def client(base: str) -> Any:
        put = azure_core(base, "PUT", deployment + query, OperationResourcePolling("azure-asyncoperation"))
        what_if = polling_loop(base, "POST", f"{deployment}/whatIf{query}")
        delete = azure_core(base, "DELETE", deployment + query, LocationPolling())
        return put, what_if, delete

    learned, (entries, (put, what_if, delete)) = round_trip(
        tmp_path, confdir, cassette, client, skip=("retry-after-202",)
    )
    assert [e[1] for e in entries] == [201, 200, 200, 202, 200, 202, 204]
    assert put[0] == "Succeeded" and delete[0] == "Succeeded"
    assert what_if[0] == "Failed" and what_if[1]["error"]["code"] == "InvalidTemplate"
    ops = yaml.safe_load(learned.read_text())["operations"]
    assert [o["header"] for o in ops] == ["Azure-AsyncOperation", "Location", "Location"]
    assert [o["style"] for o in ops] == ["arm", "creator-v1", "location"]
    assert ops[1]["steps"][0]["error"]["code"] == "InvalidTemplate"


def replicate_wait(base: str, version_path: str) -> tuple[str, Any, Any]:
    """replicate-python's ``run`` as a plain loop: POST /v1/predictions, GET the model version, then
    ``prediction.wait()`` (GET /v1/predictions/{id}, its base URL and the id, until a terminal status)."""
    session = _seeing_session()
    r = session.post(f"{base}/v1/predictions", json={"input": {}}, timeout=10)
    prediction = r.json()
    session.get(f"{base}{version_path}", timeout=10)
    for _ in range(30):
        if str(prediction["status"]).lower() in TERMINAL:
            return prediction["status"], prediction.get("output"), prediction.get("error")
        time.sleep(FAST)
        prediction = session.get(f"{base}/v1/predictions/{prediction['id']}", timeout=10).json()
    raise AssertionError("never finished")


def test_real_replicate_prediction_status_url_in_the_body(tmp_path: Path, confdir: Path) -> None:
    """replicate/replicate-python's recording of ``replicate.run``: POST /v1/predictions answers 201 with
    ``status: starting`` and the status URL in the body's ``urls.get``, polled with 200 every time
    (starting, processing x9, succeeded with the output). Learned as an operation (``header: none``, the
    URL templated into the body), not as a sequence of recorded answers."""
    cassette = ROOT / "tests/corpus/replicate/run.yaml"
    version = (
        "/v1/models/stability-ai/sdxl/versions/"
        "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"
    )
    learned, (entries, outcome) = round_trip(
        tmp_path, confdir, cassette, lambda base: replicate_wait(base, version)
    )
    assert [e[1] for e in entries] == [201, 200] + [200] * 11
    assert [e[2] for e in entries] == ["starting", None, "starting"] + ["processing"] * 9 + ["succeeded"]
    assert outcome[0] == "succeeded" and outcome[1][0].endswith("/out-0.png") and outcome[2] is None
    (op,) = yaml.safe_load(learned.read_text())["operations"]
    assert op["header"] == "none" and op["status-path"] == "/v1/predictions/{operationId}"
    assert op["accepted"]["status"] == 201
    assert op["accepted"]["json"]["urls"]["get"] == "{{ operation.status_url }}"
    assert [(s["status"], s.get("times", 1)) for s in op["steps"]] == [
        ("starting", 1),
        ("processing", 9),
        ("succeeded", 1),
    ]


# -- the README's walk-through -------------------------------------------------------------------------------

SECTION = "README.md#Learn a scenario from a recording"


def test_the_readme_shows_what_learn_writes(tmp_path: Path) -> None:
    from tests.docs_runner import blocks

    shown = [b.text for b in blocks() if b.section == SECTION and b.text.startswith("# yaml-language-server")]
    assert len(shown) == 1
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "scenario.schema.json").write_text("{}")
    out = tmp_path / "scenarios" / "learned" / "tileset.yaml"
    assert main(["learn", str(ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"), "-o", str(out)]) == 0
    assert out.read_text() == shown[0]


def test_the_readme_story_plays_ten_minutes_fast(tmp_path: Path, confdir: Path) -> None:
    """The edited copy: Running for ten virtual minutes (20 polls), a 503 on the way, then Failed."""
    from tests.docs_runner import blocks

    story = next(b.text for b in blocks() if b.section == SECTION and b.text.startswith("# tileset-slow"))
    path = tmp_path / "story.yaml"
    path.write_text(story)
    with ReplayProxy(scenarios=[path], confdir=confdir, retry_after=FAST) as p:
        client = CreatorClient(base_url=p.url, default_interval=FAST)
        started = time.monotonic()
        with pytest.raises(CreatorError, match="InvalidFeature"):
            client.create_tileset("my-dataset")
        took = time.monotonic() - started
        entries = list(p.journal.entries)
        assert not check(entries)
    polls = [e for e in entries if e.method == "GET"]
    assert [e.status for e in polls].count(503) == 1
    assert sum(e.op_status == "Running" and e.status == 200 for e in polls) == 20
    print(f"ten virtual minutes in {took:.2f} s")


def test_repeated_requests_become_a_sequence_and_big_bodies_files(tmp_path: Path, confdir: Path) -> None:
    """The same GET answered queued twice, 503, done: one route, a sequence with times, as replay answers
    it; a body over 1 KB goes to a file beside the scenario."""
    from proxy import cassette
    from proxy.model import Interaction, Request, Response

    def answer(status: int, body: Any) -> Response:
        return Response(status, "", (("Content-Type", "application/json"),), json.dumps(body).encode())

    job = Request("GET", "http://api.example.test/jobs/7")
    big = {"rows": ["x" * 100] * 20}
    interactions = [
        Interaction(job, answer(200, {"state": "queued"})),
        Interaction(job, answer(200, {"state": "queued"})),
        Interaction(job, answer(503, {"error": "busy"})),
        Interaction(job, answer(200, {"state": "done"})),
        Interaction(Request("GET", "http://api.example.test/report"), answer(200, big)),
    ]
    recorded = tmp_path / "jobs.yaml"
    cassette.save(recorded, interactions)

    def client(base: str) -> Any:
        session = _seeing_session()
        states = [session.get(f"{base}/jobs/7", timeout=10).json() for _ in range(4)]
        return states, session.get(f"{base}/report", timeout=10).json() == big

    learned, (_, (states, same_report)) = round_trip(tmp_path, confdir, recorded, client)
    assert states[-1] == {"state": "done"} and same_report
    route = yaml.safe_load(learned.read_text())["routes"][0]
    assert [s.get("times", 1) for s in route["sequence"]] == [2, 1, 1]
    assert (tmp_path / "learned.files").is_dir() and "file: learned.files/" in learned.read_text()


def test_several_sources_learn_one_scenario(tmp_path: Path, confdir: Path) -> None:
    """The four shipped Creator cassettes together: the 400 route and three operations told apart by the
    datasetId each recording started with; each story plays for its dataset."""
    sources = sorted(str(p) for p in (ROOT / "cassettes" / "azure-maps").glob("*.yaml"))
    learned = tmp_path / "creator.yaml"
    assert main(["learn", *sources, "-o", str(learned)]) == 0
    scenario = yaml.safe_load(learned.read_text())
    assert len(scenario["routes"]) == 1 and len(scenario["operations"]) == 3
    assert scenario["routes"][0]["match"]["query"] == {"api-version": "2.0", "datasetId": None}
    datasets = {}
    for op in scenario["operations"]:
        datasets[op["steps"][-1]["status"] + ("+resource" if "resource-path" in op else "")] = op["start"][
            "query"
        ]["datasetId"]
    with ReplayProxy(scenarios=[learned], confdir=confdir, retry_after=FAST) as p:
        client = CreatorClient(base_url=p.url, default_interval=FAST)
        assert client.create_tileset(datasets["Succeeded+resource"])["tilesetId"]
        assert client.create_tileset(datasets["Succeeded"])["status"] == "Succeeded"
        with pytest.raises(CreatorError, match="InvalidFeature"):
            client.create_tileset(datasets["Failed"])
        with pytest.raises(CreatorError, match="BadRequest"):
            client.create_tileset(None)
        assert not check(list(p.journal.entries))


def test_a_relative_status_url_stays_relative(tmp_path: Path, confdir: Path) -> None:
    from proxy import cassette
    from proxy.model import Interaction, Request, Response

    op = "5f0c2d1e-3a4b-4c5d-8e9f-a0b1c2d3e4f5"
    poll = Request("GET", f"http://api.example.test/jobs/operations/{op}")

    def status(state: str, *headers: tuple[str, str]) -> Response:
        body = json.dumps({"operationId": op, "status": state}).encode()
        return Response(200, "OK", (("Content-Type", "application/json"), *headers), body)

    interactions = [
        Interaction(
            Request("POST", "http://api.example.test/jobs?kind=build"),
            Response(202, "Accepted", (("Location", f"/jobs/operations/{op}"), ("Retry-After", "2"))),
        ),
        Interaction(poll, status("Running", ("Retry-After", "2"))),
        Interaction(poll, status("Running", ("Retry-After", "2"))),
        Interaction(poll, status("Succeeded")),
    ]
    recorded = tmp_path / "relative.yaml"
    cassette.save(recorded, interactions)
    learned, (entries, outcome) = round_trip(
        tmp_path, confdir, recorded, lambda base: polling_loop(base, "POST", "/jobs?kind=build")
    )
    op_entry = yaml.safe_load(learned.read_text())["operations"][0]
    assert op_entry["url-form"] == "relative" and op_entry["retry-after"] == 2
    assert op_entry["start"] == {"method": "POST", "path": "/jobs", "query": {"kind": "build"}}
    assert [e[2] for e in entries] == [None, "Running", "Running", "Succeeded"] and outcome[0] == "Succeeded"
