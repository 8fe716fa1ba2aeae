"""HAR 1.2: write a session's exchanges (``--har FILE``), read a HAR file as a cassette, convert both ways.

Writing reuses mitmproxy's own HAR export (``mitmproxy.addons.savehar.SaveHar.flow_entry``, public on
mitmproxy 11 and 12) on a copy of each flow as the client saw it: the URL it used (in reverse mode, the
proxy's), the answer as served (URLs rewritten, Retry-After shortened), bodies decoded, and secrets
replaced by the placeholders the cassette uses. Reading uses mitmproxy's HAR reader
(``mitmproxy.io.har.request_to_flow``), which knows the variants browsers and tools write, through
``read_entry`` (also ``learn``'s reader, ``proxy.recordings``), which works around two of its gaps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from proxy.errors import CassetteError, CassetteNotFoundError
from proxy.model import Headers, Interaction, Request, Response, set_header, without_headers

if TYPE_CHECKING:
    from mitmproxy import http

    from proxy.addon import ReplayAddon

logger = logging.getLogger("proxy")

SUFFIXES = (".har",)
"""File names read as HAR (a JSON file whose top-level key is ``log`` is one too)."""
OWN_ANSWER = "x-replay-proxy"
"""The header of the proxy's own answers (599 no-match, scenario errors...): not the service's."""
_DONE = "replay_proxy_har"
"""flow.metadata key: this flow has its HAR entry (mitmproxy may call ``error`` after ``response``)."""


def is_har(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a HAR file: by its name (``.har``), else JSON whose first key is ``log``."""
    p = Path(path)
    if p.suffix.lower() in SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False
    return head.startswith(b"{") and head[1:].lstrip().startswith(b'"log"')


# -- writing ----------------------------------------------------------------------------------------------


class HarCapture:
    """A mitmproxy addon (loaded after ``ReplayAddon``) that keeps each finished exchange as a HAR entry and
    writes the file when mitmproxy stops. Entries are serialized as they come and spooled to a temporary
    file, so a long session holds no flows in memory; the HAR is written once, atomically, at ``done``."""

    def __init__(self, path: str | os.PathLike[str], replay: ReplayAddon) -> None:
        self.path = Path(path)
        self.replay = replay
        self.count = 0
        self._spool: IO[str] | None = None
        self._servers: set[Any] = set()

    def response(self, flow: http.HTTPFlow) -> None:
        self._add(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._add(flow)

    def _add(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(_DONE) or flow.websocket is not None:
            return
        from proxy.addon import META

        if flow.metadata.get(META) == "control":  # the control API: the harness's calls, not the client's
            return
        flow.metadata[_DONE] = True
        entry = har_entry(flow, self.replay, self._servers)
        if self._spool is None:
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed at done)
        if self.count:
            self._spool.write(",\n")
        self._spool.write(json.dumps(entry, ensure_ascii=False))
        self.count += 1

    def done(self) -> None:
        try:
            self.write()
        except CassetteError as e:
            message = str(e)
            if message not in self.replay.save_errors:
                self.replay.save_errors.append(message)
            logger.error("replay-proxy: error: %s", message)

    def write(self) -> None:
        """Write the HAR file (every entry so far); CassetteError when it cannot be written."""
        spool = self._spool
        if spool is not None:
            spool.seek(0)
        with _atomic(self.path) as out:
            out.write(_head())
            if spool is not None:
                while chunk := spool.read(1 << 20):
                    out.write(chunk)
            out.write(_TAIL)
        if spool is not None:
            spool.seek(0, os.SEEK_END)  # more exchanges may follow (write is called again at the stop)


def _head() -> str:
    from mitmproxy import version

    from proxy import __version__

    creator = {"name": "replay-proxy", "version": __version__, "comment": f"mitmproxy {version.VERSION}"}
    return f'{{"log": {{"version": "1.2", "creator": {json.dumps(creator)}, "pages": [], "entries": [\n'


_TAIL = "\n]}}\n"


@contextlib.contextmanager
def _atomic(path: Path) -> Any:
    """A text file written beside ``path`` and renamed over it when the block ends without error."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CassetteError(f"{path}: cannot write the HAR file: {e.strerror or e}") from None


def har_entry(
    flow: http.HTTPFlow, replay: ReplayAddon | None = None, servers: set[Any] | None = None
) -> dict[str, Any]:
    """The HAR entry of ``flow`` as the client saw it, secrets redacted as in the session's cassette;
    ``comment`` says what answered it (``replay-proxy: cassette interaction #3``)."""
    from mitmproxy.addons.savehar import SaveHar
    from mitmproxy.proxy import mode_specs

    from proxy.addon import proxy_origin

    session = replay.session if replay is not None else None
    redactor = session.redactor if session is not None and session.redactor.enabled else None
    f = flow.copy()
    if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode):
        f.request.url = proxy_origin(flow) + flow.request.path  # the URL the client used
    request = _model_request(f.request)
    response = _model_response(f.response, f.request.method) if f.response is not None else None
    if redactor is not None:
        if response is not None:
            saved = redactor.interaction(Interaction(request, response))
            request, response = saved.request, saved.response
        else:
            request = redactor.request(request)
    f.request.url = request.url
    f.request.headers = _flow_headers(request.headers)
    f.request.content = request.body
    if f.response is not None and response is not None:
        f.response.headers = _flow_headers(response.headers)
        f.response.content = response.body
    if f.error is not None and redactor is not None:
        f.error.msg = redactor.scrub(f.error.msg)
    entry: dict[str, Any] = SaveHar().flow_entry(f, servers if servers is not None else set())
    if not entry["response"].get("content"):  # no response (a fault, a failed upstream): HAR 1.2 wants these
        entry["response"]["content"] = {"size": 0, "mimeType": "x-unknown"}
    if flow.comment:
        entry["comment"] = redactor.scrub(flow.comment) if redactor is not None else flow.comment
    return entry


_WIRE = ("content-encoding", "transfer-encoding")


def _model_request(req: http.Request) -> Request:
    body = req.get_content(strict=False) or b""
    headers = tuple(req.headers.items(multi=True))
    if body != (req.raw_content or b""):
        headers = without_headers(headers, list(_WIRE))
        if any(k.lower() == "content-length" for k, _ in headers):
            headers = set_header(headers, "Content-Length", str(len(body)))
    return Request(req.method, req.url, headers, body)


def _model_response(resp: http.Response, method: str) -> Response:
    """The response decoded, as a cassette stores it (no Content-Encoding, a Content-Length that fits)."""
    body = resp.get_content(strict=False) or b""
    headers = without_headers(tuple(resp.headers.items(multi=True)), list(_WIRE))
    if method != "HEAD" and resp.status_code not in (204, 304):
        headers = set_header(headers, "Content-Length", str(len(body)))
    return Response(resp.status_code, resp.reason, headers, body)


def _flow_headers(headers: Headers) -> Any:
    from mitmproxy import http

    return http.Headers([(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in headers])


# -- reading ----------------------------------------------------------------------------------------------


def read(path: str | os.PathLike[str]) -> list[Interaction]:
    """The exchanges of a HAR file as cassette interactions, in file order.

    Entries without a response (status 0: a reset, a hang, a browser's cancelled request) and answers of
    replay-proxy itself (``X-Replay-Proxy``: a 599 diagnostic) are left out, with a warning each. A file
    that is not HAR is a CassetteError saying where (line:column for JSON, the entry and field otherwise).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CassetteNotFoundError(f"{p}: no such HAR file") from None
    except OSError as e:
        raise CassetteError(f"{p}: cannot read it: {e.strerror or e}") from None
    if not raw.strip():
        raise CassetteNotFoundError(f"{p}: empty HAR file (nothing to replay)")
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise CassetteError(f"{p}: a HAR file is UTF-8 JSON; byte {e.start} is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise CassetteError(f"{p}:{e.lineno}:{e.colno}: not a HAR file: invalid JSON: {e.msg}") from None
    entries = (
        doc.get("log", {}).get("entries")
        if isinstance(doc, dict) and isinstance(doc.get("log"), dict)
        else None
    )
    if not isinstance(entries, list):
        raise CassetteError(f"{p}: not a HAR file: expected a top-level 'log' with a list of 'entries'")
    out: list[Interaction] = []
    for n, entry in enumerate(entries):
        where = f"{p}: log.entries[{n}]"
        _check_entry(entry, where)
        status = entry["response"].get("status")
        if not isinstance(status, int) or status <= 0:
            logger.warning(
                "%s: %s %s has no response (status %s): left out", where, _method(entry), _url(entry), status
            )
            continue
        own = [h for h in entry["response"]["headers"] if _header_name(h).lower() == OWN_ANSWER]
        if own:
            logger.warning(
                "%s: %s %s was answered %s by replay-proxy itself, not by the service: left out",
                where,
                _method(entry),
                _url(entry),
                status,
            )
            continue
        out.append(_interaction(entry, where))
    return out


def _method(entry: dict[str, Any]) -> str:
    return str(entry["request"].get("method"))


def _url(entry: dict[str, Any]) -> str:
    return str(entry["request"].get("url"))


def _header_name(h: Any) -> str:
    if isinstance(h, dict):
        return str(h.get("name", ""))
    return str(h[0]) if isinstance(h, list | tuple) and h else ""


_REQUIRED: tuple[tuple[str, str, type | tuple[type, ...]], ...] = (
    ("request", "method", str),
    ("request", "url", str),
    ("request", "headers", list),
    ("response", "status", int),
    ("response", "headers", list),
)


def _check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise CassetteError(f"{where}: an entry is an object with 'request' and 'response'")
    for part, key, kind in _REQUIRED:
        value = entry.get(part, {}).get(key) if isinstance(entry.get(part), dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CassetteError(f"{where}.{part}.{key}: missing or not a {_kind(kind)}")


def _kind(kind: type | tuple[type, ...]) -> str:
    return {str: "string", list: "list", int: "number"}.get(kind if isinstance(kind, type) else str, "value")


def _interaction(entry: dict[str, Any], where: str) -> Interaction:
    """One entry through mitmproxy's HAR reader, then as a cassette holds it (bodies decoded)."""
    try:
        read = read_entry(entry)
    except HarEntryError as e:
        raise CassetteError(f"{where}: mitmproxy's HAR reader cannot read it: {e}") from None
    flow = read.flow
    assert flow.response is not None
    req = flow.request
    request = Request(req.method, req.url, tuple(req.headers.items(multi=True)), req.raw_content or b"")
    request = _decoded_request(request, req)
    response = _model_response(flow.response, req.method)
    if read.reason is not None:
        response = Response(response.status, read.reason, response.headers, response.body)
    return Interaction(request, response)


class HarEntryError(ValueError):
    """mitmproxy's HAR reader cannot read an entry; says what it tripped on (``KeyError: 'url'``)."""


@dataclass(frozen=True, slots=True)
class HarEntry:
    """A HAR entry as mitmproxy reads it, with what its reader leaves out."""

    flow: http.HTTPFlow
    reason: str | None
    """The entry's ``statusText``, when it has one (mitmproxy's reader puts the standard phrase instead)."""
    started: float | None
    """POSIX seconds the request was sent (``startedDateTime``); None when the entry does not say."""


def read_entry(entry: Any) -> HarEntry:
    """One HAR entry through mitmproxy's reader (``request_to_flow``), for ``read`` and ``learn``.

    Two gaps of that reader are worked around: fields HAR 1.2 requires but some tools leave out are filled
    in first (``_filled``), and the entry's ``statusText`` is kept (``HarEntry.reason``). HarEntryError
    when the reader still cannot read it.
    """
    from mitmproxy.io.har import request_to_flow

    try:
        flow = request_to_flow(_filled(entry))
    except Exception as e:  # mitmproxy's reader raises whatever the entry trips
        raise HarEntryError(f"{type(e).__name__}: {e}") from None
    reason = entry["response"].get("statusText")
    started = flow.request.timestamp_start if isinstance(entry.get("startedDateTime"), str) else None
    return HarEntry(flow, reason if isinstance(reason, str) and reason else None, started)


def _decoded_request(request: Request, req: http.Request) -> Request:
    body = req.get_content(strict=False) or b""
    if body == request.body:
        return request
    return Request(request.method, request.url, without_headers(request.headers, list(_WIRE)), body)


def _filled(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with what HAR 1.2 requires but some tools leave out, so mitmproxy's reader takes it."""
    request = {"httpVersion": "HTTP/1.1", **entry["request"]}
    response = {"httpVersion": "HTTP/1.1", **entry["response"]}
    if not isinstance(response.get("content"), dict):
        response["content"] = {}
    if "postData" in request and not isinstance(request["postData"], dict):
        del request["postData"]
    elif isinstance(request.get("postData"), dict):
        request["postData"] = {"text": "", **request["postData"]}
    started = entry.get("startedDateTime")
    return {
        **entry,
        "startedDateTime": started if isinstance(started, str) else "1970-01-01T00:00:00+00:00",
        "time": entry.get("time") if isinstance(entry.get("time"), int | float) else 0,
        "request": request,
        "response": response,
    }


# -- writing interactions (convert) -----------------------------------------------------------------------


def dumps(interactions: Sequence[Interaction]) -> str:
    """A HAR document of cassette interactions (``replay-proxy convert c.yaml -o c.har``)."""
    from mitmproxy.addons.savehar import SaveHar

    maker = SaveHar()
    servers: set[Any] = set()
    entries = [json.dumps(maker.flow_entry(_flow_of(i), servers), ensure_ascii=False) for i in interactions]
    return _head() + ",\n".join(entries) + _TAIL


def _flow_of(interaction: Interaction) -> http.HTTPFlow:
    import time

    from mitmproxy import connection, http

    now = time.time()
    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0), timestamp_start=now)
    flow = http.HTTPFlow(client, connection.Server(address=None))
    req, resp = interaction.request, interaction.response
    flow.request = http.Request.make(req.method, req.url, req.body, _flow_headers(req.headers))
    flow.request.timestamp_start = flow.request.timestamp_end = now
    flow.response = http.Response(
        b"HTTP/1.1",
        resp.status,
        (resp.reason or "").encode("iso-8859-1", "replace"),
        _flow_headers(resp.headers),
        resp.body,
        None,
        now,
        now,
    )
    return flow


def write_interactions(path: Path, interactions: Iterable[Interaction]) -> None:
    """Write ``interactions`` as a HAR file, atomically; CassetteError when it cannot be written."""
    text = dumps(list(interactions))
    with _atomic(path) as out:
        out.write(text)


def convert(source: Path, target: Path) -> int:
    """``source`` (a HAR file or a cassette) written to ``target``: HAR for a ``.har`` name, else a vcrpy
    cassette (YAML, or JSON for ``.json``). Returns the number of exchanges written."""
    from proxy import cassette

    interactions = cassette.load(source)
    if Path(target).suffix.lower() in SUFFIXES:
        write_interactions(target, interactions)
    else:
        cassette.save(target, interactions)
    return len(interactions)
