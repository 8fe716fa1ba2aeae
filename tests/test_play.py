"""`play` end to end: shipped scenarios served through a real mitmproxy to real clients (requests, httpx
sync and async) that follow the status URLs they are given, honour Retry-After and retry transient
failures; layering over a cassette and over the real (reference) service; the command line.

Every proxy is a real ReplayProxy (one at a time in this process) or a `python -m proxy play`
subprocess; every client call has a timeout. Clients are told to wait at most 50 ms, so no test sleeps
for the advertised delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import requests

from proxy.cassette import load
from proxy.creator_service import SEED_FAILURE_ERROR, CreatorService
from proxy.rewrite import parse_retry_after
from proxy.server import ReplayProxy
from tests.conftest import ENGINES, ROOT, run_cli

TIMEOUT = 10
MAX_POLLS = 60
MAX_ATTEMPTS = 10
DATASET_ID = "8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d"  # the one recorded in cassettes/azure-maps/
SCENARIOS = ROOT / "scenarios"
AZURE_MAPS = sorted((SCENARIOS / "azure-maps").glob("*.yaml"))
CONFORMANCE = sorted((SCENARIOS / "lro-conformance").glob("*.yaml"))
SHIPPED = sorted(SCENARIOS.rglob("*.yaml"))
CREATED_DATE_TIME = re.compile(r"^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} (AM|PM) \+00:00$")
TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}
MISSING_DATASET_ERROR = json.loads(
    load(ROOT / "cassettes/azure-maps/missing-dataset-id.yaml")[0].response.body
)
"""What the reference service answers a POST without datasetId (recorded): every scenario must agree."""


@contextlib.contextmanager
def playing(*scenarios: Path, confdir: Path, **options: Any) -> Iterator[ReplayProxy]:
    with ReplayProxy(scenarios=list(scenarios), confdir=confdir, **options) as proxy:
        yield proxy


# -- a small, realistic Creator client ------------------------------------------------------------------


@dataclass
class Seen:
    """One attempt as the client saw it: a response, or the transport error it raised."""

    method: str
    url: str
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Job:
    """Everything one run of the client saw."""

    seen: list[Seen] = field(default_factory=list)
    accepted: Seen | None = None
    status_url: str = ""
    statuses: list[str] = field(default_factory=list)
    final: Seen | None = None
    resource: Seen | None = None

    def polls(self) -> list[Seen]:
        """Status answers (200/201) to GETs of the status URL."""
        return [
            s for s in self.seen if s.method == "GET" and s.url == self.status_url and s.status in (200, 201)
        ]


def _seen(method: str, url: str, r: requests.Response | httpx.Response) -> Seen:
    return Seen(method, url, r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def _pause(seen: Seen) -> float:
    """Seconds to wait before the next call: the advertised Retry-After (or retry-after-ms, which carries a
    fraction of a second), capped at 50 ms."""
    told = parse_retry_after(tuple(seen.headers.items()))
    return min(told, 0.05) if told is not None else 0.0


def _send(http: Any, transient: tuple[type[BaseException], ...], method: str, url: str, job: Job) -> Seen:
    """One call, retried on 429/503 (after Retry-After) and on a broken connection."""
    for _ in range(MAX_ATTEMPTS):
        try:
            r = http.request(method, url, timeout=TIMEOUT)
        except transient as e:
            job.seen.append(Seen(method, url, None, {}, b"", type(e).__name__))
            continue
        seen = _seen(method, url, r)
        job.seen.append(seen)
        if seen.status in (429, 503):
            time.sleep(_pause(seen))
            continue
        return seen
    raise AssertionError(f"{method} {url}: still failing after {MAX_ATTEMPTS} attempts: {job.seen[-1]}")


def create_tileset(
    http: Any, transient: tuple[type[BaseException], ...], base: str, dataset_id: str | None = DATASET_ID
) -> Job:
    """POST /tilesets, follow Location to the status URL, poll until a terminal status, GET the tileset."""
    job = Job()
    url = f"{base}/tilesets?api-version=2.0" + (f"&datasetId={dataset_id}" if dataset_id else "")
    accepted = job.accepted = _send(http, transient, "POST", url, job)
    if accepted.status != 202:
        job.final = accepted
        return job
    job.status_url = urljoin(url, accepted.headers["location"])
    time.sleep(_pause(accepted))
    for _ in range(MAX_POLLS):
        poll = _send(http, transient, "GET", job.status_url, job)
        assert poll.status in (200, 201), poll
        job.statuses.append(poll.json()["status"])
        if job.statuses[-1].lower() in TERMINAL:
            break
        time.sleep(_pause(poll))
    else:
        raise AssertionError(f"not finished after {MAX_POLLS} polls: {job.statuses[-3:]}")
    job.final = poll
    if poll.status == 201:
        job.resource = _send(http, transient, "GET", urljoin(job.status_url, poll.headers["location"]), job)
    return job


async def create_tileset_async(http: httpx.AsyncClient, base: str, dataset_id: str = DATASET_ID) -> Job:
    """create_tileset, with httpx.AsyncClient."""
    job = Job()

    async def send(method: str, url: str) -> Seen:
        for _ in range(MAX_ATTEMPTS):
            try:
                r = await http.request(method, url, timeout=TIMEOUT)
            except httpx.TransportError as e:
                job.seen.append(Seen(method, url, None, {}, b"", type(e).__name__))
                continue
            seen = _seen(method, url, r)
            job.seen.append(seen)
            if seen.status in (429, 503):
                await asyncio.sleep(_pause(seen))
                continue
            return seen
        raise AssertionError(f"{method} {url}: still failing after {MAX_ATTEMPTS} attempts")

    url = f"{base}/tilesets?api-version=2.0&datasetId={dataset_id}"
    accepted = job.accepted = await send("POST", url)
    assert accepted.status == 202, accepted
    job.status_url = urljoin(url, accepted.headers["location"])
    for _ in range(MAX_POLLS):
        await asyncio.sleep(_pause(job.seen[-1]))
        poll = await send("GET", job.status_url)
        assert poll.status in (200, 201), poll
        job.statuses.append(poll.json()["status"])
        if job.statuses[-1].lower() in TERMINAL:
            break
    else:
        raise AssertionError(f"not finished after {MAX_POLLS} polls")
    job.final = poll
    if poll.status == 201:
        job.resource = await send("GET", urljoin(job.status_url, poll.headers["location"]))
    return job


@contextlib.contextmanager
def sync_client(kind: str) -> Iterator[tuple[Any, tuple[type[BaseException], ...]]]:
    """A requests or httpx client (no proxy from the environment) and the errors worth a retry."""
    if kind == "requests":
        with requests.Session() as session:
            session.trust_env = False
            yield session, (requests.ConnectionError,)
    else:
        with httpx.Client(trust_env=False) as client:
            yield client, (httpx.TransportError,)


# -- checks every Creator (v1) run must pass ------------------------------------------------------------


def assert_status_bodies(job: Job) -> None:
    """operationId is the id in the status URL, createdDateTime in the seed's format, status present;
    every non-terminal status answer carries Retry-After."""
    op_id = urlsplit(job.status_url).path.rsplit("/", 1)[1]
    polls = job.polls()
    assert polls, job.seen
    for poll in polls:
        body = poll.json()
        assert body["operationId"] == op_id
        assert CREATED_DATE_TIME.match(body["createdDateTime"]), body["createdDateTime"]
        assert body["status"]
        if body["status"].lower() not in TERMINAL:  # a fraction of a second comes as retry-after-ms
            assert "retry-after" in poll.headers or "retry-after-ms" in poll.headers, poll


def assert_missing_dataset_is_400(http: Any, transient: tuple[type[BaseException], ...], base: str) -> None:
    job = create_tileset(http, transient, base, dataset_id=None)
    assert job.final is not None and job.final.status == 400
    assert job.final.headers["content-type"] == "application/json"
    assert job.final.json() == MISSING_DATASET_ERROR
    assert MISSING_DATASET_ERROR["error"]["code"] == "BadRequest"


def check_tileset_succeeds(job: Job, base: str) -> None:
    assert job.statuses == ["NotStarted", "Running", "Running", "Succeeded"]
    assert [s.status for s in job.seen] == [202, 200, 200, 200, 201, 200]
    assert job.final is not None and job.resource is not None
    location = job.final.headers["location"]
    assert re.fullmatch(re.escape(base) + r"/tilesets/[0-9a-f-]{36}", location)
    assert job.final.json()["resourceLocation"] == location
    assert "retry-after" not in job.final.headers
    tileset = job.resource.json()
    assert tileset["tilesetId"] == location.rsplit("/", 1)[1]
    assert tileset["ontology"] == "facility-2.0"
    assert (tileset["minZoom"], tileset["maxZoom"]) == (16, 20)


def check_tileset_fails(job: Job, base: str) -> None:
    assert job.statuses == ["NotStarted", "Running", "Running", "Failed"]
    assert job.final is not None and job.final.status == 200
    body = job.final.json()
    assert body["error"] == SEED_FAILURE_ERROR
    assert "location" not in job.final.headers and "resourceLocation" not in body
    assert job.resource is None


def check_succeeds_without_resource(job: Job, base: str) -> None:
    assert job.statuses == ["NotStarted", "Running", "Running", "Succeeded"]
    assert job.final is not None and job.final.status == 200
    assert "location" not in job.final.headers
    assert "resourceLocation" not in job.final.json()
    assert job.resource is None
    assert [s.method for s in job.seen] == ["POST", "GET", "GET", "GET", "GET"]


def check_flaky_polling(job: Job, base: str) -> None:
    assert job.statuses == ["NotStarted", "Running", "Running", "Succeeded"]
    shape = [s.status if s.status is not None else "reset" for s in job.seen]
    assert shape == [202, 200, 200, 503, "reset", 200, 201, 200]
    unavailable = job.seen[3]
    assert unavailable.url == job.status_url
    # the scenario's 2, shortened by retry_after=0.01: valid HTTP, whole seconds beside the milliseconds
    assert (unavailable.headers["retry-after"], unavailable.headers["retry-after-ms"]) == ("1", "10")
    assert unavailable.json()["error"]["code"] == "ServiceUnavailable"
    assert job.seen[4].error in ("ConnectionError", "ReadError")  # requests / httpx
    assert job.resource is not None and job.resource.status == 200


def check_throttled_start(job: Job, base: str) -> None:
    throttled, accepted = job.seen[0], job.seen[1]
    assert (throttled.method, throttled.status) == ("POST", 429)
    assert (throttled.headers["retry-after"], throttled.headers["retry-after-ms"]) == ("1", "10")
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert (accepted.method, accepted.status) == ("POST", 202)
    assert accepted.url == throttled.url
    assert [s.status for s in job.seen] == [429, 202, 200, 200, 201, 200]
    assert job.statuses == ["NotStarted", "Running", "Succeeded"]


AZURE_CHECKS: dict[str, Callable[[Job, str], None]] = {
    "tileset-succeeds": check_tileset_succeeds,
    "tileset-fails": check_tileset_fails,
    "succeeds-without-resource": check_succeeds_without_resource,
    "flaky-polling": check_flaky_polling,
    "throttled-start": check_throttled_start,
}


def test_every_azure_maps_scenario_has_a_check() -> None:
    assert sorted(p.stem for p in AZURE_MAPS) == sorted(AZURE_CHECKS)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["requests", "httpx"])
@pytest.mark.parametrize("scenario", AZURE_MAPS, ids=lambda p: p.stem)
def test_azure_maps_scenario_end_to_end(scenario: Path, kind: str, engine: str, confdir: Path) -> None:
    with (
        playing(scenario, confdir=confdir, retry_after=0.01, engine=engine) as proxy,
        sync_client(kind) as (http, transient),
    ):
        job = create_tileset(http, transient, proxy.url)
        assert_status_bodies(job)
        AZURE_CHECKS[scenario.stem](job, proxy.url)
        assert_missing_dataset_is_400(http, transient, proxy.url)
        # Every exchange was answered by the scenario (the reset included: it has no status).
        assert {e.source for e in proxy.journal.entries} == {"scenario"}


@pytest.mark.parametrize("engine", ENGINES)
def test_flaky_polling_with_httpx_async(confdir: Path, engine: str) -> None:
    async def go(base: str) -> Job:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await create_tileset_async(client, base)

    flaky = SCENARIOS / "azure-maps/flaky-polling.yaml"
    with playing(flaky, confdir=confdir, retry_after=0.01, engine=engine) as proxy:
        job = asyncio.run(go(proxy.url))
        assert_status_bodies(job)
        check_flaky_polling(job, proxy.url)
        assert job.seen[4].error == "ReadError"
        assert [(e.status, e.detail.rsplit("(", 1)[-1]) for e in proxy.journal.entries][3:5] == [
            (503, "503 instead of Running)"),
            (None, "fault reset instead of Running) [fault: reset]"),
        ]


def test_two_operations_progress_independently(confdir: Path) -> None:
    """Two clients in two threads, polls interleaved in lock step: each sees its own progression."""
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    results: dict[str, tuple[str, list[str]]] = {}
    errors: list[BaseException] = []

    def client(name: str, base: str) -> None:
        try:
            with requests.Session() as http:
                http.trust_env = False
                r = http.post(f"{base}/tilesets?api-version=2.0&datasetId={name}", timeout=TIMEOUT)
                assert r.status_code == 202
                status_url = r.headers["Location"]
                statuses = []
                for _ in range(4):
                    barrier.wait()  # both operations exist, and both clients poll in the same round
                    body = http.get(status_url, timeout=TIMEOUT).json()
                    assert status_url.endswith("/" + body["operationId"])
                    statuses.append(body["status"])
                results[name] = (body["operationId"], statuses)
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    with playing(SCENARIOS / "azure-maps/tileset-succeeds.yaml", confdir=confdir, retry_after=0.01) as proxy:
        threads = [threading.Thread(target=client, args=(n, proxy.url)) for n in ("first", "second")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 2)
        assert not errors, errors
        assert all(not t.is_alive() for t in threads)
        polls = [e for e in proxy.journal.entries if e.method == "GET"]
    (id1, first), (id2, second) = results["first"], results["second"]
    assert id1 != id2
    assert first == second == ["NotStarted", "Running", "Running", "Succeeded"]
    # Interleaved: the polls of round n of both clients come before any poll of round n + 1.
    rounds = [e.detail.split(", poll ")[1].split(" ")[0] for e in polls]
    assert rounds == ["1", "1", "2", "2", "3", "3", "4", "4"]


# -- the other shapes -----------------------------------------------------------------------------------


def test_creator_v2_operation_location(confdir: Path) -> None:
    """Operation-Location on the 202, `created` (ISO 8601), success 200 + Resource-Location."""
    scenario = SCENARIOS / "creator-v2-operation-location.yaml"
    with (
        playing(scenario, confdir=confdir, retry_after=0.01) as proxy,
        httpx.Client(trust_env=False, timeout=TIMEOUT) as http,
    ):
        start = http.post(f"{proxy.url}/conversions?api-version=2.0&udid=my-upload")
        assert start.status_code == 202
        assert "location" not in start.headers
        status_url = start.headers["operation-location"]
        op_id = urlsplit(status_url).path.rsplit("/", 1)[1]
        assert status_url == f"{proxy.url}/conversions/operations/{op_id}?api-version=2.0"
        seen = []
        for _ in range(MAX_POLLS):
            poll = http.get(status_url)
            assert poll.status_code == 200
            body = poll.json()
            seen.append(body["status"])
            assert body["operationId"] == op_id
            created = datetime.fromisoformat(body["created"])
            assert created.utcoffset() == timedelta(0)
            assert abs((datetime.now(UTC) - created).total_seconds()) < 60
            assert "createdDateTime" not in body
            if body["status"] == "Succeeded":
                break
            time.sleep(min(float(poll.headers["retry-after-ms"]) / 1000, 0.05))
        assert seen == ["NotStarted", "Running", "Running", "Succeeded"]
        assert "resourceLocation" not in body and "location" not in poll.headers
        resource_url = poll.headers["resource-location"]
        resource = http.get(resource_url)
        assert resource.status_code == 200
        assert resource.json()["conversionId"] == resource_url.rsplit("/", 1)[1]
        assert resource.json()["ontology"] == "facility-2.0"


def test_google_aip_151(confdir: Path) -> None:
    """The method returns an Operation; the client polls it by name until done, then reads `response`."""
    with playing(SCENARIOS / "google-aip-151.yaml", confdir=confdir) as proxy, requests.Session() as http:
        http.trust_env = False
        start = http.post(f"{proxy.url}/v1/projects/p1/datasets/d1:export", json={}, timeout=TIMEOUT)
        assert start.status_code == 200
        operation = start.json()
        assert operation["done"] is False
        name = operation["name"]
        assert re.fullmatch(r"operations/[0-9a-f-]{36}", name)
        polls = 0
        while not operation["done"]:
            assert polls < MAX_POLLS
            r = http.get(f"{proxy.url}/v1/{name}", timeout=TIMEOUT)
            polls += 1
            assert r.status_code == 200
            assert "retry-after" not in r.headers  # AIP-151: the client picks its cadence
            operation = r.json()
            assert operation["name"] == name
        assert polls == 4
        assert operation["metadata"] == {"status": "SUCCEEDED"}
        assert "error" not in operation
        op_id = name.split("/", 1)[1]
        assert operation["response"] == {
            "@type": "type.googleapis.com/example.ExportDatasetResponse",
            "outputUri": f"gs://bucket/export-{op_id}.tar",
        }


# -- lro-conformance ------------------------------------------------------------------------------------


@dataclass
class Poller:
    """A recording LRO poller: starts, follows Location / Operation-Location (also a new one given on a
    poll), polls up to ``limit`` times without sleeping, never gives up on an odd answer."""

    base: str
    limit: int = 25
    accepted: Seen | None = None
    polls: list[Seen] = field(default_factory=list)
    resource: Seen | None = None

    def run(self) -> Poller:
        with requests.Session() as http:
            http.trust_env = False
            url = f"{self.base}/tilesets?api-version=2.0&datasetId={DATASET_ID}"
            self.accepted = _seen("POST", url, http.post(url, timeout=TIMEOUT))
            assert self.accepted.status in (200, 201, 202), self.accepted
            status_url = self._follow(url, self.accepted)
            assert status_url, self.accepted
            for _ in range(self.limit):
                poll = _seen("GET", status_url, http.get(status_url, timeout=TIMEOUT))
                self.polls.append(poll)
                if poll.status in (200, 201):
                    if self.status(poll).lower() in TERMINAL:
                        break
                    status_url = self._follow(status_url, poll) or status_url
            final = self.polls[-1]
            where = final.headers.get("resource-location") or (
                final.headers.get("location", "") if final.status == 201 else ""
            )
            if where:
                self.resource = _seen("GET", where, http.get(urljoin(status_url, where), timeout=TIMEOUT))
        return self

    @staticmethod
    def _follow(url: str, seen: Seen) -> str:
        where = seen.headers.get("operation-location") or seen.headers.get("location") or ""
        return urljoin(url, where) if where else ""

    @staticmethod
    def status(seen: Seen) -> str:
        return str(seen.json()["status"])

    @property
    def statuses(self) -> list[str]:
        return [self.status(p) for p in self.polls if p.status in (200, 201)]


LAST_STATUS = {
    "failed-details-list": "Failed",
    "failed-with-details": "Failed",
    "failed-without-details": "Failed",
    "mid-poll-404": "Succeeded",
    "mid-poll-429": "Succeeded",
    "mid-poll-503": "Succeeded",
    "relative-status-url": "Succeeded",
    "retry-after-fractional": "Succeeded",
    "retry-after-http-date": "Succeeded",
    "retry-after-junk": "Succeeded",
    "retry-after-ms": "Succeeded",
    "retry-after-on-202": "Succeeded",
    "running-forever": "Running",
    "status-canceled": "Canceled",
    "status-lowercase": "succeeded",
    "status-unknown": "Completed",
    "status-url-changes": "Succeeded",
    "v2-shape": "Succeeded",
}


def _op_id(poller: Poller) -> str:
    assert poller.accepted is not None
    where = poller.accepted.headers.get("operation-location") or poller.accepted.headers["location"]
    return urlsplit(where).path.rsplit("/", 1)[1]


def spot_retry_after_on_202(p: Poller, proxy: ReplayProxy) -> None:
    assert p.accepted is not None and p.accepted.status == 202
    assert p.accepted.headers["retry-after"] == "5"


def spot_retry_after_http_date(p: Poller, proxy: ReplayProxy) -> None:
    running = [q for q in p.polls if p.status(q) == "Running"]
    assert len(running) == 2
    for poll in running:
        value = poll.headers["retry-after"]
        assert value.endswith(" GMT"), value
        ahead = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        assert 1 <= ahead <= 4, (value, ahead)  # 3 s ahead, at a one-second resolution


def spot_retry_after_fractional(p: Poller, proxy: ReplayProxy) -> None:
    running = [q for q in p.polls if p.status(q) == "Running"]
    assert [q.headers["retry-after"] for q in running] == ["0.5", "0.5", "0.5"]


def spot_retry_after_junk(p: Poller, proxy: ReplayProxy) -> None:
    running = [q for q in p.polls if p.status(q) == "Running"]
    assert [q.headers["retry-after"] for q in running] == ["soon", "soon"]


def spot_retry_after_ms(p: Poller, proxy: ReplayProxy) -> None:
    first, second = p.polls[0].headers, p.polls[1].headers
    assert first["retry-after-ms"] == "1500"
    assert "retry-after" not in first and "x-ms-retry-after-ms" not in first
    assert second["x-ms-retry-after-ms"] == "2500"
    assert "retry-after" not in second and "retry-after-ms" not in second


def spot_relative_status_url(p: Poller, proxy: ReplayProxy) -> None:
    assert p.accepted is not None
    assert p.accepted.headers["location"] == f"/tilesets/operations/{_op_id(p)}"


def spot_status_url_changes(p: Poller, proxy: ReplayProxy) -> None:
    new = f"{proxy.url}/tilesets/operations/{_op_id(p)}?attempt=2"
    assert p.polls[0].headers["location"] == new
    assert p.polls[0].url != new
    assert [q.url for q in p.polls[1:]] == [new, new]  # the new URL is followed, and answered
    assert [q.status for q in p.polls] == [200, 200, 200]


def spot_running_forever(p: Poller, proxy: ReplayProxy) -> None:
    assert len(p.polls) == p.limit >= 21
    assert p.statuses == ["NotStarted"] + ["Running"] * (p.limit - 1)
    assert all(q.headers["retry-after"] == "1" for q in p.polls)


def _spot_mid_poll(code: int, retry_after: str | None) -> Callable[[Poller, ReplayProxy], None]:
    def check(p: Poller, proxy: ReplayProxy) -> None:
        assert [q.status for q in p.polls] == [200, code, 200, 200]
        assert p.polls[1].headers.get("retry-after") == retry_after
        assert p.polls[1].json()["error"]["message"] == "Transient error injected by replay-proxy."
        assert p.statuses == ["Running", "Running", "Succeeded"]

    return check


def spot_v2_shape(p: Poller, proxy: ReplayProxy) -> None:
    assert p.accepted is not None
    assert "location" not in p.accepted.headers
    assert p.accepted.headers["operation-location"] == f"{proxy.url}/tilesets/operations/{_op_id(p)}"
    for poll in p.polls:
        body = poll.json()
        assert datetime.fromisoformat(body["created"]).utcoffset() is not None
        assert "createdDateTime" not in body
    final = p.polls[-1]
    assert final.status == 200
    assert "resourceLocation" not in final.json() and "location" not in final.headers
    assert p.resource is not None and p.resource.status == 200
    assert p.resource.json() == {"tilesetId": final.headers["resource-location"].rsplit("/", 1)[1]}


SPOT_CHECKS: dict[str, Callable[[Poller, ReplayProxy], None]] = {
    "retry-after-on-202": spot_retry_after_on_202,
    "retry-after-http-date": spot_retry_after_http_date,
    "retry-after-fractional": spot_retry_after_fractional,
    "retry-after-junk": spot_retry_after_junk,
    "retry-after-ms": spot_retry_after_ms,
    "relative-status-url": spot_relative_status_url,
    "status-url-changes": spot_status_url_changes,
    "running-forever": spot_running_forever,
    "mid-poll-503": _spot_mid_poll(503, "2"),
    "mid-poll-429": _spot_mid_poll(429, "2"),
    "mid-poll-404": _spot_mid_poll(404, None),
    "v2-shape": spot_v2_shape,
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scenario", CONFORMANCE, ids=lambda p: p.stem)
def test_lro_conformance_file_serves(scenario: Path, engine: str, confdir: Path) -> None:
    """Every file loads and serves a whole operation; the distinctive ones show what they provoke.

    No ``retry_after`` here: the header values as the files write them are what is checked.
    """
    assert scenario.stem in LAST_STATUS, f"add the expected last status of {scenario.name} to LAST_STATUS"
    with playing(scenario, confdir=confdir, engine=engine) as proxy:
        poller = Poller(proxy.url).run()
        entries = proxy.journal.entries
        assert {e.source for e in entries} == {"scenario"}, [e.line() for e in entries]
        assert all(e.status not in (None, 502, 599) for e in entries), [e.line() for e in entries]
        assert poller.statuses[-1] == LAST_STATUS[scenario.stem]
        for poll in poller.polls:
            if poll.status in (200, 201):
                assert poll.json()["operationId"] == _op_id(poller)
        if scenario.stem in SPOT_CHECKS:
            SPOT_CHECKS[scenario.stem](poller, proxy)


def test_lro_conformance_spot_checks_name_real_files() -> None:
    assert set(SPOT_CHECKS) <= {p.stem for p in CONFORMANCE}


# -- the virtual clock ----------------------------------------------------------------------------------

SLOW_JOB = """\
name: slow-job
clock: {clock}
operations:
  - name: job
    start: {{method: POST, path: /tilesets}}
    status-path: /tilesets/operations/{{operationId}}
    retry-after: 10
    steps:
      - {{status: Running, for: 300s}}
      - {{status: Succeeded}}
"""


def _poll_slow_job(base: str, limit: int) -> tuple[list[str], list[str], float]:
    """Start the job and poll it as a client that sleeps the advertised Retry-After."""
    started = time.monotonic()
    statuses: list[str] = []
    advertised: list[str] = []
    with requests.Session() as http:
        http.trust_env = False
        r = http.post(f"{base}/tilesets", timeout=TIMEOUT)
        assert r.status_code == 202
        status_url = r.headers["Location"]
        for _ in range(limit):
            poll = http.get(status_url, timeout=TIMEOUT)
            statuses.append(poll.json()["status"])
            if statuses[-1] == "Succeeded":
                break
            assert "Retry-After" not in poll.headers  # 0.01 is no valid Retry-After: it comes in ms
            advertised.append(poll.headers["retry-after-ms"])
            time.sleep(float(advertised[-1]) / 1000)
    return statuses, advertised, time.monotonic() - started


def test_virtual_clock_plays_300_seconds_in_30_polls(tmp_path: Path, confdir: Path) -> None:
    scenario = tmp_path / "slow-job.yaml"
    scenario.write_text(SLOW_JOB.format(clock="virtual"))
    with playing(scenario, confdir=confdir, retry_after=0.01) as proxy:
        statuses, advertised, elapsed = _poll_slow_job(proxy.url, 100)
    print(f"virtual clock: 300 s of Running in {len(statuses)} polls, {elapsed:.3f} s of wall time")
    assert statuses == ["Running"] * 30 + ["Succeeded"]
    assert set(advertised) == {"10"}  # the client is told 10 ms; the operation's clock moves 10 s
    assert elapsed < 5


def test_clock_virtual_on_the_cli_overrides_the_file(tmp_path: Path, cli: Any, confdir: Path) -> None:
    scenario = tmp_path / "slow-job.yaml"
    scenario.write_text(SLOW_JOB.format(clock="real"))
    # The file's real clock: 31 quick polls are 31 x 10 ms, nowhere near 300 s.
    with playing(scenario, confdir=confdir, retry_after=0.01) as proxy:
        statuses, _, _ = _poll_slow_job(proxy.url, 31)
    assert statuses == ["Running"] * 31
    proc = cli(["play", str(scenario), "--clock", "virtual", "--retry-after", "0.01", "--port", "0"])
    assert proc.url, (proc.ready_line, proc.stderr)
    statuses, _, elapsed = _poll_slow_job(proc.url, 100)
    assert statuses == ["Running"] * 30 + ["Succeeded"]
    assert proc.stop() == 0
    print(f"--clock virtual: {len(statuses)} polls in {elapsed:.3f} s")


# -- layering: over a cassette, over the real service ---------------------------------------------------

INJECT_503 = """\
name: inject-503
routes:
  - name: second poll unavailable
    match: {method: GET, path: "/tilesets/operations/{id}"}
    sequence:
      - pass: true
      - status: 503
        retry-after: 1
        json: {error: {code: ServiceUnavailable, message: Injected by replay-proxy.}}
      - pass: true
"""


@pytest.fixture
def inject_503(tmp_path: Path) -> Path:
    path = tmp_path / "inject-503.yaml"
    path.write_text(INJECT_503)
    return path


class ConnectionPerCall:
    """requests with a new connection for every call, so that each forwarded call is one upstream
    connection (``Connection: close`` is not enough: the proxy's answer does not say close, so urllib3
    would pool the connection the proxy is closing)."""

    def request(self, method: str, url: str, timeout: float) -> requests.Response:
        with requests.Session() as http:
            http.trust_env = False
            return http.request(method, url, timeout=timeout)


def _run_layered(base: str) -> Job:
    return create_tileset(ConnectionPerCall(), (requests.ConnectionError,), base)


def _assert_layered_run(job: Job, proxy: ReplayProxy) -> None:
    assert [s.status for s in job.seen] == [202, 200, 503, 200, 200, 201, 200]
    assert job.statuses == ["NotStarted", "Running", "Running", "Succeeded"]
    assert job.seen[2].json()["error"]["message"] == "Injected by replay-proxy."
    assert (job.seen[2].headers["retry-after"], job.seen[2].headers["retry-after-ms"]) == ("1", "10")
    assert job.status_url.startswith(proxy.url + "/tilesets/operations/")
    assert job.final is not None and job.final.headers["location"].startswith(proxy.url + "/tilesets/")
    assert job.resource is not None and job.resource.json()["datasetId"] == DATASET_ID
    assert_status_bodies(job)


def test_play_over_a_cassette_injects_a_503(inject_503: Path, confdir: Path) -> None:
    cassette = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
    recorded = load(cassette)
    with playing(inject_503, confdir=confdir, cassette=cassette, retry_after=0.01) as proxy:
        job = _run_layered(proxy.url)
        entries = proxy.journal.entries
    _assert_layered_run(job, proxy)
    # The recorded answers, as recorded (the operation id is the cassette's).
    assert job.status_url.endswith(recorded[1].request.url.rsplit("/", 1)[1])
    tileset = json.loads(recorded[-1].response.body)
    assert job.resource is not None
    assert job.resource.json() == {**tileset, "url": f"{proxy.url}/tilesets/{tileset['tilesetId']}"}
    assert [(e.status, e.source) for e in entries] == [
        (202, "cassette"),
        (200, "cassette"),
        (503, "scenario"),
        (200, "cassette"),
        (200, "cassette"),
        (201, "cassette"),
        (200, "cassette"),
    ]
    assert entries[2].detail == 'inject-503.yaml: route "second poll unavailable" step 2/3'


def test_play_over_the_upstream_injects_a_503_and_records_only_real_traffic(
    inject_503: Path, creator: CreatorService, tmp_path: Path, confdir: Path
) -> None:
    with playing(inject_503, confdir=confdir, upstream=creator.url, retry_after=0.01) as proxy:
        job = _run_layered(proxy.url)
        entries = proxy.journal.entries
    _assert_layered_run(job, proxy)
    assert [e.source for e in entries] == ["upstream"] * 2 + ["scenario"] + ["upstream"] * 4
    # The service saw every call but the injected one: six requests on six connections, four polls.
    op_id = job.status_url.rsplit("/", 1)[1]
    assert [m for m, _ in creator.requests] == ["POST"] + ["GET"] * 5
    assert creator.polls(op_id) == 4
    assert creator.connections == 6

    # With a cassette to record to: the forwarded exchanges are saved, the injected 503 is not.
    out = tmp_path / "real.yaml"
    with playing(inject_503, confdir=confdir, cassette=out, upstream=creator.url, retry_after=0.01) as proxy:
        job = _run_layered(proxy.url)
    _assert_layered_run(job, proxy)
    recorded = load(out)
    assert [i.response.status for i in recorded] == [202, 200, 200, 200, 201, 200]
    assert [i.request.method for i in recorded] == ["POST"] + ["GET"] * 5
    assert all(i.request.url.startswith(creator.url) for i in recorded)
    assert b"Injected by replay-proxy" not in out.read_bytes()
    # Recorded as the service sent it: its own Retry-After, not the 10 ms the client was told.
    assert recorded[1].response.header("Retry-After") == "1"
    assert creator.connections == 12


# -- offline --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_play_alone_is_offline(mode: str, creator: CreatorService, confdir: Path) -> None:
    """An unmatched request gets the 599 diagnostic; the service listening next door gets nothing, even
    when the client asks for it by name through the proxy (forward mode)."""
    scenario = SCENARIOS / "azure-maps/tileset-succeeds.yaml"
    with playing(scenario, confdir=confdir, mode=mode) as proxy, requests.Session() as http:
        http.trust_env = False
        if mode == "regular":
            http.proxies = {"http": proxy.url}
            base = creator.url
        else:
            base = proxy.url
        ok = http.post(f"{base}/tilesets?api-version=2.0&datasetId=x", timeout=TIMEOUT)
        assert ok.status_code == 202  # the scenario answers, whatever the host
        for method, path in [
            ("GET", "/tilesets/operations/00000000-0000-0000-0000-000000000000"),  # an id it never made
            ("DELETE", "/tilesets/abc"),
            ("GET", "/anything?else=1"),
        ]:
            r = http.request(method, base + path, timeout=TIMEOUT)
            assert r.status_code == 599
            message = r.json()["error"]["message"]
            assert message.startswith("replay-proxy: no scenario rule matches this request: ")
            assert f"{method} {path}" in message
            assert r.headers["X-Replay-Proxy"] == "no-match"
        assert [e.source for e in proxy.journal.entries] == ["scenario"] + ["no-match"] * 3
    assert creator.connections == 0
    assert creator.requests == []


# -- the command line -----------------------------------------------------------------------------------


def test_play_rejects_a_typo_with_file_line_column(tmp_path: Path, confdir: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "operations:\n"
        "  - start: {method: POST, path: /tilesets}\n"
        "    steps:\n"
        "      - stauts: Running\n"
    )
    result = run_cli(["play", str(bad), "--port", "0"], confdir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"replay-proxy: error: {bad}:5:9: unknown key 'stauts' in operation step; "
        + lines[0].split("; ", 1)[1]
    ]
    assert "did you mean 'status'?" in lines[0]


def test_check_accepts_every_shipped_scenario(confdir: Path) -> None:
    result = run_cli(["check", *map(str, SHIPPED)], confdir)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"ok: {len(SHIPPED)} scenario files valid\n"


def test_schema_prints_the_shipped_schema(confdir: Path) -> None:
    result = run_cli(["schema"], confdir)
    assert result.returncode == 0
    assert json.loads(result.stdout) == json.loads((SCENARIOS / "scenario.schema.json").read_text())


@pytest.mark.parametrize("engine", ENGINES)
def test_play_ready_line_and_one_console_line_per_exchange(cli: Any, engine: str) -> None:
    scenario = "scenarios/azure-maps/tileset-succeeds.yaml"
    proc = cli(["play", scenario, "--port", "0", "--retry-after", "0.01", "--engine", engine])
    assert re.match(
        r"replay-proxy on http://127\.0\.0\.1:\d+ is playing " + re.escape(scenario) + "$", proc.ready_line
    )
    with requests.Session() as http:
        http.trust_env = False
        job = create_tileset(http, (requests.ConnectionError,), proc.url)
    check_tileset_succeeds(job, proc.url)
    assert proc.stop() == 0
    op = job.status_url.rsplit("/", 1)[1][:8]
    status_path = urlsplit(job.status_url).path
    assert job.final is not None
    rule = f"scenario tileset-succeeds.yaml: operation {op}…"
    lines = [line for line in proc.stderr_lines if " -> " in line]
    assert lines == [
        f"POST /tilesets?api-version=2.0&datasetId={DATASET_ID} -> 202 "
        f'(scenario tileset-succeeds.yaml: start of operation "tileset" ({op}…))',
        f"GET {status_path} -> 200 ({rule}, poll 1 (NotStarted))",
        f"GET {status_path} -> 200 ({rule}, poll 2 (Running))",
        f"GET {status_path} -> 200 ({rule}, poll 3 (Running))",
        f"GET {status_path} -> 201 ({rule}, poll 4 (Succeeded))",
        f"GET {urlsplit(job.final.headers['location']).path} -> 200 "
        f"(scenario tileset-succeeds.yaml: resource of operation {op}…)",
    ]


# -- no match: the closest rules, where they are and what differed ----------------------------------------

NO_MATCH = """\
name: jobs
routes:
  - name: cancel
    match: {method: POST, path: "/jobs/{id}/cancel", headers: {if-match: {present: true}}}
    respond: {status: 202}
operations:
  - name: job
    start: {method: POST, path: /jobs, json: {kind: build}}
    status-path: /jobs/operations/{operationId}
    steps: [{status: Succeeded}]
"""


def test_play_no_match_names_the_closest_rules_and_what_differed(tmp_path: Path, cli: Any) -> None:
    scenario = tmp_path / "jobs.yaml"
    scenario.write_text(NO_MATCH)
    proc = cli(["play", str(scenario), "--port", "0"])
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as http:
        wrong_kind = http.post(f"{proc.url}/jobs", json={"kind": "test"})
        no_header = http.post(f"{proc.url}/jobs/7/cancel")
        unknown = http.get(f"{proc.url}/jobs/operations/nope")
    assert proc.stop() == 0
    assert (wrong_kind.status_code, wrong_kind.headers["x-replay-proxy"]) == (599, "no-match")
    start = f"operation \"job\" (start) at {scenario}:8:12 (json field kind: 'test', expected 'build')"
    assert wrong_kind.json()["error"] == {
        "code": "ReplayProxyNoMatch",
        "message": "replay-proxy: no scenario rule matches this request: POST /jobs "
        f"(in scenarios {scenario}); closest rule is {start}",
        "request": {"method": "POST", "uri": f"{proc.url}/jobs"},
        "closest": [],
        "hint": "play answers only what its scenarios match, offline. Add a route for this request, or layer "
        "the scenarios over --cassette CASSETTE or --upstream URL.",
        "closest_rules": [
            {
                "rule": 'operation "job" (start)',
                "at": f"{scenario}:8:12",
                "differences": ["json field kind: 'test', expected 'build'"],
            },
            {
                "rule": 'route "cancel"',
                "at": f"{scenario}:3:5",
                "differences": [
                    "path: '/jobs' does not fit /jobs/{id}/cancel",
                    "header if-match: absent, expected present",
                ],
            },
        ],
    }
    cancel = f'route "cancel" at {scenario}:3:5 (header if-match: absent, expected present)'
    status = (
        f'operation "job" (status) at {scenario}:9:18 '
        "(no operation 'nope' was started by this rule since the last reset)"
    )
    assert f"closest rule is {cancel}" in no_header.json()["error"]["message"]
    assert f"closest rule is {status}" in unknown.json()["error"]["message"]
    nothing = "NO MATCH: no scenario rule matches this request; closest rule"
    assert [line for line in proc.stderr_lines if " -> " in line] == [
        f"POST /jobs -> 599 ({nothing} {start})",
        f"POST /jobs/7/cancel -> 599 ({nothing} {cancel})",
        f"GET /jobs/operations/nope -> 599 ({nothing} {status})",
    ]


# -- template errors at render time ---------------------------------------------------------------------

TEMPLATE_ERROR = """\
name: broken-template
routes:
  - name: echo
    match: {method: POST, path: /echo}
    respond:
      json:
        deeper: "{{ request.json.missing.deeper }}"
  - name: fine
    match: {method: GET, path: /fine}
    respond: {json: {fine: true}}
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_template_error_is_a_scenario_error_and_the_proxy_keeps_serving(
    tmp_path: Path, confdir: Path, engine: str
) -> None:
    from proxy.verdict import check

    scenario = tmp_path / "broken.yaml"
    scenario.write_text(TEMPLATE_ERROR)
    problem = f"{scenario}:7:17: template error: 'dict object' has no attribute 'missing'"
    with (
        playing(scenario, confdir=confdir, engine=engine) as proxy,
        httpx.Client(trust_env=False, timeout=TIMEOUT) as http,
    ):
        for _ in range(2):
            r = http.post(f"{proxy.url}/echo?x=1", json={"present": 1})
            assert (r.status_code, r.reason_phrase) == (599, "Scenario Error (replay-proxy)")
            assert r.headers["x-replay-proxy"] == "scenario-error"
            assert r.json() == {
                "error": {
                    "code": "ReplayProxyScenarioError",
                    "message": f"replay-proxy: scenario error: {problem} (answering POST /echo?x=1)",
                    "request": {"method": "POST", "uri": f"{proxy.url}/echo?x=1"},
                    "hint": "The scenario rule that matched this request could not render its answer. "
                    "Fix the template at the file:line:column above (replay-proxy check finds syntax errors, "
                    "not values that are missing at request time: use default(...) or 'is defined'); the "
                    "proxy keeps serving.",
                }
            }
        fine = http.get(f"{proxy.url}/fine")
        assert (fine.status_code, fine.json()) == (200, {"fine": True})
        entries = proxy.journal.entries
        assert [(e.status, e.source, e.detail) for e in entries] == [
            (599, "scenario-error", problem),
            (599, "scenario-error", problem),
            (200, "scenario", 'broken.yaml: route "fine"'),
        ]
        assert entries[0].line() == f"POST /echo?x=1 -> 599 (SCENARIO ERROR: {problem})"
        assert [(v.rule, v.message) for v in check(entries)] == [
            ("scenario-error", f"POST /echo?x=1 got 599: {problem}; fix the scenario, not the client"),
            ("scenario-error", f"POST /echo?x=1 got 599: {problem}; fix the scenario, not the client"),
        ]


# -- form bodies (docs/scenarios.md, "Form bodies (AWS query protocol)") -----------------------------------


def test_the_documented_form_example_answers_aws_query_calls(tmp_path: Path, confdir: Path) -> None:
    section = (ROOT / "docs" / "scenarios.md").read_text().split("### Form bodies (AWS query protocol)")[1]
    yaml_block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    curl_body = re.search(r"curl -s -d '([^']*)' http://127\.0\.0\.1:8080/", section)
    assert yaml_block is not None and curl_body is not None
    scenario = tmp_path / "cloudformation.yaml"
    scenario.write_text(yaml_block[1])
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}  # what botocore sends
    with playing(scenario, confdir=confdir) as proxy, requests.Session() as http:
        http.trust_env = False
        r = http.post(f"{proxy.url}/", data=curl_body[1], headers=form, timeout=TIMEOUT)
        assert (r.status_code, r.headers["content-type"]) == (200, "text/xml")
        assert "<StackName>my-stack</StackName> <StackStatus>CREATE_IN_PROGRESS</StackStatus>" in r.text
        other = http.post(
            f"{proxy.url}/", data={"Action": "ListStacks", "Version": "2010-05-15"}, timeout=TIMEOUT
        )
        assert (other.status_code, other.text) == (
            400,
            "<ErrorResponse><Error><Code>InvalidAction</Code></Error></ErrorResponse>",
        )
        as_json = http.post(f"{proxy.url}/", json={"Action": "DescribeStacks"}, timeout=TIMEOUT)
        assert as_json.status_code == 599  # a JSON body has no form fields
        assert [e.detail for e in proxy.journal.entries][:2] == [
            'cloudformation.yaml: route "stack in progress"',
            'cloudformation.yaml: route "any other action"',
        ]
