"""The user's number: how long one realistic client test suite takes against a target, start-up included.

The suite: 200 long-running operations of the Azure Maps Creator API (the seed), run one after the
other as a test suite runs its tests, each by a fresh ``examples/creator_client.py`` ``CreatorClient``
(one per test, as a function-scoped fixture would build it). Each operation is a start (``POST`` → 202,
``Location``, a recorded ``Retry-After: 1``) and 5 polls honouring Retry-After (NotStarted, Running x3,
Succeeded, 200 without a resource, so the client stops there): 6 requests, 5 s of advertised waiting.
Sequential, because that is how a test suite meets the service (pytest runs tests one by one; xdist
splits them, but each worker is sequential again).

Public API (run.py calls these; each returns plain data)::

    interactions(operations=200) -> list[Interaction]    # the recording; ids(i), dataset_ids(n)
    write_cassette(path, operations=200) -> Path          # the recording, vcrpy format
    to_wiremock(cassette, root_dir, base_url, retry_after=None) -> Path   # root_dir/mappings/*.json
    to_mountebank(cassette, path, port, retry_after=None, keep_alive=False) -> Path  # imposter JSON
    to_talkback(cassette, tapes_dir, base_url, retry_after=None) -> Path  # one .json5 tape per exchange
    run_suite(base_url, operations=200, deadline=60.0) -> SuiteRun        # the client suite alone
    measure(name, launch, operations=200, sample=None, deadline=60.0) -> UserNumber
    launch_replay(cassette, retry_after=0.0) -> Launch     # `replay-proxy replay C --retry-after 0`
    launch_play(scenario=SCENARIO, retry_after=0.0, clock="virtual") -> Launch
    measure_replay(cassette, operations) / measure_play(operations) -> UserNumber
    start_replay_proxy(args, confdir) / start_process(argv) -> Started   # .url .port .pid .stop()
    PEER_NOTES: dict[str, str]                            # what each target can do, for the table

A ``Launch`` is a callable with no arguments that starts a target, returns when it serves, and gives
``(base_url, stop)``; the harness's launchers (targets.py) fit it. ``measure`` times the launch (start-up)
and the suite, and stops the target.

Peers replay the recording honestly. The recorded ``Retry-After: 1`` stays unless ``retry_after`` is
given to a converter: that is the user editing the recording (none of the peers has an option that
rewrites it; see ``PEER_NOTES``), reported as a separate, labelled figure. A client honouring
``Retry-After: 1`` waits 5 s per operation, ~1000 s per suite: measure such targets with ``sample=N``
operations and the figure is extrapolated to 200 (the waiting is the figure: it scales linearly),
``UserNumber.extrapolated`` says so.

Standalone: ``python benchmarks/user_suite.py [--operations N] [--out DIR]`` measures replay-proxy
replay and play and writes the peers' recordings into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "examples"):  # run as a script: the repository and the example client
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from creator_client import CreatorClient  # noqa: E402

from proxy import cassette  # noqa: E402
from proxy.creator_service import format_created_date_time  # noqa: E402
from proxy.model import Interaction, Request, Response, origin_of  # noqa: E402
from proxy.rewrite import rewrite_origins, rewrite_retry_after  # noqa: E402

SCENARIO = Path(__file__).with_name("lro-suite.yaml")
"""The same operation as a scenario on the virtual clock (see its comments)."""

N_OPERATIONS = 200
POLLS = 5
REQUESTS_PER_OPERATION = 1 + POLLS
RECORDED_ORIGIN = "http://127.0.0.1:44099"
"""Where the recording was "made" (loopback, like the shipped cassettes): never dialled on replay."""

STATUSES = ("NotStarted", "Running", "Running", "Running", "Succeeded")
RETRY_AFTER = "1"
_EPOCH = datetime(2026, 1, 15, 9, 0, 0, tzinfo=UTC)
_CLIENT_HEADERS = (
    ("User-Agent", "python-requests/2.34.2"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept", "*/*"),
    ("Connection", "keep-alive"),
    ("Ocp-Apim-Subscription-Key", "<REDACTED-1>"),  # what a replay-proxy recording keeps of the key
)
_WIRE_HEADERS = ("content-length", "transfer-encoding")

Launch = Callable[[], tuple[str, Callable[[], None]]]
"""Starts a target, returns once it serves: ``(base_url, stop)``."""

PEER_NOTES: dict[str, str] = {
    "replay-proxy replay": "--retry-after 0 rewrites the recorded Retry-After at serve time; recorded "
    "absolute URLs are rewritten to the proxy; identical polls replay in recorded order.",
    "replay-proxy play": "the scenario's for: stages run on --clock virtual (the operation's time moves by "
    "each advertised Retry-After) and --retry-after 0 tells the client to wait 0 s: no real waiting.",
    "wiremock": "repeated polls become a WireMock scenario (Started -> 2 -> ... ; what its recorder does "
    "with repeatsAsScenarios); no option rewrites Retry-After (only a Java extension or editing every "
    "stub into a response template); absolute URLs are not rewritten, so the converter bakes the peer's "
    "URL into Location.",
    "mountebank": "a stub per request with a responses array in recorded order; the array cycles (a 6th "
    "poll would get NotStarted again); Retry-After could only change through a decorate behaviour "
    "(JavaScript injection, --allowInjection); Location is baked to the imposter's URL. Tuned: "
    "Connection: keep-alive on every response (mountebank closes the connection otherwise).",
    "talkback": "stateless: identical requests get the first matching tape, so every poll of an operation "
    "gets its first recorded answer (NotStarted) and the client polls until its deadline: the suite cannot "
    "pass without a JavaScript responseDecorator keeping state (the user's code, not talkback's). It "
    "matches request headers by default (a recording from another requests version never matches): run "
    "it with allowHeaders: []. Retry-After could only change in such a decorator.",
}


# ----------------------------------------------------------------------------- the recording


def ids(i: int) -> tuple[str, str]:
    """Operation ``i``'s dataset id (what the test sends) and operation id (what the service gave)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lro-suite/dataset/{i}")), str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"lro-suite/operation/{i}")
    )


def dataset_ids(operations: int = N_OPERATIONS) -> list[str]:
    return [ids(i)[0] for i in range(operations)]


def _json_response(status: int, body: dict[str, Any], headers: list[tuple[str, str]], date: str) -> Response:
    """A response shaped like proxy/creator_service.py's (indent-2 JSON, its header order)."""
    data = json.dumps(body, indent=2).encode()
    return Response(
        status,
        "OK" if status == 200 else "Created",
        (
            *headers,
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Date", date),
            ("Server", "CreatorService/1.0"),
        ),
        data,
    )


def interactions(operations: int = N_OPERATIONS, origin: str = RECORDED_ORIGIN) -> list[Interaction]:
    """The recording of ``operations`` LROs: per operation a 202 start and its 5 polls, each its own id."""
    out: list[Interaction] = []
    host = origin.split("://", 1)[1]
    for i in range(operations):
        dataset, op = ids(i)
        started = _EPOCH + timedelta(seconds=5 * i)
        date = format_datetime(started, usegmt=True)
        status_url = f"{origin}/tilesets/operations/{op}"
        start = Request(
            "POST",
            f"{origin}/tilesets?api-version=2.0&datasetId={dataset}",
            (*_CLIENT_HEADERS, ("Content-Length", "0"), ("Host", host)),
        )
        accepted = Response(
            202,
            "Accepted",
            (
                ("Location", status_url),
                ("Retry-After", RETRY_AFTER),
                ("Content-Length", "0"),
                ("Date", date),
                ("Server", "CreatorService/1.0"),
            ),
        )
        out.append(Interaction(start, accepted))
        for poll, status in enumerate(STATUSES, 1):
            body = {
                "operationId": op,
                "createdDateTime": format_created_date_time(started),
                "status": status,
            }
            wait = [("Retry-After", RETRY_AFTER)] if status != "Succeeded" else []
            polled = format_datetime(started + timedelta(seconds=poll), usegmt=True)
            out.append(
                Interaction(
                    Request("GET", status_url, (*_CLIENT_HEADERS, ("Host", host))),
                    _json_response(200, body, wait, polled),
                )
            )
    return out


def write_cassette(path: Path, operations: int = N_OPERATIONS) -> Path:
    """Write the recording of ``operations`` LROs as a vcrpy cassette (replay-proxy's own writer)."""
    cassette.save(Path(path), interactions(operations))
    return Path(path)


def _served(interaction: Interaction, base_url: str, retry_after: float | None) -> Response:
    """The recorded response as a peer must hold it: the peer's URL baked in, Retry-After edited if asked."""
    response = rewrite_origins(
        interaction.response, [origin_of(interaction.request.url)], base_url.rstrip("/")
    )
    if retry_after is not None:
        response = rewrite_retry_after(response, retry_after)
    return response


def _headers_dict(response: Response) -> dict[str, str]:
    return {name: value for name, value in response.headers if name.lower() not in _WIRE_HEADERS}


def _grouped(recorded: Sequence[Interaction]) -> dict[tuple[str, str], list[Interaction]]:
    """Identical requests (method, path and query) in first-seen order, each with its answers in order."""
    groups: dict[tuple[str, str], list[Interaction]] = {}
    for interaction in recorded:
        key = (interaction.request.method, interaction.request.path_and_query)
        groups.setdefault(key, []).append(interaction)
    return groups


def to_wiremock(cassette_path: Path, root_dir: Path, base_url: str, retry_after: float | None = None) -> Path:
    """WireMock stubs for the cassette in ``root_dir/mappings/lro-suite.json`` (run with --root-dir).

    A request recorded once is a plain stub; a repeated one (the polls) is a WireMock scenario whose
    states advance on each match, as WireMock's own recorder writes them (repeatsAsScenarios).
    """
    mappings: list[dict[str, Any]] = []
    for n, ((method, url), group) in enumerate(_grouped(cassette.load(cassette_path)).items(), 1):
        for k, interaction in enumerate(group):
            served = _served(interaction, base_url, retry_after)
            stub: dict[str, Any] = {
                "request": {"method": method, "url": url},
                "response": {
                    "status": served.status,
                    "headers": _headers_dict(served),
                    "body": served.body.decode(),
                },
            }
            if len(group) > 1:
                stub["scenarioName"] = f"scenario-{n}"
                stub["requiredScenarioState"] = "Started" if k == 0 else f"scenario-{n}-{k + 1}"
                if k + 1 < len(group):
                    stub["newScenarioState"] = f"scenario-{n}-{k + 2}"
            mappings.append(stub)
    out = Path(root_dir) / "mappings" / "lro-suite.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    (Path(root_dir) / "__files").mkdir(exist_ok=True)
    out.write_text(json.dumps({"mappings": mappings}))
    return out


def to_mountebank(
    cassette_path: Path, path: Path, port: int, retry_after: float | None = None, keep_alive: bool = False
) -> Path:
    """A mountebank imposter (``mb --configfile PATH``) on ``port``: a stub per distinct request whose
    ``responses`` are its recorded answers in order (mountebank cycles through them)."""
    base_url = f"http://127.0.0.1:{port}"
    stubs: list[dict[str, Any]] = []
    for (method, _), group in _grouped(cassette.load(cassette_path)).items():
        request = group[0].request
        responses = []
        for interaction in group:
            served = _served(interaction, base_url, retry_after)
            headers = _headers_dict(served)
            if keep_alive:
                headers["Connection"] = "keep-alive"
            responses.append(
                {"is": {"statusCode": served.status, "headers": headers, "body": served.body.decode()}}
            )
        predicate = {"method": method, "path": request.path, "query": dict(request.query)}
        stubs.append({"predicates": [{"equals": predicate}], "responses": responses})
    imposter = {"port": port, "protocol": "http", "stubs": stubs}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"imposters": [imposter]}))
    return Path(path)


def to_talkback(
    cassette_path: Path, tapes_dir: Path, base_url: str, retry_after: float | None = None
) -> Path:
    """talkback tapes (``path: tapes_dir``), one per recorded exchange, bodies human-readable.

    Identical requests get identical tapes: talkback serves the first one to every such request.
    """
    tapes = Path(tapes_dir)
    tapes.mkdir(parents=True, exist_ok=True)
    for n, interaction in enumerate(cassette.load(cassette_path), 1):
        request = interaction.request
        served = _served(interaction, base_url, retry_after)
        headers: dict[str, list[str]] = {}
        for name, value in served.headers:
            headers.setdefault(name.lower(), []).append(value)
        tape = {
            "meta": {
                "createdAt": _EPOCH.isoformat(),
                "host": RECORDED_ORIGIN,
                "reqHumanReadable": True,
                "resHumanReadable": True,
            },
            "req": {
                "url": request.path_and_query,
                "method": request.method,
                "headers": {k.lower(): v for k, v in request.headers if k.lower() != "host"},
                "body": request.body.decode(),
            },
            "res": {"status": served.status, "headers": headers, "body": served.body.decode()},
        }
        (tapes / f"exchange-{n:06d}.json5").write_text(json.dumps(tape, indent=1))
    return tapes


# ----------------------------------------------------------------------------- the client suite


@dataclass(frozen=True)
class SuiteRun:
    """One run of the client suite: operations that passed, wall time, requests sent, why it stopped."""

    operations: int
    seconds: float
    requests: int
    error: str | None = None


def run_suite(base_url: str, operations: int = N_OPERATIONS, deadline: float = 60.0) -> SuiteRun:
    """Run ``operations`` LROs against ``base_url``, one after the other; stop at the first failure.

    An operation passes when the client returns Succeeded after exactly 6 requests (a start and 5
    polls): a target that skipped or repeated part of the recorded progression fails the suite.
    ``deadline`` is the client's own limit on one operation's polling (CreatorClient's 60 s).
    """
    sent = 0

    def count(response: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal sent
        sent += 1

    passed = 0
    error = None
    began = time.perf_counter()
    for i, dataset in enumerate(dataset_ids(operations)):
        before = sent
        client = CreatorClient(base_url, deadline=deadline)
        client.session.hooks["response"].append(count)
        try:
            result = client.create_tileset(dataset)
        except Exception as e:  # the test fails: that is the finding
            error = f"operation {i + 1}: {type(e).__name__}: {e}"
            break
        finally:
            client.session.close()
        if result.get("status") != "Succeeded" or sent - before != REQUESTS_PER_OPERATION:
            error = (
                f"operation {i + 1}: {result.get('status')} after {sent - before} requests, "
                f"expected Succeeded after {REQUESTS_PER_OPERATION}"
            )
            break
        passed += 1
    return SuiteRun(passed, time.perf_counter() - began, sent, error)


@dataclass(frozen=True)
class UserNumber:
    """The user's number for one target: start-up plus the suite's wall time (seconds).

    ``measured`` operations were run; when fewer than ``operations``, ``suite_s`` and ``total_s`` are
    extrapolated linearly (``extrapolated``). ``total_s`` is None when the suite failed (``error``).
    """

    target: str
    operations: int
    measured: int
    startup_s: float
    suite_s: float | None
    total_s: float | None
    requests: int
    extrapolated: bool
    error: str | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    name: str,
    launch: Launch,
    operations: int = N_OPERATIONS,
    sample: int | None = None,
    deadline: float = 60.0,
    note: str = "",
) -> UserNumber:
    """Start the target (timed: start-up), run ``sample`` (default all) operations, stop it."""
    measured = min(sample or operations, operations)
    began = time.perf_counter()
    url, stop = launch()
    startup = time.perf_counter() - began
    try:
        run = run_suite(url, measured, deadline)
    finally:
        stop()
    suite = run.seconds * operations / measured if run.error is None else None
    return UserNumber(
        target=name,
        operations=operations,
        measured=measured,
        startup_s=round(startup, 3),
        suite_s=round(suite, 3) if suite is not None else None,
        total_s=round(startup + suite, 3) if suite is not None else None,
        requests=run.requests,
        extrapolated=measured < operations,
        error=run.error,
        note=note,
    )


# ----------------------------------------------------------------------------- replay-proxy


@dataclass
class Started:
    """A server running in a subprocess: its URL (from its ready line), pid and a way to stop it."""

    url: str
    process: subprocess.Popen[str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def launched(self) -> tuple[str, Callable[[], None]]:
        return self.url, self.stop


def start_process(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> Started:
    """Run ``argv``; return once its first stdout line (which names its ``http://`` URL) is printed."""
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"),
    )
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True).start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    url = next((w for w in line.split() if w.startswith("http://")), "")
    if not url:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{' '.join(argv)} did not start: {''.join(errors).strip() or line!r}")
    return Started(url, proc)


def start_replay_proxy(args: Sequence[str], confdir: Path | None = None) -> Started:
    """``replay-proxy ARGS --port 0 -q`` (``python -m proxy``), returned once it serves."""
    env = dict(os.environ)
    if confdir is not None:
        env["REPLAY_PROXY_CONFDIR"] = str(confdir)
    return start_process([sys.executable, "-m", "proxy", *args, "--port", "0", "-q"], env)


def launch_replay(cassette_path: Path, retry_after: float = 0.0, confdir: Path | None = None) -> Launch:
    """``replay-proxy replay CASSETTE --retry-after 0``: recorded Retry-After rewritten at serve time."""
    args = ["replay", str(cassette_path), "--retry-after", f"{retry_after:g}"]
    return lambda: start_replay_proxy(args, confdir).launched()


def launch_play(
    scenario: Path = SCENARIO, retry_after: float = 0.0, clock: str = "virtual", confdir: Path | None = None
) -> Launch:
    """``replay-proxy play SCENARIO --clock virtual --retry-after 0``: see lro-suite.yaml for why both."""
    args = ["play", str(scenario), "--clock", clock, "--retry-after", f"{retry_after:g}"]
    return lambda: start_replay_proxy(args, confdir).launched()


def measure_replay(
    cassette_path: Path, operations: int = N_OPERATIONS, confdir: Path | None = None
) -> UserNumber:
    return measure(
        "replay-proxy replay --retry-after 0",
        launch_replay(cassette_path, confdir=confdir),
        operations,
        note=PEER_NOTES["replay-proxy replay"],
    )


def measure_play(operations: int = N_OPERATIONS, confdir: Path | None = None) -> UserNumber:
    return measure(
        "replay-proxy play --clock virtual --retry-after 0",
        launch_play(confdir=confdir),
        operations,
        note=PEER_NOTES["replay-proxy play"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The user's number against replay-proxy (replay and play).")
    parser.add_argument("--operations", type=int, default=N_OPERATIONS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / ".work" / "user-suite")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    confdir = out / "confdir"
    from proxy.server import ensure_ca

    ensure_ca(confdir)  # the CA exists before timing: start-up is measured warm
    recorded = write_cassette(out / "lro-suite.yaml", args.operations)
    to_wiremock(recorded, out / "wiremock", "http://127.0.0.1:8091")
    to_mountebank(recorded, out / "mountebank.json", 8092, keep_alive=True)
    to_talkback(recorded, out / "tapes", "http://127.0.0.1:8093")
    results = [measure_replay(recorded, args.operations, confdir), measure_play(args.operations, confdir)]
    for r in results:
        total = f"{r.total_s:.2f} s" if r.total_s is not None else f"FAILED ({r.error})"
        print(f"{r.target}: {total} (start-up {r.startup_s:.2f} s, {r.requests} requests)")
    print(f"peer recordings in {out}")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
