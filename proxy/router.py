"""Decides who answers a request: a scenario, the cassette, the upstream, or nobody. No I/O, no mitmproxy.

Precedence, top to bottom:

1. Scenario rules (``play``), in file order: a rule that matches answers (or refuses, when its sequence
   ran out with ``when-exhausted: error``); a ``pass`` step or no matching rule goes on to 2.
2. Record modes ``all`` and ``rewrite``: forward (and record); the cassette never answers.
3. The cassette answers when an unplayed recorded interaction matches, in recorded order.
4. When every matching interaction has been played: in ``new_episodes`` forward and record the extra
   request; otherwise the exhaustion policy answers (repeat the last, cycle, or no match).
5. Nothing matches: forward when the session forwards unmatched requests (``new_episodes``, ``once`` on
   a new cassette, ``play --upstream``); otherwise answer with a no-match diagnostic. Replay and play
   never touch the network unless given an upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from proxy.cassette import Exhausted, Playback, Played
from proxy.model import Interaction, Request
from proxy.redact import Redactor
from proxy.scenario.answer import Answer, NearRule, Refusal

if TYPE_CHECKING:
    from proxy.scenario.machine import ScenarioMachine


class RecordMode(StrEnum):
    """vcrpy's record modes with vcrpy's meanings, plus pytest-recording's ``rewrite``."""

    REWRITE = "rewrite"  # start from an empty cassette: the old one is replaced at the first exchange
    ALL = "all"
    NEW_EPISODES = "new_episodes"
    ONCE = "once"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Scripted:
    """Answer as a scenario says."""

    answer: Answer


@dataclass(frozen=True, slots=True)
class Replay:
    """Answer with a recorded interaction."""

    played: Played


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request upstream (and record the exchange when recording)."""


@dataclass(frozen=True, slots=True)
class NoMatch:
    """Answer with a diagnostic: nothing answers this request."""

    request: Request
    reason: str
    nearest: tuple[tuple[int, Interaction, tuple[str, ...]], ...] = ()
    rules: tuple[NearRule, ...] = ()
    """The scenario rules closest to answering (play), with what differed."""
    unrecorded: tuple[tuple[str, str], ...] = ()
    """("query" | "header", name): all that the closest recording lacks, as vcrpy's filters leave it."""


@dataclass(frozen=True, slots=True)
class ScenarioFailed:
    """Answer with a diagnostic: the scenario rule that matched could not answer (a template failed).

    ``problem`` is the scenario error, ``file:line:column: template error: ...``: the scenario is at fault,
    not the request, so this is never reported as "no match".
    """

    request: Request
    problem: str


Decision = Scripted | Replay | Forward | NoMatch | ScenarioFailed


class Router:
    """Holds one session's scenario and playback state and turns requests into decisions."""

    def __init__(
        self,
        playback: Playback | None,
        record_mode: RecordMode,
        cassette_existed: bool,
        *,
        redactor: Redactor | None = None,
        scenarios: ScenarioMachine | None = None,
        passthrough: bool = False,
    ) -> None:
        self.playback = playback
        self.record_mode = record_mode
        self.redactor = redactor or Redactor(enabled=False)
        self.scenarios = scenarios
        # vcrpy: "once" records only when the cassette did not exist when the session started.
        self.forwards_unmatched = (
            passthrough
            or record_mode is RecordMode.NEW_EPISODES
            or (record_mode is RecordMode.ONCE and not cassette_existed)
        )

    @property
    def may_forward(self) -> bool:
        """Whether any request can reach the upstream: recording, or forwarding what nothing answers."""
        return self.forwards_unmatched or self.record_mode in (RecordMode.ALL, RecordMode.REWRITE)

    def decide(self, request: Request, base_url: str) -> Decision:
        """What to do with ``request``; ``base_url`` is the proxy's origin as the client reached it."""
        if self.scenarios is not None:
            scripted = self.scenarios.handle(request, base_url)
            if isinstance(scripted, Answer):
                return Scripted(scripted)
            if isinstance(scripted, Refusal):
                return NoMatch(request, f"{scripted.source}: {scripted.reason}")
        if self.record_mode in (RecordMode.ALL, RecordMode.REWRITE):
            return Forward()
        matching = self.redactor.for_matching(request)
        if self.playback is not None:
            result = self.playback.play(matching)
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
        nearest = self.playback.nearest(matching) if self.playback is not None else []
        if self.scenarios is None:
            what = "recorded interaction"
        elif self.playback is None:
            what = "scenario rule"
        else:
            what = "scenario rule or recorded interaction"
        unrecorded = (
            self.playback.matcher.unrecorded(nearest[0][1].request, matching)
            if self.playback is not None and nearest
            else ()
        )
        return NoMatch(
            request,
            f"no {what} matches this request",
            tuple((i, it, tuple(diffs)) for i, it, diffs in nearest),
            tuple(self.scenarios.nearest(request)) if self.scenarios is not None else (),
            unrecorded,
        )
