"""The control API: a test in any language steers the proxy over HTTP, under ``/__replay-proxy/``.

Flow-free: ``ControlAPI.handle(method, path, query, body, headers)`` returns ``(status, json)`` over the
session state a ``Host`` gives (``ReplayProxy`` is one); the mitmproxy addon hands it every request whose
path starts with ``PREFIX`` and is addressed to the proxy itself. Such requests are never matched against
scenarios or cassettes, never forwarded, recorded or journaled.

Endpoints (a contract; JSON in and out, errors as ``{"error": TEXT, ...}``):

``POST use``
    ``{"scenarios": [PATH...], "cassette": PATH|null, "retry_after": SECONDS|null, "clock":
    "real"|"virtual"}``, every key optional (as ``ReplayProxy.use``: settings not given keep the proxy's);
    paths relative to the root (the directory the proxy was started in, or ``--root``) and inside it.
    Serves them from now on with all state fresh; 200 with what is loaded. A bad file: 400 with the
    ``file:line:col`` problems ``replay-proxy check`` prints; the proxy keeps serving what it served.
``POST reset``
    Fresh operation counters, sequences, playback and journal.
``GET journal``
    ``{"entries": [...]}``: each exchange (``entry_json``), request headers redacted as in cassettes.
``GET verdict``
    ``{"ok": bool, "violations": [{"check", "message"}...]}``: proxy/verdict.py's checks, as the pytest
    plugin runs them; ``?skip=NAME,...`` leaves checks out.
``GET operations``
    ``{"operations": [...]}``: every operation started since the last reset.
``POST operations/{id}/{action}``
    ``hold``, ``advance`` (``{"steps": N}``, default 1), ``succeed``, ``fail`` (``{"error": {"code",
    "message", ...}}``, optional), ``cancel``, ``release``: ``ScenarioMachine.steer``.

Safety: requests with an ``Origin`` header (browsers: a web page must not drive it) are refused; the owner
of the listener decides whether the API is on (``enabled``; off beyond loopback unless a
token is set) and whether it needs a token (``X-Replay-Proxy-Token: TOKEN`` or ``Authorization: Bearer
TOKEN``). A refused request changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from proxy.errors import ReplayProxyError, ScenarioError
from proxy.journal import Exchange, iso_time
from proxy.model import Request, Response

if TYPE_CHECKING:
    from proxy.scenario.machine import OperationState, ScenarioMachine

logger = logging.getLogger("proxy")

PREFIX = "/__replay-proxy/"
TOKEN_HEADER = "X-Replay-Proxy-Token"
ENDPOINTS = (
    "POST /__replay-proxy/use",
    "POST /__replay-proxy/reset",
    "GET /__replay-proxy/journal",
    "GET /__replay-proxy/verdict",
    "GET /__replay-proxy/operations",
    "POST /__replay-proxy/operations/{id}/{action}",
)
USE_KEYS = ("scenarios", "cassette", "retry_after", "clock")
MAX_BODY = 1 << 20
"""Bytes a control request's JSON may take."""

Headers = Sequence[tuple[str, str]]
Json = dict[str, Any]


class Host(Protocol):
    """The session state the control API works on (``ReplayProxy`` provides one)."""

    def use(self, scenarios: list[Path], cassette: Path | None, settings: Mapping[str, Any]) -> None:
        """Serve these from now on, all state fresh; ``settings``: ``retry_after``/``clock`` given.
        Raises ReplayProxyError (and keeps serving what it served) on a bad file or setting."""

    def reset(self) -> None: ...

    def entries(self) -> list[Exchange]: ...

    def machine(self) -> ScenarioMachine | None:
        """The scenario machine serving now, None when no scenario is loaded."""

    def loaded(self) -> Json:
        """What is served now: ``scenarios``, ``cassette``, ``retry_after``, ``clock``..."""


class _Refused(Exception):
    """A control request that gets an error answer and changes nothing."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: Json = {"error": message, **extra}


class ControlAPI:
    """Answers control requests (see the module docstring) over a ``Host``."""

    def __init__(
        self,
        host: Host,
        *,
        root: str | os.PathLike[str] | None = None,
        token: str | None = None,
        enabled: bool = True,
        off_reason: str = "",
    ) -> None:
        self.host = host
        self.root = Path(root if root is not None else os.getcwd()).resolve()
        """``use`` reads files here and below only."""
        self.token = token or None
        self.enabled = enabled
        self.off_reason = off_reason or "the control API is off"

    def handle(
        self, method: str, path: str, query: str = "", body: bytes = b"", headers: Headers = ()
    ) -> tuple[int, Json]:
        """The answer to one control request: ``(status, json)``. ``path`` starts with ``PREFIX``;
        ``query`` is the raw query string (no ``?``)."""
        try:
            self._admit(headers)
            return 200, self._route(method.upper(), path, query, body)
        except _Refused as e:
            return e.status, e.body
        except Exception as e:  # a bug of ours: say so in one line, keep serving
            logger.error("replay-proxy: error: control request %s %s failed: %r", method, path, e)
            return 500, {"error": f"replay-proxy failed to answer this control request: {e!r}"}

    def answer(self, request: Request) -> Response:
        """``handle`` for a whole request, as an HTTP response (for the proxy's engines)."""
        path, _, query = request.path_and_query.partition("?")
        status, data = self.handle(request.method, path, query, request.body, request.headers)
        return json_response(status, data)

    # -- admission ------------------------------------------------------------------------------------

    def _admit(self, headers: Headers) -> None:
        if not self.enabled:
            raise _Refused(403, self.off_reason)
        if any(name.lower() == "origin" for name, _ in headers):
            # Browsers send Origin on every cross-site request and every POST: a web page must not drive a
            # proxy on the developer's loopback (test tools, SDKs and curl send none).
            raise _Refused(403, "the control API does not answer requests with an Origin header (browsers)")
        if self.token is None:
            return
        given = None
        for name, value in headers:
            lname = name.lower()
            if lname == TOKEN_HEADER.lower():
                given = value.strip()
            elif lname == "authorization" and value.strip().lower().startswith("bearer "):
                given = given or value.strip()[7:].strip()
        if given is None:
            raise _Refused(401, f"the control API needs its token: send the header {TOKEN_HEADER}: TOKEN")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise _Refused(401, f"wrong token in {TOKEN_HEADER}")

    # -- routing --------------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: str, body: bytes) -> Json:
        rest = path[len(PREFIX) :] if path.startswith(PREFIX) else None
        parts = [unquote(part) for part in rest.strip("/").split("/")] if rest is not None else []
        simple: dict[str, tuple[str, Callable[[str, bytes], Json]]] = {
            "use": ("POST", self._use),
            "reset": ("POST", self._reset),
            "journal": ("GET", self._journal),
            "verdict": ("GET", self._verdict),
            "operations": ("GET", self._operations),
        }
        if len(parts) == 1 and parts[0] in simple:
            allowed, fn = simple[parts[0]]
            _method(method, allowed, path)
            return fn(query, body)
        if len(parts) == 3 and parts[0] == "operations" and all(parts):
            _method(method, "POST", path)
            return self._steer(parts[1], parts[2], body)
        raise _Refused(404, f"no control endpoint {method} {path}", endpoints=list(ENDPOINTS))

    # -- endpoints ------------------------------------------------------------------------------------

    def _use(self, query: str, body: bytes) -> Json:
        data = _json_object(body)
        unknown = sorted(set(data) - set(USE_KEYS))
        if unknown:
            raise _Refused(400, f"unknown key {', '.join(unknown)}; use takes: {', '.join(USE_KEYS)}")
        scenarios = data.get("scenarios", [])
        if not isinstance(scenarios, list) or not all(isinstance(s, str) for s in scenarios):
            raise _Refused(400, 'scenarios must be a list of paths, e.g. ["scenarios/x.yaml"]')
        cassette = data.get("cassette")
        if cassette is not None and not isinstance(cassette, str):
            raise _Refused(400, "cassette must be a path or null")
        settings: dict[str, Any] = {}
        if "retry_after" in data:
            value = data["retry_after"]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf")
            ):
                raise _Refused(400, f"retry_after must be zero or more seconds, or null; not {value!r}")
            settings["retry_after"] = value
        if "clock" in data:
            if data["clock"] not in ("real", "virtual", None):
                raise _Refused(400, f'clock must be "real" or "virtual" (or null), not {data["clock"]!r}')
            settings["clock"] = data["clock"]
        paths = [self._inside_root(s, "scenarios") for s in scenarios]
        cassette_path = self._inside_root(cassette, "cassette") if cassette is not None else None
        # Problems name each file as it was given (as `replay-proxy check` run in the root prints them).
        given: dict[str, str] = {str(p): str(g) for p, g in zip(paths, scenarios, strict=True)}
        if cassette_path is not None and cassette is not None:
            given[str(cassette_path)] = cassette

        def as_given(line: str) -> str:
            for passed, name in given.items():
                if line.startswith(passed + ":") or line.startswith(passed + " "):
                    return name + line[len(passed) :]
            return line

        try:
            self.host.use(paths, cassette_path, settings)
        except ScenarioError as e:
            raise _Refused(400, "invalid scenario", problems=[as_given(p) for p in e.problems]) from None
        except ReplayProxyError as e:
            lines = [as_given(line) for line in str(e).splitlines()] or [type(e).__name__]
            raise _Refused(400, lines[0], problems=lines) from None
        return {"loaded": self._loaded()}

    def _loaded(self) -> Json:
        """What is served, its paths relative to the root (as ``use`` takes them) when inside it."""
        loaded = dict(self.host.loaded())

        def shown(path: str) -> str:
            p = Path(path)
            full = (p if p.is_absolute() else Path.cwd() / p).resolve()
            return str(full.relative_to(self.root)) if full.is_relative_to(self.root) else path

        if isinstance(loaded.get("scenarios"), list):
            loaded["scenarios"] = [shown(s) for s in loaded["scenarios"]]
        if isinstance(loaded.get("cassette"), str):
            loaded["cassette"] = shown(loaded["cassette"])
        return loaded

    def _inside_root(self, given: str, key: str) -> Path:
        """``given`` as the proxy reads it: relative to the root, and inside it (symlinks resolved)."""
        if not given or "\0" in given:
            raise _Refused(400, f"{key}: {given!r} is not a path")
        path = Path(given)
        full = path if path.is_absolute() else self.root / path
        try:
            resolved = full.resolve()
        except (OSError, RuntimeError) as e:
            raise _Refused(400, f"{key}: {given!r} cannot be resolved: {e}") from None
        if not resolved.is_relative_to(self.root):
            raise _Refused(
                403,
                f"{key}: {given!r} is outside the root {self.root}: use reads files there and below only "
                "(start the proxy in another directory, or give it --root DIR)",
            )
        if not path.is_absolute() and self.root == Path.cwd().resolve():
            return path  # as given: problems are reported as `replay-proxy check` would print them
        return resolved

    def _reset(self, query: str, body: bytes) -> Json:
        if _json_object(body):
            raise _Refused(400, "reset takes no body")
        self.host.reset()
        return {"loaded": self._loaded()}

    def _journal(self, query: str, body: bytes) -> Json:
        return {"entries": [entry_json(e) for e in self.host.entries()]}

    def _verdict(self, query: str, body: bytes) -> Json:
        from proxy import verdict

        skip: list[str] = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name != "skip":
                raise _Refused(400, f"unknown query parameter {name!r}; verdict takes skip=NAME,...")
            skip += [s.strip() for s in value.split(",") if s.strip()]
        try:
            violations = verdict.check(self.host.entries(), skip)
        except ValueError as e:
            raise _Refused(400, str(e), checks=list(verdict.RULES)) from None
        return {
            "ok": not violations,
            "violations": [{"check": v.rule, "message": v.message} for v in violations],
        }

    def _operations(self, query: str, body: bytes) -> Json:
        machine = self.host.machine()
        states = machine.operations if machine is not None else []
        return {"operations": [operation_json(s) for s in states]}

    def _steer(self, op_id: str, action: str, body: bytes) -> Json:
        from proxy.scenario.machine import STEER_ACTIONS, UnknownOperation

        if action not in STEER_ACTIONS:
            raise _Refused(
                404,
                f"unknown action {action!r}; choose from: {', '.join(STEER_ACTIONS)}",
                actions=list(STEER_ACTIONS),
            )
        data = _json_object(body)
        allowed = {"advance": ("steps",), "fail": ("error",)}.get(action, ())
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            takes = f"takes: {', '.join(allowed)}" if allowed else "takes no body"
            raise _Refused(400, f"unknown key {', '.join(unknown)}; {action} {takes}")
        machine = self.host.machine()
        if machine is None:
            raise _Refused(404, f"no operation {op_id!r}: no scenario is loaded", operations=[])
        error = data.get("error")
        if error is not None and not isinstance(error, dict):
            raise _Refused(400, 'error must be an object, e.g. {"code": "InvalidFeature", "message": "..."}')
        try:
            state = machine.steer(op_id, action, steps=data.get("steps", 1), error=error)
        except UnknownOperation:
            known = [s.id for s in machine.operations]
            raise _Refused(
                404, f"no operation {op_id!r} was started since the last reset", operations=known
            ) from None
        except ValueError as e:
            raise _Refused(409 if "release it first" in str(e) else 400, str(e)) from None
        return {"operation": operation_json(state)}


# -- JSON ---------------------------------------------------------------------------------------------------


def entry_json(e: Exchange) -> Json:
    """One journal entry as the control API gives it: what ``--journal FILE`` writes per line
    (``Exchange.to_json``: request headers already redacted as cassettes are), with ``url`` and ``Host``
    as the client reached the proxy (in reverse mode mitmproxy set Host to the upstream's)."""
    out = e.to_json()
    url = e.client_url or e.url
    authority = urlsplit(url).netloc
    out["url"] = url
    headers = out["request_headers"]
    for name in headers:
        if name.lower() == "host":
            headers[name] = [authority]
    return out


def operation_json(state: OperationState) -> Json:
    return {
        "id": state.id,
        "rule": state.rule,
        "file": state.file,
        "status": state.status,
        "terminal": state.terminal,
        "polls": state.polls,
        "step": state.stage,
        "held": state.held,
        "ended_by": state.ended_by,
        "created": iso_time(state.created),
        "status_url": state.status_url,
        "resource_id": state.resource_id,
    }


def json_response(status: int, data: Json) -> Response:
    body = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    headers = (
        ("Content-Type", "application/json"),
        ("X-Replay-Proxy", "control"),
        ("Cache-Control", "no-store"),
    )
    return Response(status, "", headers, body)


def _method(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise _Refused(405, f"{path} takes {allowed}, not {method}", endpoints=list(ENDPOINTS))


def _json_object(body: bytes) -> Json:
    """The request's JSON object ({} for an empty body), or a 400 saying what is wrong with it."""
    if not body.strip():
        return {}
    if len(body) > MAX_BODY:
        raise _Refused(413, f"a control request's body takes at most {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _Refused(400, f"the body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise _Refused(400, f"the body must be a JSON object, not {type(data).__name__}")
    return data


class OperationHandle:
    """A started scenario operation as a test steers it (``ReplayProxy.operations``): a snapshot taken
    when listed (``id``, ``status``, ``polls``...), and verbs that act on the live operation."""

    def __init__(self, machine: Callable[[], ScenarioMachine | None], state: OperationState) -> None:
        self._machine = machine
        self.state = state

    def __repr__(self) -> str:
        return f"<operation {self.state.id} {self.state.status}, {self.state.polls} polls>"

    @property
    def id(self) -> str:
        return self.state.id

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def polls(self) -> int:
        return self.state.polls

    def hold(self) -> OperationHandle:
        """Stay at the current step (polls answer it) until released, advanced or ended."""
        return self._steer("hold")

    def advance(self, steps: int = 1) -> OperationHandle:
        """Move ``steps`` steps on (held or not; a held operation stays held)."""
        return self._steer("advance", steps=steps)

    def succeed(self) -> OperationHandle:
        """End it now: the next poll answers Succeeded."""
        return self._steer("succeed")

    def fail(self, error: Mapping[str, Any] | None = None) -> OperationHandle:
        """End it now: the next poll answers Failed with ``error`` (an OData error; default
        ``{"code": "OperationFailed", ...}``)."""
        return self._steer("fail", error=error)

    def cancel(self) -> OperationHandle:
        """End it now: the next poll answers Canceled."""
        return self._steer("cancel")

    def release(self) -> OperationHandle:
        """Back to the scripted progression from the step it is at (an end set here is undone)."""
        return self._steer("release")

    def _steer(
        self, action: str, *, steps: int = 1, error: Mapping[str, Any] | None = None
    ) -> OperationHandle:
        from proxy.errors import ConfigError
        from proxy.scenario.machine import UnknownOperation

        machine = self._machine()
        try:
            if machine is None:
                raise UnknownOperation(self.state.id)
            self.state = machine.steer(self.state.id, action, steps=steps, error=error)
        except UnknownOperation:
            raise ConfigError(
                f"operation {self.state.id} is gone: the proxy was switched or reset since it started"
            ) from None
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self
