"""The targets: how each server under test is prepared, started, found ready and stopped.

Every target listens on 127.0.0.1 on a port chosen here, writes its output to ``.work/logs/``, and is
ready when it answers its first HTTP request (start-up is measured from exec to that answer). A started
target is a ``Started``: its URL, its process tree (for CPU and RSS), what the load polls, and ``stop()``.
``Started.launch`` adapts a target to ``user_suite.measure``'s ``Launch`` (``() -> (url, stop)``).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import recording
import user_suite
from measure import ProcessTree

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
READY_PATH = "/__benchmark_ready"
"""Requested until a target answers (anything, even a 404 or replay-proxy's 599 no-match)."""


@dataclass
class Context:
    """Where things are: the work directory, the Python running the proxy, the npm peers."""

    workdir: Path
    python: str = sys.executable
    confdir: Path = field(init=False)
    node_modules: Path = field(init=False)
    logs: Path = field(init=False)
    body_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.confdir = self.workdir / "confdir"
        self.node_modules = self.workdir / "node_modules"
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.body_file = self.workdir / "poll-body.json"
        if not self.body_file.exists():
            self.body_file.write_bytes(recording.poll_body())

    @property
    def mitmdump(self) -> str:
        return str(Path(self.python).parent / "mitmdump")

    def jar(self) -> Path:
        return next((self.node_modules / "wiremock" / "build").glob("wiremock-standalone-*.jar"))


@dataclass
class Started:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    startup_s: float
    paths: list[str]
    log: Path

    @property
    def tree(self) -> ProcessTree:
        return ProcessTree(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


@dataclass
class Target:
    """A server under test. ``command(ctx, port)`` prepares its files and gives its argv."""

    key: str
    label: str
    group: str
    command: Callable[[Context, int], list[str]]
    paths: Callable[[], list[str]]
    size: int | None = None
    note: str = ""
    setup: Callable[[str], list[str]] | None = None
    """Called with the URL once ready; returns the paths to load instead of ``paths()`` (play starts its
    operations here)."""
    needs: str = "python"
    """What must be installed: python, java (WireMock's jar), node (npm peers)."""
    cwd: Path | None = None
    warmup: float = 1.0
    """Warm-up multiplier: the JVM's JIT needs longer than the rest before it reaches its steady state."""

    def prepare(self, ctx: Context) -> Prepared:
        """Write what the target serves (its port is baked into some peers' files) and build its argv."""
        port = free_port()
        return Prepared(self, ctx, port, self.command(ctx, port))

    def start(self, ctx: Context, timeout: float = 180.0) -> Started:
        return self.prepare(ctx).start(timeout)


@dataclass
class Prepared:
    """A target ready to exec: ``start()`` runs it and returns once it answers."""

    target: Target
    ctx: Context
    port: int
    argv: list[str]

    def start(self, timeout: float = 180.0) -> Started:
        ctx, target = self.ctx, self.target
        log = ctx.logs / f"{target.key}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", REPLAY_PROXY_CONFDIR=str(ctx.confdir))
        env["BENCH_BODY_FILE"] = str(ctx.body_file)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(log, "wb") as out:
            began = time.perf_counter()
            proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=target.cwd or ctx.workdir,
                env=env,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{self.port}"
        started = Started(target.key, url, proc, 0.0, [], log)
        try:
            wait_ready(url, proc, timeout, log)
            started.startup_s = round(time.perf_counter() - began, 3)
            started.paths = target.setup(url) if target.setup is not None else target.paths()
        except BaseException:
            started.stop()
            raise
        return started

    def launch(self) -> tuple[str, Callable[[], None]]:
        """``user_suite.Launch``: start, and give (url, stop)."""
        started = self.start()
        return started.url, started.stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Until ``url`` answers an HTTP request; raise with the log's tail if the process dies or times out."""
    port = int(url.rsplit(":", 1)[1])
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before serving: {_tail(log)}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", READY_PATH)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.01)
        finally:
            conn.close()
    raise RuntimeError(f"not ready within {timeout:g} s: {_tail(log)}")


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------------------- the targets


def floor(loop: str = "asyncio") -> Target:
    """The floor on asyncio's loop, or on uvloop's (the lean engine's loop)."""

    def command(ctx: Context, port: int) -> list[str]:
        return [
            ctx.python,
            str(HERE / "floor_server.py"),
            "--port",
            str(port),
            "--body-file",
            str(ctx.body_file),
            "--loop",
            loop,
        ]

    return Target(
        "floor" if loop == "asyncio" else f"floor-{loop}",
        "floor: minimal asyncio server" + ("" if loop == "asyncio" else f" on {loop}"),
        "floor",
        command,
        lambda: recording.polled_paths(10),
        note=f"asyncio Protocol on {loop}'s loop, same JSON body for every request",
    )


def mitmdump_trivial() -> Target:
    def command(ctx: Context, port: int) -> list[str]:
        return [ctx.mitmdump, "-q", *_mitm_common(ctx, port), "-s", str(HERE / "trivial_addon.py")]

    return Target(
        "mitmdump",
        "stock mitmdump + trivial addon",
        "mitmproxy",
        command,
        lambda: recording.polled_paths(10),
        note="DumpMaster, all default addons, -q, answers in the request hook",
    )


def minimal_master() -> Target:
    def command(ctx: Context, port: int) -> list[str]:
        return [
            ctx.python,
            str(HERE / "minimal_master.py"),
            "--port",
            str(port),
            "--confdir",
            str(ctx.confdir),
        ]

    return Target(
        "minimal-master",
        "minimal mitmproxy master + trivial addon",
        "mitmproxy",
        command,
        lambda: recording.polled_paths(10),
        note="Master with core, proxyserver, next_layer, tlsconfig only",
    )


def server_replay(size: int) -> Target:
    def command(ctx: Context, port: int) -> list[str]:
        flows = str(recording.flows_path(ctx.workdir, size))
        common = _mitm_common(ctx, port, user_suite.RECORDED_ORIGIN)
        return [ctx.mitmdump, "-q", *common, "--server-replay", flows, "--set", "server_replay_reuse=true"]

    return Target(
        f"server-replay-{size}",
        f"mitmdump --server-replay @{_n(size)}",
        "mitmproxy",
        command,
        lambda: recording.polled_paths(size),
        size,
        note="flow file of the same recording; server_replay_reuse (no pop: never runs dry and forwards)",
    )


def _mitm_common(ctx: Context, port: int, target: str = "http://127.0.0.1:9") -> list[str]:
    return [
        *("--mode", f"reverse:{target}", "--listen-host", "127.0.0.1", "--listen-port", str(port)),
        *("--set", "connection_strategy=lazy", "--set", f"confdir={ctx.confdir}"),
    ]


def replay(size: int, *extra: str, key: str = "", label: str = "") -> Target:
    def command(ctx: Context, port: int) -> list[str]:
        cassette = str(recording.cassette_path(ctx.workdir, size))
        return [ctx.python, "-m", "proxy", "replay", cassette, "--port", str(port), "-q", *extra]

    return Target(
        key or f"replay-{size}",
        label or f"replay-proxy replay @{_n(size)}",
        "replay-proxy",
        command,
        lambda: recording.polled_paths(size),
        size,
        note=" ".join(["`replay-proxy replay CASSETTE -q", *extra]) + "`",
        cwd=ROOT,
    )


def replay_api(size: int) -> Target:
    """Replay through the Python API (``probes.py serve``), with no limit on start-up: the command line
    stops waiting after 30 s, less than a 100,000-interaction cassette takes to load."""

    def command(ctx: Context, port: int) -> list[str]:
        cassette = str(recording.cassette_path(ctx.workdir, size))
        return [ctx.python, str(HERE / "probes.py"), "serve", cassette, str(port)]

    return Target(
        f"replay-api-{size}",
        f"replay-proxy replay @{_n(size)} (ReplayProxy API, no start-up limit)",
        "replay-proxy",
        command,
        lambda: recording.polled_paths(size),
        size,
        note="`ReplayProxy(CASSETTE).start(timeout=3600)`: the CLI's server without its 30-s start limit",
        cwd=ROOT,
    )


def play(*extra: str, key: str = "play", label: str = "", polled: bool = True) -> Target:
    """``replay-proxy play lro-suite.yaml``; ``polled``: start 64 operations for the load to poll."""

    def command(ctx: Context, port: int) -> list[str]:
        return [
            ctx.python,
            "-m",
            "proxy",
            "play",
            str(user_suite.SCENARIO),
            "--port",
            str(port),
            "-q",
            *extra,
        ]

    return Target(
        key,
        label or "replay-proxy play (LRO scenario)",
        "replay-proxy",
        command,
        lambda: [],
        note=" ".join([f"`replay-proxy play {user_suite.SCENARIO.name} -q", *extra]) + "`",
        setup=start_operations if polled else None,
        cwd=ROOT,
    )


def start_operations(url: str, count: int = 64) -> list[str]:
    """Start ``count`` operations through ``url`` (POST /tilesets): the load polls their status paths."""
    port = int(url.rsplit(":", 1)[1])
    paths = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for dataset in user_suite.dataset_ids(count):
            conn.request("POST", f"/tilesets?api-version=2.0&datasetId={dataset}", body=b"")
            response = conn.getresponse()
            response.read()
            location = response.getheader("Location") or response.getheader("Operation-Location")
            if response.status != 202 or not location:
                raise RuntimeError(f"starting an operation gave {response.status}, Location {location!r}")
            paths.append("/" + location.split("://", 1)[-1].split("/", 1)[1])
    finally:
        conn.close()
    return paths


def lean(workload: str, size: int = 10, *extra: str, key: str = "", label: str = "") -> Target:
    """replay-proxy's lean engine (``--engine lean``, proxy/lean.py): the same core, no mitmproxy."""
    engine = ("--engine", "lean")
    if workload == "play":
        target = play(
            *engine, *extra, key=key or "lean-play", label=label or "replay-proxy --engine lean play"
        )
    else:
        target = replay(
            size,
            *engine,
            *extra,
            key=key or f"lean-replay-{size}",
            label=label or f"replay-proxy --engine lean replay @{_n(size)}",
        )
    target.group = "lean"
    return target


def wiremock(
    size: int, tuned: bool, retry_after: float | None = None, key: str = "", label: str = ""
) -> Target:
    def command(ctx: Context, port: int) -> list[str]:
        root = ctx.workdir / "wiremock" / f"{size}-{port}"
        cassette = recording.cassette_path(ctx.workdir, size)
        user_suite.to_wiremock(cassette, root, f"http://127.0.0.1:{port}", retry_after=retry_after)
        argv = ["java", "-jar", str(ctx.jar()), "--port", str(port), "--bind-address", "127.0.0.1"]
        argv += ["--root-dir", str(root)]
        return argv + (["--no-request-journal", "--disable-banner"] if tuned else [])

    how = "--no-request-journal" if tuned else "defaults"
    note = f"jar from npm `wiremock`, Java 17; {how}"
    return _peer("WireMock", size, tuned, command, note, "java", key, label, warmup=3.0)


def mountebank(
    size: int, tuned: bool, retry_after: float | None = None, key: str = "", label: str = ""
) -> Target:
    def command(ctx: Context, port: int) -> list[str]:
        config = ctx.workdir / "mountebank" / f"{size}-{port}.json"
        cassette = recording.cassette_path(ctx.workdir, size)
        user_suite.to_mountebank(cassette, config, port, retry_after=retry_after, keep_alive=tuned)
        mb = str(ctx.node_modules / "@mbtest" / "mountebank" / "bin" / "mb")
        argv = ["node", mb, "start", "--port", str(free_port()), "--configfile", str(config), "--noParse"]
        argv.append("--localOnly")
        return argv + (["--loglevel", "warn", "--nologfile"] if tuned else ["--logfile", f"{config}.log"])

    how = "keep-alive stubs, --loglevel warn --nologfile" if tuned else "defaults (Connection: close)"
    return _peer("mountebank", size, tuned, command, f"npm `@mbtest/mountebank`; {how}", "node", key, label)


def talkback(
    size: int, tuned: bool, retry_after: float | None = None, key: str = "", label: str = ""
) -> Target:
    def command(ctx: Context, port: int) -> list[str]:
        tapes = ctx.workdir / "talkback" / f"{size}-{port}"
        cassette = recording.cassette_path(ctx.workdir, size)
        user_suite.to_talkback(cassette, tapes, f"http://127.0.0.1:{port}", retry_after=retry_after)
        server = str(HERE / "talkback_server.js")
        module = str(ctx.node_modules / "talkback")
        return ["node", server, module, str(tapes), str(port), "tuned" if tuned else "stock"]

    how = "silent, no summary" if tuned else "defaults"
    note = f"npm `talkback`, record DISABLED, allowHeaders []; {how}"
    return _peer("talkback", size, tuned, command, note, "node", key, label)


def _peer(
    name: str,
    size: int,
    tuned: bool,
    command: Callable[[Context, int], list[str]],
    note: str,
    needs: str,
    key: str,
    label: str,
    warmup: float = 1.0,
) -> Target:
    how = "tuned" if tuned else "stock"
    return Target(
        key or f"{name.lower()}-{how}-{size}",
        label or f"{name} {how} @{_n(size)}",
        "peer",
        command,
        lambda: recording.polled_paths(size),
        size,
        note=note,
        needs=needs,
        warmup=warmup,
    )


def _n(size: int) -> str:
    return f"{size // 1000}k" if size >= 1000 and size % 1000 == 0 else str(size)
