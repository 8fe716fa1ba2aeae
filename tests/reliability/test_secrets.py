"""Nothing leaked: no secret a client sends or an upstream answers reaches a cassette, end to end.

Real clients (requests, httpx) through the real `replay-proxy record` command, in reverse and forward
mode, to a loopback upstream that echoes what it gets and answers with secrets of its own. The files the
proxy writes are then searched, byte by byte and value by value, for every secret in every form. The
same search runs over the whole session's tmp directory at the end (tests/conftest.py).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import httpx
import pytest
import requests
import yaml

from proxy import ReplayProxy
from tests.conftest import (
    PLACEHOLDER,
    SUITE_SECRETS,
    Canaries,
    HardCanaries,
    leaks_in,
    redacted_files_with_leaks,
    run_cli,
    secret_forms,
)
from tests.upstream import Upstream

TIMEOUT = 10
S = Canaries
CLIENT_SAS = f"sv=2022-11-02&sr=b&sp=w&sig={quote(S.CLIENT_SIG, safe='')}"
UPSTREAM_SAS = f"sv=2022-11-02&sr=b&sp=r&sig={quote(S.UPSTREAM_SIG, safe='')}"
PLACEHOLDER_RE = re.compile(r"<REDACTED-\d+>")


class SecretUpstream(Upstream):
    """tests/upstream.py's server (echo, cookies...), plus answers that carry the upstream's own secrets:
    an OAuth token response, a SAS URL in Location and in the body, a Set-Cookie."""

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        if path not in ("/oauth/token", "/blobs/start") and not path.startswith("/blobs/b1"):
            return super()._handle(h)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(
                {"method": h.command, "path": h.path, "headers": dict(h.headers.items()), "body": body}
            )
        status, headers = 200, [("Content-Type", "application/json")]
        if path == "/oauth/token":
            doc: dict[str, Any] = {
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": S.ACCESS_TOKEN,
                "refresh_token": S.REFRESH_TOKEN,
            }
        elif path == "/blobs/start":
            sas_url = f"{self.url}/blobs/b1?{UPSTREAM_SAS}"
            status = 202
            headers += [
                ("Location", sas_url),
                ("Set-Cookie", f"affinity={S.UPSTREAM_COOKIE}; Path=/; Secure"),
            ]
            doc = {"status": "Accepted", "resourceLocation": sas_url}
        else:  # the SAS URL followed: echoed back, relative and absolute
            doc = {"path": h.path, "url": self.url + h.path}
        out = json.dumps(doc).encode()
        h.send_response(status)
        for name, value in [*headers, ("Content-Length", str(len(out)))]:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(out)


def send_secrets(base: str, proxies: str | None) -> dict[str, Any]:
    """Every kind of secret, sent by requests then httpx; returns what the clients got back."""
    got: dict[str, Any] = {}
    with requests.Session() as s:
        s.trust_env = False
        if proxies:
            s.proxies = {"http": proxies}
        bearer = {"Authorization": f"Bearer {S.BEARER}"}
        r1 = s.get(
            f"{base}/echo?subscription-key={S.QUERY_KEY}&region=eu",
            headers={
                **bearer,
                "Ocp-Apim-Subscription-Key": S.SUBSCRIPTION_KEY,
                "Cookie": f"session={S.CLIENT_COOKIE}",
            },
            timeout=TIMEOUT,
        )
        # the header's key now in the query, the same token again
        r2 = s.get(f"{base}/echo?subscription-key={S.SUBSCRIPTION_KEY}", headers=bearer, timeout=TIMEOUT)
        r3 = s.post(f"{base}/echo", json={"user": "bob", "password": S.PASSWORD}, timeout=TIMEOUT)
        r4 = s.put(f"{base}/echo?{CLIENT_SAS}", data=b"blob bytes", timeout=TIMEOUT)
        got["requests"] = [r.status_code for r in (r1, r2, r3, r4)]
        got["echoed"] = r1.json()["headers"]
    with httpx.Client(
        auth=(S.BASIC_USER, S.BASIC_PASSWORD), proxy=proxies, trust_env=False, timeout=TIMEOUT
    ) as c:
        token = c.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "app", "client_secret": S.CLIENT_SECRET},
        )
        cookies = c.get(f"{base}/cookies")
        # the cookie the upstream set, sent back to it
        back = c.get(f"{base}/echo", headers={"Cookie": "session=s3cr3t-cookie"})
        start = c.post(f"{base}/blobs/start")
        blob = c.get(start.headers["Location"])
        got["httpx"] = [r.status_code for r in (token, cookies, back, start, blob)]
        got["token"] = token.json()
        got["set-cookie"] = cookies.headers.get_list("set-cookie") + start.headers.get_list("set-cookie")
        got["location"] = start.headers["Location"]
        got["blob"] = blob.json()
    return got


def saved(path: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = yaml.safe_load(path.read_text("utf-8"))["interactions"]
    return items


def header(message: dict[str, Any], name: str) -> str:
    values = [v for k, vs in message["headers"].items() if k.lower() == name.lower() for v in vs]
    assert len(values) == 1, (name, message["headers"])
    return str(values[0])


def placeholder(text: str) -> str:
    found = PLACEHOLDER_RE.findall(text)
    assert len(found) == 1, text
    return str(found[0])


def query(uri: str, name: str) -> str:
    return parse_qs(urlsplit(uri).query)[name][0]


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_no_secret_reaches_the_cassette_end_to_end(mode: str, cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "recorded"
    cassette = out / "secrets.yaml"
    with SecretUpstream() as upstream:
        where = [upstream.url] if mode == "reverse" else ["--mode", "regular"]
        proc = cli(
            ["record", *where, "-o", str(cassette), "--port", "0", "-q", "--redact-json-field", "password"]
        )
        try:
            base = proc.url if mode == "reverse" else upstream.url
            got = send_secrets(base, proc.url if mode == "regular" else None)
            during = {p.name: leaks_in(p, SUITE_SECRETS) for p in out.iterdir()}  # appended as it happens
        finally:
            assert proc.stop() == 0, proc.stderr
        sent = upstream.requests

    # The secrets did travel, untouched, both ways: the scan below is not vacuous.
    assert got["requests"] == [200, 200, 200, 200] and got["httpx"] == [200, 200, 200, 202, 200]
    assert got["echoed"]["Authorization"] == f"Bearer {S.BEARER}"
    assert sent[0]["headers"]["Ocp-Apim-Subscription-Key"] == S.SUBSCRIPTION_KEY
    assert sent[0]["headers"]["Cookie"] == f"session={S.CLIENT_COOKIE}"
    assert query(sent[1]["path"], "subscription-key") == S.SUBSCRIPTION_KEY
    assert json.loads(sent[2]["body"])["password"] == S.PASSWORD
    assert query(sent[3]["path"], "sig") == S.CLIENT_SIG
    assert sent[4]["headers"]["Authorization"] == f"Basic {S.BASIC}"
    assert parse_qs(sent[4]["body"].decode())["client_secret"] == [S.CLIENT_SECRET]
    assert got["token"]["access_token"] == S.ACCESS_TOKEN and got["token"]["refresh_token"] == S.REFRESH_TOKEN
    assert got["set-cookie"] == [
        "session=s3cr3t-cookie; Path=/; HttpOnly",
        "b=2; Path=/",
        f"affinity={S.UPSTREAM_COOKIE}; Path=/; Secure",
    ]
    assert query(got["location"], "sig") == S.UPSTREAM_SIG
    assert got["blob"]["url"].endswith(f"/blobs/b1?{UPSTREAM_SAS}")

    # Not one secret, in any form, in any file the proxy wrote: while recording or after.
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["secrets.yaml"]
    assert during == {"secrets.yaml": []}
    assert leaks_in(cassette, SUITE_SECRETS) == []

    # The same secret has the same placeholder wherever it was; different secrets have different ones.
    items = saved(cassette)
    assert len(items) == 9  # one per exchange, nothing else
    echo1, echo2, echo_post, echo_sas, token, cookies, back, start, blob = items
    owner: dict[str, str] = {}

    def same(name: str, *texts: str) -> None:
        found = {placeholder(t) for t in texts}
        assert len(found) == 1, (name, texts)
        owner[name] = found.pop()

    same("bearer", header(echo1["request"], "Authorization"), header(echo2["request"], "Authorization"))
    same(
        "subscription key, header then query",
        header(echo1["request"], "Ocp-Apim-Subscription-Key"),
        query(echo2["request"]["uri"], "subscription-key"),
    )
    same("query key", query(echo1["request"]["uri"], "subscription-key"))
    same("client cookie", header(echo1["request"], "Cookie"))
    same("password", json.loads(echo_post["request"]["body"])["password"])
    same("client sig", query(echo_sas["request"]["uri"], "sig"))
    same(
        "basic",
        *(header(i["request"], "Authorization") for i in (token, cookies, back, start, blob)),
    )
    same("client secret", parse_qs(token["request"]["body"])["client_secret"][0])
    tokens = json.loads(token["response"]["body"]["string"])
    same("access token", tokens["access_token"])
    same("refresh token", tokens["refresh_token"])
    set_cookie = [
        v for k, vs in cookies["response"]["headers"].items() if k.lower() == "set-cookie" for v in vs
    ]
    same("upstream cookie, set then sent back", set_cookie[0], header(back["request"], "Cookie"))
    same(
        "upstream sig, in Location, body and the request that followed it",
        query(header(start["response"], "Location"), "sig"),
        query(json.loads(start["response"]["body"]["string"])["resourceLocation"], "sig"),
        query(blob["request"]["uri"], "sig"),
        query(json.loads(blob["response"]["body"]["string"])["url"], "sig"),
    )
    same("affinity cookie", header(start["response"], "Set-Cookie"))
    assert len(set(owner.values())) == len(owner) == 13, owner
    # The echoes of the request's secrets in the response body carry the request's placeholders.
    echoed = json.loads(echo1["response"]["body"]["string"])["headers"]
    assert echoed["Authorization"] == f"Bearer {owner['bearer']}"
    assert echoed["Ocp-Apim-Subscription-Key"] == owner["subscription key, header then query"]


# ------------------------------------------------- issue 16: secrets where real clients put them

H = HardCanaries
UP = HardCanaries.UPSTREAM
BOUNDARY = "hardcanaryboundary7f"


class HardSecretUpstream(Upstream):
    """Answers as real services do: camelCase tokens, a %-encoded SAS inside a URL in the body, secrets in
    Set-Cookie attributes and folded cookies, and an echo of the bearer token base64-encoded and
    JSON-escaped (``\\/``)."""

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(
                {"method": h.command, "path": h.path, "headers": dict(h.headers.items()), "body": body}
            )
        path = urlsplit(h.path).path
        headers = [("Content-Type", "application/json")]
        if path == "/oauth/token":
            inner = f"/blobs/b1?sv=1&sig={quote(UP['NESTED_SIG'], safe='')}"
            out = json.dumps(
                {
                    "token_type": "Bearer",
                    "accessToken": UP["CAMEL_ACCESS"],
                    "refreshToken": UP["CAMEL_REFRESH"],
                    "sessionJwt": UP["SESSION_JWT"],
                    "next": f"{self.url}/login?return={quote(inner, safe='')}",
                }
            )
            headers += [
                ("Set-Cookie", f"pref=dark; Path=/; X-Csrf-Token={UP['SET_COOKIE_ATTRIBUTE']}; Secure"),
                ("Set-Cookie", f"a=1; Path=/, sid={UP['SET_COOKIE_FOLDED']}; Path=/; HttpOnly"),
            ]
        elif path == "/whoami":  # the bearer token echoed: base64, base64url, and JSON with \/
            auth = h.headers.get("Authorization") or ""
            token = auth.removeprefix("Bearer ")
            b64 = base64.b64encode(token.encode()).decode()
            b64url = base64.urlsafe_b64encode(token.encode()).decode()
            escaped = token.replace("/", "\\/")
            out = f'{{"seen_b64": "{b64}", "seen_b64url": "{b64url}", "seen": "{escaped}"}}'
            headers.append(("X-Seen", base64.b64encode(auth.encode()).decode()))
        else:
            out = json.dumps({"ok": True, "path": urlsplit(h.path).path.split("/")[1][:3]})
        data = out.encode()
        h.send_response(200)
        for name, value in [*headers, ("Content-Length", str(len(data)))]:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)


def multipart(fields: dict[str, str]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


def send_hard_secrets(base: str, s: dict[str, str]) -> list[int]:
    """Each case of issue 16, sent by requests as a real client would; returns the statuses."""
    statuses = []
    with requests.Session() as c:
        c.trust_env = False

        def call(method: str, path: str, **kw: Any) -> None:
            statuses.append(c.request(method, base + path, timeout=TIMEOUT, **kw).status_code)

        token_request = json.dumps({"client_id": "app", "client_secret": s["GZIP_CLIENT_SECRET"]})
        call(
            "POST",
            "/oauth/token",
            data=gzip.compress(token_request.encode(), mtime=0),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        call("GET", "/whoami", headers={"Authorization": f"Bearer {s['ECHO_BEARER']}"})
        login = {"user": "bob", "password": s["JSON_PASSWORD"], "proof": s["JSON_JWT"]}
        call("POST", "/login", json=login)
        call(
            "POST",
            "/upload",
            data=multipart({"username": "bob", "password": s["MULTIPART_PASSWORD"]}),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        call("GET", f"/maps/api/geocode/json?address=Main+St&key={s['GOOGLE_KEY']}")
        call(
            "GET",
            "/api/v4/projects?per_page=2",
            headers={
                "Private-Token": s["PRIVATE_TOKEN"],
                "X-Vault-Token": s["VAULT_TOKEN"],
                "X-Access-Token": s["ACCESS_TOKEN_HEADER"],
            },
        )
        call("GET", f"/bot{s['BOT_TOKEN']}/getMe")
        call("GET", f"/blobs/b1?sv=2022-11-02&sr=b&sp=r&sig={quote(s['SAS_SIG'], safe='')}")
    return statuses


def yaml_values(node: object) -> list[bytes]:
    """Every string and binary value of a YAML document; gzip-compressed bodies also decompressed."""
    if isinstance(node, dict):
        return [b for item in node.items() for b in yaml_values(list(item))]
    if isinstance(node, list):
        return [b for item in node for b in yaml_values(item)]
    if isinstance(node, bytes):
        return [node, gzip.decompress(node)] if node.startswith(b"\x1f\x8b") else [node]
    return [str(node).encode("utf-8", "surrogateescape")]


def found_in(streams: dict[str, bytes], secrets: dict[str, str]) -> dict[str, list[str]]:
    """{stream: the names of the secrets found in it, in any form}."""
    found = {}
    for name, data in streams.items():
        hits = [k for k, v in secrets.items() if any(f in data for f in secret_forms(v))]
        if hits:
            found[name] = hits
    return found


def test_hard_secrets_leak_nowhere_the_proxy_writes(cli: Any, tmp_path: Path, confdir: Path) -> None:
    """Issue 16: every case planted, then every file and stream the proxy writes is searched: the cassette,
    the console (stdout, stderr), the --report, the journal (ReplayProxy.journal) while recording and
    while replaying with different live secrets, which must still match, and the 599 diagnostic."""
    recorded, live = H.of("R"), H.of("L")
    secrets = {**recorded, **{f"{k} (live)": v for k, v in live.items()}, **UP}
    secrets["USERINFO_PASSWORD"] = H.USERINFO_PASSWORD
    cassette = tmp_path / "recorded" / "hard.yaml"
    streams: dict[str, bytes] = {}
    with HardSecretUpstream() as upstream:
        proc = cli(["record", upstream.url, "-o", str(cassette), "--port", "0", "--report"])
        try:
            statuses = send_hard_secrets(proc.url, recorded)
        finally:
            assert proc.stop() == 0, proc.stderr
        assert proc.proc.stdout is not None
        streams["record stdout (ready line, --report)"] = (proc.ready_line + proc.proc.stdout.read()).encode()
        streams["record stderr (console)"] = proc.stderr.encode()
        sent = upstream.requests

        # the journal while recording (in-process), then replay offline with different live secrets
        journal_cassette = tmp_path / "recorded" / "journal.yaml"
        with ReplayProxy(journal_cassette, upstream=upstream.url, confdir=confdir) as p:
            assert send_hard_secrets(p.url, recorded) == [200] * 8
            streams["journal (record)"] = repr(p.journal.entries).encode()
    match_on = ["method", "path", "query", "body"]
    with ReplayProxy(cassette, confdir=confdir, match_on=match_on) as p:
        replayed = send_hard_secrets(p.url, live)
        sources = [e.source for e in p.journal.entries]
        # a request nothing recorded matches: its diagnostic (which SDKs print) names it, secrets hidden
        stray = f"/bot{live['BOT_TOKEN']}/getUpdates?key={live['GOOGLE_KEY']}&sig={quote(live['SAS_SIG'])}"
        diagnostic = requests.get(p.url + stray, timeout=TIMEOUT)
        streams["diagnostic (599 answer)"] = diagnostic.content
        streams["journal (replay, live secrets)"] = repr(p.journal.entries).encode()
    for f in sorted((tmp_path / "recorded").iterdir()):
        streams[f"file {f.name}"] = f.read_bytes()
        streams[f"file {f.name} (YAML values, bodies decompressed)"] = b"\n".join(
            yaml_values(yaml.safe_load(f.read_text()))
        )
    userinfo = run_cli(
        ["record", f"http://bob:{H.USERINFO_PASSWORD}@127.0.0.1:9", "-o", str(tmp_path / "u.yaml")], confdir
    )
    streams["`record http://user:PASSWORD@host` stderr"] = (userinfo.stdout + userinfo.stderr).encode()

    leaks = found_in(streams, secrets)
    forms = sum(len(secret_forms(v)) for v in secrets.values())
    print(f"\n{len(secrets)} secrets in {forms} forms searched in {len(streams)} files and streams: {leaks}")
    unmatched = [e.line() for e in p.journal.entries[:8] if e.source != "cassette"]
    print(f"replay with other live secrets: {len(unmatched)} of 8 requests unmatched: {unmatched}")
    # The secrets travelled, untouched (the scan is not vacuous)
    assert statuses == [200] * 8, proc.stderr
    assert json.loads(gzip.decompress(sent[0]["body"]))["client_secret"] == recorded["GZIP_CLIENT_SECRET"]
    assert sent[5]["headers"]["X-Vault-Token"] == recorded["VAULT_TOKEN"]
    assert recorded["BOT_TOKEN"] in sent[6]["path"]
    assert userinfo.returncode == 2 and "bob" in userinfo.stderr
    # and a replay with other live secrets matches every request
    assert replayed == [200] * 8 and sources == ["cassette"] * 8, p.journal.entries
    assert diagnostic.status_code == 599 and b"/getUpdates?key=<REDACTED-" in diagnostic.content

    assert leaks == {}


def test_redact_except_keeps_a_false_positive_through_the_command(
    cli: Any, tmp_path: Path, upstream: Upstream
) -> None:
    """`key=` names a setting in some APIs (Azure App Configuration): --redact-except key keeps it, while
    the other rules still apply."""
    cassette = tmp_path / "kv.yaml"
    proc = cli(["record", upstream.url, "-o", str(cassette), "--port", "0", "--redact-except", "key"])
    try:
        r = requests.get(f"{proc.url}/json?key=app:color&sig=kv-secret-sig-1", timeout=TIMEOUT)
    finally:
        assert proc.stop() == 0, proc.stderr
    assert r.status_code == 200
    (item,) = saved(cassette)
    assert item["request"]["uri"].endswith("/json?key=app:color&sig=<REDACTED-1>")
    assert "key=app:color&sig=<REDACTED-1>" in proc.stderr  # the console line, the same way


# ----------------------------------------------------------------------------- the scan itself


def test_the_scan_finds_a_secret_in_every_form(tmp_path: Path) -> None:
    """The scan is the proof: it must find what it looks for, however the file spells it."""
    secret = "not a suite secret+scan/check="  # not in SUITE_SECRETS: the session scan stays clean
    assert secret not in SUITE_SECRETS
    files = {
        "raw.yaml": f"interactions:\n- token: {secret}\n",
        "percent.yaml": f"uri: http://h/p?sig={quote(secret, safe='')}\n",
        "plus.yaml": f"body: a=1&password={quote_plus(secret)}\n",
        "folded.yaml": yaml.safe_dump({"body": secret}, width=10),
        "binary.yaml": yaml.safe_dump({"body": b"\x00\x01" + secret.encode()}),
        "json.yaml": yaml.safe_dump({"body": json.dumps({"a": secret})}),
        "basic.yaml": f"Authorization: Basic {base64.b64encode(secret.encode()).decode()}\n",
        "clean.yaml": yaml.safe_dump({"body": "<REDACTED-1>"}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert secret not in (tmp_path / "folded.yaml").read_text()  # YAML really split it across lines
    assert secret not in (tmp_path / "binary.yaml").read_text()  # and wrote it as base64
    found = {name: leaks_in(tmp_path / name, [secret]) for name in files}
    assert found == {name: ([] if name == "clean.yaml" else [secret]) for name in files}


def test_the_session_scan_reads_files_the_proxy_redacted_only(tmp_path: Path) -> None:
    """A file holding a placeholder and a secret is a leak; one with no placeholder at all was written by
    vcrpy, or with redaction off, on purpose (tests/conftest.py::no_secret_left_in_a_cassette)."""
    secret = "not-a-suite-secret-session-scan"
    (tmp_path / "deep" / "er").mkdir(parents=True)
    leaky = tmp_path / "deep" / "er" / "leaky.yaml"
    leaky.write_bytes(PLACEHOLDER + b"1>\nsession=" + secret.encode())
    (tmp_path / "vcrpy.yaml").write_text(f"session={secret}\n")
    (tmp_path / "clean.yaml").write_bytes(PLACEHOLDER + b"2>\n")
    assert redacted_files_with_leaks(tmp_path, [secret]) == (2, {leaky: [secret]})
