"""Clients nobody here wrote, in other languages, against the command line a user runs.

The proxy is language-agnostic: a client in Node (built-in fetch), Java (java.net.http.HttpClient), a
curl loop in bash, Perl (HTTP::Tiny), or the real Azure SDK for JavaScript's poller (@azure/core-lro) runs
the seed LRO
(POST /tilesets -> 202 + Location; poll honouring the delays; stop at Succeeded/Failed; GET the
resourceLocation) against `replay-proxy play` and `replay-proxy replay` with `--retry-after 0.05
--report --strict-report`, over http, https and the forward proxy. Each test asserts the client's
outcome and a clean verdict; a naive client (no waiting) is caught. The clients live in
tests/clients/. A language whose toolchain is absent is skipped with the reason; the Azure SDK needs
`npm ci --prefix tests/clients`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.creator_service import CreatorService
from tests.conftest import ROOT, run_cli

CLIENTS = ROOT / "tests" / "clients"
NODE = shutil.which("node")
JAVA = shutil.which("java")
JAVAC = shutil.which("javac")
BASH = shutil.which("bash")
PERL = shutil.which("perl")
CURL = shutil.which("curl")
AZURE_SDK = (CLIENTS / "node_modules" / "@azure" / "core-lro").is_dir()

NO_NODE = "node (Node.js >= 18, for its built-in fetch) is not installed"
NO_JAVA = "java (JDK >= 11, for java.net.http.HttpClient) is not installed"
NO_CURL = "bash and curl are not both installed"
NO_PERL = "perl with HTTP::Tiny and JSON::PP (core modules) is not installed"
NO_PERL_TLS = "perl's HTTP::Tiny needs IO::Socket::SSL for https (Debian: libio-socket-ssl-perl)"
NO_SDK = "the Azure SDK for JavaScript is not installed: run `npm ci --prefix tests/clients`"

SCENARIOS = [
    "tileset-succeeds",
    "tileset-fails",
    "flaky-polling",
    "throttled-start",
    "succeeds-without-resource",
]
EXPECTED = {  # what the client must end with, per story
    "tileset-succeeds": ("Succeeded", True),
    "tileset-fails": ("Failed", False),
    "flaky-polling": ("Succeeded", True),
    "throttled-start": ("Succeeded", True),
    "succeeds-without-resource": ("Succeeded", False),
}
CASSETTE_DATASETS = {  # the datasetId each cassette recorded
    "tileset-succeeds": "8e9a3b5c-2f6d-4c1a-9b7e-0d4f5a6b7c8d",
    "tileset-fails": "invalid-5f0c2d1e-3a4b-4c5d-8e9f-a0b1c2d3e4f5",
    "succeeds-without-resource": "noresource-1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
}
CLIENT_TIMEOUT = 30
LANGS = ["node", "java", "curl", "perl", "azure-sdk"]


def _perl_has(*modules: str) -> bool:
    """Whether perl loads ``modules`` (HTTP::Tiny, JSON::PP are core; IO::Socket::SSL is not)."""
    if PERL is None:
        return False
    args = [PERL, *(f"-M{m}" for m in modules), "-e", "1"]
    return subprocess.run(args, capture_output=True, timeout=30).returncode == 0


PERL_OK = _perl_has("HTTP::Tiny", "JSON::PP")
PERL_TLS = PERL_OK and _perl_has("IO::Socket::SSL")


@dataclass
class Outcome:
    """How a client run ended: its terminal status and whether it fetched a created resource."""

    status: str
    resource: bool
    output: str


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """LroClient compiled once (javac), so that each run costs a JVM start and not a compilation too;
    None when only `java` is there (then each run is a single-file launch, `java LroClient.java`)."""
    if not (JAVA and JAVAC):
        return None
    out = tmp_path_factory.mktemp("java-classes")
    subprocess.run([JAVAC, "-d", str(out), str(CLIENTS / "LroClient.java")], check=True, timeout=60)
    return out


def _env(ca: Path | None, forward: str | None = None) -> dict[str, str]:
    """The environment without any proxy setting (loopback only), trusting ``ca`` when given; with
    ``forward`` (host:port) the Java and curl clients go through that forward proxy."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    if ca is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(ca)
        env["LRO_CA_FILE"] = str(ca)
        env["CURL_OPTS"] = f"--cacert {ca}"
    if forward is not None:
        env["LRO_PROXY"] = forward
        env["CURL_OPTS"] = f"{env.get('CURL_OPTS', '')} --proxy http://{forward}".strip()
    return env


def _command(
    lang: str, base: str, dataset: str, java_classes: Path | None, naive: bool, sdk_args: tuple[str, ...]
) -> list[str]:
    flag = ["--naive"] if naive else []
    if lang == "node":
        assert NODE
        return [NODE, str(CLIENTS / "lro_client.mjs"), base, dataset, *flag]
    if lang == "java":
        assert JAVA
        if java_classes is not None:
            return [JAVA, "-cp", str(java_classes), "LroClient", base, dataset, *flag]
        return [JAVA, str(CLIENTS / "LroClient.java"), base, dataset, *flag]
    if lang == "curl":
        assert BASH
        return [BASH, str(CLIENTS / "lro_client.sh"), base, dataset, *flag]
    if lang == "perl":
        assert PERL
        return [PERL, str(CLIENTS / "lro_client.pl"), base, dataset, *flag]
    if lang == "azure-sdk":
        assert NODE and not naive
        # intervalInMs 50 (the first of sdk_args): core-lro waits Retry-After only, in whole seconds, which
        # a fractional --retry-after does not send on polls; without it every poll waits its default 2 s
        return [NODE, str(CLIENTS / "azure_sdk_client.mjs"), base, dataset, *sdk_args]
    raise AssertionError(lang)


def _parse(lang: str, stdout: str) -> Outcome:
    """The outcome line: JSON from the Node clients, `Succeeded ID|-` / `Failed CODE` from Java and curl."""
    line = stdout.strip().splitlines()[-1]
    if lang in {"node", "azure-sdk"}:
        doc: dict[str, Any] = json.loads(line)
        return Outcome(doc["status"], bool(doc.get("resource") and "tilesetId" in doc["resource"]), line)
    status, detail = line.split()[:2]
    return Outcome(status, status == "Succeeded" and detail != "-", line)


def _available(lang: str, tls: bool = False) -> str | None:
    """Why ``lang`` cannot run here (over https too when ``tls``), or None."""
    if tls and lang == "perl" and PERL_OK and not PERL_TLS:
        return NO_PERL_TLS
    return {
        "node": None if NODE else NO_NODE,
        "java": None if JAVA else NO_JAVA,
        "curl": None if (BASH and CURL) else NO_CURL,
        "perl": None if PERL_OK else NO_PERL,
        "azure-sdk": (NO_NODE if not NODE else None if AZURE_SDK else NO_SDK),
    }[lang]


class Proxy:
    """`replay-proxy ARGS --port 0 --retry-after 0.05 --report --strict-report` and its verdict."""

    def __init__(self, cli: Any, args: list[str], retry_after: str = "0.05") -> None:
        self.cli = cli([*args, "--port", "0", "--retry-after", retry_after, "--report", "--strict-report"])
        assert self.cli.url, self.cli.ready_line + self.cli.stderr
        self.url: str = self.cli.url
        self.https_url = self.url.replace("http://", "https://", 1)

    def run(
        self,
        lang: str,
        dataset: str,
        java_classes: Path | None,
        *,
        https: bool = False,
        naive: bool = False,
        ca: Path | None = None,
        origin: str | None = None,
        sdk_args: tuple[str, ...] = ("50",),
    ) -> Outcome:
        """Run one client to its end; with ``origin`` (a real service's URL) it goes there through this
        proxy as its forward proxy."""
        base = origin or (self.https_url if https else self.url)
        forward = self.url.removeprefix("http://") if origin else None
        done = subprocess.run(
            _command(lang, base, dataset, java_classes, naive, sdk_args),
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            env=_env(ca, forward),
            cwd=ROOT,
        )
        assert done.returncode == 0, (
            f"{lang} client failed ({done.returncode}):\n{done.stderr}\n{self.stop()[1]}"
        )
        return _parse(lang, done.stdout)

    def run_together(self, langs: list[str], java_classes: Path | None) -> dict[str, Outcome]:
        """Run one client per language at once, each with its own datasetId; their outcomes by language."""
        procs = {
            lang: subprocess.Popen(
                _command(lang, self.url, f"{lang}-dataset", java_classes, False, ("50",)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(None),
                cwd=ROOT,
            )
            for lang in langs
        }
        outcomes: dict[str, Outcome] = {}
        try:
            for lang, proc in procs.items():
                out, err = proc.communicate(timeout=CLIENT_TIMEOUT)
                assert proc.returncode == 0, f"{lang} client failed ({proc.returncode}):\n{err}"
                outcomes[lang] = _parse(lang, out)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        return outcomes

    def stop(self) -> tuple[int, str]:
        """Stop the proxy; its exit status and its report (stdout after the ready line)."""
        rc = self.cli.stop()
        assert self.cli.proc.stdout is not None
        return rc, self.cli.proc.stdout.read()


def _clean(proxy: Proxy) -> str:
    rc, report = proxy.stop()
    assert "replay-proxy verdict: no violations" in report, report + proxy.cli.stderr
    assert rc == 0, report
    return report


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`replay-proxy ca` once for the module, in the session's confdir (the `cli` fixture's)."""
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    return Path(run_cli(["ca"], confdir).stdout.strip())


def _langs(tls: bool = False) -> Iterator[Any]:
    for lang in LANGS:
        why = _available(lang, tls)
        yield pytest.param(lang, id=lang, marks=pytest.mark.skipif(why is not None, reason=why or ""))


@pytest.mark.parametrize("story", SCENARIOS)
def test_every_language_plays_each_azure_maps_story(cli: Any, story: str, java_classes: Path | None) -> None:
    """One proxy per story; every installed client runs it at the same time (each gets its own operation),
    each ends as the story says, and the verdict over all of them is clean."""
    langs = [lang for lang in LANGS if _available(lang) is None]
    if not langs:
        pytest.skip("no client toolchain installed (node, java, curl, perl)")
    proxy = Proxy(cli, ["play", f"scenarios/azure-maps/{story}.yaml"])
    for lang, outcome in proxy.run_together(langs, java_classes).items():
        assert (outcome.status, outcome.resource) == EXPECTED[story], (lang, outcome.output)
    report = _clean(proxy)
    ended = "=> Succeeded" if EXPECTED[story][0] == "Succeeded" else "=> Failed"
    assert report.count(ended) == len(langs), report


@pytest.mark.parametrize(
    ("lang", "story"),
    [
        ("node", "tileset-succeeds"),
        ("curl", "tileset-fails"),
        ("java", "succeeds-without-resource"),
    ],
)
def test_a_cassette_replays_to_each_language(
    cli: Any, lang: str, story: str, java_classes: Path | None
) -> None:
    """A recorded flow (cassettes/azure-maps/) replays to a client in another language, verdict clean."""
    why = _available(lang)
    if why:
        pytest.skip(why)
    proxy = Proxy(cli, ["replay", f"cassettes/azure-maps/{story}.yaml"])
    outcome = proxy.run(lang, CASSETTE_DATASETS[story], java_classes)
    assert (outcome.status, outcome.resource) == EXPECTED[story], outcome.output
    _clean(proxy)


@pytest.mark.parametrize("lang", list(_langs(tls=True)))
def test_each_language_over_https_trusting_the_ca(
    cli: Any, lang: str, ca: Path, java_classes: Path | None
) -> None:
    """`https://127.0.0.1:PORT` on the same listener, the client trusting `replay-proxy ca`: the flaky
    story (a 503, then a reset) succeeds and the status URLs it follows stay https."""
    proxy = Proxy(cli, ["play", "scenarios/azure-maps/flaky-polling.yaml"])
    outcome = proxy.run(lang, "tls-dataset", java_classes, https=True, ca=ca)
    assert (outcome.status, outcome.resource) == ("Succeeded", True), outcome.output
    _clean(proxy)


@pytest.mark.skipif(not NODE, reason=NO_NODE)
def test_a_naive_client_is_caught(cli: Any, java_classes: Path | None) -> None:
    """The same Node client with --naive (no waiting) still gets its tileset, but the verdict names the
    early polls, the timeline marks each of them, and --strict-report exits 3. At 0.5 s the gap cannot
    be mistaken for a slow start."""
    proxy = Proxy(cli, ["play", "scenarios/azure-maps/tileset-succeeds.yaml"], retry_after="0.5")
    outcome = proxy.run("node", "naive-dataset", java_classes, naive=True)
    assert (outcome.status, outcome.resource) == ("Succeeded", True), outcome.output
    rc, report = proxy.stop()
    assert rc == 3, report
    assert "1. retry-after: GET /tilesets/operations/" in report, report
    assert "which said to wait 0.5 s (and 2 more early polls of this operation)" in report, report
    # the timeline marks every early poll, not only the one the violation names
    early = [line for line in report.splitlines() if line.startswith("  poll ") and "<- retry-after" in line]
    assert [line.split()[1] for line in early] == ["2", "3", "4"], report


@pytest.mark.skipif(_available("azure-sdk") is not None, reason=_available("azure-sdk") or "")
def test_azure_sdk_for_javascript_ignores_the_202_delay_on_a_cassette(
    cli: Any, java_classes: Path | None
) -> None:
    """core-lro polls once right after the 202, as azure-core for Python does: on a cassette whose 202
    carries a delay, the verdict reports exactly `retry-after-202`, and `--skip-check retry-after-202`
    (what the README says to do for such clients) makes it clean."""
    dataset = CASSETTE_DATASETS["tileset-succeeds"]
    proxy = Proxy(cli, ["replay", "cassettes/azure-maps/tileset-succeeds.yaml"])
    assert proxy.run("azure-sdk", dataset, java_classes).status == "Succeeded"
    rc, report = proxy.stop()
    assert rc == 3 and "verdict: 1 violation" in report and "1. retry-after-202:" in report, report
    proxy = Proxy(
        cli, ["replay", "cassettes/azure-maps/tileset-succeeds.yaml", "--skip-check", "retry-after-202"]
    )
    assert proxy.run("azure-sdk", dataset, java_classes).status == "Succeeded"
    _clean(proxy)


@pytest.mark.parametrize("lang", [p for p in _langs(tls=True) if p.values[0] in {"java", "curl", "perl"}])
def test_java_curl_perl_through_the_forward_proxy(
    cli: Any, lang: str, ca: Path, java_classes: Path | None
) -> None:
    """`--mode regular`: the client keeps https://atlas.microsoft.com and uses the proxy as its forward
    proxy (Java: ProxySelector.of; curl: --proxy; Perl: HTTP::Tiny's https_proxy), trusting its CA; the
    scenario answers, nothing leaves the machine, the verdict is clean. (Node 20's built-in fetch
    ignores HTTP(S)_PROXY: use reverse mode.)"""
    proxy = Proxy(cli, ["play", "scenarios/azure-maps/throttled-start.yaml", "--mode", "regular"])
    outcome = proxy.run(lang, "fwd-dataset", java_classes, ca=ca, origin="https://atlas.microsoft.com")
    assert (outcome.status, outcome.resource) == ("Succeeded", True), outcome.output
    _clean(proxy)


@pytest.mark.skipif(_available("azure-sdk") is not None, reason=_available("azure-sdk") or "")
def test_azure_sdk_default_final_get_is_caught_polling_after_the_end(
    cli: Any, java_classes: Path | None
) -> None:
    """core-lro's default resourceLocationConfig ("location") GETs the Location once more when the job
    succeeds without a resourceLocation; on this API that URL is the status URL, so the verdict reports
    `poll-after-terminal` (the client still gets its result)."""
    proxy = Proxy(cli, ["play", "scenarios/azure-maps/succeeds-without-resource.yaml"])
    outcome = proxy.run("azure-sdk", "sdk-dataset", java_classes, sdk_args=("50", "location"))
    assert outcome.status == "Succeeded", outcome.output
    rc, report = proxy.stop()
    assert rc == 3 and "verdict: 1 violation" in report and "1. poll-after-terminal:" in report, report


@pytest.mark.skipif(not (NODE and JAVA), reason=NO_NODE if not NODE else NO_JAVA)
def test_recorded_by_node_replayed_to_java(
    cli: Any, creator: CreatorService, tmp_path: Path, java_classes: Path | None
) -> None:
    """`record` in front of the reference service while the Node client runs the job, then `replay` of
    that cassette to the Java client, offline: the same tileset, and a clean verdict both times."""
    cassette = tmp_path / "node.yaml"
    proxy = Proxy(cli, ["record", creator.url, "-o", str(cassette)])
    recorded = proxy.run("node", "cross-language", java_classes)
    assert (recorded.status, recorded.resource) == ("Succeeded", True), recorded.output
    _clean(proxy)
    served = len(creator.requests)
    proxy = Proxy(cli, ["replay", str(cassette)])
    replayed = proxy.run("java", "cross-language", java_classes)
    assert (replayed.status, replayed.resource) == ("Succeeded", True), replayed.output
    tileset = json.loads(recorded.output)["resource"]["tilesetId"]
    assert replayed.output.split()[1] == tileset, (replayed.output, tileset)
    _clean(proxy)
    assert len(creator.requests) == served  # replay never reached the service
