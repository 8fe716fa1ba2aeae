"""Bad input files (issue 5): malformed and hostile cassettes and scenarios, through the real command.

Every hostile file is given to ``python -m proxy replay FILE`` (cassettes) or ``python -m proxy play FILE``
(scenarios), and every scenario also to ``replay-proxy check``. Each must end with status 2 and our
one-line error naming the file and, where a line means something, ``file:LINE:COLUMN``; no traceback;
within a time limit and a memory limit (``RLIMIT_AS``, and the peak RSS the kernel reports must stay
linear in the file's size: alias bombs must not expand); and nothing in the file runs: python tags and
template escapes that would create a canary file leave it absent.

The unit tests (tests/test_cassette.py, tests/test_scenario_loader.py, tests/test_templates.py) check the
messages word for word; this file proves the whole path from the command line. Every run costs a Python
start (~1 s), so the runs go through a small thread pool, and scenario files that load quickly share one
``play`` run (the loader checks each file on its own and names it in each line).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
"""Seconds a run may take before it is killed (and the case fails): a bomb must not spin."""
MEMORY_LIMIT = 2 << 30
"""``RLIMIT_AS`` of every run: a bomb that got through fails with an error instead of eating the machine."""
BASE_RSS = 256 << 20
"""Peak RSS allowed to a run whatever its file (a failing run measures ~80 MB)..."""
RSS_PER_BYTE = 8
"""...plus this many bytes per byte of the file: parsing is linear, expanding aliases is not."""
HUGE = 50 << 20
"""Size of the huge junk files."""
ERROR = "replay-proxy: error: "
SOME_LINE = -1
"""``Case.line`` when the error must name a line but which one depends on the input (random bytes)."""

pytestmark = pytest.mark.timeout(300)  # the runs are shared: a regression must fail cases, not the first


@dataclass(frozen=True)
class Case:
    """A hostile file: ``make`` writes it into a folder and returns the path to give to ``command``."""

    id: str
    command: str  # replay (a cassette) or play (a scenario)
    make: Callable[[Path], Path]
    says: tuple[str, ...]
    line: int | None
    """The line the error names; None when no line is meaningful (a directory, a file too large)."""
    alone: bool = False
    """A scenario run on its own (bombs and huge files: its memory is measured alone)."""


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    status: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int
    """Bytes: ``ru_maxrss`` of the process, from ``wait4``."""


LAUNCHER = """
import os, resource, signal, sys, time
limit, timeout, report = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "proxy", *sys.argv[4:]])
start, killed = time.monotonic(), False
while True:  # reaped with wait4, for its rusage; killed only while not reaped
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    if not killed and time.monotonic() - start > timeout:
        os.kill(pid, signal.SIGKILL)
        killed = True
    time.sleep(0.02)
with open(report, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {int(killed)}")
"""
"""Runs ``python -m proxy ARGS`` under RLIMIT_AS and a timeout, and writes its status and peak RSS.

A small process of its own forks the proxy: a child forked straight from this (large) pytest process would
count the pages it shares with it in its peak RSS (Linux keeps a forked child's high-water mark across exec).
"""


def run_proxy(args: list[str], cwd: Path, confdir: Path) -> Run:
    """``python -m proxy ARGS`` under ``RLIMIT_AS``, killed after TIMEOUT; its status, output, peak RSS."""
    env = dict(os.environ, REPLAY_PROXY_CONFDIR=str(confdir), PYTHONPATH=str(ROOT))
    with (
        tempfile.TemporaryFile() as out,  # files: no pipe to drain
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        report = Path(tmp) / "report"
        start = time.monotonic()
        launcher = [sys.executable, "-c", LAUNCHER, str(MEMORY_LIMIT), str(TIMEOUT), str(report), *args]
        subprocess.run(
            launcher, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env, check=True
        )
        seconds = time.monotonic() - start
        status, maxrss, killed = (int(v) for v in report.read_text().split())
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if killed:
        stderr += f"\n(killed after {TIMEOUT:g} s)"
    return Run(tuple(args), status, stdout, stderr, seconds, maxrss * 1024)


# -- the hostile files ------------------------------------------------------------------------------------

REQUEST = "  request: {body: null, headers: {}, method: GET, uri: 'http://h/'}\n"
RESPONSE = "  response: {body: {string: ''}, headers: {}, status: {code: 200, message: OK}}\n"
CASSETTE = "version: 1\ninteractions:\n-" + REQUEST[1:] + RESPONSE
"""A valid cassette: line 3 is the request, line 4 the response."""


def laughs(levels: int = 9) -> str:
    """'Billion laughs': lines 1..levels+1 define a0..a{levels}; *a9 stands for 10**10 'lol's."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def text_file(name: str, text: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return path

    return make


def bytes_file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def directory(name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.mkdir()
        return path

    return make


def huge_line(name: str) -> Callable[[Path], Path]:
    """HUGE bytes of 'x' on one line: valid YAML (one plain scalar), neither a cassette nor a scenario."""

    def make(folder: Path) -> Path:
        path = folder / name
        with path.open("wb") as f:
            chunk = b"x" * (1 << 20)
            for _ in range(HUGE >> 20):
                f.write(chunk)
            f.write(b"\n")
        return path

    return make


def sparse(name: str) -> Callable[[Path], Path]:
    """HUGE bytes that cost no disk: enough for a loader that refuses a file by its size before reading."""

    def make(folder: Path) -> Path:
        path = folder / name
        with path.open("wb") as f:
            f.truncate(HUGE)
        return path

    return make


def huge_random(name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        with path.open("wb") as f:
            for _ in range(HUGE >> 20):
                f.write(os.urandom(1 << 20))
        return path

    return make


def huge_body_then_broken(name: str) -> Callable[[Path], Path]:
    """A cassette with a HUGE response body, then a YAML error on its last line (6)."""

    def make(folder: Path) -> Path:
        path = folder / name
        with path.open("wb") as f:
            f.write(b"version: 1\ninteractions:\n-" + REQUEST[1:].encode() + b"  response: {body: {string: '")
            chunk = b"y" * (1 << 20)
            for _ in range(HUGE >> 20):
                f.write(chunk)
            f.write(b"'}, headers: {}, status: {code: 200, message: OK}}\n  note: [\n")
        return path

    return make


def aliased(name: str, anchored: str, copies: int) -> Callable[[Path], Path]:
    """A cassette whose interaction 0 (line 3, anchored &i) is repeated by ``copies`` aliases *i."""
    return text_file(name, "version: 1\ninteractions:\n- &i\n" + anchored + "- *i\n" * copies)


def canary(folder: Path, case_id: str) -> Path:
    """The file a hostile input would create if it ran."""
    return folder / f"CANARY-{case_id.replace('/', '-')}"


def python_tag(command: str, case_id: str, tag: str, args: str) -> Callable[[Path], Path]:
    """A file whose value at line 2 (column 15 for a cassette, 9 for a scenario) is a python tag."""

    def make(folder: Path) -> Path:
        value = f"{tag} {args.replace('{canary}', str(canary(folder, case_id)))}"
        name = case_id.split("/")[1] + ".yaml"
        if command == "replay":
            return text_file(name, f"version: 1\ninteractions: {value}\n")(folder)
        return text_file(name, f"name: x\nroutes: {value}\n")(folder)

    return make


def template(case_id: str, source: str) -> Callable[[Path], Path]:
    """A scenario whose response text (line 3) is ``source``, ``{canary}`` replaced by the case's canary."""

    def make(folder: Path) -> Path:
        text = source.replace("{canary}", str(canary(folder, case_id)))
        quoted = "'" + text.replace("'", "''") + "'"
        body = f"routes:\n  - match: {{path: /a}}\n    respond: {{text: {quoted}}}\n"
        return text_file(case_id.split("/")[1] + ".yaml", body)(folder)

    return make


def body_file(case_id: str, name: Callable[[Path], str]) -> Callable[[Path], Path]:
    """A scenario answering with the body file ``name(folder)`` (line 3), meant to be outside its folder."""

    def make(folder: Path) -> Path:
        body = f"routes:\n  - match: {{path: /a}}\n    respond: {{file: '{name(folder)}'}}\n"
        return text_file(case_id.split("/")[1] + ".yaml", body)(folder)

    return make


def symlink_out(folder: Path) -> str:
    link = folder / "secret-link.txt"
    link.symlink_to(folder.parent / "secret.txt")
    return link.name


PY_TAGS = {
    "apply-os-system": ("!!python/object/apply:os.system", "['touch {canary}']"),
    "apply-subprocess": ("!!python/object/apply:subprocess.check_call", "[[touch, '{canary}']]"),
    "new-popen": ("!!python/object/new:subprocess.Popen", "[[touch, '{canary}']]"),
    "object-popen": ("!!python/object:subprocess.Popen", "{args: [touch, '{canary}']}"),
    "name-os-system": ("!!python/name:os.system", "''"),
    "module-os": ("!!python/module:os", "''"),
}

CASSETTE_PY_TAGS = ("new-popen", "name-os-system", "module-os")  # and apply, in a body below
"""The forms tried on cassettes too (each run costs a second; test_the_cassette_loaders_are_safe checks
that the loader has no constructor for any python tag)."""

C = "replay"
S = "play"
CASSETTE_CASES = [
    Case(
        "cassette/invalid-yaml",
        C,
        text_file(
            "invalid-yaml.yaml",
            "version: 1\ninteractions:\n- request:\n    uri: [http://x/\n  response: {}\n",
        ),
        ("did not find expected ',' or ']'",),
        5,
    ),
    Case(  # vcrpy refuses it too (urlparse); an odd *response* is loaded, and answers 599 when played
        "cassette/wrong-type-uri",
        C,
        text_file("uri.yaml", CASSETTE.replace("uri: 'http://h/'", "uri: 3")),
        ("interaction 0: request method and uri must be strings",),
        3,
    ),
    Case(  # vcrpy refuses it too (HeadersDict(3)); a single value instead of a list it takes
        "cassette/wrong-type-headers",
        C,
        text_file("header.yaml", CASSETTE.replace("headers: {}, method", "headers: 3, method")),
        ("interaction 0: request: headers must be a mapping of name to list of values",),
        3,
    ),
    Case(  # response splitting (issue 16): replay would send headers the recording does not hold
        "cassette/crlf-in-header-value",
        C,
        text_file(
            "crlf.yaml",
            CASSETTE.replace("headers: {}, status", 'headers: {X-A: ["a\\r\\nSet-Cookie: x=1"]}, status'),
        ),
        ("interaction 0: header 'X-A' has a CR in its value",),
        4,
    ),
    Case(
        "cassette/crlf-in-reason",
        C,
        text_file("reason.yaml", CASSETTE.replace("message: OK", 'message: "OK\\r\\nSet-Cookie: x=1"')),
        ("interaction 0: the reason phrase 'OK\\r\\nSet-Cookie: x=1' has a CR, LF or control character",),
        4,
    ),
    Case(
        "cassette/header-name-with-space",
        C,
        text_file("name.yaml", CASSETTE.replace("headers: {}, status", "headers: {X A: [b]}, status")),
        ("interaction 0: header name 'X A' is not a valid HTTP field name",),
        4,
    ),
    Case(
        "cassette/wrong-type-top-level",
        C,
        text_file("top.yaml", "# a cassette?\njust a line of text\n"),
        ("not a vcrpy cassette (top level must be a mapping)",),
        2,
    ),
    Case(
        "cassette/unknown-request-key",  # vcrpy fails on it too: Request.__init__() gets an unknown keyword
        C,
        text_file("unknown.yaml", CASSETTE.replace("uri: 'http://h/'", "uri: 'http://h/', evil: 1")),
        ("interaction 0: request has unknown keys evil",),
        3,
    ),
    Case(
        "cassette/billion-laughs-interactions",
        C,
        text_file("laughs.yaml", laughs() + "version: 1\ninteractions: *a9\n"),
        ("interaction 0: needs a 'request' mapping",),
        9,  # item 0 of *a9 is a8
    ),
    Case(
        "cassette/billion-laughs-method",  # the error message must not spell the bomb out
        C,
        text_file("laughs-method.yaml", laughs() + CASSETTE.replace("method: GET", "method: *a9")),
        ("interaction 0: request method and uri must be strings",),
        10,
    ),
    Case(
        "cassette/billion-laughs-header",
        C,
        text_file(
            "laughs-header.yaml",
            laughs() + CASSETTE.replace("headers: {}, method", "headers: {X: *a9}, method"),
        ),
        ("interaction 0: request: header 'X' has a non-text value a list",),
        9,
    ),
    Case(
        "cassette/alias-repeats-a-large-body",  # 1 MB file, 500 copies of a 1 MB body: 500 MB unchecked
        C,
        aliased(
            "repeat-body.yaml",
            REQUEST.replace("body: null", "body: &b '" + "z" * (1 << 20) + "'") + RESPONSE,
            500,
        ),
        ("the cassette is too big once its aliases are expanded",),
        3,
    ),
    Case(
        "cassette/alias-repeats-a-long-header-list",  # 100 KB file, 100M header values unchecked
        C,
        aliased(
            "repeat-headers.yaml",
            REQUEST + RESPONSE.replace("headers: {}", "headers: {X: &h [" + "v, " * 30_000 + "v]}"),
            5_000,
        ),
        ("the cassette is too big once its aliases are expanded",),
        5,  # the header list, in the response of the anchored interaction
    ),
    Case(
        "cassette/alias-repeats-an-interaction",  # 1 MB file, 200 000 interactions
        C,
        aliased("repeat-interaction.yaml", REQUEST + RESPONSE, 200_000),
        ("the cassette is too big once its aliases are expanded",),
        3,
    ),
    Case(
        "cassette/recursive-alias",
        C,
        text_file("recursive.yaml", "version: 1\ninteractions: &a [*a]\n"),
        ("interaction 0: needs a 'request' mapping",),
        2,
    ),
    *[
        Case(f"cassette/python-{name}", C, python_tag(C, f"cassette/python-{name}", tag, args), (tag[2:],), 2)
        for name, (tag, args) in PY_TAGS.items()
        if name in CASSETTE_PY_TAGS
    ],
    Case(
        "cassette/python-tag-in-body",
        C,
        lambda folder: text_file(
            "python-body.yaml",
            CASSETTE.replace(
                "string: ''",
                "string: !!python/object/apply:os.system "
                f"['touch {canary(folder, 'cassette/python-tag-in-body')}']",
            ),
        )(folder),
        ("python/object/apply:os.system",),
        4,
    ),
    Case(
        "cassette/not-utf8",
        C,
        bytes_file("latin1.yaml", CASSETTE.replace("message: OK", "message: caf\xe9").encode("latin-1")),
        ("not UTF-8 text",),
        4,
    ),
    Case(
        "cassette/control-character",
        C,
        text_file("nul.yaml", CASSETTE.replace("message: OK", "message: O\x00K")),
        ("invalid YAML: control characters are not allowed (#x0000)",),
        4,
    ),
    Case("cassette/directory", C, directory("folder.yaml"), ("cannot read cassette",), None),
    Case("cassette/empty", C, text_file("empty.yaml", ""), ("cassette not found (the file is empty)",), None),
    Case(
        "cassette/deep-nesting",
        C,
        text_file("deep.yaml", "version: 1\ninteractions: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("exceeded maximum nesting depth",),
        2,
    ),
    Case(
        "cassette/huge-line-of-junk",
        C,
        huge_line("huge-line.yaml"),
        ("not a vcrpy cassette (top level must be a mapping)",),
        1,
    ),
    Case("cassette/huge-random-bytes", C, huge_random("huge-random.yaml"), ("not UTF-8 text",), SOME_LINE),
    Case(
        "cassette/huge-body-then-broken",
        C,
        huge_body_then_broken("huge-body.yaml"),
        ("did not find expected node content",),
        6,
    ),
]

SCENARIO_CASES = [
    Case(
        "scenario/invalid-yaml",
        S,
        text_file(
            "invalid-yaml.yaml", "name: x\nroutes:\n  - match: {path: /a\n    respond: {status: 200}\n"
        ),
        ("invalid YAML: did not find expected ',' or '}'",),
        4,
    ),
    Case(
        "scenario/wrong-type-status",
        S,
        text_file("status.yaml", "name: x\nroutes:\n  - match: {path: /a}\n    respond: {status: OK}\n"),
        ("status: expected an integer; got 'OK'",),
        4,
    ),
    Case(
        "scenario/wrong-type-routes",
        S,
        text_file("routes.yaml", "name: x\nroutes: 3\n"),
        ("routes: expected",),
        2,
    ),
    Case(
        "scenario/unknown-key",
        S,
        text_file("unknown.yaml", "name: x\nroutes:\n  - match: {path: /a}\n    respond: {stauts: 200}\n"),
        ("unknown key 'stauts' in respond", "did you mean 'status'?"),
        4,
    ),
    Case(
        "scenario/unknown-top-level-key",
        S,
        text_file("unknown-top.yaml", "name: x\nroutes: []\nimport: other.yaml\n"),
        ("unknown key 'import' in the scenario",),
        3,
    ),
    Case(
        "scenario/billion-laughs",
        S,
        text_file("laughs.yaml", laughs() + "name: *a9\nroutes: []\n"),
        ("the document is too big: more than 200000 nodes once aliases are expanded",),
        SOME_LINE,
        alone=True,
    ),
    Case(
        "scenario/billion-laughs-unused",  # anchors under an unknown key still count
        S,
        text_file(
            "laughs-unused.yaml",
            "x-anchors:\n" + "".join(f"  {line}\n" for line in laughs().splitlines()) + "routes: []\n",
        ),
        ("the document is too big",),
        SOME_LINE,
        alone=True,
    ),
    Case(
        "scenario/recursive-alias",
        S,
        text_file("recursive.yaml", "name: x\nroutes: &r [*r]\n"),
        ("an alias refers to a node that contains it (a recursive structure)",),
        2,
    ),
    *[
        Case(f"scenario/python-{name}", S, python_tag(S, f"scenario/python-{name}", tag, args), (tag,), 2)
        for name, (tag, args) in PY_TAGS.items()
    ],
    Case(
        "scenario/include-tag",
        S,
        text_file("include.yaml", "name: x\nroutes: !include /etc/passwd\n"),
        ("tags are not allowed (!include)",),
        2,
    ),
    Case(
        "scenario/body-file-dotdot",
        S,
        body_file("scenario/body-file-dotdot", lambda folder: "../secret.txt"),
        ("is outside the scenario's folder",),
        3,
    ),
    Case(
        "scenario/body-file-absolute",
        S,
        body_file("scenario/body-file-absolute", lambda folder: str(folder.parent / "secret.txt")),
        ("is outside the scenario's folder",),
        3,
    ),
    Case(
        "scenario/body-file-dotdot-inside-a-path",
        S,
        body_file("scenario/body-file-dotdot-inside-a-path", lambda folder: "sub/../../secret.txt"),
        ("is outside the scenario's folder",),
        3,
    ),
    Case(
        "scenario/body-file-symlink-out",
        S,
        body_file("scenario/body-file-symlink-out", symlink_out),
        ("is outside the scenario's folder",),
        3,
    ),
    Case(
        "scenario/body-file-etc-passwd",
        S,
        body_file("scenario/body-file-etc-passwd", lambda folder: "../" * 40 + "etc/passwd"),
        ("is outside the scenario's folder",),
        3,
    ),
    Case(
        "scenario/template-mro",
        S,
        template("scenario/template-mro", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        ("template error: templates cannot read private attributes",),
        3,
    ),
    Case(
        "scenario/template-cycler-globals",
        S,
        template(
            "scenario/template-cycler-globals",
            "{{ cycler.__init__.__globals__.os.system('touch {canary}') }}",
        ),
        ("template error: templates cannot read private attributes",),
        3,
    ),
    Case(
        "scenario/template-lipsum-globals",
        S,
        template(
            "scenario/template-lipsum-globals",
            "{{ lipsum.__globals__['os'].popen('touch {canary}').read() }}",
        ),
        ("template error: templates cannot read private attributes ('__globals__')",),
        3,
    ),
    Case(
        "scenario/template-self",
        S,
        template("scenario/template-self", "{{ self._TemplateReference__context }}"),
        ("template error: templates cannot read private attributes ('_TemplateReference__context')",),
        3,
    ),
    Case(
        "scenario/template-self-builtins",
        S,
        template(
            "scenario/template-self-builtins",
            "{{ self.__init__.__globals__.__builtins__.open('{canary}', 'w').write('x') }}",
        ),
        ("template error: templates cannot read private attributes",),
        3,
    ),
    Case(
        "scenario/template-attr-filter",
        S,
        template(
            "scenario/template-attr-filter",
            "{{ request|attr('__class__')|attr('__init__')|attr('__globals__') }}",
        ),
        ("template error: templates cannot read private attributes",),
        3,
    ),
    Case(
        "scenario/template-escaped-name",
        S,
        template("scenario/template-escaped-name", "{{ ''['\\x5f\\x5fclass\\x5f\\x5f'] }}"),
        ("template error: templates cannot read private attributes ('__class__')",),
        3,
    ),
    Case(
        "scenario/template-include",
        S,
        template("scenario/template-include", "{% include '/etc/passwd' %}"),
        ("template error: templates cannot use other templates (include)",),
        3,
    ),
    Case(
        "scenario/template-import",
        S,
        template("scenario/template-import", "{% import 'os' as os %}{{ os.system('touch {canary}') }}"),
        ("template error: templates cannot use other templates (import)",),
        3,
    ),
    Case(
        "scenario/not-utf8",
        S,
        bytes_file("latin1.yaml", "name: ok\ndescription: caf\xe9\nroutes: []\n".encode("latin-1")),
        ("the file is not UTF-8 text",),
        2,
    ),
    Case(
        "scenario/control-character",
        S,
        text_file("nul.yaml", "name: a\x00b\nroutes: []\n"),
        ("invalid YAML: control characters are not allowed (#x0000)",),
        1,
    ),
    Case("scenario/directory", S, directory("folder.yaml"), ("is a directory, not a scenario file",), None),
    Case("scenario/empty", S, text_file("empty.yaml", ""), ("empty scenario",), 1),
    Case(
        "scenario/deep-nesting",
        S,
        text_file("deep.yaml", "routes: []\nname: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("invalid YAML: exceeded maximum nesting depth",),
        2,
    ),
    # response splitting (issue 16): nothing sent may carry a header the file does not hold
    Case(
        "scenario/crlf-in-header-value",
        S,
        text_file(
            "crlf-header.yaml",
            'routes:\n  - match: {path: /a}\n    respond: {headers: {X-A: "a\\r\\nSet-Cookie: pwned=1"}}\n',
        ),
        ("header 'X-A' has a CR in its value", "it would write other headers"),
        3,
    ),
    Case(
        "scenario/header-name-not-a-token",
        S,
        text_file(
            "rlo-header.yaml", 'routes:\n  - match: {path: /a}\n    respond: {headers: {"X\\u202eA": b}}\n'
        ),
        ("header name 'X\\u202eA' is not a valid HTTP field name",),
        3,
    ),
    Case(
        "scenario/huge-file",
        S,
        sparse("huge.yaml"),
        ("file is too large",),
        None,
        alone=True,
    ),
]

CASES = {case.id: case for case in [*CASSETTE_CASES, *SCENARIO_CASES]}
assert len(CASES) == len(CASSETTE_CASES) + len(SCENARIO_CASES), "case ids must be unique"


@dataclass
class Results:
    paths: dict[str, Path]
    runs: dict[str, Run]
    """The run of each case (scenarios that are not ``alone`` share one)."""
    check: Run
    """``replay-proxy check`` of every scenario file at once."""
    canaries: list[Path]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    """Every case's file written, then every run at once in a small thread pool."""
    base = tmp_path_factory.mktemp("hostile")
    confdir = tmp_path_factory.getbasetemp() / "replay-proxy-conf"
    (base / "secret.txt").write_text("a secret beside the scenarios' folder\n")
    cassettes, scenarios = base / "cassettes", base / "scenarios"
    for folder in (cassettes, scenarios, scenarios / "sub"):
        folder.mkdir()
    paths = {case.id: case.make(cassettes if case.command == C else scenarios) for case in CASES.values()}
    jobs: dict[str, list[str]] = {
        case.id: [case.command, str(paths[case.id]), "--port", "0"]
        for case in CASES.values()
        if case.command == C or case.alone
    }
    together = [str(paths[c.id]) for c in SCENARIO_CASES if not c.alone]
    jobs["play-together"] = ["play", *together, "--port", "0"]
    jobs["check"] = ["check", *(str(paths[c.id]) for c in SCENARIO_CASES)]
    # The longest first, so that the pool does not end on one of them alone.
    order = sorted(jobs, key=lambda j: -(os.path.getsize(jobs[j][1]) if os.path.isfile(jobs[j][1]) else 0))
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {j: pool.submit(run_proxy, jobs[j], base, confdir) for j in order}
        done = {j: f.result() for j, f in futures.items()}
    runs = {case.id: done[case.id] if case.id in done else done["play-together"] for case in CASES.values()}
    canaries = [canary(cassettes if c.command == C else scenarios, c.id) for c in CASES.values()]
    yield Results(paths, runs, done["check"], canaries)
    if os.environ.get("REPLAY_PROXY_HOSTILE_FIGURES"):  # for the report: -s shows it
        for name, ran in sorted(done.items(), key=lambda kv: -kv[1].peak_rss):
            print(f"{name:45} {ran.seconds:6.2f} s {ran.peak_rss / 2**20:7.0f} MB status {ran.status}")


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_file_is_one_clear_error(results: Results, case_id: str) -> None:
    case, path, ran = CASES[case_id], results.paths[case_id], results.runs[case_id]
    everything = ran.stdout + ran.stderr
    assert "Traceback" not in everything, ran.stderr
    assert ran.status == 2, f"status {ran.status}: {ran.stderr}"
    assert ran.stdout == "", ran.stdout  # never got as far as the ready line
    progress = f"replay-proxy: loading {path} ("  # a slow load says how far it got (issue 16)
    lines = [line for line in ran.stderr.splitlines() if not line.startswith(progress)]
    assert all(line.startswith(ERROR) for line in lines), ran.stderr
    mine = [line for line in lines if line.startswith(f"{ERROR}{path}:")]
    if case.command == C or case.alone:
        assert mine == lines, ran.stderr  # only this file's problem
    assert len(mine) == 1, ran.stderr
    line = mine[0]
    for words in case.says:
        assert words in line, line
    where = re.match(rf"{re.escape(ERROR + str(path))}:(\d+):(\d+): ", line)
    if case.line is None:
        assert line.startswith(f"{ERROR}{path}: "), line
    else:
        assert where is not None, f"no file:line:column in {line!r}"
        if case.line != SOME_LINE:
            assert int(where.group(1)) == case.line, line
    assert len(line) < 500, line  # one readable line: no value of the file spelled out


@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_file_runs_in_bounded_memory_and_runs_nothing(results: Results, case_id: str) -> None:
    path, ran = results.paths[case_id], results.runs[case_id]
    bound = BASE_RSS + RSS_PER_BYTE * sum(file_size(p) for p in _shared(results, case_id))
    assert ran.peak_rss <= bound, f"peak RSS {ran.peak_rss >> 20} MB for a {file_size(path) >> 20} MB file"
    assert "killed after" not in ran.stderr
    for created in results.canaries:
        assert not created.exists(), f"{created.name} exists: a hostile input ran a command"


def _shared(results: Results, case_id: str) -> list[Path]:
    """The files read by the run of ``case_id`` (a shared play run reads all its scenarios)."""
    case = CASES[case_id]
    if case.command == C or case.alone:
        return [results.paths[case_id]]
    return [results.paths[c.id] for c in SCENARIO_CASES if not c.alone]


def test_check_names_every_hostile_scenario(results: Results) -> None:
    ran = results.check
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr
    assert ran.status == 2, ran.stderr
    n = len(SCENARIO_CASES)
    assert re.fullmatch(rf"invalid: \d+ problems in {n} of {n} scenario files\n", ran.stdout), ran.stdout
    for case in SCENARIO_CASES:
        path = results.paths[case.id]
        mine = [line for line in ran.stderr.splitlines() if line.startswith(f"{path}:")]
        assert len(mine) == 1, (case.id, ran.stderr)
        for words in case.says:
            assert words in mine[0], mine[0]


# -- what the loaders leave to render time, and what they rightly accept ---------------------------------

RUNTIME_ESCAPES = {
    # Names built at render time: no static check can see them; the sandbox refuses them when rendering.
    "/attr-built": "{{ request|attr('_' * 2 ~ 'class' ~ '_' * 2) }}",
    "/item-built": "{{ cycler[('_' * 2) ~ 'init' ~ ('_' * 2)] }}",
    "/format": "{{ '{0.__class__.__mro__}'.format(request) }}",
    "/from-the-client": "{{ (lipsum|attr(request.query.a)).os.system('touch CANARY') }}",
}


def test_escapes_only_visible_at_render_time_answer_599_and_run_nothing(
    tmp_path: Path, confdir: Path
) -> None:
    marker = tmp_path / "CANARY"
    quoted = {
        route: "'" + s.replace("CANARY", str(marker)).replace("'", "''") + "'"
        for route, s in RUNTIME_ESCAPES.items()
    }
    routes = "".join(
        f"  - match: {{path: {route}}}\n    respond: {{text: {text}}}\n" for route, text in quoted.items()
    )
    scenario = tmp_path / "render-time.yaml"
    scenario.write_text("name: render-time escapes\nroutes:\n" + routes)
    proxy = Cli(["play", str(scenario), "--port", "0"], confdir)
    try:
        assert proxy.url, proxy.stderr
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for i, route in enumerate(RUNTIME_ESCAPES):
            with pytest.raises(urllib.error.HTTPError) as answer:
                opener.open(f"{proxy.url}{route}?a=__globals__", timeout=30)
            assert answer.value.code == 599
            message = answer.value.read().decode()
            assert f"{scenario}:{4 + 2 * i}:" in message, message
            assert "template error: access to attribute" in message and "is unsafe" in message, message
        status = proxy.stop()
    finally:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait(10)
    assert status == 0, proxy.stderr
    assert "Traceback" not in proxy.stderr, proxy.stderr
    assert not marker.exists()


def test_cassette_keys_vcrpy_ignores_are_accepted(tmp_path: Path, confdir: Path) -> None:
    """vcrpy ignores unknown top-level, interaction and response keys, so the proxy does too (it refuses
    unknown request keys, on which vcrpy fails): no strictness the format does not have."""
    cassette = tmp_path / "extra-keys.yaml"
    cassette.write_text(
        "version: 1\nrecorded_with: a tool\ninteractions:\n-"
        + REQUEST[1:]
        + RESPONSE.replace("string: ''", "string: 'hello'").replace("}}\n", "}, note: x}\n")
        + "  recorded_at: '2026-01-01T00:00:00'\n"
    )
    proxy = Cli(["replay", str(cassette), "--port", "0"], confdir)
    try:
        assert proxy.url, proxy.stderr
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{proxy.url}/", timeout=30) as answer:
            assert (answer.status, answer.read()) == (200, b"hello")
        assert proxy.stop() == 0, proxy.stderr
    finally:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait(10)


# -- only safe YAML loading anywhere ----------------------------------------------------------------------

UNSAFE_NAMES = frozenset(
    {
        "Loader",
        "FullLoader",
        "UnsafeLoader",
        "CLoader",
        "CFullLoader",
        "CUnsafeLoader",
        "Constructor",
        "FullConstructor",
        "UnsafeConstructor",
        "unsafe_load",
        "unsafe_load_all",
        "full_load",
        "full_load_all",
    }
)
"""PyYAML's names that construct arbitrary Python objects (``yaml.Loader`` is the unsafe one)."""
VCRPY_PYTHON_TAGS = frozenset(
    "tag:yaml.org,2002:python/" + t
    for t in ("str", "unicode", "tuple", "object/new:_io.BytesIO", "object/apply:builtins.iter")
)
"""The python tags vcrpy's safe cassette loader builds, each from data only (never an arbitrary call)."""


def is_safe_loader(loader: object) -> bool:
    """A loader class built on PyYAML's safe constructor, with no python tag but vcrpy's benign ones."""
    from yaml.constructor import FullConstructor, SafeConstructor

    if not isinstance(loader, type) or not issubclass(loader, SafeConstructor):
        return False
    if issubclass(loader, FullConstructor):  # UnsafeConstructor and Constructor derive from it
        return False
    tags = set(getattr(loader, "yaml_constructors", {})) | set(getattr(loader, "yaml_multi_constructors", {}))
    python = {t for t in tags if isinstance(t, str) and "python/" in t}
    return python <= VCRPY_PYTHON_TAGS


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> object:
    """The object a ``Name`` or dotted ``Attribute`` names in ``namespace``; None for anything else."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def unsafe_yaml_uses(source: str, namespace: dict[str, Any], filename: str = "<source>") -> list[str]:
    """Each use of unsafe YAML loading in ``source``, as ``file:line: what``.

    Refused: any reference to an unsafe PyYAML name (``yaml.Loader``, ``FullLoader``, ``unsafe_load``...,
    as an attribute of anything or imported); any ``yaml.load``/``load_all`` whose ``Loader`` is missing or
    is not, once looked up in ``namespace`` (the module's globals), a safe loader class; and any name of
    ``namespace`` that is a loader class but not a safe one, wherever it is passed (``fast.load(f, L)``).
    """
    from yaml.constructor import BaseConstructor

    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute | ast.Name) and isinstance(node.ctx, ast.Load):
            named = _resolve(node, namespace)
            if isinstance(named, type) and issubclass(named, BaseConstructor) and not is_safe_loader(named):
                found.append(f"{where}: {ast.unparse(node)} is a loader that is not a safe one")
                continue
        if isinstance(node, ast.Attribute) and node.attr in UNSAFE_NAMES:
            found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.Name) and node.id in UNSAFE_NAMES:
            found.append(f"{where}: {node.id}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "yaml":
            found += [f"{where}: from yaml import {a.name}" for a in node.names if a.name in UNSAFE_NAMES]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("load", "load_all")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "yaml"
        ):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            if loader is None:
                found.append(f"{where}: {ast.unparse(node)} without a Loader")
            elif not is_safe_loader(_resolve(loader, namespace)):
                found.append(f"{where}: {ast.unparse(node)} with a loader that is not a safe one")
    return found


UNSAFE_SNIPPETS = {
    "load-without-loader": "data = yaml.load(text)\n",
    "load-with-Loader": "data = yaml.load(text, Loader=yaml.Loader)\n",
    "load-with-FullLoader": "data = yaml.load(text, Loader=yaml.FullLoader)\n",
    "load-with-UnsafeLoader-positional": "data = yaml.load(text, yaml.UnsafeLoader)\n",
    "load-all-with-CLoader": "docs = yaml.load_all(text, Loader=yaml.CLoader)\n",
    "unsafe-load": "data = yaml.unsafe_load(text)\n",
    "full-load": "data = yaml.full_load(text)\n",
    "import-unsafe-loader": "from yaml import UnsafeLoader\n",
    "alias-of-unsafe-loader": "data = yaml.load(text, Loader=Mine)\n",
    "multi-line-call": "data = yaml.load(\n    text,\n    Loader=(\n        yaml.Loader\n    ),\n)\n",
    "old-vcrpy-loader": "loader = yamlserializer.Loader\n",
    "call-as-loader": "data = yaml.load(text, Loader=pick())\n",
    "unsafe-loader-given-to-a-helper": "data = fast.load(text, Mine)\n",
}
SAFE_SNIPPETS = {
    "safe-load": "data = yaml.safe_load(text)\n",
    "SafeLoader": "data = yaml.load(text, Loader=yaml.SafeLoader)\n",
    "CSafeLoader-positional": "data = yaml.load(text, yaml.CSafeLoader)\n",
    "safe-subclass": "data = yaml.load(text, Loader=Mine)\n",
    "compose": "node = yaml.compose(text, Loader=yaml.CSafeLoader)\n",
    "safe-loader-given-to-a-helper": "data = fast.load(text, Mine)\n",
    "comment-and-string": "# yaml.load(text, Loader=yaml.Loader)\nhelp = 'never yaml.unsafe_load'\n",
}


class _SafeSubclass(yaml.SafeLoader):
    """A loader derived from the safe one, as proxy/cassette.py derives from vcrpy's."""


@pytest.mark.parametrize("name", list(UNSAFE_SNIPPETS))
def test_the_yaml_scan_catches_unsafe_loading(name: str) -> None:
    namespace = {"yaml": yaml, "Mine": yaml.UnsafeLoader}
    assert unsafe_yaml_uses(UNSAFE_SNIPPETS[name], namespace), UNSAFE_SNIPPETS[name]


@pytest.mark.parametrize("name", list(SAFE_SNIPPETS))
def test_the_yaml_scan_passes_safe_loading(name: str) -> None:
    namespace = {"yaml": yaml, "Mine": _SafeSubclass}
    assert unsafe_yaml_uses(SAFE_SNIPPETS[name], namespace) == []


def test_only_safe_yaml_loading_in_the_proxy() -> None:
    """Every module of proxy/ is scanned (with its globals, to check the loaders it names)."""
    sources = sorted((ROOT / "proxy").rglob("*.py"))
    assert len(sources) > 10
    found: list[str] = []
    for source in sources:
        relative = source.relative_to(ROOT)
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        text = source.read_text(encoding="utf-8")
        namespace = vars(importlib.import_module(module)) if "yaml" in text else {}
        found += unsafe_yaml_uses(text, namespace, str(relative))
    assert found == []


def test_the_cassette_loaders_are_safe() -> None:
    """What proxy/cassette.py parses with (its own loader, and vcrpy's for the error path) is safe."""
    from vcr.serializers import yamlserializer

    from proxy import cassette

    assert is_safe_loader(cassette._Loader)
    assert is_safe_loader(getattr(yamlserializer, "_CassetteLoader", None))
    assert not is_safe_loader(yaml.Loader) and not is_safe_loader(yaml.FullLoader)
