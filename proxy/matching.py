"""Which recorded request answers an incoming one, with vcrpy's matcher names and semantics.

Cheap matchers (method, URL parts, chosen headers) form a hashable key so playback can index 100k
interactions; body and full-header matchers run vcrpy's own functions on ``vcr.request.Request`` objects.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from io import BytesIO
from typing import Any, cast
from urllib.parse import SplitResult, parse_qsl, urlparse, urlsplit

from vcr.request import Request as VcrRequest

from .errors import ConfigError
from .model import DEFAULT_PORTS, Request, header_values

DEFAULT_MATCH_ON: tuple[str, ...] = ("method", "path", "query")
"""The default identity of a request: host and port differ between record and replay."""

INDEXABLE: tuple[str, ...] = ("method", "uri", "url", "scheme", "host", "port", "path", "query")
"""Matchers whose outcome is decided by equality of a hashable value (they form ``Matcher.key``)."""

CONFIRMING: tuple[str, ...] = ("body", "raw_body", "headers")
"""Matchers that need vcrpy's comparison functions (content-aware bodies, all headers)."""

MATCHER_NAMES: tuple[str, ...] = INDEXABLE + CONFIRMING


def _vcr_matchers() -> Any:
    """``vcr.matchers``, imported on first use: it imports xmlrpc and http.client (start-up time), and only
    the body and headers matchers need it."""
    from vcr import matchers

    return matchers


STRUCTURED = (dict, list, int, float, bool)
"""Request bodies vcrpy's aiohttp stub records as the values given to ``json=`` / ``data=`` (a mapping,
a list, a number in the cassette), not as the bytes sent."""


def _body(r1: Any, r2: Any) -> Any:
    """vcrpy's body matcher, except that byte-identical bodies match without being parsed.

    vcrpy parses JSON (and form) bodies to compare them: a 50 MB JSON upload became ~1 GB of Python
    objects, twice, for every candidate. Equal bytes parse to equal values, so the answer is the same.
    A body recorded as a value (``STRUCTURED``) matches the bytes a client sends for it: JSON of an
    equal value, or a form of the same fields, as in-process vcrpy compares aiohttp's value to value.
    """
    if r1.body == r2.body:
        return None
    if isinstance(r2.body, STRUCTURED) or isinstance(r1.body, STRUCTURED):
        value, sent = (r2.body, r1.body) if isinstance(r2.body, STRUCTURED) else (r1.body, r2.body)
        if _sent_as(value, body_bytes(sent)):
            return None
        r1, r2 = _as_json(r1), _as_json(r2)
    return _vcr_matchers().body(r1, r2)


def _sent_as(value: Any, sent: bytes) -> bool:
    """Whether ``sent`` is what aiohttp sends for ``json=value`` or ``data=value`` (a mapping)."""
    try:
        if json.loads(sent) == value:
            return True
    except ValueError:
        pass
    if not isinstance(value, dict):
        return False
    try:
        form = parse_qsl(sent.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return False
    return len(form) == len(value) and dict(form) == {str(k): str(v) for k, v in value.items()}


def _as_json(r: Any) -> Any:
    """``r`` with a value body as its JSON text (for vcrpy's diff of the two bodies)."""
    if not isinstance(r.body, STRUCTURED):
        return r
    return VcrRequest(r.method, r.uri, json.dumps(r.body), {**r.headers, "Content-Type": "application/json"})


def _raw_body(r1: Any, r2: Any) -> Any:
    return _vcr_matchers().raw_body(r1, r2)


def _headers(r1: Any, r2: Any) -> Any:
    return _vcr_matchers().headers(r1, r2)


# vcrpy names a failing matcher by its function's name
_body.__name__, _raw_body.__name__, _headers.__name__ = "body", "raw_body", "headers"


_VCR_FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {
    "body": _body,
    "raw_body": _raw_body,
    "headers": _headers,
}

_MAX_MESSAGE = 200


def _joined(values: Sequence[str], name: str) -> str:
    """One value for a repeated request header, as HTTP allows (RFC 9110 5.3; Cookie uses "; ")."""
    return ("; " if name.lower() == "cookie" else ", ").join(values)


def to_vcr_request(r: Request) -> VcrRequest:
    """``r`` as vcrpy's Request: empty body becomes None (as vcrpy's stubs record), one value per header."""
    headers: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, _ in r.headers:
        lname = name.lower()
        if lname not in names:
            names[lname] = name
            headers[name] = _joined(header_values(r.headers, name), name)
    return VcrRequest(r.method, r.url, r.body or None, headers)


def _to_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def body_bytes(body: object) -> bytes:
    """A vcrpy request body (None, str, bytes, file-like or iterator of chunks) as bytes."""
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, BytesIO):
        return body.getvalue()
    read = getattr(body, "read", None)
    if callable(read):
        return body_bytes(read())
    if isinstance(body, list | tuple) or hasattr(body, "__iter__"):
        chunks = list(body)
        if all(isinstance(c, int) for c in chunks):
            return bytes(chunks)
        return b"".join(body_bytes(c) for c in chunks)
    raise TypeError(f"unsupported request body type {type(body).__name__}")


def from_vcr_request(r: VcrRequest) -> Request:
    """vcrpy's Request as ours: its HeadersDict gives one value per name; the body becomes bytes."""
    headers = tuple((_to_text(k), _to_text(v)) for k, v in r.headers.items())
    return Request(method=str(r.method), url=str(r.uri), headers=headers, body=body_bytes(r.body))


def _normalized_uri(url: str, parts: SplitResult) -> str:
    """vcrpy's uri comparison: exact, except that a bare ``scheme://host`` equals ``scheme://host/``."""
    if parts.path:
        return url
    authority = f"{parts.scheme}://{parts.netloc}"
    if not url.startswith(authority):
        return url
    return authority + "/" + url[len(authority) :]


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in pairs)


def _one_line(message: str) -> str:
    """vcrpy's (possibly multi-line diff) message squeezed onto one short line."""
    lines = [
        line for line in message.splitlines() if line.strip() and not line.startswith(("--- ", "+++ ", "@@"))
    ]
    text = " | ".join(lines) if lines else message
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _port(r: Request, parts: SplitResult) -> Hashable:
    try:
        port = parts.port
    except ValueError:
        port = None
    return port or DEFAULT_PORTS.get(parts.scheme.lower(), 80)


def _query(r: Request, parts: SplitResult) -> Hashable:
    """vcrpy's ``Request.query``: sorted pairs, so order-insensitive, and without the pairs whose value is
    blank (``?a=&b=1`` is ``?b=1``), as ``parse_qsl`` leaves them out by default."""
    query = parts.query
    return tuple(sorted(parse_qsl(query))) if query else ()


def _path(r: Request, parts: SplitResult) -> Hashable:
    """vcrpy's path: ``urlparse``'s, which leaves out the last segment's ``;params``; empty is ``/``."""
    path = parts.path
    if ";" in path:
        path = urlparse(r.url).path
    return path or "/"


_PARTS: dict[str, Callable[[Request, SplitResult], Hashable]] = {
    "method": lambda r, parts: r.method.upper(),
    "uri": lambda r, parts: _normalized_uri(r.url, parts),
    "url": lambda r, parts: _normalized_uri(r.url, parts),
    "scheme": lambda r, parts: parts.scheme.lower(),
    "host": lambda r, parts: (parts.hostname or "").lower(),
    "port": _port,
    "path": _path,
    "query": _query,
}
"""How each indexable matcher reads its value from a request (and its split URL)."""


_KEY_CACHE_SIZE = 4096


class Matcher:
    """Decides whether a recorded request answers an incoming one, using vcrpy matcher names.

    ``headers`` names request headers whose values must be equal (names case-insensitive): a lighter
    alternative to vcrpy's ``headers`` matcher, which compares every header.

    ``filter_query_parameters`` and ``filter_headers`` are vcrpy's options of those names, each entry
    ``NAME`` (removed) or ``NAME=VALUE`` (its value replaced): applied with vcrpy's own filters to both
    requests before they are compared (``prepare``), so a cassette recorded with them matches live
    requests that still carry what they removed.
    """

    def __init__(
        self,
        match_on: Sequence[str] = DEFAULT_MATCH_ON,
        headers: Sequence[str] = (),
        filter_query_parameters: Sequence[str] = (),
        filter_headers: Sequence[str] = (),
    ) -> None:
        if isinstance(match_on, str):
            match_on = (match_on,)
        names: list[str] = []
        for name in match_on:
            if name not in MATCHER_NAMES:
                raise ConfigError(f"unknown matcher {name!r}; choose from: {', '.join(MATCHER_NAMES)}")
            if name not in names:
                names.append(name)
        header_names: list[str] = []
        for h in (headers,) if isinstance(headers, str) else headers:
            lname = h.strip().lower()
            if not lname or any(c in lname for c in " \t:\r\n"):
                raise ConfigError(f"invalid header name {h!r} for matching")
            if lname not in header_names:
                header_names.append(lname)
        self.match_on: tuple[str, ...] = tuple(names)
        self.headers: tuple[str, ...] = tuple(header_names)
        self._indexed = tuple(n for n in names if n in INDEXABLE)
        self._parts = tuple(_PARTS[n] for n in self._indexed)  # per request: no dispatch on names
        self._confirming = tuple(_VCR_FUNCTIONS[n] for n in names if n in CONFIRMING)
        self.filter_query_parameters = _filters(filter_query_parameters, "query parameter")
        self.filter_headers = _filters(filter_headers, "header")
        self._filtering = bool(self.filter_query_parameters or self.filter_headers)
        self._keys: dict[tuple[str, str], Hashable] = {}
        """``key`` by method and URL, when nothing else goes into it (no headers matched, none filtered):
        a poller asks for one URL again and again."""

    def __repr__(self) -> str:
        return f"Matcher(match_on={self.match_on!r}, headers={self.headers!r})"

    def prepare(self, request: Request) -> Request:
        """``request`` as vcrpy's ``filter_query_parameters`` / ``filter_headers`` leave it (vcrpy's own
        functions: the query is then re-encoded in sorted order, as vcrpy does); itself without filters."""
        if not self._filtering:
            return request
        url, headers = request.url, request.headers
        if self.filter_query_parameters:
            filtered = VcrRequest(request.method, url, None, {})
            _vcr_filters().replace_query_parameters(filtered, self.filter_query_parameters)
            url = filtered.uri
        if self.filter_headers and headers:
            out: list[tuple[str, str]] = []
            replacements = {name.lower(): value for name, value in self.filter_headers}
            done: set[str] = set()
            for name, value in headers:
                lname = name.lower()
                if lname not in replacements:
                    out.append((name, value))
                elif replacements[lname] is not None and lname not in done:
                    out.append((name, str(replacements[lname])))
                done.add(lname)
            headers = tuple(out)
        if url == request.url and headers is request.headers:
            return request
        return Request(request.method, url, headers, request.body)

    def vcr_request(self, request: Request) -> VcrRequest:
        """``request``, filtered (``prepare``), as vcrpy's Request for its body and headers matchers."""
        return to_vcr_request(self.prepare(request))

    def unrecorded(self, recorded: Request, incoming: Request) -> tuple[tuple[str, str], ...]:
        """When all that keeps ``recorded`` from matching ``incoming`` is query parameters (or chosen
        headers) ``incoming`` has and ``recorded`` lacks altogether, those as ("query", name) or
        ("header", name): what vcrpy's filters drop when recording. Otherwise ()."""
        recorded, incoming = self.prepare(recorded), self.prepare(incoming)
        rparts, iparts = urlsplit(recorded.url), urlsplit(incoming.url)
        found: list[tuple[str, str]] = []
        for name in self._indexed:
            rv, iv = _PARTS[name](recorded, rparts), _PARTS[name](incoming, iparts)
            if rv == iv:
                continue
            if name != "query":
                return ()
            rc: Counter[tuple[str, str]] = Counter(cast("tuple[tuple[str, str], ...]", rv))
            ic: Counter[tuple[str, str]] = Counter(cast("tuple[tuple[str, str], ...]", iv))
            recorded_names = {k for k, _ in rc}
            extra_names = sorted({k for k, _ in (ic - rc)})
            if rc - ic or any(k in recorded_names for k in extra_names):
                return ()
            found.extend(("query", k) for k in extra_names)
        for h in self.headers:
            rh, ih = self._header(recorded, h), self._header(incoming, h)
            if rh != ih:
                if rh is not None:
                    return ()
                found.append(("header", h))
        if not found or (
            self._confirming and not self.confirm(to_vcr_request(recorded), to_vcr_request(incoming))
        ):
            return ()
        return tuple(found)

    @property
    def needs_confirmation(self) -> bool:
        """True when equal keys are not enough (a body or all-headers matcher is configured)."""
        return bool(self._confirming)

    def _part(self, name: str, r: Request, parts: SplitResult) -> Hashable:
        return _PARTS[name](r, parts)

    def _header(self, r: Request, lname: str) -> str | None:
        values = header_values(r.headers, lname)
        return _joined(values, lname) if values else None

    def key(self, request: Request) -> Hashable:
        """A hashable summary of the indexable matchers and chosen headers: different keys never match."""
        if self._filtering or self.headers:
            return self._key(self.prepare(request) if self._filtering else request)
        known = self._keys.get((request.method, request.url))
        if known is None:
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.clear()
            known = self._keys[(request.method, request.url)] = self._key(request)
        return known

    def _key(self, request: Request) -> Hashable:
        parts = urlsplit(request.url)
        return (
            tuple([part(request, parts) for part in self._parts]),
            tuple([self._header(request, h) for h in self.headers]) if self.headers else (),
        )

    def confirm(self, recorded: VcrRequest, incoming: VcrRequest) -> bool:
        """Run the non-indexable matchers (vcrpy's functions) on requests already converted for vcrpy."""
        for fn in self._confirming:
            try:
                result = fn(incoming, recorded)
            except AssertionError:
                return False
            if result is False:
                return False
        return True

    def matches(self, recorded: Request, incoming: Request) -> bool:
        """Whether ``recorded`` answers ``incoming`` under every configured matcher."""
        if self.key(recorded) != self.key(incoming):
            return False
        if not self._confirming:
            return True
        return self.confirm(self.vcr_request(recorded), self.vcr_request(incoming))

    def differences(self, recorded: Request, incoming: Request) -> list[str]:
        """One short line per failing matcher (incoming value first, as vcrpy does); [] when they match."""
        out: list[str] = []
        recorded, incoming = self.prepare(recorded), self.prepare(incoming)
        rparts, iparts = urlsplit(recorded.url), urlsplit(incoming.url)
        for name in self.match_on:
            if name in INDEXABLE:
                rv, iv = self._part(name, recorded, rparts), self._part(name, incoming, iparts)
                if rv == iv:
                    continue
                if name == "query":
                    out.append(f"query: {_query_difference(rv, iv)}")  # type: ignore[arg-type]
                else:
                    out.append(f"{name}: {iv} != {rv}")
        for h in self.headers:
            rh, ih = self._header(recorded, h), self._header(incoming, h)
            if rh != ih:
                shown_i = "(absent)" if ih is None else repr(ih)
                shown_r = "(absent)" if rh is None else repr(rh)
                out.append(f"header {h}: {shown_i} != {shown_r}")
        if self._confirming:
            _, failures = _vcr_matchers().get_matchers_results(
                to_vcr_request(incoming), to_vcr_request(recorded), self._confirming
            )
            for name, message in failures:
                out.append(f"{name}: {_one_line(message or 'differs')}")
        return out


def _vcr_filters() -> Any:
    from vcr import filters

    return filters


def _filters(entries: Sequence[str], what: str) -> tuple[tuple[str, str | None], ...]:
    """``NAME`` or ``NAME=VALUE`` entries as vcrpy's (name, replacement) pairs (None: remove)."""
    out: list[tuple[str, str | None]] = []
    for entry in (entries,) if isinstance(entries, str) else entries:
        name, sep, value = str(entry).partition("=")
        name = name.strip()
        bad = "\r\n \t:" if what == "header" else "\r\n"
        if not name or any(c in name for c in bad):
            raise ConfigError(f"invalid {what} name {entry!r} to filter (give NAME or NAME=VALUE)")
        out.append((name, value if sep else None))
    return tuple(out)


def _query_difference(recorded: Sequence[tuple[str, str]], incoming: Sequence[tuple[str, str]]) -> str:
    """``missing k=v`` (recorded, not sent) and ``unexpected k=v`` (sent, not recorded)."""
    rc, ic = Counter(recorded), Counter(incoming)
    missing = sorted((rc - ic).elements())
    unexpected = sorted((ic - rc).elements())
    parts = []
    if missing:
        parts.append(f"missing {_pairs(missing)}")
    if unexpected:
        parts.append(f"unexpected {_pairs(unexpected)}")
    return "; ".join(parts)
