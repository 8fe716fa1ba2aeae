"""Operations inferred from traffic: which requests start, poll and finish each long-running operation.

One module for every reader of traffic: the verdict (``proxy/verdict.py``) judges the operations that
``Timeline`` finds in a journal, and ``recognise`` summarises them for ``learn`` (a scenario written from a
recording). Pure code: no mitmproxy, no I/O. It reads only structured facts: the journal's ``Exchange``
fields (``status_urls``, ``op_status``, ``terminal``, ``retry_after``, a scenario answer's ``tag``), or for a
recording, its ``Interaction`` requests and responses, never the console's human-readable text.

**The walk** (``Timeline``): in arrival order, an entry is the *start* of an operation when it is a
scenario operation's first answer (``Exchange.operation``) or a non-error response that gave a status URL
(``Location`` on a 202 or on a non-terminal answer, ``Operation-Location``, ``Azure-AsyncOperation``; or a
running JSON body's own, ``journal.body_status_url``: ``urls.get``, an ARM PUT's own URL); a
*poll* when it is a GET/HEAD of a status URL given before (paths compared, hosts and queries ignored) or a
scenario poll; a *stray* when nothing answered it and its path holds a known operation's id. An operation
ends at its first terminal answer (``ends``: a terminal status, AIP-151 ``done: true``, or a 200/201/204
without a status field where running was 202) that a client is not expected to retry (``RETRIABLE``).

**The API for ``learn``**: ``recognise(items) -> list[Operation]``, where ``items`` is a journal
(``Exchange``) or a recording (``Interaction``, ``proxy/model.py``). Each ``Operation`` has:

- ``dialect``: the ``proxy/dialects.py`` name that fits best (a scenario's own, from ``Exchange.tag``;
  otherwise scored from the table: the header that gave the status URL, the running status code, whether
  polls carry a status field, the status body's marker field), or ``unknown``. A journal keeps no bodies
  or header names for cassette and upstream answers: there ``location`` and ``aip-151`` still stand
  out, but ``creator-v1``, ``creator-v2`` and ``arm`` look alike (the first wins); read the recording;
- ``start``: method, path, query, the JSON body's top-level keys, status code, Retry-After, form fields
  (``StartFacts``; None when the recording begins mid-operation);
- ``status_url`` (path and query as first given), ``status_template`` (the operation id replaced by
  ``{operationId}``), ``given_by`` (the header name; ``body`` for AIP-151's ``name``; ``urls.get`` for the
  URL a running JSON body gives there, in a recording, as Replicate's predictions do; ``start-url``
  (``START_URL``) for an ``arm`` resource polled at its own URL; ``header`` when a journal entry of a
  cassette or upstream answer did not keep which, body-given URLs included)
  and ``url_form`` (``absolute`` or ``relative``; None when unknown);
- ``steps``: consecutive polls with the same (status, HTTP code, Retry-After) as one ``StepFacts`` with a
  ``count``;
- ``outcome``: ``succeeded``, ``failed``, ``canceled``, ``done`` (ended without a status field) or
  ``unfinished``; ``terminal_status`` the status text; ``error`` the terminal body's ``error`` (recordings);
- ``final``: the GET that fetched the result after the end (``FinalRoute``: the resource URL a success
  pointed at, or a PUT/PATCH's own URL), None when there was none;
- ``entries``: the indexes of its start and polls in ``items``;
- for ``learn`` (recordings; empty or None for a journal): ``polls`` (each poll up to the end as a
  ``PollFacts``), ``after_terminal`` (polls after the end), ``given`` (the status URL exactly as given),
  ``also_given_by`` (other headers of the start answer that gave the same URL), ``resource_url`` (the
  absolute URL of ``final``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urljoin, urlsplit

from proxy.dialects import DIALECTS, is_cancelled, is_failure, is_success
from proxy.journal import STATUS_URL_HEADERS, Exchange, body_status, response_facts
from proxy.model import Interaction, Request, Response, header_value, json_document

TOLERANCE_FRACTION = 0.05
TOLERANCE_SECONDS = 0.001
"""A poll is early when it came more than max(5 % of the delay, 1 ms) before the delay was over."""

RETRIABLE = frozenset({408, 429, *range(500, 600)})
"""Answers a client is expected to retry: they never end an operation."""

DONE_WITHOUT_STATUS = (200, 201, 204)
"""A poll answered with one of these and no ``status`` field ends the operation (202 means running)."""

BODY_URL = "urls.get"
"""``given_by`` of a status URL a running answer gave in its JSON body at ``urls.get`` (Replicate's
predictions: ``201 {status: starting, urls: {get, cancel}}``, polled there, ``200`` every poll)."""

START_URL = "start-url"
"""``given_by`` of an ARM resource that a PUT or PATCH answered with a running
``properties.provisioningState`` and no status header: polled at the request's own URL (azure-mgmt-core's
``BodyContentPolling``)."""

MIN_ID_LENGTH = 4
"""An operation id shorter than this (a counter) is not searched for in the paths of unanswered requests."""

THROTTLED = (429, 503)
POLL_METHODS = ("GET", "HEAD")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# -- the walk: which request starts or polls which operation ------------------------------------------


@dataclass
class TrackedOperation:
    """One operation as the journal shows it: its start, its polls, what it was given and how it ended.

    ``name`` is its scenario rule (``Exchange.tag.rule``) when a scenario answered it. ``early``,
    ``after_terminal`` and ``self_built`` are facts the verdict judges: polls that came before the delay
    the previous answer advertised, polls after the terminal answer, polls at URLs never given.
    """

    label: str
    name: str = ""
    start: int | None = None
    """The entry that started it (None: its start is not in the journal)."""
    first: int = 0
    started: bool = False
    given: list[str] = field(default_factory=list)
    """Status URLs given to the client (path?query), oldest first."""
    latest: str | None = None
    ids: set[str] = field(default_factory=set)
    polls: list[int] = field(default_factory=list)
    timeline: list[int] = field(default_factory=list)
    last: int | None = None
    """The last entry that answered for this operation (its start or a poll)."""
    terminal_at: int | None = None
    after_terminal: list[int] = field(default_factory=list)
    early: list[tuple[int, int]] = field(default_factory=list)
    self_built: list[int] = field(default_factory=list)

    speaks_status: bool = False
    """A poll answer reported a status: from then on only a terminal status ends it (a status-less 200 is
    a broken answer, not the end: azure-core's OperationResourcePolling raises on it)."""
    polls_resource: bool = False
    """Its status URL is the resource a running body described (Replicate's ``urls.get``, an ARM resource
    polled at its own URL): a GET of it after the end reads the result, so it is not ``after_terminal``."""

    def finished(self, entries: Sequence[Exchange]) -> bool:
        """Polled to the end: a terminal answer, or a retriable one that carried a terminal status last."""
        return self.terminal_at is not None or (bool(self.polls) and self.ends(entries[self.polls[-1]]))

    def ends(self, e: Exchange) -> bool:
        """Whether the poll answer ``e`` reports this operation's end (``ends``, within its vocabulary)."""
        return e.terminal or (not self.speaks_status and ends(e))


class Timeline:
    """Walks the journal in arrival order and sorts every request into operations, starts and polls
    (``ops``, in the order they began), strays (unanswered requests that name a known operation's id) and
    early retries of throttled requests."""

    def __init__(self, entries: Sequence[Exchange]) -> None:
        entries = link_named_polls(entries)
        self.entries = entries
        self.order = sorted(range(len(entries)), key=lambda i: entries[i].monotonic)
        self.ops: list[TrackedOperation] = []
        self.by_id: dict[str, TrackedOperation] = {}
        self.by_path: dict[str, TrackedOperation] = {}
        self.strays: set[int] = set()
        self.in_operations: set[int] = set()
        self.early_retries: list[tuple[int, int]] = []
        throttled: dict[tuple[str, str], int] = {}
        for i in self.order:
            e = entries[i]
            kind, op = self._classify(i, e)
            if kind != "poll":
                key = (e.method, path_query(e.path))
                previous = throttled.pop(key, None)
                if previous is not None and came_early(entries[previous], e):
                    self.early_retries.append((i, previous))
                if e.status in THROTTLED and e.retry_after is not None:
                    throttled[key] = i
            if op is None:
                continue
            self.in_operations.add(i)
            if kind == "other":
                op.timeline.append(i)
            elif kind == "start":
                op.start = op.last = i
                op.first = i
                op.started = True
                self._give(op, e)
            elif kind == "poll":
                self._poll(op, i, e)
            elif kind == "stray":
                self.strays.add(i)
                op.self_built.append(i)
                op.timeline.append(i)

    def _classify(self, i: int, e: Exchange) -> tuple[str, TrackedOperation | None]:
        path = path_of(e.path)
        if e.operation is not None:
            op = self.by_id.get(e.operation)
            if op is None:
                if e.poll is None and (e.status is None or e.status >= 400):
                    return "other", None  # the client never learned of this operation
                op = self._new(short(e.operation), i, name=e.tag.rule if e.tag is not None else "")
                # polled at the resource itself (arm without a monitor: the PUT's URL): a later GET reads it
                op.polls_resource = e.tag is not None and e.tag.dialect == "arm" and not e.tag.headers
                op.ids.add(e.operation)
                self.by_id[e.operation] = op
                if e.poll is None:
                    return "start", op
                return "poll", op
            return ("poll", op) if e.poll is not None else ("other", op)
        if e.method in POLL_METHODS:
            op = self.by_path.get(path)
            if op is not None:
                return "poll", op
            if e.source == "no-match":
                segments = set(unquote(path).split("/"))
                for candidate in reversed(self.ops):
                    if candidate.ids & segments:
                        return "stray", candidate
        if e.status_urls and e.status is not None and e.status < 400:
            op = self._new(show(path_query(e.status_urls[0])), i)
            op.polls_resource = e.polls_resource
            return "start", op
        return "other", None

    def _new(self, label: str, i: int, name: str = "") -> TrackedOperation:
        op = TrackedOperation(label=label, name=name, first=i)
        self.ops.append(op)
        return op

    def _give(self, op: TrackedOperation, e: Exchange) -> None:
        for url in e.status_urls:
            pq = path_query(url)
            if pq not in op.given:
                op.given.append(pq)
            op.latest = pq
            path = path_of(pq)
            self.by_path[path] = op
            last = unquote(path).rstrip("/").rsplit("/", 1)[-1]
            if len(last) >= MIN_ID_LENGTH:
                op.ids.add(last)

    def _poll(self, op: TrackedOperation, i: int, e: Exchange) -> None:
        entries = self.entries
        if not op.polls and op.start is None:
            op.first = i
            op.started = True
        if op.terminal_at is not None:
            if not op.polls_resource:
                op.after_terminal.append(i)
        elif op.last is not None and came_early(entries[op.last], e):
            op.early.append((i, op.last))
        if op.latest is not None and not follows(path_query(e.path), op.latest):
            op.self_built.append(i)
        self.by_path.setdefault(path_of(e.path), op)
        op.polls.append(i)
        op.timeline.append(i)
        op.last = i
        self._give(op, e)
        if op.terminal_at is None and op.ends(e) and (e.status is None or e.status not in RETRIABLE):
            op.terminal_at = i
        if e.op_status is not None:
            op.speaks_status = True


def ends(e: Exchange) -> bool:
    """Whether this poll answer reports the end of its operation: a terminal status, or (no status field)
    a 200/201/204 where running was 202."""
    if e.terminal:
        return True
    return e.operation is None and e.op_status is None and e.status in DONE_WITHOUT_STATUS


def came_early(previous: Exchange, e: Exchange) -> bool:
    """Whether ``e`` came before the Retry-After that ``previous`` advertised was over."""
    wait = previous.retry_after
    if wait is None or previous.status is None:
        return False
    gap = e.monotonic - previous.monotonic
    return gap < wait - max(TOLERANCE_SECONDS, TOLERANCE_FRACTION * wait)


def path_query(url: str) -> str:
    """``/path?query`` of a URL or of a path."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def path_of(url: str) -> str:
    return unquote(urlsplit(url).path or "/")


def follows(requested: str, given: str) -> bool:
    """The same path as ``given``, with each of its query parameters (extra ones allowed)."""
    if path_of(requested) != path_of(given):
        return False
    sent = dict(parse_qsl(urlsplit(requested).query, keep_blank_values=True))
    return all(sent.get(k) == v for k, v in parse_qsl(urlsplit(given).query, keep_blank_values=True))


def short(op_id: str) -> str:
    return op_id[:8] + "…" if len(op_id) > 12 else op_id


def show(path: str | None) -> str:
    """A path with UUIDs shortened to their first 8 characters."""
    if path is None:
        return "(none)"
    return _UUID.sub(lambda m: m[0][:8] + "…", path)


# -- recognise: operations as data, for learn --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartFacts:
    """The request that started an operation, and how it was answered."""

    method: str
    path: str
    query: dict[str, str]
    json_keys: tuple[str, ...]
    """Top-level keys of a JSON object body (recordings only; () for a journal)."""
    http_status: int | None
    retry_after: float | None
    form: dict[str, str] = field(default_factory=dict)
    """Fields of an ``application/x-www-form-urlencoded`` body, first values (recordings only), e.g. the
    AWS query protocol's ``Action``."""


@dataclass(frozen=True, slots=True)
class StepFacts:
    """Consecutive polls answered alike: the status reported (None: none, e.g. a 202 without a body), the
    HTTP status code, the Retry-After advertised (seconds, to the millisecond), and how many polls.
    ``seconds``: from the step's first poll to the next step's first poll (a journal's arrival times;
    None for the last step and for a recording, which keeps no times)."""

    status: str | None
    http_status: int | None
    retry_after: float | None
    count: int
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class FinalRoute:
    """The GET that fetched an operation's result after its end. ``via``: ``resource`` (a URL the success
    pointed at, or a scenario's resource rule), ``start-url`` (a PUT/PATCH's own URL)."""

    method: str
    path: str
    http_status: int | None
    via: Literal["resource", "start-url"]
    index: int


@dataclass(frozen=True, slots=True)
class PollFacts:
    """One poll up to the operation's end: its index in ``items``, HTTP status code, the status its body
    reported (None: none, e.g. a 202 without a body, a 503) and whether it ended the operation."""

    index: int
    http_status: int | None
    status: str | None
    ends: bool


Outcome = Literal["succeeded", "failed", "canceled", "done", "unfinished"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One long-running operation as ``recognise`` found it (see the module docstring)."""

    dialect: str
    label: str
    operation_id: str | None
    start: StartFacts | None
    status_url: str | None
    status_template: str | None
    given_by: str | None
    url_form: Literal["absolute", "relative"] | None
    steps: tuple[StepFacts, ...]
    outcome: Outcome
    terminal_status: str | None
    error: Any
    final: FinalRoute | None
    entries: tuple[int, ...]
    polls: tuple[PollFacts, ...] = ()
    after_terminal: tuple[int, ...] = ()
    given: str | None = None
    also_given_by: tuple[str, ...] = ()
    resource_url: str | None = None


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a recording shows beyond an Exchange: for one interaction."""

    given_by: tuple[tuple[str, str], ...] = ()
    """(header name or ``body``, raw value) of each status URL the response gave."""
    body: Any = None
    """The response's JSON body, None when it has none."""
    request_json: Any = None
    request_form: dict[str, str] = field(default_factory=dict)
    resource_urls: tuple[str, ...] = ()
    """Absolute URLs a success pointed at (Location on a 201, resourceLocation, Resource-Location,
    AIP-151 ``response.name`` when it is a URL or path)."""
    result_url: str | None = None
    """A start answer's ``Location`` beside an ``Azure-AsyncOperation`` or ``Operation-Location`` that
    gives another URL: where the client fetches the result after success (azure-core's final-state-via
    rule for a POST), not a status URL."""


def recognise(items: Sequence[Exchange] | Sequence[Interaction]) -> list[Operation]:
    """The long-running operations in a journal or a recording, in the order they began."""
    if items and isinstance(items[0], Interaction):
        exchanges, seen = _from_interactions([i for i in items if isinstance(i, Interaction)])
    else:
        exchanges, seen = [e for e in items if isinstance(e, Exchange)], {}
    timeline = Timeline(exchanges)
    return [_summary(timeline.entries, seen, timeline, op) for op in timeline.ops]


def exchanges_of(interactions: Sequence[Interaction]) -> list[Exchange]:
    """A recording as journal entries (in recording order, one second apart): what ``Timeline`` reads
    (AIP-151 starts with the status URL their first poll used, ``link_named_polls``)."""
    return list(link_named_polls(_from_interactions(interactions)[0]))


def _from_interactions(interactions: Sequence[Interaction]) -> tuple[list[Exchange], dict[int, _Seen]]:
    exchanges: list[Exchange] = []
    seen: dict[int, _Seen] = {}
    for i, interaction in enumerate(interactions):
        request, response = interaction.request, interaction.response
        status = body_status(response)
        facts = response_facts(
            response, request.url, now=_date_of(response), body=status, method=request.method
        )
        body = json_document(response.body)
        exchanges.append(
            Exchange(
                request.method.upper(),
                request.url,
                request.path_and_query,
                response.status,
                "cassette",
                f"#{i + 1}",
                time=float(i),
                monotonic=float(i),
                client_url=request.url,
                retry_after=facts.retry_after,
                status_urls=facts.status_urls,
                polls_resource=facts.polls_resource,
                op_status=facts.op_status,
                terminal=facts.terminal,
                operation_name=facts.operation_name,
            )
        )
        given: list[tuple[str, str]] = []
        result_url = _result_location(response, request.url)
        if facts.polls_resource:  # no status header: the running body's own (``journal.body_status_url``)
            given.append((BODY_URL, status.poll_at) if status.poll_at else (START_URL, request.url))
        elif facts.status_urls:
            for name in ("Azure-AsyncOperation", "Operation-Location", "Location"):
                value = header_value(response.headers, name)
                if value and value.strip() and urljoin(request.url, value.strip()) in facts.status_urls:
                    given.append((name, value.strip()))
        elif isinstance(body, dict) and body.get("done") is False and isinstance(body.get("name"), str):
            given.append(("body", body["name"]))
        seen[i] = _Seen(
            tuple(given),
            body,
            json_document(request.body),
            _form(request),
            _resource_urls(response, body, request.url),
            result_url,
        )
    return exchanges, seen


def _result_location(response: Response, url: str) -> str | None:
    """The absolute ``Location`` of an answer that also gives a status URL in a status header, when the
    two differ (see ``_Seen.result_url``; ``response_facts`` does not count it as a status URL)."""
    location = (header_value(response.headers, "location") or "").strip()
    if not location:
        return None
    absolute = urljoin(url, location)
    headers = [(header_value(response.headers, name) or "").strip() for name in STATUS_URL_HEADERS]
    status = [urljoin(url, h) for h in headers if h]
    return absolute if status and absolute not in status else None


def link_named_polls(entries: Sequence[Exchange]) -> Sequence[Exchange]:
    """AIP-151 gives a running operation's ``name`` in the body, and its clients poll it under their API's
    base (google-api-core: ``GET /v1/{name}``): the first later GET whose path ends with ``/{name}`` polls
    it. That start gets the GET's URL as its status URL, so the walk follows it like a header's. Returns
    ``entries`` itself when no start names its operation this way (a journal, a recording alike)."""
    named = [i for i, e in enumerate(entries) if e.operation_name and not e.status_urls]
    if not named:
        return entries
    linked = list(entries)
    for i in named:
        e = entries[i]
        suffix = "/" + (e.operation_name or "")
        for later in entries[i + 1 :]:
            if later.method in POLL_METHODS and path_of(later.path).rstrip("/").endswith(suffix):
                url = urljoin(later.client_url, path_query(later.path))
                linked[i] = replace(e, status_urls=(url,))
                break
    return linked


def _date_of(response: Response) -> float | None:
    """The response's ``Date`` (POSIX seconds): an HTTP-date Retry-After counts from it, as the client
    that recorded it counted; None without one (then from now)."""
    value = header_value(response.headers, "date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _form(request: Request) -> dict[str, str]:
    """The first value of each field of a form body; {} for any other body."""
    media_type = (header_value(request.headers, "content-type") or "").partition(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded" or not request.body:
        return {}
    fields: dict[str, str] = {}
    for name, value in parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields



def _resource_urls(response: Response, body: Any, url: str) -> tuple[str, ...]:
    found: list[str] = []
    if response.status == 201:
        found.append(header_value(response.headers, "location") or "")
    found.append(header_value(response.headers, "resource-location") or "")
    if isinstance(body, dict):
        for value in (body.get("resourceLocation"), (body.get("response") or {}).get("name")):
            if isinstance(value, str) and (value.startswith("/") or "://" in value):
                found.append(value)
    return tuple(urljoin(url, u.strip()) for u in found if u and u.strip())


def _summary(
    exchanges: Sequence[Exchange], seen: dict[int, _Seen], timeline: Timeline, op: TrackedOperation
) -> Operation:
    start_e = exchanges[op.start] if op.start is not None else None
    tags = [exchanges[i].tag for i in ([op.start] if op.start is not None else []) + op.polls]
    tag = next((t for t in tags if t is not None), None)
    op_id: str | None = None
    if op.start is not None and exchanges[op.start].operation is not None:
        op_id = exchanges[op.start].operation
    start = None
    if start_e is not None:
        query = dict(parse_qsl(urlsplit(start_e.path).query, keep_blank_values=True))
        request_json = seen[op.start].request_json if op.start in seen else None
        start = StartFacts(
            start_e.method,
            path_of(start_e.path),
            query,
            tuple(request_json) if isinstance(request_json, dict) else (),
            start_e.status,
            start_e.retry_after,
            dict(seen[op.start].request_form) if op.start in seen else {},
        )
    status_url = op.given[0] if op.given else (path_query(exchanges[op.polls[0]].path) if op.polls else None)
    given_by: str | None = None
    url_form: Literal["absolute", "relative"] | None = None
    first = op.start if op.start is not None else (op.polls[0] if op.polls else None)
    given: str | None = None
    also: tuple[str, ...] = ()
    if first is not None and first in seen and seen[first].given_by:
        given_by, raw = seen[first].given_by[0]
        url_form = "absolute" if "://" in raw else "relative"
        given = raw
        base = exchanges[first].client_url
        also = tuple(
            name
            for name, value in seen[first].given_by[1:]
            if name != "body" and urljoin(base, value) == urljoin(base, raw)
        )
    elif tag is not None:
        given_by = tag.headers[0] if tag.headers else "body" if tag.dialect == "aip-151" else "start-url"
        url_form = tag.url_form
    elif start_e is not None and start_e.status_urls:
        given_by = "header"
    steps: list[StepFacts] = []
    began: list[float] = []
    end = op.terminal_at
    upto = op.polls[: op.polls.index(end) + 1] if end is not None else op.polls
    polls = tuple(PollFacts(i, exchanges[i].status, exchanges[i].op_status, i == end) for i in upto)
    for i in op.polls:
        e = exchanges[i]
        wait = round(e.retry_after, 3) if e.retry_after is not None else None  # HTTP-dates drift by µs
        key = (e.op_status, e.status, wait)
        if steps and (steps[-1].status, steps[-1].http_status, steps[-1].retry_after) == key:
            steps[-1] = StepFacts(*key, count=steps[-1].count + 1)
        else:
            if steps and not seen:  # a journal: real arrival times
                steps[-1] = replace(steps[-1], seconds=max(0.0, e.monotonic - began[-1]))
            steps.append(StepFacts(*key, count=1))
            began.append(e.monotonic)
        if i == end:
            break
    finished = op.finished(exchanges)
    last = end if end is not None else (op.polls[-1] if finished and op.polls else None)
    terminal_status = exchanges[last].op_status if last is not None else None
    outcome: Outcome = "unfinished"
    if last is not None:
        text = terminal_status or ""
        outcome = (
            "succeeded"
            if is_success(text)
            else "failed"
            if is_failure(text)
            else "canceled"
            if is_cancelled(text)
            else "done"
        )
        code = exchanges[last].status
        if not text and code is not None and code >= 400:
            outcome = "failed"
    error = None
    if last is not None and last in seen and isinstance(seen[last].body, dict):
        error = seen[last].body.get("error")
    if op_id is None and status_url is not None:  # the status URL's last segment, as the walk reads ids
        op_id = unquote(path_of(status_url)).rstrip("/").rsplit("/", 1)[-1] or None
    template = _template(status_url, op_id)
    final = _final(exchanges, seen, timeline, op, last, start_e)
    resource_url = None
    if final is not None and seen:
        fetched = exchanges[final.index].client_url
        resource_url = next((u for u in _targets(seen, op, last) if path_of(u) == final.path), fetched)
    return Operation(
        dialect=tag.dialect if tag is not None else _dialect(exchanges, seen, op, given_by),
        label=op.label,
        operation_id=op_id,
        start=start,
        status_url=status_url,
        status_template=template,
        given_by=given_by,
        url_form=url_form,
        steps=tuple(steps),
        outcome=outcome,
        terminal_status=terminal_status,
        error=error,
        final=final,
        entries=tuple(([op.start] if op.start is not None else []) + op.polls),
        polls=polls if seen else (),
        after_terminal=tuple(op.polls[len(upto) :]) if seen else (),
        given=given,
        also_given_by=also,
        resource_url=resource_url,
    )


def _targets(seen: dict[int, _Seen], op: TrackedOperation, last: int | None) -> list[str]:
    """Absolute URLs where the result of a recorded operation may be fetched: what its last answer
    pointed at, and a Location its start gave beside a status header."""
    urls = list(seen[last].resource_urls) if last is not None and last in seen else []
    if op.start is not None and op.start in seen and seen[op.start].result_url is not None:
        urls.append(seen[op.start].result_url or "")
    return urls


def _template(status_url: str | None, op_id: str | None) -> str | None:
    """The status URL with the path segment that holds the operation id (the last one equal to it, else
    the last segment) as ``{operationId}``; the query is kept."""
    if status_url is None:
        return None
    path, sep, query = status_url.partition("?")
    segments = path.split("/")
    at = max((k for k, seg in enumerate(segments) if op_id and unquote(seg) == op_id), default=None)
    if at is None:
        at = max((k for k, seg in enumerate(segments) if seg), default=None)
    if at is None:
        return status_url
    segments[at] = "{operationId}"
    return "/".join(segments) + sep + query


def _dialect(
    exchanges: Sequence[Exchange], seen: dict[int, _Seen], op: TrackedOperation, given_by: str | None
) -> str:
    """The dialect of ``DIALECTS`` that fits an operation best; ``unknown`` when none fits at all."""
    polls = [exchanges[i] for i in op.polls]
    bodies = [seen[i].body for i in op.polls if i in seen and isinstance(seen[i].body, dict)]
    running = [e.status for e in polls if not ends(e)]
    with_status = any(e.op_status is not None for e in polls)
    best, best_score = "unknown", 0
    for name, d in DIALECTS.items():
        score = 0
        if given_by is not None and given_by.lower() in (h.lower() for h in d.status_headers):
            score += 2
        if given_by == "body" and not d.status_headers:
            score += 2
        if running and all(code == d.running_code for code in running):
            score += 1
        if polls and with_status == (d.status_field is not None):
            score += 1
        if d.marker is not None and any(d.marker in b for b in bodies):
            score += 3
        if score > best_score:
            best, best_score = name, score
    return best


def _final(
    exchanges: Sequence[Exchange],
    seen: dict[int, _Seen],
    timeline: Timeline,
    op: TrackedOperation,
    last: int | None,
    start_e: Exchange | None,
) -> FinalRoute | None:
    """The first GET after the end that fetched the result (see ``FinalRoute``)."""
    if last is None:
        return None
    targets: dict[str, Literal["resource", "start-url"]] = {}
    for url in _targets(seen, op, last):
        targets[path_of(url)] = "resource"
    if start_e is not None and start_e.method in ("PUT", "PATCH"):
        targets.setdefault(path_of(start_e.path), "start-url")
    moment = exchanges[last].monotonic
    for i in timeline.order:
        e = exchanges[i]
        if e.monotonic <= moment or e.method != "GET" or i in op.polls:
            continue
        if e.tag is not None and e.operation in op.ids | ({e.operation} if e.operation else set()):
            if e.tag.role == "resource" and (
                op.start is None or exchanges[op.start].operation == e.operation
            ):
                via: Literal["resource", "start-url"] = (
                    "start-url" if targets.get(path_of(e.path)) == "start-url" else "resource"
                )
                return FinalRoute(e.method, path_of(e.path), e.status, via, i)
        elif path_of(e.path) in targets:
            return FinalRoute(e.method, path_of(e.path), e.status, targets[path_of(e.path)], i)
    return None
