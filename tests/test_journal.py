"""The journal through a real proxy, and the verdict on real clients (requests) that poll well or badly.

One ReplayProxy at a time in this process (mitmproxy's context is global); every client call has a
timeout. Clients that wait are told to wait 50 ms (``retry_after=0.05``); clients that never wait are
judged against the scenario's own Retry-After (1 s) so that "too early" is never a matter of luck.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy.journal import Exchange, Journal
from proxy.server import ReplayProxy
from proxy.verdict import Violation, check
from tests.conftest import ENGINES, ROOT, Cli

TIMEOUT = 10
MAX_POLLS = 20
DATASET_ID = "8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d"  # the one recorded in cassettes/azure-maps/
SCENARIO = ROOT / "scenarios/azure-maps/tileset-succeeds.yaml"
CASSETTE = ROOT / "cassettes/azure-maps/tileset-succeeds.yaml"
START = f"/tilesets?api-version=2.0&datasetId={DATASET_ID}"
TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def advertised(r: requests.Response, default: float = 0.05) -> float:
    """The Retry-After a response sent, capped at 1 s (no test waits longer)."""
    value = r.headers.get("Retry-After")
    return min(float(value), 1.0) if value is not None else default


def status_of(r: requests.Response) -> str:
    body: dict[str, Any] = r.json()
    return str(body["status"])


class Client:
    """A Creator client whose manners are set by its flags (all False: a well-behaved client)."""

    def __init__(
        self,
        base: str,
        *,
        never_sleeps: bool = False,
        extra_polls: int = 0,
        build_url: str | None = None,
        stop_after: int | None = None,
        add_query: str = "",
    ) -> None:
        self.base = base
        self.never_sleeps = never_sleeps
        self.extra_polls = extra_polls
        self.build_url = build_url
        self.stop_after = stop_after
        self.add_query = add_query
        self.s = session()

    def wait(self, r: requests.Response) -> None:
        if not self.never_sleeps:
            time.sleep(advertised(r))

    def run(self) -> str:
        """Start a tileset job and poll it; returns the last status seen."""
        r = self.s.post(self.base + START, timeout=TIMEOUT)
        assert r.status_code == 202, r.text
        url = r.headers["Location"] + self.add_query
        self.wait(r)
        status = ""
        for n in range(1, MAX_POLLS + 1):
            r = self.s.get(url, timeout=TIMEOUT)
            if r.status_code == 599:  # nothing answered: a client gives up
                return status
            status = status_of(r)
            if self.build_url is not None:  # from now on, poll a URL built from the operation id
                url = self.base + self.build_url.format(id=r.json()["operationId"])
            if status.lower() in TERMINAL or n == self.stop_after:
                break
            self.wait(r)
        for _ in range(self.extra_polls):
            self.wait(r)
            r = self.s.get(url, timeout=TIMEOUT)
            assert status_of(r) == status
        if status == "Succeeded" and self.stop_after is None and "resourceLocation" in r.json():
            resource = self.s.get(r.json()["resourceLocation"], timeout=TIMEOUT)
            assert resource.status_code == 200, resource.text
        return status


@pytest.fixture
def playing(confdir: Path) -> Iterator[ReplayProxy]:
    with ReplayProxy(scenarios=[SCENARIO], retry_after=0.05, confdir=confdir) as proxy:
        yield proxy


@pytest.fixture
def playing_slowly(confdir: Path) -> Iterator[ReplayProxy]:
    """The scenario as written: Retry-After 1 s."""
    with ReplayProxy(scenarios=[SCENARIO], confdir=confdir) as proxy:
        yield proxy


def rules(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


# -- journal entries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("add_query", ["", "?api-version=2.0"], ids=["as-given", "with-api-version"])
def test_a_well_behaved_client_gets_no_violations(playing: ReplayProxy, add_query: str) -> None:
    assert Client(playing.url, add_query=add_query).run() == "Succeeded"
    entries = playing.journal.entries
    assert check(entries) == []

    start, *polls, resource = entries
    op_id = start.operation
    assert op_id is not None
    status_url = f"{playing.url}/tilesets/operations/{op_id}"
    assert (start.method, start.path, start.status, start.poll) == ("POST", START, 202, None)
    assert start.status_urls == (status_url,)
    assert start.client_url == playing.url + START
    assert start.retry_after is None  # the scenario's 202 advertises none
    assert [(e.path, e.client_url) for e in polls] == [
        (f"/tilesets/operations/{op_id}{add_query}", status_url + add_query)
    ] * 4
    assert [(e.operation, e.poll, e.op_status, e.terminal, e.retry_after) for e in polls] == [
        (op_id, 1, "NotStarted", False, 0.05),  # after --retry-after: what the client was told
        (op_id, 2, "Running", False, 0.05),
        (op_id, 3, "Running", False, 0.05),
        (op_id, 4, "Succeeded", True, None),
    ]
    assert (resource.operation, resource.poll, resource.status) == (op_id, None, 200)
    arrivals = [e.monotonic for e in entries]
    assert arrivals == sorted(arrivals)
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(arrivals[:-1]))  # the client waited
    assert abs(start.time - time.time()) < 60  # wall clock


def test_cassette_replay_journals_operation_status_from_the_body(confdir: Path) -> None:
    with ReplayProxy(CASSETTE, retry_after=0.05, confdir=confdir) as proxy:
        assert Client(proxy.url).run() == "Succeeded"
        entries = proxy.journal.entries
    assert check(entries) == []
    assert [e.source for e in entries] == ["cassette"] * 6
    assert [(e.status, e.op_status, e.terminal, e.retry_after) for e in entries] == [
        (202, None, False, 0.05),
        (200, "NotStarted", False, 0.05),
        (200, "Running", False, 0.05),
        (200, "Running", False, 0.05),
        (201, "Succeeded", True, None),
        (200, None, False, None),
    ]
    status_url = f"{proxy.url}/tilesets/operations/9a42dbc1-96c7-4b5c-b8b9-b180920caf3e"
    assert entries[0].status_urls == (status_url,)  # rewritten onto the proxy, as the client got it
    assert [e.status_urls for e in entries[1:]] == [()] * 5  # the 201's Location is the resource
    assert all(e.operation is None and e.poll is None for e in entries)


def test_arrival_time_not_answer_time(confdir: Path) -> None:
    """A slow upstream answer is journaled when the request arrived, so gaps between polls stay true."""

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(0.5)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with ReplayProxy(upstream=f"http://127.0.0.1:{server.server_address[1]}", confdir=confdir) as proxy:
            sent = time.monotonic()
            assert session().get(proxy.url + "/slow", timeout=TIMEOUT).status_code == 200
            answered = time.monotonic()
            (entry,) = proxy.journal.entries
    finally:
        server.shutdown()
        server.server_close()
    assert entry.source == "upstream"
    assert answered - sent >= 0.5
    assert sent - 0.1 <= entry.monotonic <= sent + 0.25  # loose: well before the 0.5 s answer


RETRY_AFTER_FORMS = """\
routes:
  - match: {path: /ra/ms}
    respond: {retry-after: {ms: 1500}}
  - match: {path: /ra/x-ms}
    respond: {retry-after: {x-ms: 250}}
  - match: {path: /ra/date}
    respond: {retry-after: {date: 3s}}
operations:
  - start: {method: POST, path: /jobs}
    status-path: /jobs/operations/{operationId}
    accepted: {retry-after: {date: 3s}}
    steps:
      - status: Running
      - status: Succeeded
"""


@pytest.mark.parametrize("rewrite", [None, 0.05], ids=["as-advertised", "rewritten"])
def test_every_retry_after_form_is_journaled_in_seconds(
    tmp_path: Path, confdir: Path, rewrite: float | None
) -> None:
    scenario = tmp_path / "forms.yaml"
    scenario.write_text(RETRY_AFTER_FORMS)
    with ReplayProxy(scenarios=[scenario], retry_after=rewrite, confdir=confdir) as proxy:
        s = session()
        for path in ("/ra/ms", "/ra/x-ms", "/ra/date"):
            assert s.get(proxy.url + path, timeout=TIMEOUT).status_code == 200
        if rewrite is None:  # a client that ignores the HTTP-date on the 202
            accepted = s.post(proxy.url + "/jobs", timeout=TIMEOUT)
            assert accepted.status_code == 202 and "GMT" in accepted.headers["Retry-After"]
            assert s.get(accepted.headers["Location"], timeout=TIMEOUT).json()["status"] == "Running"
        entries = proxy.journal.entries
    ms, x_ms, date = (e.retry_after for e in entries[:3])
    if rewrite is not None:
        assert (ms, x_ms, date) == (0.05, 0.05, 0.05)
        return
    assert (ms, x_ms) == (1.5, 0.25)
    assert date is not None and 2.0 <= date <= 3.0  # an HTTP-date has whole seconds
    found = check(entries)
    assert rules(found) == ["retry-after-202", "unfinished"]
    assert found[0].index == 4
    assert found[0].message.startswith("ignored the delay on the 202: GET /jobs/operations/")
    told = f"{entries[3].retry_after:.3f}".rstrip("0").rstrip(".")
    assert f"which said to wait {told} s" in found[0].message


def test_the_journal_keeps_the_last_entries_only() -> None:
    journal = Journal(max_entries=3)
    for n in range(5):
        journal.add(Exchange("GET", f"http://h/{n}", f"/{n}", 200, "cassette"))
    assert [e.path for e in journal.entries] == ["/2", "/3", "/4"]


# -- the verdict on clients that break a rule -----------------------------------------------------------


def test_a_client_that_never_sleeps_breaks_retry_after(playing_slowly: ReplayProxy) -> None:
    assert Client(playing_slowly.url, never_sleeps=True).run() == "Succeeded"
    found = check(playing_slowly.journal.entries)
    assert rules(found) == ["retry-after"]  # the 202 advertised nothing: the first poll is fine
    assert found[0].index == 2
    op = playing_slowly.journal.entries[0].operation
    assert op is not None
    assert found[0].message.startswith(f"GET /tilesets/operations/{op[:8]}… came 0.")
    assert (
        "s after the previous answer, which said to wait 1 s (and 2 more early polls of this operation); "
        "the client should wait at least the Retry-After" in found[0].message
    )


def test_a_client_that_ignores_the_202_retry_after_of_a_cassette(confdir: Path) -> None:
    with ReplayProxy(CASSETTE, confdir=confdir) as proxy:  # the recording says Retry-After: 1 on the 202
        assert Client(proxy.url, never_sleeps=True).run() == "Succeeded"
        found = check(proxy.journal.entries)
    assert rules(found) == ["retry-after-202", "retry-after"]
    assert found[0].index == 1
    assert found[0].message.startswith(
        "ignored the delay on the 202: GET /tilesets/operations/9a42dbc1… came 0."
    )
    assert (
        "s after the 202 that started operation /tilesets/operations/9a42dbc1…, which said to wait 1 s; "
        "the client should wait that long before the first poll" in found[0].message
    )
    assert found[1].index == 2


def test_a_client_that_polls_after_succeeded(playing: ReplayProxy) -> None:
    assert Client(playing.url, extra_polls=2).run() == "Succeeded"
    found = check(playing.journal.entries)
    assert rules(found) == ["poll-after-terminal"]
    assert found[0].index == 5
    assert "after it answered Succeeded on poll 4 (and 1 more poll after it); the client should stop" in (
        found[0].message
    )


@pytest.mark.parametrize(
    "form", ["/tilesets/operations/{id}/", "/operations/{id}"], ids=["trailing-slash", "other-path"]
)
def test_a_client_that_builds_the_status_url_itself(playing: ReplayProxy, form: str) -> None:
    assert Client(playing.url, build_url=form).run() == "NotStarted"
    entries = playing.journal.entries
    op = entries[0].operation
    assert op is not None
    assert [e.source for e in entries] == ["scenario", "scenario", "no-match"]
    found = check(entries)
    assert rules(found) == ["self-built-url", "unfinished"]  # not also "unmatched"
    assert found[0] == Violation(
        "self-built-url",
        f"GET {form.format(id=op[:8] + '…')} polled operation {op[:8]}… at a URL the client was never "
        f"given; the status URL given was /tilesets/operations/{op[:8]}… (nothing answered it: 599); the "
        "client should poll the latest status URL the service gave (Location, Operation-Location, "
        "Azure-AsyncOperation) exactly as given, not build one",
        2,
    )
    assert rules(check(entries, disabled=["self-built-url"])) == ["unmatched", "unfinished"]


def test_a_client_that_stops_after_one_poll(playing: ReplayProxy) -> None:
    assert Client(playing.url, stop_after=1).run() == "NotStarted"
    entries = playing.journal.entries
    op = entries[0].operation
    assert op is not None
    assert check(entries) == [
        Violation(
            "unfinished",
            f"operation {op[:8]}… started by POST /tilesets?api-version=2.0&datasetId=8e9a3b5c… was polled "
            "1 time and never reached a terminal status (last status: NotStarted); the client should keep "
            "polling (as the delays say) until Succeeded, Failed or Canceled (or a 200/201/204 after 202s), "
            "or fail the call with a timeout it reports",
            0,
        )
    ]


# -- replay-proxy play --report -------------------------------------------------------------------------


def _naive_run(url: str) -> None:
    Client(url, never_sleeps=True).run()
    session().get(url + "/nothing-here", timeout=TIMEOUT)


def _rest_of_stdout(c: Cli) -> str:
    assert c.proc.stdout is not None
    return c.proc.stdout.read()


@pytest.mark.parametrize("engine", ENGINES)
def test_play_report_prints_the_timeline_and_violations_at_exit(cli: type[Cli], engine: str) -> None:
    c = cli(["play", str(SCENARIO), "--port", "0", "-q", "--report", "--engine", engine])
    assert c.url, c.stderr
    _naive_run(c.url)
    assert c.stop(signal.SIGTERM) == 0  # a report, not a gate
    out = _rest_of_stdout(c).splitlines()
    assert out[0] == "replay-proxy report: 7 requests, 1 operation"
    assert out[2].startswith("operation ") and out[2].endswith(
        ' (tileset-succeeds.yaml: operation "tileset")'
    )
    assert out[3].split()[:4] == ["start", "+0.000", "s", "POST"]
    polls = [line.split() for line in out if line.startswith("  poll")]
    assert [p[:2] for p in polls] == [["poll", "1"], ["poll", "2"], ["poll", "3"], ["poll", "4"]]
    assert [p[4] for p in polls] == ["gap"] * 4
    assert polls[1][-7:] == ["->", "200", "Running,", "Retry-After:", "1", "<-", "retry-after"]
    assert polls[2][-7:] == ["->", "200", "Running,", "Retry-After:", "1", "<-", "retry-after"]
    assert polls[3][-5:] == ["->", "201", "Succeeded", "<-", "retry-after"]  # every early poll is marked
    assert any(line.startswith("  => Succeeded after 4 polls in ") for line in out)
    assert "  GET /nothing-here -> 599, NO MATCH  <- unmatched" in out
    verdict = out[out.index("replay-proxy verdict: 2 violations") :]
    assert verdict[1].startswith("  1. retry-after: GET /tilesets/operations/")
    assert "which said to wait 1 s (and 2 more early polls of this operation); the client" in verdict[1]
    assert verdict[2].startswith("  2. unmatched: GET /nothing-here got 599: no scenario rule matches")
    assert len(verdict) == 3


@pytest.mark.parametrize("engine", ENGINES)
def test_strict_report_exits_3_on_violations_and_checks_can_be_skipped(cli: type[Cli], engine: str) -> None:
    args = ["--strict-report", "--skip-check", "unmatched", "--engine", engine]
    c = cli(["play", str(SCENARIO), "--port", "0", "-q", *args])
    _naive_run(c.url)
    assert c.stop(signal.SIGINT) == 3
    out = _rest_of_stdout(c).splitlines()
    assert out[-2:] == [
        "replay-proxy verdict: 1 violation",
        out[-1],
    ]
    assert out[-1].startswith("  1. retry-after: GET /tilesets/operations/")
    assert "  GET /nothing-here -> 599, NO MATCH" in out  # still in the timeline, not a violation


# -- facts made once per served response -------------------------------------------------------------


def test_fixed_facts_only_for_responses_whose_facts_depend_on_nothing_else() -> None:
    """``fixed_facts`` are reused for every request a response answers: not when a relative status URL
    is resolved against the request's URL, nor when an HTTP-date Retry-After is read against the time."""
    from proxy.journal import body_status, fixed_facts, response_facts
    from proxy.model import Response

    def facts(*headers: tuple[str, str], body: bytes = b'{"status": "Running"}') -> object:
        response = Response(202, "", headers, body)
        return fixed_facts(response, body_status(response))

    running = b'{"status": "Running"}'
    absolute = Response(202, "", (("Location", "https://h/ops/1"), ("Retry-After", "5")), running)
    assert facts(("Location", "https://h/ops/1"), ("Retry-After", "5")) == response_facts(
        absolute, "http://127.0.0.1:1/jobs", body=body_status(absolute)
    )
    assert facts(("Location", "/ops/1")) is None
    assert facts(("Retry-After", "Wed, 21 Oct 2099 07:28:00 GMT")) is None
    assert facts(("retry-after-ms", "250")) is not None


def test_an_operation_answers_detail_is_kept_other_details_are_scrubbed() -> None:
    from proxy.journal import scrubbed
    from proxy.scenario.answer import OperationTag

    def hide(text: str) -> str:
        return text.replace("secret", "<REDACTED>")

    plain = Exchange("GET", "http://h/x", "/x", 200, "no-match", "closest /x?k=secret")
    assert scrubbed(plain, hide).detail == "closest /x?k=<REDACTED>"
    tag = OperationTag("t.yaml: operation", "creator-v1", "poll", 0)
    polled = Exchange("GET", "http://h/x?secret", "/x", 200, "scenario", "t.yaml: op secret", tag=tag)
    kept = scrubbed(polled, hide)
    assert kept.detail == "t.yaml: op secret" and kept.url == "http://h/x?<REDACTED>"
