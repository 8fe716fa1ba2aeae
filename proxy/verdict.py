"""The verdict: how a client behaved, judged from the journal. Pure code: no mitmproxy, no I/O.

``check(entries)`` returns the violations of these rules (their names are a contract: pass them in
``disabled`` to turn a check off):

``unmatched``
    A request nothing answered (the 599 diagnostic): the message names the method, the path and why.
``retry-after``
    A poll of an operation (a request to a status URL the client was given, or answered as a poll of a
    scenario operation) that came earlier than the delay the previous poll's answer advertised, measured
    between the arrival times of the two requests (an honest client's gap is that delay *plus* a round
    trip), with a tolerance of 5 % or 1 ms, whichever is larger, so the check still fires at
    ``--retry-after 0.05``. The delay is the one actually sent (after ``--retry-after``): ``Retry-After``
    seconds or HTTP-date, ``retry-after-ms``, ``x-ms-retry-after-ms``; when several are sent, the shortest
    (``proxy.rewrite.parse_retry_after``). A request retried after a 429 or 503 answer to the same method
    and URL is held to that answer's delay too.
``retry-after-202``
    The first poll came earlier than the delay advertised by the answer that started the operation (the
    202). Its own check because azure-core polls once immediately after the 202 by design (LROBasePolling,
    azure-sdk-for-python PR #26376): turn this one off for azure-core clients and keep the others.
``poll-after-terminal``
    A poll of an operation after it answered a terminal status (Succeeded, Failed, Canceled; AIP-151
    ``done: true``; for an operation polled on a status URL that answers ``202`` while running, its first
    ``200``/``201``/``204`` answer without a ``status`` field: azure-core's LocationPolling, ARM deletes,
    Azure Maps batch APIs; not for an operation that reported a status before: a status-less answer there
    is broken, not the end). Fetching the created resource is not a poll. An answer the client is expected
    to retry (``408``, ``429``, any ``5xx``) never ends an operation, even when its body carries a terminal
    status: polling again after it is a retry, not a poll after the end.
``self-built-url``
    A poll to a URL the client was not given: a different path than the latest status URL given for the
    operation (a URL built from the operation id, an added trailing slash, a changed ``Location`` that was
    ignored), or a query parameter of the given URL dropped or changed (parameters the client adds are
    tolerated). An unanswered request whose path contains the id of a known operation is reported here
    rather than as ``unmatched`` (unless this check is disabled).
``unfinished``
    An operation that was started (the client was given a status URL, or a scenario started it) and never
    polled to a terminal status. A client that stopped after a retriable answer carrying a terminal status
    (a ``500`` with ``status: Failed``) did see the end: that is not unfinished.

``scenario-error``
    A request that a scenario rule matched but could not answer because the rule is broken (a template
    failed: the 599 scenario error); the message names the template's ``file:line:column``. The scenario
    is at fault, not the client, but a test that ran into it proved nothing.

Every message ends with what the client should do.

An *operation* is a scenario operation (its id in the journal) or, for cassette and upstream answers, the
status URL a response handed out (``Location`` on a 202, ``Operation-Location``, ``Azure-AsyncOperation``);
a later ``Location`` on a non-terminal poll answer moves it to a new URL. Hosts are ignored: only paths and
queries are compared. ``proxy/operations.py`` finds the operations (``Timeline``); this module judges them.
``report(entries, violations)`` prints a per-operation timeline and the violations.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from proxy.journal import Exchange
from proxy.operations import DONE_WITHOUT_STATUS as DONE_WITHOUT_STATUS
from proxy.operations import MIN_ID_LENGTH as MIN_ID_LENGTH
from proxy.operations import POLL_METHODS as POLL_METHODS
from proxy.operations import RETRIABLE as RETRIABLE
from proxy.operations import THROTTLED as THROTTLED
from proxy.operations import TOLERANCE_FRACTION as TOLERANCE_FRACTION
from proxy.operations import TOLERANCE_SECONDS as TOLERANCE_SECONDS
from proxy.operations import Timeline as _Analysis
from proxy.operations import TrackedOperation as _Op
from proxy.operations import path_query as _path_query
from proxy.operations import show as _show
from proxy.settings import VERDICT_RULES

RULES: tuple[str, ...] = VERDICT_RULES
"""Every check, by the name used to turn it off, in report order: declared beside the run options
(proxy/settings.py), which list them for ``--skip-check`` without importing the verdict at start-up."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule. ``index`` is the position in the checked entries of the request at fault."""

    rule: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


def check(entries: Sequence[Exchange], disabled: Collection[str] = ()) -> list[Violation]:
    """The violations in ``entries`` (a journal), in the order the requests came; ``disabled`` names
    checks to skip (see ``RULES``). Raises ValueError for an unknown check name."""
    off = _checked_names(disabled)
    analysis = _Analysis(entries)
    found: list[Violation] = []
    if "unmatched" not in off:
        for members in _unmatched_groups(entries, analysis, off).values():
            e = entries[members[0]]
            status = e.status if e.status is not None else "no response"
            again = _and_more(len(members) - 1, "identical request", "identical requests")
            found.append(
                Violation(
                    "unmatched",
                    f"{e.method} {_show(e.path)} got {status}: {e.detail}{again}; the client should "
                    "send only requests the service answers (if this one is right, record it again or add "
                    "a route)",
                    members[0],
                )
            )
    if "scenario-error" not in off:
        for i in analysis.order:
            e = entries[i]
            if e.source == "scenario-error":
                status = e.status if e.status is not None else "no response"
                what = (
                    f"{e.method} {_show(e.path)} got {status}: {e.detail}; fix the scenario, not the client"
                )
                found.append(Violation("scenario-error", what, i))
    for op in analysis.ops:
        found += _early_polls(entries, op, off)
        if "poll-after-terminal" not in off and op.after_terminal:
            first = op.after_terminal[0]
            assert op.terminal_at is not None
            ended = entries[op.terminal_at]
            more = len(op.after_terminal) - 1
            also = _and_more(more, "poll", "polls", " after it")
            found.append(
                Violation(
                    "poll-after-terminal",
                    f"{_request(entries[first])} polled operation {op.label} after it answered "
                    f"{_end_status(ended)} on poll {op.polls.index(op.terminal_at) + 1}{also}; the client "
                    "should stop polling at a terminal status (Succeeded, Failed, Canceled; or a 200/201/204 "
                    "after 202s) and use that answer",
                    first,
                )
            )
        if "self-built-url" not in off and op.self_built:
            found += _self_built(entries, op, analysis)
        if "unfinished" not in off and op.started and not op.finished(entries):
            found.append(_unfinished(entries, op))
    if "retry-after" not in off:
        for i, previous in analysis.early_retries:
            prev = entries[previous]
            found.append(
                Violation(
                    "retry-after",
                    f"{_request(entries[i])} was retried {secs(entries[i].monotonic - prev.monotonic)} s "
                    f"after the {prev.status} it got, which said to wait {num(prev.retry_after)} s; "
                    f"{_WAIT_ADVICE}",
                    i,
                )
            )
    # in the order the offending requests came; unfinished operations last (they are found at the end)
    rank = {i: n for n, i in enumerate(analysis.order)}
    found.sort(
        key=lambda v: (v.rule == "unfinished", rank.get(v.index, len(rank)) if v.index is not None else 0)
    )
    return found


def format_violations(violations: Sequence[Violation]) -> str:
    """A header line and one numbered line per violation."""
    if not violations:
        return "replay-proxy verdict: no violations"
    n = len(violations)
    lines = [f"replay-proxy verdict: {n} violation{'s' if n > 1 else ''}"]
    lines += [f"  {k}. {v}" for k, v in enumerate(violations, 1)]
    return "\n".join(lines)


def _and_more(more: int, one: str, many: str, where: str = "") -> str:
    """`` (and 3 more early polls of this operation)``: the rest of a group one violation stands for."""
    return f" (and {more} more {one if more == 1 else many}{where})" if more else ""


def _unmatched_groups(
    entries: Sequence[Exchange], analysis: _Analysis, off: Collection[str]
) -> dict[tuple[str, str, str], list[int]]:
    """The unanswered requests, identical ones together (a client retrying its 599: one violation, not
    one per retry), in the order their first came; a self-built status URL is that check's, when on."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i in analysis.order:
        e = entries[i]
        if e.source != "no-match" or ("self-built-url" not in off and i in analysis.strays):
            continue
        groups.setdefault((e.method, e.path, e.detail), []).append(i)
    return groups


def of_note_outside_operations(
    analysis: _Analysis, entries: Sequence[Exchange], flagged: Collection[int]
) -> list[int]:
    """The exchanges outside every operation worth showing (the report's and the HTML page's): what
    nothing answered, a scenario error, an upstream error, or one a violation points at."""
    return [
        i
        for i in analysis.order
        if i not in analysis.in_operations
        and (entries[i].source in ("no-match", "scenario-error", "error") or i in flagged)
    ]


def marks(
    entries: Sequence[Exchange], violations: Sequence[Violation], analysis: _Analysis | None = None
) -> dict[int, list[str]]:
    """The rules each request broke, by its index in ``entries``: a violation's own request and, for one
    that stands for a group ("and 3 more ..."), every member of the group."""
    analysis = analysis if analysis is not None else _Analysis(entries)
    flagged: dict[int, list[str]] = {}
    for v in violations:
        if v.index is not None:
            flagged.setdefault(v.index, []).append(v.rule)
    # a violation names the first request of its group ("and 3 more ..."): mark the others too
    groups = [("unmatched", members) for members in _unmatched_groups(entries, analysis, ()).values()]
    for op in analysis.ops:
        groups += [
            ("retry-after", [i for i, p in op.early if p != op.start]),
            ("poll-after-terminal", op.after_terminal),
            ("self-built-url", op.self_built),
        ]
    for rule, members in groups:
        if members and rule in flagged.get(members[0], []):
            for i in members[1:]:
                if rule not in flagged.setdefault(i, []):
                    flagged[i].append(rule)
    return flagged


def report(entries: Sequence[Exchange], violations: Sequence[Violation]) -> str:
    """A per-operation timeline (each poll: offset from the start, the gap before it, what it got), the
    requests outside operations that nothing answered, then the violations."""
    analysis = _Analysis(entries)
    flagged = marks(entries, violations, analysis)
    n_ops = len(analysis.ops)
    lines = [
        f"replay-proxy report: {len(entries)} request{'s' if len(entries) != 1 else ''}, "
        f"{n_ops} operation{'s' if n_ops != 1 else ''}"
    ]
    for op in analysis.ops:
        lines.append("")
        lines.append(f"operation {op.label}" + (f" ({op.name})" if op.name else ""))
        origin = entries[op.first].monotonic
        if op.start is not None:
            s = entries[op.start]
            given = f"; status URL {_show(op.given[0])}" if op.given else ""
            lines.append(
                f"  {'start':<7} +0.000 s  {'':<13} {_request(s)} -> {answer_text(s)}{given}"
                f"{_flags(flagged, op.start)}"
            )
        previous: int | None = op.start
        polls = 0
        for i in op.timeline:
            e = entries[i]
            gap = f"gap {secs(e.monotonic - entries[previous].monotonic)} s" if previous is not None else ""
            if i in op.polls:
                polls += 1
                what = f"poll {polls}"
            else:
                what = "stray" if i in analysis.strays else "other"
            lines.append(
                f"  {what:<7} +{secs(e.monotonic - origin)} s  {gap:<13} {_request(e)} -> {answer_text(e)}"
                f"{_flags(flagged, i)}"
            )
            if i in op.polls:
                previous = i
        end = op.terminal_at
        if end is None and op.finished(entries):
            end = op.polls[-1]
        if end is not None:
            took = entries[end].monotonic - origin
            n = op.polls.index(end) + 1
            polls_text = f"{n} poll{'s' if n != 1 else ''}"
            lines.append(f"  => {_end_status(entries[end])} after {polls_text} in {secs(took)} s")
        else:
            last = entries[op.polls[-1]].op_status if op.polls else None
            lines.append(f"  => never finished (last status: {last or 'none'})")
    outside = of_note_outside_operations(analysis, entries, flagged)
    if outside:
        lines.append("")
        lines.append("other requests of note:")
        for i in outside:
            e = entries[i]
            lines.append(f"  {_request(e)} -> {answer_text(e)}{_flags(flagged, i)}")
    lines.append("")
    lines.append(format_violations(violations))
    return "\n".join(lines)


# -- the checks -----------------------------------------------------------------------------------------


def _checked_names(disabled: Collection[str]) -> set[str]:
    off = set(disabled)
    unknown = off - set(RULES)
    if unknown:
        raise ValueError(
            f"unknown check{'s' if len(unknown) > 1 else ''} {', '.join(sorted(unknown))}; "
            f"choose from: {', '.join(RULES)}"
        )
    return off


_WAIT_ADVICE = (
    "the client should wait at least the Retry-After (or retry-after-ms / x-ms-retry-after-ms) "
    "the answer gave before sending the next request"
)


def _end_status(e: Exchange) -> str:
    """The terminal status an answer reported, for messages: ``Failed``, or ``200 (no status: done)``."""
    return e.op_status or (f"{e.status} (no status field: done)" if e.status is not None else "an end")


def _early_polls(entries: Sequence[Exchange], op: _Op, off: Collection[str]) -> list[Violation]:
    out: list[Violation] = []
    rest = [(i, p) for i, p in op.early if p != op.start] if "retry-after" not in off else []
    for i, p in op.early:
        if p == op.start and "retry-after-202" not in off:
            prev = entries[p]
            out.append(
                Violation(
                    "retry-after-202",
                    f"ignored the delay on the {prev.status}: {_request(entries[i])} came "
                    f"{secs(entries[i].monotonic - prev.monotonic)} s after the {prev.status} that started "
                    f"operation {op.label}, which said to wait {num(prev.retry_after)} s; the client should "
                    "wait that long before the first poll (azure-core polls once immediately by design: "
                    "turn this check off for it)",
                    i,
                )
            )
    if rest:
        i, p = rest[0]
        prev = entries[p]
        more = len(rest) - 1
        also = _and_more(more, "early poll", "early polls", " of this operation")
        out.append(
            Violation(
                "retry-after",
                f"{_request(entries[i])} came {secs(entries[i].monotonic - prev.monotonic)} s after the "
                f"previous answer, which said to wait {num(prev.retry_after)} s{also}; {_WAIT_ADVICE}",
                i,
            )
        )
    return out


def _self_built(entries: Sequence[Exchange], op: _Op, analysis: _Analysis) -> list[Violation]:
    first = op.self_built[0]
    e = entries[first]
    pq = _path_query(e.path)
    latest = _latest_before(entries, op, first)
    if pq in op.given:
        why = f"an older status URL: the latest given is {_show(latest)} (a changed Location was ignored)"
    elif latest is not None:
        why = f"a URL the client was never given; the status URL given was {_show(latest)}"
    else:
        why = "a URL the client was never given"
    if first in analysis.strays:
        why += f" (nothing answered it: {e.status})"
    more = len(op.self_built) - 1
    also = _and_more(more, "request", "requests", " like it")
    advice = (
        "; the client should poll the latest status URL the service gave (Location, Operation-Location, "
        "Azure-AsyncOperation) exactly as given, not build one"
    )
    message = f"{_request(e)} polled operation {op.label} at {why}{also}{advice}"
    return [Violation("self-built-url", message, first)]


def _latest_before(entries: Sequence[Exchange], op: _Op, index: int) -> str | None:
    """The latest status URL given to the client before the request ``index`` (by arrival)."""
    latest: str | None = None
    moment = entries[index].monotonic
    answered = ([op.start] if op.start is not None else []) + op.polls
    for i in answered:
        if entries[i].monotonic >= moment:
            continue
        if entries[i].status_urls:
            latest = _path_query(entries[i].status_urls[-1])
    return latest if latest is not None else op.latest


def _unfinished(entries: Sequence[Exchange], op: _Op) -> Violation:
    n = len(op.polls)
    last = entries[op.polls[-1]].op_status if op.polls else None
    started = f" started by {_request(entries[op.start])}" if op.start is not None else ""
    polled = f"polled {n} time{'s' if n != 1 else ''}" if n else "never polled"
    status = f" (last status: {last})" if last else ""
    return Violation(
        "unfinished",
        f"operation {op.label}{started} was {polled} and never reached a terminal status{status}; the "
        "client should keep polling (as the delays say) until Succeeded, Failed or Canceled (or a "
        "200/201/204 after 202s), or fail the call with a timeout it reports",
        op.start if op.start is not None else op.first,
    )


# -- text helpers ---------------------------------------------------------------------------------------


def _request(e: Exchange) -> str:
    return f"{e.method} {_show(e.path)}"


def secs(seconds: float) -> str:
    """Seconds with millisecond digits, never negative (clock jitter): ``1.250``."""
    return f"{max(0.0, seconds):.3f}"


def num(value: float | None) -> str:
    """A number without trailing zeros (``0.05``, ``2``), or ``none``: how delays are shown."""
    if value is None:
        return "none"
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def answer_text(e: Exchange, retry_after: str = "Retry-After: {}") -> str:
    """What the client got: status, operation status, delay, and who failed to answer.

    ``retry_after`` words the delay (``{}`` is the number): the verdict's ``Retry-After: 0.05``, the HTML
    report's ``Retry-After 0.05 s``.
    """
    status = str(e.status) if e.status is not None else "no response"
    parts = [status + (f" {e.op_status}" if e.op_status else "")]
    if e.retry_after is not None:
        parts.append(retry_after.format(num(e.retry_after)))
    shown = {"no-match": "NO MATCH", "scenario-error": "SCENARIO ERROR", "error": "upstream FAILED"}
    if e.source in shown:
        parts.append(shown[e.source])
    return ", ".join(parts)


def _flags(flagged: dict[int, list[str]], i: int | None) -> str:
    if i is None or i not in flagged:
        return ""
    return "  <- " + ", ".join(flagged[i])
