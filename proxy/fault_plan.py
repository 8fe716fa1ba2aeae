"""How an answer reaches the client, as a plan with no I/O: late, slow, truncated, reset, closed or never.

A scenario ``Answer`` says what is wrong with an answer (``fault``, ``delay``, ``dribble``); ``plan`` turns
it into what an engine does on the wire: wait ``delay`` seconds, then either drop the connection
(``close``: FIN, ``reset``: RST, ``hang``: nothing until the client goes) or send the head announcing
``announced`` body bytes and then ``body`` (all at once, or as the timed ``chunks`` of a dribble), closing
afterwards when ``close_after``. The mitmproxy addon carries it out in proxy/faults.py, the lean engine in
proxy/lean.py; neither decides anything here. No mitmproxy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from proxy.scenario.answer import Answer

DRIBBLE_TICK = 0.25
"""Seconds between two chunks of a dribbled body (fewer chunks when the body is short)."""

Action = Literal["send", "close", "reset", "hang"]
"""What happens after the delay: send a response, close (FIN), reset (RST), or never answer."""


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do on the wire for one answer (see the module docstring).

    ``body`` is what is sent of the response body (``truncate``: about half of it); ``announced`` is the
    Content-Length the head states (the whole body, at least one byte when truncated, so something is
    missing); ``chunks``, for a dribble, are ``(second after the head, bytes)`` covering ``body``.
    """

    action: Action = "send"
    delay: float = 0.0
    body: bytes = b""
    announced: int = 0
    chunks: tuple[tuple[float, bytes], ...] | None = None
    close_after: bool = False

    @property
    def immediate(self) -> bool:
        """Nothing to wait for: the answer goes out at once, in one piece (most answers)."""
        return self.action == "send" and self.delay <= 0 and self.chunks is None and not self.close_after


def plan(answer: Answer, body: bytes) -> FaultPlan:
    """The plan for ``answer``, whose response body as served is ``body``."""
    fault = answer.fault
    if fault in ("close", "reset", "hang"):
        return FaultPlan(action=fault, delay=answer.delay)
    sent, announced, close_after = body, len(body), False
    if fault == "truncate":
        sent, announced, close_after = truncated(body), max(len(body), 1), True
    chunks = None
    if answer.dribble is not None and answer.dribble > 0:
        chunks = tuple(schedule(sent, answer.dribble))
    return FaultPlan("send", answer.delay, sent, announced, chunks, close_after)


def status_sent(answer: Answer) -> int | None:
    """The status the client gets, or None when a fault means it gets no response at all."""
    if answer.fault in ("reset", "close", "hang"):
        return None
    return answer.response.status


def truncated(body: bytes) -> bytes:
    """About half of ``body``: what a truncated answer sends of it."""
    return body[: len(body) // 2]


def schedule(body: bytes, dribble: float) -> list[tuple[float, bytes]]:
    """``body`` cut into chunks, each with the second (after the headers) at which it is sent.

    The first chunk goes with the headers, the last one at ``dribble``; one chunk every ``DRIBBLE_TICK``
    or so, never more chunks than bytes.
    """
    if not body:
        return []
    count = min(len(body), max(2, math.ceil(dribble / DRIBBLE_TICK) + 1))
    if count == 1:
        return [(dribble, body)]
    bounds = [len(body) * i // count for i in range(count + 1)]
    return [(dribble * i / (count - 1), body[bounds[i] : bounds[i + 1]]) for i in range(count)]
