"""The mitmproxy addon: each request is answered by the cassette, forwarded and recorded, or refused.

It also loads on its own: ``mitmdump -s proxy/addon.py --mode reverse:https://host
--set connection_strategy=lazy --set replay_cassette=c.yaml --set replay_record_mode=none``.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from mitmproxy import exceptions, http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import mode_specs

from proxy import (
    cassette,  # not `from cassette import load`: mitmdump -s would take `load` for a hook
    control,
    faults,
    gateway,
    loading,
    mitm_internals,
    request_head,
    settings,
)
from proxy.cassette import Playback
from proxy.diagnostic import (
    closest_rule,
    no_match_response,
    record_failed_response,
    scenario_error_response,
    stopping_response,
    unsafe_response,
)
from proxy.errors import CassetteNotFoundError, ReplayProxyError, ScenarioError
from proxy.journal import BodyStatus, Exchange, Journal, SealedHeaders, body_status, response_facts
from proxy.matching import Matcher
from proxy.model import (
    Interaction,
    Request,
    Response,
    headers_problem,
    origin_of,
    reason_problem,
    set_header,
    without_headers,
)
from proxy.recorder import Recorder
from proxy.redact import DEFAULT_HEADERS, DEFAULT_JSON_FIELDS, DEFAULT_QUERY, Redactor
from proxy.rewrite import rewrite_origins, rewrite_retry_after
from proxy.router import Decision, Forward, NoMatch, RecordMode, Replay, Router, ScenarioFailed, Scripted
from proxy.scenario.answer import Answer

logger = logging.getLogger("proxy")

META = "replay_proxy"
"""flow.metadata key: what answered this flow ("cassette", "no-match", "forward")."""

# Headers that describe the wire encoding of a body rather than the body: never replayed as recorded.
WIRE_HEADERS = ("content-length", "transfer-encoding", "content-encoding")
_WIRE = frozenset(WIRE_HEADERS)

SERVED_CACHE_SIZE = 4096
"""Recorded responses kept in their served form (rewritten, in mitmproxy's terms); then it starts afresh."""

FREEZE_AT = 1000
"""Interactions from which a session's cassette is moved out of the garbage collector's sight (gc.freeze)."""

REFUSAL_CLOSE_DELAY = 0.05
"""Seconds between refusing a request body (413) and closing the client connection."""

H2_PREFACE_START = b"PRI * HTTP/2.0\r\n"
"""How an HTTP/2 connection without TLS begins ("prior knowledge"); no HTTP/1 request can (RFC 9113 3.4)."""


class Session(NamedTuple):
    """Everything one session needs; rebuilt whenever a ``replay_*`` option changes.

    (A NamedTuple, not a dataclass: under ``mitmdump -s`` this module is not in sys.modules.)
    """

    cassette: Path | None
    router: Router
    recorder: Recorder | None
    redactor: Redactor
    origins: frozenset[str]
    primary_origin: str | None
    retry_after: float | None
    served: str
    """What answers, for diagnostics: "cassette c.yaml", "scenarios a.yaml, b.yaml", ..."""
    upstream_timeout: float | None = None
    """Seconds to wait for a forwarded exchange's complete answer (then 504); None: no limit."""


class ReplayAddon:
    """Routes requests (router.py), records forwarded exchanges (recorder.py), journals every exchange."""

    def __init__(self, journal: Journal | None = None, *, annotate_flows: bool = False) -> None:
        self.journal = journal if journal is not None else Journal(listener=_log_exchange)
        self.annotate_flows = annotate_flows
        """Loaded into mitmproxy's own tools (``-s``): each flow's comment says what answered it (mitmweb)."""
        self.session: Session | None = None
        self.save_errors: list[str] = []
        """Why exchanges could not be saved (the cassette's disk or directory); the CLI exits 2 on any."""
        self.stopping = False
        self._served: dict[tuple[int, str | None], _Served] = {}
        """Replayed responses as served, by recorded response and proxy origin: computed once per session."""
        self._served_session: Session | None = None
        self._rolling_back = False
        """configure failed: the next configure is mitmproxy restoring the options of the current session."""
        self.control: control.ControlAPI | None = None
        """Answers requests under ``/__replay-proxy/`` addressed to the proxy (set by ReplayProxy)."""

    # -- options ---------------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        settings.declare_addon_options(loader)  # replay_cassette, replay_record_mode, ... (proxy/settings.py)
        gateway.install()
        request_head.install()

    def configure(self, updated: set[str]) -> None:
        if not any(name.startswith("replay_") for name in updated):
            return
        from mitmproxy import ctx

        if self._rolling_back and self.session is not None:
            # mitmproxy restores the options the session was built from after a failed update and calls
            # configure again: keep that session (its operations, sequences, playback) as it is
            self._rolling_back = False
            return
        try:
            session = _build_session(ctx.options)
        except ReplayProxyError as e:
            self._rolling_back = True
            raise exceptions.OptionsError(str(e)) from e
        self._rolling_back = False
        self._close_session()
        self.session = session
        self.journal.scrub = session.redactor.scrub if session.redactor.enabled else None
        if session.router.playback is not None and len(session.router.playback) >= FREEZE_AT:
            # What a large cassette loaded lives as long as the session: keep it out of the cyclic garbage
            # collector's full passes, which otherwise walk all of it (100k interactions: 300 ms pauses).
            gc.collect()
            gc.freeze()

    def done(self) -> None:
        self.stopping = True  # from now on nothing is forwarded: it could not be saved
        self._close_session()
        faults.release_all()

    def client_disconnected(self, client: Any) -> None:
        faults.client_disconnected(client)

    def next_layer(self, nextlayer: Any) -> None:
        """Serve HTTP/2 without TLS (a client with prior knowledge, e.g. curl --http2-prior-knowledge).

        mitmproxy reads a plain connection as HTTP/1: the preface became a request ``PRI *`` that was
        forwarded and recorded, and the client got no answer. Its HTTP layer speaks HTTP/2 to a client
        whose negotiated protocol is h2, so that is what the preface says; it starts after this hook.
        """
        mitm_internals.speak_h2_without_tls(nextlayer, H2_PREFACE_START)

    def tls_start_client(self, tls_start: Any) -> None:
        """Give HTTP/2 to a TLS client that offers it, whatever its order of preference.

        mitmproxy takes the client's first ALPN choice, and httpx offers http/1.1 before h2: with
        ``http2=True`` it got HTTP/1.1, and with ``http1=False`` it spoke h2 on the http/1.1 it got (its
        preface became a request ``PRI *``). This runs after mitmproxy's TlsConfig built the connection;
        its ALPN callback selects ``client_alpn`` when the client offers it (mitmproxy 11 and 12).
        """
        mitm_internals.prefer_h2(tls_start)

    def server_connect(self, data: Any) -> None:
        """Offline means offline: a session that forwards nothing opens no upstream connection.

        Answers never need one (connection_strategy=lazy); this stops what no request hook sees, e.g. raw
        bytes in a CONNECT tunnel (neither TLS nor HTTP), which mitmproxy would relay to the named host.
        """
        session = self.session
        offline = session is not None and not session.router.may_forward
        if offline and not faults.is_backend(data.server.address):
            data.server.error = "replay-proxy is offline: it opens no upstream connection"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        faults.responseheaders(flow)

    def _close_session(self) -> None:
        if self.session is not None and self.session.recorder is not None:
            try:
                self.session.recorder.close()
            except ReplayProxyError as e:  # the exchanges appended so far stay in the file, valid
                self._save_failed(f"{e} (the exchanges saved before stay in the file)")
        self.session = None

    def _save_failed(self, message: str) -> None:
        """Say it now, on the console even with -q; the CLI repeats it and exits 2 at the end."""
        if message not in self.save_errors:
            self.save_errors.append(message)
            logger.error("replay-proxy: error: %s", message)

    # -- the request path ------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        # -- the control API (proxy/control.py): never matched, forwarded, recorded nor journaled ----------
        if self.control is not None and flow.request.path.startswith(control.PREFIX) and _for_proxy(flow):
            req = flow.request
            asked = Request(req.method, req.url, tuple(req.headers.items(multi=True)), req.raw_content or b"")
            flow.metadata[META] = "control"
            flow.response = _flow_response(self.control.answer(asked))
            return
        # -- end of the control API --------------------------------------------------------------------------
        session = self.session
        if session is None:
            if self.stopping:
                flow.response = _flow_response(stopping_response())
            return
        request = _model_request(flow, session)
        try:
            decision: Decision = session.router.decide(request, _base_url(flow))
        except ScenarioError as e:  # a scenario template failed at render time: say so, never forward
            decision = ScenarioFailed(request, "; ".join(e.problems))
        if isinstance(decision, Scripted):
            answer = decision.answer
            flow.metadata[META] = "scenario"
            if session.retry_after is not None:
                answer = replace(answer, response=rewrite_retry_after(answer.response, session.retry_after))
            detail = answer.source + (f" [fault: {answer.fault}]" if answer.fault else "")
            if answer.delay:
                detail += f" [delay {answer.delay:g} s]"
            status = _fault_status(answer)
            sent = answer.response if status is not None else None
            self._journal(flow, _exchange(flow, status, "scenario", detail, sent, answer))
            await faults.deliver(flow, answer, to_flow_response=_flow_response)
        elif isinstance(decision, Replay):
            played = decision.played
            detail = f"#{played.index + 1}" + (
                ", repeated: the recorded sequence ran out" if played.extra else ""
            )
            flow.metadata[META] = "cassette"
            served = self._served_for(flow, session, played.interaction.response)
            flow.response = served.wire.flow_response()
            sent = served.response
            kind = "cassette"
            if cassette.is_unplayable(played.interaction.response):  # the verdict counts it as unmatched
                kind, detail = "no-match", f"{detail}: the recorded interaction cannot be replayed"
            self._journal(flow, _exchange(flow, sent.status, kind, detail, sent, body=served.body_status))
        elif isinstance(decision, ScenarioFailed):
            flow.metadata[META] = "scenario-error"
            flow.response = _flow_response(scenario_error_response(decision))
            exchange = _exchange(flow, flow.response.status_code, "scenario-error", decision.problem)
            self._journal(flow, exchange)
        elif isinstance(decision, NoMatch):
            flow.metadata[META] = "no-match"
            if session.redactor.enabled:  # the diagnostic shows the request: SDKs print it in CI logs
                shown = replace(decision.request, url=session.redactor.scrub(decision.request.url))
                decision = replace(decision, request=shown)
            source = session.served
            detail = decision.reason
            if decision.nearest:
                index, interaction, diffs = decision.nearest[0]
                closest = interaction.request
                detail += f"; closest #{index + 1} {closest.method} {closest.path_and_query}"
                if diffs:
                    detail += f" ({'; '.join(diffs)})"
            if decision.rules:
                detail += f"; closest rule {closest_rule(decision)}"
            # Not through _outgoing: the diagnostic shows recorded URLs as recorded.
            flow.response = _flow_response(no_match_response(decision, source))
            self._journal(flow, _exchange(flow, flow.response.status_code, "no-match", detail))
        else:
            assert isinstance(decision, Forward)
            failure = session.recorder.failure if session.recorder is not None else None
            if failure is not None:  # the cassette cannot take it: do not make the upstream act on it
                flow.response = _flow_response(record_failed_response(failure))
                detail = f"not forwarded, recording failed: {failure}"
                self._journal(flow, _exchange(flow, flow.response.status_code, "refused", detail))
                return
            flow.metadata[META] = "forward"
            _aim_at_upstream(flow)
            gateway.watch(flow, session.upstream_timeout)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and _wants_close(flow) and "connection" not in flow.response.headers:
            # mitmproxy closes the connection but does not say so; a client that asked for it must be told
            flow.response.headers["Connection"] = "close"
        if flow.request.method == "HEAD" and flow.response is not None and flow.response.raw_content:
            # mitmproxy sends the body of a synthesized answer even to HEAD: the client reads it as the next
            # response on the connection
            flow.response.raw_content = b""
        gateway.settle(flow)
        session = self.session
        if flow.metadata.get(META) != "forward" or flow.response is None:
            return
        if session is None:  # answered after the stop began: it can no longer be saved
            if self.stopping:
                flow.response = _flow_response(stopping_response())
            return
        request = _model_request(flow, session)
        response = _model_response(flow)
        detail = ""
        if session.recorder is not None:
            try:
                number = session.recorder.record(Interaction(request, response))
            except ReplayProxyError as e:  # never a silent loss: the client and the console are told
                self._save_failed(str(e))
                flow.response = _flow_response(record_failed_response(str(e)))
                detail = f"NOT SAVED: {e}"
                self._journal(flow, _exchange(flow, flow.response.status_code, "upstream", detail))
                return
            playback = session.router.playback
            if playback is not None:
                playback.add(Interaction(session.redactor.for_matching(request), response), played=True)
            detail = f"recorded as #{number}"
        served = self._outgoing(flow, session, response)
        if served is not response:
            flow.response = _flow_response(served)
        self._journal(flow, _exchange(flow, served.status, "upstream", detail, served))

    def error(self, flow: http.HTTPFlow) -> None:
        gateway.settle(flow)
        if flow.error is None:
            return
        if META not in flow.metadata and "body_size_limit" in flow.error.msg:
            # mitmproxy answered 413 to a request body over --max-body-size before our request hook ran
            self._journal(flow, _exchange(flow, 413, "refused", "request body larger than --max-body-size"))
            # mitmproxy 12 says "Connection: close" on its 413 but neither closes nor reads on: a client that
            # sends its whole body before reading (requests, http.client) would wait for its own timeout.
            # The 413 is written after this hook; closing a moment later lets it out first.
            faults.close_client_later(flow, REFUSAL_CLOSE_DELAY)
            return
        if flow.metadata.get(META) != "forward":
            return
        detail = flow.error.msg.removeprefix("replay-proxy: ")  # the journal's line says who speaks
        self._journal(flow, _exchange(flow, gateway.status(flow), "error", detail))

    # -- helpers ---------------------------------------------------------------------------------------

    def _journal(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        self.journal.add(exchange)
        if self.annotate_flows:
            flow.comment = f"replay-proxy: {exchange.answered_by()}"

    def _served_for(self, flow: http.HTTPFlow, session: Session, recorded: Response) -> _Served:
        """``recorded`` as this client gets it (``_outgoing``), cached: the same every time it is replayed."""
        if session is not self._served_session or len(self._served) >= SERVED_CACHE_SIZE:
            self._served = {}
            self._served_session = session
        reverse = isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
        key = (id(recorded), _proxy_origin(flow) if reverse else None)
        served = self._served.get(key)
        if served is None or served.recorded is not recorded:
            response = self._outgoing(flow, session, recorded)
            served = _Served(recorded, response, _Wire.of(response), body_status(response))
            self._served[key] = served
        return served

    def _outgoing(self, flow: http.HTTPFlow, session: Session, response: Response) -> Response:
        """The response as the client gets it: upstream URLs point at the proxy, Retry-After shortened."""
        if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode) and session.origins:
            response = rewrite_origins(response, session.origins, _proxy_origin(flow))
        if session.retry_after is not None:
            response = rewrite_retry_after(response, session.retry_after)
        return response


def _build_session(options: Any) -> Session:
    """Parse the ``replay_*`` options into a ready session (loads the cassette, opens the recorder)."""
    given = settings.from_addon_options(options)  # each replay_* option parsed and checked
    record_mode = RecordMode(given.record_mode or RecordMode.NONE.value)
    retry_after = given.retry_after
    upstream_timeout = given.upstream_timeout or None
    matcher = Matcher(
        given.match_on, given.match_headers, given.filter_query_parameters, given.filter_headers
    )
    redactor = Redactor(
        headers=(*DEFAULT_HEADERS, *given.redact_headers),
        query=(*DEFAULT_QUERY, *given.redact_query),
        json_fields=(*DEFAULT_JSON_FIELDS, *given.redact_json),
        enabled=given.redact,
        keep=given.redact_except,
    )
    path = given.cassette
    loaded: list[Interaction] = []
    extra: dict[str, Any] = {}
    if path is not None and record_mode is not RecordMode.REWRITE:
        try:
            read = cassette.read(path, _body_limit(options))
            loaded, extra = read.interactions, read.extra
        except CassetteNotFoundError:
            if record_mode is RecordMode.NONE:
                raise
    playback = (
        _indexed(path, loaded, matcher, redactor, given.when_exhausted)
        if loaded or (path is not None and record_mode is RecordMode.NEW_EPISODES)
        else None
    )
    scenarios = None
    if given.scenarios:
        from proxy.scenario.loader import load_scenarios
        from proxy.scenario.machine import ScenarioMachine

        scenarios = ScenarioMachine(load_scenarios([Path(p) for p in given.scenarios]), clock=given.clock)
    router = Router(
        playback,
        record_mode,
        cassette_existed=bool(loaded),
        redactor=redactor,
        scenarios=scenarios,
        passthrough=given.passthrough,
    )
    records = record_mode is not RecordMode.NONE and not (record_mode is RecordMode.ONCE and loaded)
    recorder = (
        Recorder(
            path, loaded=loaded, record_mode=record_mode, matcher=matcher, redactor=redactor, extra=extra
        )
        if records and path is not None
        else None
    )
    origins = {origin_of(i.request.url) for i in loaded}
    upstream = given.upstream
    if upstream:
        origins.add(origin_of(upstream))
    primary = origin_of(upstream) if upstream else (origin_of(loaded[0].request.url) if loaded else None)
    parts = []
    if given.scenarios:
        parts.append("scenarios " + ", ".join(given.scenarios))
    if path is not None and loaded:
        parts.append(f"cassette {path}")
    served = "; ".join(parts) or "nothing"
    return Session(
        path,
        router,
        recorder,
        redactor,
        frozenset(origins),
        primary,
        retry_after,
        served or "nothing",
        upstream_timeout,
    )


def _indexed(
    path: Path | None, loaded: list[Interaction], matcher: Matcher, redactor: Redactor, when_exhausted: str
) -> Playback:
    """The loaded interactions indexed for matching (seconds for 100,000: shown as start-up progress)."""
    size = path.stat().st_size if path is not None and path.exists() else 0
    with loading.tracking(path or Path(), size, f"indexing {len(loaded):,} interactions"):
        return Playback(
            [Interaction(redactor.for_matching(i.request), i.response, i.raw) for i in loaded],
            matcher,
            when_exhausted,
        )


def _body_limit(options: Any) -> int | None:
    """What a cassette's compressed body may decode to: mitmproxy's ``body_size_limit``
    (``--max-body-size``), else ``cassette.DECODED_BODY_LIMIT``; ``0``: no limit."""
    value = getattr(options, "body_size_limit", None)
    if value is None:
        return cassette.DECODED_BODY_LIMIT
    from mitmproxy.utils import human

    return human.parse_size(value) or None


def _model_request(flow: http.HTTPFlow, session: Session) -> Request:
    """The flow's request with an absolute URL: in reverse mode, on the recorded (or upstream) origin."""
    req = flow.request
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        # No recorded or upstream origin (play alone): the URL as the client sent it, on the proxy.
        url = (session.primary_origin or _proxy_origin(flow)) + req.path
    else:
        url = req.url
    headers = tuple(req.headers.items(multi=True))
    return Request(req.method, url, headers, req.raw_content or b"")


def _model_response(flow: http.HTTPFlow) -> Response:
    """The upstream's response, body decoded, wire headers fixed so the cassette replays anywhere."""
    resp = flow.response
    assert resp is not None
    body = resp.get_content(strict=False) or b""
    decoded = resp.raw_content is not None and body != resp.raw_content
    drop = ["transfer-encoding"] + (["content-encoding"] if decoded else [])
    headers = without_headers(tuple(resp.headers.items(multi=True)), drop)
    if flow.request.method != "HEAD" and resp.status_code not in (204, 304):
        headers = set_header(headers, "Content-Length", str(len(body)))
    return Response(resp.status_code, resp.reason, headers, body)


def _flow_response(response: Response) -> http.Response:
    """A mitmproxy response for ``response``: recorded headers, fresh Content-Length."""
    return _Wire.of(response).flow_response()


class _Wire(NamedTuple):
    """A response in mitmproxy's terms, ready to become a fresh ``http.Response`` for each flow."""

    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @classmethod
    def of(cls, response: Response) -> _Wire:
        """The recorded headers minus the wire ones, then ``content-length`` last (as ``Response.make``
        sets it); the recorded reason, else the standard one. The last guard: an answer with a header
        that would write others (CR/LF) or a name that is no header is replaced by a 500 saying so."""
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
        # Response.make's reason, then the recorded one as the ``reason`` setter encodes it
        reason = response.reason or status_codes.RESPONSES.get(response.status, "")
        return cls(response.status, reason.encode("iso-8859-1"), tuple(fields), response.body)

    def flow_response(self) -> http.Response:
        """What ``http.Response.make`` builds, without re-reading the headers to set the body."""
        now = time.time()
        headers = http.Headers(self.fields)
        return http.Response(b"HTTP/1.1", self.status, self.reason, headers, self.body, None, now, now)


class _Served(NamedTuple):
    """A recorded response as served: rewritten for this client, in mitmproxy's terms, its JSON status."""

    recorded: Response
    response: Response
    wire: _Wire
    body_status: BodyStatus


def _base_url(flow: http.HTTPFlow) -> str:
    """Where the client thinks it talks to: the proxy in reverse mode, the real origin as a forward proxy."""
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        return _proxy_origin(flow)
    return origin_of(flow.request.url)


def _aim_at_upstream(flow: http.HTTPFlow) -> None:
    """In reverse mode, forward to the session's upstream even when the listener was set up for another.

    (ReplayProxy.use() switches the upstream of a running proxy without touching its listeners.)
    """
    from mitmproxy import ctx

    upstream = ctx.options.replay_upstream
    if not upstream or not isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        return
    parts = urlsplit(upstream)
    if parts.hostname is None:
        return
    request = flow.request
    request.scheme = parts.scheme
    request.port = parts.port or (443 if parts.scheme == "https" else 80)
    request.host = parts.hostname  # last: updates the Host header from scheme, host and port


def _for_proxy(flow: http.HTTPFlow) -> bool:
    """The request is addressed to the proxy itself: any request in reverse mode; as a forward proxy, one
    for the proxy's own address and port (``curl -x PROXY PROXY/__replay-proxy/...``, or sent to it
    directly)."""
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        return True
    host, port = flow.client_conn.sockname[:2]
    asked = flow.request.host.strip("[]").lower()
    return flow.request.port == port and asked in (host.lower(), "localhost", "127.0.0.1", "::1")


def _wants_close(flow: http.HTTPFlow) -> bool:
    """The request said ``Connection: close`` (read from the raw fields: ``headers.get`` costs more)."""
    return any(k.lower() == b"connection" and b"close" in v.lower() for k, v in flow.request.headers.fields)


def _fault_status(answer: Answer) -> int | None:
    """The status the client gets, or None when a fault means it gets no response at all."""
    if answer.fault in ("reset", "close", "hang"):
        return None
    return answer.response.status


def _proxy_origin(flow: http.HTTPFlow) -> str:
    """The proxy's own origin as this client reached it."""
    host, port = flow.client_conn.sockname[:2]
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if flow.client_conn.tls_established else "http"
    return f"{scheme}://{host}:{port}"


def _exchange(
    flow: http.HTTPFlow,
    status: int | None,
    source: str,
    detail: str,
    sent: Response | None = None,
    answer: Answer | None = None,
    *,
    body: BodyStatus | None = None,
) -> Exchange:
    """The journal entry: timed at the request's arrival; ``sent`` is the response as the client gets it
    (``body``: its ``journal.body_status`` when already known)."""
    req = flow.request
    wall_now, mono_now = time.time(), time.monotonic()
    arrived = req.timestamp_start or wall_now
    monotonic = mono_now - max(0.0, wall_now - arrived)
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        client_url = _proxy_origin(flow) + req.path
    else:
        client_url = req.url
    facts = response_facts(sent, client_url, now=wall_now, body=body) if sent is not None else None
    op_status, terminal = (facts.op_status, facts.terminal) if facts is not None else (None, False)
    if answer is not None and answer.operation is not None:
        op_status, terminal = answer.status, answer.terminal
    return Exchange(
        req.method,
        req.url,
        req.path,
        status,
        source,
        detail,
        time=arrived,
        monotonic=monotonic,
        client_url=client_url,
        retry_after=facts.retry_after if facts is not None else None,
        status_urls=facts.status_urls if facts is not None else (),
        operation=answer.operation if answer is not None else None,
        poll=answer.poll if answer is not None else None,
        tag=answer.tag if answer is not None else None,
        op_status=op_status,
        terminal=terminal,
        request_headers=SealedHeaders(req.headers.fields),
        body_size=len(req.raw_content) if req.raw_content is not None else None,
    )


def _log_exchange(exchange: Exchange) -> None:
    if logger.isEnabledFor(logging.INFO):  # -q: the line is not even built
        logger.info(exchange.line())


def console_journal(max_entries: int) -> Journal:
    """A journal that prints each exchange's console line and keeps only the last ``max_entries``."""
    return Journal(listener=_log_exchange, max_entries=max_entries)


addons = [ReplayAddon(annotate_flows=True)]
