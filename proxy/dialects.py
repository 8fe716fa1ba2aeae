"""Long-running-operation dialects as data: one table, each entry able to *render* and to *recognise*.

A dialect is one wire style of long-running operation: what the start request is answered with (status
code, which header carries the status URL, the body), what a status poll is answered with while running
and at the end (status code, body shape, where the status is read), and what the client fetches last (the
final GET). The scenario machine (``proxy/scenario/machine.py``) renders answers from this table;
``proxy/operations.py`` reads recordings and journals with it. Pure code: no mitmproxy, no pydantic.

The dialects (``DIALECTS``, by name):

``creator-v1``
    Azure Maps Creator v1 (the seed, the old Microsoft REST guidelines' "stepwise LRO"): ``202`` +
    ``Location``; status body ``{operationId, createdDateTime, status}``; success with a resource is
    ``201`` + ``Location`` + ``resourceLocation``.
``creator-v2``
    Azure Maps Creator v2: ``202`` + ``Operation-Location``; ``{operationId, created, status}``; success
    with a resource adds ``Resource-Location``.
``aip-151``
    Google AIP-151: ``200 {name: operations/<id>, done: false}``; ``{name, done, metadata.status,
    response | error}`` (google.rpc.Status).
``location``
    "202 while running, then the result at the same URL" (azure-core ``LocationPolling``, Azure Maps batch
    APIs, ARM deletes and actions): ``202`` + ``Location``; each poll answers ``202`` (no body) while
    running; success is ``200`` with the result (``204`` without a body for a DELETE, or when the step
    says ``resource: false``); a failure is ``400`` with an OData ``error`` (the status code is all a
    client reads), and so is a cancel, with the error code ``Canceled`` (there is no status to say it).
``arm``
    Azure Resource Manager's ``Azure-AsyncOperation``: the start answers ``201`` (PUT), ``200`` (PATCH)
    or ``202`` (DELETE, POST) with the header, and for PUT/PATCH the resource with
    ``properties.provisioningState``; the status monitor answers ``200 {id, name, status, startTime,
    endTime, error}``; after Succeeded the client GETs the original URL of a PUT/PATCH (azure-core's
    final-state-via rule 4), which answers the resource with ``provisioningState: Succeeded``.

``Dialect.tested_with`` names the SDK pollers each one is proven against (tests/test_sdk_polling.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from proxy.scenario.answer import TERMINAL_STATUSES
from proxy.scenario.dates import format_created_date_time

DialectName = Literal["creator-v1", "creator-v2", "aip-151", "location", "arm"]
FinalGet = Literal["resource-path", "start-url", "none"]
"""What the client fetches after a success: the operation's ``resource-path`` (a Location, a
``resourceLocation``, a ``Resource-Location`` or ``response.name`` points at it), the start request's own
URL (ARM after a PUT/PATCH), or nothing (the last answer is the result)."""

DEFAULT_ERROR: dict[str, Any] = {"code": "OperationFailed", "message": "The operation failed."}
"""The error of a failed operation whose step gives none."""

_JSON = "application/json"
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Dialect:
    """One style of long-running operation (see the module docstring)."""

    name: DialectName
    status_headers: tuple[str, ...]
    """Headers of the start answer that carry the status URL (the scenario's default ``header``)."""
    start_codes: Mapping[str, int]
    """The start answer's status code by request method; ``*`` for any other."""
    running_code: int
    """The status code of a poll answer while the operation runs."""
    status_field: str | None
    """Dotted path of the status in a poll body (``None``: the status code is the status)."""
    marker: str | None
    """A status body field only this dialect writes (how ``proxy/operations.py`` tells them apart)."""
    final_get: FinalGet
    failure_code: int
    """The status code of a poll answer that reports a failure."""
    tested_with: tuple[str, ...]
    """The SDK pollers this dialect is proven against (tests/test_sdk_polling.py, tests/test_dialects.py)."""
    resource_status: str | None = None
    """Dotted path of the status in the *resource's* body, for a client that polls a PUT's or PATCH's own
    URL when no header gives a status URL (ARM: ``properties.provisioningState``, read by azure-mgmt-core's
    ``BodyContentPolling``); how ``proxy/journal.py`` reads the status of such a poll."""

    def start_code(self, method: str) -> int:
        return self.start_codes.get(method.upper(), self.start_codes["*"])


DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            name="creator-v1",
            status_headers=("Location",),
            start_codes={"*": 202},
            running_code=200,
            status_field="status",
            marker="createdDateTime",
            final_get="resource-path",
            failure_code=200,
            tested_with=(
                "the examples' client (examples/creator_client.py)",
                "@azure/core-lro createHttpPoller (tests/clients/azure_sdk_client.mjs)",
            ),
        ),
        Dialect(
            name="creator-v2",
            status_headers=("Operation-Location",),
            start_codes={"*": 202},
            running_code=200,
            status_field="status",
            marker="created",
            final_get="resource-path",
            failure_code=200,
            tested_with=(
                "azure-mgmt-core ARMPolling, with header: Azure-AsyncOperation (tests/test_sdk_polling.py)",
                "plain polling loops (tests/test_play.py)",
            ),
        ),
        Dialect(
            name="aip-151",
            status_headers=(),
            start_codes={"*": 200},
            running_code=200,
            status_field="metadata.status",
            marker="done",
            final_get="resource-path",
            failure_code=200,
            tested_with=("plain polling loops on done (tests/test_play.py)",),
        ),
        Dialect(
            name="location",
            status_headers=("Location",),
            start_codes={"*": 202},
            running_code=202,
            status_field=None,
            marker=None,
            final_get="none",
            failure_code=400,
            tested_with=(
                "azure-core LROBasePolling (LocationPolling; tests/test_dialects.py)",
                "azure-mgmt-core ARMPolling (LocationPolling: resource_groups.begin_delete; "
                "tests/test_dialects.py)",
            ),
        ),
        Dialect(
            name="arm",
            status_headers=("Azure-AsyncOperation",),
            start_codes={"PUT": 201, "PATCH": 200, "*": 202},
            running_code=200,
            status_field="status",
            marker="startTime",
            final_get="start-url",
            failure_code=200,
            resource_status="properties.provisioningState",
            tested_with=(
                "azure-mgmt-core ARMPolling (AzureAsyncOperationPolling, then the final GET: "
                "resources.begin_create_or_update_by_id; tests/test_dialects.py)",
            ),
        ),
    )
}


RESOURCE_STATUS_PATHS: tuple[tuple[str, ...], ...] = tuple(
    tuple(d.resource_status.split(".")) for d in DIALECTS.values() if d.resource_status is not None
)
"""The dialects' ``resource_status`` paths, split: where ``proxy.journal.body_status`` looks last."""


def dialect(name: str) -> Dialect:
    """The dialect called ``name`` (KeyError for an unknown one; the schema allows only known names)."""
    return DIALECTS[name]


# -- rendering ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperationFacts:
    """What the machine knows of one operation when it answers for it."""

    id: str
    created: float
    """Wall-clock POSIX seconds of the start."""
    status: str
    status_url: str
    resource_id: str
    resource_url: str | None
    start_method: str
    start_path: str
    ended: float | None = None
    """Wall-clock POSIX seconds of its first terminal answer (ARM's ``endTime``), None before."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """A dialect's answer before the scenario's overrides: code, headers, JSON body (None: no body)."""

    code: int
    headers: Headers
    body: dict[str, Any] | None


def is_terminal(status: str) -> bool:
    return status.lower() in TERMINAL_STATUSES


def is_success(status: str) -> bool:
    return status.lower() == "succeeded"


def is_failure(status: str) -> bool:
    return status.lower().startswith("fail")


def is_cancelled(status: str) -> bool:
    return status.lower().startswith("cancel")


def start_body(d: Dialect, op: OperationFacts) -> dict[str, Any] | None:
    """The body of the start answer (None: no body)."""
    if d.name == "aip-151":
        return {"name": f"operations/{op.id}", "done": False}
    if d.name == "arm" and op.start_method.upper() in ("PUT", "PATCH"):
        return arm_resource(op, "Accepted")
    return None


def arm_resource(op: OperationFacts, provisioning_state: str) -> dict[str, Any]:
    """An ARM resource at the start request's URL, with its provisioning state."""
    path = urlsplit(op.start_path).path
    return {
        "id": path,
        "name": path.rstrip("/").rsplit("/", 1)[-1],
        "properties": {"provisioningState": provisioning_state},
    }


def resource_body(d: Dialect, op: OperationFacts) -> dict[str, Any]:
    """The default answer of the final GET (or, in ``location``, of the successful poll)."""
    if d.name == "arm":
        return arm_resource(op, op.status)
    return {"id": op.resource_id, "operationId": op.id}


def status_answer(
    d: Dialect,
    op: OperationFacts,
    *,
    with_resource: bool,
    error: dict[str, Any] | None,
) -> Rendered:
    """The dialect's answer to a poll reporting ``op.status``. ``with_resource``: a success that created a
    resource (at ``op.resource_url``; in ``location`` the result is the body, otherwise 204); ``error``: the
    error to report (a failure's, or any status given one)."""
    status = op.status
    terminal, success = is_terminal(status), is_success(status)
    moment = datetime.fromtimestamp(op.created, UTC)
    headers: Headers = (("Content-Type", _JSON),)
    code = d.running_code
    body: dict[str, Any] | None
    if d.name == "aip-151":
        body = {"name": f"operations/{op.id}", "done": terminal, "metadata": {"status": status}}
        if success:
            body["response"] = {"name": op.resource_url if with_resource else op.resource_id}
        if error is not None or (terminal and is_cancelled(status)):
            body["error"] = rpc_status(error, cancelled=is_cancelled(status))
        return Rendered(code, headers, body)
    if d.name == "location":
        if not terminal:
            return Rendered(d.running_code, (), None)
        if success:
            if with_resource and op.start_method.upper() != "DELETE":
                return Rendered(200, headers, resource_body(d, op))
            return Rendered(204, (), None)
        failed = error if error is not None else _cancelled_error() if is_cancelled(status) else DEFAULT_ERROR
        return Rendered(d.failure_code, headers, {"error": failed})
    if d.name == "creator-v1":
        body = {"operationId": op.id, "createdDateTime": format_created_date_time(moment), "status": status}
        if with_resource and op.resource_url is not None:
            code = 201
            headers += (("Location", op.resource_url),)
            body["resourceLocation"] = op.resource_url
    elif d.name == "creator-v2":
        body = {"operationId": op.id, "created": moment.isoformat(), "status": status}
        if with_resource and op.resource_url is not None:
            headers += (("Resource-Location", op.resource_url),)
    else:  # arm: the Azure-AsyncOperation resource format
        body = {
            "id": urlsplit(op.status_url).path,
            "name": op.id,
            "status": status,
            "startTime": moment.isoformat(),
        }
        if terminal:
            body["endTime"] = datetime.fromtimestamp(op.ended or op.created, UTC).isoformat()
    if error is not None:
        body["error"] = error
    return Rendered(code, headers, body)


def _cancelled_error() -> dict[str, Any]:
    return {"code": "Canceled", "message": "The operation was canceled."}


def rpc_status(error: Mapping[str, Any] | None, *, cancelled: bool) -> dict[str, Any]:
    """An error as a google.rpc.Status: integer code (2 UNKNOWN, 1 CANCELLED), message, details list."""
    default_code = 1 if cancelled else 2
    if error is None:
        message = "The operation was cancelled." if cancelled else DEFAULT_ERROR["message"]
        return {"code": default_code, "message": message}
    code = error.get("code")
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        code = int(code)
    status: dict[str, Any] = {
        "code": code if isinstance(code, int) and not isinstance(code, bool) else default_code,
        "message": error.get("message") or DEFAULT_ERROR["message"],
    }
    details = error.get("details")
    if details is not None:
        status["details"] = details if isinstance(details, list) else [details]
    return status
