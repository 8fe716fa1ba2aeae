"""The benchmark suite still runs: ``benchmarks/run.py --quick`` on tiny sizes, and its fallback load
generator.

Figures are not checked (speed is shown by benchmarks, not asserted by tests): only that every target of
ours starts, answers the load without errors, and lands in the JSON and Markdown results. No Java, npm or
network: the floor, replay-proxy (play, replay) on both engines, the probes and the user's suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def test_quick_run_measures_our_targets_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--no-install"]
    argv += ["--groups", "floor,replay-proxy,lean,probes,user-suite", "--sizes", "10"]
    argv += ["--seconds", "1", "--warmup", "0", "--suite-operations", "2"]
    argv += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    rows = {row["key"]: row for row in results["targets"]}
    assert {"floor", "floor-uvloop", "play", "replay-10"} <= rows.keys()
    assert {"lean-play", "lean-replay-10"} <= rows.keys()
    for row in rows.values():
        for run in (row["c1"], row["c32"]):
            assert run["requests"] > 0 and run["errors"] == 0, row
        assert row["cpu_us_per_req"] > 0 and row["peak_rss_mib"] > 0 and row["startup_s"] > 0, row
    # play's load polls operations it started; replay's polls recorded status URLs
    assert rows["play"]["polled_paths"] == 64 and rows["replay-10"]["polled_paths"] == 1

    suite = {row["target"]: row for row in results["user_suite"]}
    assert len(suite) == 4  # replay, play, on each engine
    for row in suite.values():
        assert row["error"] is None and row["requests"] == 2 * 6, row

    probes = results["probes"]
    assert probes["cassette_load"]["interactions"] == 10 and probes["switch"]["switches"] == 20
    goals = {goal["name"] for goal in results["goals"]}
    assert "scenario switch, ReplayProxy.use() (median)" in goals
    assert "start-up to ready (replay-proxy replay @10)" in goals

    env = results["environment"]
    assert env["cpus"] >= 1 and env["versions"]["mitmproxy"] and env["versions"]["Python"]
    markdown = (out / "results.md").read_text()
    assert "| replay-proxy replay @10 |" in markdown and "The user's number" in markdown


def test_python_load_generator_drives_the_floor(tmp_path: Path) -> None:
    """The fallback used where wrk is not installed: keep-alive requests, figures, and CPU/RSS from /proc."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import measure
        import targets
    finally:
        sys.path.remove(str(BENCHMARKS))
    started = targets.floor().start(targets.Context(tmp_path / "work"))
    try:
        result = measure.load(started.url, ["/a", "/b?x=1"], 4, 0.3, generator="python")
        tree = started.tree
        assert tree.cpu_seconds() > 0 and tree.peak_rss_mib() > 0
    finally:
        started.stop()
    assert result.generator == "python" and result.connections == 4
    assert result.requests > 4 and result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert started.proc.returncode == 0  # stopped by SIGTERM, cleanly


def test_repeated_passes_report_medians(tmp_path: Path) -> None:
    """``--repeat 3``: every target measured in three interleaved passes; each figure is the median."""
    out = tmp_path / "results"
    argv = [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--no-install", "--groups", "floor"]
    argv += ["--sizes", "10", "--seconds", "1", "--warmup", "0", "--repeat", "3"]
    argv += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("pass ") == 3 and proc.stdout.index("pass 2") < proc.stdout.index("pass 3")
    results = json.loads((out / "results.json").read_text())
    for row in results["targets"]:
        runs = sorted(run["c32_rps"] for run in row["runs"])
        assert len(runs) == 3 and row["c32"]["rps"] == runs[1], row
    assert "median of 3 interleaved passes" in (out / "results.md").read_text()


def test_the_median_row_of_passes() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run
    finally:
        sys.path.remove(str(BENCHMARKS))

    def row(rps: float, cpu: float, rss: float) -> dict[str, object]:
        load = {"rps": rps, "p50_ms": rps / 100, "p99_ms": rps / 10, "requests": int(rps), "errors": 0}
        return {
            "key": "t",
            "c1": dict(load),
            "c32": dict(load),
            "cpu_us_per_req": cpu,
            "startup_s": cpu / 100,
            "peak_rss_mib": rss,
        }

    merged = run.medians((row(100, 30, 50), row(300, 10, 70), row(200, 20, 60)))
    assert merged["c1"]["rps"] == merged["c32"]["rps"] == 200 and merged["cpu_us_per_req"] == 20
    assert merged["startup_s"] == 0.2 and merged["peak_rss_mib"] == 70
    assert [r["c32_rps"] for r in merged["runs"]] == [100, 300, 200]
    failed = {"key": "t", "error": "boom"}
    assert run.medians((row(1, 1, 1), failed)) is failed
    assert run.medians((row(1, 1, 1),)) == row(1, 1, 1)
