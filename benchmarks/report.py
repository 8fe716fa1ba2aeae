"""The results as Markdown: the machine and versions, the side-by-side table, the user's number, the goals."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    env, settings = results["environment"], results["settings"]
    v = env["versions"]
    lines = [
        f"### Benchmarks: {settings['mode']} run, {env['date']}",
        "",
        f"Machine: {env['cpus']} CPUs ({env['cpu_model']}), {env['memory_gib']} GiB, Linux {env['kernel']}; "
        f"load average {env['loadavg_start']} at the start, {env.get('loadavg_end', '?')} at the end"
        + (" (**taken under load**)" if settings.get("under_load") else "")
        + ".",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in v.items()) + ".",
        f"Load: {settings['loadgen']}, 1 thread, keep-alive, {settings['seconds']:g} s per run after "
        f"{settings['warmup']:g} s of warm-up, cycling through up to 64 recorded status URLs. CPU is the "
        "target's process tree (user + system, /proc) over both runs divided by their requests; RSS is its "
        "peak (VmHWM); start-up is from exec to the first answered request."
        + (
            f" Each figure is the median of {settings['repeat']} interleaved passes over all the targets"
            " (the highest peak RSS)."
            if settings.get("repeat", 1) > 1
            else ""
        ),
        "",
        "| target | req/s c=1 | p50 / p99 ms c=1 | req/s c=32 | p50 / p99 ms c=32 | CPU µs/req "
        "| peak RSS MiB | start-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["targets"]:
        if row.get("skipped") or row.get("error"):
            reason = row.get("skipped") or f"error: {row['error']}"
            lines.append(f"| {row['label']} | {reason} |  |  |  |  |  |  |")
            continue
        c1, c32 = row["c1"], row["c32"]
        label = row["label"] + (f" ⚠ {row['warning']}" if row.get("warning") else "")
        lines.append(
            f"| {label} | {_fmt(c1['rps'])} | {c1['p50_ms']:.2f} / {c1['p99_ms']:.2f} | {_fmt(c32['rps'])} "
            f"| {c32['p50_ms']:.2f} / {c32['p99_ms']:.2f} | {_fmt(row['cpu_us_per_req'])} "
            f"| {_fmt(row['peak_rss_mib'], 1)} | {_fmt(row['startup_s'], 2)} |"
        )
    suite = results.get("user_suite") or []
    if suite:
        lines += [
            "",
            f"**The user's number**: one client test suite of {settings['suite_operations']} long-running "
            "operations (each a start and 5 polls, `Retry-After: 1` recorded), run one after the other by "
            "`examples/creator_client.py`, plus the target's start-up. Extrapolated rows ran fewer "
            "operations (the waiting scales linearly).",
            "",
            "| target | total s | start-up s | suite s | requests | note |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in suite:
            total = _fmt(r.get("total_s"), 2) if r.get("total_s") is not None else "**failed**"
            note = r.get("error") or ""
            if r.get("extrapolated"):
                note = f"extrapolated from {r['measured']} operations" + (f"; {note}" if note else "")
            lines.append(
                f"| {r['target']} | {total} | {_fmt(r.get('startup_s'), 2)} | {_fmt(r.get('suite_s'), 2)} "
                f"| {_fmt(r.get('requests'))} | {note} |"
            )
    goals = results.get("goals") or []
    if goals:
        lines += [
            "",
            "**The proxy's own cost**, from this run (throughput ratios: at c=1 / at c=32):",
            "",
            "| goal | measured | target | met |",
            "|---|---:|---:|---|",
        ]
        for g in goals:
            met = {True: "yes", False: "**no**", None: "-"}[g["met"]]
            lines.append(f"| {g['name']} | {g['measured']} | {g['target']} | {met} |")
    return "\n".join(lines) + "\n"
