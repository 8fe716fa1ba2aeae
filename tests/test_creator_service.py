"""The reference upstream (proxy/creator_service.py) honours the seed's Creator LRO contract."""

from __future__ import annotations

import gzip
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy.creator_service import CreatorService, format_created_date_time, main

TIMEOUT = 5
REPO_ROOT = Path(__file__).resolve().parent.parent

SEED_ERROR = {
    "code": "InvalidFeature",
    "message": "The provided feature is invalid.",
    "details": {
        "code": "NoGeometry",
        "message": "No geometry was provided with the feature.",
    },
}
# The seed: "3/11/2020 8:45:13 PM +00:00" (no zero padding on month, day, hour).
CREATED_RE = re.compile(
    r"^(?:[1-9]|1[0-2])/(?:[1-9]|[12]\d|3[01])/\d{4} (?:[1-9]|1[0-2]):[0-5]\d:[0-5]\d (?:AM|PM) \+00:00$"
)
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
def service() -> Iterator[CreatorService]:
    with CreatorService(running_polls=2, retry_after=1) as svc:
        yield svc


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # never route loopback traffic through an environment proxy
        yield s


def start_operation(session: requests.Session, service: CreatorService, dataset_id: str) -> str:
    r = session.post(
        f"{service.url}/tilesets",
        params={"api-version": "2.0", "datasetId": dataset_id},
        timeout=TIMEOUT,
    )
    assert r.status_code == 202
    return r.headers["Location"]


def poll(session: requests.Session, location: str) -> requests.Response:
    return session.get(location, params={"api-version": "2.0"}, timeout=TIMEOUT)


def assert_json(r: requests.Response) -> Any:
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert int(r.headers["Content-Length"]) == len(r.content)
    return r.json()


# --------------------------------------------------------------------------------------- the flows


def test_success_flow_follows_location_headers(service: CreatorService, session: requests.Session) -> None:
    r = session.post(
        f"{service.url}/tilesets?api-version=2.0&datasetId=ds-1", data=b'{"ignored": true}', timeout=TIMEOUT
    )
    assert r.status_code == 202
    assert r.reason == "Accepted"
    assert r.content == b""
    assert r.headers["Content-Length"] == "0"
    assert r.headers["Retry-After"] == "1"
    location = r.headers["Location"]
    assert re.fullmatch(re.escape(service.url) + r"/tilesets/operations/" + UUID_RE, location)
    operation_id = location.rsplit("/", 1)[1]

    statuses = []
    for _ in range(1 + service.running_polls):
        r = poll(session, location)
        assert r.status_code == 200
        body = assert_json(r)
        assert body["operationId"] == operation_id
        assert CREATED_RE.match(body["createdDateTime"])
        assert r.headers["Retry-After"] == "1"
        assert "Location" not in r.headers
        statuses.append(body["status"])
    assert statuses == ["NotStarted", "Running", "Running"]

    r = poll(session, location)
    assert r.status_code == 201
    assert r.reason == "Created"
    assert "Retry-After" not in r.headers
    body = assert_json(r)
    resource = r.headers["Location"]
    assert re.fullmatch(re.escape(service.url) + r"/tilesets/" + UUID_RE, resource)
    assert body == {
        "operationId": operation_id,
        "createdDateTime": body["createdDateTime"],
        "status": "Succeeded",
        "resourceLocation": resource,
    }

    r = session.get(resource, params={"api-version": "2.0"}, timeout=TIMEOUT)
    assert r.status_code == 200
    meta = assert_json(r)
    assert meta["tilesetId"] == resource.rsplit("/", 1)[1]
    assert meta["datasetId"] == "ds-1"
    for key in ("description", "minZoom", "maxZoom", "bbox"):
        assert key in meta
    assert meta["minZoom"] <= meta["maxZoom"]
    assert len(meta["bbox"]) == 4


def test_terminal_response_repeats(service: CreatorService, session: requests.Session) -> None:
    location = start_operation(session, service, "ds-repeat")
    for _ in range(1 + service.running_polls):
        poll(session, location)
    first = poll(session, location)
    for _ in range(3):
        again = poll(session, location)
        assert again.status_code == 201
        assert again.headers["Location"] == first.headers["Location"]
        assert again.json() == first.json()
        assert "Retry-After" not in again.headers
    assert service.polls(location.rsplit("/", 1)[1]) == 1 + service.running_polls + 4


def test_failure_flow_has_the_seed_error(service: CreatorService, session: requests.Session) -> None:
    location = start_operation(session, service, "invalid-geometry")
    for _ in range(1 + service.running_polls):
        assert poll(session, location).json()["status"] in ("NotStarted", "Running")
    for _ in range(2):
        r = poll(session, location)
        assert r.status_code == 200
        assert "Retry-After" not in r.headers
        assert "Location" not in r.headers
        body = assert_json(r)
        assert body["status"] == "Failed"
        assert body["error"] == SEED_ERROR
        assert set(body) == {"operationId", "createdDateTime", "status", "error"}


def test_no_resource_flow_is_200_without_location(service: CreatorService, session: requests.Session) -> None:
    location = start_operation(session, service, "noresource-1")
    for _ in range(1 + service.running_polls):
        poll(session, location)
    r = poll(session, location)
    assert r.status_code == 200
    assert "Location" not in r.headers
    assert "Retry-After" not in r.headers
    body = assert_json(r)
    assert body["status"] == "Succeeded"
    assert "resourceLocation" not in body
    assert "error" not in body


@pytest.mark.parametrize("query", ["api-version=2.0", "api-version=2.0&datasetId="])
def test_missing_dataset_id_is_400_odata(
    service: CreatorService, session: requests.Session, query: str
) -> None:
    r = session.post(f"{service.url}/tilesets?{query}", timeout=TIMEOUT)
    assert r.status_code == 400
    assert "Location" not in r.headers
    body = assert_json(r)
    assert set(body) == {"error"}
    assert body["error"]["code"] == "BadRequest"
    assert "datasetId" in body["error"]["message"]


@pytest.mark.parametrize("running_polls", [0, 1, 3])
@pytest.mark.parametrize("dataset_id", ["plain", "invalid-x", "noresource-x"])
def test_retry_after_exactly_on_non_terminal_statuses(
    session: requests.Session, running_polls: int, dataset_id: str
) -> None:
    with CreatorService(running_polls=running_polls, retry_after=7) as svc:
        location = start_operation(session, svc, dataset_id)
        seen = []
        for _ in range(running_polls + 3):
            r = poll(session, location)
            status = r.json()["status"]
            seen.append(status)
            if status in ("NotStarted", "Running"):
                assert r.headers.get("Retry-After") == "7"
            else:
                assert "Retry-After" not in r.headers
    terminal = {"plain": "Succeeded", "invalid-x": "Failed", "noresource-x": "Succeeded"}[dataset_id]
    assert seen == ["NotStarted"] + ["Running"] * running_polls + [terminal] * 2


def test_any_api_version_is_accepted(service: CreatorService, session: requests.Session) -> None:
    r = session.post(f"{service.url}/tilesets?api-version=1.0&datasetId=x", timeout=TIMEOUT)
    assert r.status_code == 202
    r = session.post(f"{service.url}/tilesets?datasetId=x", timeout=TIMEOUT)
    assert r.status_code == 202
    assert session.get(r.headers["Location"], timeout=TIMEOUT).json()["status"] == "NotStarted"


# ------------------------------------------------------------------------------------ createdDateTime


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2020, 3, 11, 20, 45, 13, tzinfo=UTC), "3/11/2020 8:45:13 PM +00:00"),  # the seed's
        (datetime(2021, 12, 1, 0, 5, 9, tzinfo=UTC), "12/1/2021 12:05:09 AM +00:00"),
        (datetime(2021, 1, 31, 12, 0, 0, tzinfo=UTC), "1/31/2021 12:00:00 PM +00:00"),
        (datetime(2021, 1, 31, 11, 59, 59), "1/31/2021 11:59:59 AM +00:00"),  # naive means UTC
        (
            datetime(2021, 1, 1, 1, 30, 0, tzinfo=timezone(timedelta(hours=2))),
            "12/31/2020 11:30:00 PM +00:00",
        ),
    ],
)
def test_format_created_date_time(moment: datetime, expected: str) -> None:
    assert format_created_date_time(moment) == expected
    assert CREATED_RE.match(expected)


def test_created_date_time_is_the_real_start_time(service: CreatorService, session: requests.Session) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    location = start_operation(session, service, "ds-time")
    after = datetime.now(UTC)
    created = poll(session, location).json()["createdDateTime"]
    assert CREATED_RE.match(created)
    parsed = datetime.strptime(created, "%m/%d/%Y %I:%M:%S %p +00:00").replace(tzinfo=UTC)
    assert before <= parsed <= after
    # It does not move while the operation progresses.
    for _ in range(4):
        assert poll(session, location).json()["createdDateTime"] == created


# ----------------------------------------------------------------------------------- independence


def test_two_operations_progress_independently(service: CreatorService, session: requests.Session) -> None:
    a = start_operation(session, service, "ds-a")
    assert poll(session, a).json()["status"] == "NotStarted"
    assert poll(session, a).json()["status"] == "Running"
    b = start_operation(session, service, "invalid-b")
    assert a != b
    assert poll(session, b).json()["status"] == "NotStarted"
    assert poll(session, a).json()["status"] == "Running"
    ra = poll(session, a)
    assert ra.status_code == 201
    assert poll(session, b).json()["status"] == "Running"
    assert poll(session, b).json()["status"] == "Running"
    rb = poll(session, b)
    assert rb.json()["status"] == "Failed"
    assert ra.json()["operationId"] != rb.json()["operationId"]


def test_each_start_gets_a_fresh_operation_and_tileset(
    service: CreatorService, session: requests.Session
) -> None:
    resources = set()
    for _ in range(3):
        location = start_operation(session, service, "same-dataset")
        for _ in range(1 + service.running_polls):
            poll(session, location)
        resources.add(poll(session, location).headers["Location"])
    assert len(resources) == 3


# -------------------------------------------------------------------------------------------- 404s


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tilesets/operations/00000000-0000-0000-0000-000000000000"),
        ("GET", "/tilesets/00000000-0000-0000-0000-000000000000"),
        ("GET", "/tilesets"),
        ("GET", "/"),
        ("DELETE", "/tilesets/x"),
        ("PUT", "/tilesets?datasetId=x"),
        ("GET", "/mapData/operations/x"),
    ],
)
def test_everything_else_is_404_odata(
    service: CreatorService, session: requests.Session, method: str, path: str
) -> None:
    r = session.request(method, service.url + path, timeout=TIMEOUT)
    assert r.status_code == 404
    body = assert_json(r)
    assert body["error"]["code"] == "NotFound"
    assert body["error"]["message"]


def test_head_gets_headers_only(service: CreatorService, session: requests.Session) -> None:
    r = session.head(service.url + "/nothing", timeout=TIMEOUT)
    assert r.status_code == 404
    assert r.content == b""
    # The connection is still usable afterwards (no stray body bytes on the wire).
    assert session.post(f"{service.url}/tilesets?datasetId=x", timeout=TIMEOUT).status_code == 202


# ------------------------------------------------------------------------------------------- gzip


def test_gzip_resource(service: CreatorService, session: requests.Session) -> None:
    location = start_operation(session, service, "ds-gzip")
    for _ in range(1 + service.running_polls):
        poll(session, location)
    resource = poll(session, location).headers["Location"]
    plain = session.get(resource, timeout=TIMEOUT)
    r = session.get(resource, params={"gzip": "1"}, timeout=TIMEOUT, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    raw = r.raw.read(decode_content=False)
    assert int(r.headers["Content-Length"]) == len(raw)
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == plain.content
    assert "Content-Encoding" not in plain.headers
    # requests decodes it transparently as well.
    assert session.get(resource, params={"gzip": "1"}, timeout=TIMEOUT).json() == plain.json()


# ------------------------------------------------------------------------- connections / requests log


def test_connections_and_requests_are_counted(service: CreatorService) -> None:
    assert service.connections == 0
    assert service.requests == []
    with requests.Session() as s:
        s.trust_env = False
        location = start_operation(s, service, "ds-count")
        poll(s, location)
        poll(s, location)
    assert service.connections == 1  # keep-alive: one connection for three requests
    with requests.Session() as s:
        s.trust_env = False
        s.get(service.url + "/x?y=1", timeout=TIMEOUT)
    assert service.connections == 2
    op_path = "/tilesets/operations/" + location.rsplit("/", 1)[1]
    assert service.requests == [
        ("POST", "/tilesets?api-version=2.0&datasetId=ds-count"),
        ("GET", op_path + "?api-version=2.0"),
        ("GET", op_path + "?api-version=2.0"),
        ("GET", "/x?y=1"),
    ]


def test_raw_connection_without_request_is_counted(service: CreatorService) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
        deadline = time.monotonic() + TIMEOUT
        while service.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert service.connections == 1
    assert service.requests == []


def test_chunked_request_body_keeps_the_connection_usable(
    service: CreatorService, session: requests.Session
) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"a": '
        yield b"1}"

    r = session.post(f"{service.url}/tilesets?datasetId=chunky", data=body(), timeout=TIMEOUT)
    assert r.status_code == 202
    assert poll(session, r.headers["Location"]).json()["status"] == "NotStarted"
    assert service.connections == 1


def test_base_url_comes_from_the_host_header(service: CreatorService, session: requests.Session) -> None:
    # What a proxy that keeps the upstream Host header would record: the service's own address.
    r = session.post(
        f"{service.url}/tilesets?datasetId=hosted",
        headers={"Host": "service.example:8443"},
        timeout=TIMEOUT,
    )
    assert r.headers["Location"].startswith("http://service.example:8443/tilesets/operations/")
    operation_path = r.headers["Location"].removeprefix("http://service.example:8443")
    for _ in range(1 + service.running_polls):
        session.get(service.url + operation_path, timeout=TIMEOUT)
    done = session.get(service.url + operation_path, headers={"Host": "other.example"}, timeout=TIMEOUT)
    assert done.headers["Location"].startswith("http://other.example/tilesets/")
    assert done.json()["resourceLocation"] == done.headers["Location"]


# -------------------------------------------------------------------------------------- lifecycle


def test_stop_really_closes_the_port(session: requests.Session) -> None:
    svc = CreatorService().start()
    port = int(svc.url.rsplit(":", 1)[1])
    assert svc.url == f"http://127.0.0.1:{port}"
    start_operation(session, svc, "ds")  # leaves a keep-alive connection open
    svc.stop()
    svc.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        CreatorService(running_polls=-1)
    with pytest.raises(ValueError):
        CreatorService(retry_after=-1)
    with pytest.raises(SystemExit):
        main(["--running-polls", "-1"])


def test_main_as_subprocess_prints_url_and_exits_0_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.creator_service", "--port", "0", "--running-polls", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the service printed nothing within 20 s"
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        with requests.Session() as s:
            s.trust_env = False
            r = s.post(f"{url}/tilesets?api-version=2.0&datasetId=sub", timeout=TIMEOUT)
            assert r.status_code == 202
            assert r.headers["Location"].startswith(url + "/tilesets/operations/")
            assert s.get(r.headers["Location"], timeout=TIMEOUT).json()["status"] == "NotStarted"
            assert s.get(r.headers["Location"], timeout=TIMEOUT).status_code == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_main_exits_0_on_sigint() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.creator_service", "--port", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready
        assert proc.stdout.readline().startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_main_reports_a_busy_port_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--port", str(port)]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_malformed_request_gets_an_answer_not_a_hang(service: CreatorService) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /tilesets?datasetId=x HTTP/1.1\r\nHost: h\r\nContent-Length: nope\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request"
    assert b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "BadRequest"
    assert service.polls("x") == 0


def test_concurrent_operations_are_thread_safe(service: CreatorService) -> None:
    def run(index: int) -> list[str]:
        with requests.Session() as s:
            s.trust_env = False
            location = start_operation(s, service, f"ds-{index}")
            return [poll(s, location).json()["status"] for _ in range(service.running_polls + 2)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, range(16), timeout=30))
    expected = ["NotStarted"] + ["Running"] * service.running_polls + ["Succeeded"]
    assert results == [expected] * 16
    assert service.connections == 16
    assert len(service.requests) == 16 * (1 + service.running_polls + 2)
