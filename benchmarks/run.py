"""Benchmarks: replay-proxy beside the floor, mitmproxy and its peers, measured in one run on loopback.

    python benchmarks/run.py --quick      # under 2 minutes on 2 cores: small sizes, short runs, tuned peers
    python benchmarks/run.py              # the full run, under 15 minutes: 10 / 10k / 100k, stock peers too

Writes ``results.md`` and ``results.json`` (machine, versions, every figure) into ``--out`` (default
``benchmarks/.work/results/``) and prints the Markdown. Recordings, the npm peers (``npm install
--prefix benchmarks/.work``) and logs live in ``benchmarks/.work/`` (git-ignored). ``--groups`` picks what
runs (floor, mitmproxy, replay-proxy, lean, peers, user-suite, probes). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import measure  # noqa: E402
import recording  # noqa: E402
import report  # noqa: E402
import targets as T  # noqa: E402
import user_suite  # noqa: E402

GROUPS = ("floor", "mitmproxy", "replay-proxy", "lean", "peers", "user-suite", "probes")
PEERS = {"wiremock": "3.13.2", "@mbtest/mountebank": "2.9.2", "talkback": "4.2.0"}
"""npm packages of the peers, pinned: installed into benchmarks/.work/node_modules on first use."""


def settings_for(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    s: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "seconds": 1.0 if quick else 5.0,
        "warmup": 1.0 if quick else 2.0,
        "sizes": [10, 1_000] if quick else [10, 10_000, 100_000],
        "stock_peers": not quick,
        "peer_sizes": [10] if quick else [10, 10_000],
        "suite_operations": 20 if quick else user_suite.N_OPERATIONS,
        "suite_sample": 0 if quick else 2,
        "switches": 20 if quick else 100,
        "groups": list(GROUPS),
        "loadgen": args.loadgen if args.loadgen != "auto" else ("wrk" if measure.wrk_path() else "python"),
    }
    s["repeat"] = 1
    for name in ("seconds", "warmup", "sizes", "suite_operations", "groups", "repeat"):
        value = getattr(args, name)
        if value is not None:
            s[name] = value
    s["peer_sizes"] = [n for n in s["peer_sizes"] if n in s["sizes"]] or s["sizes"][:1]
    return s


# ------------------------------------------------------------------------------------------ environment


def _first_line(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0] if out else None


def _npm_version(ctx: T.Context, package: str) -> str | None:
    try:
        return str(json.loads((ctx.node_modules / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def environment(ctx: T.Context) -> dict[str, Any]:
    from importlib import metadata

    import proxy

    cpu_model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.machine(),
    )
    mem_kib = next(
        int(ln.split()[1])
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal")
    )
    wrk = _first_line(["wrk", "-v"]) if measure.wrk_path() else None
    java = _first_line(["java", "-version"]) if shutil.which("java") else None
    versions: dict[str, str | None] = {
        "Python": platform.python_version(),
        "mitmproxy": metadata.version("mitmproxy"),
        "replay-proxy": proxy.__version__,
        "h11": metadata.version("h11"),
        "httptools": _httptools_version(ctx.python),
        "wrk": wrk.split()[1] if wrk else None,
        "Java": java.split('"')[1] if java and '"' in java else java,
        "Node": (_first_line(["node", "--version"]) or "").lstrip("v") or None,
    }
    for package in PEERS:
        versions[package.rsplit("/", 1)[-1]] = _npm_version(ctx, package)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 1024 / 1024),
        "kernel": platform.release(),
        "loadavg_start": _loadavg(),
        "versions": {k: v for k, v in versions.items() if v},
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py", *sys.argv[1:]]),
    }


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@functools.cache
def _httptools_version(python: str) -> str | None:
    """The lean engine's parser (a dependency), or None."""
    probe = "import httptools; print(httptools.__version__)"
    proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=HERE, timeout=60)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def install_peers(ctx: T.Context) -> str | None:
    """npm-install the pinned peers into the work directory if missing; a reason when they cannot be."""
    if all(_npm_version(ctx, p) == v for p, v in PEERS.items()):
        return None
    if not shutil.which("npm"):
        return "npm not found"
    print("installing the peers with npm into", ctx.workdir, flush=True)
    proc = subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(ctx.workdir),
            "--no-audit",
            "--no-fund",
            *(f"{p}@{v}" for p, v in PEERS.items()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return f"npm install failed: {proc.stderr.strip().splitlines()[-1:]}"
    return None


# ------------------------------------------------------------------------------------------ the runs


def plan(s: dict[str, Any], ctx: T.Context) -> list[T.Target]:
    groups = set(s["groups"])
    out: list[T.Target] = []
    if "floor" in groups:
        out += [T.floor(), T.floor("uvloop")]
    if "mitmproxy" in groups:
        out += [T.mitmdump_trivial(), T.minimal_master(), T.server_replay(s["sizes"][0])]
    if "replay-proxy" in groups:
        out.append(T.play())
        out += [T.replay(n) for n in s["sizes"]]
        out += [T.replay_api(n) for n in s["sizes"] if n > 10_000]
    if "lean" in groups:
        out += [T.lean("play"), *(T.lean("replay", n) for n in s["sizes"])]
    if "peers" in groups:
        for n in s["peer_sizes"]:
            for tuned in (True, False) if s["stock_peers"] and n == s["peer_sizes"][0] else (True,):
                out += [T.wiremock(n, tuned), T.mountebank(n, tuned), T.talkback(n, tuned)]
    return out


def missing(target: T.Target, ctx: T.Context, peers_problem: str | None) -> str | None:
    """Why a target cannot run here, or None."""
    if target.needs == "java":
        if not shutil.which("java"):
            return "skipped: java not found"
        if peers_problem or not _npm_version(ctx, "wiremock"):
            return f"skipped: {peers_problem or 'npm package wiremock missing'}"
    if target.needs == "node":
        if not shutil.which("node"):
            return "skipped: node not found"
        if peers_problem:
            return f"skipped: {peers_problem}"
    return None


def bench_target(
    target: T.Target, ctx: T.Context, s: dict[str, Any], peers_problem: str | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": target.key,
        "label": target.label,
        "group": target.group,
        "size": target.size,
        "note": target.note,
    }
    reason = missing(target, ctx, peers_problem)
    if reason:
        row["skipped"] = reason
        return row
    print(f"  {target.label} ...", end=" ", flush=True)
    try:
        started = target.start(ctx)
    except Exception as e:
        row["error"] = str(e)[:300]
        print("failed:", row["error"], flush=True)
        return row
    try:
        tree = started.tree
        gen = s["loadgen"]
        warmup = s["warmup"] * target.warmup
        if warmup > 0:  # JIT, caches, first-use costs: not counted
            measure.load(started.url, started.paths, 32, warmup, gen)
        cpu = tree.cpu_seconds()
        c1 = measure.load(started.url, started.paths, 1, s["seconds"], gen)
        c32 = measure.load(started.url, started.paths, 32, s["seconds"], gen)
        cpu = tree.cpu_seconds() - cpu
        row["peak_rss_mib"] = tree.peak_rss_mib()
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"[:300]
        print("failed:", row["error"], flush=True)
        return row
    finally:
        started.stop()
    requests = c1.requests + c32.requests
    row.update(
        startup_s=started.startup_s,
        c1=c1.as_dict(),
        c32=c32.as_dict(),
        cpu_us_per_req=round(cpu * 1e6 / requests, 1) if requests else None,
        polled_paths=len(started.paths),
    )
    errors = c1.errors + c32.errors
    if requests and errors > 0.01 * requests:
        row["warning"] = f"{errors} errors"
    print(f"{c1.rps:,.0f} / {c32.rps:,.0f} req/s", flush=True)
    return row


def medians(runs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """One target's row from its passes (``--repeat``): the median of each figure, the highest peak RSS.

    The passes interleave the targets, so a drift of the machine (another process, a frequency change)
    falls on all of them alike rather than on whichever ran at that moment. A pass that failed or was
    skipped makes the row that pass's."""
    if len(runs) == 1:
        return runs[0]
    for row in runs:
        if row.get("error") or row.get("skipped"):
            return row
    row = dict(runs[0])
    for load in ("c1", "c32"):
        row[load] = dict(runs[0][load])
        for figure in ("rps", "p50_ms", "p99_ms", "requests", "errors"):
            row[load][figure] = statistics.median(r[load][figure] for r in runs)
    for figure in ("startup_s", "cpu_us_per_req"):
        row[figure] = statistics.median(r[figure] for r in runs)
    row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    row["runs"] = [{"c1_rps": r["c1"]["rps"], "c32_rps": r["c32"]["rps"]} for r in runs]
    return row


def run_probes(ctx: T.Context, s: dict[str, Any]) -> dict[str, Any]:
    """Cassette load time (10k, or the largest size below) and use() switch time, each in a fresh process."""
    probes: dict[str, Any] = {}
    size = max((n for n in s["sizes"] if n <= 10_000), default=s["sizes"][0])
    cassette = recording.cassette_path(ctx.workdir, size)
    for name, argv in (
        ("cassette_load", ["load", str(cassette)]),
        ("switch", ["switch", str(s["switches"]), str(recording.cassette_path(ctx.workdir, s["sizes"][0]))]),
    ):
        env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(ctx.confdir))
        proc = subprocess.run(
            [ctx.python, str(HERE / "probes.py"), *argv],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
            env=env,
        )
        try:
            probes[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            probes[name] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    probes["cassette_load"]["size"] = size
    return probes


@dataclass
class SuiteEntry:
    """One row of the user's number: a target, how many operations to sample, the client's deadline."""

    target: T.Target
    note: str
    sample: int | None = None
    deadline: float = 60.0


def suite_plan(s: dict[str, Any], ctx: T.Context) -> list[SuiteEntry]:
    """replay-proxy (replay with fast polling, play on virtual time) on each engine, and each peer serving
    the recording as it is (sampled: 5 s of Retry-After per operation) and edited to Retry-After 0."""
    size = s["suite_operations"] * user_suite.REQUESTS_PER_OPERATION
    notes = user_suite.PEER_NOTES
    fast = ("--retry-after", "0")
    label = "replay-proxy play --clock virtual --retry-after 0"
    out = [
        SuiteEntry(
            T.replay(size, *fast, key="suite-replay", label="replay-proxy replay --retry-after 0"),
            notes["replay-proxy replay"],
        ),
        SuiteEntry(
            T.play(*fast, "--clock", "virtual", key="suite-play", label=label, polled=False),
            notes["replay-proxy play"],
        ),
    ]
    if "lean" in s["groups"]:
        label = "replay-proxy --engine lean replay --retry-after 0"
        lean = T.lean("replay", size, *fast, key="suite-lean", label=label)
        out.append(SuiteEntry(lean, notes["replay-proxy replay"] + " (lean engine)"))
        label = "replay-proxy --engine lean play --clock virtual --retry-after 0"
        lean = T.lean("play", 0, *fast, "--clock", "virtual", key="suite-lean-play", label=label)
        lean.setup = None
        out.append(SuiteEntry(lean, notes["replay-proxy play"] + " (lean engine)"))
    if "peers" in s["groups"]:
        for make, name in ((T.wiremock, "wiremock"), (T.mountebank, "mountebank"), (T.talkback, "talkback")):
            # talkback never finishes an operation: its client gives up soon after a normal one would end
            talk = name == "talkback"
            if s["suite_sample"]:  # as recorded: 5 s of Retry-After per operation, so a sample
                recorded = make(size, True, key=f"suite-{name}", label=f"{name} tuned, as recorded")
                out.append(SuiteEntry(recorded, notes[name], s["suite_sample"], 6.5 if talk else 60.0))
            edited = make(size, True, 0.0, key=f"suite-{name}-edited", label=f"{name} tuned, Retry-After: 0")
            out.append(
                SuiteEntry(
                    edited, "the recording edited by hand to Retry-After: 0", None, 3.0 if talk else 60.0
                )
            )
    return out


def run_suite(s: dict[str, Any], ctx: T.Context, peers_problem: str | None) -> list[dict[str, Any]]:
    rows = []
    for entry in suite_plan(s, ctx):
        target = entry.target
        reason = missing(target, ctx, peers_problem)
        if reason:
            rows.append({"target": target.label, "error": reason})
            continue
        print(f"  user's number: {target.label} ...", end=" ", flush=True)
        try:
            prepared = target.prepare(ctx)
            number = user_suite.measure(
                target.label, prepared.launch, s["suite_operations"], entry.sample, entry.deadline, entry.note
            )
            rows.append(number.as_dict())
            print(
                f"{number.total_s} s" if number.total_s is not None else f"failed: {number.error}", flush=True
            )
        except Exception as e:
            rows.append({"target": target.label, "error": f"{type(e).__name__}: {e}"[:300]})
            print("failed:", rows[-1]["error"], flush=True)
    return rows


# ------------------------------------------------------------------------------------------ the goals


def goals(
    rows: list[dict[str, Any]],
    probes: dict[str, Any],
    s: dict[str, Any],
    suite: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    by_key = {r["key"]: r for r in rows if "c1" in r}
    failed = {r["key"]: r["error"] for r in rows if r.get("error")}

    def rps(key: str, c: str) -> float | None:
        row = by_key.get(key)
        return row[c]["rps"] if row else None

    out: list[dict[str, Any]] = []

    def ratio(name: str, ours: str, theirs: str, target: float, at: tuple[str, ...] = ("c1", "c32")) -> None:
        """``ours`` / ``theirs`` in req/s at c=1 and c=32; the goal holds at the concurrencies ``at``."""
        values = []
        for c in ("c1", "c32"):
            a, b = rps(ours, c), rps(theirs, c)
            values.append(round(a / b, 2) if a and b else None)
        if values[0] is None:
            if ours in failed:
                why = failed[ours].split(": ", 1)[-1][:120]
                out.append(
                    {
                        "name": name,
                        "measured": f"not measured: {why}",
                        "target": f">= {target:.1f}x",
                        "met": False,
                        "values": [],
                    }
                )
            return
        judged = [v for c, v in zip(("c1", "c32"), values, strict=True) if c in at]
        met = all(v is not None and v >= target for v in judged)
        out.append(
            {
                "name": name,
                "measured": " / ".join(f"{v:.2f}x" if v else "-" for v in values),
                "target": f">= {target:.1f}x" + ("" if len(at) == 2 else f" at c={at[0][1:]}"),
                "met": met,
                "values": values,
            }
        )

    small, large = s["sizes"][0], s["sizes"][-1]
    ratio("play vs stock mitmdump", "play", "mitmdump", 1.0)
    ratio("play vs minimal master", "play", "minimal-master", 0.9)
    ratio(f"replay @{small} vs stock mitmdump", f"replay-{small}", "mitmdump", 1.0)
    ratio(f"replay @{small} vs minimal master", f"replay-{small}", "minimal-master", 0.9)
    ratio(f"replay @{small} vs mitmproxy server replay", f"replay-{small}", f"server-replay-{small}", 1.0)
    if large != small:
        ratio(f"replay @{large:,} vs replay @{small}", f"replay-{large}", f"replay-{small}", 0.9)
        if f"replay-api-{large}" in by_key:
            ratio(
                f"replay @{large:,} (API) vs replay @{small}", f"replay-api-{large}", f"replay-{small}", 0.9
            )

    def bound(name: str, value: float | None, limit: float, unit: str) -> None:
        if value is not None:
            out.append(
                {
                    "name": name,
                    "measured": f"{value:g} {unit}",
                    "target": f"< {limit:g} {unit}",
                    "met": value < limit,
                    "values": [value],
                }
            )

    load = probes.get("cassette_load", {})
    bound(f"{load.get('size', 0):,}-interaction cassette load", load.get("seconds"), 1.0, "s")
    for key in (f"replay-{small}", "play"):
        if key in by_key:
            bound(f"start-up to ready ({by_key[key]['label']})", by_key[key]["startup_s"], 1.0, "s")
    if "replay-10000" in by_key:
        bound("peak RSS, replay @10k", by_key["replay-10000"]["peak_rss_mib"], 150, "MiB")
    switch = probes.get("switch", {})
    bound("scenario switch, ReplayProxy.use() (median)", switch.get("median_ms"), 10, "ms")
    out.extend(suite_goals(suite or []))
    if "lean-replay-10" in by_key:
        ratio("lean replay @10 vs floor", "lean-replay-10", "floor", 0.6, at=("c1",))
        ratio(
            "lean replay @10 vs floor on uvloop (the same loop)",
            "lean-replay-10",
            "floor-uvloop",
            0.6,
            at=("c1",),
        )
        ratio("lean replay @10 vs WireMock tuned", "lean-replay-10", "wiremock-tuned-10", 1.0)
        ratio("lean replay @10 vs talkback tuned", "lean-replay-10", "talkback-tuned-10", 0.8)
        ratio("lean play vs lean replay @10", "lean-play", "lean-replay-10", 0.9)
        ratio("lean replay vs mitmproxy replay @10", "lean-replay-10", "replay-10", 1.0)
        if large != small:
            ratio(f"lean replay @{large:,} vs @{small}", f"lean-replay-{large}", f"lean-replay-{small}", 0.9)
        row = by_key["lean-replay-10"]
        bound("CPU per request (lean replay @10)", row.get("cpu_us_per_req"), 60, "µs")
        bound("start-up to ready (lean replay @10)", row.get("startup_s"), 0.3, "s")
    times = {r["target"]: r["total_s"] for r in suite or [] if r.get("total_s")}
    lean_suite = times.get("replay-proxy --engine lean replay --retry-after 0")
    mitm_suite = times.get("replay-proxy replay --retry-after 0")
    if lean_suite and mitm_suite:
        value = lean_suite / mitm_suite
        out.append(
            {
                "name": "user's number: lean replay vs mitmproxy replay (time)",
                "measured": f"{value:.2f}x",
                "target": "<= 0.7x",
                "met": value <= 0.7,
                "values": [round(value, 3)],
            }
        )
    return out


def suite_goals(suite: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user's number: replay-proxy's fastest suite against the fastest peer, as recorded and as edited.

    Met when ours takes less time than the peer's (the issue asks for a wide margin: the ratio shows it).
    """
    done = [r for r in suite if r.get("total_s")]
    ours = [r for r in done if r["target"].startswith("replay-proxy")]
    if not ours:
        return []
    best = min(ours, key=lambda r: r["total_s"])
    out = []
    for kind, marker in (
        ("as recorded", "as recorded"),
        ("edited by hand to Retry-After: 0", "Retry-After: 0"),
    ):
        peers = [
            r for r in done if marker in r["target"] and not r["target"].startswith(("replay-proxy", "lean"))
        ]
        if not peers:
            continue
        peer = min(peers, key=lambda r: r["total_s"])
        ratio = best["total_s"] / peer["total_s"]
        out.append(
            {
                "name": f"user's number: {best['target']} vs the fastest peer {kind} ({peer['target']})",
                "measured": f"{best['total_s']:.2f} s vs {peer['total_s']:.2f} s ({ratio:.3g}x the time)",
                "target": "< 1.0x",
                "met": ratio < 1.0,
                "values": [round(ratio, 4)],
            }
        )
    return out


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, 1-s runs, tuned peers only (< 2 min)")
    p.add_argument("--sizes", type=_ints, help="cassette sizes in interactions, e.g. 10,10000,100000")
    p.add_argument("--seconds", type=float, help="seconds per load run (whole seconds with wrk)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up load before measuring each target")
    p.add_argument(
        "--repeat",
        type=int,
        help="measure each target this many times, in interleaved passes, and report medians (default 1)",
    )
    p.add_argument("--suite-operations", type=int, help="operations in the user's-number suite (default 200)")
    p.add_argument(
        "--groups", type=_names, help=f"what to run, comma-separated (default all: {','.join(GROUPS)})"
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk when installed, else the built-in Python one)",
    )
    p.add_argument("--out", type=Path, default=HERE / ".work" / "results", help="where results.md/.json go")
    p.add_argument("--workdir", type=Path, default=HERE / ".work", help="recordings, peers, logs")
    p.add_argument("--no-install", action="store_true", help="do not npm-install missing peers")
    return p.parse_args(argv)


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def _names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(GROUPS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}"
        )
    return names


def compile_bytecode() -> None:
    """Compile the environment's and the project's modules to bytecode, once (later runs find it).

    pip compiles what it installs, but ``uv sync`` does not, and with PYTHONDONTWRITEBYTECODE set (as on
    some CI machines) every start of a Python target would compile mitmproxy's ~650 modules again.
    """
    import compileall
    import sysconfig

    for path in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(ROOT / "proxy")}:
        compileall.compile_dir(path, quiet=2, workers=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_for(args)
    began = time.perf_counter()
    ctx = T.Context(args.workdir.resolve())
    from proxy.server import ensure_ca

    ensure_ca(ctx.confdir)  # before any timing: start-up is measured with the CA in place
    compile_bytecode()  # as any pip install does: start-up is not measured compiling 650 modules
    groups = set(s["groups"])
    peers_problem = None
    if "peers" in groups and args.no_install:
        peers_problem = (
            None if all(_npm_version(ctx, p) for p in PEERS) else "peers not installed (--no-install)"
        )
    elif "peers" in groups:
        peers_problem = install_peers(ctx)

    env = environment(ctx)
    print(
        f"{s['mode']} run: {env['cpus']} CPUs, load average {env['loadavg_start']}, load by {s['loadgen']}",
        flush=True,
    )
    print("preparing recordings of", ", ".join(f"{n:,}" for n in s["sizes"]), "interactions", flush=True)
    for n in s["sizes"]:
        recording.cassette_path(ctx.workdir, n)
    targets = plan(s, ctx)
    passes = []
    for n in range(s["repeat"]):
        if s["repeat"] > 1:
            print(f"pass {n + 1} of {s['repeat']}", flush=True)
        passes.append([bench_target(t, ctx, s, peers_problem) for t in targets])
    rows = [medians(runs) for runs in zip(*passes, strict=True)]
    probes = run_probes(ctx, s) if "probes" in groups else {}
    suite = run_suite(s, ctx, peers_problem) if "user-suite" in groups else []
    env["loadavg_end"] = _loadavg()
    s["under_load"] = float(env["loadavg_start"].split()[0]) > 0.5
    s["elapsed_s"] = round(time.perf_counter() - began, 1)
    results = {
        "environment": env,
        "settings": s,
        "targets": rows,
        "probes": probes,
        "user_suite": suite,
        "goals": goals(rows, probes, s, suite),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report.markdown(results)
    (args.out / "results.md").write_text(text)
    print()
    print(text)
    print(f"({s['elapsed_s']} s; written to {args.out / 'results.md'} and results.json)")
    failed = [r["key"] for r in rows if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
