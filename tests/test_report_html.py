"""`--report-html FILE`: one self-contained page; each operation on a time axis, violations in red.

The browser test renders it in headless Chromium (skipped, saying why, when none is installed) and asserts
on what is visible. ``REPLAY_PROXY_SCREENSHOT=docs/report.png`` also saves its screenshot for the README.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy import ReplayProxy
from proxy.journal import Exchange
from proxy.report_html import render, summary, write_report
from proxy.verdict import check, report
from tests.browser import find_chromium
from tests.browser import render as in_chromium

TIMEOUT = 10
ROOT = Path(__file__).resolve().parent.parent


def _impatient_client(base: str, polls: int = 12) -> None:
    """Starts a job and polls it without waiting: early polls, and a request nothing answers."""
    start = requests.post(f"{base}/tilesets?api-version=2.0&datasetId=abc", timeout=TIMEOUT)
    for _ in range(polls):
        try:
            r = requests.get(start.headers["Location"], timeout=TIMEOUT)
        except requests.ConnectionError:  # flaky-polling resets one poll
            continue
        if r.status_code == 201:
            break
    requests.get(f"{base}/tilesets/not-recorded", timeout=TIMEOUT)


def _patient_client(base: str) -> None:
    """Waits what each answer says (retry-after-ms) and retries the reset poll."""
    r = requests.post(f"{base}/tilesets?api-version=2.0&datasetId=abc", timeout=TIMEOUT)
    status_url = r.headers["Location"]
    for _ in range(20):
        time.sleep(int(r.headers.get("retry-after-ms", "50")) / 1000 + 0.01)
        try:
            r = requests.get(status_url, timeout=TIMEOUT)
        except requests.ConnectionError:
            continue
        if r.status_code == 201:
            return


@pytest.fixture(scope="module")
def session() -> tuple[list[Exchange], list[Any]]:
    """A patient client, then an impatient one, against the same scenario."""
    scenario = ROOT / "scenarios/azure-maps/flaky-polling.yaml"
    if scenario.is_relative_to(Path.cwd()):  # as a user would name it (the messages show it)
        scenario = scenario.relative_to(Path.cwd())
    with ReplayProxy(scenarios=[scenario], retry_after=0.05) as p:
        _patient_client(p.url)
        _impatient_client(p.url)
        entries = p.journal.entries
    return entries, check(entries)


def test_the_page_draws_each_poll_its_window_and_the_violations(
    session: tuple[list[Exchange], list[Any]],
) -> None:
    entries, violations = session
    rules = {v.rule for v in violations}
    assert {"retry-after", "unmatched"} <= rules
    page = render(entries, violations)
    # self-contained: no script, nothing fetched
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert page.count("<svg") == 2  # two operations, an axis each
    assert page.count('<td><a href="#op') == 2  # and the overview links to each
    polled = [e for e in entries if e.method == "GET" and "/operations/" in e.path]
    marks = len(re.findall(r'<circle class="mark|<path class="mark', page))
    assert marks == len(polled) + 2  # the starts and every poll
    windows = page.count('<rect class="window"')
    assert windows == sum(1 for e in entries if e.retry_after and "/not-recorded" not in e.path)
    assert len(re.findall('<path class="mark ok( flagged)? end', page)) == 2  # each terminal answer, marked
    assert page.count(">201 Succeeded</text>") == 2
    for v in violations:  # each message, in red (class violation), numbered and linked from its request
        assert f'<span class="rule">{v.rule}</span> {_html(v.message)}' in page
    assert page.count('class="mark ok flagged') + page.count('class="mark retry flagged') >= 2
    assert "/tilesets/not-recorded" in page and "closest" in page  # unmatched, with its closest match
    assert '<p id="summary" class="summary fail">' in page
    assert summary(entries, violations) in page


def _html(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_play_report_html_on_the_command_line(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "play.html"
    proc = cli(
        [
            "play",
            "scenarios/azure-maps/tileset-succeeds.yaml",
            "--retry-after",
            "0.05",
            "--port",
            "0",
            "--report-html",
            str(out),
        ]
    )
    try:
        _impatient_client(proc.url)
    finally:
        assert proc.stop() == 0, proc.stderr
    line = next(x for x in proc.stderr_lines if x.startswith("replay-proxy: report: "))
    assert line.endswith(out.resolve().as_uri())  # a link a CI log shows
    assert "1 operation" in line and "retry-after" in line and "unmatched" in line
    page = out.read_text(encoding="utf-8")
    assert "tileset-succeeds.yaml: operation &quot;tileset&quot;" in page


def test_serve_writes_the_html_report_and_the_har_of_what_it_was_told_to_use(
    cli: Any, tmp_path: Path
) -> None:
    """`serve` takes the run options: what the control API loaded is reported and captured at exit."""
    page, har = tmp_path / "serve.html", tmp_path / "serve.har"
    proc = cli(["serve", "--port", "0", "--report-html", str(page), "--har", str(har)])
    try:
        scenario = str(ROOT / "scenarios/azure-maps/tileset-succeeds.yaml")
        used = requests.post(
            f"{proc.url}/__replay-proxy/use",
            json={"scenarios": [scenario], "retry_after": 0.05},
            timeout=TIMEOUT,
        )
        assert used.status_code == 200, used.text
        _impatient_client(proc.url)
    finally:
        assert proc.stop() == 0, proc.stderr
    line = next(x for x in proc.stderr_lines if x.startswith("replay-proxy: report: "))
    assert "1 operation" in line and line.endswith(page.resolve().as_uri())
    assert "tileset-succeeds.yaml: operation &quot;tileset&quot;" in page.read_text(encoding="utf-8")
    import json

    urls = [e["request"]["url"] for e in json.loads(har.read_text(encoding="utf-8"))["log"]["entries"]]
    assert not any("/__replay-proxy/" in u for u in urls)  # the control API is not the client's traffic
    assert any("/tilesets?" in u for u in urls) and any(u.endswith("/tilesets/not-recorded") for u in urls)


def test_a_virtual_clock_run_is_drawn_in_virtual_time(tmp_path: Path) -> None:
    """slow-job runs five minutes of virtual time in a fraction of a second: the axis shows the minutes."""
    with ReplayProxy(
        scenarios=[ROOT / "scenarios/examples/slow-job.yaml"], clock="virtual", retry_after=0.05
    ) as p:
        began = time.monotonic()
        start = requests.post(f"{p.url}/tilesets", timeout=TIMEOUT)
        for _ in range(40):
            time.sleep(0.05)
            if requests.get(start.headers["Location"], timeout=TIMEOUT).json()["status"] == "Succeeded":
                break
        real = time.monotonic() - began
        entries = p.journal.entries
    assert real < 30
    page = render(entries, check(entries))
    assert "virtual time" in page and "s (virtual)" in page
    ticks = [float(t) for t in re.findall(r'<text class="tick" x="[\d.]+" y="\d+">([\d.]+)</text>', page)]
    assert max(ticks) >= 300  # NotStarted 10 s + Running 5 min, in the scenario's seconds
    assert re.search(r"Succeeded after \d+ polls in 3[01]\d\.\d{3} s", page)


def _poll_to_the_end(url: str) -> requests.Response:
    """Polls a status URL (no waiting: virtual clock) until it stops answering 202 or a running status."""
    for _ in range(10):
        r = requests.get(url, timeout=TIMEOUT)
        if r.status_code != 202 and (not r.content or r.json().get("status") in (None, "Succeeded")):
            return r
    raise AssertionError(f"{url} never finished")


def test_the_location_and_arm_styles_are_drawn_with_their_final_get() -> None:
    """A location-style batch and delete (202 until the result) and an ARM PUT (Azure-AsyncOperation, then
    the final GET of the resource): each an operation with its style, polled to its end; the ARM one's
    final GET is on its axis."""
    arm = "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Storage/storageAccounts/acct1"
    with ReplayProxy(
        scenarios=[
            ROOT / "scenarios/location-polling.yaml",
            ROOT / "scenarios/arm-azure-async-operation.yaml",
        ],
        clock="virtual",
        retry_after=0,
    ) as p:
        batch = requests.post(f"{p.url}/batch", json={}, timeout=TIMEOUT)
        assert _poll_to_the_end(batch.headers["Location"]).status_code == 200
        delete = requests.delete(f"{p.url}/subscriptions/s1/resourcegroups/rg1", timeout=TIMEOUT)
        assert _poll_to_the_end(delete.headers["Location"]).status_code == 204
        put = requests.put(f"{p.url}{arm}", json={"location": "westeurope"}, timeout=TIMEOUT)
        assert _poll_to_the_end(put.headers["Azure-AsyncOperation"]).json()["status"] == "Succeeded"
        assert requests.get(f"{p.url}{arm}", timeout=TIMEOUT).status_code == 200
        entries = p.journal.entries
    violations = check(entries)
    assert violations == []
    page = render(entries, violations)
    assert page.count("<svg") == 3
    assert page.count('<span class="style">style location</span>') == 2
    assert page.count('<span class="style">style arm</span>') == 1
    assert "Succeeded after 3 polls in 15.000 s" in page and "Succeeded after 3 polls in 45.000 s" in page
    assert re.search(r"<td>final GET</td><td>16\.000</td>.*?<code>GET " + re.escape(arm), page)


def _synthetic(operations: int, polls: int = 5) -> list[Exchange]:
    """A journal of ``operations`` LROs, each a start and ``polls`` polls 1 s apart (Retry-After: 1)."""
    entries: list[Exchange] = []
    t = 1000.0
    for n in range(operations):
        url = f"http://127.0.0.1:8080/tilesets/operations/{n:08d}-aaaa-bbbb-cccc-dddddddddddd"
        entries.append(
            Exchange(
                "POST",
                url,
                "/tilesets?datasetId=d",
                202,
                "cassette",
                "#1",
                t,
                t,
                retry_after=1.0,
                status_urls=(url,),
            )
        )
        for k in range(polls):
            t += 1.0 if not (n == 7 and k == 2) else 0.2  # one early poll
            last = k == polls - 1
            entries.append(
                Exchange(
                    "GET",
                    url,
                    url[21:],
                    201 if last else 200,
                    "cassette",
                    f"#{k + 2}",
                    t,
                    t,
                    retry_after=None if last else 1.0,
                    op_status="Succeeded" if last else "Running",
                    terminal=last,
                )
            )
        t += 0.5
    return entries


def test_the_page_and_the_text_report_word_the_same_answer_each_their_way() -> None:
    """One formatter (``proxy.verdict.answer_text``): the page says ``Retry-After 0.05 s``, the text
    ``Retry-After: 0.05``; status, operation status and who failed to answer alike."""
    url = "http://127.0.0.1:8080/tilesets/operations/00000000-aaaa-bbbb-cccc-dddddddddddd"
    entries = [
        Exchange(
            "POST",
            url,
            "/tilesets",
            202,
            "cassette",
            "#1",
            1000.0,
            1000.0,
            retry_after=0.05,
            status_urls=(url,),
        ),
        Exchange(
            "GET", url, url[21:], 200, "cassette", "#2", 1000.1, 1000.1, retry_after=0.05, op_status="Running"
        ),
        Exchange(
            "GET", url, url[21:], 201, "cassette", "#3", 1000.2, 1000.2, op_status="Succeeded", terminal=True
        ),
        Exchange("GET", "http://127.0.0.1:8080/nope", "/nope", 599, "no-match", "none", 1000.3, 1000.3),
    ]
    violations = check(entries)
    page, text = render(entries, violations), report(entries, violations)
    assert "<td>202, Retry-After 0.05 s</td>" in page and "<td>200 Running, Retry-After 0.05 s</td>" in page
    assert "<td>201 Succeeded</td>" in page and "<td>599, NO MATCH</td>" in page
    assert "-> 202, Retry-After: 0.05;" in text and "-> 200 Running, Retry-After: 0.05" in text
    assert "-> 201 Succeeded" in text and "GET /nope -> 599, NO MATCH" in text
    assert "Retry-After: 0.05" not in page and "Retry-After 0.05 s" not in text


def test_two_hundred_operations_make_a_page_of_bounded_size() -> None:
    entries = _synthetic(200)
    violations = check(entries)
    assert [v.rule for v in violations] == ["retry-after"]
    page = render(entries, violations)
    assert page.count("<svg") == 200
    assert len(page.encode()) < 2_000_000  # about 0.9 MB: see benchmarks/report_html_figures.py


@pytest.fixture(scope="module")
def chromium() -> Iterator[str]:
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium to render the report in (Debian: apt-get install -y chromium)")
    yield found


def test_the_report_as_chromium_shows_it(
    chromium: str, session: tuple[list[Exchange], list[Any]], tmp_path: Path
) -> None:
    entries, violations = session
    page = tmp_path / "report.html"
    write_report(page, entries, violations)
    shown = in_chromium(
        page,
        {
            "violation_color": "getComputedStyle(document.querySelector('li.violation')).color",
            "flagged_fill": "getComputedStyle(document.querySelector('.mark.flagged')).fill",
            "axis_width": "document.querySelector('svg.axis').getBoundingClientRect().width",
            "windows": "document.querySelectorAll('rect.window').length",
        },
    )
    assert shown.requested == [page.resolve().as_uri()]  # nothing fetched but the page itself
    text = shown.text
    assert "FAIL" in text and summary(entries, violations) in text
    assert len(re.findall(r'operation [0-9a-f]{8}… flaky-polling\.yaml: operation "tileset"', text)) == 2
    assert "Succeeded after" in text
    for v in violations:
        assert f"{v.rule} {v.message}" in text  # the message, as a reader sees it
    assert shown.values["violation_color"] == "rgb(207, 34, 46)"  # red
    assert shown.values["flagged_fill"] == "rgb(207, 34, 46)"
    assert shown.values["axis_width"] > 500 and shown.values["windows"] > 3
    assert "All " in text and "GET /tilesets/not-recorded" not in text.split("All ")[-1]  # folded away
    assert shown.png.startswith(b"\x89PNG")
    target = os.environ.get("REPLAY_PROXY_SCREENSHOT")
    if target:
        Path(target).write_bytes(shown.png)


def test_two_hundred_operations_render_in_chromium(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "big.html"
    entries = _synthetic(200)
    write_report(page, entries, check(entries))
    shown = in_chromium(
        page, {"axes": "document.querySelectorAll('svg.axis').length"}, timeout=120, screenshot=False
    )
    assert shown.values["axes"] == 200
    assert "200 operations, 1 violation (retry-after)" in shown.text
