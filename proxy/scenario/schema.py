"""The scenario language: typed models of a scenario file (pydantic), and the JSON Schema derived from them.

A file has ``routes`` (match -> respond / sequence) and ``operations`` (long-running operations as a
first-class block). Keys are kebab-case in YAML (``status-path``, ``retry-after``). Rules answer in file
order: every route first, then every operation; the first that matches answers (see docs/scenarios.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Defined without pydantic in answer.py (the request path needs them); part of the scenario language here.
from proxy.scenario.answer import TERMINAL_STATUSES as TERMINAL_STATUSES
from proxy.scenario.answer import FaultKind as FaultKind

SCHEMA_ID = "https://replay-proxy.dev/schemas/scenario-1.json"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: float | int | str) -> float:
    """Seconds from ``1.5``, ``"1.5"``, ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '500ms', '30s', '2m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration: use seconds (1.5) or '500ms', '30s', '2m', '1h'")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a duration: it must be zero or more seconds")
    return seconds


Duration = Annotated[
    float | int | str,
    Field(description="Seconds (1.5) or a string with a unit: '500ms', '30s', '2m', '1h'."),
]


class Model(BaseModel):
    """Base of every node: unknown keys are errors, kebab-case aliases, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- matching -------------------------------------------------------------------------------------------


class Condition(Model):
    """A condition on a query parameter, header or JSON field beyond plain equality."""

    present: bool | None = Field(
        None, description="true: must be present (any value); false: must be absent."
    )
    equals: str | int | float | bool | None = Field(None, description="Must equal this value.")
    regex: str | None = Field(None, description="Must match this regular expression (search).")
    one_of: list[str | int | float | bool] | None = Field(
        None, alias="one-of", description="Must be one of these."
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except (re.error, OverflowError, RecursionError) as e:  # huge repeats, deep nesting
                raise ValueError(f"invalid regular expression: {e}") from None
            problem = linear_regex_problem(v)
            if problem is not None:
                raise ValueError(problem)
        return v


def linear_regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (google-re2), which matches in time linear in the text: a request cannot
    make it backtrack (``^(a+)+$`` on n ``a`` then ``!`` takes Python's ``re`` 2**n steps: hours for 40).
    Raises ``re2.error`` for what RE2 does not support (backreferences, look-around, ``\\Z``)."""
    import re2  # imported on first use: start-up time

    options = re2.Options()
    options.log_errors = False  # RE2 would print each refusal on stderr
    return re2.compile(pattern, options)


def linear_regex_problem(pattern: str) -> str | None:
    """Why RE2 refuses ``pattern``, in words, or None."""
    import re2

    try:
        linear_regex(pattern)
    except re2.error as e:
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        return (
            f"regular expression not supported: {why}. Regexes run with RE2 (linear time, so a request "
            "cannot freeze the proxy): no backreferences, look-around or \\Z (use \\z); see "
            "https://github.com/google/re2/wiki/Syntax"
        )
    return None


Scalar = str | int | float | bool
ValueCondition = Annotated[
    Scalar | Condition | None,
    Field(
        description="A value the field must equal; null: the field must be absent; "
        "or {present: true}, {regex: ...}, {one-of: [...]}."
    ),
]


class Match(Model):
    """What a request must look like. Every given part must hold; absent parts match anything."""

    method: str | list[str] | None = Field(None, description="HTTP method(s), e.g. POST or [GET, HEAD].")
    path: str | None = Field(
        None,
        description="Path, with {name} for one segment and {name*} for the rest, e.g. /tilesets/operations/{id}.",
    )
    query: dict[str, ValueCondition] | None = Field(None, description="Query parameters, by name.")
    headers: dict[str, ValueCondition] | None = Field(
        None, description="Request headers (names case-insensitive)."
    )
    json_: dict[str, ValueCondition] | None = Field(
        None, alias="json", description="JSON body fields by dotted path, e.g. properties.name or items.0.id."
    )
    form: dict[str, ValueCondition] | None = Field(
        None,
        description="Fields of an application/x-www-form-urlencoded body, by name, e.g. Action: DescribeStacks "
        "(AWS query protocol).",
    )

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("a path starts with '/', e.g. /tilesets")
        return v


# -- responses ------------------------------------------------------------------------------------------


class RetryAfterSpec(Model):
    """Retry-After in any form clients must survive (use one key)."""

    seconds: float | None = Field(
        None,
        ge=0,
        description="Retry-After: <seconds>; a fraction (0.5) goes out valid, as retry-after-ms: 500 (plus Retry-After rounded up on 400+ answers).",
    )
    date: Duration | None = Field(
        None,
        description="Retry-After as an HTTP-date this far in the future (negative not allowed; use raw).",
    )
    raw: str | None = Field(None, description="Send this text verbatim, e.g. 'soon' or a fixed past date.")
    ms: int | None = Field(None, ge=0, description="retry-after-ms: <milliseconds> instead of Retry-After.")
    x_ms: int | None = Field(None, ge=0, alias="x-ms", description="x-ms-retry-after-ms: <milliseconds>.")

    @model_validator(mode="after")
    def _one(self) -> RetryAfterSpec:
        given = [k for k in ("seconds", "date", "raw", "ms", "x_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of: seconds, date, raw, ms, x-ms")
        return self


RetryAfter = Annotated[
    float | int | str | RetryAfterSpec | None,
    Field(
        description="Seconds (1; a fraction such as 0.5 goes out as retry-after-ms: 500), a raw header text "
        "('soon', '0.5' to send an invalid fraction on purpose), a mapping {seconds|date|raw|ms|x-ms: ...}, "
        "or null for no Retry-After."
    ),
]


class DelaySpec(Model):
    """A random delay, uniform between min and max."""

    min: Duration = 0
    max: Duration


class ResponseSpec(Model):
    """A response (or a fault) with templated headers and body."""

    status: int = Field(200, ge=100, le=999, description="HTTP status code.")
    headers: dict[str, str | int | float] = Field(
        default_factory=dict, description="Headers; values are templates."
    )
    json_: Any = Field(None, alias="json", description="JSON body; string values are templates.")
    text: str | None = Field(None, description="Text body (a template).")
    file: str | None = Field(
        None, description="Body from a file, relative to the scenario's folder and inside it."
    )
    content_type: str | None = Field(
        None, alias="content-type", description="Content-Type (default from the body kind)."
    )
    retry_after: RetryAfter = Field(None, alias="retry-after")
    delay: Duration | DelaySpec | None = Field(
        None, description="Wait before answering: seconds or {min, max}."
    )
    dribble: Duration | None = Field(None, description="Send the body slowly, spread over this long.")
    fault: FaultKind | None = Field(
        None,
        description="reset: TCP reset; close: close with no response; hang: never answer; "
        "truncate: body shorter than its Content-Length; malformed-json: cut the JSON body in half.",
    )

    @model_validator(mode="after")
    def _one_body(self) -> ResponseSpec:
        bodies = [k for k in ("json_", "text", "file") if getattr(self, k) is not None]
        if len(bodies) > 1:
            raise ValueError("give at most one body: json, text or file")
        return self


class Step(ResponseSpec):
    """One answer of a sequence; ``times`` says for how many calls, ``pass`` lets the next rule answer."""

    times: int = Field(1, ge=1, description="How many consecutive calls this step answers.")
    pass_: bool = Field(
        False,
        alias="pass",
        description="Do not answer: the next matching rule (or the cassette/upstream) does.",
    )


WhenExhausted = Literal["repeat-last", "cycle", "error"]


class Route(Model):
    """A low-level rule: requests that match get ``respond``, or the ``sequence`` steps in turn."""

    name: str | None = None
    match: Match
    respond: ResponseSpec | None = None
    sequence: list[Step] | None = Field(None, min_length=1)
    when_exhausted: WhenExhausted = Field(
        "repeat-last",
        alias="when-exhausted",
        description="After the last step: repeat it, cycle, or error (599).",
    )

    @model_validator(mode="after")
    def _one_answer(self) -> Route:
        if (self.respond is None) == (self.sequence is None):
            raise ValueError("give exactly one of: respond, sequence")
        return self


# -- long-running operations ----------------------------------------------------------------------------


class OperationError(Model):
    """An OData error (Azure) or google.rpc.Status-like error; details may be an object or a list."""

    model_config = ConfigDict(extra="allow", frozen=True)
    code: str | int
    message: str | None = None
    details: Any = None


class PollStep(Model):
    """One stage of an operation's progression, or (with ``respond``) a poll answered by something else."""

    status: str | None = Field(
        None, description="Status in the body: NotStarted, Running, Succeeded, Failed, ..."
    )
    times: int | None = Field(None, ge=1, description="Polls this stage lasts (default 1).")
    for_: Duration | None = Field(None, alias="for", description="Time this stage lasts (instead of times).")
    retry_after: RetryAfter = Field(
        None, alias="retry-after", description="Overrides the operation's retry-after."
    )
    http_status: int | None = Field(
        None, alias="http-status", ge=100, le=999, description="Overrides the status code."
    )
    resource: bool | None = Field(
        None,
        description="On success: whether a resource was created (creator-v1: 201 + Location + "
        "resourceLocation; location: 200 with the result, false: 204).",
    )
    error: OperationError | None = Field(None, description="On failure: the error in the body.")
    headers: dict[str, str | int | float] = Field(
        default_factory=dict, description="Extra headers (templates)."
    )
    json_: dict[str, Any] | None = Field(
        None, alias="json", description="Extra or replaced body fields (templates)."
    )
    respond: ResponseSpec | None = Field(
        None, description="Answer this poll with this response or fault instead (the status does not change)."
    )

    @model_validator(mode="after")
    def _shape(self) -> PollStep:
        if self.respond is None and self.status is None:
            raise ValueError("a step needs a status (e.g. Running) or a respond (e.g. a 503 or a fault)")
        if self.times is not None and self.for_ is not None:
            raise ValueError("give times or for, not both")
        return self


StatusStyle = Literal["creator-v1", "creator-v2", "aip-151", "location", "arm"]
"""The dialects of ``proxy/dialects.py``."""


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\*?\}")


class Cancel(Model):
    """A request that cancels an operation: the operation's next poll answers Canceled (terminal)."""

    method: str | list[str] = Field(
        "DELETE", description="HTTP method(s) of the cancel request, e.g. DELETE or POST (AIP-151's :cancel)."
    )
    path: str | None = Field(
        None,
        description="Path of the cancel request with {operationId} (or {resourceId}), e.g. "
        "/operations/{operationId}:cancel, or with only placeholders of the start path (the latest "
        "operation started with those values: arm's DELETE on the PUT's URL); default: the status-path "
        "(without its ?query).",
    )
    respond: ResponseSpec | None = Field(
        None,
        description="The answer to the cancel request (templates see the operation); default: the "
        "operation's status answer, now Canceled (aip-151: 200 with an empty JSON object).",
    )

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("a path starts with '/', e.g. /operations/{operationId}:cancel")
        return v


class Operation(Model):
    """A long-running operation: each matching start request creates one with its own id and progression."""

    name: str | None = None
    start: Match
    style: StatusStyle = Field(
        "creator-v1",
        description="The dialect: creator-v1 (operationId, createdDateTime, status, resourceLocation), "
        "creator-v2 (operationId, created, status; Resource-Location header), aip-151 (name, done, "
        "error/response), location (202 while running, then 200 with the result / 204 at the same URL; a "
        "failure is a 400), arm (Azure-AsyncOperation: {id, name, status, startTime, endTime, error}; after a "
        "PUT/PATCH the original URL answers the resource with properties.provisioningState).",
    )
    status_path: str = Field(
        "/operations/{operationId}",
        alias="status-path",
        description="Where the status is polled; {operationId} is the generated id; may end with ?query.",
    )
    header: str | list[str] | None = Field(
        None,
        description="Header(s) of the accepted response carrying the status URL: Location, Operation-Location, "
        "Azure-AsyncOperation, or none. Default by style: creator-v1 Location, creator-v2 Operation-Location, "
        "aip-151 none (the operation's name is in the body), location Location, arm Azure-AsyncOperation (arm "
        "with none: the PUT/PATCH URL is polled, its provisioningState the status).",
    )
    url_form: Literal["absolute", "relative"] = Field(
        "absolute", alias="url-form", description="Status and resource URLs as absolute URLs or paths."
    )
    accepted: ResponseSpec | None = Field(
        None,
        description="The answer to the start request (default 202, empty body; aip-151 200 with the name; arm "
        "201 for PUT, 200 for PATCH with the resource) plus the status URL header.",
    )
    retry_after: RetryAfter = Field(
        1, alias="retry-after", description="Retry-After on non-terminal answers."
    )
    steps: list[PollStep] = Field(min_length=1)
    resource_path: str | None = Field(
        None, alias="resource-path", description="Path of the created resource, e.g. /tilesets/{resourceId}."
    )
    resource: ResponseSpec | None = Field(
        None,
        description="The answer to GET resource-path (templates see the operation); in location, the "
        "successful poll's answer; in arm, the answer to GET of a PUT/PATCH start's URL.",
    )
    id_format: Literal["uuid", "counter"] = Field(
        "uuid", alias="id-format", description="How operation ids are made."
    )
    cancel: Cancel | None = Field(
        None,
        description="A request that cancels an operation, e.g. {method: POST, path: "
        "/operations/{operationId}:cancel} or {method: DELETE}: its next poll answers Canceled.",
    )
    hold: bool = Field(
        False,
        description="Start every operation held: it stays at its first step until the control API (or "
        "ReplayProxy.operations) releases, advances or ends it; for testing a client's timeout.",
    )

    @field_validator("status_path", "resource_path")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("a path starts with '/', e.g. /operations/{operationId}")
        return v

    @model_validator(mode="after")
    def _id_in_path(self) -> Operation:
        if "{operationId}" not in self.status_path:
            raise ValueError("status-path must contain {operationId}, e.g. /operations/{operationId}")
        if self.resource_path is not None and "{resourceId}" not in self.resource_path:
            raise ValueError("resource-path must contain {resourceId}, e.g. /tilesets/{resourceId}")
        cancel_path = self.cancel.path if self.cancel is not None else None
        if cancel_path is not None and "{operationId}" not in cancel_path and "{resourceId}" not in cancel_path:
            start_names = set(_PLACEHOLDER.findall(self.start.path or ""))
            unknown = [n for n in _PLACEHOLDER.findall(cancel_path) if n not in start_names]
            if unknown or self.start.path is None:
                raise ValueError(
                    "a cancel path names the operation: put {operationId} or {resourceId} in it, or only "
                    "placeholders of the start path (e.g. the PUT's own path, for an arm DELETE)"
                    + (f"; {{{unknown[0]}}} is not in the start path" if unknown else "")
                )
        if self.style == "arm" and "header" in self.model_fields_set:
            names = [self.header] if isinstance(self.header, str) else self.header or []
            methods = [self.start.method] if isinstance(self.start.method, str) else self.start.method or []
            no_monitor = all(n.strip().lower() == "none" for n in names)
            if no_monitor and not {m.upper() for m in methods} & {"PUT", "PATCH"}:
                raise ValueError(
                    "an arm operation without a status header is polled at the URL of its PUT or PATCH: "
                    "give start a method: PUT (or PATCH), or a header such as Azure-AsyncOperation"
                )
        return self


class Scenario(Model):
    """A scenario file."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        json_schema_extra={"$id": SCHEMA_ID, "title": "replay-proxy scenario"},
    )
    schema_: str | None = Field(None, alias="$schema", description="The JSON Schema, for editors.")
    name: str | None = None
    description: str | None = None
    clock: Literal["real", "virtual"] = Field(
        "real",
        description="virtual: an operation's time advances by each Retry-After it advertised, so time-based "
        "steps play as fast as the client polls.",
    )
    routes: list[Route] = Field(default_factory=list)
    operations: list[Operation] = Field(default_factory=list)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file (what `replay-proxy schema` prints)."""
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
