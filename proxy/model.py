"""Plain, frozen HTTP types shared by the router, matchers, cassettes and scenarios.

No mitmproxy or vcrpy types cross this line: ``addon.py`` converts flows into these, and ``cassette.py``
converts them to and from vcrpy's cassette format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, AnyStr
from urllib.parse import parse_qsl, urlsplit

Headers = tuple[tuple[str, str], ...]
"""Header fields in order, names in the case they were sent, repeated names kept."""

DEFAULT_PORTS = {"http": 80, "https": 443}


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP field name (RFC 9110 5.1: a token)."""
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What no field value or reason phrase may hold (RFC 9110 5.5, RFC 9112 4): control characters, CR and
LF above all (a tab is allowed)."""


def header_problem(name: str, value: str | bytes) -> str | None:
    """Why header ``name: value`` cannot be sent as it is, or None.

    A CR or LF in a value ends the field on the wire: what follows becomes headers the client believes
    (``Set-Cookie``: response splitting). A name that is not a token (a space, a colon, U+202E) is not a
    header at all. Neither is ever sent: the files are refused at load, the rendered answers at render time.
    """
    if not _TOKEN.fullmatch(name):
        return f"header name {name!r} is not a valid HTTP field name (letters, digits, !#$%&'*+-.^_`|~)"
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    found = _CONTROL.search(text)
    if found is not None:
        what = {"\r": "a CR", "\n": "an LF", "\x00": "a NUL"}.get(found.group(), "a control character")
        return f"header {name!r} has {what} in its value ({_clip(text)}): it would write other headers"
    return None


def fields_are_safe(names: Iterable[str], values: Iterable[str]) -> bool:
    """Whether every name is a token and no value has a control character, in one pass of each regex over
    all of them (a cassette of many exchanges loads faster); False means: look at each with
    header_problem to say which."""
    names = list(names)
    return (
        all(names)
        and _TOKEN.fullmatch("".join(names) or "x") is not None
        and _CONTROL.search("".join(values)) is None
    )


def reason_problem(reason: str) -> str | None:
    """Why a status line's reason phrase cannot be sent as it is (CR, LF, control characters), or None."""
    if _CONTROL.search(reason) is None:
        return None
    return f"the reason phrase {_clip(reason)} has a CR, LF or control character"


def headers_problem(headers: Headers) -> str | None:
    """The first header_problem of ``headers``, or None."""
    for name, value in headers:
        problem = header_problem(name, value)
        if problem is not None:
            return problem
    return None


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def header_values(headers: Headers, name: str) -> list[str]:
    """All values of header ``name`` (case-insensitive), in order."""
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def header_value(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive), or None."""
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


def json_document(body: bytes) -> Any:
    """``body`` parsed when it is a JSON object or array, else None (not JSON, broken, or too deep)."""
    if not body or body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def without_headers(headers: Headers, names: Iterable[str]) -> Headers:
    """``headers`` minus every field whose name (case-insensitive) is in ``names``."""
    drop = {n.lower() for n in names}
    return tuple((k, v) for k, v in headers if k.lower() not in drop)


def set_header(
    headers: Iterable[tuple[AnyStr, AnyStr]], name: AnyStr, value: AnyStr
) -> tuple[tuple[AnyStr, AnyStr], ...]:
    """Replace all fields named ``name`` by one field with ``value`` (appended if absent): the first
    field of that name takes the value in place, as mitmproxy's ``headers[name] = value`` does. Text
    headers, or the bytes fields of a response on the wire."""
    lname = name.lower()
    out: list[tuple[AnyStr, AnyStr]] = []
    done = False
    for k, v in headers:
        if k.lower() == lname:
            if not done:
                out.append((k, value))
                done = True
        else:
            out.append((k, v))
    if not done:
        out.append((name, value))
    return tuple(out)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an absolute URL, lower-cased, default port omitted."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the client sent it, with an absolute URL (the upstream's, in reverse mode)."""

    method: str
    url: str
    headers: Headers = ()
    body: bytes = b""

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 80)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"

    @property
    def query(self) -> list[tuple[str, str]]:
        """Query pairs in the order sent, blank values kept."""
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True)

    @property
    def path_and_query(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    def replace(self, **changes: object) -> Request:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response with its body decoded (no Content-Encoding)."""

    status: int
    reason: str = ""
    headers: Headers = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    def replace(self, **changes: object) -> Response:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Interaction:
    """One recorded exchange: what was asked and what answered.

    ``raw`` is the item as a cassette held it when its shape is not the one the proxy writes (a request
    body stored as a mapping, the old httpx response format, tornado's header pairs, a response no vcrpy
    stub can play): rewriting the cassette writes it back as it was. None for everything else.
    """

    request: Request
    response: Response
    raw: Any = field(default=None, compare=False, repr=False)
