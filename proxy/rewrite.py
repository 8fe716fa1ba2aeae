"""Response rewrites at serve time: keep clients on the proxy, and make recorded polling fast.

``rewrite_origins`` points absolute upstream URLs (``Location``, ``Operation-Location``, ``resourceLocation``,
``nextLink``...) at the proxy, so a client that follows them stays on it. ``rewrite_retry_after`` shrinks
advertised polling delays so a long recorded operation replays in moments.

The wire rule for delays (``delay_headers``, used by ``rewrite_retry_after`` and the scenario machine):
every delay the proxy puts on the wire is valid HTTP. ``Retry-After`` carries whole seconds (RFC 9110
§10.2.3, ``delay-seconds = 1*DIGIT``: strict clients such as urllib3's ``Retry`` and azure-mgmt generated
code crash on ``0.05``); a fraction of a second travels in ``retry-after-ms`` (Azure's millisecond header).
azure-core reads ``Retry-After`` first when it is there (and takes ``0`` as "use my own polling interval"),
so on an answer below 400 (a status monitor, the 202) a fractional delay is sent *without* ``Retry-After``
and azure-core sleeps the milliseconds. On an error answer (429, 503, any 400+) ``Retry-After`` stays,
rounded *up* to whole seconds, because its presence is what makes urllib3's ``Retry`` and azure-core's
``RetryPolicy`` retry (azure-core retries a 429 to a POST only then).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from datetime import UTC
from email.utils import parsedate_to_datetime

from proxy.errors import ConfigError
from proxy.model import Headers, Response, header_value, origin_of

URL_HEADERS: tuple[str, ...] = (
    "location",
    "operation-location",
    "azure-asyncoperation",
    "content-location",
    "resource-location",
)
"""Response headers whose value is a URL a client may follow."""

MS_HEADERS: tuple[str, ...] = ("retry-after-ms", "x-ms-retry-after-ms")
"""Delay headers in milliseconds (Azure)."""

# scheme, "//" or JSON-escaped "\/\/", authority; then the boundary is checked by hand.
_BODY_URL_RE = re.compile(rb"(?i)(https?):(//|\\/\\/)([^/\\?#\"\s]+)")
_HEADER_URL_RE = re.compile(r"(?i)\s*(https?)://([^/?#\s]+)")
_JSON_START = re.compile(rb"\s*[\[{]")
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*")


def _origins(origins: Iterable[str]) -> frozenset[str]:
    out = set()
    for origin in origins:
        try:
            out.add(origin_of(origin.strip()))
        except ValueError:  # a bad port: cannot be matched anyway
            continue
    return frozenset(out)


def _same_origin(scheme: str, authority: str, origins: frozenset[str]) -> bool:
    try:
        return origin_of(f"{scheme}://{authority}") in origins
    except ValueError:
        return False


def rewrite_origins(response: Response, origins: Iterable[str], proxy_origin: str) -> Response:
    """``response`` with absolute URLs on one of ``origins`` moved to ``proxy_origin``.

    Covers the ``URL_HEADERS`` and, in JSON bodies, every URL in a string (escaped ``\\/`` too). Only the
    origin changes, the rest of the body stays byte-identical; ``https://example.com.evil`` is not
    ``https://example.com``. The same object is returned when nothing changed.
    """
    wanted = _origins(origins)
    target = proxy_origin.strip().rstrip("/")
    if not wanted:
        return response
    headers = _rewrite_header_urls(response.headers, wanted, target)
    body = _rewrite_body_urls(response, wanted, target)
    if headers is response.headers and body is response.body:
        return response
    return response.replace(headers=headers, body=body)


def _rewrite_header_urls(headers: Headers, origins: frozenset[str], target: str) -> Headers:
    changed = False
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if name.lower() in URL_HEADERS:
            m = _HEADER_URL_RE.match(value)
            if m and _same_origin(m[1], m[2], origins):
                value = value[: m.start(1)] + target + value[m.end(2) :]
                changed = True
        out.append((name, value))
    return tuple(out) if changed else headers


def _rewrite_body_urls(response: Response, origins: frozenset[str], target: str) -> bytes:
    body = response.body
    if not body or (b"://" not in body and b":\\/\\/" not in body):
        return body
    ctype = (response.header("content-type") or "").lower()
    if "json" not in ctype and not _JSON_START.match(body):
        return body
    plain = target.encode("utf-8")
    escaped = plain.replace(b"/", b"\\/")
    changed = False

    def sub(m: re.Match[bytes]) -> bytes:
        nonlocal changed
        after = body[m.end() : m.end() + 2]
        if after and not (after[:1] in (b"/", b"?", b"#", b'"') or after in (b"\\/", b'\\"')):
            return m[0]
        try:
            scheme, authority = m[1].decode("ascii"), m[3].decode("utf-8")
        except UnicodeDecodeError:
            return m[0]
        if not _same_origin(scheme, authority, origins):
            return m[0]
        changed = True
        return escaped if m[2] != b"//" else plain

    new = _BODY_URL_RE.sub(sub, body)
    return new if changed else body


def _ms(seconds: float) -> str:
    """Whole milliseconds, rounded up: never 0 for a delay above 0 (azure-core reads 0 as "none given")."""
    return str(math.ceil(round(seconds * 1000, 6)))


def delay_headers(seconds: float, status: int) -> tuple[tuple[str, str], ...]:
    """The headers that advertise ``seconds`` on an answer with ``status``, valid HTTP (see the
    module docstring): ``Retry-After: 2``; ``retry-after-ms: 500`` (below 400);
    ``Retry-After: 1`` + ``retry-after-ms: 500`` (400 and above)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"retry-after must be a finite number of seconds >= 0, not {seconds!r}")
    if float(seconds).is_integer():
        return (("Retry-After", str(int(seconds))),)
    ms = ("retry-after-ms", _ms(seconds))
    if status >= 400:
        return (("Retry-After", str(math.ceil(seconds))), ms)
    return (ms,)


def rewrite_retry_after(response: Response, seconds: float) -> Response:
    """``response`` with its advertised delays (Retry-After, retry-after-ms, x-ms-retry-after-ms) set to
    ``seconds``, every header valid HTTP (the module docstring). Only an answer that advertised a
    delay changes; the same object comes back when nothing did.

    Whole seconds: each header present says ``seconds`` (in ms for the ms headers). A fraction: the ms
    headers present say it (``retry-after-ms`` is added when none is); ``Retry-After`` is dropped below 400
    and rounded up to whole seconds from 400 on.
    """
    wanted = dict(delay_headers(seconds, response.status))
    names = [name.lower() for name, _ in response.headers]
    if "retry-after" not in names and not any(n in MS_HEADERS for n in names):
        return response
    whole = "retry-after-ms" not in wanted
    ms_value = str(round(seconds * 1000)) if whole else wanted["retry-after-ms"]
    add_ms = not whole and not any(n in MS_HEADERS for n in names)
    out: list[tuple[str, str]] = []
    for name, value in response.headers:
        lname = name.lower()
        if lname == "retry-after":
            if "Retry-After" in wanted:
                out.append((name, wanted["Retry-After"]))
            if add_ms:
                out.append(("retry-after-ms", ms_value))
                add_ms = False
        elif lname in MS_HEADERS:
            out.append((name, ms_value))
        else:
            out.append((name, value))
    new = tuple(out)
    return response if new == response.headers else response.replace(headers=new)


def parse_retry_after(headers: Headers, now: float | None = None) -> float | None:
    """Seconds the response asks the client to wait, or None when it does not say (or says junk).

    ``Retry-After`` as seconds (a fraction is read, as lenient clients do) or an HTTP-date (time left from
    ``now``, never negative), ``retry-after-ms`` and ``x-ms-retry-after-ms`` in milliseconds. When several
    say a delay, the **shortest** counts: clients differ in which one they read (azure-core for Python reads
    Retry-After first; the Azure SDKs' retry policies for 429/503 read the millisecond headers first; the
    JavaScript poller, @azure/core-lro, reads only Retry-After), and a client that obeys any of them is
    within its rights.
    """
    found: list[float] = []
    value = header_value(headers, "retry-after")
    if value is not None:
        m = _NUMBER.fullmatch(value)
        if m:
            found.append(float(m[1]))
        else:
            when = _http_date(value)
            if when is not None:
                found.append(max(0.0, when - (time.time() if now is None else now)))
    for name in MS_HEADERS:
        ms = header_value(headers, name)
        if ms is not None:
            m = _NUMBER.fullmatch(ms)
            if m:
                found.append(float(m[1]) / 1000)
    return min(found) if found else None


def dated_retry_after(headers: Headers) -> bool:
    """Whether ``headers`` say Retry-After as something other than seconds (an HTTP-date: the delay it
    means depends on when it is read)."""
    value = header_value(headers, "retry-after")
    return value is not None and _NUMBER.fullmatch(value) is None


def _http_date(value: str) -> float | None:
    """An HTTP-date as a POSIX timestamp, or None."""
    if not any(c.isalpha() for c in value):
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        if parsed.tzinfo is None:  # "-0000": UTC by RFC 5322
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
