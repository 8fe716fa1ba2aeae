"""Deliver a scenario Answer through a mitmproxy flow: late, slow, truncated, reset, closed or never.

(Placeholder by the lead: plain delivery and delays only; the faults task replaces it.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from proxy.model import Response
from proxy.scenario.answer import Answer


async def deliver(
    flow: http.HTTPFlow, answer: Answer, *, to_flow_response: Callable[[Response], http.Response]
) -> None:
    """Answer ``flow`` as ``answer`` says."""
    if answer.delay > 0:
        await asyncio.sleep(answer.delay)
    if answer.fault == "close":
        flow.kill()
        return
    flow.response = to_flow_response(answer.response)


def release_all() -> None:
    """Release every hanging flow (the proxy is stopping)."""


def client_disconnected(client: Any) -> None:
    """A client went away: release its hanging flows."""


def responseheaders(flow: http.HTTPFlow) -> None:
    """Stream the body of flows that dribble."""
