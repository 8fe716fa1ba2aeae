"""replay-proxy's own answers: to a request nothing recorded matches (599), to a request whose scenario rule
failed to render (599, a scenario error), to one that matches a recorded interaction that cannot be replayed
(599), to an exchange that could not be saved (500), to a request that arrives while the proxy stops (503).
Each has a JSON body saying why."""

from __future__ import annotations

import json
from collections.abc import Mapping

from proxy.model import Response
from proxy.router import NoMatch, ScenarioFailed

NO_MATCH_STATUS = 599
NO_MATCH_REASON = "No Match (replay-proxy)"
SCENARIO_ERROR_REASON = "Scenario Error (replay-proxy)"


def _hint(source: str) -> str:
    if source == "nothing":
        return (
            "Nothing is loaded: load scenarios or a cassette first, e.g. POST /__replay-proxy/use with "
            '{"scenarios": ["scenarios/azure-maps/tileset-succeeds.yaml"]} (see README: Control API).'
        )
    if source.startswith("scenarios") and "cassette" not in source:
        return (
            "play answers only what its scenarios match, offline. Add a route for this request, or layer "
            "the scenarios over --cassette CASSETTE or --upstream URL."
        )
    return (
        "Offline replay never forwards. Record the missing exchange "
        "(replay-proxy record UPSTREAM -o CASSETTE --record-mode new_episodes) or fix the request."
    )


def no_match_response(decision: NoMatch, source: str) -> Response:
    """An OData-style error (so SDKs surface the message) naming the closest recorded requests."""
    request = decision.request
    closest: list[dict[str, object]] = [
        {
            "interaction": index + 1,
            "method": interaction.request.method,
            "uri": interaction.request.url,
            "differences": list(diffs),
        }
        for index, interaction, diffs in decision.nearest
    ]
    message = f"replay-proxy: {decision.reason}: {request.method} {request.path_and_query} (in {source})"
    if decision.nearest:
        index, interaction, diffs = decision.nearest[0]
        message += f"; closest is #{index + 1} {interaction.request.method} {interaction.request.url}"
        if diffs:
            message += f" ({'; '.join(diffs)})"
    if decision.rules:
        message += f"; closest rule is {closest_rule(decision)}"
    hint = _hint(source)
    if decision.unrecorded:
        filtered = _filter_hint(decision.unrecorded)
        message += f". {filtered}"
        hint = f"{filtered} {hint}"
    error = {
        "code": "ReplayProxyNoMatch",
        "message": message,
        "request": {"method": request.method, "uri": request.url},
        "closest": closest,
        "hint": hint,
    }
    if decision.rules:
        error["closest_rules"] = [
            {"rule": near.rule, "at": near.where, "differences": list(near.differences)}
            for near in decision.rules
        ]
    return _own_answer(NO_MATCH_STATUS, NO_MATCH_REASON, "no-match", error)


_FILTER_OPTIONS = {
    "query": ("query parameter", "filter_query_parameters", "--filter-query-parameter"),
    "header": ("header", "filter_headers", "--filter-header"),
}


def _filter_hint(unrecorded: tuple[tuple[str, str], ...]) -> str:
    """Says that only what vcrpy's filters drop differs, and which option filters live requests alike."""
    parts = []
    for kind in ("query", "header"):
        names = [name for k, name in unrecorded if k == kind]
        if not names:
            continue
        what, vcrpy_name, option = _FILTER_OPTIONS[kind]
        shown = ", ".join(names)
        flags = " ".join(f"{option} {name}" for name in names)
        parts.append(
            f"The only difference is the {what}{'s' if len(names) > 1 else ''} {shown}, which the "
            f"recording does not have: a cassette recorded with vcrpy's {vcrpy_name} drops it. "
            f"Filter live requests the same way: {flags} (ReplayProxy({vcrpy_name}=[...]), "
            f"pytest --replay{option[1:]} NAME)."
        )
    return " ".join(parts)


def closest_rule(decision: NoMatch) -> str:
    """``route "x" at file:line:col (what differed)``: the rule closest to answering, for messages."""
    near = decision.rules[0]
    return f"{near.rule} at {near.where} ({'; '.join(near.differences)})"


def scenario_error_response(decision: ScenarioFailed) -> Response:
    """The rule that matched failed to render its answer: the scenario is at fault, not the request.

    599 like a no-match (retry policies that retry every 5xx retry it too: azure-core's on GET, the Azure SDK
    for JavaScript's on any method), but its own reason, ``X-Replay-Proxy: scenario-error`` and code
    ``ReplayProxyScenarioError``.
    """
    request = decision.request
    error = {
        "code": "ReplayProxyScenarioError",
        "message": f"replay-proxy: scenario error: {decision.problem} "
        f"(answering {request.method} {request.path_and_query})",
        "request": {"method": request.method, "uri": request.url},
        "hint": "The scenario rule that matched this request could not render its answer. Fix the template "
        "at the file:line:column above (replay-proxy check finds syntax errors, not values that are "
        "missing at request time: use default(...) or 'is defined'); the proxy keeps serving.",
    }
    return _own_answer(NO_MATCH_STATUS, SCENARIO_ERROR_REASON, "scenario-error", error)


def _own_answer(status: int, reason: str, kind: str, error: Mapping[str, object]) -> Response:
    """An OData-style error answered by the proxy itself, marked ``X-Replay-Proxy: <kind>``."""
    return Response(
        status,
        reason,
        (("Content-Type", "application/json"), ("X-Replay-Proxy", kind)),
        json.dumps({"error": error}, indent=2).encode(),
    )


def _own_error(status: int, reason: str, kind: str, code: str, message: str) -> Response:
    return _own_answer(status, reason, kind, {"code": code, "message": message})


def unplayable_response(message: str) -> Response:
    """What a recorded interaction whose response no vcrpy stub can replay answers (a status without a
    message, no body...): where it is and why, as vcrpy's own replay would fail there."""
    return _own_error(
        NO_MATCH_STATUS,
        "Unplayable Interaction (replay-proxy)",
        "unplayable",
        "ReplayProxyUnplayable",
        f"replay-proxy: {message}. Fix or re-record that interaction.",
    )


def record_failed_response(cause: str) -> Response:
    """The upstream answered, but the exchange could not be saved: the client must not take it as recorded."""
    return _own_error(
        500,
        "Recording Failed (replay-proxy)",
        "record-failed",
        "ReplayProxyRecordFailed",
        f"replay-proxy: the exchange was not saved, so the recording is incomplete: {cause}. "
        "Nothing more is forwarded; free disk space or fix the directory, then record again.",
    )


def unsafe_response(problem: str) -> Response:
    """What the proxy sends instead of an answer with a header that would write others (the last guard:
    the loaders and the scenario machine refuse them before)."""
    return _own_error(
        500,
        "Unsafe Answer (replay-proxy)",
        "unsafe-answer",
        "ReplayProxyUnsafeAnswer",
        f"replay-proxy: refused to send this answer: {problem}",
    )


def stopping_response() -> Response:
    """A forwarded request that ends after the proxy began to stop: it can no longer be saved."""
    return _own_error(
        503,
        "Stopping (replay-proxy)",
        "stopping",
        "ReplayProxyStopping",
        "replay-proxy is stopping: this request was not forwarded or its answer was not saved.",
    )
