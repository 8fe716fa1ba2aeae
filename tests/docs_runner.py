"""Runs the documentation's code blocks as a reader would: the machinery behind tests/test_docs.py.

Every fenced block of README.md and docs/*.md is found by ``blocks()``. Shell blocks run in real bash,
in a scratch copy of the repository's shipped files, with three small commands first on PATH:

- ``uv``: ``uv run CMD ...`` runs CMD from this test environment (no second install);
- ``replay-proxy``: the real command; ``play``/``replay``/``record`` start in the background (as in a
  second terminal), get ``--port`` from the test when the block gives none, and the command returns
  once the proxy's ready line is out;
- ``curl``: the real curl, refusing any URL that would leave the machine.

``127.0.0.1:8080`` and ``:8081`` in a block become free ports. Servers started by a section's blocks
serve the following blocks of the same section (the README says "in another terminal"), then get
SIGTERM and must exit 0. Transcript blocks (``$ command`` followed by its output) compare what each
command prints with what the block shows: ``...`` stands for anything, an id shown as ``4f1c...`` is
bound to the real id at its first appearance and substituted into later commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHIPPED = ["scenarios", "cassettes", "examples"]
"""What a block may name, copied into each scratch directory (commands there may write files)."""


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language and its text."""

    file: Path
    line: int
    lang: str
    text: str
    section: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    @property
    def is_transcript(self) -> bool:
        return any(line.startswith("$ ") for line in self.text.splitlines())


def blocks() -> list[Block]:
    """Every fenced block of the docs, in order (indented fences, as in list items, too)."""
    found: list[Block] = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        section, i = "", 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("#") and not line.startswith("#!"):
                section = line.lstrip("#").strip()
            stripped = line.lstrip()
            if stripped.startswith("```"):
                indent = len(line) - len(stripped)
                lang = stripped[3:].strip()
                body: list[str] = []
                j = i + 1
                while j < len(lines) and not lines[j].lstrip().startswith("```"):
                    body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j].lstrip())
                    j += 1
                found.append(Block(path, i + 1, lang, "\n".join(body) + "\n", f"{path.name}#{section}"))
                i = j + 1
                continue
            i += 1
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the commands a block finds on PATH ----------------------------------------------------------------------

_SERVE = '''\
#!{python}
"""replay-proxy for the docs tests: serving commands start in the background, as in a second terminal."""
import os, subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
state = Path(os.environ["DOCS_STATE"])
proxy = [sys.executable, "-m", "proxy"]
if args[:1] == ["--docs-supervise"]:  # the background half: run the proxy, keep its exit status
    n, args = args[1], args[2:]
    with open(state / f"serve-{{n}}.out", "w") as out, open(state / f"serve-{{n}}.err", "w") as err:
        p = subprocess.Popen([*proxy, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        (state / f"serve-{{n}}.pid").write_text(str(p.pid))
        rc = p.wait()
    (state / f"serve-{{n}}.rc").write_text(str(rc))
    sys.exit(0)
if args[:1] in (["play"], ["replay"], ["record"], ["serve"]) and "--help" not in args:
    if not any(a == "--port" or a.startswith("--port=") for a in args):
        args += ["--port", os.environ["DOCS_PORT"]]
    for cmd_file in state.glob("serve-*.cmd"):  # one terminal: the reader stops the last proxy first
        rc_file, pid_file = cmd_file.with_suffix(".rc"), cmd_file.with_suffix(".pid")
        if not rc_file.exists() and pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 15)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 30
            while not rc_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    n = str(len(list(state.glob("serve-*.cmd"))))
    (state / f"serve-{{n}}.cmd").write_text(" ".join(["replay-proxy", *sys.argv[1:]]))
    subprocess.Popen([sys.executable, __file__, "--docs-supervise", n, *args], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, rc = state / f"serve-{{n}}.out", state / f"serve-{{n}}.rc"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().strip():
            print(out.read_text().strip())
            sys.exit(0)
        if rc.exists():
            sys.stderr.write((state / f"serve-{{n}}.err").read_text())
            sys.exit(int(rc.read_text()))
        time.sleep(0.05)
    sys.exit("docs: the proxy printed no ready line within 60 s")
os.execv(sys.executable, [sys.executable, "-m", "proxy", *args])
'''

_UV = '''\
#!{python}
"""uv for the docs tests: `uv run CMD ...` runs CMD from the test environment."""
import os, sys
args = sys.argv[1:]
if args[:1] != ["run"] or len(args) < 2:
    sys.exit("docs: only `uv run CMD` is supported here, not: uv " + " ".join(args))
cmd, rest = args[1], args[2:]
here = os.path.dirname(os.path.abspath(__file__))
if cmd == "replay-proxy":
    os.execv(os.path.join(here, "replay-proxy"), [cmd, *rest])
if cmd == "python":
    os.execv(sys.executable, [sys.executable, *rest])
os.execv(os.path.join(os.path.dirname(sys.executable), cmd), [cmd, *rest])
'''

_CURL = '''\
#!{python}
"""curl for the docs tests: the real one, for URLs on this machine only."""
import os, re, shutil, sys
args = sys.argv[1:]
local = re.compile(r"https?://(127\\.0\\.0\\.1|localhost|\\[::1\\])[:/]")
proxied = any(local.match(a) for i, a in enumerate(args) if i and args[i - 1] in ("--proxy", "-x"))
for a in args:
    if re.match(r"https?://", a) and not proxied and not local.match(a):
        sys.exit("docs: curl would leave the machine: " + a)
real = os.environ["DOCS_REAL_CURL"]
os.execv(real, [real, "--max-time", "20", *args])
'''


@dataclass
class Session:
    """The scratch directory, shims and servers that the blocks of one doc section share."""

    root: Path
    port: int = field(default_factory=free_port)
    port2: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.work = self.root / "repo"
        self.state = self.root / "state"
        self.bin = self.root / "bin"
        self.confdir = self.root / "conf"
        for d in (self.work, self.state, self.bin):
            d.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            shutil.copytree(ROOT / name, self.work / name)
        real_curl = shutil.which("curl")
        if real_curl is None:
            raise RuntimeError("the docs tests need curl (apt-get install curl)")
        for name, text in (("replay-proxy", _SERVE), ("uv", _UV), ("curl", _CURL)):
            path = self.bin / name
            path.write_text(text.format(python=sys.executable))
            path.chmod(0o755)
        self.env = dict(
            os.environ,
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            DOCS_STATE=str(self.state),
            DOCS_PORT=str(self.port),
            DOCS_REAL_CURL=real_curl,
            REPLAY_PROXY_CONFDIR=str(self.confdir),
            PYTHONUNBUFFERED="1",
            HOME=str(self.root),
        )
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            self.env.pop(var, None)
        self.background: list[subprocess.Popen[bytes]] = []
        self.bound: dict[str, str] = {}

    def localize(self, text: str) -> str:
        """The block as it runs here: the documented ports become this session's free ports."""
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}").replace(
            "8081", str(self.port2)
        )

    def bash(self, script: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in bash (errexit, pipefail), in the scratch repository; background jobs it
        leaves (``cmd &``) are stopped with the session."""
        n = len(self.background)
        out_path, err_path = self.state / f"bash-{n}.out", self.state / f"bash-{n}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:  # files: `cmd &` jobs keep them open
            proc = subprocess.Popen(
                ["bash", "-c", "set -eo pipefail\n" + script],
                cwd=self.work,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.background.append(proc)  # its process group may hold `cmd &` jobs
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(
                f"timed out after {timeout} s:\n{script}\n{out_path.read_text()}\n{err_path.read_text()}"
            ) from None
        out, err = out_path.read_text(), err_path.read_text()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def servers(self) -> Iterator[tuple[str, str, int]]:
        """(number, command, pid) of every proxy the blocks started."""
        for cmd in sorted(self.state.glob("serve-*.cmd")):
            n = cmd.stem.split("-", 1)[1]
            pid_file = cmd.with_suffix(".pid")
            deadline = time.monotonic() + 10
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            yield n, cmd.read_text(), int(pid_file.read_text())

    def console(self) -> str:
        """What the proxy started last printed on stderr (its exchange lines)."""
        n = len(list(self.state.glob("serve-*.cmd"))) - 1
        return (self.state / f"serve-{n}.err").read_text()

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every proxy the blocks started; their exit statuses (None: did not stop in 30 s)."""
        statuses: dict[str, int | None] = {}
        for n, cmd, pid in self.servers():
            rc_file = self.state / f"serve-{n}.rc"
            if not rc_file.exists():
                _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while not rc_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            statuses[cmd] = int(rc_file.read_text()) if rc_file.exists() else None
            if statuses[cmd] is None:
                _signal(pid, signal.SIGKILL)
        for proc in self.background:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        self.background.clear()
        return statuses


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- shell blocks --------------------------------------------------------------------------------------------

COMMENT = re.compile(r"\s+#\s.*$")


def script_of(block: Block, skipped: list[tuple[re.Pattern[str], str]], used: set[str]) -> str:
    """The block as a bash script: comments dropped, commands the test does not run replaced by a note."""
    out = []
    for line in block.text.splitlines():
        command = COMMENT.sub("", line).rstrip()
        for pattern, reason in skipped:
            if pattern.search(command):
                used.add(pattern.pattern)
                command = ": " + shlex.quote(f"skipped: {reason}")
                break
        out.append(command)
    return "\n".join(out) + "\n"


# -- transcripts: `$ command` then what it prints ------------------------------------------------------------

PLACEHOLDER = re.compile(r"\b([0-9a-f]{4,8})(?:\.\.\.|…)")
VOLATILE = [
    re.compile(r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d\d:\d\d [AP]M \+00:00"),  # the seed's createdDateTime
    re.compile(r"\b\d+\.\d{3} s\b"),  # a measured time: "came 0.011 s after"
]


@dataclass
class Step:
    command: str
    expected: list[str]


def transcript(block: Block) -> list[Step]:
    steps: list[Step] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append(Step(COMMENT.sub("", line[2:]).rstrip(), []))
        elif line.strip() and steps:
            steps[-1].expected.append(COMMENT.sub("", line).rstrip())
    return steps


def expected_pattern(line: str, bound: dict[str, str]) -> tuple[re.Pattern[str], list[str]]:
    """A shown output line as a pattern: ``4f1c...`` binds (or must equal) a real id, ``...`` is anything,
    dates that change every run are any such date."""
    parts: list[str] = []
    binds: list[str] = []
    pos = 0
    tokens = sorted(
        [(m.start(), m.end(), "id", m.group(1)) for m in PLACEHOLDER.finditer(line)]
        + [(m.start(), m.end(), "any", "") for m in re.finditer(r"\.\.\.|…", line)]
        + [(m.start(), m.end(), "date", "") for v in VOLATILE for m in v.finditer(line)]
    )
    for start, end, kind, key in tokens:
        if start < pos:
            continue  # "..." inside an id placeholder
        parts.append(re.escape(line[pos:start]))
        if kind == "id":
            if key in bound:  # the id in full, or its first 8 characters and an ellipsis (console lines)
                full = bound[key]
                parts.append(f"(?:{re.escape(full)}|{re.escape(full[:8])}(?:…|\\.\\.\\.))")
            else:
                parts.append(f"(?P<p{len(binds)}>[0-9a-f][0-9a-f-]*)(?:…|\\.\\.\\.)?")
                binds.append(key)
        elif kind == "any":
            parts.append(".*?")
        else:
            parts.append(r"[0-9/:. APM+s]+")
        pos = end
    parts.append(re.escape(line[pos:]))
    return re.compile("".join(parts)), binds


def check_output(expected: list[str], actual: str, bound: dict[str, str]) -> None:
    """Each shown line must match a line of ``actual``, in order; ids bind on the way."""
    lines = [line.rstrip("\r") for line in actual.splitlines()]
    at = 0
    for shown in expected:
        pattern, binds = expected_pattern(shown, bound)
        for i in range(at, len(lines)):
            m = pattern.fullmatch(lines[i])
            if m:
                for n, key in enumerate(binds):
                    bound[key] = m.group(f"p{n}")
                at = i + 1
                break
        else:
            raise AssertionError(
                f"the docs show {shown!r}, but the command printed:\n" + textwrap.indent(actual, "    ")
            )


def substitute(command: str, bound: dict[str, str]) -> str:
    def real(m: re.Match[str]) -> str:
        if m.group(1) not in bound:
            raise AssertionError(f"{command!r} uses {m.group(0)!r} before any output showed it")
        return bound[m.group(1)]

    return PLACEHOLDER.sub(real, command)
