"""The scenario runtime: turns requests into scripted answers. Pure code: no mitmproxy, no I/O.

What a scenario means (the semantics of the language, in order of evaluation):

1. **Rule order.** Files in the order given; in each file its ``routes`` in file order, then its
   ``operations`` in file order. Each operation is three rules, checked in this order: its *status* rule
   (GET or HEAD on ``status-path`` whose ``{operationId}`` names an operation this rule created; an
   unknown id does not match and falls through), its *resource* rule (GET on ``resource-path`` whose
   ``{resourceId}`` belongs to one of its operations that was reported Succeeded with a resource; an
   unknown id falls through), its *start* rule (the ``start`` match); an operation with ``cancel`` has a
   *cancel* rule before these (rule 13). The first rule that answers wins;
   when none does, ``handle`` returns None (the cassette, the upstream or the 599 diagnostic answers).
2. **Matching.** Every given part of a ``match`` must hold. ``method``: one or a list, case-insensitive.
   ``path``: exact, except ``{name}`` (one segment, ``[^/]+``) and ``{name*}`` (the rest, possibly
   empty, slashes included); the values are ``request.params`` in templates. The request's host is
   ignored: only its path and query count. ``query``/``headers``/``json``/``form`` conditions: a scalar
   means "present and equal to its text" (``true``/``false`` for booleans, ``1`` for the integer 1,
   ``2.0`` for the float 2.0); ``null`` means the field must be absent; a condition mapping holds when all
   of its given parts hold (``present``, ``equals``, ``regex`` searched, ``one-of``). Header names are
   case-insensitive; a repeated header, query parameter or form field counts by its first value. ``json``
   keys are dotted paths into the parsed body (``a.b.0.c``: a digit part indexes a list); a body that is
   not JSON has no fields. ``form`` names fields of a body whose Content-Type is
   ``application/x-www-form-urlencoded`` (parameters ignored); any other body has no form fields. The
   ``?query`` part of a ``status-path`` is only written into status URLs, never matched: polls match on
   the path alone (clients may change ``api-version``).
3. **Routes.** ``respond`` is a one-step sequence. Steps are expanded by ``times``; the route's counter
   advances on every call it matches, and call *n* gets expanded step *n*. A ``pass: true`` step consumes
   the call but does not answer: the next rules are tried. After the last step, ``when-exhausted``:
   ``repeat-last`` (default; the last step again, a ``pass`` step included), ``cycle`` (from the first
   step again), ``error`` (a ``Refusal``: the 599 diagnostic names the route).
4. **Starting an operation.** A request matching ``start`` creates an operation: its id (uuid4, or
   ``1``, ``2``, ... per operation rule with ``id-format: counter``), its resource id (likewise), its
   creation time (the wall clock), poll count 0, stage 0. The start is answered by ``accepted`` (default
   ``202`` with no body for the creator styles; ``200`` with ``{name: operations/<id>, done: false}``
   for ``aip-151``; a given ``accepted`` without ``status`` keeps the style's default status, and in
   ``aip-151`` without a body keeps the default body), rendered with the operation in context, plus the
   status URL in each header named by ``header`` (default by style: creator-v1 ``Location``, creator-v2
   ``Operation-Location``, aip-151 none, location ``Location``, arm ``Azure-AsyncOperation``; arm's start
   is ``201``/``200``/``202`` by method, see ``proxy/dialects.py``; ``none`` or ``null`` for no header;
   a list for several; a header
   the ``accepted`` spec sets itself is left as it is). The status URL is ``status-path`` with the id
   substituted (other placeholders get the start request's path values of the same name), its
   ``?query`` kept, made absolute on the proxy's base URL unless ``url-form: relative``. The resource
   URL is made the same way from ``resource-path``. ``Retry-After`` goes on the accepted answer only when
   ``accepted.retry-after`` is given.
5. **Progression.** Each poll (GET or HEAD of the status URL) is answered by the current stage, then
   counts toward it. A stage is one step. A step with ``times: N`` (default 1) lasts N polls; a status
   step with ``for: D`` lasts D seconds of the operation's clock: with the real clock the monotonic time
   since the stage began; with the virtual clock the sum of the Retry-After seconds the operation has
   advertised since the stage began (its accepted answer and each poll answer; an answer that advertised
   none counts 1 s). Stage 0 begins when the operation is created; a stage after a ``for`` stage begins
   when that stage's time ran out; a stage after a ``times`` stage begins with the poll that reaches it.
   A ``respond`` step answers its polls with that response or fault instead of a status; the status does
   not change (``for`` on a ``respond`` step counts as ``times: 1``). The last stage lasts forever: a
   terminal status answers every later poll the same way; a non-terminal one is an operation that never
   ends.
6. **Status answers,** for the status S of the current stage; S is terminal when ``S.lower()`` is in
   ``TERMINAL_STATUSES``, a success when it is ``succeeded``, a failure when it starts with ``fail``
   (case-insensitive). The dialect table (``proxy/dialects.py``, by the operation's ``style``) renders
   the answer; the step's overrides below apply on top. The body is JSON:

   - ``creator-v1``: ``200 {operationId, createdDateTime (3/11/2020 8:45:13 PM +00:00), status}``. A
     success with a resource (the step's ``resource``; default: when ``resource-path`` is set; never
     without a ``resource-path``) is ``201`` with ``Location: <resource URL>`` and ``resourceLocation``
     in the body.
   - ``creator-v2``: ``200 {operationId, created (ISO 8601 UTC), status}``; a success with a resource
     adds the ``Resource-Location`` header (nothing in the body).
   - ``aip-151``: ``200 {name: operations/<id>, done: <terminal>, metadata: {status: S}}``; a success
     adds ``response: {name: <resource URL, or the resource id when there is no resource>}``.
   - ``location``: ``202`` without a body while running; a success is ``200`` with the ``resource``
     answer (``204`` for a DELETE or ``resource: false``); a failure is ``400 {error}``.
   - ``arm``: ``200 {id, name, status, startTime, endTime (terminal)}``; GET of a PUT/PATCH start's URL
     answers the ``resource`` (default ``{id, name, properties.provisioningState: <status>}``).
   - A failure, or any status whose step gives ``error``, adds ``error``: the step's error (default
     ``{code: OperationFailed, message: The operation failed.}``; fields that are null are left out,
     ``details`` is kept as given, object or list). In ``aip-151`` the error is a google.rpc.Status: an
     integer ``code`` (the step's when it is a number, else 2, or 1 for a cancelled operation), a
     ``message``, and ``details`` as a list.
   - Non-terminal answers carry Retry-After: the step's ``retry-after`` when the step gives the key
     (``null``: none), else the operation's. A terminal answer carries one only when its step gives it.
   - The step's ``http-status`` replaces the code; its ``json`` is merged into the body's top level (a
     null value removes the key, e.g. ``createdDateTime: null``); its ``headers`` are set last (they
     replace any header of the same name).
   - A HEAD poll gets the same answer without a body.
7. **Retry-After forms** (status answers and any response's ``retry-after``): a number → valid HTTP
   by ``proxy.rewrite.delay_headers``: whole seconds → ``Retry-After: N``; a fraction → ``retry-after-ms``
   (``0.5`` → ``retry-after-ms: 500``), with ``Retry-After`` rounded up to whole seconds beside it when the
   answer's status is 400 or more (``Retry-After: 1``); a text → sent verbatim (``{raw: "0.5"}`` sends the
   invalid fraction on purpose); ``{seconds: N}`` → as a number;
   ``{date: D}`` → the HTTP-date D from now; ``{raw: T}`` → verbatim; ``{ms: N}`` → ``retry-after-ms: N``;
   ``{x-ms: N}`` → ``x-ms-retry-after-ms: N``. The *advertised* delay (``Answer.retry_after``, and the
   virtual clock's step) is the seconds, the date's distance, N/1000 for the millisecond forms, and for
   texts what a client would parse from them (None for junk). When a header set by ``headers`` replaced
   the Retry-After, the advertised delay is parsed from the final headers.
8. **Resource answers:** the operation's ``resource`` response (default ``200 {id: <resource id>,
   operationId: <id>}``), rendered with the operation in context.
9. **Responses** (routes, ``accepted``, ``respond`` steps, ``resource``): ``status``; ``headers``
   (templates); the body from ``json`` (string values rendered as templates, then serialised),
   ``text`` (a template) or ``file`` (the bytes the loader read; never templated). ``Content-Type``
   defaults to ``application/json``, ``text/plain; charset=utf-8`` or the file name's guessed type
   (``application/octet-stream`` when unknown), unless ``headers`` sets one; ``content-type`` replaces it;
   no body and no ``content-type`` → no Content-Type. ``delay`` becomes ``Answer.delay`` (a
   ``{min, max}`` delay is drawn uniformly from the machine's random generator); ``dribble`` is seconds;
   ``fault`` becomes ``Answer.fault``. ``malformed-json`` is done here: the body is cut to its first half
   (shorter still if that half would parse), the answer keeps ``fault="malformed-json"`` for the journal,
   and the proxy delivers it like any response.
10. **Templates** see ``request`` (``method``, ``url``, ``path``, ``query``: first values, ``headers``:
    lower-case names, first values, ``json``: the parsed body or None, ``form``: the form body's fields,
    first values, ``params``: the path template's values), ``operation`` (``id``, ``name``, ``status``,
    ``poll``, ``created`` in the seed's format, ``created_iso``, ``resource_id``, ``status_url``,
    ``resource_url``; None outside operations), ``proxy_url`` (the base URL), ``scenario`` (``name``,
    ``file``), ``now()``, ``now(fmt)``, ``uuid()``.
    A template that fails raises ``TemplateError`` at the template's ``file:line:column``.
11. ``Answer.source`` names the rule for the console and the journal: ``x.yaml: route "throttle" step
    1/2``, ``x.yaml: start of operation "tileset" (1a2b3c4d…)``, ``x.yaml: operation 1a2b3c4d…, poll 3
    (Running)``; ``operation``, ``poll``, ``status``, ``terminal`` and ``retry_after`` are filled for
    operations.
12. ``handle``, ``reset``, ``operations`` and ``steer`` are serialised by one lock: concurrent clients
    are safe, and two operations started by two clients progress independently.
13. **Steering and cancel.** ``steer`` (the control API's verbs) acts on a started operation: ``hold``
    keeps it at its stage (polls answer it and do not count toward it; the time held does not count
    toward a ``for`` stage), ``advance`` moves it N stages on, ``succeed``/``fail``/``cancel`` make every
    later poll answer that terminal status (a status step, rule 6: ``fail``'s error is the given one),
    ``release`` undoes a hold and an end set so. An operation with ``hold: true`` starts held. Its
    ``cancel`` rule (``method``, default DELETE; ``path`` with ``{operationId}`` or ``{resourceId}``, or
    with only placeholders of the start path: the latest operation started with those values, as in
    arm's DELETE on the PUT's URL; default the status path) ends an operation that has not ended as
    Canceled, and answers ``cancel.respond``, else the status answer (aip-151: ``200 {}``; location:
    ``204`` without a body, since its Canceled status answer is a 400; arm without a status header: the
    resource, ``provisioningState: Canceled``). In ``arm`` without a status header a failure's error is
    also in the polled resource (azure-core's HttpResponseError reads it there).
"""

from __future__ import annotations

import functools
import json
import mimetypes
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Literal, NamedTuple, TypedDict, Unpack
from urllib.parse import parse_qsl, unquote, urlsplit

from proxy.dialects import DEFAULT_ERROR as DEFAULT_ERROR
from proxy.dialects import (
    OperationFacts,
    dialect,
    is_failure,
    is_success,
    resource_body,
    start_body,
    status_answer,
)
from proxy.errors import ScenarioError, TemplateError
from proxy.model import Request, Response, header_problem, header_value, headers_problem, set_header
from proxy.redact import DEFAULT_HEADERS as SECRET_HEADERS
from proxy.rewrite import delay_headers, parse_retry_after
from proxy.scenario.answer import Answer, NearRule, OperationTag, Refusal
from proxy.scenario.dates import format_created_date_time
from proxy.scenario.loader import LoadedScenario
from proxy.scenario.schema import (
    TERMINAL_STATUSES,
    Condition,
    DelaySpec,
    FaultKind,
    Match,
    Operation,
    PollStep,
    ResponseSpec,
    RetryAfterSpec,
    Route,
    Step,
    linear_regex,
    parse_duration,
)
from proxy.scenario.templates import functions, is_template, new_uuid4, render

Clock = Literal["real", "virtual"]
DataPath = tuple[str | int, ...]
HeaderList = tuple[tuple[str, str], ...]

VIRTUAL_STEP_WITHOUT_RETRY_AFTER = 1.0
"""Seconds the virtual clock advances for an answer that advertised no Retry-After."""

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\*?)\}")
_NO_BODY = object()
_CHECKED_SIZE = 4096
_EMPTY_RESPONSE = ResponseSpec.model_validate({})


@dataclass(frozen=True, slots=True)
class OperationState:
    """A snapshot of one operation, for the journal and the report."""

    id: str
    rule: str
    """The operation's ``name``, or ``operation N`` (its position in the file)."""
    file: str
    status: str
    """The status last answered (before the first poll: the first stage's), or, once steered (``steer``),
    the status its next poll reports."""
    polls: int
    terminal: bool
    created: float
    """Wall-clock time of the start request (POSIX seconds)."""
    status_url: str
    resource_id: str
    held: bool = False
    """Held at its current step (``hold``) until released, advanced or ended."""
    ended_by: str | None = None
    """``succeed``, ``fail`` or ``cancel`` when steered to its end (from outside, or by a cancel request)."""
    stage: int = 0
    """The step (index into the operation's ``steps``) it is at."""


STEER_ACTIONS = ("hold", "advance", "succeed", "fail", "cancel", "release")
"""What a test can do to a running operation (``ScenarioMachine.steer``)."""

_ENDS = {"succeed": "Succeeded", "fail": "Failed", "cancel": "Canceled"}


class UnknownOperation(LookupError):
    """No operation with this id was started since the last reset."""


class ScenarioMachine:
    """Answers requests as the scenario files say (see the module docstring for the semantics)."""

    def __init__(
        self,
        scenarios: Sequence[LoadedScenario],
        *,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._uuid_rng = rng
        self._rng = rng if rng is not None else random.Random()
        self._functions = functions(wall, rng)
        self._lock = threading.Lock()
        self._checked: dict[int, HeaderList] = {}
        """Headers of answers found safe to send (``_check_wire``), by identity: polls repeat them."""
        self._operations: list[_Op] = []
        self._routes: list[_RouteRule] = []
        self._operation_rules: list[_OperationRule] = []
        self._rules: list[Callable[[_View, str], Answer | Refusal | None]] = []
        for loaded in scenarios:
            file = _File(loaded, clock or loaded.scenario.clock)
            for i, route in enumerate(loaded.scenario.routes):
                route_rule = _RouteRule(self, file, i, route)
                self._routes.append(route_rule)
                self._rules.append(route_rule.answer)
            for i, operation in enumerate(loaded.scenario.operations):
                op_rule = _OperationRule(self, file, i, operation)
                self._operation_rules.append(op_rule)
                if operation.cancel is not None:
                    self._rules.append(op_rule.answer_cancel)
                self._rules += [op_rule.answer_status, op_rule.answer_resource, op_rule.answer_start]

    def handle(self, request: Request, base_url: str) -> Answer | Refusal | None:
        """The scripted answer to ``request``, a Refusal, or None when no rule answers.

        ``base_url`` is the proxy's own origin as the client reached it (``http://127.0.0.1:8080``).
        """
        view = _View(request)
        base = base_url.rstrip("/")
        with self._lock:
            for rule in self._rules:
                result = rule(view, base)
                if result is not None:
                    if isinstance(result, Answer):
                        headers = result.response.headers
                        if self._checked.get(id(headers)) is not headers:  # a stage's polls share them
                            _check_wire(result)
                            if len(self._checked) >= _CHECKED_SIZE:
                                self._checked.clear()
                            self._checked[id(headers)] = headers
                    return result
        return None

    def nearest(self, request: Request, limit: int = 3) -> list[NearRule]:
        """The rules closest to answering ``request`` (fewest, least important differences first; file order
        breaks ties), each with what differed: for the diagnostic when no rule answered."""
        view = _View(request)
        scored: list[tuple[int, int, _RouteRule | NearRule]] = []
        with self._lock:
            for position, route in enumerate(self._routes):  # scored first, explained when among the closest
                scored.append((route.matcher.differences(view, explain=False)[0], position, route))
            for position, op_rule in enumerate(self._operation_rules, len(self._routes)):
                score, near = op_rule.near(view)
                scored.append((score, position, near))
            scored.sort(key=lambda item: (item[0], item[1]))
            return [
                item.near(view) if isinstance(item, _RouteRule) else item for _, _, item in scored[:limit]
            ]

    def reset(self) -> None:
        """Forget every counter and operation (a new test begins)."""
        with self._lock:
            self._operations.clear()
            for route in self._routes:
                route.calls = 0
            for op_rule in self._operation_rules:
                op_rule.reset()

    @property
    def operations(self) -> list[OperationState]:
        """Every operation started since the last reset, in the order they were started."""
        with self._lock:
            return [op.snapshot() for op in self._operations]

    def steer(
        self, op_id: str, action: str, *, steps: int = 1, error: Mapping[str, Any] | None = None
    ) -> OperationState:
        """Steer a started operation from outside (a test): ``hold`` it at its current step, ``advance``
        it ``steps`` steps (held or not), end it now (``succeed``, ``fail`` with ``error`` as its OData
        error, ``cancel``), or ``release`` it (back to its scripted progression, from the step it is at;
        an end set by steering is undone). Takes effect from the operation's next poll. Raises
        UnknownOperation for an id not started since the last reset (the latest one when ids repeat),
        ValueError for an unknown action or a bad ``steps``/``error``."""
        if action not in STEER_ACTIONS:
            raise ValueError(f"unknown action {action!r}; choose from: {', '.join(STEER_ACTIONS)}")
        forced: PollStep | None = None
        if action != "fail" and error is not None:
            raise ValueError(f"{action} takes no error (only fail does)")
        if action in _ENDS:
            body: dict[str, Any] = {"status": _ENDS[action]}
            if action == "fail" and error is not None:
                body["error"] = error
            try:
                forced = PollStep.model_validate(body)
            except ValueError as e:
                raise ValueError(
                    "error must be an OData error such as {\"code\": \"InvalidFeature\", \"message\": "
                    f"\"...\"}}: {_first_error(e)}"
                ) from None
        if action == "advance" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be a whole number of 1 or more, not {steps!r}")
        with self._lock:
            op = next((o for o in reversed(self._operations) if o.id == op_id), None)
            if op is None:
                raise UnknownOperation(op_id)
            rule = op.rule
            now = self.clock_value(op)
            if action == "hold" and not op.held:
                rule.stage_of(op)  # catch up with the time that passed before the hold
                op.held, op.held_at = True, now
            elif action == "release":
                if op.held:
                    op.stage_began += now - op.held_at  # time held does not count toward the step
                scripted = rule.operation.steps[op.stage].status
                if op.forced is not None and (scripted is None or scripted.lower() not in TERMINAL_STATUSES):
                    op.ended = None  # it runs again: its end time (arm's endTime) is when it next ends
                op.held, op.forced, op.ended_by = False, None, None
            elif action == "advance":
                if op.forced is not None:
                    raise ValueError(f"operation {op_id} was ended by {op.ended_by}: release it first")
                if not op.held:
                    rule.stage_of(op)
                op.stage = min(op.stage + steps, len(rule.operation.steps) - 1)
                op.stage_polls, op.stage_began, op.held_at = 0, now, now
            elif forced is not None:
                op.forced, op.ended_by = forced, action
            if action != "hold":  # what the next poll will report, for whoever lists the operations
                step = op.forced if op.forced is not None else rule.operation.steps[op.stage]
                if step.status is not None:
                    op.status, op.terminal = step.status, step.status.lower() in TERMINAL_STATUSES
            return op.snapshot()

    # -- shared by the rules (called with the lock held) ----------------------------------------------

    def new_id(self) -> str:
        return new_uuid4(self._uuid_rng)

    def now(self) -> float:
        return self._wall()

    def clock_value(self, op: _Op) -> float:
        return op.virtual if op.rule.file.clock == "virtual" else self._monotonic()

    def context(
        self, view: _View, base: str, file: _File, params: Mapping[str, str], op: _Op | None
    ) -> dict[str, Any]:
        """The template context (built only when a template is rendered)."""
        return {
            "request": {
                "method": view.method,
                "url": view.request.url,
                "path": view.path,
                "query": dict(view.query),
                "headers": dict(view.headers),
                "json": view.json,
                "form": dict(view.form),
                "params": dict(params),
            },
            "operation": op.context() if op is not None else None,
            "proxy_url": base,
            "scenario": {"name": file.name, "file": str(file.loaded.path)},
            **self._functions,
        }

    def render_text(self, value: str | float, at: DataPath, ctx: _Ctx) -> str:
        if not isinstance(value, str):
            return str(value)
        if not is_template(value):
            return value
        return render(value, ctx.get(), ctx.file.loaded.where(*at))

    def render_header(self, name: str, value: str | float, at: DataPath, ctx: _Ctx) -> str:
        """A header's value rendered; one that would write other headers (CR/LF) is an error, there."""
        text = self.render_text(value, at, ctx)
        problem = header_problem(name, text)
        if problem is not None:
            raise TemplateError(f"{ctx.file.loaded.where(*at)}: {problem}")
        return text

    def render_data(self, value: Any, at: DataPath, ctx: _Ctx) -> Any:
        """``value`` with every string in it rendered as a template (keys are not templates)."""
        if isinstance(value, str):
            return self.render_text(value, at, ctx)
        if isinstance(value, dict):
            return {k: self.render_data(v, (*at, k), ctx) for k, v in value.items()}
        if isinstance(value, list):
            return [self.render_data(v, (*at, i), ctx) for i, v in enumerate(value)]
        return value

    def render_response(
        self,
        spec: ResponseSpec,
        at: DataPath,
        ctx: _Ctx,
        *,
        default_status: int | None = None,
        default_json: Any = _NO_BODY,
    ) -> _Rendered:
        """A ResponseSpec rendered (rule 9)."""
        status = spec.status
        if default_status is not None and "status" not in spec.model_fields_set:
            status = default_status
        headers: HeaderList = tuple(
            (name, self.render_header(name, value, (*at, "headers", name), ctx))
            for name, value in spec.headers.items()
        )
        body = b""
        content_type: str | None = None
        if spec.json_ is not None:
            data = self.render_data(spec.json_, (*at, "json"), ctx)
            body, content_type = _json_bytes(data), _JSON
        elif spec.text is not None:
            text = self.render_text(spec.text, (*at, "text"), ctx)
            body, content_type = text.encode("utf-8"), "text/plain; charset=utf-8"
        elif spec.file is not None:
            try:
                body = ctx.file.loaded.files[spec.file]
            except KeyError:
                where = ctx.file.loaded.where(*at, "file")
                raise ScenarioError([f"{where}: file {spec.file!r} was not loaded"]) from None
            content_type = mimetypes.guess_type(spec.file)[0] or "application/octet-stream"
        elif default_json is not _NO_BODY:
            body, content_type = _json_bytes(default_json), _JSON
        if spec.content_type is not None:
            headers = set_header(headers, "Content-Type", spec.content_type)
        elif content_type is not None and header_value(headers, "content-type") is None:
            headers += (("Content-Type", content_type),)
        retry = self.retry_after(spec.retry_after, status)
        for name, value in retry[0]:
            headers = set_header(headers, name, value)
        if spec.fault == "malformed-json":
            body = _malformed(body)
        return _Rendered(
            response=Response(status=status, headers=headers, body=body),
            delay=self.delay(spec.delay),
            dribble=parse_duration(spec.dribble) if spec.dribble is not None else None,
            fault=spec.fault,
            retry_after=self.advertised(headers, retry),
        )

    def delay(self, value: float | int | str | DelaySpec | None) -> float:
        if value is None:
            return 0.0
        if isinstance(value, DelaySpec):
            return self._rng.uniform(parse_duration(value.min), parse_duration(value.max))
        return parse_duration(value)

    def retry_after(self, value: float | int | str | RetryAfterSpec | None, status: int) -> _RetryAfter:
        """The header(s) a retry-after value sends on an answer with ``status``, and the seconds it
        advertises (rule 7)."""
        if value is None:
            return (), None
        if isinstance(value, int | float):
            return delay_headers(value, status), float(value)
        if isinstance(value, str):
            return (("Retry-After", value),), parse_retry_after((("Retry-After", value),), now=self._wall())
        if value.seconds is not None:
            return delay_headers(value.seconds, status), float(value.seconds)
        if value.date is not None:
            seconds = parse_duration(value.date)
            return (("Retry-After", formatdate(self._wall() + seconds, usegmt=True)),), seconds
        if value.raw is not None:
            pairs = (("Retry-After", value.raw),)
            return pairs, parse_retry_after(pairs, now=self._wall())
        if value.ms is not None:
            return (("retry-after-ms", str(value.ms)),), value.ms / 1000
        assert value.x_ms is not None
        return (("x-ms-retry-after-ms", str(value.x_ms)),), value.x_ms / 1000

    def advertised(self, headers: HeaderList, retry: _RetryAfter) -> float | None:
        """The configured seconds when its headers were sent as rendered, else what the headers say."""
        pairs, seconds = retry
        if pairs and all(header_value(headers, name) == value for name, value in pairs):
            return seconds
        return parse_retry_after(headers, now=self._wall())

    def register(self, op: _Op) -> None:
        self._operations.append(op)


_RetryAfter = tuple[HeaderList, float | None]


class _AnswerFacts(TypedDict, total=False):
    """An operation's facts on a scripted answer (see ``Answer``)."""

    virtual: float | None
    operation: str | None
    poll: int | None
    status: str | None
    terminal: bool
    tag: OperationTag | None


@dataclass(frozen=True, slots=True)
class _Rendered:
    response: Response
    delay: float
    dribble: float | None
    fault: FaultKind | None
    retry_after: float | None

    def answer(self, source: str, response: Response | None = None, **facts: Unpack[_AnswerFacts]) -> Answer:
        """The scripted answer of this rendered response (or of ``response``, made from it): its faults and
        the Retry-After it advertised, with an operation's ``facts``."""
        return Answer(
            response=self.response if response is None else response,
            source=source,
            delay=self.delay,
            dribble=self.dribble,
            fault=self.fault,
            retry_after=self.retry_after,
            **facts,
        )


class _File:
    """One scenario file as the machine uses it."""

    def __init__(self, loaded: LoadedScenario, clock: Clock) -> None:
        self.loaded = loaded
        self.clock = clock
        self.label = loaded.path.name
        self.name = loaded.scenario.name or loaded.path.stem


class _Ctx:
    """A template context built on first use: answers without templates never build one."""

    __slots__ = ("_built", "base", "file", "machine", "op", "params", "view")

    def __init__(
        self,
        machine: ScenarioMachine,
        view: _View,
        base: str,
        file: _File,
        params: Mapping[str, str],
        op: _Op | None,
    ) -> None:
        self.machine = machine
        self.view = view
        self.base = base
        self.file = file
        self.params = params
        self.op = op
        self._built: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        if self._built is None:
            self._built = self.machine.context(self.view, self.base, self.file, self.params, self.op)
        return self._built


# -- requests -----------------------------------------------------------------------------------------


class _View:
    """A request parsed once for every rule: method, path, first query values, headers, JSON body."""

    __slots__ = ("_form", "_headers", "_json", "_query", "_query_text", "method", "path", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        parts = urlsplit(request.url)
        self.method = request.method.upper()
        self.path = parts.path or "/"
        self._query_text = parts.query
        self._query: dict[str, str] | None = None
        self._headers: dict[str, str] | None = None
        self._json: Any = _NO_BODY
        self._form: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """The first value of each query parameter (parsed when a rule asks: most polls match on the
        path alone)."""
        if self._query is None:
            self._query = {}
            if self._query_text:
                for name, value in parse_qsl(self._query_text, keep_blank_values=True):
                    self._query.setdefault(name, value)
        return self._query

    @property
    def headers(self) -> dict[str, str]:
        """The first value of each header, by lower-case name (made when a rule asks)."""
        if self._headers is None:
            self._headers = {}
            for name, value in self.request.headers:
                self._headers.setdefault(name.lower(), value)
        return self._headers

    @property
    def form(self) -> dict[str, str]:
        """The fields of an ``application/x-www-form-urlencoded`` body (first values); {} for other bodies."""
        if self._form is None:
            self._form = {}
            media_type = self.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type == _FORM and self.request.body:
                text = self.request.body.decode("utf-8", errors="replace")
                for name, value in parse_qsl(text, keep_blank_values=True):
                    self._form.setdefault(name, value)
        return self._form

    @property
    def json(self) -> Any:
        """The parsed JSON body, or None when the body is empty or not JSON."""
        if self._json is _NO_BODY:
            self._json = None
            body = self.request.body.lstrip()
            first = body[:1]
            if first and (first in b'{["-tfn' or first.isdigit()):  # skip binary bodies at once
                try:
                    self._json = json.loads(body)
                except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                    self._json = None
        return self._json


class _PathPattern:
    """A path template: ``{name}`` one segment, ``{name*}`` the rest; a ``?query`` part is not matched."""

    def __init__(self, template: str) -> None:
        self.template = template
        path = template.partition("?")[0]
        self.names: list[str] = []
        regex, last = "", 0
        for m in _PLACEHOLDER.finditer(path):
            regex += re.escape(path[last : m.start()])
            regex += f"(?P<p{len(self.names)}>{'.*' if m.group(2) else '[^/]+'})"
            self.names.append(m.group(1))
            last = m.end()
        regex += re.escape(path[last:])
        self.regex = linear_regex("(?s)" + regex)  # RE2: no backtracking, whatever the path
        # Most rules do not match most requests: their literal ends say so without RE2 (its Python
        # binding costs ~3-10 us a call, Python's re ~0.4 us).
        spans = [m.span() for m in _PLACEHOLDER.finditer(path)]
        self.exact = path if not spans else None
        self.prefix = path[: spans[0][0]] if spans else path
        self.suffix = path[spans[-1][1] :] if spans else ""
        self.segments = _segments(path)
        """When each placeholder is a whole ``{name}`` segment (most templates): the literal segments and
        the names, matched by splitting the path on ``/`` (linear, no regex at all)."""
        segments = self.segments or []
        self._literals = [(i, literal) for i, (literal, name) in enumerate(segments) if name is None]
        self._names = [(i, name) for i, (_, name) in enumerate(segments) if name is not None]
        last = len(segments) - 1
        self._last_only = (
            self._names[0][1] if len(self._names) == 1 and self._names[0][0] == last and last > 0 else None
        )
        """The name, when the one placeholder is the last segment (``/jobs/{id}``: most status paths)."""

    def match(self, path: str) -> dict[str, str] | None:
        last = self._last_only
        if last is not None and path.startswith(self.prefix) and path.isascii():
            rest = path[len(self.prefix) :]  # the prefix ends with "/": the name is one segment more
            if rest and "/" not in rest:
                return {last: rest}  # a status URL polled again and again: no split, no regex
        found = self._match(path)
        if found is None:
            decoded = unquote(path)
            if decoded != path:
                found = self._match(decoded)
        return found

    def _match(self, path: str) -> dict[str, str] | None:
        if self.exact is not None:
            return {} if path == self.exact else None
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        if self.segments is not None and path.isascii():
            parts = path.split("/")
            if len(parts) != len(self.segments):
                return None
            for i, literal in self._literals:
                if parts[i] != literal:
                    return None
            found: dict[str, str] = {}
            for i, name in self._names:
                if not parts[i]:  # a placeholder is one segment, never an empty one
                    return None
                found[name] = parts[i]
            return found
        m = self.regex.fullmatch(_valid_text(path))
        if m is None:
            return None
        return dict(zip(self.names, m.groups(), strict=True))  # the groups are p0, p1... in order

    def render(self, values: Mapping[str, str]) -> str:
        """The template with its placeholders replaced (the ``?query`` part kept)."""

        def value(m: re.Match[str]) -> str:
            return values.get(m.group(1), m.group(0))

        return _PLACEHOLDER.sub(value, self.template)


def _segments(path: str) -> list[tuple[str, str | None]] | None:
    """``path``'s ``/``-separated parts as (literal, None) or ("", name) when every placeholder in it is a
    whole one-segment ``{name}``; None otherwise (``{rest*}``, ``v{n}.json``: the regex matches those)."""
    out: list[tuple[str, str | None]] = []
    for part in path.split("/"):
        m = _PLACEHOLDER.fullmatch(part)
        if m is not None and not m.group(2):
            out.append(("", m.group(1)))
        elif "{" in part and _PLACEHOLDER.search(part):
            return None
        else:
            out.append((part, None))
    return out


class _Matcher:
    """A compiled ``Match``."""

    def __init__(self, match: Match) -> None:
        methods = match.method
        if isinstance(methods, str):
            methods = [methods]
        self.methods = frozenset(m.upper() for m in methods) if methods is not None else None
        self.path = _PathPattern(match.path) if match.path is not None else None
        self.query = dict(match.query or {})
        self.headers = {name.lower(): cond for name, cond in (match.headers or {}).items()}
        self.json = dict(match.json_ or {})
        self.form = dict(match.form or {})

    def match(self, view: _View) -> dict[str, str] | None:
        """The path parameters when ``view`` matches, else None."""
        if self.methods is not None and view.method not in self.methods:
            return None
        params: dict[str, str] = {}
        if self.path is not None:
            found = self.path.match(view.path)
            if found is None:
                return None
            params = found
        for name, cond in self.query.items():
            if not _holds(cond, name in view.query, view.query.get(name)):
                return None
        for name, cond in self.headers.items():
            if not _holds(cond, name in view.headers, view.headers.get(name)):
                return None
        if self.json:
            doc = view.json
            for dotted, cond in self.json.items():
                present, value = _lookup(doc, dotted)
                if not _holds(cond, present, _json_text(value) if present else None):
                    return None
        for name, cond in self.form.items():
            if not _holds(cond, name in view.form, view.form.get(name)):
                return None
        return params

    def differences(self, view: _View, explain: bool = True) -> tuple[int, list[str]]:
        """What of ``view`` does not match, one line per part (none unless ``explain``: scoring many rules
        stays cheap), and a score: a different path weighs most, then a different method, then each other
        condition."""
        score, out = 0, []
        if self.methods is not None and view.method not in self.methods:
            score += _METHOD_WEIGHT
            if explain:
                out.append(f"method: {view.method}, expected {' or '.join(sorted(self.methods))}")
        if self.path is not None and self.path.match(view.path) is None:
            score += _PATH_WEIGHT
            if explain:
                out.append(f"path: {_clip(view.path)} does not fit {self.path.template}")
        parts: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
            ("query", self.query, view.query, ""),
            ("header", self.headers, view.headers, ""),
        ]
        for kind, conditions, values, note in parts:
            for name, cond in conditions.items():
                if not _holds(cond, name in values, values.get(name)):
                    score += 1
                    if not explain:
                        continue
                    value = values.get(name)
                    if kind == "header" and name in SECRET_HEADERS and value is not None:
                        value = "<not shown: a secret>"  # the console and the 599 body never show secrets
                    out.append(_difference(kind, name, cond, name in values, value, note))
        if self.json:
            doc = view.json
            note = "" if doc is not None or not view.request.body else " (the body is not JSON)"
            for dotted, cond in self.json.items():
                present, value = _lookup(doc, dotted)
                text = _json_text(value) if present else None
                if not _holds(cond, present, text):
                    score += 1
                    if explain:
                        out.append(_difference("json field", dotted, cond, present, text, note))
        if self.form:
            form = view.form
            note = ""
            if not form and view.request.body:
                note = f" (the body is not {_FORM})"
            for name, cond in self.form.items():
                if not _holds(cond, name in form, form.get(name)):
                    score += 1
                    if explain:
                        out.append(_difference("form field", name, cond, name in form, form.get(name), note))
        return score, out


_PATH_WEIGHT = 4
_METHOD_WEIGHT = 2


def _difference(
    kind: str,
    name: str,
    cond: str | int | float | bool | Condition | None,
    present: bool,
    value: str | None,
    note: str,
) -> str:
    """``query datasetId: absent, expected present``: one failing condition, the request's side first."""
    got = _clip(value) if present and value is not None else "absent"
    return f"{kind} {name}: {got}{note}, expected {_expectation(cond)}"


def _expectation(cond: str | int | float | bool | Condition | None) -> str:
    if cond is None:
        return "absent"
    if not isinstance(cond, Condition):
        return _clip(_scalar_text(cond))
    parts = []
    if cond.present is not None:
        parts.append("present" if cond.present else "absent")
    if cond.equals is not None:
        parts.append(f"equal to {_clip(_scalar_text(cond.equals))}")
    if cond.regex is not None:
        parts.append(f"matching regex {_clip(cond.regex)}")
    if cond.one_of is not None:
        parts.append("one of " + ", ".join(_clip(_scalar_text(v)) for v in cond.one_of))
    return " and ".join(parts) or "anything"


def _clip(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _holds(cond: str | int | float | bool | Condition | None, present: bool, value: str | None) -> bool:
    if cond is None:
        return not present
    if not isinstance(cond, Condition):
        return present and value == _scalar_text(cond)
    if cond.present is not None and cond.present != present:
        return False
    if not present or value is None:
        return cond.equals is None and cond.regex is None and cond.one_of is None
    if cond.equals is not None and value != _scalar_text(cond.equals):
        return False
    if cond.regex is not None and _regex(cond.regex).search(_valid_text(value)) is None:
        return False
    return cond.one_of is None or value in {_scalar_text(v) for v in cond.one_of}


def _check_wire(answer: Answer) -> None:
    """The last check of a scripted answer: no header that would write others (a status URL made from the
    request's path, a ``content-type`` or ``retry-after`` text with CR/LF)."""
    problem = headers_problem(answer.response.headers)
    if problem is not None:
        raise TemplateError(f"{answer.source}: {problem}")


def _valid_text(value: str) -> str:
    """``value`` with lone surrogates (request bytes that are not UTF-8) as U+FFFD: RE2 reads UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            data = value.encode("utf-8", "surrogateescape")  # the bytes mitmproxy could not decode
        except UnicodeEncodeError:
            data = value.encode("utf-8", "surrogatepass")  # "\ud800" in a JSON body
        return data.decode("utf-8", "replace")
    return value


@functools.cache
def _regex(pattern: str) -> Any:
    """A condition's regex, compiled once by RE2 (linear-time matching; the loader checked it compiles)."""
    return linear_regex(pattern)


def _scalar_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return _scalar_text(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _lookup(doc: Any, dotted: str) -> tuple[bool, Any]:
    """(present, value) of the dotted path ``a.b.0.c`` in a parsed JSON document."""
    if not isinstance(doc, dict | list):
        return False, None
    current = doc
    for part in dotted.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


# -- routes -------------------------------------------------------------------------------------------


class _RouteRule:
    def __init__(self, machine: ScenarioMachine, file: _File, index: int, route: Route) -> None:
        self.machine = machine
        self.file = file
        self.index = index
        self.route = route
        self.matcher = _Matcher(route.match)
        self.label = f'route "{route.name}"' if route.name else f"route {index + 1}"
        self.calls = 0
        self.expanded: list[tuple[int, ResponseSpec]] = []
        if route.sequence is not None:
            for j, step in enumerate(route.sequence):
                self.expanded += [(j, step)] * step.times
        else:
            assert route.respond is not None
            self.expanded.append((0, route.respond))

    def near(self, view: _View) -> NearRule:
        """What keeps this route from answering ``view`` (see ``ScenarioMachine.nearest``)."""
        _, differences = self.matcher.differences(view)
        if not differences:  # it matched and did not answer: its step passes
            differences = ["it matches, but its current step has pass: true (the next rules answer)"]
        return NearRule(self.label, self.file.loaded.where("routes", self.index), tuple(differences))

    def answer(self, view: _View, base: str) -> Answer | Refusal | None:
        params = self.matcher.match(view)
        if params is None:
            return None
        n = self.calls
        self.calls += 1
        total = len(self.expanded)
        if n < total:
            k = n
        elif self.route.when_exhausted == "cycle":
            k = n % total
        elif self.route.when_exhausted == "repeat-last":
            k = total - 1
        else:
            return Refusal(
                source=f"{self.file.label}: {self.label}",
                reason=f"its sequence ran out after {total} answer{'s' if total != 1 else ''} "
                "(when-exhausted: error)",
            )
        j, spec = self.expanded[k]
        if isinstance(spec, Step) and spec.pass_:
            return None
        if self.route.sequence is not None:
            at: DataPath = ("routes", self.index, "sequence", j)
            source = f"{self.file.label}: {self.label} step {j + 1}/{len(self.route.sequence)}"
        else:
            at = ("routes", self.index, "respond")
            source = f"{self.file.label}: {self.label}"
        ctx = _Ctx(self.machine, view, base, self.file, params, None)
        rendered = self.machine.render_response(spec, at, ctx)
        return rendered.answer(source)


# -- operations ---------------------------------------------------------------------------------------


class _StatusAnswer(NamedTuple):
    """A status answer made once: ``key`` is (step, facts, on_resource, terminal); whether it gives the
    resource follows from the step and the facts (status, resource URL)."""

    key: tuple[object, ...]
    response: Response
    advertised: float | None


class _Op:
    """One operation's state (mutable; guarded by the machine's lock)."""

    __slots__ = (
        "_facts", "answered", "created", "ended", "ended_by", "forced", "held", "held_at", "id", "polled",
        "polls", "resource_id", "resource_ready", "resource_url", "rule", "stage", "stage_began",
        "stage_polls", "start", "status", "status_url", "terminal", "virtual",
    )

    def __init__(self, rule: _OperationRule, op_id: str, resource_id: str, created: float) -> None:
        self.rule = rule
        self.id = op_id
        self.polled = f"{rule.file.label}: operation {_short(op_id)}, poll "
        """The start of each poll's ``Answer.source`` (the poll number and status follow)."""
        self.resource_id = resource_id
        self.created = created
        self.status_url = ""
        self.resource_url: str | None = None
        self.polls = 0
        self.stage = 0
        self.stage_polls = 0
        self.stage_began = 0.0
        self.virtual = 0.0
        first = rule.operation.steps[0].status
        self.status = first if first is not None else "NotStarted"
        self.terminal = False
        self.resource_ready = False
        self.start: dict[str, Any] = {}
        self._facts: OperationFacts | None = None
        self.ended: float | None = None
        """Wall-clock time of its first terminal answer."""
        self.held = rule.operation.hold
        self.held_at = 0.0
        """The operation's clock when it was held (``steer``)."""
        self.forced: PollStep | None = None
        self.answered: _StatusAnswer | None = None
        """The last status answer and what it was made from (``_OperationRule.status_response``): polls of
        one stage are answered with the same bytes, made once."""
        """The step that answers every poll from now on: an end set by ``steer`` or a cancel request."""
        self.ended_by: str | None = None

    def context(self) -> dict[str, Any]:
        moment = datetime.fromtimestamp(self.created, UTC)
        return {
            "id": self.id,
            "name": self.rule.operation.name,
            "status": self.status,
            "poll": self.polls,
            "created": format_created_date_time(moment),
            "created_iso": moment.isoformat(),
            "resource_id": self.resource_id,
            "status_url": self.status_url,
            "resource_url": self.resource_url,
            "start": self.start,
        }

    def facts(self) -> OperationFacts:
        """What the dialect needs to render an answer for this operation (made again when its status
        changed: polls of one stage share one)."""
        made = self._facts
        if (
            made is not None
            and made.status == self.status
            and made.status_url == self.status_url
            and made.ended == self.ended
        ):
            return made
        made = self._facts = OperationFacts(
            id=self.id,
            created=self.created,
            status=self.status,
            status_url=self.status_url,
            resource_id=self.resource_id,
            resource_url=self.resource_url,
            start_method=self.start.get("method", ""),
            start_path=self.start.get("path", ""),
            ended=self.ended,
        )
        return made

    def snapshot(self) -> OperationState:
        return OperationState(
            id=self.id,
            rule=self.rule.operation.name or f"operation {self.rule.index + 1}",
            file=self.rule.file.label,
            status=self.status,
            polls=self.polls,
            terminal=self.terminal,
            created=self.created,
            status_url=self.status_url,
            resource_id=self.resource_id,
            held=self.held,
            ended_by=self.ended_by,
            stage=self.stage,
        )

    def reading(self) -> float | None:
        """The operation's virtual clock (seconds since its start) when it runs on one, else None."""
        return self.virtual if self.rule.file.clock == "virtual" else None

    def advance(self, advertised: float | None) -> None:
        """After an answer of this operation: the virtual clock moves by what it advertised."""
        self.virtual += advertised if advertised is not None else VIRTUAL_STEP_WITHOUT_RETRY_AFTER


class _OperationRule:
    def __init__(self, machine: ScenarioMachine, file: _File, index: int, operation: Operation) -> None:
        self.machine = machine
        self.file = file
        self.index = index
        self.operation = operation
        self.label = f'operation "{operation.name}"' if operation.name else f"operation {index + 1}"
        self.dialect = dialect(operation.style)
        self.start = _Matcher(operation.start)
        self.status_path = _PathPattern(operation.status_path)
        self.resource_path = (
            _PathPattern(operation.resource_path) if operation.resource_path is not None else None
        )
        self.durations = [
            parse_duration(step.for_) if step.for_ is not None and step.respond is None else None
            for step in operation.steps
        ]
        header = operation.header
        if header is None:
            names: Sequence[str] = (
                () if "header" in operation.model_fields_set else self.dialect.status_headers
            )
        else:
            names = [header] if isinstance(header, str) else header
        self.headers = [n for n in names if n.strip().lower() != "none"]
        self.ops: dict[str, _Op] = {}
        self.by_resource: dict[str, _Op] = {}
        self.by_start_path: dict[str, _Op] = {}
        """arm: the path of each PUT/PATCH start, where the client GETs the resource (latest operation)."""
        self.tags: dict[tuple[str, int | None], OperationTag] = {}
        self.counter = 0
        cancel = operation.cancel
        self.cancel_path = _PathPattern(
            cancel.path if cancel is not None and cancel.path is not None else self.status_path.template
        )
        methods = cancel.method if cancel is not None else "DELETE"
        listed = [methods] if isinstance(methods, str) else methods
        self.cancel_methods = frozenset(m.upper() for m in listed)

    def reset(self) -> None:
        self.ops.clear()
        self.by_resource.clear()
        self.by_start_path.clear()
        self.counter = 0

    def at(self, *keys: str | int) -> DataPath:
        return ("operations", self.index, *keys)

    def url(self, path: _PathPattern, values: Mapping[str, str], base: str) -> str:
        rendered = path.render(values)
        return base + rendered if self.operation.url_form == "absolute" else rendered

    def near(self, view: _View) -> tuple[int, NearRule]:
        """The closest of this operation's rules to answering ``view`` (see ``ScenarioMachine.nearest``)."""
        score, differences = self.start.differences(view)
        candidates = [(score, "start", "start", differences)]
        status = self._near_poll(view, self.status_path, ("GET", "HEAD"))
        if status[1] is not None and status[1].get("operationId", "") not in self.ops:
            status[2].append(
                f"no operation {_clip(status[1].get('operationId', ''))} was started by this rule "
                "since the last reset"
            )
        candidates.append(
            (status[0] + (1 if status[1] is not None else 0), "status", "status-path", status[2])
        )
        if self.resource_path is not None:
            resource = self._near_poll(view, self.resource_path, ("GET",))
            unknown = 0
            if resource[1] is not None:
                found = self.by_resource.get(resource[1].get("resourceId", ""))
                if found is None or not found.resource_ready:
                    unknown = 1
                    resource[2].append(
                        f"no operation of this rule created a resource "
                        f"{_clip(resource[1].get('resourceId', ''))} since the last reset"
                    )
            candidates.append((resource[0] + unknown, "resource", "resource-path", resource[2]))
        score, what, key, differences = min(candidates, key=lambda c: c[0])
        where = self.file.loaded.where("operations", self.index, key)
        return score, NearRule(f"{self.label} ({what})", where, tuple(differences))

    def _near_poll(
        self, view: _View, pattern: _PathPattern, methods: tuple[str, ...]
    ) -> tuple[int, dict[str, str] | None, list[str]]:
        """A poll or resource rule's score, the path values when the path fits, and the differences."""
        score, differences = 0, []
        if view.method not in methods:
            score += _METHOD_WEIGHT
            differences.append(f"method: {view.method}, expected {' or '.join(methods)}")
        params = pattern.match(view.path)
        if params is None:
            score += _PATH_WEIGHT
            differences.append(f"path: {_clip(view.path)} does not fit {pattern.template.partition('?')[0]}")
        return score, params, differences

    # -- start

    def answer_start(self, view: _View, base: str) -> Answer | None:
        params = self.start.match(view)
        if params is None:
            return None
        operation = self.operation
        if operation.id_format == "counter":
            self.counter += 1
            op_id = resource_id = str(self.counter)
        else:
            op_id, resource_id = self.machine.new_id(), self.machine.new_id()
        op = _Op(self, op_id, resource_id, self.machine.now())
        op.start = {
            "method": view.method,
            "path": view.path,
            "query": dict(view.query),
            "headers": dict(view.headers),
            "json": view.json,
            "form": dict(view.form),
            "params": dict(params),
        }
        values = {**params, "operationId": op_id, "resourceId": resource_id}
        op.status_url = self.url(self.status_path, values, base)
        if self.resource_path is not None:
            op.resource_url = self.url(self.resource_path, values, base)
        op.stage_began = op.held_at = self.machine.clock_value(op)
        self.ops[op_id] = op
        self.by_resource[resource_id] = op
        if self.dialect.final_get == "start-url" and view.method in ("PUT", "PATCH"):
            self.by_start_path[view.path] = op
        self.machine.register(op)

        ctx = _Ctx(self.machine, view, base, self.file, params, op)
        default_body = start_body(self.dialect, op.facts())
        rendered = self.machine.render_response(
            operation.accepted or _EMPTY_RESPONSE,
            self.at("accepted"),
            ctx,
            default_status=self.dialect.start_code(view.method),
            default_json=default_body if default_body is not None else _NO_BODY,
        )
        response = rendered.response
        for name in self.headers:
            if response.header(name) is None:
                response = response.replace(headers=(*response.headers, (name, op.status_url)))
        virtual = op.reading()
        op.advance(rendered.retry_after)
        return rendered.answer(
            f"{self.file.label}: start of {self.label} ({_short(op_id)})",
            response,
            virtual=virtual,
            operation=op_id,
            status=op.status,
            tag=self.tag("start"),
        )

    def tag(self, role: Literal["start", "poll", "resource"], step: int | None = None) -> OperationTag:
        """The structured facts of an answer of this rule (``Answer.tag``), made once per role and step."""
        found = self.tags.get((role, step))
        if found is None:
            found = self.tags[(role, step)] = OperationTag(
                f"{self.file.label}: {self.label}",
                self.dialect.name,
                role,
                step,
                tuple(self.headers),
                self.operation.url_form,
            )
        return found

    # -- polls

    def answer_status(self, view: _View, base: str) -> Answer | None:
        if view.method not in ("GET", "HEAD"):
            return None
        params = self.status_path.match(view.path)
        if params is None:
            return None
        op = self.ops.get(params.get("operationId", ""))
        if op is None:
            return None
        return self.poll(op, view, base, params)

    def poll(
        self, op: _Op, view: _View, base: str, params: Mapping[str, str], *, on_resource: bool = False
    ) -> Answer:
        """Answer a poll of ``op`` by its current stage (rules 5 and 6). ``on_resource``: an ``arm``
        operation without a status header, polled at its PUT/PATCH URL (the resource's
        ``provisioningState`` is the status, as azure-mgmt-core's BodyContentPolling reads it)."""
        j = op.stage if op.held else self.stage_of(op)  # held: the step it is at, however long
        step = op.forced if op.forced is not None else self.operation.steps[j]
        if not op.held:
            op.stage_polls += 1
        op.polls += 1
        if step.respond is not None:
            ctx = _Ctx(self.machine, view, base, self.file, params, op)
            rendered = self.machine.render_response(step.respond, self.at("steps", j, "respond"), ctx)
            virtual = op.reading()
            op.advance(rendered.retry_after)
            what = f"fault {rendered.fault}" if rendered.fault else str(rendered.response.status)
            return rendered.answer(
                f"{op.polled}{op.polls} ({what} instead of {op.status})",
                _for_method(view, rendered.response),
                virtual=virtual,
                operation=op.id,
                poll=op.polls,
                status=op.status,
                tag=self.tag("poll", j),
            )
        assert step.status is not None
        status = op.status = step.status
        terminal = op.terminal = status.lower() in TERMINAL_STATUSES
        if terminal and op.ended is None:
            op.ended = self.machine.now()
        response, advertised = self.status_response(op, step, j, view, base, params, on_resource=on_resource)
        virtual = op.virtual if self.file.clock == "virtual" else None  # op.reading(), op.advance() inline
        op.virtual += advertised if advertised is not None else VIRTUAL_STEP_WITHOUT_RETRY_AFTER
        # positional, in Answer's order: a poll is the most frequent answer, and keywords cost twice as much
        return Answer(
            response.replace(body=b"") if view.method == "HEAD" else response,  # _for_method, inline
            f"{op.polled}{op.polls} ({status})",
            0.0,  # delay
            None,  # dribble
            None,  # fault
            op.id,
            op.polls,
            status,
            terminal,
            advertised,
            self.tag("poll", j),
            virtual,
        )

    def stage_of(self, op: _Op) -> int:
        """The stage that answers this poll (rule 5), moving on from stages that are over."""
        steps = self.operation.steps
        while op.stage < len(steps) - 1:
            duration = self.durations[op.stage]
            if duration is not None:
                if self.machine.clock_value(op) - op.stage_began < duration:
                    break
                op.stage_began += duration
            else:
                if op.stage_polls < (steps[op.stage].times or 1):
                    break
                op.stage_began = self.machine.clock_value(op)
            op.stage += 1
            op.stage_polls = 0
        return op.stage

    def status_response(
        self,
        op: _Op,
        step: PollStep,
        j: int,
        view: _View,
        base: str,
        params: Mapping[str, str],
        *,
        on_resource: bool = False,
    ) -> tuple[Response, float | None]:
        """The status answer of ``step`` (rule 6: the dialect's answer, then the step's overrides) and the
        Retry-After seconds it advertises; the template context is made only when it is rendered."""
        facts = op.facts()
        key = (step, facts, on_resource, op.terminal)
        cached = op.answered
        if cached is not None and cached.key == key:  # compared field by field, with `is` first
            return cached.response, cached.advertised  # (what follows depends on nothing else)
        success = is_success(op.status)
        if self.dialect.name == "location":
            with_resource = success and step.resource is not False
        else:
            with_resource = success and op.resource_url is not None and step.resource is not False
        if with_resource:
            op.resource_ready = True
        ctx = _Ctx(self.machine, view, base, self.file, params, op)
        response, advertised = self._status_response(op, step, j, ctx, facts, with_resource, on_resource)
        if self._made_once(step, on_resource, with_resource):
            op.answered = _StatusAnswer(key, response, advertised)
        return response, advertised

    def _made_once(self, step: PollStep, on_resource: bool, with_resource: bool) -> bool:
        """Whether ``step``'s status answer depends on nothing but the operation's facts: no templates
        (``json``, ``headers``, ``error``, a rendered ``resource``) and no date in its Retry-After."""
        if step.json_ is not None or step.headers or step.error is not None:
            return False
        if self.operation.resource and (on_resource or (self.dialect.name == "location" and with_resource)):
            return False
        retry = step.retry_after if "retry_after" in step.model_fields_set else self.operation.retry_after
        return retry is None or isinstance(retry, int | float) or (
            isinstance(retry, RetryAfterSpec) and retry.date is None and retry.raw is None
        )

    def _status_response(
        self,
        op: _Op,
        step: PollStep,
        j: int,
        ctx: _Ctx,
        facts: OperationFacts,
        with_resource: bool,
        on_resource: bool,
    ) -> tuple[Response, float | None]:
        operation = self.operation
        status = op.status
        error = None
        if is_failure(status) or step.error is not None:
            error = self.error(step, j, ctx, steered=step is op.forced)
        base = status_answer(self.dialect, facts, with_resource=with_resource, error=error)
        code, headers, body = base.code, base.headers, base.body
        if on_resource:  # the resource itself, its provisioningState the status (and a failure's error,
            # which azure-core's HttpResponseError reads from the body)
            code, headers, body = 200, (("Content-Type", _JSON),), resource_body(self.dialect, facts)
            if error is not None:
                body["error"] = error
        if (on_resource or (self.dialect.name == "location" and with_resource and code == 200)) and (
            operation.resource
        ):
            rendered = self.machine.render_response(operation.resource, self.at("resource"), ctx)
            code, headers = rendered.response.status, rendered.response.headers
            body = _json_object(rendered.response.body) if step.json_ is not None else None
            result = rendered.response.body
        else:
            result = None
        if step.http_status is not None:
            code = step.http_status
        if step.json_ is not None:
            if body is None:
                body = {}
                headers = set_header(headers, "Content-Type", _JSON)
            for key, value in self.machine.render_data(step.json_, self.at("steps", j, "json"), ctx).items():
                if value is None:
                    body.pop(key, None)
                else:
                    body[key] = value
        retry: _RetryAfter
        if "retry_after" in step.model_fields_set:
            retry = self.machine.retry_after(step.retry_after, code)
        elif not op.terminal:
            retry = self.machine.retry_after(operation.retry_after, code)
        else:
            retry = ((), None)
        for name, value in retry[0]:
            headers = set_header(headers, name, value)
        for name, raw in step.headers.items():
            headers = set_header(
                headers,
                name,
                self.machine.render_header(name, raw, self.at("steps", j, "headers", name), ctx),
            )
        content = _json_bytes(body) if body is not None else result if result is not None else b""
        response = Response(status=code, headers=headers, body=content)
        return response, self.machine.advertised(headers, retry)

    def error(self, step: PollStep, j: int, ctx: _Ctx, *, steered: bool = False) -> dict[str, Any]:
        """``step``'s OData error, its templates rendered; ``steered``: given by a test steering the
        operation (``fail``), sent as it was given (a ``{{`` in it is text, not a template)."""
        if step.error is None:
            return dict(DEFAULT_ERROR)
        data = step.error.model_dump()
        error = {k: v for k, v in data.items() if v is not None or k not in ("message", "details")}
        if steered:
            return error
        rendered: dict[str, Any] = self.machine.render_data(error, self.at("steps", j, "error"), ctx)
        return rendered

    # -- cancel requests

    def answer_cancel(self, view: _View, base: str) -> Answer | None:
        """A cancel request (the operation's ``cancel`` rule): the operation ends Canceled unless it has
        ended already; the answer is ``cancel.respond``, else its status answer (aip-151: ``{}``)."""
        cancel = self.operation.cancel
        if cancel is None or view.method not in self.cancel_methods:
            return None
        params = self.cancel_path.match(view.path)
        if params is None:
            return None
        if "operationId" in self.cancel_path.names:
            op = self.ops.get(params.get("operationId", ""))
        elif "resourceId" in self.cancel_path.names:
            op = self.by_resource.get(params.get("resourceId", ""))
        else:  # named by the start's path values (arm: DELETE on the PUT's URL): the latest one
            op = next(
                (o for o in reversed(self.ops.values()) if _agrees(o.start.get("params", {}), params)),
                None,
            )
        if op is None:
            return None
        if not op.terminal:
            op.forced, op.ended_by = PollStep.model_validate({"status": "Canceled"}), "cancel"
            op.status, op.terminal = "Canceled", True
        ctx = _Ctx(self.machine, view, base, self.file, params, op)
        source = f"{self.file.label}: cancel of operation {_short(op.id)} ({op.status})"
        if cancel.respond is not None:
            rendered = self.machine.render_response(cancel.respond, self.at("cancel", "respond"), ctx)
            return rendered.answer(source, operation=op.id, status=op.status, terminal=op.terminal)
        if self.operation.style == "aip-151":
            response = Response(status=200, headers=(("Content-Type", _JSON),), body=b"{}")
            return Answer(response=response, source=source, operation=op.id, status=op.status)
        if self.operation.style == "location":  # its status answer (400 Canceled) would refuse the cancel
            response = Response(status=204, headers=(), body=b"")
            return Answer(response=response, source=source, operation=op.id, status=op.status)
        j = op.stage
        step = op.forced if op.forced is not None else self.operation.steps[j]
        if step.status is None:  # not reachable: an operation ends on a status step
            step = PollStep.model_validate({"status": op.status})
        # arm without a monitor: its status answer is the resource (provisioningState Canceled)
        on_resource = self.dialect.final_get == "start-url" and not self.headers
        response, advertised = self.status_response(op, step, j, view, base, params, on_resource=on_resource)
        return Answer(
            response=response,
            source=source,
            operation=op.id,
            status=op.status,
            terminal=op.terminal,
            retry_after=advertised,
        )

    # -- resources

    def answer_resource(self, view: _View, base: str) -> Answer | None:
        if view.method != "GET":
            return None
        op = self.by_start_path.get(view.path) if self.by_start_path else None
        if op is not None:  # arm: the resource at the PUT/PATCH URL, as provisioned so far
            params: Mapping[str, str] = op.start.get("params", {})
            if not self.headers:  # no status monitor: the resource's provisioningState is polled
                return self.poll(op, view, base, params, on_resource=True)
        else:
            if self.resource_path is None:
                return None
            found = self.resource_path.match(view.path)
            if found is None:
                return None
            params = found
            op = self.by_resource.get(params.get("resourceId", ""))
            if op is None or not op.resource_ready:
                return None
        ctx = _Ctx(self.machine, view, base, self.file, params, op)
        rendered = self.machine.render_response(
            self.operation.resource or _EMPTY_RESPONSE,
            self.at("resource"),
            ctx,
            default_json=resource_body(self.dialect, op.facts()),
        )
        return rendered.answer(
            f"{self.file.label}: resource of operation {_short(op.id)}",
            virtual=op.reading(),
            operation=op.id,
            status=op.status,
            terminal=op.terminal,
            tag=self.tag("resource"),
        )


# -- helpers ------------------------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body parsed (a step's ``json`` merges into it); {} for anything else."""
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def _malformed(body: bytes) -> bytes:
    """The first half of ``body``, shorter still while it parses as JSON (a number's prefix may)."""
    cut = body[: len(body) // 2]
    while cut:
        try:
            json.loads(cut)
        except ValueError:
            break
        cut = cut[:-1]
    return cut


def _first_error(error: ValueError) -> str:
    """The first problem pydantic found, in one line (``error.code: Field required``)."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            where = ".".join(str(part) for part in found[0].get("loc", ()))
            return f"{where}: {found[0].get('msg', '')}" if where else str(found[0].get("msg", ""))
    return str(error)


def _agrees(started: Mapping[str, str], values: Mapping[str, str]) -> bool:
    """The start request's path values hold every one of ``values`` (a cancel path named by them)."""
    return all(started.get(name) == value for name, value in values.items())


def _short(op_id: str) -> str:
    return op_id if len(op_id) <= 8 else op_id[:8] + "…"


def _for_method(view: _View, response: Response) -> Response:
    """A HEAD request gets the headers without the body."""
    return response.replace(body=b"") if view.method == "HEAD" else response
