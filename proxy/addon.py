"""The mitmproxy addon: each request is answered by the cassette, forwarded and recorded, or refused.

It also loads on its own: ``mitmdump -s proxy/addon.py --mode reverse:https://host
--set connection_strategy=lazy --set replay_cassette=c.yaml --set replay_record_mode=none``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
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
from proxy.diagnostic import stopping_response
from proxy.errors import CassetteNotFoundError, ConfigError, ReplayProxyError
from proxy.handler import WIRE_HEADERS, Arrival, Handler, Wire, request_url
from proxy.journal import Exchange, Journal, JournalFile, iso_time
from proxy.matching import Matcher
from proxy.model import Interaction, Request, Response, origin_of, set_header, without_headers
from proxy.recorder import Recorder
from proxy.redact import DEFAULT_HEADERS, DEFAULT_JSON_FIELDS, DEFAULT_QUERY, Redactor
from proxy.router import RecordMode, Router
from proxy.unused import CassetteUse, Usage

logger = logging.getLogger("proxy")

JOURNAL_OPTION = "replay_journal_file"
"""``--journal FILE`` (proxy/settings.py's ``journal_file``): the file, not the session, changes with it."""

__all__ = ["WIRE_HEADERS", "ReplayAddon", "Session", "console_journal"]

META = "replay_proxy"
"""flow.metadata key: what answered this flow ("cassette", "no-match", "forward")."""

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
    loaded: int = 0
    """How many interactions the cassette held when the session began (more are appended when recording)."""
    cassette_path: str | None = None
    """The cassette's absolute path, as the journal names it."""


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
        self._rolling_back = False
        """configure failed: the next configure is mitmproxy restoring the options of the current session."""
        self.control: control.ControlAPI | None = None
        """Answers requests under ``/__replay-proxy/`` addressed to the proxy (set by ReplayProxy)."""
        self.usage = Usage()
        """Which interactions of each cassette loaded for replay were played (``unused()``)."""
        self.handler = Handler(status_codes.RESPONSES, lambda headers: self.journal.request_headers(headers))
        """The engine-neutral core: each request's outcome (proxy/handler.py)."""

    # -- options ---------------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        settings.declare_addon_options(loader)  # replay_cassette, replay_record_mode, ... (proxy/settings.py)
        gateway.install()
        request_head.install()

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        if JOURNAL_OPTION in updated:
            try:
                self._open_journal_file(getattr(ctx.options, JOURNAL_OPTION))
            except ReplayProxyError as e:
                raise exceptions.OptionsError(str(e)) from e
        if not any(name.startswith("replay_") and name != JOURNAL_OPTION for name in updated):
            return
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
        self.journal.redact_headers = session.redactor.headers if session.redactor.enabled else None
        playback = session.router.playback
        if self.journal.file is not None and session.cassette is not None and playback is not None:
            self.journal.file.write(
                {
                    "event": "load",
                    "time": iso_time(now := time.time()),
                    "epoch": round(now, 6),
                    "cassette": session.cassette_path,
                    "interactions": len(playback),
                    "record_mode": session.router.record_mode.value,
                }
            )
        if session.router.playback is not None and len(session.router.playback) >= FREEZE_AT:
            # What a large cassette loaded lives as long as the session: keep it out of the cyclic garbage
            # collector's full passes, which otherwise walk all of it (100k interactions: 300 ms pauses).
            gc.collect()
            gc.freeze()

    def done(self) -> None:
        self.stopping = True  # from now on nothing is forwarded: it could not be saved
        self._close_session()
        faults.release_all()
        self._open_journal_file(None)

    def _open_journal_file(self, path: str | None) -> None:
        """Write the journal to ``path`` from now on (appended to), or to no file (None)."""
        current = self.journal.file
        if current is not None and path == current.path:
            return
        self.journal.file = JournalFile(path) if path else None
        if current is not None:
            current.close()

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

    def unused(self) -> list[CassetteUse]:
        """Each cassette loaded for replay so far (this session included) and what of it was played."""
        if self.session is not None:
            self._count_plays(self.session)
        return self.usage.uses()

    def _count_plays(self, session: Session) -> None:
        playback = session.router.playback
        replays = session.router.record_mode in (RecordMode.NONE, RecordMode.ONCE, RecordMode.NEW_EPISODES)
        if session.cassette_path is None or playback is None or not session.loaded or not replays:
            return
        counts = playback.play_counts[: session.loaded]
        self.usage.add(
            session.cassette_path,
            session.loaded,
            lambda: [f"{i.request.method} {i.request.url}" for i in playback.interactions[: session.loaded]],
            (n for n, count in enumerate(counts) if count),
        )

    def _close_session(self) -> None:
        if self.session is not None:
            self._count_plays(self.session)
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
        outcome = self.handler.handle(session, _model_request(flow, session), _arrival(flow))
        flow.metadata[META] = outcome.kind
        if outcome.exchange is not None:
            self._journal(flow, outcome.exchange)
        if outcome.wire is None:  # forward
            _aim_at_upstream(flow)
            gateway.watch(flow, session.upstream_timeout)
        elif outcome.plan is None:
            flow.response = _to_flow(outcome.wire)
        else:
            await faults.deliver(flow, _to_flow(outcome.wire), outcome.plan)

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
        sent, exchange, save_error = self.handler.forwarded(
            session, _model_request(flow, session), _model_response(flow), _arrival(flow)
        )
        if save_error is not None:
            self._save_failed(save_error)
        if sent is not None:
            flow.response = _flow_response(sent)
        self._journal(flow, exchange)

    def error(self, flow: http.HTTPFlow) -> None:
        gateway.settle(flow)
        if flow.error is None:
            return
        if META not in flow.metadata and "body_size_limit" in flow.error.msg:
            # mitmproxy answered 413 to a request body over --max-body-size before our request hook ran
            refused = self._exchange(flow, 413, "refused", "request body larger than --max-body-size")
            self._journal(flow, refused)
            # mitmproxy 12 says "Connection: close" on its 413 but neither closes nor reads on: a client that
            # sends its whole body before reading (requests, http.client) would wait for its own timeout.
            # The 413 is written after this hook; closing a moment later lets it out first.
            faults.close_client_later(flow, REFUSAL_CLOSE_DELAY)
            return
        if flow.metadata.get(META) != "forward":
            return
        detail = flow.error.msg.removeprefix("replay-proxy: ")  # the journal's line says who speaks
        self._journal(flow, self._exchange(flow, gateway.status(flow), "error", detail))

    # -- helpers ---------------------------------------------------------------------------------------

    def _exchange(self, flow: http.HTTPFlow, status: int | None, source: str, detail: str) -> Exchange:
        """The journal entry for what the core did not answer (a 413 refusal, an upstream failure)."""
        req = flow.request
        request = Request(req.method, req.url, tuple(req.headers.items(multi=True)), req.raw_content or b"")
        return self.handler.entry(request, _arrival(flow), status, source, detail)

    def _journal(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        self.journal.add(exchange)
        if self.annotate_flows:
            flow.comment = f"replay-proxy: {exchange.answered_by()}"


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
    if records and path is not None and path.suffix.lower() == ".har":
        raise ConfigError(
            f"{path}: a HAR file is replayed, not recorded to: record a .yaml cassette "
            "(--har FILE also writes HAR)"
        )
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
        len(loaded),
        os.path.abspath(path) if path is not None else None,
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
        url = request_url(session, _proxy_origin(flow), req.path)
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
    return _to_flow(Wire.of(response, status_codes.RESPONSES))


def _to_flow(wire: Wire) -> http.Response:
    """What ``http.Response.make`` builds, without re-reading the headers to set the body."""
    now = time.time()
    headers = http.Headers(wire.fields)
    return http.Response(b"HTTP/1.1", wire.status, wire.reason, headers, wire.body, None, now, now)


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


def _proxy_origin(flow: http.HTTPFlow) -> str:
    """The proxy's own origin as this client reached it."""
    host, port = flow.client_conn.sockname[:2]
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if flow.client_conn.tls_established else "http"
    return f"{scheme}://{host}:{port}"


def _arrival(flow: http.HTTPFlow) -> Arrival:
    """What the core needs of the flow beyond its request: URLs, origins, the time it arrived."""
    req = flow.request
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        base_url = _proxy_origin(flow)
        proxy_origin: str | None = base_url
        client_url = f"{base_url}{req.path}"
    else:
        proxy_origin, client_url, base_url = None, req.url, origin_of(req.url)
    return Arrival(req.url, req.path, client_url, base_url, proxy_origin, req.timestamp_start or time.time())


def _log_exchange(exchange: Exchange) -> None:
    if logger.isEnabledFor(logging.INFO):  # -q: the line is not even built
        logger.info(exchange.line())


def console_journal(max_entries: int) -> Journal:
    """A journal that prints each exchange's console line and keeps only the last ``max_entries``."""
    return Journal(listener=_log_exchange, max_entries=max_entries)


addons = [ReplayAddon(annotate_flows=True)]
