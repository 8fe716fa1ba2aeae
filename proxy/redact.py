"""Secrets out of what is saved and shown: headers, query parameters, form and multipart fields, JSON.

What is a secret (the rules are README's "Secrets never reach the cassette"):

- a header, query parameter, form or multipart field, or JSON key *named* like one: the configured names
  (``DEFAULT_*`` and ``--redact-*``), and any name whose last word, in any case style (``accessToken``,
  ``X-Vault-Token``, ``client_secret``, ``sessionJwt``), is one of ``SECRET_WORDS`` (``is_secret_name``);
- a value *shaped* like a credential wherever it is, URL paths included: a JWT, a Telegram bot token,
  GitHub, GitLab, Slack, Google, Stripe and Vault tokens (``TOKEN_FORMATS``); a URL's userinfo password;
- a query pair inside an encoded URL inside another (``return=%2Fb%3Fsig%3D...``);
- every encoded form of a secret found so in the same exchange, wherever else it appears: raw,
  %-encoded (once or twice), base64 and base64url at any alignment, JSON-escaped (``\\/``, ``\\u002b``).

Bodies are read decoded (a gzip request body is saved decoded). ``Redactor.interaction`` gives the copy
to save, with readable numbered placeholders (``<REDACTED-1>``), the same one for the same secret during
the redactor's life. The secret-to-placeholder map lives in memory only: no secret, nor any hash of one,
is ever written. ``Redactor.for_matching`` maps a live request (real secret) and a saved one (placeholder)
to the same normalized request, so redaction never breaks matching. ``Redactor.scrub`` hides the same
secrets in what is printed (console lines, ``--report``, the journal). Live traffic is never touched.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import unquote, unquote_plus

from proxy import decompress
from proxy.model import (
    Headers,
    Interaction,
    Request,
    Response,
    header_value,
    header_values,
    set_header,
    without_headers,
)

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

SECRET_WORDS: frozenset[str] = frozenset(
    {
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "session",
        "jwt",
        "signature",
        "sig",
        "assertion",
        "apikey",
        "verifier",
        "sas",
        "cookie",
        "key",
    }
)
"""A name whose last word (camelCase, snake_case, kebab-case, dotted; trailing digits ignored) is one of
these is a secret's name: ``accessToken``, ``X-Vault-Token``, ``db_password``, ``sessionJwt``,
``X-Hub-Signature-256``. The last word only: ``token_type``, ``keyId``, ``signatureVersion``,
``max_tokens``, ``keyword``, ``passwordPolicy`` are not. Also ``sessionId`` and ``connectionString``."""

_SECRET_SUFFIXES = (
    "token",
    "secret",
    "password",
    "passwd",
    "jwt",
    "signature",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "sessionid",
    "sessid",
    "credential",
    "credentials",
)
"""A one-word name ending so is a secret's too: ``accesstoken``, ``clientsecret``, ``PHPSESSID``."""

KEY_NOT_SECRET: frozenset[str] = frozenset(
    {
        "partition",
        "row",
        "sort",
        "idempotency",
        "cache",
        "object",
        "foreign",
        "lookup",
        "group",
        "public",
        "socket",
        "routing",
        "index",
        "dedup",
        "deduplication",
        "search",
        "shard",
        "range",
        "sequence",
    }
)
"""``...Key`` names that are not secrets (``partitionKey``, ``Idempotency-Key``, ``Sec-WebSocket-Key``).
A bare ``key`` is a secret as a header, query or form name (Google's ``key=``), not as a JSON key (too
often a dictionary's key); ``key1``/``key2`` are (Azure's account keys)."""

TOKEN_NOT_SECRET: frozenset[str] = frozenset(
    {"page", "continuation", "skip", "next", "sync", "resume", "cursor", "change", "delta"}
)
"""``...Token`` names that are pagination or sync cursors, not credentials: ``continuationToken``,
``nextPageToken``, ``$skiptoken``, ``NextToken``, ``syncToken``."""

NOT_SECRET_NAMES: frozenset[str] = frozenset(
    {"access-control-allow-credentials", *(f"{w}token" for w in TOKEN_NOT_SECRET)}
)
"""Names the words would take for secrets that never hold one (lower-case)."""

TOKEN_FORMATS: tuple[str, ...] = (
    r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",  # JWT (JWS compact, JSON header)
    r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}",  # GitHub
    r"glpat-[A-Za-z0-9_-]{20,}",  # GitLab personal access token
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"[sr]k_(?:live|test)_[0-9A-Za-z]{16,}",  # Stripe
    r"hvs\.[A-Za-z0-9_-]{20,}",  # HashiCorp Vault service token
)
"""Values that are credentials wherever they are (bodies, any header, URL paths and query values)."""

_BOT_TOKEN = r"(?<![0-9])\d{6,12}:[A-Za-z0-9_-]{30,}"
"""A Telegram bot token (``/bot123456789:AA.../getMe``): looked for in URLs and headers only."""

_TOKEN_RE = re.compile("|".join((*TOKEN_FORMATS, _BOT_TOKEN)))
_BODY_TOKEN_RE = re.compile("|".join(TOKEN_FORMATS))
_BODY_TOKEN_HINTS = (b"eyJ", b"gh", b"glpat-", b"xox", b"AIza", b"_live_", b"_test_", b"hvs.")
"""A body holding none of these holds no ``TOKEN_FORMATS`` value."""
_BODY_TOKEN_NEEDLES = tuple(h.lower() for h in _BODY_TOKEN_HINTS)
"""The same, lower-case (a JSON body is parsed when it holds one: its strings are then searched)."""
_NAME_NEEDLES = (
    b"token",
    b"secret",
    b"passw",
    b"pwd",
    b"passphrase",
    b"auth",
    b"credential",
    b"sess",
    b"jwt",
    b"sig",
    b"assertion",
    b"key",
    b"verifier",
    b"sas",
    b"cookie",
    b"connectionstring",
)
"""Lower-case: a body holding none of these can name no secret by ``SECRET_WORDS``."""

_TOKEN_MIN_LEN = 15
"""No ``TOKEN_FORMATS`` value (nor bot token) is shorter."""


def _has_token(text: str, bot: bool = True) -> bool:
    """Whether ``text`` holds a ``TOKEN_FORMATS`` value (or, with ``bot``, a Telegram bot token).

    Literal checks first (each format has one): the regex alone costs microseconds on every URL and
    header of every request.
    """
    if len(text) < _TOKEN_MIN_LEN:
        return False
    if (
        "eyJ" in text
        or "gh" in text
        or "glpat-" in text
        or "xox" in text
        or "AIza" in text
        or "_live_" in text
        or "_test_" in text
        or "hvs." in text
    ):
        return (_TOKEN_RE if bot else _BODY_TOKEN_RE).search(text) is not None
    if not bot:
        return False
    i = text.find(":", 6)
    while 0 <= i <= len(text) - 31:
        if text[i - 6 : i].isdigit():
            return _TOKEN_RE.search(text) is not None
        i = text.find(":", i + 1)
    return False


_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@functools.lru_cache(maxsize=8192)
def is_secret_name(name: str, where: str = "query") -> bool:
    """Whether ``name`` (a header: ``where="header"``, a query/form field: ``"query"``, a JSON key:
    ``"json"``) names a secret by ``SECRET_WORDS``, in any case style."""
    if name.lower().lstrip("$") in NOT_SECRET_NAMES:
        return False
    words: list[str] = [str(w).lower() for w in _WORD_RE.findall(name)]
    numbered = False
    while words and words[-1].isdigit():
        words.pop()
        numbered = True
    if not words:
        return False
    last, previous = words[-1], (words[-2] if len(words) > 1 else "")
    if last == "key":
        if previous in KEY_NOT_SECRET:
            return False
        return bool(previous) or where != "json" or numbered
    if last == "token" and previous in TOKEN_NOT_SECRET:
        return False
    if last in SECRET_WORDS:
        return True
    if (last == "id" and previous in ("session", "sess")) or (last == "string" and previous == "connection"):
        return True
    return last.endswith(_SECRET_SUFFIXES)


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


Predicate = Callable[[str], bool]


class Redactor:
    """Replaces secrets by placeholders in what is saved, and normalizes them in what is matched."""

    def __init__(
        self,
        headers: Iterable[str] = DEFAULT_HEADERS,
        query: Iterable[str] = DEFAULT_QUERY,
        json_fields: Iterable[str] = DEFAULT_JSON_FIELDS,
        enabled: bool = True,
        *,
        patterns: bool = True,
        keep: Iterable[str] = (),
    ) -> None:
        self._headers = frozenset(h.strip().lower() for h in headers)
        self._query = frozenset(q.strip().lower() for q in query)
        self._json = frozenset(f.strip().lower() for f in json_fields)
        self._form = self._query | self._json
        self._keep = frozenset(k.strip().lower() for k in keep)
        """Names the patterns would redact, kept as they are (``--redact-except``)."""
        self.patterns = patterns
        """Whether names are also judged by ``SECRET_WORDS`` and values by ``TOKEN_FORMATS``."""
        self._json_needles = tuple(f.encode("utf-8") for f in self._json) + (
            _NAME_NEEDLES + _BODY_TOKEN_NEEDLES if patterns else ()
        )
        self._query_needles = tuple(q.encode("utf-8") for q in self._query) + (
            _NAME_NEEDLES if patterns else ()
        )
        # bytes.lower() folds ASCII only: a non-ASCII name can hide from the needles, so always look
        self._needles_exact = all(n.isascii() for n in self._form)
        self.enabled = enabled
        self._placeholders: dict[str, str] = {}
        self._lock = threading.Lock()
        self._scrubbed: dict[str, str] = {}
        """``scrub``'s answers: a poll's path is printed again and again (memory only, bounded)."""
        self._matching: dict[tuple[str, str, Headers], tuple[bool, Request]] = {}
        """``for_matching`` of requests without a body, by method, URL and headers: (changed, result)."""

    @property
    def header_names(self) -> frozenset[str]:
        """Configured redacted header names, lower-case (more are found by ``is_secret_name``)."""
        return self._headers

    @property
    def query_names(self) -> frozenset[str]:
        """Configured redacted query parameter (and form field) names, lower-case."""
        return self._query

    @property
    def json_fields(self) -> frozenset[str]:
        """Configured redacted JSON keys (any depth, case-insensitive; also form fields), lower-case."""
        return self._json

    # ------------------------------------------------------------------ names

    def secret_header(self, name: str) -> bool:
        """Whether header ``name`` holds a secret (configured, or by ``is_secret_name``)."""
        lname = name.lower()
        if lname in self._headers:
            return True
        return self.patterns and lname not in self._keep and is_secret_name(lname, "header")

    def secret_param(self, name: str) -> bool:
        """Whether query parameter, form or multipart field ``name`` holds a secret."""
        lname = name.strip().lower()
        if lname in self._form:
            return True
        return self.patterns and lname not in self._keep and is_secret_name(name.strip(), "query")

    def _json_rule(self, key: str) -> int:
        """2: a configured JSON key (any non-empty value is hidden); 1: a secret's name by the patterns
        (string values are hidden, objects and lists searched); 0: not a secret's name."""
        lkey = key.lower()
        if lkey in self._json:
            return 2
        if self.patterns and lkey not in self._keep and is_secret_name(key, "json"):
            return 1
        return 0

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

    def headers(self, headers: Headers) -> Headers:
        """Request ``headers`` as ``request`` saves them (placeholders numbered alike): for the journal."""
        if not self.enabled or not headers:
            return headers
        return self._request(Request(method="GET", url="http://h/", headers=headers), _Seen()).headers

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
        request = _decoded_request(request)
        url = self._url(request.url, hide)
        headers = self._headers_for_save(request.headers, hide)
        body = self._body(request.body, request.headers, hide)
        if seen.forms:
            sweep = _sweep_for(seen.forms)
            url = sweep.text(url)
            headers = sweep.headers(headers, self.secret_header)
            body = sweep.bytes(body)
        if url == request.url and headers == request.headers and body == request.body:
            return request
        return Request(method=request.method, url=url, headers=headers, body=body)

    def _response(self, response: Response, seen: _Seen) -> Response:
        hide = self._hider(seen)
        headers = self._headers_for_save(response.headers, hide)
        body = self._body(response.body, response.headers, hide)
        if seen.forms:
            sweep = _sweep_for(seen.forms)
            headers = sweep.headers(headers, self.secret_header)
            body = sweep.bytes(body)
        if headers == response.headers and body == response.body:
            return response
        return Response(status=response.status, reason=response.reason, headers=headers, body=body)

    def _url(self, url: str, hide: Hide) -> str:
        return _redact_url(url, self.secret_param, hide, self.patterns)

    def _headers_for_save(self, headers: Headers, hide: Hide) -> Headers:
        out: list[tuple[str, str]] = []
        for name, value in headers:
            if self.secret_header(name):
                value = _hide_header_value(name.lower(), value, hide)
            else:
                value = self._header_value(value, hide)
            out.append((name, value))
        result = tuple(out)
        return headers if result == headers else result

    def _header_value(self, value: str, hide: Hide) -> str:
        """A header value not secret as a whole: its URLs' secrets and credential-shaped values hidden."""
        if "://" in value:
            value = _redact_urls_in_text(value, self.secret_param, hide, self.patterns)
        elif value.startswith("/") and "?" in value:  # a relative Location, Content-Location...
            value = self._url(value, hide)
        if self.patterns and _has_token(value):
            value = _TOKEN_RE.sub(lambda m: hide(m[0], m[0]), value)
        return value

    def _body(self, body: bytes, headers: Headers, hide: Hide) -> bytes:
        """``body`` with form, multipart and JSON fields, token-shaped values and URL query secrets hidden;
        ``body`` itself if none.

        Saving and matching run these same steps, so they always agree. Every Content-Type field counts
        (a duplicate or empty one cannot hide the type). A form or multipart body has its fields hidden; a
        JSON one (declared, or starting with ``[`` or ``{``) is parsed and walked, which visits every
        string. Any other body, or one that does not parse, is searched as text whatever its type:
        secret ``"key": value`` pairs when it is JSON-looking (NDJSON, server-sent events, JSONP),
        credential-shaped values, and query secrets in every URL. Parsing and searching are skipped when
        no secret's name or token can occur (a 50 MB upload is not parsed for nothing); the checks are
        conservative, so skipping never changes the result.
        """
        if not body:
            return body
        ctype = ", ".join(header_values(headers, "content-type")).lower()
        new = body
        if "x-www-form-urlencoded" in ctype:
            text = body.decode("utf-8", "surrogateescape")
            new_text = _redact_pairs(text, self.secret_param, hide, _FORM_SEP, self.patterns)
            if new_text != text:
                new = new_text.encode("utf-8", "surrogateescape")
        elif "multipart/form-data" in ctype:
            new = _redact_multipart(body, ctype, self, hide)
        has_url = _URL_MARK_RE.search(new) is not None
        if new is body and ("json" in ctype or _JSON_START.match(body)):
            if not self._may_hold_secret(body, self._json_needles, has_url):
                return body
            parsed, changed = _redact_json(body, self, hide)
            if parsed:
                return body if changed is None else changed
        # not parsed as a whole (NDJSON, server-sent events, JSONP, truncated, XML, text, binary...):
        # secret fields in JSON-looking text, token-shaped values, then every URL's query secrets
        find_pairs = bool(self._json or self.patterns) and (
            any(t in ctype for t in _JSONISH_TYPES) or bool(_JSON_START.match(body))
        )
        find_pairs = find_pairs and self._mentions(new, self._json_needles)
        # token formats are case-sensitive: no lower-cased copy of a large body to look for them
        find_tokens = self.patterns and any(h in new for h in _BODY_TOKEN_HINTS)
        find_urls = has_url and self._may_hold_secret(new, (), has_url)
        if find_tokens and not (find_pairs or find_urls):
            find_tokens = _is_utf8(new)  # a binary body (fails in its first bytes) is not decoded for nothing
        if find_pairs or find_urls or find_tokens:
            text, codec = _as_text(new)
            find_tokens = find_tokens and codec == "utf-8"
            new_text = _redact_json_pairs(text, self._json_rule, hide) if find_pairs else text
            new_text = (
                _redact_urls_in_text(new_text, self.secret_param, hide, self.patterns)
                if find_urls
                else new_text
            )
            if find_tokens:
                new_text = _BODY_TOKEN_RE.sub(lambda m: hide(m[0], m[0]), new_text)
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
        """Whether ``body`` can hold a secret field (one of ``field_needles``) or a URL query secret.

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

        The body goes through the same steps as when saving (decoded first), so a saved request and the
        live one it came from always normalize alike, whatever secrets the live one carries. Cheap when
        there is nothing to redact: the body is parsed or searched only when it mentions a secret's name
        or token, or holds a URL that may carry a secret query parameter.
        """
        if not self.enabled:
            return request
        if request.body:
            return self._for_matching(request)
        key = (request.method, request.url, request.headers)  # a poller sends these again and again
        known = self._matching.get(key)
        if known is None:
            if len(self._matching) >= _MATCHING_CACHE_SIZE:
                self._matching.clear()
            found = self._for_matching(request)
            known = self._matching[key] = (found is not request, found)
        changed, found = known
        return found if changed else request

    def _for_matching(self, request: Request) -> Request:
        original = request
        request = _decoded_request(request)
        seen: dict[str, str] = {}

        def hide(secret: str, raw: str) -> str:
            if not _PLACEHOLDER_RE.fullmatch(secret):
                seen.setdefault(secret, MATCH_PLACEHOLDER)
                seen.setdefault(raw, MATCH_PLACEHOLDER)
            return MATCH_PLACEHOLDER

        url = self._url(request.url, hide)
        headers = self._headers_for_matching(request.headers, hide)
        body = self._body(request.body, request.headers, hide)
        if seen:
            sweep = _sweep_for(seen)
            url = sweep.text(url)
            headers = sweep.headers(headers, self.secret_header)
            body = sweep.bytes(body)
        if "REDACTED-" in url.upper():
            url = _ANY_PLACEHOLDER_RE.sub(MATCH_PLACEHOLDER, url)
        if b"<REDACTED-" in body:
            body = _ANY_PLACEHOLDER_BYTES_RE.sub(MATCH_PLACEHOLDER.encode(), body)
        if url == original.url and headers == original.headers and body == original.body:
            return original
        return Request(method=request.method, url=url, headers=headers, body=body)

    def _headers_for_matching(self, headers: Headers, hide: Hide) -> Headers:
        changed = False
        out: list[tuple[str, str]] = []
        for name, value in headers:
            new = value
            if self.secret_header(name):
                if value.strip():
                    _hide_header_value(name.lower(), value, hide)  # collects the secret for the sweep
                new = MATCH_PLACEHOLDER
            else:
                new = self._header_value(value, hide)
                if "<REDACTED-" in new:
                    new = _PLACEHOLDER_RE.sub(MATCH_PLACEHOLDER, new)
            changed = changed or new != value
            out.append((name, new))
        return tuple(out) if changed else headers

    # ---------------------------------------------------------------- printing

    def scrub(self, text: str) -> str:
        """``text`` to print (a console line, a URL, a report): the secrets the rules find in its URLs,
        ``name=value`` pairs and credential-shaped values hidden by the placeholders the cassette uses."""
        if not self.enabled or not text:
            return text
        done = self._scrubbed.get(text)
        if done is None:
            if len(self._scrubbed) >= _SCRUB_CACHE_SIZE:
                self._scrubbed.clear()
            done = self._scrubbed[text] = self._scrub(text)
        return done

    def _scrub(self, text: str) -> str:
        hide = self._hider(_Seen())
        new = text
        if "://" in new:
            new = _redact_urls_in_text(new, self.secret_param, hide, self.patterns)
        if "=" in new:
            new = _TEXT_PAIR_RE.sub(
                lambda m: m[0] if not self.secret_param(m[1]) else f"{m[1]}{m[2]}{hide(_decode(m[3]), m[3])}",
                new,
            )
        if self.patterns and _has_token(new):
            new = _TOKEN_RE.sub(lambda m: hide(m[0], m[0]), new)
        return new


_MATCHING_CACHE_SIZE = 4096
_SCRUB_CACHE_SIZE = 4096

_TEXT_PAIR_RE = re.compile(r"""(?<![\w.~%-])([\w.~-]+)(=|%3[Dd])((?:<REDACTED(?:-\d+)?>|[^\s&;,)"'<>])+)""")
"""A ``name=value`` pair in printed text (a path, a diff); its value runs to a separator or a space."""


class _Sweep:
    """Every encoded form of some secrets, to replace wherever else they appear (echoes, paths).

    Forms: raw; each character that is not a letter or digit also %-encoded (upper or lower hex, once or
    twice), ``+`` for a space, JSON-escaped (``\\/``, ``\\u002b``); base64 and base64url at the three
    alignments a secret takes inside a longer encoded value (``base64("Bearer " + token)``). Secrets
    shorter than ``_SWEEP_MIN_LEN`` are left: too likely to collide with ordinary text.
    """

    def __init__(self, forms: dict[str, str]) -> None:
        secrets = sorted((s for s in forms if len(s) >= _SWEEP_MIN_LEN), key=len, reverse=True)
        self.placeholders: dict[str, str] = {}
        text_alts: list[str] = []
        byte_alts: list[bytes] = []
        self.needles: list[bytes] = []
        for i, secret in enumerate(secrets):
            group = f"s{i}"
            self.placeholders[group] = forms[secret]
            text_pattern, byte_pattern, needle = _secret_pattern(secret)
            encoded = _base64_forms(secret)
            text_alts.append(f"(?P<{group}>{text_pattern}|{'|'.join(re.escape(e) for e in encoded)})")
            byte_alts.append(
                b"(?P<"
                + group.encode()
                + b">"
                + byte_pattern
                + b"|"
                + b"|".join(re.escape(e.encode()) for e in encoded)
                + b")"
            )
            self.needles += [needle, *(e.encode() for e in encoded)]
        self.active = bool(secrets)
        if self.active:
            self._text_re = re.compile(r"(?P<keep><REDACTED(?:-\d+)?>)|" + "|".join(text_alts))
            self._bytes_re = re.compile(rb"(?P<keep><REDACTED(?:-\d+)?>)|" + b"|".join(byte_alts))

    def _may_hold(self, data: bytes) -> bool:
        return any(n in data for n in self.needles)

    def text(self, text: str) -> str:
        if not self.active or not text or not self._may_hold(text.encode("utf-8", "surrogateescape")):
            return text
        return self._text_re.sub(self._sub_text, text)

    def _sub_text(self, m: re.Match[str]) -> str:
        group = m.lastgroup
        return m[0] if group == "keep" or group is None else self.placeholders[group]

    def bytes(self, body: bytes) -> bytes:
        if not self.active or not body or not self._may_hold(body):
            return body
        return self._bytes_re.sub(
            lambda m: (
                m[0]
                if m.lastgroup == "keep" or m.lastgroup is None
                else self.placeholders[m.lastgroup].encode("ascii")
            ),
            body,
        )

    def headers(self, headers: Headers, secret: Predicate) -> Headers:
        if not self.active:
            return headers
        new = tuple((k, v if secret(k) else self.text(v)) for k, v in headers)
        return headers if new == headers else new


def _sweep_for(forms: dict[str, str]) -> _Sweep:
    """The ``_Sweep`` of ``forms``, built once for the same secrets (a client sends the same token again and
    again: its regexes are not rebuilt for every request)."""
    return _cached_sweep(tuple(sorted(forms.items())))


@functools.lru_cache(maxsize=256)
def _cached_sweep(items: tuple[tuple[str, str], ...]) -> _Sweep:
    return _Sweep(dict(items))


def _secret_pattern(secret: str) -> tuple[str, bytes, bytes]:
    """(text regex, bytes regex, a literal every non-base64 form contains) for ``secret``'s forms."""
    text_parts: list[str] = []
    byte_parts: list[bytes] = []
    for ch in secret:
        if ch.isascii() and ch.isalnum():
            text_parts.append(ch)
            byte_parts.append(ch.encode())
            continue
        raw = ch.encode("utf-8", "surrogatepass")
        pct = "".join(f"%{b:02X}" for b in raw)
        alts = [re.escape(ch), _ci_hex(pct), _ci_hex(pct.replace("%", "%25"))]
        if ch == " ":
            alts.append(r"\+")
        if ch == "/":
            alts.append(r"\\/")
        if ch in '"\\':
            alts.append(re.escape("\\" + ch))
        if ord(ch) < 0x10000:
            alts.append(r"\\u" + _ci_hex(f"{ord(ch):04X}"))
        text_parts.append("(?:" + "|".join(alts) + ")")
        byte_alts = [re.escape(raw)] + [a.encode("ascii") for a in alts[1:]]
        byte_parts.append(b"(?:" + b"|".join(byte_alts) + b")")
    runs = re.findall(r"[A-Za-z0-9]+", secret)
    needle = max(runs, key=len).encode() if runs and max(len(r) for r in runs) >= 4 else b""
    return "".join(text_parts), b"".join(byte_parts), needle


def _ci_hex(text: str) -> str:
    """A regex for ``text`` (``%2F``, ``\\u002F``) with its hex letters in either case."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c in "ABCDEFabcdef" else re.escape(c) for c in text)


def _base64_forms(secret: str) -> list[str]:
    """The base64 and base64url characters that encode only ``secret``, at each of the three alignments."""
    raw = secret.encode("utf-8", "surrogatepass")
    out: list[str] = []
    for shift in (0, 1, 2):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + raw).decode("ascii")
            form = encoded[(8 * shift + 5) // 6 : 8 * (shift + len(raw)) // 6]
            if len(form) >= _SWEEP_MIN_LEN and form not in out:
                out.append(form)
    return out


DECODED_REQUEST_LIMIT = 100 << 20
"""Bytes a request body may decode to (a few kB of brotli can claim a GiB); past it, the body is kept
encoded."""


def _decoded_request(request: Request) -> Request:
    """``request`` with its body decoded from its Content-Encoding (gzip, deflate, br, zstd): secrets are
    found, saved and matched in the decoded body; ``request`` itself when not encoded or not decodable."""
    encoding = header_value(request.headers, "content-encoding")
    if not request.body or not encoding:
        return request
    encoding = encoding.strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate", "br", "zstd"):
        return request
    try:
        decoded = decompress.decode(request.body, encoding, DECODED_REQUEST_LIMIT)
    except ValueError:  # not valid in its encoding, or a bomb: matched and saved as it came
        return request
    headers = without_headers(request.headers, ["content-encoding"])
    if header_value(headers, "content-length") is not None:
        headers = set_header(headers, "Content-Length", str(len(decoded)))
    return Request(method=request.method, url=request.url, headers=headers, body=decoded)


def _as_text(body: bytes) -> tuple[str, str]:
    """``body`` as text and the codec that gives its bytes back: UTF-8, or Latin-1 when it is not UTF-8.

    Latin-1 keeps a binary body at one byte per character (decoded with surrogate escapes, a 50 MB
    binary body would take 200 MB); URLs and their query names are ASCII either way.
    """
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return body.decode("latin-1"), "latin-1"


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
        return "".join(
            _hide_set_cookie(part, hide) if i % 2 == 0 else part
            for i, part in enumerate(_FOLDED_COOKIE_RE.split(value))
        )
    return hide(value.strip(), value)


_FOLDED_COOKIE_RE = re.compile(r"(,)(?=\s*[^;,=\s]+=)")
"""Where a header folds several Set-Cookie values with commas (an Expires date's comma is not one)."""

COOKIE_ATTRIBUTES = frozenset(
    {
        "expires",
        "max-age",
        "domain",
        "path",
        "secure",
        "httponly",
        "samesite",
        "priority",
        "partitioned",
        "version",
        "comment",
        "commenturl",
        "discard",
        "port",
    }
)
"""Set-Cookie attributes kept as they are; any other attribute's value is hidden."""


def _hide_set_cookie(value: str, hide: Hide) -> str:
    """``name=value; Path=/; Other=x`` -> the value and unknown attributes' values hidden."""
    parts = value.split(";")
    out = [_hide_cookie_pair(parts[0], hide)]
    for attribute in parts[1:]:
        name, eq, _ = attribute.partition("=")
        out.append(
            attribute
            if not eq or name.strip().lower() in COOKIE_ATTRIBUTES
            else _hide_cookie_pair(attribute, hide)
        )
    return ";".join(out)


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


_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:(?://|\\/\\/)[^/@:?#\s]*:)([^/@?#\s]+)(@)")


def _redact_url(url: str, secret: Predicate, hide: Hide, tokens: bool = True) -> str:
    """``url`` with its secrets hidden: the userinfo password, credential-shaped path segments
    (``tokens``) and secret query values; the rest byte-identical."""
    q = url.find("?")
    head = url if q < 0 else url[:q]
    new_head = head
    if "@" in head:
        new_head = _USERINFO_RE.sub(lambda m: m[1] + hide(_decode(m[2]), m[2]) + m[3], new_head)
    if tokens and _has_token(new_head):
        new_head = _TOKEN_RE.sub(lambda m: hide(m[0], m[0]), new_head)
    if q < 0:
        return new_head
    h = url.find("#", q)
    end = h if h >= 0 else len(url)
    query = url[q + 1 : end]
    new = _redact_pairs(query, secret, hide, _URL_QUERY_SEP, tokens)
    if new == query and new_head == head:
        return url
    return new_head + "?" + new + url[end:]


def _redact_pairs(text: str, secret: Predicate, hide: Hide, sep: re.Pattern[str], tokens: bool = True) -> str:
    """``a=1&b=2`` with the values of secrets' names hidden; separators and order kept. A value that is an
    encoded URL or query (``return=%2Fp%3Fsig%3D...``) has its own pairs searched, and with ``tokens`` a
    credential-shaped value is hidden whatever its name."""
    parts = sep.split(text)
    changed = False
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if not eq or not value:
            continue
        if secret(unquote_plus(name)):
            parts[i] = f"{name}={hide(_decode(value), value)}"
            changed = True
            continue
        new = value
        if "%3" in value.upper():
            new = _redact_encoded_pairs(value, secret, hide)
        if tokens:
            decoded = _decode(new)
            if _has_token(decoded):
                new = (
                    hide(decoded, new)
                    if _TOKEN_RE.fullmatch(decoded)
                    else _TOKEN_RE.sub(lambda m: hide(m[0], m[0]), new)
                )
        if new != value:
            parts[i] = f"{name}={new}"
            changed = True
    return "".join(parts) if changed else text


_ENCODED_PAIR_RE = re.compile(
    r"(?i)(^|%3F|%26|%253F|%2526|[?&])([A-Za-z0-9_.~\-]+)(%3D|%253D)((?:[^&%\s\"'<>#]|%(?!26|2526)[0-9A-F]{2})*)"
)
"""A ``name=value`` pair written %-encoded (once or twice) inside a value: ``sig%3DAbC%252B``."""


def _redact_encoded_pairs(value: str, secret: Predicate, hide: Hide) -> str:
    def sub(m: re.Match[str]) -> str:
        if not m[4] or not secret(m[2]):
            return m[0]
        return f"{m[1]}{m[2]}{m[3]}{hide(_unquote_all(m[4]), m[4])}"

    return _ENCODED_PAIR_RE.sub(sub, value)


def _unquote_all(value: str) -> str:
    """``value`` %-decoded until it no longer changes (at most three times)."""
    for _ in range(3):
        decoded = _decode(value)
        if decoded == value:
            break
        value = decoded
    return value


def _decode(value: str) -> str:
    try:
        return unquote_plus(value, errors="strict")
    except UnicodeDecodeError:
        return unquote(value)


def _redact_urls_in_text(text: str, secret: Predicate, hide: Hide, tokens: bool = True) -> str:
    """Every absolute URL in ``text`` (also written ``https:\\/\\/``) with its secrets hidden."""
    if "://" not in text and ":\\/\\/" not in text:
        return text
    return _URL_RE.sub(lambda m: _redact_url(m.group(0), secret, hide, tokens), text)


def _redact_multipart(body: bytes, ctype: str, red: Redactor, hide: Hide) -> bytes:
    """A multipart/form-data body with the values of its secret fields hidden (file parts are kept)."""
    m = re.search(r'boundary="?([^";,\s]+)"?', ctype)
    if not m:
        return body
    delimiter = b"--" + m[1].encode("latin-1")
    parts = body.split(delimiter)
    changed = False
    for i in range(1, len(parts)):
        part = parts[i]
        head_end = part.find(b"\r\n\r\n")
        if head_end < 0:
            continue
        head = part[:head_end].decode("latin-1")
        name = re.search(r'(?i)content-disposition:[^\r\n]*?\bname="([^"]*)"', head)
        if not name or re.search(r"(?i)\bfilename\*?=", head):
            continue
        value = part[head_end + 4 :]
        tail = b"\r\n" if value.endswith(b"\r\n") else b""
        value = value[: len(value) - len(tail)]
        text = value.decode("utf-8", "surrogateescape")
        if red.secret_param(name[1]) and text.strip():
            new = hide(text, text)
        elif red.patterns and _has_token(text):
            new = _TOKEN_RE.sub(lambda t: hide(t[0], t[0]), text)
        else:
            continue
        parts[i] = part[: head_end + 4] + new.encode("utf-8", "surrogateescape") + tail
        changed = True
    return delimiter.join(parts) if changed else body


JsonRule = Callable[[str], int]


def _redact_json(body: bytes, red: Redactor, hide: Hide) -> tuple[bool, bytes | None]:
    """(whether ``body`` is JSON, the re-serialized body if a secret was hidden)."""
    try:
        doc = json.loads(body.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return False, None
    try:
        new, changed = _walk(doc, red, hide)
    except RecursionError:
        return False, None
    if not changed:
        return True, None
    try:
        return True, json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
        return True, json.dumps(new, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _redact_json_pairs(text: str, rule: JsonRule, hide: Hide) -> str:
    """JSON-looking ``text`` with the string values of secrets' keys hidden (and numbers, for configured
    keys)."""

    def sub(m: re.Match[str]) -> str:
        kind = rule(_json_unescape(m[1]))
        if not kind or (kind == 1 and m[3] is None):
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


def _walk(node: object, red: Redactor, hide: Hide) -> tuple[object, bool]:
    """Hide secrets' keys' values at any depth, credential-shaped strings, and query secrets inside URL
    strings; key order kept."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        changed = False
        for key, value in node.items():
            new: object
            rule = red._json_rule(str(key))
            if rule == 2 or (
                rule == 1 and isinstance(value, str | int | float) and not isinstance(value, bool)
            ):
                lkey = str(key).lower()
                if isinstance(value, str) and lkey in _HEADER_LIKE_KEYS:  # an echo of request headers
                    new = _hide_header_value(lkey, value, hide)
                else:
                    new = _hide_json_value(value, hide) if rule == 2 or isinstance(value, str) else value
            else:
                new, sub = _walk(value, red, hide)
                changed = changed or sub
            changed = changed or new is not value
            out[key] = new
        return (out, True) if changed else (node, False)
    if isinstance(node, list):
        items = [_walk(item, red, hide) for item in node]
        if any(sub for _, sub in items):
            return [item for item, _ in items], True
        return node, False
    if isinstance(node, str):
        new_text = node
        if "://" in node:
            new_text = _redact_urls_in_text(node, red.secret_param, hide, red.patterns)
        elif "%3" in node.upper():
            new_text = _redact_encoded_pairs(node, red.secret_param, hide)
        if red.patterns and _has_token(new_text, bot=False):
            new_text = _BODY_TOKEN_RE.sub(lambda m: hide(m[0], m[0]), new_text)
        return (new_text, True) if new_text != node else (node, False)
    return node, False


_HEADER_LIKE_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
"""JSON keys whose values are hidden as the header of that name is (the auth scheme, cookie names kept)."""


def _hide_json_value(value: object, hide: Hide) -> object:
    """A configured field's value -> its placeholder; null, booleans and empty values are no secrets."""
    if value is None or isinstance(value, bool) or value in ("", [], {}):
        return value
    if isinstance(value, str):
        return hide(value, value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hide(text, text)


def shown_url(url: str) -> str:
    """``url`` as a message may show it: userinfo password, secret query values and credential-shaped
    path segments replaced by ``<REDACTED>`` (the default rules)."""
    return _redact_url(url, _DEFAULT.secret_param, _hide_for_matching)


_DEFAULT = Redactor()
