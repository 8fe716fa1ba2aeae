"""The answer to a request nothing recorded matches: a distinctive status and a JSON body saying why."""

from __future__ import annotations

import json

from proxy.model import Response
from proxy.router import NoMatch

NO_MATCH_STATUS = 599
NO_MATCH_REASON = "No Match (replay-proxy)"


def _hint(source: str) -> str:
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
    body = {
        "error": {
            "code": "ReplayProxyNoMatch",
            "message": message,
            "request": {"method": request.method, "uri": request.url},
            "closest": closest,
            "hint": _hint(source),
        }
    }
    return Response(
        NO_MATCH_STATUS,
        NO_MATCH_REASON,
        (("Content-Type", "application/json"), ("X-Replay-Proxy", "no-match")),
        json.dumps(body, indent=2).encode(),
    )
