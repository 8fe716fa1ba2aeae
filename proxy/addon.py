"""The mitmproxy addon: each request is answered by the cassette, forwarded and recorded, or refused.

It also loads on its own: ``mitmdump -s proxy/addon.py --mode reverse:https://host
--set connection_strategy=lazy --set replay_cassette=c.yaml --set replay_record_mode=none``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import exceptions, http
from mitmproxy.proxy import mode_specs

from proxy import control, faults, gateway, mitm_internals, request_head, settings
from proxy.diagnostic import stopping_response
from proxy.errors import ReplayProxyError
from proxy.handler import WIRE_HEADERS, Arrival, Handler, Wire, request_url
from proxy.journal import Exchange, Journal
from proxy.model import Request, Response, origin_of, set_header, without_headers
from proxy.reasons import REASONS
from proxy.session import JOURNAL_OPTION, Core, Session, console_journal
from proxy.session import build_session as _build_session  # its name here before proxy/session.py took it
from proxy.unused import CassetteUse

__all__ = ["WIRE_HEADERS", "ReplayAddon", "Session", "console_journal"]

META = "replay_proxy"
"""flow.metadata key: what answered this flow ("cassette", "no-match", "forward")."""

REFUSAL_CLOSE_DELAY = 0.05
"""Seconds between refusing a request body (413) and closing the client connection."""

H2_PREFACE_START = b"PRI * HTTP/2.0\r\n"
"""How an HTTP/2 connection without TLS begins ("prior knowledge"); no HTTP/1 request can (RFC 9113 3.4)."""


class ReplayAddon:
    """Adapts mitmproxy's flows to a ``Core`` (proxy/session.py): builds a session from the ``replay_*``
    options, hands each request to the core's handler, records forwarded exchanges, journals every one."""

    def __init__(
        self, journal: Journal | None = None, *, annotate_flows: bool = False, core: Core | None = None
    ) -> None:
        self.core = core if core is not None else Core(journal)
        """The session, journal, handler and control API (shared with ReplayProxy)."""
        self.annotate_flows = annotate_flows
        """Loaded into mitmproxy's own tools (``-s``): each flow's comment says what answered it (mitmweb)."""
        self._rolling_back = False
        """configure failed: the next configure is mitmproxy restoring the options of the current session."""

    # -- the core's state, under the names it had here ------------------------------------------------

    @property
    def session(self) -> Session | None:
        return self.core.session

    @session.setter
    def session(self, session: Session | None) -> None:
        self.core.session = session

    @property
    def journal(self) -> Journal:
        return self.core.journal

    @property
    def handler(self) -> Handler:
        return self.core.handler

    @property
    def control(self) -> control.ControlAPI | None:
        return self.core.control

    @control.setter
    def control(self, api: control.ControlAPI | None) -> None:
        self.core.control = api

    @property
    def save_errors(self) -> list[str]:
        return self.core.save_errors

    def unused(self) -> list[CassetteUse]:
        """Each cassette loaded for replay so far (this session included) and what of it was played."""
        return self.core.unused()

    # -- options ---------------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        settings.declare_addon_options(loader)  # replay_cassette, replay_record_mode, ... (proxy/settings.py)
        gateway.install()
        request_head.install()

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx

        core = self.core
        if JOURNAL_OPTION in updated:
            try:
                core.open_journal_file(getattr(ctx.options, JOURNAL_OPTION))
            except ReplayProxyError as e:
                raise exceptions.OptionsError(str(e)) from e
        if not any(name.startswith("replay_") and name != JOURNAL_OPTION for name in updated):
            return
        if self._rolling_back and core.session is not None:
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
        core.begin(session)

    def done(self) -> None:
        self.core.stopping = True  # from now on nothing is forwarded: it could not be saved
        self.core.close_session()
        faults.release_all()
        self.core.open_journal_file(None)

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
        session = self.core.session
        offline = session is not None and not session.router.may_forward
        if offline and not faults.is_backend(data.server.address):
            data.server.error = "replay-proxy is offline: it opens no upstream connection"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        faults.responseheaders(flow)

    # -- the request path ------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        # -- the control API (proxy/control.py): never matched, forwarded, recorded nor journaled ----------
        if (
            self.core.control is not None
            and flow.request.path.startswith(control.PREFIX)
            and _for_proxy(flow)
        ):
            req = flow.request
            asked = Request(req.method, req.url, tuple(req.headers.items(multi=True)), req.raw_content or b"")
            flow.metadata[META] = "control"
            flow.response = _flow_response(self.core.control.answer(asked))
            return
        # -- end of the control API --------------------------------------------------------------------------
        session = self.core.session
        if session is None:
            if self.core.stopping:
                flow.response = _flow_response(stopping_response())
            return
        arrival = _arrival(flow)
        outcome = self.core.handler.handle(session, _model_request(flow, session, arrival), arrival)
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
        session = self.core.session
        if flow.metadata.get(META) != "forward" or flow.response is None:
            return
        if session is None:  # answered after the stop began: it can no longer be saved
            if self.core.stopping:
                flow.response = _flow_response(stopping_response())
            return
        arrival = _arrival(flow)
        sent, exchange, save_error = self.core.handler.forwarded(
            session, _model_request(flow, session, arrival), _model_response(flow), arrival
        )
        if save_error is not None:
            self.core.save_failed(save_error)
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
        return self.core.handler.entry(request, _arrival(flow), status, source, detail)

    def _journal(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        self.core.journal.add(exchange)
        if self.annotate_flows:
            flow.comment = f"replay-proxy: {exchange.answered_by()}"


def _model_request(flow: http.HTTPFlow, session: Session, arrival: Arrival) -> Request:
    """The flow's request with an absolute URL: in reverse mode, on the recorded (or upstream) origin."""
    req = flow.request
    if arrival.proxy_origin is not None:  # reverse mode
        url = request_url(session, arrival.proxy_origin, arrival.path)
    else:
        url = arrival.url
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
    return _to_flow(Wire.of(response, REASONS))


def _to_flow(wire: Wire) -> http.Response:
    """What ``http.Response.make`` builds, without re-reading the headers to set the body."""
    return mitm_internals.response(wire.status, wire.reason, wire.fields, wire.body, time.time())


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


def proxy_origin(flow: http.HTTPFlow) -> str:
    """The proxy's own origin as this client reached it."""
    host, port = flow.client_conn.sockname[:2]
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if flow.client_conn.tls_established else "http"
    return f"{scheme}://{host}:{port}"


def _arrival(flow: http.HTTPFlow) -> Arrival:
    """What the core needs of the flow beyond its request: URLs, origins, the time it arrived."""
    req = flow.request
    url, path = req.url, req.path
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        ours = proxy_origin(flow)
        return Arrival(url, path, ours + path, ours, ours, req.timestamp_start or time.time())
    return Arrival(url, path, url, origin_of(url), None, req.timestamp_start or time.time())


addons = [ReplayAddon(annotate_flows=True)]
