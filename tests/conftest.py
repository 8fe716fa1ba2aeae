"""Shared fixtures: loopback upstreams and a way to run the command line as a user would."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, quote_plus

import pytest
import yaml

from proxy.creator_service import CreatorService
from tests.upstream import Upstream

if TYPE_CHECKING:
    from proxy.server import ReplayProxy

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("mitmproxy", "lean")
"""The serving engines (``--engine``): tests of what both do are parametrised over them."""
RECOMMENDED_RETRY_AFTER = 0.05
"""The --retry-after the README recommends; tests/test_sdk_polling.py is what proves it."""


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def creator() -> Iterator[CreatorService]:
    service = CreatorService(running_polls=2, retry_after=1).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the whole test session (creating it costs ~0.1 s)."""
    return tmp_path_factory.getbasetemp() / "replay-proxy-conf"


@pytest.fixture
def play(tmp_path: Path, confdir: Path) -> Iterator[Callable[..., ReplayProxy]]:
    """``play(path_or_text, mode=...)``: a started ReplayProxy playing one scenario (a file, or YAML text)
    at the recommended ``--retry-after``; the one started before is stopped first (one mitmproxy per
    process), the last at the test's end."""
    from proxy.server import ReplayProxy

    started: list[ReplayProxy] = []

    def start(scenario: Path | str, **options: Any) -> ReplayProxy:
        for earlier in started:
            earlier.stop()
        if isinstance(scenario, str):
            path = tmp_path / f"s{len(started)}.yaml"
            path.write_text(scenario)
            scenario = path
        proxy = ReplayProxy(
            scenarios=[scenario], confdir=confdir, retry_after=RECOMMENDED_RETRY_AFTER, **options
        ).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


class Cli:
    """`replay-proxy ...` in a subprocess: started, its URL read from the ready line, stopped by a signal."""

    def __init__(self, args: list[str], confdir: Path) -> None:
        env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.stderr_lines: list[str] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.url = ""
        self.ready_line = ""
        timer = threading.Timer(30, self.proc.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        self.ready_line = line.strip()
        for word in self.ready_line.split():
            if word.startswith("http://"):
                self.url = word
                break

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._stderr_thread.join(5)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


@pytest.fixture
def cli(confdir: Path) -> Iterator[type[Cli]]:
    started: list[Cli] = []

    class _Cli(Cli):
        def __init__(self, args: list[str], confdir: Path = confdir) -> None:
            super().__init__(args, confdir)
            started.append(self)

    yield _Cli
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)


def run_cli(args: list[str], confdir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself (errors, `ca`, `--help`)."""
    env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir))
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


# -- secrets: no cassette the suite writes may keep one ----------------------------------------------------


class Canaries:
    """Fake secrets that clients send through the proxy and upstreams send back (tests/reliability)."""

    BEARER = "eyJhbGciOiJSUzI1NiJ9.canary-bearer-7f3a91c2d4"
    BASIC_USER = "svc-canary"
    BASIC_PASSWORD = "canary-basic-pw-51e0b7"
    SUBSCRIPTION_KEY = "c0ffee00canary5ubkey0123456789ab"
    QUERY_KEY = "canary-query-key-9b2d4f"
    CLIENT_COOKIE = "canary-client-cookie-3e8a"
    UPSTREAM_COOKIE = "canary-affinity-cookie-61f0"
    CLIENT_SIG = "Cl13ntSasSig+canary/8Hq2w="  # + / = so that it travels percent-encoded
    UPSTREAM_SIG = "Upstr3amSasSig+canary/Zx9k="
    PASSWORD = "canary-password-correct-horse"
    CLIENT_SECRET = "canary-client-secret-2c7e"
    ACCESS_TOKEN = "eyJ0eXAiOiJKV1QifQ.canary-access-token-c4d1"
    REFRESH_TOKEN = "canary-refresh-token-0a9f"
    BASIC = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    """What ``Authorization: Basic`` carries."""

    @classmethod
    def all(cls) -> dict[str, str]:
        return {k: v for k, v in vars(cls).items() if k.isupper() and k != "BASIC_USER"}


def _jwt(subject: str) -> str:
    """A JWT-shaped token (header.payload.signature, base64url): what detectors know it by."""

    def b64(doc: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'sub': subject})}.hArDc4n4ryS1gn4tur3_{subject[-4:]}"


class HardCanaries:
    """Secrets placed where real clients and services put them, outside the old fixed lists of names
    (issue 16; tests/reliability/test_secrets.py). ``of(tag)`` gives a second set of the same shapes:
    the live secrets of a replay that differ from the recorded ones."""

    @staticmethod
    def of(tag: str) -> dict[str, str]:
        t = tag
        return {
            "GZIP_CLIENT_SECRET": f"hard-gzip-client-secret-{t}8d1f",
            "ECHO_BEARER": f"hArd+Echo/Bearer=Tok3n/{t}c4n4ry",
            "JSON_JWT": _jwt(f"hard-canary-jwt-{t}"),
            "JSON_PASSWORD": f"hard-json-password-{t}3b7c",
            "MULTIPART_PASSWORD": f"hard-multipart-pw-{t}6e2a",
            "GOOGLE_KEY": ("AIzaSy" + t + "HardCanaryGoogleKey0123456789abcdefgh")[:39],
            "PRIVATE_TOKEN": f"glpat-Hard{t}CanaryPrivTok3n",
            "VAULT_TOKEN": f"hvs.Hard{t}CanaryVaultToken42",
            "ACCESS_TOKEN_HEADER": f"hard-x-access-token-{t}7c1d",
            "BOT_TOKEN": "123456789:AA" + (t + "HardCanaryBotToken_abcdefghijklmnop")[:33],
            "SAS_SIG": f"Hard{t}Console+Sas/Sig=",
        }

    UPSTREAM: ClassVar[dict[str, str]] = {
        "CAMEL_ACCESS": "hard-camel-access-token-1a2b",
        "CAMEL_REFRESH": "hard-camel-refresh-token-3c4d",
        "SESSION_JWT": "hard-session-jwt-value-5e6f",
        "NESTED_SIG": "HardNested+Sig/Canary=",
        "SET_COOKIE_ATTRIBUTE": "hard-cookie-attribute-9a8b",
        "SET_COOKIE_FOLDED": "hard-folded-cookie-4d3c",
    }
    """What the upstream answers with (the same in record and replay)."""

    USERINFO_PASSWORD = "hard-userinfo-pw-0f9e"

    @classmethod
    def all(cls) -> dict[str, str]:
        live = {f"{k} (live)": v for k, v in cls.of("L").items()}
        return {**cls.of("R"), **live, **cls.UPSTREAM, "USERINFO_PASSWORD": cls.USERINFO_PASSWORD}


SUITE_SECRETS: tuple[str, ...] = (
    *Canaries.all().values(),
    *HardCanaries.all().values(),
    "s3cr3t-cookie",  # tests/upstream.py's Set-Cookie, met by every test that records /cookies
    # tests/test_record_replay.py's secrets (if they change there, the scan below only looks for less)
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.Zm9vYmFyMTIzNDU2",
    "0123456789abcdef0123456789abcdef",
    "q-secret-4f1c2b9d8e7a",
    "c00kie-value-7d3e9a1b",
    "hunter2-correct-horse-battery",
)
"""Secrets the suite's clients and upstreams exchange through the proxy."""

PLACEHOLDER = b"<REDACTED-"


def secret_forms(secret: str) -> set[bytes]:
    """The ways a secret can be written down: as is, percent-encoded (upper- and lower-case hex, twice),
    base64 (plain and URL-safe, with and without padding, and at each of the 3 alignments it takes
    inside a longer encoded value such as ``base64("Bearer " + token)``), JSON-escaped (``\\/``,
    ``\\u00XX``)."""
    raw = secret.encode()
    b64 = {base64.b64encode(raw), base64.urlsafe_b64encode(raw)}
    for shift in (0, 1, 2):  # the characters that encode only the secret's bits, after ``shift`` bytes
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + raw)
            b64.add(encoded[(8 * shift + 5) // 6 : 8 * (shift + len(raw)) // 6])
    pct = {quote(secret, safe="").encode(), quote_plus(secret).encode(), quote(secret).encode()}
    pct |= {re.sub(b"%[0-9A-F]{2}", lambda m: m[0].lower(), p) for p in pct}
    pct.add(quote(quote(secret, safe=""), safe="").encode())
    escaped = json.dumps(secret)[1:-1]
    as_json = {escaped, escaped.replace("/", "\\/"), json.dumps(secret, ensure_ascii=True)[1:-1]}
    as_json.add("".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in secret))
    as_json.add("".join(c if c.isalnum() else f"\\u{ord(c):04X}" for c in secret))
    forms = {raw} | pct | {j.encode() for j in as_json}
    return forms | b64 | {b.rstrip(b"=") for b in b64}


def leaks_in(path: Path, secrets: Iterable[str]) -> list[str]:
    """The secrets found in the file, in any form: in its bytes, or in a string or bytes its YAML holds
    (YAML may fold a long string across lines, and writes binary bodies as base64)."""
    data = path.read_bytes()
    texts = [data]
    with contextlib.suppress(yaml.YAMLError):
        texts += list(_scalars(yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))))
    return [s for s in secrets if any(form in text for form in secret_forms(s) for text in texts)]


def _scalars(doc: object) -> Iterator[bytes]:
    """Every key and value of a YAML document as bytes; a node shared by aliases is visited once."""
    stack, seen = [doc], set()
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            if id(node) not in seen:
                seen.add(id(node))
                stack.extend([*node.keys(), *node.values()] if isinstance(node, dict) else node)
        elif isinstance(node, bytes):
            yield node
        elif node is not None:
            yield str(node).encode("utf-8", "surrogateescape")


def redacted_files_with_leaks(root: Path, secrets: Iterable[str]) -> tuple[int, dict[Path, list[str]]]:
    """(how many files under ``root`` the proxy redacted, those of them that still hold a secret).

    A redacted file holds a placeholder. Files without one were written with redaction off on purpose,
    or by vcrpy itself (tests/test_vcrpy_interop.py records the upstream's cookie in-process): the
    cassette format is the same, so the placeholder is what tells the proxy's own writing apart.
    """
    secrets = list(secrets)
    scanned = 0
    leaks: dict[Path, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.stat().st_size > 10_000_000 or PLACEHOLDER not in path.read_bytes():
            continue
        scanned += 1
        found = leaks_in(path, secrets)
        if found:
            leaks[path] = found
    return scanned, leaks


@pytest.fixture(scope="session", autouse=True)
def no_secret_left_in_a_cassette(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session: no file the proxy redacted under the session's tmp root holds one of
    SUITE_SECRETS (fails the session's last test with the files and secrets named)."""
    yield
    scanned, leaks = redacted_files_with_leaks(tmp_path_factory.getbasetemp(), SUITE_SECRETS)
    if leaks:
        where = "; ".join(f"{path}: {', '.join(found)}" for path, found in leaks.items())
        pytest.fail(f"secrets left in {len(leaks)} of {scanned} redacted files: {where}", pytrace=False)
