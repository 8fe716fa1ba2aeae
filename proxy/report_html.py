"""``--report-html FILE``: the verdict as one self-contained HTML page (inline SVG and CSS, no script).

Per operation a time axis: each poll as a mark coloured by what it got, the Retry-After window each answer
gave shaded up to where the client was told it may come back, the terminal answer marked, violations in
red with their message; then the requests nothing answered with their closest match. Built from the
journal (``proxy/journal.py``) and the verdict (``proxy/verdict.py``): the same facts as ``--report``.
Operations on a scenario's virtual clock are drawn on it (the verdict itself judges real time: the table
beside the axis shows both).
"""

from __future__ import annotations

import html
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.errors import ReplayProxyError
from proxy.journal import Exchange
from proxy.operations import Timeline, show
from proxy.verdict import Violation, _end_status, answer_text, marks, num, of_note_outside_operations, secs

WIDTH = 960
"""The time axis' width in CSS pixels (the page is as wide as a CI artifact viewer)."""
_LEFT, _RIGHT, _HEIGHT, _AXIS_Y, _MARK_Y = 48, 112, 96, 64, 44
_CHAR = 7.0
"""About the width of a label's character (11 px text): a mark whose label would overlap the previous one
keeps it in its tooltip only."""


@dataclass(frozen=True, slots=True)
class _Point:
    """One request of an operation, placed on its axis."""

    index: int
    kind: str  # start, poll N, final GET (a scenario's resource answer), stray, other
    at: float  # seconds since the operation's first request, on its clock
    gap: float | None  # real seconds since the previous answer of the operation
    window: float | None  # seconds (on its clock) the answer told the client to wait
    terminal: bool


@dataclass(frozen=True, slots=True)
class _Operation:
    label: str
    name: str
    virtual: bool
    points: tuple[_Point, ...]
    outcome: str
    finished: bool
    style: str = ""
    """A scenario operation's dialect (``aip-151``, ``location``, ``arm``, ...; proxy/dialects.py)."""


def write_report(
    path: str | os.PathLike[str],
    entries: Sequence[Exchange],
    violations: Sequence[Violation],
    *,
    title: str = "replay-proxy report",
) -> str:
    """Write the page to ``path``; returns the summary line to print (``replay-proxy: report: ... file://...``).
    Raises ReplayProxyError (exit 2) when the file cannot be written."""
    target = Path(path)
    page = render(entries, violations, title=title)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as e:
        raise ReplayProxyError(f"{target}: cannot write the HTML report: {e.strerror or e}") from None
    return f"replay-proxy: report: {summary(entries, violations)}: {target.resolve().as_uri()}"


def summary(
    entries: Sequence[Exchange], violations: Sequence[Violation], operations: int | None = None
) -> str:
    """``12 requests, 2 operations, 3 violations (retry-after x2, unfinished)``: one line for a CI log."""
    ops = len(_operations(entries)) if operations is None else operations
    text = f"{_count(len(entries), 'request')}, {_count(ops, 'operation')}, "
    if not violations:
        return text + "no violations"
    rules = Counter(v.rule for v in violations)
    kinds = ", ".join(f"{r} x{n}" if n > 1 else r for r, n in rules.items())
    return text + f"{_count(len(violations), 'violation')} ({kinds})"


def render(
    entries: Sequence[Exchange], violations: Sequence[Violation], *, title: str = "replay-proxy report"
) -> str:
    """The page as text."""
    analysis = Timeline(entries)  # the verdict's own grouping of requests into operations
    flagged = marks(entries, violations, analysis)
    by_index: dict[int, list[int]] = {}
    for n, v in enumerate(violations, 1):
        if v.index is not None:
            by_index.setdefault(v.index, []).append(n)
    operations = _operations(entries, analysis)
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    verdict = "pass" if not violations else "fail"
    out.append(
        f'<p id="summary" class="summary {verdict}"><span class="badge">{verdict.upper()}</span> '
        f"{_e(summary(entries, violations, len(operations)))}</p>"
    )
    out.append(
        f'<p class="meta">Written {_e(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}. Times are seconds since '
        "each operation's first request; shaded: the delay each answer told the client to wait.</p>"
    )
    if violations:
        out.append('<section id="violations"><h2>Violations</h2><ol class="violations">')
        where = _where(operations, analysis)
        for n, v in enumerate(violations, 1):
            link = f' <a href="#{where[v.index]}">see it</a>' if v.index in where else ""
            out.append(
                f'<li id="v{n}" class="violation"><span class="rule">{_e(v.rule)}</span> '
                f"{_e(v.message)}{link}</li>"
            )
        out.append("</ol></section>")
    if operations:
        out.append('<section id="operations"><h2>Operations</h2>')
        if len(operations) > 1:
            out.append(_overview(operations, flagged))
        for k, op in enumerate(operations, 1):
            out.append(_operation(k, op, entries, flagged, by_index, violations))
        out.append("</section>")
    outside = of_note_outside_operations(analysis, entries, flagged)
    if outside:
        out.append('<section id="unmatched"><h2>Requests of note outside operations</h2>')
        out.append(
            "<table><thead><tr><th>#</th><th>request</th><th>answer</th><th>why</th>"
            "<th>closest match</th></tr></thead><tbody>"
        )
        for i in outside:
            e = entries[i]
            why, closest = _closest(e)
            notes = _notes(i, flagged, by_index, violations)
            out.append(
                f'<tr id="r{i + 1}" class="{"bad" if i in flagged else ""}"><td>{i + 1}</td>'
                f"<td><code>{_e(e.method)} {_e(e.path)}</code></td><td>{_e(_answer(e))}</td>"
                f"<td>{_e(why)}{notes}</td><td>{_e(closest)}</td></tr>"
            )
        out.append("</tbody></table></section>")
    out.append(_all_requests(entries, analysis))
    out.append("</body></html>\n")
    return "\n".join(out)


# -- operations --------------------------------------------------------------------------------------------


def _operations(entries: Sequence[Exchange], analysis: Timeline | None = None) -> list[_Operation]:
    """The verdict's operations, each request placed on the operation's clock."""
    a = analysis if analysis is not None else Timeline(entries)
    found: list[_Operation] = []
    for op in a.ops:
        indices = ([op.start] if op.start is not None else []) + list(op.timeline)
        indices.sort(key=lambda i: entries[i].monotonic)
        virtual = entries[op.first].virtual is not None
        origin = entries[op.first]
        points: list[_Point] = []
        previous: Exchange | None = None
        last_at = 0.0
        polls = 0
        for i in indices:
            e = entries[i]
            if virtual and e.virtual is not None:
                at = e.virtual - (origin.virtual or 0.0)
            elif virtual and previous is not None:  # a request the scenario did not answer: real gap
                at = last_at + max(0.0, e.monotonic - previous.monotonic)
            else:
                at = max(0.0, e.monotonic - origin.monotonic)
            if i == op.start:
                kind = "start"
            elif i in op.polls:
                polls += 1
                kind = f"poll {polls}"
            else:
                resource = e.tag is not None and e.tag.role == "resource"
                kind = "final GET" if resource else "stray" if i in a.strays else "other"
            gap = e.monotonic - previous.monotonic if previous is not None else None
            points.append(_Point(i, kind, at, gap, e.retry_after, i == op.terminal_at))
            if i == op.start or i in op.polls:
                previous, last_at = e, at
        if virtual:  # on the virtual clock an answer's window ends where the operation's next answer is
            answered = [p for p in points if p.kind == "start" or p.kind.startswith("poll")]
            nxt = {answered[k].index: answered[k + 1].at for k in range(len(answered) - 1)}
            points = [
                _Point(
                    p.index,
                    p.kind,
                    p.at,
                    p.gap,
                    (nxt[p.index] - p.at) if p.index in nxt and p.window is not None else p.window,
                    p.terminal,
                )
                for p in points
            ]
        end = op.terminal_at
        finished = op.finished(entries)
        if end is None and finished:
            end = op.polls[-1]
        if end is not None:
            n = op.polls.index(end) + 1
            took = points[[p.index for p in points].index(end)].at
            outcome = f"{_end_status(entries[end])} after {_count(n, 'poll')} in {secs(took)} s"
        else:
            last = entries[op.polls[-1]].op_status if op.polls else None
            outcome = f"never finished (last status: {last or 'none'})"
        tag = next((entries[i].tag for i in indices if entries[i].tag is not None), None)
        style = tag.dialect if tag is not None else ""
        found.append(_Operation(op.label, op.name, virtual, tuple(points), outcome, finished, style))
    return found


def _where(operations: Sequence[_Operation], analysis: object) -> dict[int | None, str]:
    """The anchor of each request's row: ``op3-r12`` inside an operation, else ``r12``."""
    where: dict[int | None, str] = {}
    for k, op in enumerate(operations, 1):
        for p in op.points:
            where[p.index] = f"op{k}-r{p.index + 1}"
    if isinstance(analysis, Timeline):
        for i in analysis.order:
            where.setdefault(i, f"r{i + 1}")
    return where


def _overview(operations: Sequence[_Operation], flagged: dict[int, list[str]]) -> str:
    """One line per operation, linked to its axis: how it ended and how many of its requests broke a rule."""
    rows = []
    for k, op in enumerate(operations, 1):
        bad = sum(1 for p in op.points if p.index in flagged)
        cls = "bad" if bad or not op.finished else ""
        rows.append(
            f'<tr class="{cls}"><td><a href="#op{k}">{k}</a></td><td><code>{_e(op.label)}</code></td>'
            f"<td>{_e(op.name)}</td><td>{_e(op.outcome)}</td><td>{bad or ''}</td></tr>"
        )
    return (
        '<table class="overview"><thead><tr><th>#</th><th>operation</th><th>rule</th><th>outcome</th>'
        f"<th>requests in violation</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _operation(
    k: int,
    op: _Operation,
    entries: Sequence[Exchange],
    flagged: dict[int, list[str]],
    by_index: dict[int, list[int]],
    violations: Sequence[Violation],
) -> str:
    bad = any(p.index in flagged for p in op.points) or not op.finished
    name = f' <span class="name">{_e(op.name)}</span>' if op.name else ""
    clock = ' <span class="clock">virtual time</span>' if op.virtual else ""
    style = f' <span class="style">style {_e(op.style)}</span>' if op.style else ""
    parts = [
        f'<article id="op{k}" class="op{" bad" if bad else ""}">',
        f"<h3>operation <code>{_e(op.label)}</code>{name}{style}{clock} "
        f'<span class="outcome">→ {_e(op.outcome)}</span></h3>',
        _axis(op, entries, flagged),
        "<table><thead><tr><th>#</th><th>what</th><th>at s</th><th>gap s</th><th>request</th><th>answer</th>"
        "<th>wait s</th><th>verdict</th></tr></thead><tbody>",
    ]
    for p in op.points:
        e = entries[p.index]
        cls = "bad" if p.index in flagged else ("end" if p.terminal else "")
        gap = secs(p.gap) if p.gap is not None else ""
        wait = num(e.retry_after) if e.retry_after is not None else ""
        parts.append(
            f'<tr id="op{k}-r{p.index + 1}" class="{cls}"><td>{p.index + 1}</td><td>{_e(p.kind)}</td>'
            f"<td>{secs(p.at)}</td><td>{gap}</td>"
            f"<td><code>{_e(e.method)} {_e(show(e.path))}</code></td>"
            f"<td>{_e(_answer(e))}</td><td>{wait}</td>"
            f"<td>{_notes(p.index, flagged, by_index, violations)}</td></tr>"
        )
    parts.append("</tbody></table></article>")
    return "\n".join(parts)


def _axis(op: _Operation, entries: Sequence[Exchange], flagged: dict[int, list[str]]) -> str:
    """The operation's time axis as inline SVG."""
    span = max([p.at + (p.window or 0.0) for p in op.points] + [0.001])
    step = _tick_step(span)
    span = math.ceil(span / step - 1e-9) * step
    scale = (WIDTH - _LEFT - _RIGHT) / span

    def x(t: float) -> float:
        return _LEFT + t * scale

    unit = "s (virtual)" if op.virtual else "s"
    svg = [
        f'<svg class="axis" viewBox="0 0 {WIDTH} {_HEIGHT}" width="{WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-label="time axis of operation {_e(op.label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for p in op.points:
        if p.window:
            w = max(1.0, p.window * scale)
            svg.append(
                f'<rect class="window" x="{x(p.at):.1f}" y="{_MARK_Y - 14}" width="{w:.1f}" height="28"/>'
            )
    svg.append(f'<line class="base" x1="{_LEFT}" y1="{_AXIS_Y}" x2="{WIDTH - _RIGHT}" y2="{_AXIS_Y}"/>')
    ticks = range(round(span / step) + 1)
    svg.append(f'<path class="tick" d="{"".join(f"M{x(n * step):.1f} {_AXIS_Y}v4" for n in ticks)}"/>')
    for n in ticks:
        svg.append(
            f'<text class="tick" x="{x(n * step):.1f}" y="{_AXIS_Y + 16}">{_tick(n * step, step)}</text>'
        )
    svg.append(f'<text class="unit" x="{WIDTH - _RIGHT}" y="{_HEIGHT - 2}">{unit}</text>')
    labelled = -1e9
    for p in op.points:
        e = entries[p.index]
        cx = x(p.at)
        cls = _mark_class(e) + (" flagged" if p.index in flagged else "") + (" end" if p.terminal else "")
        tip = f"{p.kind} at {secs(p.at)} s: {_answer(e)}"
        if p.index in flagged:
            tip += " [" + ", ".join(flagged[p.index]) + "]"
        if p.terminal:
            shape = (
                f'<path class="{cls}" d="M{cx:.1f} {_MARK_Y - 9} L{cx + 9:.1f} {_MARK_Y} '
                f'L{cx:.1f} {_MARK_Y + 9} L{cx - 9:.1f} {_MARK_Y} Z"><title>{_e(tip)}</title></path>'
            )
        else:
            shape = (
                f'<circle class="{cls}" cx="{cx:.1f}" cy="{_MARK_Y}" r="6"><title>{_e(tip)}</title></circle>'
            )
        svg.append(shape)
        red = " red" if p.index in flagged else ""
        text = str(e.status) if e.status is not None else "—"
        if p.terminal:  # beside the diamond, where no status label goes
            text += f" {e.op_status}" if e.op_status else ""
            svg.append(f'<text class="label end{red}" x="{cx + 13:.1f}" y="{_MARK_Y + 4}">{_e(text)}</text>')
        elif cx - len(text) * _CHAR / 2 >= labelled + 4:  # above the mark when it fits
            svg.append(f'<text class="label{red}" x="{cx:.1f}" y="{_MARK_Y - 18}">{_e(text)}</text>')
            labelled = cx + len(text) * _CHAR / 2
    svg.append("</svg>")
    return "".join(svg)


def _mark_class(e: Exchange) -> str:
    if e.source in ("no-match", "scenario-error") or e.status is None:
        return "mark none"
    if e.status >= 400:
        return "mark retry"
    return "mark ok"


def _all_requests(entries: Sequence[Exchange], analysis: object) -> str:
    order = analysis.order if isinstance(analysis, Timeline) else range(len(entries))
    rows = []
    for i in order:
        e = entries[i]
        arrived = time.strftime("%H:%M:%S", time.localtime(e.time)) + f"{e.time % 1:.3f}"[1:]
        rows.append(
            f"<tr><td>{i + 1}</td><td>{arrived}</td><td><code>{_e(e.method)} {_e(e.path)}</code></td>"
            f"<td>{_e(_answer(e))}</td><td>{_e(e.answered_by())}</td></tr>"
        )
    return (
        f'<section id="requests"><details><summary>All {_count(len(entries), "request")}, '
        "in the order they came</summary><table><thead><tr><th>#</th><th>arrived</th><th>request</th>"
        "<th>answer</th>"
        f"<th>answered by</th></tr></thead><tbody>{''.join(rows)}</tbody></table></details></section>"
    )


# -- text helpers ------------------------------------------------------------------------------------------


def _notes(
    i: int, flagged: dict[int, list[str]], by_index: dict[int, list[int]], violations: Sequence[Violation]
) -> str:
    """A row's verdict: the messages of the violations it is at fault for, the rules it is part of."""
    parts = [
        f'<div class="msg"><a href="#v{n}">{n}.</a> <b>{_e(violations[n - 1].rule)}</b>: '
        f"{_e(violations[n - 1].message)}</div>"
        for n in by_index.get(i, [])
    ]
    own = {violations[n - 1].rule for n in by_index.get(i, [])}
    rest = [r for r in flagged.get(i, []) if r not in own]
    if rest:
        parts.append(f'<div class="msg">{_e(", ".join(rest))}</div>')
    return "".join(parts)


def _closest(e: Exchange) -> tuple[str, str]:
    """A no-match detail split into why nothing answered and the closest recorded request or rule."""
    why, sep, closest = e.detail.partition("; closest ")
    return why, ("closest " + closest) if sep else ""


def _answer(e: Exchange) -> str:
    return answer_text(e, retry_after="Retry-After {} s")


def _tick_step(span: float) -> float:
    """1, 2 or 5 times a power of ten: at most 6 ticks over ``span``."""
    raw = span / 6
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def _tick(t: float, step: float) -> str:
    digits = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{t:.{digits}f}"


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' if n != 1 else ''}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;
color:#1f2328;background:#fff;padding:0 12px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:0 0 6px;font-weight:600}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
.summary{font-size:16px;padding:10px 14px;border-radius:6px;margin:8px 0}
.summary.pass{background:#dafbe1;border:1px solid #4ac26b}
.summary.fail{background:#ffebe9;border:1px solid #ff8182}
.badge{font-weight:700;margin-right:6px}.pass .badge{color:#1a7f37}.fail .badge{color:#cf222e}
.meta{color:#59636e;font-size:12.5px}
.violations li{margin:6px 0}.violation{color:#cf222e}.rule{font-weight:700}
.op{border:1px solid #d0d7de;border-radius:6px;padding:12px;margin:14px 0}.op.bad{border-color:#ff8182}
.name{color:#59636e;font-weight:400}
.clock,.style{background:#ddf4ff;color:#0969da;border-radius:10px;padding:1px 8px;font-size:12px;
font-weight:400}
.outcome{font-weight:400}
svg.axis{display:block;max-width:100%;height:auto;margin:4px 0 8px}
.window{fill:#54aeff;fill-opacity:.22;stroke:#54aeff;stroke-opacity:.5}
.base{stroke:#59636e;stroke-width:1.5}.tick{stroke:#59636e;fill:#59636e;font-size:11px;text-anchor:middle}
.unit{fill:#59636e;font-size:11px;text-anchor:end}
.mark{stroke:#fff;stroke-width:1.5}.mark.ok{fill:#1a7f37}.mark.retry{fill:#bf8700}.mark.none{fill:#6e7781}
.mark.end{stroke:#1f2328;stroke-width:1.5}.mark.flagged{fill:#cf222e;stroke:#82071e;stroke-width:2.5}
.label{font-size:11px;text-anchor:middle;fill:#1f2328}.label.end{text-anchor:start;font-weight:700}.label.red{fill:#cf222e;font-weight:700}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{text-align:left;padding:3px 6px;
border-bottom:1px solid #eaeef2;vertical-align:top}th{color:#59636e;font-weight:600;white-space:nowrap}
tr.bad td{background:#fff5f5}tr.end td{background:#f6fff8}.msg{color:#cf222e}
.overview{margin-bottom:8px}
details summary{cursor:pointer;color:#0969da;margin:16px 0 6px}
@media print{.op{break-inside:avoid}}
"""
