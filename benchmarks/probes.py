"""One-off timings run.py takes in a fresh process each: cassette load time and scenario switch time.

``python benchmarks/probes.py load CASSETTE`` times ``proxy.cassette.load`` (imports excluded);
``python benchmarks/probes.py switch N CASSETTE`` starts a ``ReplayProxy`` and times ``N`` ``use()`` calls
that switch between two scenarios and a cassette (what the pytest fixture does between tests). Each prints
one JSON line. ``python benchmarks/probes.py serve CASSETTE PORT`` replays through ``ReplayProxy`` with no
limit on start-up (the command line gives up after 30 s: a 100,000-interaction cassette loads longer).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def load_time(path: Path) -> dict[str, float]:
    from proxy import cassette

    began = time.perf_counter()
    items = cassette.load(path)
    return {"seconds": round(time.perf_counter() - began, 3), "interactions": len(items)}


def switch_time(count: int, cassette_file: Path) -> dict[str, float]:
    from proxy import ReplayProxy

    scenarios = [ROOT / "scenarios" / "azure-maps" / "tileset-succeeds.yaml", HERE / "lro-suite.yaml"]
    took: list[float] = []
    with (
        tempfile.TemporaryDirectory() as confdir,
        ReplayProxy(scenarios=scenarios[:1], confdir=confdir) as proxy,
    ):
        for i in range(count):
            which = [scenarios[i % 2]] if i % 3 else [cassette_file]
            began = time.perf_counter()
            proxy.use(*which)
            took.append(time.perf_counter() - began)
    return {
        "median_ms": round(statistics.median(took) * 1000, 2),
        "max_ms": round(max(took) * 1000, 2),
        "switches": count,
    }


def serve(cassette_file: Path, port: int) -> None:
    import signal
    import threading

    from proxy import ReplayProxy

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    proxy = ReplayProxy(cassette_file, port=port).start(timeout=3600)
    try:
        print(f"replay-proxy on {proxy.url}", flush=True)
        stop.wait()
    finally:
        proxy.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["load"]:
        print(json.dumps(load_time(Path(argv[1]))))
    elif argv[:1] == ["switch"]:
        print(json.dumps(switch_time(int(argv[1]), Path(argv[2]))))
    elif argv[:1] == ["serve"]:
        serve(Path(argv[1]), int(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
