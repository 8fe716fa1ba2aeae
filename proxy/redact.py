"""Secrets out of what is saved: credentials in headers, query parameters, form fields and JSON bodies.

``Redactor.interaction`` gives the copy to save, with readable numbered placeholders (``<REDACTED-1>``),
the same one for the same secret during the redactor's life. The secret-to-placeholder map lives in memory
only: no secret, nor any hash of one, is ever written. ``Redactor.for_matching`` maps a live request (real
secret) and a saved one (placeholder) to the same normalized request, so redaction never breaks matching.
Live traffic is never touched: only what is saved, and what the matcher compares.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import unquote, unquote_plus

from proxy.model import Headers, Interaction, Request, Response, header_values

DEFAULT_HEADERS: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "ocp-apim-subscription-key",
    "subscription-key",
    "api-key",
    "x-api-key",
    "x-functions-key",
    "x-ms-client-secret",
    "x-ms-authorization-auxiliary",
    "x-ms-copy-source-authorization",
    "x-ms-encryption-key",
    "x-goog-api-key",
    "x-amz-security-token",
    "x-auth-token",
)
"""Request and response headers whose values are secrets (lower-case)."""

DEFAULT_QUERY: tuple[str, ...] = (
    "subscription-key",
    "sig",
    "code",
    "api-key",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "client_assertion",
    "password",
    "token",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
)
"""Query parameters (and form fields) whose values are secrets, e.g. a SAS ``sig`` (lower-case)."""

DEFAULT_JSON_FIELDS: tuple[str, ...] = ("access_token", "refresh_token", "id_token", "client_secret")
"""JSON body keys whose values are secrets by default: OAuth token requests and responses."""

MATCH_PLACEHOLDER = "<REDACTED>"
"""What ``for_matching`` puts in place of every redacted value, live or saved."""

_PLACEHOLDER_RE = re.compile(r"<REDACTED(?:-\d+)?>")
_ANY_PLACEHOLDER_RE = re.compile(r"(?:<|%3C)REDACTED-\d+(?:>|%3E)", re.IGNORECASE)
_ANY_PLACEHOLDER_BYTES_RE = re.compile(rb"<REDACTED-\d+>")
_URL_RE = re.compile(
    r"""https?:(?://|\\/\\/)(?:<REDACTED(?:-\d+)?>|\\/|\\u0026|[^\s"'<>\\])+""", re.IGNORECASE
)
"""An absolute URL in text; also as a JSON string writes it unparsed (``https:\\/\\/h\\/p?a=1\\u0026b=2``)."""
_URL_MARK_RE = re.compile(rb":(?://|\\/\\/)")
"""Whether bytes may hold a URL (one search: a large body is scanned once)."""
_AUTH_RE = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(\s+)(\S.*?)\s*", re.DOTALL)
_URL_QUERY_SEP = re.compile(r"(&amp;|\\u0026|&)")
_FORM_SEP = re.compile(r"(&)")
_JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*[\[{]")
_JSON_PAIR_RE = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:\s*)(?:"((?:[^"\\]|\\.)*)"|(-?\d[\d.eE+-]*))')
"""A ``"key": "string"`` or ``"key": number`` pair in JSON text that does not parse as a whole."""
_JSONISH_TYPES = ("json", "text/", "javascript")
_SWEEP_MIN_LEN = 8
"""Secrets at least this long are also swept from anywhere in the response (echoes); shorter ones are
too likely to collide with ordinary text."""

Hide = Callable[[str, str], str]
"""``hide(secret, raw_form)`` -> what to write instead of ``raw_form``."""


class _Seen:
    """Secrets met while redacting one interaction, mapped to their placeholders, for the echo sweep."""

    def __init__(self) -> None:
        self.forms: dict[str, str] = {}


class Redactor:
    """Replaces secrets by placeholders in what is saved, and normalizes them in what is matched."""

    def __init__(
        self,
        headers: Iterable[str] = DEFAULT_HEADERS,
        query: Iterable[str] = DEFAULT_QUERY,
        json_fields: Iterable[str] = DEFAULT_JSON_FIELDS,
        enabled: bool = True,
    ) -> None:
        self._headers = frozenset(h.strip().lower() for h in headers)
        self._query = frozenset(q.strip().lower() for q in query)
        self._json = frozenset(f.strip().lower() for f in json_fields)
        self._form = self._query | self._json
        self._json_needles = tuple(f.encode("utf-8") for f in self._json)
        self._query_needles = tuple(q.encode("utf-8") for q in self._query)
        # bytes.lower() folds ASCII only: a non-ASCII name can hide from the needles, so always look
        self._needles_exact = all(n.isascii() for n in self._form)
        self.enabled = enabled
        self._placeholders: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def header_names(self) -> frozenset[str]:
        """Redacted header names, lower-case."""
        return self._headers

    @property
    def query_names(self) -> frozenset[str]:
        """Redacted query parameter (and form field) names, lower-case."""
        return self._query

    @property
    def json_fields(self) -> frozenset[str]:
        """Redacted JSON keys (any depth, case-insensitive; also form fields), lower-case."""
        return self._json

    # ------------------------------------------------------------------ saving

    def interaction(self, interaction: Interaction) -> Interaction:
        """The copy of ``interaction`` to save, every secret replaced by its placeholder."""
        if not self.enabled:
            return interaction
        seen = _Seen()
        request = self._request(interaction.request, seen)
        response = self._response(interaction.response, seen)
        if request is interaction.request and response is interaction.response:
            return interaction
        return Interaction(request=request, response=response)

    def request(self, request: Request) -> Request:
        """The copy of ``request`` to save (placeholders numbered as in ``interaction``)."""
        return self._request(request, _Seen()) if self.enabled else request

    def response(self, response: Response) -> Response:
        """The copy of ``response`` to save (placeholders numbered as in ``interaction``)."""
        return self._response(response, _Seen()) if self.enabled else response

    def _placeholder(self, secret: str) -> str:
        if _PLACEHOLDER_RE.fullmatch(secret):
            return secret
        with self._lock:
            found = self._placeholders.get(secret)
            if found is None:
                found = f"<REDACTED-{len(self._placeholders) + 1}>"
                self._placeholders[secret] = found
            return found

    def _hider(self, seen: _Seen) -> Hide:
        def hide(secret: str, raw: str) -> str:
            placeholder = self._placeholder(secret)
            if placeholder != secret:
                seen.forms.setdefault(secret, placeholder)
                seen.forms.setdefault(raw, placeholder)
            return placeholder

        return hide

    def _request(self, request: Request, seen: _Seen) -> Request:
        hide = self._hider(seen)
        url = _redact_url(request.url, self._query, hide)
        headers = self._headers_for_save(request.headers, hide)
        body = self._body(request.body, request.headers, hide)
        if url == request.url and headers == request.headers and body == request.body:
            return request
        return Request(method=request.method, url=url, headers=headers, body=body)

    def _response(self, response: Response, seen: _Seen) -> Response:
        hide = self._hider(seen)
        headers = self._headers_for_save(response.headers, hide)
        body = self._body(response.body, response.headers, hide)
        headers, body = _sweep(headers, body, seen.forms, self._headers)
        if headers == response.headers and body == response.body:
            return response
        return Response(status=response.status, reason=response.reason, headers=headers, body=body)

    def _headers_for_save(self, headers: Headers, hide: Hide) -> Headers:
        out: list[tuple[str, str]] = []
        for name, value in headers:
            lname = name.lower()
            if lname in self._headers:
                value = _hide_header_value(lname, value, hide)
            elif "://" in value:
                value = _redact_urls_in_text(value, self._query, hide)
            out.append((name, value))
        result = tuple(out)
        return headers if result == headers else result

    def _body(self, body: bytes, headers: Headers, hide: Hide) -> bytes:
        """``body`` with form fields, JSON fields and URL query secrets hidden; ``body`` itself if none.

        Saving and matching run these same steps, so they always agree. Every Content-Type field counts
        (a duplicate or empty one cannot hide the type). A form body has its fields hidden; a JSON one
        (declared, or starting with ``[`` or ``{``) is parsed and walked, which visits every string. Any
        other body, or one that does not parse, is searched as text whatever its type: configured
        ``"key": value`` pairs when it is JSON-looking (NDJSON, server-sent events, JSONP), and query
        secrets in every URL. Parsing and searching are skipped when no configured name can occur (a
        50 MB upload is not parsed for nothing); the checks are conservative, so skipping never changes
        the result.
        """
        if not body:
            return body
        ctype = ", ".join(header_values(headers, "content-type")).lower()
        new = body
        if "x-www-form-urlencoded" in ctype:
            text = body.decode("utf-8", "surrogateescape")
            new_text = _redact_pairs(text, self._form, hide, _FORM_SEP)
            if new_text != text:
                new = new_text.encode("utf-8", "surrogateescape")
        has_url = _URL_MARK_RE.search(new) is not None
        if new is body and ("json" in ctype or _JSON_START.match(body)):
            if not self._may_hold_secret(body, self._json_needles, has_url):
                return body
            parsed, changed = _redact_json(body, self._json, self._query, hide)
            if parsed:
                return body if changed is None else changed
        # not parsed as a whole (NDJSON, server-sent events, JSONP, truncated, XML, text, binary...):
        # configured fields in JSON-looking text, then every URL's query secrets
        find_pairs = bool(self._json) and (
            any(t in ctype for t in _JSONISH_TYPES) or bool(_JSON_START.match(body))
        )
        find_pairs = find_pairs and self._mentions(new, self._json_needles)
        find_urls = has_url and self._may_hold_secret(new, (), has_url)
        if find_pairs or find_urls:
            text, codec = _as_text(new)
            new_text = _redact_json_pairs(text, self._json, hide) if find_pairs else text
            new_text = _redact_urls_in_text(new_text, self._query, hide) if find_urls else new_text
            if new_text != text:
                new = new_text.encode(codec, "surrogateescape")
        return new

    def _mentions(self, body: bytes, needles: tuple[bytes, ...]) -> bool:
        """Whether ``body`` may spell one of ``needles`` (lower-case), counting ``\\u`` escapes as maybe."""
        if not self._needles_exact:
            return True
        lowered = body.lower()
        return b"\\u" in lowered or any(n in lowered for n in needles)

    def _may_hold_secret(self, body: bytes, field_needles: tuple[bytes, ...], has_url: bool) -> bool:
        """Whether ``body`` can hold a configured field (one of ``field_needles``) or a URL query secret.

        Conservative: a ``\\u`` escape or a ``%`` can spell a name that the needles do not see.
        """
        if not self._needles_exact:
            return True
        lowered = body.lower()
        if b"\\u" in lowered or any(n in lowered for n in field_needles):
            return True
        return has_url and (b"%" in body or any(n in lowered for n in self._query_needles))

    # ---------------------------------------------------------------- matching

    def for_matching(self, request: Request) -> Request:
        """``request`` with every redacted value (live secret or saved placeholder) set to ``<REDACTED>``.

        The body goes through the same steps as when saving, so a saved request and the live one it came
        from always normalize alike. Cheap when there is nothing to redact: the body is parsed or searched
        only when it mentions a configured field, or holds a URL that may carry a configured query name.
        """
        if not self.enabled:
            return request
        hide = _hide_for_matching
        url = request.url
        if "?" in url:
            url = _redact_url(url, self._query, hide)
        if "REDACTED-" in url.upper():
            url = _ANY_PLACEHOLDER_RE.sub(MATCH_PLACEHOLDER, url)
        headers = self._headers_for_matching(request.headers)
        body = self._body_for_matching(request.body, request.headers)
        if url == request.url and headers is request.headers and body is request.body:
            return request
        return Request(method=request.method, url=url, headers=headers, body=body)

    def _headers_for_matching(self, headers: Headers) -> Headers:
        changed = False
        out: list[tuple[str, str]] = []
        for name, value in headers:
            new = value
            if name.lower() in self._headers:
                new = MATCH_PLACEHOLDER
            else:
                if "://" in value:
                    new = _redact_urls_in_text(value, self._query, _hide_for_matching)
                if "<REDACTED-" in new:
                    new = _PLACEHOLDER_RE.sub(MATCH_PLACEHOLDER, new)
            changed = changed or new != value
            out.append((name, new))
        return tuple(out) if changed else headers

    def _body_for_matching(self, body: bytes, headers: Headers) -> bytes:
        new = self._body(body, headers, _hide_for_matching)
        if b"<REDACTED-" in new:
            new = _ANY_PLACEHOLDER_BYTES_RE.sub(MATCH_PLACEHOLDER.encode(), new)
        return body if new == body else new


def _as_text(body: bytes) -> tuple[str, str]:
    """``body`` as text and the codec that gives its bytes back: UTF-8, or Latin-1 when it is not UTF-8.

    Latin-1 keeps a binary body at one byte per character (decoded with surrogate escapes, a 50 MB
    binary body would take 200 MB); URLs and their query names are ASCII either way.
    """
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return body.decode("latin-1"), "latin-1"


def _hide_for_matching(secret: str, raw: str) -> str:
    return MATCH_PLACEHOLDER


def _hide_header_value(lname: str, value: str, hide: Hide) -> str:
    """Hide a redacted header's secret, keeping what is not secret: auth scheme, cookie names, attributes."""
    if not value.strip():
        return value
    if lname in ("authorization", "proxy-authorization"):
        m = _AUTH_RE.fullmatch(value)
        if m:
            return f"{m[1]}{m[2]}{hide(m[3], m[3])}"
        return hide(value.strip(), value)
    if lname == "cookie":
        return ";".join(_hide_cookie_pair(part, hide) for part in value.split(";"))
    if lname in ("set-cookie", "set-cookie2"):
        first, sep, attributes = value.partition(";")
        return _hide_cookie_pair(first, hide) + sep + attributes
    return hide(value.strip(), value)


def _hide_cookie_pair(pair: str, hide: Hide) -> str:
    """``name=value`` -> ``name=<placeholder>`` (leading whitespace kept); a bare value is hidden whole."""
    if not pair.strip():
        return pair
    name, eq, value = pair.partition("=")
    if not eq:
        lead = pair[: len(pair) - len(pair.lstrip())]
        return lead + hide(pair.strip(), pair)
    if not value.strip():
        return pair
    return f"{name}={hide(value.strip(), value)}"


def _redact_url(url: str, names: frozenset[str], hide: Hide) -> str:
    """``url`` with the values of query parameters named in ``names`` hidden; the rest byte-identical."""
    q = url.find("?")
    if q < 0:
        return url
    h = url.find("#", q)
    end = h if h >= 0 else len(url)
    query = url[q + 1 : end]
    new = _redact_pairs(query, names, hide, _URL_QUERY_SEP)
    return url if new == query else url[: q + 1] + new + url[end:]


def _redact_pairs(text: str, names: frozenset[str], hide: Hide, sep: re.Pattern[str]) -> str:
    """``a=1&b=2`` with the values of the names in ``names`` hidden; separators and order kept."""
    parts = sep.split(text)
    changed = False
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if not eq or not value:
            continue
        if unquote_plus(name).strip().lower() in names:
            parts[i] = f"{name}={hide(_decode(value), value)}"
            changed = True
    return "".join(parts) if changed else text


def _decode(value: str) -> str:
    try:
        return unquote_plus(value, errors="strict")
    except UnicodeDecodeError:
        return unquote(value)


def _redact_urls_in_text(text: str, names: frozenset[str], hide: Hide) -> str:
    """Every absolute URL in ``text`` (also written ``https:\\/\\/``) with its query secrets hidden."""
    if "://" not in text and ":\\/\\/" not in text:
        return text
    return _URL_RE.sub(lambda m: _redact_url(m.group(0), names, hide), text)


def _redact_json(
    body: bytes, fields: frozenset[str], query: frozenset[str], hide: Hide
) -> tuple[bool, bytes | None]:
    """(whether ``body`` is JSON, the re-serialized body if a field or URL query secret was hidden)."""
    try:
        doc = json.loads(body.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return False, None
    try:
        new, changed = _walk(doc, fields, query, hide)
    except RecursionError:
        return False, None
    if not changed:
        return True, None
    try:
        return True, json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
        return True, json.dumps(new, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _redact_json_pairs(text: str, fields: frozenset[str], hide: Hide) -> str:
    """JSON-looking ``text`` with the string or number values of configured keys hidden."""

    def sub(m: re.Match[str]) -> str:
        if _json_unescape(m[1]).lower() not in fields:
            return m[0]
        raw = m[3] if m[3] is not None else m[4]
        if not raw:
            return m[0]
        secret = _json_unescape(raw) if m[3] is not None else raw
        return f'"{m[1]}"{m[2]}"{hide(secret, raw)}"'

    return _JSON_PAIR_RE.sub(sub, text)


def _json_unescape(inner: str) -> str:
    """The text of a JSON string literal's inside (``a\\u0062`` -> ``ab``); itself if not valid."""
    if "\\" not in inner:
        return inner
    try:
        return str(json.loads(f'"{inner}"'))
    except ValueError:
        return inner


def _walk(node: object, fields: frozenset[str], query: frozenset[str], hide: Hide) -> tuple[object, bool]:
    """Hide configured keys' values at any depth and query secrets inside URL strings; key order kept."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        changed = False
        for key, value in node.items():
            if fields and str(key).lower() in fields:
                new = _hide_json_value(value, hide)
            else:
                new, sub = _walk(value, fields, query, hide)
                changed = changed or sub
            changed = changed or new is not value
            out[key] = new
        return (out, True) if changed else (node, False)
    if isinstance(node, list):
        items = [_walk(item, fields, query, hide) for item in node]
        if any(sub for _, sub in items):
            return [item for item, _ in items], True
        return node, False
    if isinstance(node, str) and "://" in node:
        new_text = _redact_urls_in_text(node, query, hide)
        return (new_text, True) if new_text != node else (node, False)
    return node, False


def _hide_json_value(value: object, hide: Hide) -> object:
    """A configured field's value -> its placeholder; null, booleans and empty values are no secrets."""
    if value is None or isinstance(value, bool) or value in ("", [], {}):
        return value
    if isinstance(value, str):
        return hide(value, value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hide(text, text)


def _sweep(
    headers: Headers, body: bytes, forms: dict[str, str], redacted: frozenset[str]
) -> tuple[Headers, bytes]:
    """Replace echoes of this interaction's long secrets anywhere else in the response."""
    secrets = sorted((s for s in forms if len(s) >= _SWEEP_MIN_LEN), key=len, reverse=True)
    if not secrets:
        return headers, body
    text_re = re.compile(r"(<REDACTED(?:-\d+)?>)|(" + "|".join(re.escape(s) for s in secrets) + ")")

    def text_sub(m: re.Match[str]) -> str:
        return m[1] or forms[m[2]]

    new_headers = tuple((k, v if k.lower() in redacted else text_re.sub(text_sub, v)) for k, v in headers)
    encoded: dict[bytes, str] = {}
    for s in secrets:
        try:
            encoded.setdefault(s.encode("utf-8"), forms[s])
        except UnicodeEncodeError:
            continue
    new_body = body
    if body and encoded and any(e in body for e in encoded):
        bytes_re = re.compile(rb"(<REDACTED(?:-\d+)?>)|(" + b"|".join(re.escape(e) for e in encoded) + rb")")

        def bytes_sub(m: re.Match[bytes]) -> bytes:
            return m[1] or encoded[m[2]].encode("ascii")

        new_body = bytes_re.sub(bytes_sub, body)
    return (headers if new_headers == headers else new_headers), new_body
