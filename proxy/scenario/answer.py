"""What a scenario decides for a request: a rendered response, possibly late, slow or broken.

Also the scenario terms the request path needs (``FaultKind``, ``TERMINAL_STATUSES``), kept here rather than
in ``schema.py`` so that ``replay``, which never loads a scenario, does not import pydantic (start-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from proxy.model import Response

FaultKind = Literal["reset", "close", "hang", "truncate", "malformed-json"]
"""How a scripted answer is (not) delivered; see ``schema.ResponseSpec.fault``."""

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "cancelled"})
"""Status values (case-insensitive) after which an operation is done."""


@dataclass(frozen=True, slots=True)
class OperationTag:
    """What an operation's answer was, as data for the journal, the verdict and ``proxy/operations.py``
    (nobody parses ``Answer.source``, which is for people).

    ``rule`` names the operation rule (``tileset.yaml: operation "tileset"``); ``dialect`` its style
    (``proxy/dialects.py``); ``role`` what the request was to it: ``start``, ``poll`` or ``resource`` (the
    final GET); ``step`` the index of the step (stage) that answered a poll, None otherwise; ``headers`` the
    headers the rule gives the status URL in (none: AIP-151's body, or an ``arm`` resource polled at its
    own URL); ``url_form`` ``absolute`` or ``relative``.
    """

    rule: str
    dialect: str
    role: Literal["start", "poll", "resource"]
    step: int | None = None
    headers: tuple[str, ...] = ()
    url_form: Literal["absolute", "relative"] = "absolute"


class Answer(NamedTuple):
    """A scripted answer (a NamedTuple: immutable, and made for every scripted request at a third of a
    frozen dataclass's cost). ``response`` is fully rendered; faults say how it is (not) delivered.

    ``source`` names the rule for the console and the journal, e.g. ``tileset-succeeds.yaml: operation
    8e9a..., poll 2 (Running)``. ``retry_after`` is the delay the scenario advertised (before any
    ``--retry-after`` rewrite), for the journal's polling checks. ``tag``: the structured facts of an
    operation's answer (None for routes). ``virtual`` is the operation's virtual clock when it answered
    (seconds since its start; None on the real clock), for the reports.
    """

    response: Response
    source: str
    delay: float = 0.0
    dribble: float | None = None
    fault: FaultKind | None = None
    operation: str | None = None
    poll: int | None = None
    status: str | None = None
    terminal: bool = False
    retry_after: float | None = None
    tag: OperationTag | None = None
    virtual: float | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A rule matched but cannot answer (its sequence ran out with ``when-exhausted: error``)."""

    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class NearRule:
    """A scenario rule that did not answer a request, and why: for the no-match diagnostic.

    ``rule`` names it (``route "throttle"``, ``operation "tileset" (start)``), ``where`` is its
    ``file:line:column``, ``differences`` says what differed (``method: GET, expected POST``).
    """

    rule: str
    where: str
    differences: tuple[str, ...]
