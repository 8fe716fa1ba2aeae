"""The verdict (proxy/verdict.py) on hand-built journals, and what a response tells the client
(proxy.journal.response_facts). Pure: no proxy, no sockets; times are given, never measured."""

from __future__ import annotations

from dataclasses import replace
from email.utils import formatdate

import pytest

from proxy.journal import Exchange, response_facts
from proxy.model import Response
from proxy.scenario.answer import OperationTag
from proxy.verdict import RULES, Violation, check, format_violations, report

T0 = 1_800_000_000.0  # a wall-clock origin for hand-built entries
SVC = "https://atlas.example.com"
OP = "/tilesets/operations/4f1c2d3e-aaaa-bbbb-cccc-0123456789ab"
OP_URL = SVC + OP
START = "/tilesets?api-version=2.0&datasetId=ds1"


def ex(
    method: str,
    path: str,
    status: int | None,
    at: float,
    *,
    source: str = "cassette",
    detail: str = "",
    retry_after: float | None = None,
    status_urls: tuple[str, ...] = (),
    operation: str | None = None,
    poll: int | None = None,
    op_status: str | None = None,
    terminal: bool = False,
    tag: OperationTag | None = None,
) -> Exchange:
    """A journal entry for a request that arrived ``at`` seconds after the origin."""
    return Exchange(
        method,
        SVC + path,
        path,
        status,
        source,
        detail,
        time=T0 + at,
        monotonic=at,
        client_url=SVC + path,
        retry_after=retry_after,
        status_urls=status_urls,
        operation=operation,
        poll=poll,
        op_status=op_status,
        terminal=terminal,
        tag=tag,
    )


def start(at: float = 0.0, retry_after: float | None = 1.0, url: str = OP_URL) -> Exchange:
    return ex("POST", START, 202, at, retry_after=retry_after, status_urls=(url,))


def poll(
    at: float,
    status: str,
    retry_after: float | None = 1.0,
    path: str = OP,
    code: int | None = None,
    status_urls: tuple[str, ...] = (),
) -> Exchange:
    """A cassette answer to a poll: 201 on Succeeded, else 200; Retry-After only while not terminal."""
    terminal = status.lower() in ("succeeded", "failed", "canceled")
    if code is None:
        code = 201 if status == "Succeeded" else 200
    return ex(
        "GET",
        path,
        code,
        at,
        retry_after=None if terminal else retry_after,
        status_urls=status_urls,
        op_status=status,
        terminal=terminal,
    )


def good_journal() -> list[Exchange]:
    """A client that waits every Retry-After, stops at Succeeded and fetches the resource."""
    return [
        start(0.0),
        poll(1.01, "NotStarted"),
        poll(2.02, "Running"),
        poll(3.03, "Running"),
        poll(4.04, "Succeeded"),
        ex("GET", "/tilesets/7d1e0f2a-1111-2222-3333-444455556666", 200, 4.05),
    ]


WAIT = (
    "the client should wait at least the Retry-After (or retry-after-ms / x-ms-retry-after-ms) the answer "
    "gave before sending the next request"
)
UNFINISHED = (
    "; the client should keep polling (as the delays say) until Succeeded, Failed or Canceled (or a "
    "200/201/204 after 202s), or fail the call with a timeout it reports"
)


def rules(violations: list[Violation]) -> list[str]:
    return [v.rule for v in violations]


# -- no false positives ---------------------------------------------------------------------------------


def test_a_well_behaved_client_has_no_violations() -> None:
    entries = good_journal()
    assert check(entries) == []
    assert format_violations([]) == "replay-proxy verdict: no violations"


def test_polls_within_the_tolerance_are_not_early() -> None:
    # 1 s advertised: 0.96 s is within 5 %; 0.05 s advertised: 0.048 s is within 5 %; 0.01: 0.0091 within 1 ms
    entries = [start(0.0), poll(0.96, "Running", retry_after=0.05), poll(1.008, "Succeeded")]
    assert rules(check(entries)) == []
    entries = [start(0.0, retry_after=None), poll(0.5, "Running", retry_after=0.01)]
    entries.append(poll(0.5091, "Succeeded"))
    assert check(entries) == []


@pytest.mark.parametrize("delay", [0.01, 0.05])
def test_the_retry_after_check_fires_at_the_fast_settings(delay: float) -> None:
    # a client that ignores a 10 ms or 50 ms delay (its polls come 3 ms apart) is caught: the check is not
    # blind at the --retry-after values the README recommends
    entries = [start(0.0, retry_after=None), poll(0.1, "Running", retry_after=delay)]
    entries.append(poll(0.103, "Succeeded"))
    assert rules(check(entries)) == ["retry-after"]


def test_a_poll_with_an_extra_query_parameter_follows_the_given_url() -> None:
    given = OP_URL + "?api-version=2.0"
    entries = [
        start(0.0, url=given),
        poll(1.0, "Running", path=OP + "?api-version=2.0&trace=1"),
        poll(2.0, "Succeeded", path=OP + "?trace=2&api-version=2.0"),
    ]
    assert check(entries) == []


def test_a_poll_without_a_response_sets_no_delay_for_the_retry() -> None:
    entries = [start(0.0), poll(1.0, "Running"), ex("GET", OP, None, 2.0), poll(2.01, "Succeeded")]
    assert check(entries) == []


def test_fetching_the_created_resource_is_not_a_poll_after_terminal() -> None:
    entries = [*good_journal(), ex("GET", "/tilesets/7d1e0f2a-1111-2222-3333-444455556666", 200, 4.06)]
    assert check(entries) == []


def test_entries_are_judged_in_arrival_order_not_journal_order() -> None:
    # a slow answer is journaled after a later request: the order of arrival counts
    entries = good_journal()
    entries[1], entries[2] = entries[2], entries[1]
    assert check(entries) == []


# -- unmatched ------------------------------------------------------------------------------------------


def test_unmatched_names_method_path_and_reason() -> None:
    entries = [
        ex("GET", "/mapData?api-version=2.0", 599, 0.0, source="no-match", detail="no recorded interaction")
    ]
    assert check(entries) == [
        Violation(
            "unmatched",
            "GET /mapData?api-version=2.0 got 599: no recorded interaction; the client should send only "
            "requests the service answers (if this one is right, record it again or add a route)",
            0,
        )
    ]


def test_identical_unmatched_requests_are_one_violation_and_all_marked() -> None:
    """An SDK that retries the 599 (azure-core GET: 4 requests) gets one violation naming the count."""
    why = "no recorded interaction"
    entries = [
        *(ex("GET", "/mapData", 599, t, source="no-match", detail=why) for t in (0.0, 0.8, 1.6, 3.2)),
        ex("POST", "/other", 599, 4.0, source="no-match", detail=why),
    ]
    violations = check(entries)
    assert violations == [
        Violation(
            "unmatched",
            "GET /mapData got 599: no recorded interaction (and 3 more identical requests); the client "
            "should send only requests the service answers (if this one is right, record it again or add "
            "a route)",
            0,
        ),
        Violation(
            "unmatched",
            "POST /other got 599: no recorded interaction; the client should send only requests the "
            "service answers (if this one is right, record it again or add a route)",
            4,
        ),
    ]
    marked = [line for line in report(entries, violations).splitlines() if "<- unmatched" in line]
    assert len(marked) == 5, report(entries, violations)


def test_a_scenario_error_is_its_own_check_not_unmatched() -> None:
    problem = "s.yaml:7:17: template error: 'dict object' has no attribute 'missing'"
    entries = [ex("POST", "/echo", 599, 0.0, source="scenario-error", detail=problem)]
    violations = check(entries)
    assert violations == [
        Violation("scenario-error", f"POST /echo got 599: {problem}; fix the scenario, not the client", 0)
    ]
    assert check(entries, disabled=["scenario-error"]) == []
    assert (
        "  POST /echo -> 599, SCENARIO ERROR  <- scenario-error" in report(entries, violations).splitlines()
    )


# -- retry-after ----------------------------------------------------------------------------------------


def test_ignoring_the_retry_after_on_the_202_is_named() -> None:
    entries = [start(0.0), poll(0.02, "Running"), poll(1.03, "Succeeded")]
    assert check(entries) == [
        Violation(
            "retry-after-202",
            "ignored the delay on the 202: GET /tilesets/operations/4f1c2d3e… came 0.020 s after "
            "the 202 that started operation /tilesets/operations/4f1c2d3e…, which said to wait 1 s; the "
            "client should wait that long before the first poll (azure-core polls once immediately by "
            "design: turn this check off for it)",
            1,
        )
    ]
    # its own name: a team can turn it off (azure-core) and keep the poll and throttling checks
    assert check(entries, disabled=["retry-after-202"]) == []
    assert rules(check(entries, disabled=["retry-after"])) == ["retry-after-202"]


def test_an_early_poll_names_the_gap_and_the_advertised_delay() -> None:
    entries = [start(0.0), poll(1.0, "Running"), poll(1.02, "Running"), poll(2.03, "Succeeded")]
    assert check(entries) == [
        Violation(
            "retry-after",
            "GET /tilesets/operations/4f1c2d3e… came 0.020 s after the previous answer, which said to wait "
            "1 s; " + WAIT,
            2,
        )
    ]


def test_many_early_polls_of_one_operation_are_one_violation() -> None:
    entries = [start(0.0, retry_after=None)] + [poll(0.01 * k, "Running") for k in range(1, 6)]
    entries.append(poll(0.06, "Succeeded"))
    found = check(entries)
    assert rules(found) == ["retry-after"]
    assert found[0].index == 2
    assert "(and 4 more early polls of this operation); the client should wait" in found[0].message


def test_an_http_date_retry_after_is_held_to_its_seconds() -> None:
    now = T0
    accepted = Response(
        202, "Accepted", (("Location", OP_URL), ("Retry-After", formatdate(now + 3, usegmt=True)))
    )
    facts = response_facts(accepted, SVC + START, now=now)
    assert facts.retry_after == 3.0
    assert facts.status_urls == (OP_URL,)
    entries = [
        ex("POST", START, 202, 0.0, retry_after=facts.retry_after, status_urls=facts.status_urls),
        poll(1.0, "Running"),
        poll(2.0, "Succeeded"),
    ]
    found = check(entries)
    assert rules(found) == ["retry-after-202"]
    assert found[0].message.startswith("ignored the delay on the 202: ")
    assert (
        "came 1.000 s after the 202 that started operation "
        "/tilesets/operations/4f1c2d3e…, which said to wait 3 s; " in found[0].message
    )


def test_a_throttled_request_retried_too_soon_is_flagged() -> None:
    entries = [
        ex("POST", START, 429, 0.0, retry_after=2.0),
        start(0.5),
        poll(1.6, "Succeeded"),
    ]
    assert check(entries) == [
        Violation(
            "retry-after",
            "POST /tilesets?api-version=2.0&datasetId=ds1 was retried 0.500 s after the 429 it got, "
            "which said to wait 2 s; " + WAIT,
            1,
        )
    ]
    entries[1] = start(2.0)
    entries[2] = poll(3.0, "Succeeded")
    assert check(entries) == []


# -- poll-after-terminal --------------------------------------------------------------------------------


def test_polling_after_succeeded_is_flagged_once_per_operation() -> None:
    entries = [*good_journal(), poll(5.0, "Succeeded"), poll(6.0, "Succeeded")]
    assert check(entries) == [
        Violation(
            "poll-after-terminal",
            "GET /tilesets/operations/4f1c2d3e… polled operation /tilesets/operations/4f1c2d3e… after it "
            "answered Succeeded on poll 4 (and 1 more poll after it); the client should stop polling at a "
            "terminal status (Succeeded, Failed, Canceled; or a 200/201/204 after 202s) and use that answer",
            6,
        )
    ]


def test_failed_is_terminal_too() -> None:
    entries = [start(0.0), poll(1.0, "Failed"), poll(2.0, "Failed")]
    assert rules(check(entries)) == ["poll-after-terminal"]


def location_poll(at: float, code: int, retry_after: float | None = 0.05) -> Exchange:
    """A status URL that answers 202 while running, then 200/201/204 with the result: no status field."""
    running = code == 202
    return ex(
        "GET",
        OP,
        code,
        at,
        retry_after=retry_after if running else None,
        status_urls=(OP_URL,) if running else (),
    )


@pytest.mark.parametrize("done", [200, 201, 204])
def test_202_while_running_then_a_result_without_status_is_finished(done: int) -> None:
    # azure-core LocationPolling, ARM deletes, Azure Maps batch APIs: 202, 202, then the result
    entries = [start(0.0, retry_after=None), location_poll(0.1, 202), location_poll(0.2, 202)]
    entries.append(location_poll(0.3, done))
    assert check(entries) == []
    assert f"  => {done} (no status field: done) after 3 polls in 0.300 s" in report(entries, [])
    # and polling on after the result is a poll after the end
    found = check([*entries, location_poll(0.4, done)])
    assert rules(found) == ["poll-after-terminal"]
    assert f"after it answered {done} (no status field: done) on poll 3" in found[0].message
    # still 202: unfinished
    assert rules(check(entries[:-1])) == ["unfinished"]


def test_a_retried_5xx_is_not_a_poll_after_terminal_even_when_it_says_failed() -> None:
    failed_500 = poll(2.0, "Failed", code=500)
    entries = [start(0.0), poll(1.0, "Running"), failed_500, poll(3.0, "Running"), poll(4.0, "Succeeded")]
    assert check(entries) == []
    # a 503 or 429 with a terminal status is retriable too; a client that gives up after it saw the end
    for code in (429, 503):
        assert check([start(0.0), poll(1.0, "Running"), poll(2.0, "Failed", code=code)]) == []
    # the same Failed on a 200 is the end: polling on is a poll after the end
    entries = [start(0.0), poll(1.0, "Failed", code=200), poll(2.0, "Failed", code=200)]
    assert rules(check(entries)) == ["poll-after-terminal"]


def test_a_retried_5xx_is_held_to_its_retry_after() -> None:
    unavailable = ex("GET", OP, 503, 1.0, retry_after=2.0)
    entries = [start(0.0), unavailable, poll(1.5, "Running"), poll(3.0, "Succeeded")]
    found = check(entries)
    assert rules(found) == ["retry-after"]
    assert "came 0.500 s after the previous answer, which said to wait 2 s" in found[0].message


# -- self-built-url -------------------------------------------------------------------------------------


def test_a_status_url_built_from_the_id_is_self_built_not_unmatched() -> None:
    built = "/operations/4f1c2d3e-aaaa-bbbb-cccc-0123456789ab"
    entries = [
        start(0.0),
        poll(1.0, "Running"),
        ex("GET", built, 599, 2.0, source="no-match", detail="no recorded interaction matches"),
        poll(3.0, "Succeeded"),
    ]
    assert check(entries) == [
        Violation(
            "self-built-url",
            "GET /operations/4f1c2d3e… polled operation /tilesets/operations/4f1c2d3e… at a URL the client "
            "was never given; the status URL given was /tilesets/operations/4f1c2d3e… (nothing answered "
            "it: 599); the client should poll the latest status URL the service gave (Location, "
            "Operation-Location, Azure-AsyncOperation) exactly as given, not build one",
            2,
        )
    ]
    # with the check off, the request is still reported: as unmatched
    assert rules(check(entries, disabled=["self-built-url"])) == ["unmatched"]


def test_ignoring_a_changed_location_is_flagged() -> None:
    moved = SVC + "/tilesets/operations/4f1c2d3e-aaaa-bbbb-cccc-0123456789ab/v2"
    entries = [
        start(0.0),
        poll(1.0, "Running", code=202, status_urls=(moved,)),
        poll(2.0, "Running"),  # the old URL again
        poll(3.0, "Succeeded", path="/tilesets/operations/4f1c2d3e-aaaa-bbbb-cccc-0123456789ab/v2"),
    ]
    found = check(entries)
    assert rules(found) == ["self-built-url"]
    assert found[0].index == 2
    assert found[0].message == (
        "GET /tilesets/operations/4f1c2d3e… polled operation /tilesets/operations/4f1c2d3e… at an older "
        "status URL: the latest given is /tilesets/operations/4f1c2d3e…/v2 (a changed Location was ignored)"
        "; the client should poll the latest status URL the service gave (Location, Operation-Location, "
        "Azure-AsyncOperation) exactly as given, not build one"
    )


def test_dropping_a_query_parameter_of_the_given_url_is_flagged() -> None:
    entries = [
        start(0.0, url=OP_URL + "?api-version=2.0"),
        poll(1.0, "Running", path=OP),
        poll(2.0, "Succeeded", path=OP + "?api-version=1.0"),
    ]
    found = check(entries)
    assert rules(found) == ["self-built-url"]
    assert "(and 1 more request like it); the client should poll the latest status URL" in found[0].message


def test_scenario_polls_at_another_query_are_self_built() -> None:
    op_id = "4f1c2d3e-aaaa-bbbb-cccc-0123456789ab"
    entries = [
        ex("POST", START, 202, 0.0, source="scenario", status_urls=(OP_URL + "?v=2",), operation=op_id),
        ex(
            "GET",
            OP,
            200,
            1.0,
            source="scenario",
            operation=op_id,
            poll=1,
            op_status="Succeeded",
            terminal=True,
        ),
    ]
    found = check(entries)
    assert rules(found) == ["self-built-url"]
    assert found[0].message.startswith(f"GET {OP[:29]}… polled operation 4f1c2d3e… at a URL the client was")


# -- unfinished -----------------------------------------------------------------------------------------


def test_an_operation_never_polled_to_the_end_is_unfinished() -> None:
    entries = [start(0.0), poll(1.0, "Running")]
    assert check(entries) == [
        Violation(
            "unfinished",
            "operation /tilesets/operations/4f1c2d3e… started by POST "
            "/tilesets?api-version=2.0&datasetId=ds1 was polled 1 time and never reached a terminal "
            "status (last status: Running)" + UNFINISHED,
            0,
        )
    ]


def test_scenario_operations_without_a_status_header_are_followed_by_id() -> None:
    # AIP-151: the operation's name is in the body, no header; the scenario says which op each entry is
    entries = [
        ex(
            "POST",
            "/v1/books:import",
            200,
            0.0,
            source="scenario",
            operation="7",
            op_status="running",
            detail='a.yaml: start of operation "import" (7)',
            tag=OperationTag('a.yaml: operation "import"', "aip-151", "start"),
        ),
        ex(
            "GET", "/v1/operations/7", 200, 1.0, source="scenario", operation="7", poll=1, op_status="running"
        ),
    ]
    found = check(entries)
    assert found == [
        Violation(
            "unfinished",
            "operation 7 started by POST /v1/books:import was polled 1 time and never reached a terminal "
            "status (last status: running)" + UNFINISHED,
            0,
        )
    ]
    entries.append(
        ex(
            "GET",
            "/v1/operations/7",
            200,
            2.0,
            source="scenario",
            operation="7",
            poll=2,
            op_status="done",
            terminal=True,
        )
    )
    assert check(entries) == []
    assert 'operation 7 (a.yaml: operation "import")' in report(entries, [])


def test_a_start_the_client_never_received_starts_nothing() -> None:
    entries = [ex("POST", START, None, 0.0, source="scenario", operation="abc123", detail="[fault: reset]")]
    assert check(entries) == []


# -- names, formatting, report --------------------------------------------------------------------------


def test_checks_can_be_turned_off_by_name_and_unknown_names_are_refused() -> None:
    entries = [start(0.0), poll(0.01, "Running"), poll(0.02, "Running")]
    assert rules(check(entries)) == ["retry-after-202", "retry-after", "unfinished"]
    assert rules(check(entries, disabled=["retry-after"])) == ["retry-after-202", "unfinished"]
    assert rules(check(entries, disabled=["unfinished"])) == ["retry-after-202", "retry-after"]
    assert check(entries, disabled=RULES) == []
    with pytest.raises(ValueError, match=r"unknown check retry_after; choose from: unmatched, retry-after"):
        check(entries, disabled=["retry_after"])


def test_format_violations_numbers_one_line_each_under_a_header() -> None:
    text = format_violations(
        [Violation("unmatched", "GET /a got 599: why", 0), Violation("unfinished", "x", 1)]
    )
    assert text.splitlines() == [
        "replay-proxy verdict: 2 violations",
        "  1. unmatched: GET /a got 599: why",
        "  2. unfinished: x",
    ]


def test_report_shows_each_poll_with_offset_gap_and_answer_then_the_violations() -> None:
    entries = [
        start(0.0),
        poll(0.25, "NotStarted"),
        poll(1.5, "Succeeded"),
        ex("GET", "/nope", 599, 2.0, source="no-match", detail="no recorded interaction matches"),
    ]
    violations = check(entries)
    lines = report(entries, violations).splitlines()
    assert lines[0] == "replay-proxy report: 4 requests, 1 operation"
    assert lines[2] == "operation /tilesets/operations/4f1c2d3e…"
    assert lines[3].split() == [
        "start",
        "+0.000",
        "s",
        "POST",
        START,
        "->",
        "202,",
        "Retry-After:",
        "1;",
        "status",
        "URL",
        "/tilesets/operations/4f1c2d3e…",
    ]
    assert lines[4].split() == [
        "poll",
        "1",
        "+0.250",
        "s",
        "gap",
        "0.250",
        "s",
        "GET",
        "/tilesets/operations/4f1c2d3e…",
        "->",
        "200",
        "NotStarted,",
        "Retry-After:",
        "1",
        "<-",
        "retry-after-202",
    ]
    assert lines[5].split()[:7] == ["poll", "2", "+1.500", "s", "gap", "1.250", "s"]
    assert lines[5].split()[-3:] == ["->", "201", "Succeeded"]
    assert lines[6] == "  => Succeeded after 2 polls in 1.500 s"
    assert "other requests of note:" in lines
    assert "  GET /nope -> 599, NO MATCH  <- unmatched" in lines
    assert lines[-3:] == format_violations(violations).splitlines()
    assert rules(violations) == ["retry-after-202", "unmatched"]


# -- what a response tells the client -------------------------------------------------------------------


def test_response_facts_read_every_retry_after_form() -> None:
    def ra(*headers: tuple[str, str]) -> float | None:
        return response_facts(Response(200, "OK", headers), SVC + "/", now=T0).retry_after

    assert ra(("Retry-After", "2")) == 2.0
    assert ra(("Retry-After", "0.5")) == 0.5
    assert ra(("Retry-After", formatdate(T0 + 7, usegmt=True))) == 7.0
    assert ra(("Retry-After", formatdate(T0 - 7, usegmt=True))) == 0.0
    assert ra(("retry-after-ms", "1500")) == 1.5
    assert ra(("x-ms-retry-after-ms", "250")) == 0.25
    assert ra(("Retry-After", "soon")) is None
    assert ra() is None


def test_response_facts_status_urls_and_operation_status() -> None:
    base = SVC + "/tilesets?x=1"
    accepted = Response(202, "Accepted", (("Location", "/tilesets/operations/1"),))
    assert response_facts(accepted, base).status_urls == (SVC + "/tilesets/operations/1",)
    both = Response(
        202,
        "Accepted",
        (("Operation-Location", SVC + "/ops/1?api-version=2"), ("Azure-AsyncOperation", "ops/1/status")),
    )
    assert response_facts(both, base).status_urls == (SVC + "/ops/1?api-version=2", SVC + "/ops/1/status")
    running = Response(200, "OK", (("Location", SVC + "/next"),), b'{"status": "Running"}')
    assert response_facts(running, base) == (None, (SVC + "/next",), "Running", False, False, None)
    # a created resource's Location is no status URL
    done = Response(201, "Created", (("Location", SVC + "/tilesets/9"),), b'{"status": "succeeded"}')
    assert response_facts(done, base) == (None, (), "succeeded", True, False, None)
    redirect = Response(302, "Found", (("Location", SVC + "/elsewhere"),))
    assert response_facts(redirect, base).status_urls == ()
    aip = Response(200, "OK", (), b'{"name": "operations/7", "done": true, "metadata": {"status": "DONE"}}')
    assert response_facts(aip, base)[2:4] == ("DONE", True)
    aip_running = Response(200, "OK", (), b'{"name": "operations/7", "done": false}')
    assert response_facts(aip_running, base)[2:4] == ("running", False)
    assert response_facts(aip_running, base).operation_name == "operations/7"  # polled under the API base
    assert response_facts(aip, base).operation_name is None  # done: nothing to poll
    assert response_facts(Response(200, "OK", (), b"[1, 2]"), base)[2:4] == (None, False)
    assert response_facts(Response(200, "OK", (), b"{not json"), base)[2:4] == (None, False)


def test_report_of_an_empty_journal() -> None:
    assert report([], []).splitlines() == [
        "replay-proxy report: 0 requests, 0 operations",
        "",
        "replay-proxy verdict: no violations",
    ]


def test_the_report_names_an_operation_by_its_tag_never_by_the_console_text() -> None:
    # the rule's name is data on the entry (Exchange.tag, set by the scenario machine); the detail is for
    # people and may say anything: it is never parsed
    tag = OperationTag('a.yaml: operation "import"', "aip-151", "start")
    entries = [
        ex(
            "POST",
            "/v1/books:import",
            200,
            0.0,
            source="scenario",
            operation="7",
            op_status="running",
            detail='b.yaml: start of operation "other" (7)',
            tag=tag,
        ),
        ex(
            "GET",
            "/v1/operations/7",
            200,
            1.0,
            source="scenario",
            operation="7",
            poll=1,
            op_status="done",
            terminal=True,
            tag=OperationTag(tag.rule, "aip-151", "poll", 0),
        ),
    ]
    text = report(entries, [])
    assert 'operation 7 (a.yaml: operation "import")' in text
    assert "b.yaml" not in text.split("POST")[0]
    untagged = [replace(e, tag=None) for e in entries]
    assert "operation 7\n" in report(untagged, []) and "a.yaml" not in report(untagged, [])


def test_a_status_less_200_mid_poll_does_not_end_an_operation_that_reports_statuses() -> None:
    # a gateway's HTML 200 (or a truncated body) between Running and Succeeded: azure-core's
    # OperationResourcePolling raises on it, it is not the end; only a location-style operation (no
    # status fields at all) ends at its first 200/201/204
    garbled = ex("GET", OP, 200, 2.0)
    entries = [start(0.0), poll(1.0, "Running"), garbled, poll(3.0, "Succeeded")]
    assert check(entries) == []
    assert rules(check(entries[:3])) == ["unfinished"]
