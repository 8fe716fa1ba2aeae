"""vcrpy-format cassettes: load, canonical dump, atomic save, append-as-you-go writing, ordered playback.

YAML goes through vcrpy's own serializer (``vcr.serialize`` + ``vcr.serializers.yamlserializer``), so a
cassette we write is byte-identical to one vcrpy writes, and vcrpy / pytest-recording load ours. Files are
written and parsed as streams and ``!!binary`` is encoded in slices, so a 50 MB body is not also held as
a 70 MB text, its bytes and a list of lines. Loading builds the same data as vcrpy's loader and
``deserialize`` without their intermediate objects (``proxy/yamlfast.py``, ``_direct``): a
10,000-interaction cassette loads in under a second instead of several.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import yaml
from vcr.request import Request as VcrRequest
from vcr.serialize import CASSETTE_FORMAT_VERSION, deserialize, serialize
from vcr.serializers import yamlserializer

from . import decompress, loading, yamlfast
from .errors import CassetteError, CassetteNotFoundError, ConfigError
from .matching import Matcher, from_vcr_request, to_vcr_request
from .model import Headers, Interaction, Request, Response, header_value, set_header, without_headers

logger = logging.getLogger("proxy")

HEADER = f"version: {CASSETTE_FORMAT_VERSION}\ninteractions:\n"
"""Top of a cassette that is being appended to: later ``- request: ...`` items extend the list."""

_REQUEST_KEYS = frozenset({"method", "uri", "body", "headers"})


# ---------------------------------------------------------------- reading


class _Parsed:
    """A vcrpy "serializer" that hands back data we already parsed and checked (no second parse)."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def deserialize(self, _text: str) -> Any:
        return self._data


def _position(text: str, offset: object, in_bytes: bool) -> str:
    """``line:column`` (1-based) of a character offset into ``text`` (a byte offset of its UTF-8 when
    ``in_bytes``: libyaml counts bytes)."""
    if not isinstance(offset, int) or offset < 0:
        return "1:1"
    before = text[:offset].encode("utf-8")[:offset].decode("utf-8", "ignore") if in_bytes else text[:offset]
    line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
    return f"{line}:{column}"


def _yaml_error(path: Path, e: yaml.YAMLError, text: str = "") -> CassetteError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "invalid YAML"
        if e.context and e.problem:
            what = f"{e.problem} ({e.context})"
        if mark is not None:
            return CassetteError(f"{path}:{mark.line + 1}:{mark.column + 1}: {what}")
        return CassetteError(f"{path}: {what}")
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML refuses (NUL, other controls)
        code = ord(e.character) if isinstance(e.character, str) and len(e.character) == 1 else e.character
        character = f" (#x{code:04x})" if isinstance(code, int) else ""
        where = _position(text, e.position, in_bytes=not isinstance(e.character, str))
        return CassetteError(f"{path}:{where}: invalid YAML: {e.reason}{character}")
    return CassetteError(f"{path}: invalid YAML: {' '.join(str(e).split())}")


def _shown(value: object) -> str:
    """A short rendering of a value from the file, for messages: never the repr of a whole list or
    mapping, which aliases can make exponentially long (``version: *bomb``), nor of a whole body."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value[:61] if isinstance(value, str | bytes) else value)
    return text if len(text) <= 60 else text[:57] + "..."


DataPath = tuple[str | int, ...]


class _Invalid(CassetteError):
    """Valid YAML that is not a valid cassette; ``at`` is where, as keys and list indices, for a line."""

    def __init__(self, path: Path, at: DataPath, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.at, self.message = path, at, message


_ITEM_COST = 64
"""What one interaction counts in ``_Budget`` besides its texts: less than any interaction's YAML text."""


class _Budget:
    """The texts of a cassette, counted as they would be with every alias written out, must stay within
    twice the file's size (plus 1 MiB): a small file whose aliases repeat a large body or header list in
    thousands of interactions would otherwise be copied that many times in memory."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.left = 2 * size + (1 << 20)

    def spend(self, at: DataPath, amount: int) -> None:
        self.left -= amount
        if self.left < 0:
            raise _Invalid(
                self.path,
                at,
                f"interaction {at[1]}: the cassette is too big once its aliases are expanded (more than "
                "twice the file's size): write the data out instead of repeating large aliases (*name)",
            )


def _size(value: object) -> int:
    return len(value) + 2 if isinstance(value, str | bytes) else 8


def _headers_cost(headers: dict[Any, Any], allow_empty: bool) -> int:
    """What valid ``headers`` spend of the budget, as ``_check_headers`` counts it, or -1 when any of them
    may be invalid: then ``_check_headers`` goes through them one by one, to say what and where."""
    total = 0
    for name, values in headers.items():
        if name.__class__ is not str or values.__class__ is not list or not (values or allow_empty):
            return -1
        total += len(name) + 2
        for v in values:
            if v.__class__ is str or v.__class__ is bytes:
                total += len(v) + 2
            elif v.__class__ is int:
                total += 8
            else:
                return -1
    return total


def _check_headers(
    path: Path, at: DataPath, label: str, headers: Any, allow_empty: bool, budget: _Budget
) -> None:
    if headers.__class__ is dict:  # the common case at once: valid, within the budget
        cost = _headers_cost(headers, allow_empty)
        if 0 <= cost <= budget.left:
            budget.left -= cost
            return
    where = f"interaction {at[1]}: {label}"
    if not isinstance(headers, dict):
        raise _Invalid(path, at, f"{where}: headers must be a mapping of name to list of values")
    for name, values in headers.items():
        here = (*at, name)
        if not isinstance(name, str):
            raise _Invalid(path, at, f"{where}: header name {_shown(name)} is not a string")
        if not isinstance(values, list):
            raise _Invalid(
                path, here, f"{where}: header {_shown(name)} must be a list of values, not {_shown(values)}"
            )
        if not values and not allow_empty:
            raise _Invalid(path, here, f"{where}: header {_shown(name)} has no value")
        budget.spend(here, _size(name))
        for i, v in enumerate(values):
            if not isinstance(v, str | bytes) and (not isinstance(v, int) or isinstance(v, bool)):
                raise _Invalid(
                    path, (*here, i), f"{where}: header {_shown(name)} has a non-text value {_shown(v)}"
                )
            budget.spend(here, _size(v))


def _check(path: Path, data: Any, size: int) -> None:
    """Reject what vcrpy would choke on later (or replay wrongly), naming the file and interaction;
    ``size`` is the file's, for the budget of alias expansion."""
    if isinstance(data, list):
        raise _Invalid(path, (), "old pre-1.0 vcrpy cassette format (a list); re-record it")
    if not isinstance(data, dict):
        raise _Invalid(path, (), "not a vcrpy cassette (top level must be a mapping)")
    if "version" in data and data["version"] != CASSETTE_FORMAT_VERSION:
        raise _Invalid(
            path, ("version",), f"unsupported cassette version {_shown(data['version'])} (expected 1)"
        )
    if "interactions" not in data:
        raise _Invalid(path, (), "no 'interactions' key")
    items = data["interactions"]
    if not isinstance(items, list):
        raise _Invalid(path, ("interactions",), "'interactions' must be a list")
    budget = _Budget(path, size)
    for i, item in enumerate(items):
        at: DataPath = ("interactions", i)
        where = f"interaction {i}"
        budget.spend(at, _ITEM_COST)
        if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
            raise _Invalid(path, at, f"{where}: needs a 'request' mapping")
        if not isinstance(item.get("response"), dict):
            raise _Invalid(path, at, f"{where}: needs a 'response' mapping")
        req, resp = item["request"], item["response"]
        if missing := sorted(_REQUEST_KEYS - req.keys()):
            raise _Invalid(path, (*at, "request"), f"{where}: request is missing {', '.join(missing)}")
        if extra := sorted(str(k) for k in req.keys() - _REQUEST_KEYS):
            raise _Invalid(
                path, (*at, "request", extra[0]), f"{where}: request has unknown keys {', '.join(extra)}"
            )
        if not isinstance(req["method"], str) or not isinstance(req["uri"], str):
            bad = "method" if not isinstance(req["method"], str) else "uri"
            raise _Invalid(path, (*at, "request", bad), f"{where}: request method and uri must be strings")
        if isinstance(req["body"], dict | list | int | float):
            raise _Invalid(
                path, (*at, "request", "body"), f"{where}: request body must be null, text or !!binary"
            )
        budget.spend(at, _size(req["method"]) + _size(req["uri"]) + _size(req["body"]))
        _check_headers(path, (*at, "request", "headers"), "request", req["headers"], False, budget)
        status = resp.get("status")
        if not isinstance(status, dict) or "code" not in status:
            raise _Invalid(
                path, (*at, "response", "status"), f"{where}: response needs status: {{code, message}}"
            )
        code = status["code"]
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 999:
            raise _Invalid(
                path,
                (*at, "response", "status", "code"),
                f"{where}: response status code {_shown(code)} is not an HTTP status",
            )
        if not isinstance(status.get("message"), str):
            raise _Invalid(
                path,
                (*at, "response", "status"),
                f"{where}: response status has no message (vcrpy needs one)",
            )
        _check_headers(path, (*at, "response", "headers"), "response", resp.get("headers"), True, budget)
        body = resp.get("body")
        if not isinstance(body, dict) or "string" not in body:
            raise _Invalid(
                path, (*at, "response", "body"), f"{where}: response body must be a mapping with 'string'"
            )
        if not isinstance(body["string"], str | bytes | None):
            raise _Invalid(
                path,
                (*at, "response", "body", "string"),
                f"{where}: response body string must be text or !!binary",
            )
        budget.spend(at, _size(status["message"]) + _size(body["string"]))


def _located(error: _Invalid, text: str) -> CassetteError:
    """``error`` at the line and column of the node it is about (found by composing ``text`` into nodes:
    nothing is constructed), or as it is when the document cannot be composed."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:  # it parsed once already; anything odd here only costs the line number
        return error
    if node is None:
        return error
    for key in error.at:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            child = node.value[key]
        if child is None:
            break
        node = child
    mark = node.start_mark
    return CassetteError(f"{error.path}:{mark.line + 1}:{mark.column + 1}: {error.message}")


def _text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


DECODED_BODY_LIMIT = 100 << 20
"""Bytes a cassette's compressed body may decode to unless told otherwise (the default --max-body-size)."""

_MAGIC = {"gzip": b"\x1f\x8b", "x-gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}
"""How a body in these encodings starts: one that does and still fails to decode is corrupt."""


class _BodyError(Exception):
    """A response body that cannot be decoded from its Content-Encoding; ``response`` is its dict in the
    file's data (to find which interaction, and its line)."""

    def __init__(self, response: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.response, self.message = response, message
        self.index: int | None = None


def _decoded(headers: Headers, body: bytes, limit: int | None) -> tuple[Headers, bytes]:
    """The body decoded when it is still in its Content-Encoding, header dropped and length fixed.

    vcrpy's httpx stub saves the raw compressed bytes with ``Content-Encoding`` (unless
    ``decode_compressed_response``); urllib3 (requests) saves them decoded but keeps the header. The proxy
    serves bodies decoded, so the first shape must be decoded here; the second fails to decode and stays.
    Decoding stops past ``limit`` bytes (a decompression bomb): ``decompress.TooLarge``; a body that has
    the encoding's signature but does not decode raises ``decompress.Invalid``.
    """
    encoding = (header_value(headers, "content-encoding") or "").strip().lower()
    if not body or encoding not in decompress.ENCODINGS:
        return headers, body
    try:
        decoded = decompress.decode(body, encoding, limit)
    except decompress.Invalid:
        magic = _MAGIC.get(encoding)
        if magic is not None and body.startswith(magic):
            raise
        return headers, body  # already decoded
    headers = without_headers(headers, ["content-encoding"])
    if header_value(headers, "content-length") is not None:
        headers = set_header(headers, "Content-Length", str(len(decoded)))
    return headers, decoded


def _body_problem(error: ValueError, encoding: str, limit: int | None) -> str:
    if isinstance(error, decompress.TooLarge) and limit is None:
        return f"response body (Content-Encoding: {encoding}) is too large to decode: {error}"
    if isinstance(error, decompress.TooLarge):
        return (
            f"response body (Content-Encoding: {encoding}) decodes to more than {limit:,} bytes "
            "(--max-body-size): a decompression bomb, or raise --max-body-size"
        )
    return f"response body says Content-Encoding: {encoding} but does not decode: {error}"


def _response_from_dict(d: dict[str, Any], limit: int | None = DECODED_BODY_LIMIT) -> Response:
    headers: Headers = tuple(
        (name, v) if name.__class__ is str and v.__class__ is str else (str(name), _text(v))
        for name, values in d["headers"].items()
        for v in values
    )
    body = d["body"]["string"]
    if isinstance(body, str):
        body = body.encode("utf-8")
    try:
        headers, body = _decoded(headers, body or b"", limit)
    except (decompress.TooLarge, decompress.Invalid) as e:
        encoding = (header_value(headers, "content-encoding") or "").strip()
        raise _BodyError(d, _body_problem(e, encoding, limit)) from None
    return Response(
        status=int(d["status"]["code"]),
        reason=str(d["status"]["message"]),
        headers=headers,
        body=body,
    )


def recording_marker(path: Path) -> Path:
    """The file beside a cassette in vcrpy's layout while new exchanges are appended to it in place:
    if the proxy is killed, it says the file's last item may be torn (see ``_without_torn_tail``)."""
    return path.parent / f".{path.name}.recording"


def _without_torn_tail(text: str, path: Path) -> Any:
    """A cassette in the append layout whose last item was cut by a kill: the items before it, or None.

    Each exchange is appended in one write, but a write can in principle stop part-way when the
    process is killed; such a tail is dropped instead of making the whole recording unreadable.
    """
    # ours, or vcrpy's that a killed proxy was extending in place (CassetteWriter.extending)
    prefix = next((p for p in (HEADER, "interactions:\n") if text.startswith(p)), None)
    if prefix is None or (prefix != HEADER and not recording_marker(path).exists()):
        return None
    cut = len(text)
    for _ in range(2):  # the torn item starts at the last line that begins with "-" (maybe cut itself)
        cut = text.rfind("\n-", 0, cut)
        if cut < len(prefix) - 1:
            return None
        try:
            return _deserialize(text[: cut + 1])
        except yaml.YAMLError:
            continue
    return None


_VCR_LOADER: Any = getattr(yamlserializer, "_CassetteLoader", None) or getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)  # vcrpy >= 8.2.1 has its safe _CassetteLoader; never an unsafe one


def _deserialize(text: str) -> Any:
    """vcrpy's ``yamlserializer.deserialize(text)``: the same data or error, built by yamlfast if it can."""
    try:
        return yamlfast.load(text, _VCR_LOADER)
    except yamlfast.Unusual:
        return yamlserializer.deserialize(text)


class _Loader(_VCR_LOADER):  # type: ignore[misc]
    """vcrpy's safe YAML loader, decoding ``!!binary`` from the text itself (not from an ASCII copy)."""


def _construct_binary(loader: Any, node: Any) -> bytes:
    # Bad base64 raises here; _parse_streamed then lets vcrpy's loader say where.
    return binascii.a2b_base64(loader.construct_scalar(node))


_Loader.add_constructor("tag:yaml.org,2002:binary", _construct_binary)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise CassetteNotFoundError(f"{path}: cassette not found") from None
    except OSError as e:
        raise CassetteError(f"{path}: cannot read cassette: {e.strerror or e}") from None


def _parse_streamed(path: Path, progress: loading.Loading) -> Any:
    """The cassette's data parsed straight from the file (no copy of its text: large bodies), or None.

    None when it does not parse or is not a cassette: ``load`` then reads the text with vcrpy's own
    loader, to say why or to recover a torn tail.
    """
    try:
        with path.open("rb") as f:
            try:
                counted = cast(BinaryIO, loading.CountingReader(f, progress))
                data = yamlfast.load(counted, _Loader)  # reads the file in pieces
            except yamlfast.Unusual:  # merge keys, old Python tags, ...: PyYAML's own constructor
                f.seek(0)
                data = yaml.load(f, Loader=_Loader)
            size = os.fstat(f.fileno()).st_size
        _check(path, data, size)
    except FileNotFoundError:
        raise CassetteNotFoundError(f"{path}: cassette not found") from None
    except OSError as e:
        raise CassetteError(f"{path}: cannot read cassette: {e.strerror or e}") from None
    except Exception:
        return None
    return data


def load(path: Path, max_body_size: int | None = DECODED_BODY_LIMIT) -> list[Interaction]:
    """The interactions of a vcrpy cassette; CassetteNotFoundError when missing or empty.

    A compressed body may decode to ``max_body_size`` bytes at most (None: no limit); past that, or when
    it does not decode, a CassetteError says which interaction and where.
    """
    path = Path(path)
    size = _size_of(path)
    loading.check_fits(path, size)
    with yamlfast.no_gc(), loading.tracking(path, size) as progress:  # no_gc: a million objects
        data = _parse_streamed(path, progress)
        if data is None:
            data = _parse_text(path)
        items = data["interactions"]
        progress.stage = f"building {len(items):,} interactions"
        try:
            try:
                out = _direct(items, max_body_size)
            except _BodyError:
                raise
            except Exception:  # an unusual body, or something vcrpy refuses: its own way says what
                out = _through_vcrpy(path, data, max_body_size)
        except _BodyError as e:
            index = e.index
            if index is None:
                index = next((i for i, item in enumerate(items) if item["response"] is e.response), 0)
            error = _Invalid(path, ("interactions", index, "response", "body"), f"interaction {index}: {e}")
            del data, items
            raise _located(error, path.read_text("utf-8")) from None
        del data, items  # before the collector resumes: it would walk all of it once more
    return out


def _request_from_dict(d: dict[str, Any]) -> Request:
    """What vcrpy's ``Request._from_dict`` then ``from_vcr_request`` make of a checked request, for a body
    that is null, text or bytes (others raise ``TypeError``: they go through vcrpy).

    vcrpy's ``HeadersDict`` keeps the first value of each header's list, one entry per name ignoring
    case: the first spelling, the last value. vcrpy parses the URI: one it refuses raises here too.
    """
    body = d["body"]
    if body is None:
        body = b""
    elif body.__class__ is str:
        body = body.encode("utf-8")
    elif body.__class__ is not bytes:
        raise TypeError("request body for vcrpy")
    uri = d["uri"]
    urlsplit(uri)
    named = d["headers"]
    pairs: Any = [(name, values[0]) for name, values in named.items()]
    if len({name.lower() for name in named}) < len(pairs):  # the same name in two spellings
        merged: dict[str, tuple[str, Any]] = {}
        for name, value in pairs:
            old = merged.get(name.lower())
            merged[name.lower()] = (name if old is None else old[0], value)
        pairs = merged.values()
    headers = tuple(p if p[1].__class__ is str else (p[0], _text(p[1])) for p in pairs)
    return Request(method=d["method"], url=uri, headers=headers, body=body)


def _direct(items: list[Any], limit: int | None) -> list[Interaction]:
    """Checked items as ``_through_vcrpy`` makes them, without building vcrpy's objects on the way (a
    third of a large load); anything it would refuse or treat specially raises, to be done that way."""
    requests = [_request_from_dict(item["request"]) for item in items]  # vcrpy makes them all first
    return [
        Interaction(r, _response_from_dict(item["response"], limit))
        for r, item in zip(requests, items, strict=True)
    ]


def _through_vcrpy(path: Path, data: Any, limit: int | None) -> list[Interaction]:
    """The interactions of checked cassette data through vcrpy's ``deserialize`` and its ``Request``."""
    try:
        requests, responses = deserialize("", _Parsed(data))[:2]
    except Exception as e:
        raise CassetteError(f"{path}: not a valid vcrpy cassette: {type(e).__name__}: {e}") from None
    out: list[Interaction] = []
    for i, (vreq, vresp) in enumerate(zip(requests, responses, strict=True)):
        try:
            out.append(Interaction(from_vcr_request(vreq), _response_from_dict(vresp, limit)))
        except _BodyError as e:
            e.index = i
            raise
        except Exception as e:
            raise CassetteError(f"{path}: interaction {i}: {type(e).__name__}: {e}") from None
    return out


def _parse_text(path: Path) -> Any:
    """The cassette's data from its text: the error, with a location, when it is not a cassette."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CassetteNotFoundError(f"{path}: cassette not found") from None
    except OSError as e:
        raise CassetteError(f"{path}: cannot read cassette: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line, column = before.count(b"\n") + 1, e.start - before.rfind(b"\n")
        raise CassetteError(
            f"{path}:{line}:{column}: not UTF-8 text (bad byte at offset {e.start}): "
            "a cassette is UTF-8 YAML, binary bodies are written as !!binary"
        ) from None
    if not text.strip():
        raise CassetteNotFoundError(f"{path}: cassette not found (the file is empty)")
    try:
        data = _deserialize(text)
        _check(path, data, len(raw))
    except (yaml.YAMLError, CassetteError) as e:
        original = _yaml_error(path, e, text) if isinstance(e, yaml.YAMLError) else e
        data = _without_torn_tail(text, path)
        if data is None:
            raise (_located(original, text) if isinstance(original, _Invalid) else original) from None
        try:
            _check(path, data, len(raw))
        except CassetteError:
            raise (_located(original, text) if isinstance(original, _Invalid) else original) from None
        logger.warning("%s: ignored an incomplete last exchange (the recording proxy was killed)", path)
    except Exception as e:  # e.g. RecursionError on absurd nesting: still one line, no traceback
        raise CassetteError(f"{path}: cannot parse cassette: {type(e).__name__}: {e}") from None
    return data


# ---------------------------------------------------------------- writing


def _response_dict(r: Response) -> dict[str, Any]:
    """vcrpy's response dict: header names keep their (first-seen) case, repeated names share one list."""
    headers: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for name, value in r.headers:
        key = names.setdefault(name.lower(), name)
        headers.setdefault(key, []).append(value)
    return {
        "status": {"code": r.status, "message": r.reason},
        "headers": headers,
        "body": {"string": r.body},
    }


def _vcr_dict(interactions: Sequence[Interaction]) -> dict[str, Any]:
    return {
        "requests": [to_vcr_request(i.request) for i in interactions],
        "responses": [_response_dict(i.response) for i in interactions],
    }


_VCR_DUMPER: Any = getattr(yamlserializer, "_CassetteDumper", None) or yamlserializer.Dumper
_B64_SLICE = 57 * 16384
"""Bytes base64-encoded at a time: whole lines of 57 bytes (76 characters), as PyYAML writes them."""
_WRITE_BUFFER = 1 << 20
"""Bytes buffered before a write: an item up to this size goes to the file in one ``os.write``."""


class _Dumper(_VCR_DUMPER):  # type: ignore[misc]
    """vcrpy's YAML dumper, writing ``!!binary`` bodies a slice at a time (the same text).

    PyYAML builds one object per 76-character line, about two bodies' worth of memory for a large one.
    """


def _represent_binary(dumper: Any, data: bytes) -> Any:
    view = memoryview(data)
    text = "".join(
        base64.encodebytes(view[i : i + _B64_SLICE]).decode("ascii") for i in range(0, len(view), _B64_SLICE)
    )
    return dumper.represent_scalar("tag:yaml.org,2002:binary", text, style="|")


_Dumper.add_representer(bytes, _represent_binary)


class _Yaml:
    """A vcrpy "serializer" with that dumper: returns the text, or writes it (UTF-8) to ``stream``.

    Writing to the file as it is produced keeps a large cassette from being held as text, then as bytes.
    ``items_only`` dumps only the interactions list: the ``- request: ...`` items under ``interactions:``.
    """

    def __init__(self, stream: BinaryIO | None = None, items_only: bool = False) -> None:
        self.stream = stream
        self.items_only = items_only

    def serialize(self, data: dict[str, Any]) -> str:
        value = data["interactions"] if self.items_only else data
        if self.stream is None:
            return str(yaml.dump(value, Dumper=_Dumper))
        yaml.dump(value, self.stream, Dumper=_Dumper, encoding="utf-8")
        return ""


def _serialize(interactions: Sequence[Interaction], serializer: _Yaml) -> str:
    try:
        return str(serialize(_vcr_dict(interactions), serializer))
    except yaml.YAMLError as e:
        raise CassetteError(f"cannot serialize interactions: {e}") from None


def dumps(interactions: Sequence[Interaction]) -> str:
    """The canonical vcrpy YAML for ``interactions`` (what vcrpy itself writes; never ``metadata``)."""
    return _serialize(interactions, _Yaml())


def dump_items(interactions: Sequence[Interaction]) -> str:
    """The ``- request: ...`` items alone, exactly as they appear under ``interactions:`` in ``dumps``."""
    if not interactions:
        return ""
    return _serialize(interactions, _Yaml(items_only=True))


def _write_items(stream: BinaryIO, interactions: Sequence[Interaction]) -> None:
    """``dump_items(interactions)`` in UTF-8, written to ``stream`` as it is produced."""
    if interactions:
        _serialize(interactions, _Yaml(stream, items_only=True))


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a temp file beside ``path`` with ``write(file)``, fsync, rename it over ``path``."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o666
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(path.stat().st_mode)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with open(fd, "wb", buffering=_WRITE_BUFFER, closefd=False) as f:
                write(f)
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode != 0o666:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CassetteError(f"{path}: cannot write cassette: {_reason(e)}") from None
        raise
    _fsync_dir(path.parent)


def save(path: Path, interactions: Sequence[Interaction]) -> None:
    """Write ``interactions`` to ``path`` atomically in canonical form (parents created).

    The same text as ``dumps``, written one item at a time: PyYAML builds a whole document in memory
    before writing it, which for a cassette of large bodies means all of them again at once.
    """

    def write(f: BinaryIO) -> None:
        if not interactions:
            f.write(dumps(()).encode("utf-8"))
            return
        f.write(b"interactions:\n")
        for interaction in interactions:
            _write_items(f, [interaction])
        f.write(f"version: {CASSETTE_FORMAT_VERSION}\n".encode())

    _atomic_write(Path(path), write)


class CassetteWriter:
    """Saves exchanges as they happen without rewriting the whole file per exchange.

    The file is laid out as ``version: 1`` then ``interactions:``; PyYAML does not indent a block
    sequence under a mapping key, so each appended ``- request: ...`` item (one ``os.write`` on an
    ``O_APPEND`` fd, then fsync) leaves a complete cassette that vcrpy loads. An item larger than
    ``_WRITE_BUFFER`` (a large body) is written as it is serialized, in several writes: a kill in between
    leaves a torn last item, which ``load`` drops. ``close(final)`` rewrites the file in vcrpy's canonical
    order. Nothing is created until there is something to write.
    """

    def __init__(self, path: Path, initial: Sequence[Interaction] = ()) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._count = 0
        self._closed = False
        self._lock = threading.Lock()
        if initial:
            self._rewrite(initial)
        else:
            self._check_writable()

    @classmethod
    def extending(cls, path: Path, initial: Sequence[Interaction]) -> CassetteWriter:
        """A writer for the cassette ``path`` that holds ``initial`` (as loaded from it), which new
        exchanges follow: in place when its layout allows (``cassette_stream.appendable_end``: vcrpy's or
        ours, last item whole), so none of it is rewritten; otherwise rewritten once in our layout."""
        from . import cassette_stream

        writer = cls(path)
        if not initial:
            return writer  # the first append writes the file
        end = cassette_stream.appendable_end(writer.path, HEADER.encode())
        if end is None:
            writer._rewrite(initial)
            return writer
        try:
            fd = os.open(writer.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise CassetteError(f"{path}: cannot open cassette for appending: {_reason(e)}") from None
        try:
            if os.fstat(fd).st_size > end:
                os.ftruncate(fd, end)  # vcrpy's closing ``version: 1``: written back by finish()
                os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise CassetteError(f"{path}: cannot append to cassette: {_reason(e)}") from None
        writer._fd, writer._count = fd, len(initial)
        try:
            recording_marker(writer.path).touch()
        except OSError as e:
            writer._close_fd()
            raise CassetteError(f"{path}: cannot write beside the cassette: {_reason(e)}") from None
        return writer

    def finish(self, drop: Collection[int] = ()) -> bool:
        """Flush, close and make the file canonical by streaming it from disk, without the items numbered
        in ``drop``; False when the file is not as this writer left it (nothing done: see ``close``)."""
        from . import cassette_stream

        with self._lock:
            if self._closed:
                return True
            self._closed = True
            wrote = self._fd is not None
            self._close_fd()
            if not wrote:
                return True
            try:
                done = cassette_stream.write_canonical(
                    self.path, HEADER.encode(), self._count, drop, _atomic_write
                )
            except OSError as e:
                raise CassetteError(f"{self.path}: cannot rewrite cassette: {_reason(e)}") from None
            if done:
                with contextlib.suppress(FileNotFoundError):
                    recording_marker(self.path).unlink()
            return done

    def _check_writable(self) -> None:
        """Fail now, not at the first exchange, when the cassette's directory cannot take a file."""
        directory = self.path.parent
        probe = directory / f".{self.path.name}.{secrets.token_hex(6)}.probe"
        try:
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a directory")
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise CassetteError(f"{self.path}: cannot write cassette: {_reason(e)}") from None

    def _rewrite(self, interactions: Sequence[Interaction]) -> None:
        """Replace the file atomically with ``interactions`` (append layout) and reopen it for appending."""
        self._close_fd()

        def write(f: BinaryIO) -> None:
            f.write(HEADER.encode("utf-8"))
            _write_items(f, interactions)

        _atomic_write(self.path, write)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise CassetteError(f"{self.path}: cannot open cassette for appending: {_reason(e)}") from None
        self._count = len(interactions)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError as e:
                raise CassetteError(f"{self.path}: cannot flush cassette: {_reason(e)}") from None
            finally:
                os.close(fd)

    @property
    def count(self) -> int:
        """How many interactions the file holds."""
        return self._count

    def append(self, interaction: Interaction) -> None:
        """Add one interaction to the file; a small one in a single write, so it is never half an item."""
        with self._lock:
            if self._closed:
                raise CassetteError(f"{self.path}: cassette writer is closed")
            if self._fd is None:
                self._rewrite([interaction])
                return
            fd = self._fd
            try:
                size = os.fstat(fd).st_size
            except OSError as e:
                raise CassetteError(f"{self.path}: cannot append to cassette: {_reason(e)}") from None
            try:
                with open(fd, "wb", buffering=_WRITE_BUFFER, closefd=False) as f:
                    _write_items(f, [interaction])
                os.fsync(fd)
            except (OSError, CassetteError) as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # never leave a partial item behind
                if isinstance(e, CassetteError):
                    raise
                raise CassetteError(f"{self.path}: cannot append to cassette: {_reason(e)}") from None
            self._count += 1

    def close(self, final: Sequence[Interaction] | None = None) -> None:
        """Flush and close; with ``final``, rewrite the file atomically in canonical ``dumps`` form.

        An empty ``final`` on a writer that never wrote leaves the disk untouched.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            wrote = self._fd is not None
            self._close_fd()
            if final is not None and (final or wrote):
                save(self.path, final)
                self._count = len(final)

    def __enter__(self) -> CassetteWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------- playback


@dataclass(frozen=True, slots=True)
class Played:
    """A recorded answer; ``extra`` means the recorded sequence was used up and the policy supplied it."""

    index: int
    interaction: Interaction
    extra: bool = False


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Every matching interaction has been played and the policy is "error"."""

    indices: tuple[int, ...]


WHEN_EXHAUSTED: tuple[str, ...] = ("repeat-last", "cycle", "error")

_NEAREST_KEYS = 150  # distinct request keys examined by nearest()
_NEAREST_PER_KEY = 10  # members per key examined when body/header matchers are configured


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] or "/"


class Playback:
    """Answers requests from recorded interactions, identical requests in recorded order.

    Interactions are indexed by ``Matcher.key``; each key keeps a cursor to its first unplayed
    interaction, so a play is O(1) amortized (plus vcrpy's body/header checks on same-key candidates).
    """

    def __init__(
        self, interactions: Sequence[Interaction], matcher: Matcher, when_exhausted: str = "repeat-last"
    ) -> None:
        if when_exhausted not in WHEN_EXHAUSTED:
            raise ConfigError(
                f"unknown when-exhausted policy {when_exhausted!r}; choose from: {', '.join(WHEN_EXHAUSTED)}"
            )
        self.matcher = matcher
        self.when_exhausted = when_exhausted
        self._lock = threading.Lock()
        self._items: list[Interaction] = []
        self._keys: list[Hashable] = []
        self._counts: list[int] = []
        self._vcr: list[VcrRequest | None] = []
        self._buckets: dict[Hashable, list[int]] = {}
        self._cursor: dict[Hashable, int] = {}
        self._cycle: dict[Hashable, int] = {}
        self._by_path: dict[str, list[Hashable]] = {}
        self._by_parent: dict[str, list[str]] = {}
        self._by_method: dict[str, list[Hashable]] = {}
        for interaction in interactions:
            self._index(interaction)

    def _index(self, interaction: Interaction) -> int:
        idx = len(self._items)
        key = self.matcher.key(interaction.request)
        self._items.append(interaction)
        self._keys.append(key)
        self._counts.append(0)
        self._vcr.append(None)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [idx]
            path = interaction.request.path
            if path not in self._by_path:
                self._by_path[path] = []
                self._by_parent.setdefault(_parent(path), []).append(path)
            self._by_path[path].append(key)
            self._by_method.setdefault(interaction.request.method.upper(), []).append(key)
        else:
            bucket.append(idx)
        return idx

    def _vcr_request(self, idx: int) -> VcrRequest:
        cached = self._vcr[idx]
        if cached is None:
            cached = self._vcr[idx] = to_vcr_request(self._items[idx].request)
        return cached

    @property
    def interactions(self) -> Sequence[Interaction]:
        return tuple(self._items)

    @property
    def play_counts(self) -> tuple[int, ...]:
        """How often each interaction has been played (by index)."""
        return tuple(self._counts)

    def __len__(self) -> int:
        return len(self._items)

    def unplayed(self) -> list[int]:
        """Indices of interactions not played yet, in file order."""
        with self._lock:
            return [i for i, c in enumerate(self._counts) if c == 0]

    def _answer(self, idx: int, extra: bool) -> Played:
        self._counts[idx] += 1
        return Played(idx, self._items[idx], extra)

    def play(self, request: Request) -> Played | Exhausted | None:
        """The next recorded answer to ``request``; None when nothing recorded matches it."""
        key = self.matcher.key(request)
        with self._lock:
            bucket = self._buckets.get(key)
            if not bucket:
                return None
            counts = self._counts
            if not self.matcher.needs_confirmation:
                pos = self._cursor.get(key, 0)
                while pos < len(bucket) and counts[bucket[pos]]:
                    pos += 1
                self._cursor[key] = pos
                if pos < len(bucket):
                    return self._answer(bucket[pos], extra=False)
                matches: Sequence[int] = bucket
                state: Hashable = key
            else:
                incoming = to_vcr_request(request)
                for idx in bucket:
                    if not counts[idx] and self.matcher.confirm(self._vcr_request(idx), incoming):
                        return self._answer(idx, extra=False)
                matches = [i for i in bucket if self.matcher.confirm(self._vcr_request(i), incoming)]
                if not matches:
                    return None
                state = (key, tuple(matches))
            if self.when_exhausted == "error":
                return Exhausted(tuple(matches))
            if self.when_exhausted == "cycle":
                n = self._cycle.get(state, 0)
                self._cycle[state] = n + 1
                return self._answer(matches[n % len(matches)], extra=True)
            return self._answer(matches[-1], extra=True)

    def add(self, interaction: Interaction, played: bool = True) -> int:
        """Append a newly recorded interaction and return its index; ``played`` counts it as played."""
        with self._lock:
            idx = self._index(interaction)
            if played:
                self._counts[idx] = 1
            return idx

    def reset(self) -> None:
        """Forget play counts: the next requests start from the first recorded answers again."""
        with self._lock:
            self._counts = [0] * len(self._items)
            self._cursor.clear()
            self._cycle.clear()

    def _candidate_keys(self, request: Request) -> list[tuple[int, Hashable]]:
        """Distinct keys worth comparing, best tier first: same path, sibling paths, same method, any."""
        seen: set[Hashable] = set()
        out: list[tuple[int, Hashable]] = []

        def take(tier: int, keys: Sequence[Hashable]) -> bool:
            for k in keys:
                if len(out) >= _NEAREST_KEYS:
                    return False
                if k not in seen:
                    seen.add(k)
                    out.append((tier, k))
            return len(out) < _NEAREST_KEYS

        path = request.path
        if not take(0, self._by_path.get(path, ())):
            return out
        for sibling in self._by_parent.get(_parent(path), ())[:_NEAREST_KEYS]:
            if sibling != path and not take(1, self._by_path[sibling]):
                return out
        if not take(2, self._by_method.get(request.method.upper(), ())[: _NEAREST_KEYS * 2]):
            return out
        for k in self._buckets:
            if not take(3, (k,)):
                break
        return out

    def nearest(self, request: Request, limit: int = 3) -> list[tuple[int, Interaction, list[str]]]:
        """The recorded interactions closest to ``request`` and how each differs (for "no match" reports)."""
        with self._lock:
            per_key = _NEAREST_PER_KEY if self.matcher.needs_confirmation else 1
            method, path = request.method.upper(), request.path
            scored: list[tuple[tuple[int, int, int, int, int], int, list[str]]] = []
            for tier, key in self._candidate_keys(request):
                for idx in self._buckets[key][:per_key]:
                    recorded = self._items[idx].request
                    diffs = self.matcher.differences(recorded, request)
                    # Same path first: a request for the right resource with the wrong method or query
                    # is what a user means by "closest", more than another resource of the same method.
                    rank = (
                        recorded.path != path,
                        len(diffs),
                        recorded.method.upper() != method,
                        tier,
                        idx,
                    )
                    scored.append((rank, idx, diffs))
            scored.sort(key=lambda s: s[0])
            return [(idx, self._items[idx], diffs) for _, idx, diffs in scored[:limit]]
