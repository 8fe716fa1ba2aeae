"""The decision a request gets, engine-neutral: the answer to send, how (the fault plan), the journal entry.

Both engines are thin adapters over this module: the mitmproxy addon (proxy/addon.py) turns a flow into
a ``model.Request`` and an ``Arrival``, calls ``Handler.handle`` and turns the ``Outcome`` back into a flow
response (proxy/faults.py carries out its plan); the lean engine (proxy/lean.py) does the same on a plain
asyncio transport. Forwarded exchanges (mitmproxy only) are recorded and journaled by
``Handler.forwarded``. No mitmproxy here (tests/test_import_graph.py checks it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol, TypedDict, Unpack

from proxy import cassette, fault_plan
from proxy.diagnostic import (
    closest_rule,
    no_match_response,
    record_failed_response,
    scenario_error_response,
    unsafe_response,
)
from proxy.errors import ReplayProxyError, ScenarioError
from proxy.fault_plan import FaultPlan
from proxy.journal import BodyStatus, Exchange, ResponseFacts, body_status, fixed_facts, response_facts
from proxy.model import Headers, Interaction, Request, Response, headers_problem, reason_problem
from proxy.recorder import Recorder
from proxy.redact import Redactor
from proxy.rewrite import rewrite_origins, rewrite_retry_after
from proxy.router import Decision, Forward, NoMatch, Replay, Router, ScenarioFailed, Scripted
from proxy.scenario.answer import Answer

logger = logging.getLogger("proxy")

# Headers that describe the wire encoding of a body rather than the body: never replayed as recorded.
WIRE_HEADERS = ("content-length", "transfer-encoding", "content-encoding")
_WIRE = frozenset(WIRE_HEADERS)

SERVED_CACHE_SIZE = 4096
"""Recorded responses kept in their served form (rewritten, wire-ready); then the cache starts afresh."""


class Session(Protocol):
    """What the handler reads of a session (``session.Session`` is one)."""

    @property
    def router(self) -> Router: ...
    @property
    def recorder(self) -> Recorder | None: ...
    @property
    def redactor(self) -> Redactor: ...
    @property
    def origins(self) -> frozenset[str]: ...
    @property
    def primary_origin(self) -> str | None: ...
    @property
    def retry_after(self) -> float | None: ...
    @property
    def served(self) -> str: ...
    @property
    def cassette_path(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Arrival:
    """A request as its engine received it, beyond ``model.Request``: for the rewrite and the journal.

    ``url`` is the engine's view of the URL (the journal's ``url``); ``path`` the path and query as sent;
    ``client_url`` the whole URL as the client used it; ``base_url`` where the client thinks it talks to
    (the proxy in reverse mode, the real origin as a forward proxy); ``proxy_origin`` the proxy's origin
    in reverse mode (recorded URLs are rewritten to it), None as a forward proxy; ``time`` the wall
    clock when the request arrived.
    """

    url: str
    path: str
    client_url: str
    base_url: str
    proxy_origin: str | None
    time: float


class Wire(NamedTuple):
    """A response as it goes on the wire: status, reason, header fields as bytes (the recorded ones minus
    the wire ones, ``content-length`` last, as mitmproxy's ``Response.make`` sets it), body."""

    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @classmethod
    def of(cls, response: Response, reasons: Mapping[int, str]) -> Wire:
        """The recorded reason, else the standard one from ``reasons``. The last guard: an answer with a
        header that would write others (CR/LF) or a name that is no header is replaced by a 500 saying
        so."""
        problem = headers_problem(response.headers) or reason_problem(response.reason or "")
        if problem is not None:
            logger.error("replay-proxy: error: refused to send an answer: %s", problem)
            response = unsafe_response(problem)
        fields = [
            (k.encode(), v.encode("utf-8", "surrogateescape"))
            for k, v in response.headers
            if k.lower() not in _WIRE
        ]
        fields.append((b"content-length", str(len(response.body)).encode()))
        reason = response.reason or reasons.get(response.status, "")
        return cls(response.status, reason.encode("iso-8859-1"), tuple(fields), response.body)


class Served(NamedTuple):
    """A recorded response as served: rewritten for this client, wire-ready, its JSON status, and its
    journal facts when they are the same for every request (``journal.fixed_facts``)."""

    recorded: Response
    response: Response
    wire: Wire
    body_status: BodyStatus
    facts: ResponseFacts | None


class Known(TypedDict, total=False):
    """What the caller of ``exchange_for`` knows already: ``body``, the response's ``body_status``;
    ``facts``, its ``fixed_facts``; ``cassette`` and ``interaction``, the recorded interaction that
    answered."""

    body: BodyStatus | None
    facts: ResponseFacts | None
    cassette: str | None
    interaction: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a request gets. ``kind`` says what answered (``scenario``, ``cassette``, ``no-match``,
    ``scenario-error``, ``refused``, ``forward``); ``wire`` is the response to send (None: forward it);
    ``plan`` how (None: at once, in one piece); ``exchange`` the journal entry (None when forwarded: the
    entry is written when the upstream answers, ``Handler.forwarded``)."""

    kind: str
    wire: Wire | None
    plan: FaultPlan | None = None
    exchange: Exchange | None = None


class Handler:
    """Turns requests into outcomes for one engine; keeps replayed responses in their served form."""

    def __init__(
        self, reasons: Mapping[int, str], journal_headers: Callable[[Headers], Headers] | None = None
    ) -> None:
        self.reasons = reasons
        """Standard reason phrases by status: the engine's own table (mitmproxy's, in both engines)."""
        self.journal_headers = journal_headers
        """A request's headers as its journal entry keeps them (redacted: ``Journal.request_headers``)."""
        self._served: dict[tuple[int, str | None], Served] = {}
        self._served_session: Session | None = None

    def wire(self, response: Response) -> Wire:
        return Wire.of(response, self.reasons)

    def entry(
        self,
        request: Request,
        arrival: Arrival,
        status: int | None,
        source: str,
        detail: str,
        sent: Response | None = None,
        answer: Answer | None = None,
        **known: Unpack[Known],
    ) -> Exchange:
        """``exchange_for`` with the request's headers as the journal keeps them (``journal_headers``)."""
        return exchange_for(
            request, arrival, status, source, detail, sent, answer, headers=self.journal_headers, **known
        )

    def handle(self, session: Session, request: Request, arrival: Arrival) -> Outcome:
        """The outcome of ``request`` in ``session`` (routes it: scenario state and playback advance)."""
        try:
            decision: Decision = session.router.decide(request, arrival.base_url)
        except ScenarioError as e:  # a scenario template failed at render time: say so, never forward
            decision = ScenarioFailed(request, "; ".join(e.problems))
        if isinstance(decision, Scripted):
            return self._scripted(session, request, arrival, decision.answer)
        if isinstance(decision, Replay):
            played = decision.played
            detail = f"#{played.index + 1}" + (
                ", repeated: the recorded sequence ran out" if played.extra else ""
            )
            served = self._served_for(session, arrival.proxy_origin, played.interaction.response)
            sent = served.response
            kind = "cassette"
            if cassette.is_unplayable(played.interaction.response):  # the verdict counts it as unmatched
                kind, detail = "no-match", f"{detail}: the recorded interaction cannot be replayed"
            exchange = self.entry(
                request,
                arrival,
                sent.status,
                kind,
                detail,
                sent,
                body=served.body_status,
                facts=served.facts,
                cassette=session.cassette_path,
                interaction=played.index,
            )
            return Outcome("cassette", served.wire, None, exchange)
        if isinstance(decision, ScenarioFailed):
            wire = self.wire(scenario_error_response(decision))
            exchange = self.entry(request, arrival, wire.status, "scenario-error", decision.problem)
            return Outcome("scenario-error", wire, None, exchange)
        if isinstance(decision, NoMatch):
            return self._no_match(session, request, arrival, decision)
        assert isinstance(decision, Forward)
        failure = session.recorder.failure if session.recorder is not None else None
        if failure is not None:  # the cassette cannot take it: do not make the upstream act on it
            wire = self.wire(record_failed_response(failure))
            detail = f"not forwarded, recording failed: {failure}"
            return Outcome(
                "refused", wire, None, self.entry(request, arrival, wire.status, "refused", detail)
            )
        return Outcome("forward", None)

    def _scripted(self, session: Session, request: Request, arrival: Arrival, answer: Answer) -> Outcome:
        served = self._served_for(session, None, answer.response)
        detail = answer.source + (f" [fault: {answer.fault}]" if answer.fault else "")
        if answer.delay:
            detail += f" [delay {answer.delay:g} s]"
        status = fault_plan.status_sent(answer)
        sent = served.response if status is not None else None
        body, facts = served.body_status, served.facts
        exchange = self.entry(
            request, arrival, status, "scenario", detail, sent, answer, body=body, facts=facts
        )
        if answer.fault is None and not answer.delay and answer.dribble is None:  # most answers
            return Outcome("scenario", served.wire, None, exchange)
        plan = fault_plan.plan(answer, served.wire.body)
        return Outcome("scenario", served.wire, None if plan.immediate else plan, exchange)

    def _no_match(self, session: Session, request: Request, arrival: Arrival, decision: NoMatch) -> Outcome:
        if session.redactor.enabled:  # the diagnostic shows the request: SDKs print it in CI logs
            shown = replace(decision.request, url=session.redactor.scrub(decision.request.url))
            decision = replace(decision, request=shown)
        detail = decision.reason
        if decision.nearest:
            index, interaction, diffs = decision.nearest[0]
            closest = interaction.request
            detail += f"; closest #{index + 1} {closest.method} {closest.path_and_query}"
            if diffs:
                detail += f" ({'; '.join(diffs)})"
        if decision.rules:
            detail += f"; closest rule {closest_rule(decision)}"
        # Not rewritten (``outgoing``): the diagnostic shows recorded URLs as recorded.
        wire = self.wire(no_match_response(decision, session.served))
        return Outcome(
            "no-match", wire, None, self.entry(request, arrival, wire.status, "no-match", detail)
        )

    def _served_for(self, session: Session, proxy_origin: str | None, response: Response) -> Served:
        """``response`` as this client gets it (``outgoing``), cached: the same every time it is served (a
        recorded one; a scripted one too: the scenario machine answers a stage's polls with one Response).
        ``proxy_origin`` None: URLs are left as they are (scripted answers)."""
        if session is not self._served_session or len(self._served) >= SERVED_CACHE_SIZE:
            self._served = {}
            self._served_session = session
        key = (id(response), proxy_origin)
        served = self._served.get(key)
        if served is None or served.recorded is not response:
            sent = outgoing(session, proxy_origin, response)
            status = body_status(sent)
            served = Served(response, sent, self.wire(sent), status, fixed_facts(sent, status))
            self._served[key] = served
        return served

    def forwarded(
        self, session: Session, request: Request, response: Response, arrival: Arrival
    ) -> tuple[Response | None, Exchange, str | None]:
        """Record (when recording) and journal a forwarded exchange whose upstream answered ``response``.

        Returns the response for the client when it differs from the upstream's (rewritten, or the
        diagnostic when saving failed), None when the upstream's goes as it is; the journal entry; and
        the save error, if any (the caller reports it and exits 2 at the end).
        """
        detail = ""
        if session.recorder is not None:
            try:
                number = session.recorder.record(Interaction(request, response))
            except ReplayProxyError as e:  # never a silent loss: the client and the console are told
                failed = record_failed_response(str(e))
                exchange = self.entry(request, arrival, failed.status, "upstream", f"NOT SAVED: {e}")
                return failed, exchange, str(e)
            playback = session.router.playback
            if playback is not None:
                playback.add(Interaction(session.redactor.for_matching(request), response), played=True)
            detail = f"recorded as #{number}"
        served = outgoing(session, arrival.proxy_origin, response)
        exchange = self.entry(request, arrival, served.status, "upstream", detail, served)
        return (served if served is not response else None), exchange, None


def request_url(session: Session, proxy_origin: str, path: str) -> str:
    """A reverse-mode request's absolute URL: on the recorded (or upstream) origin, else on the proxy
    (play alone: the URL as the client sent it)."""
    return (session.primary_origin or proxy_origin) + path


def outgoing(session: Session, proxy_origin: str | None, response: Response) -> Response:
    """The response as the client gets it: upstream URLs point at the proxy (``proxy_origin``, as the
    client reached it), Retry-After shortened."""
    if proxy_origin is not None and session.origins:
        response = rewrite_origins(response, session.origins, proxy_origin)
    if session.retry_after is not None:
        response = rewrite_retry_after(response, session.retry_after)
    return response


def exchange_for(
    request: Request,
    arrival: Arrival,
    status: int | None,
    source: str,
    detail: str,
    sent: Response | None = None,
    answer: Answer | None = None,
    *,
    body: BodyStatus | None = None,
    facts: ResponseFacts | None = None,
    cassette: str | None = None,
    interaction: int | None = None,
    headers: Callable[[Headers], Headers] | None = None,
) -> Exchange:
    """The journal entry: timed at the request's arrival; ``sent`` is the response as the client gets it
    (``body``: its ``journal.body_status``, ``facts``: its ``journal.fixed_facts``, when already known);
    ``cassette``/``interaction`` the recorded interaction that answered; ``headers`` makes the request's
    headers the entry's (redacted)."""
    wall_now, mono_now = time.time(), time.monotonic()
    monotonic = mono_now - max(0.0, wall_now - arrival.time)
    client_url = arrival.client_url
    if facts is None and sent is not None:
        facts = response_facts(sent, client_url, now=wall_now, body=body, method=request.method)
    elif sent is None:
        facts = None
    op_status, terminal = (facts.op_status, facts.terminal) if facts is not None else (None, False)
    if answer is not None and answer.operation is not None:
        op_status, terminal = answer.status, answer.terminal
    return Exchange(
        request.method,
        arrival.url,
        arrival.path,
        status,
        source,
        detail,
        time=arrival.time,
        monotonic=monotonic,
        client_url=client_url,
        retry_after=facts.retry_after if facts is not None else None,
        status_urls=facts.status_urls if facts is not None else (),
        polls_resource=facts.polls_resource if facts is not None else False,
        operation=answer.operation if answer is not None else None,
        poll=answer.poll if answer is not None else None,
        tag=answer.tag if answer is not None else None,
        op_status=op_status,
        terminal=terminal,
        request_headers=headers(request.headers) if headers is not None else request.headers,
        request_body_size=len(request.body),
        cassette=cassette,
        interaction=interaction,
        virtual=answer.virtual if answer is not None else None,
        operation_name=facts.operation_name if facts is not None else None,
    )
