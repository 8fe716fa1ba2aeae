"""Decides who answers a request: the cassette, the upstream, or nobody. No I/O, no mitmproxy.

Precedence, top to bottom:

1. Record modes ``all`` and ``rewrite``: always forward (and record); the cassette never answers.
2. The cassette answers when an unplayed recorded interaction matches, in recorded order.
3. When every matching interaction has been played: in ``new_episodes`` forward and record the extra
   request; otherwise the exhaustion policy answers (repeat the last, cycle, or no match).
4. Nothing matches: forward when recording new interactions (``new_episodes``, or ``once`` on a new
   cassette); otherwise answer with a no-match diagnostic. Replay never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.cassette import Exhausted, Playback, Played
from proxy.model import Interaction, Request


class RecordMode(StrEnum):
    """vcrpy's record modes with vcrpy's meanings, plus pytest-recording's ``rewrite``."""

    REWRITE = "rewrite"  # start from an empty cassette: the old one is replaced at the first exchange
    ALL = "all"
    NEW_EPISODES = "new_episodes"
    ONCE = "once"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Replay:
    """Answer with a recorded interaction."""

    played: Played


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request upstream and record the exchange."""


@dataclass(frozen=True, slots=True)
class NoMatch:
    """Answer with a diagnostic: nothing recorded answers this request."""

    request: Request
    reason: str
    nearest: tuple[tuple[int, Interaction, tuple[str, ...]], ...] = ()


Decision = Replay | Forward | NoMatch


class Router:
    """Holds the playback state for one cassette session and turns requests into decisions."""

    def __init__(self, playback: Playback | None, record_mode: RecordMode, cassette_existed: bool) -> None:
        self.playback = playback
        self.record_mode = record_mode
        # vcrpy: "once" records only when the cassette did not exist when the session started.
        self.forwards_unmatched = record_mode is RecordMode.NEW_EPISODES or (
            record_mode is RecordMode.ONCE and not cassette_existed
        )

    def decide(self, request: Request) -> Decision:
        if self.record_mode in (RecordMode.ALL, RecordMode.REWRITE):
            return Forward()
        if self.playback is not None:
            result = self.playback.play(request)
            if isinstance(result, Played) and not (result.extra and self.forwards_unmatched):
                return Replay(result)
            if self.forwards_unmatched:
                return Forward()
            if isinstance(result, Exhausted):
                return NoMatch(
                    request,
                    f"all {len(result.indices)} recorded interactions matching this request were "
                    "already played (--when-exhausted error)",
                )
        elif self.forwards_unmatched:
            return Forward()
        nearest = self.playback.nearest(request) if self.playback is not None else []
        return NoMatch(
            request,
            "no recorded interaction matches this request",
            tuple((i, it, tuple(diffs)) for i, it, diffs in nearest),
        )
