"""Figures of the HTML report (``--report-html``) for a session of 200 long-running operations.

Prints the page's size, the time Python takes to build it (median of 5), and the time headless Chromium
takes to load and lay it out (navigation start to the load event, then a forced layout; median of 3),
when Chromium is installed. Usage: ``uv run python benchmarks/report_html_figures.py [OPERATIONS]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.journal import Exchange  # noqa: E402
from proxy.report_html import render  # noqa: E402
from proxy.verdict import check  # noqa: E402
from tests.browser import find_chromium  # noqa: E402
from tests.browser import render as in_chromium  # noqa: E402


def journal(operations: int, polls: int = 5) -> list[Exchange]:
    """Each operation: a 202 and ``polls`` polls one second apart (Retry-After: 1); one poll is early."""
    entries: list[Exchange] = []
    t = 1000.0
    for n in range(operations):
        url = f"http://127.0.0.1:8080/tilesets/operations/{n:08d}-aaaa-bbbb-cccc-dddddddddddd"
        entries.append(
            Exchange("POST", url, "/tilesets?datasetId=d", 202, "cassette", "#1", t, t, retry_after=1.0,
                     status_urls=(url,))
        )  # fmt: skip
        for k in range(polls):
            t += 0.2 if (n, k) == (7, 2) else 1.0
            last = k == polls - 1
            entries.append(
                Exchange("GET", url, url[21:], 201 if last else 200, "cassette", f"#{k + 2}", t, t,
                         retry_after=None if last else 1.0, op_status="Succeeded" if last else "Running",
                         terminal=last)
            )  # fmt: skip
        t += 0.5
    return entries


def main() -> None:
    operations = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    entries = journal(operations)
    violations = check(entries)
    builds = []
    for _ in range(5):
        began = time.perf_counter()
        page = render(entries, violations)
        builds.append(time.perf_counter() - began)
    size = len(page.encode())
    print(f"{operations} operations, {len(entries)} requests, {len(violations)} violation(s)")
    print(f"page: {size:,} bytes ({size / 1024:.0f} KiB); built in {statistics.median(builds) * 1000:.0f} ms")
    if find_chromium() is None:
        print("chromium: not installed (apt-get install -y chromium)")
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "report.html"
        path.write_text(page, encoding="utf-8")
        loads = []
        for _ in range(3):
            shown = in_chromium(
                path,
                {
                    "load": "performance.getEntriesByType('navigation')[0].loadEventEnd",
                    "layout": "(() => { const t = performance.now(); document.body.getBoundingClientRect(); "
                    "return performance.now() - t })()",
                },
                timeout=300,
                screenshot=False,
            )
            loads.append(float(shown.values["load"]) + float(shown.values["layout"]))
    print(f"chromium: loaded and laid out in {statistics.median(loads):.0f} ms (median of 3)")


if __name__ == "__main__":
    main()
