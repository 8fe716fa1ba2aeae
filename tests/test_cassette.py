"""Cassettes: vcrpy-exact YAML, clear load errors, append-as-you-go writing, ordered playback."""

from __future__ import annotations

import datetime
import gc
import os
import re
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vcr import matchers as vcr_matchers
from vcr.cassette import Cassette
from vcr.request import Request as VcrRequest
from vcr.serialize import deserialize, serialize
from vcr.serializers import yamlserializer

from proxy import cassette as cassette_module
from proxy import yamlfast
from proxy.cassette import (
    HEADER,
    WHEN_EXHAUSTED,
    CassetteWriter,
    Exhausted,
    Playback,
    Played,
    dump_items,
    dumps,
    load,
    save,
)
from proxy.errors import CassetteError, CassetteNotFoundError, ConfigError
from proxy.matching import Matcher
from proxy.model import Interaction, Request, Response

TRICKY_BODIES = {
    "utf8": "héllo ✓ wörld".encode(),
    "crlf": b"line1\r\nline2\r\n",
    "nul": b"a\x00b",
    "emoji": "🚀🎉 ok".encode(),
    "empty": b"",
    "binary": b"\x89PNG\r\n\x1a\n\x00\xff\xfe",
    "yaml_like": b"- request:\n    body: x\nversion: 2\n---\n...\ninteractions: []\n",
    "leading_space": b"   indented\n  text",
    "bom_u2028": "\ufeffa\u2028b\u0085c\x1b\x7f".encode(),
    "long": b"x" * 5000 + b" y" * 300,
    "json": b'{"a": [1, 2], "b": "c"}',
}


def interaction(
    method: str = "GET",
    url: str = "https://api.example.com/items?a=1",
    body: bytes = b"",
    status: int = 200,
    reason: str = "OK",
    resp_body: bytes = b"{}",
    req_headers: tuple[tuple[str, str], ...] = (("Accept", "application/json"),),
    resp_headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),),
) -> Interaction:
    return Interaction(
        Request(method, url, req_headers, body),
        Response(status, reason, resp_headers, resp_body),
    )


def poll(status: str, url: str = "https://api.example.com/operations/1") -> Interaction:
    return interaction(url=url, resp_body=f'{{"status": "{status}"}}'.encode())


def vcr_load(path: Path) -> Cassette:
    return Cassette.load(path=str(path), record_mode="none", match_on=(vcr_matchers.method, vcr_matchers.uri))


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("name", sorted(TRICKY_BODIES))
def test_round_trip_bodies_byte_exact(tmp_path: Path, name: str) -> None:
    body = TRICKY_BODIES[name]
    items = [interaction(method="POST", body=body, resp_body=body)]
    path = tmp_path / "c.yaml"
    save(path, items)
    assert load(path) == items
    # vcrpy reads the same bytes back
    cassette = vcr_load(path)
    vreq = cassette.requests[0]
    assert (vreq.body or b"") == body
    assert cassette.responses[0]["body"]["string"] == body
    _requests, responses = deserialize(path.read_text(), yamlserializer)[:2]
    assert responses[0]["body"]["string"] == body


def test_binary_is_tagged_and_empty_request_body_is_null() -> None:
    text = dumps([interaction(body=b"\xff\xfe", resp_body=b"\x00\xff")])
    assert text.count("!!binary") == 2
    data = yaml.safe_load(dumps([interaction()]))
    assert data["interactions"][0]["request"]["body"] is None
    assert dumps([interaction(body=b"x=1")]).count("body: x=1") == 1


def test_dumps_shape_and_no_metadata() -> None:
    items = [
        interaction(
            req_headers=(("Accept", "a"), ("X-Trace", "t")),
            resp_headers=(("Set-Cookie", "a=1; Path=/"), ("Content-Type", "x"), ("set-cookie", "b=2")),
        )
    ]
    text = dumps(items)
    data = yaml.safe_load(text)
    assert list(data) == ["interactions", "version"] and data["version"] == 1
    assert text.startswith("interactions:\n") and text.endswith("version: 1\n")
    assert "metadata" not in text
    req = data["interactions"][0]["request"]
    assert set(req) == {"body", "headers", "method", "uri"}
    assert req["headers"] == {"Accept": ["a"], "X-Trace": ["t"]}
    resp = data["interactions"][0]["response"]
    assert resp["headers"]["Set-Cookie"] == ["a=1; Path=/", "b=2"]
    assert resp["status"] == {"code": 200, "message": "OK"}
    assert set(resp["body"]) == {"string"}


def test_dumps_is_byte_identical_to_vcrpy() -> None:
    items = [interaction(body=b, resp_body=b) for b in TRICKY_BODIES.values()]
    vreqs = [
        VcrRequest(i.request.method, i.request.url, i.request.body or None, dict(i.request.headers))
        for i in items
    ]
    vresps = [
        {
            "status": {"code": i.response.status, "message": i.response.reason},
            "headers": {k: [v] for k, v in i.response.headers},
            "body": {"string": i.response.body},
        }
        for i in items
    ]
    assert dumps(items) == serialize({"requests": vreqs, "responses": vresps}, yamlserializer)


def test_multi_valued_response_headers_kept(tmp_path: Path) -> None:
    items = [interaction(resp_headers=(("Set-Cookie", "a=1"), ("Content-Type", "t"), ("Set-Cookie", "b=2")))]
    save(tmp_path / "c.yaml", items)
    (got,) = load(tmp_path / "c.yaml")
    assert got.response.header("content-type") == "t"
    assert [v for k, v in got.response.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert got.response.reason == "OK"


def test_vcrpy_written_cassette_loads(tmp_path: Path) -> None:
    path = tmp_path / "vcr.yaml"
    cassette = Cassette(str(path), record_mode="all")
    cassette.append(
        VcrRequest("POST", "http://h/echo?b=2&a=1", b'{"x": 1}', {"Content-Type": "application/json"}),
        {
            "status": {"code": 201, "message": "Created"},
            "headers": {"Set-Cookie": ["a=1", "b=2"], "Content-Type": ["application/json"]},
            "body": {"string": b'{"ok": true}'},
        },
    )
    cassette.append(
        VcrRequest("GET", "http://h/bin", None, {}),
        {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": b"\x00\xff"}},
    )
    cassette._save()
    got = load(path)
    assert got[0].request == Request(
        "POST", "http://h/echo?b=2&a=1", (("Content-Type", "application/json"),), b'{"x": 1}'
    )
    assert got[0].response == Response(
        201,
        "Created",
        (("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
        b'{"ok": true}',
    )
    assert got[1].response.body == b"\x00\xff" and got[1].request.body == b""
    assert dumps(got) == path.read_text()  # same bytes as vcrpy wrote


def test_metadata_key_is_read_but_never_written(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    text = dumps([interaction()]).replace("version: 1\n", "metadata:\n  k: v\nversion: 1\n")
    path.write_text(text)
    items = load(path)
    assert len(items) == 1
    save(path, items)
    assert "metadata" not in path.read_text()


# ---------------------------------------------------------------- load errors


def test_missing_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(CassetteNotFoundError, match=r"nope\.yaml: cassette not found"):
        load(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("  \n")
    with pytest.raises(CassetteNotFoundError):
        load(tmp_path / "empty.yaml")


GOOD_REQUEST = "  request: {body: null, headers: {}, method: GET, uri: 'http://h/'}\n"
GOOD_RESPONSE = "  response: {body: {string: ''}, headers: {}, status: {code: 200, message: OK}}\n"
MALFORMED = {
    "not_mapping": ("just a string\n", "top level must be a mapping"),
    "old_list": ("- request: {}\n  response: {}\n", "pre-1.0"),
    "no_interactions": ("version: 1\n", "no 'interactions'"),
    "interactions_scalar": ("interactions: 3\n", "'interactions' must be a list"),
    "request_missing_uri": (
        "interactions:\n- request: {body: null, headers: {}, method: GET}\n" + GOOD_RESPONSE,
        "interaction 0: request is missing uri",
    ),
    "request_extra_key": (
        "interactions:\n- request: {body: null, headers: {}, method: GET, uri: u, recorded_at: x}\n"
        + GOOD_RESPONSE,
        "interaction 0: request has unknown keys recorded_at",
    ),
    "no_response": ("interactions:\n-" + GOOD_REQUEST[1:], "interaction 0: needs a 'response'"),
    "request_header_without_value": (
        "interactions:\n- request: {body: null, headers: {A: []}, method: GET, uri: u}\n" + GOOD_RESPONSE,
        "interaction 0: request: header 'A' has no value",
    ),
}
"""What vcrpy refuses to load too: the whole file is refused, with where."""


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_wrong_shape_names_file_and_interaction(tmp_path: Path, name: str) -> None:
    text, expected = MALFORMED[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(CassetteError) as info:
        load(path)
    assert type(info.value) is CassetteError
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", str(info.value)), str(info.value)  # file:line:col
    assert expected in str(info.value)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("interactions:\n- request: {body: null\n  response: [\nversion: 1\n")
    with pytest.raises(CassetteError, match=rf"^{path}:\d+:\d+: "):
        load(path)
    path.write_text("interactions:\n  - a: 1\n b: 2\n")
    with pytest.raises(CassetteError, match=rf"^{path}:3:\d+: "):
        load(path)


def test_python_tags_are_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "interactions:\n- request:\n    body: !!python/object/apply:os.system ['touch "
        f"{marker}']\n    headers: {{}}\n    method: GET\n    uri: u\n" + GOOD_RESPONSE + "version: 1\n"
    )
    with pytest.raises(CassetteError, match=rf"^{path}:3:\d+: could not determine a constructor"):
        load(path)
    assert not marker.exists()


def test_not_utf8_and_directory(tmp_path: Path) -> None:
    (tmp_path / "latin.yaml").write_bytes(b"interactions: [\xff]\n")
    with pytest.raises(CassetteError, match="not UTF-8"):
        load(tmp_path / "latin.yaml")
    with pytest.raises(CassetteError, match="cannot read"):
        load(tmp_path)


# ---------------------------------------------------------------- save / writer


def test_save_is_atomic_and_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c.yaml"
    save(path, [interaction()])
    assert load(path) == [interaction()]
    save(path, [interaction(), poll("Done")])
    assert len(load(path)) == 2
    assert os.listdir(path.parent) == ["c.yaml"]  # no temp files left


def test_save_error_names_path_and_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CassetteError, match=rf"^{blocker}/c.yaml: cannot write cassette: "):
        save(blocker / "c.yaml", [interaction()])


def test_writer_is_lazy_and_loadable_after_every_append(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "w.yaml"
    writer = CassetteWriter(path)
    assert not path.exists() and writer.count == 0
    items = [
        interaction(method="POST", body=b, resp_body=b, url=f"http://h/{i}")
        for i, b in enumerate(TRICKY_BODIES.values())
    ]
    for n, item in enumerate(items, 1):
        writer.append(item)
        assert writer.count == n
        assert len(vcr_load(path)) == n  # vcrpy loads it after each append
        assert load(path) == items[:n]
    assert path.read_text() == HEADER + dump_items(items)
    writer.close(final=items)
    assert path.read_text() == dumps(items)
    assert len(vcr_load(path)) == len(items)


def test_writer_items_equal_dumps_body() -> None:
    items = [interaction(body=b, resp_body=b) for b in TRICKY_BODIES.values()]
    assert dumps(items) == "interactions:\n" + dump_items(items) + "version: 1\n"
    assert "".join(dump_items([i]) for i in items) == dump_items(items)


def test_writer_with_initial_and_close_without_final(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    initial = [poll("Running"), poll("Running")]
    with CassetteWriter(path, initial) as writer:
        assert load(path) == initial and writer.count == 2
        writer.append(poll("Succeeded"))
    assert [i.response.body for i in load(path)][-1] == b'{"status": "Succeeded"}'
    assert path.read_text().startswith("version: 1\ninteractions:\n")
    with pytest.raises(CassetteError, match="closed"):
        writer.append(poll("x"))


def test_unused_writer_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "unused.yaml"
    CassetteWriter(path).close()
    CassetteWriter(path).close(final=[])
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_writer_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(CassetteError, match=rf"^{blocker}/c.yaml: cannot write cassette: "):
        CassetteWriter(blocker / "c.yaml")
    with pytest.raises(CassetteError, match="cannot write cassette"):
        CassetteWriter(blocker / "c.yaml", [interaction()])
    with pytest.raises(CassetteError, match="is a directory"):
        CassetteWriter(tmp_path)


def test_writer_append_error_after_directory_vanishes(tmp_path: Path) -> None:
    d = tmp_path / "d"
    writer = CassetteWriter(d / "c.yaml")
    os.rmdir(d)
    d.parent.joinpath("d").write_text("now a file")
    with pytest.raises(CassetteError, match=r"d/c.yaml: cannot write cassette"):
        writer.append(interaction())


# ---------------------------------------------------------------- hypothesis round trip

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
SAFE = st.text(alphabet=NAME_CHARS, min_size=1, max_size=12)
VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=30).map(
    str.strip
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    req_body=st.binary(max_size=200),
    resp_body=st.binary(max_size=200),
    req_headers=st.dictionaries(SAFE, VALUES, max_size=4),
    resp_headers=st.lists(st.tuples(SAFE, VALUES), max_size=5),
    status=st.integers(min_value=100, max_value=599),
)
def test_round_trip_property(
    tmp_path: Path,
    req_body: bytes,
    resp_body: bytes,
    req_headers: dict[str, str],
    resp_headers: list[tuple[str, str]],
    status: int,
) -> None:
    # request names unique case-insensitively (vcrpy keeps one value per name)
    rh = tuple({k.lower(): (k, v) for k, v in req_headers.items()}.values())
    # response: one casing per name, values grouped in order (the cassette groups by name)
    casing: dict[str, str] = {}
    for k, _ in resp_headers:
        casing.setdefault(k.lower(), k)
    grouped = tuple((casing[lk], v) for lk in casing for k, v in resp_headers if k.lower() == lk)
    item = Interaction(
        Request("PATCH", "https://h.example/p?q=1", rh, req_body),
        Response(status, "Reason", grouped, resp_body),
    )
    path = tmp_path / "prop.yaml"
    save(path, [item])
    (got,) = load(path)
    assert got.request.body == req_body and got.response.body == resp_body
    assert sorted(got.request.headers) == sorted(rh)  # the cassette sorts names
    assert sorted(got.response.headers, key=lambda h: h[0]) == sorted(grouped, key=lambda h: h[0])
    assert got.response.status == status


# ---------------------------------------------------------------- playback


def test_playback_recorded_order_then_repeat_last() -> None:
    items = [
        poll("Running"),
        poll("Running"),
        poll("Succeeded"),
        interaction(url="https://api.example.com/x"),
    ]
    pb = Playback(items, Matcher())
    req = Request("GET", "http://127.0.0.1:9/operations/1")
    got = [pb.play(req) for _ in range(5)]
    assert all(isinstance(g, Played) for g in got)
    played = [g for g in got if isinstance(g, Played)]
    assert [p.index for p in played] == [0, 1, 2, 2, 2]
    assert [p.extra for p in played] == [False, False, False, True, True]
    assert played[2].interaction.response.body == b'{"status": "Succeeded"}'
    assert pb.play_counts == (1, 1, 3, 0)
    assert pb.unplayed() == [3]
    assert pb.play(Request("GET", "http://h/unknown")) is None


def test_playback_cycle_and_error() -> None:
    items = [poll("Running"), poll("Running"), poll("Succeeded")]
    req = Request("GET", "http://h/operations/1")
    cyc = Playback(items, Matcher(), "cycle")
    idx = [p.index for p in (cyc.play(req) for _ in range(8)) if isinstance(p, Played)]
    assert idx == [0, 1, 2, 0, 1, 2, 0, 1]
    err = Playback(items, Matcher(), "error")
    for _ in range(3):
        assert isinstance(err.play(req), Played)
    assert err.play(req) == Exhausted((0, 1, 2))
    err.reset()
    assert err.play_counts == (0, 0, 0)
    first = err.play(req)
    assert isinstance(first, Played) and first.index == 0 and not first.extra
    with pytest.raises(ConfigError, match="choose from: repeat-last, cycle, error"):
        Playback(items, Matcher(), "forever")
    assert WHEN_EXHAUSTED == ("repeat-last", "cycle", "error")


def test_playback_interleaved_keys_and_add() -> None:
    a, b = poll("A1", "http://h/a"), poll("B1", "http://h/b")
    pb = Playback([a, b, poll("A2", "http://h/a")], Matcher())
    ra, rb = Request("GET", "http://h/a"), Request("GET", "http://h/b")
    assert [getattr(pb.play(r), "index", None) for r in (rb, ra, ra)] == [1, 0, 2]
    new = pb.add(poll("A3", "http://h/a"), played=False)
    assert new == 3 and len(pb) == 4
    p = pb.play(ra)
    assert isinstance(p, Played) and p.index == 3 and not p.extra
    recorded = pb.add(poll("A4", "http://h/a"))  # played=True: counts as played
    p = pb.play(ra)
    assert isinstance(p, Played) and p.index == recorded and p.extra
    assert pb.interactions[recorded].response.body == b'{"status": "A4"}'


def test_playback_query_order_insensitive() -> None:
    pb = Playback([interaction(url="https://h/search?b=2&a=1")], Matcher())
    assert isinstance(pb.play(Request("GET", "http://proxy/search?a=1&b=2")), Played)


def test_playback_with_body_and_headers() -> None:
    json_h = (("Content-Type", "application/json"), ("X-Tenant", "t1"))
    items = [
        interaction("POST", "http://h/q", b'{"q": 1, "page": 1}', req_headers=json_h, resp_body=b"p1"),
        interaction("POST", "http://h/q", b'{"q": 1, "page": 2}', req_headers=json_h, resp_body=b"p2"),
        interaction("POST", "http://h/q", b'{"q": 1, "page": 1}', req_headers=json_h, resp_body=b"p1b"),
    ]
    pb = Playback(items, Matcher(["method", "path", "body"], headers=["x-tenant"]))
    req2 = Request(
        "POST", "http://p/q", (("content-type", "application/json"), ("x-tenant", "t1")), b'{"page":2,"q":1}'
    )
    req1 = req2.replace(body=b'{"page":1,"q":1}')
    r = pb.play(req2)
    assert isinstance(r, Played) and r.interaction.response.body == b"p2"
    assert [getattr(pb.play(req1), "index", None) for _ in range(3)] == [0, 2, 2]
    assert pb.play(req1.replace(headers=(("content-type", "application/json"), ("x-tenant", "t2")))) is None
    assert pb.play(req1.replace(body=b'{"page": 3, "q": 1}')) is None
    err = Playback(items, Matcher(["method", "path", "body"]), "error")
    assert isinstance(err.play(req1), Played) and isinstance(err.play(req1), Played)
    assert err.play(req1) == Exhausted((0, 2))


def test_nearest_messages() -> None:
    items = [
        interaction(url="https://h/tilesets/operations/1?datasetId=abc"),
        interaction("POST", "https://h/tilesets?datasetId=abc"),
        interaction(url="https://h/other"),
    ]
    pb = Playback(items, Matcher())
    near = pb.nearest(Request("GET", "http://p/tilesets/operations/2?foo=1"))
    assert near[0][0] == 0
    assert near[0][2] == [
        "path: /tilesets/operations/2 != /tilesets/operations/1",
        "query: missing datasetId=abc; unexpected foo=1",
    ]
    near = pb.nearest(Request("POST", "http://p/tilesets"), limit=1)
    assert [(i, d) for i, _, d in near] == [(1, ["query: missing datasetId=abc"])]
    assert len(pb.nearest(Request("DELETE", "http://p/zzz"), limit=10)) == 3
    assert Playback([], Matcher()).nearest(Request("GET", "http://p/")) == []


def test_nearest_collapses_identical_polls() -> None:
    pb = Playback([poll("Running")] * 5 + [poll("x", "http://h/operations/9")], Matcher())
    near = pb.nearest(Request("GET", "http://p/operations/2"))
    assert [i for i, _, _ in near] == [0, 5]


def test_speed_100k() -> None:
    n = 100_000
    items = [
        interaction(url=f"https://h/items/{i % 1000}?page={i // 1000}", resp_body=str(i).encode())
        for i in range(n)
    ]
    items += [poll("Running")] * 50
    t0 = time.perf_counter()
    pb = Playback(items, Matcher())
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1000):
        got = pb.play(Request("GET", f"http://p/items/{i}?page={i % 100}"))
        assert isinstance(got, Played)
    for _ in range(1000):
        assert isinstance(pb.play(Request("GET", "http://p/operations/1")), Played)
    plays = time.perf_counter() - t0
    t0 = time.perf_counter()
    near = pb.nearest(Request("GET", "http://p/items/5?page=999"))
    near2 = pb.nearest(Request("PUT", "http://p/nothing/like/it"))
    nearest = (time.perf_counter() - t0) / 2
    assert near and near[0][2] and near2
    assert build < 10 and plays < 2 and nearest < 0.5, (build, plays, nearest)


def test_a_torn_last_exchange_is_dropped_not_fatal(tmp_path: Path) -> None:
    """A kill in the middle of an append leaves half an item: the complete ones still load."""
    path = tmp_path / "c.yaml"
    items = [
        Interaction(Request("GET", f"http://h/x{i}"), Response(200, "OK", (("A", "b"),), b"body %d" % i))
        for i in range(3)
    ]
    with CassetteWriter(path) as w:
        for it in items:
            w.append(it)
    text = path.read_text()
    last = text.rfind("\n- request:")
    for cut in range(last + 2, len(text) - 1, 7):  # every way of cutting the last item short
        path.write_text(text[:cut])
        loaded = load(path)
        assert [i.request.url for i in loaded] == ["http://h/x0", "http://h/x1"], cut


# ---------------------------------------------------------------- fast loading (proxy/yamlfast.py)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "cassettes").rglob("*.yaml"))
VCR_LOADER: Any = yamlserializer._CassetteLoader


def fast_or_generic(text: str) -> Any:
    """How proxy loads YAML text: yamlfast, and PyYAML's own constructor where yamlfast declines."""
    try:
        return yamlfast.load(text, VCR_LOADER)
    except yamlfast.Unusual:
        return yaml.load(text, Loader=VCR_LOADER)


def reference_load(path: Path) -> list[Interaction]:
    """``load`` as it was before yamlfast: PyYAML's constructor, then vcrpy's deserialize and Request."""

    def declined(*args: object) -> Any:
        raise yamlfast.Unusual("declined for the reference")

    with (
        mock.patch.object(yamlfast, "load", declined),
        mock.patch.object(cassette_module, "_direct", declined),
    ):
        return load(path)


def outcome(function: Any, argument: Any) -> tuple[str, str]:
    """What ``function(argument)`` gives, as its repr (no deep comparison of recursive data), or raises."""
    try:
        return ("ok", repr(function(argument)))
    except Exception as e:
        return (type(e).__name__, str(e))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_fast_loading_equals_vcrpy_on_shipped_cassettes(path: Path) -> None:
    text = path.read_text()
    assert yamlfast.load(text, VCR_LOADER) == yamlserializer.deserialize(text)  # built, not declined
    with path.open("rb") as f:
        assert yamlfast.load(f, cassette_module._Loader) == yamlserializer.deserialize(text)
    assert load(path) == reference_load(path)


def test_there_are_shipped_cassettes() -> None:
    assert len(SHIPPED) >= 4


TRICKY_SCALARS = [
    *("yes", "No", "ON", "off", "y", "n", "true", "False", "~", "null", "Null", "", " ", "-", "+", ".", "0"),
    *("017", "0o17", "0x1F", "0b101", "1_000", "-0", "+12", "1:30", "190:20:30", "1e3", "1.5e3", "1.", ".5"),
    *(".inf", "-.Inf", ".NaN", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 +5"),
    *("<<", "=", "!", "&a", "*a", "- x", "a: b", "#c", "'q'", '"d"', "\t", " lead", "trail ", "multi\nline"),
    *("Thu, 15 Jan 2026 09:00:00 GMT", "OK", "NotStarted", "127.0.0.1:8080", "<REDACTED-1>", "é", "\u2028"),
]
YAML_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.dates()
    | st.datetimes()
    | st.sampled_from(TRICKY_SCALARS)
)
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.integers() | st.booleans() | st.none(), children, max_size=4
        )
    ),
    max_leaves=30,
)
DUMP_STYLES = st.sampled_from(
    [{}, {"default_flow_style": True}, {"default_style": '"'}, {"default_style": "'"}, {"width": 20}]
)
JUNK = st.sampled_from(
    [
        ":",
        "- ",
        " ",
        "\n",
        "&x ",
        "*x",
        "!!int ",
        "[",
        "]",
        "{",
        "}",
        "'",
        '"',
        "<<: *x\n",
        "? ",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "!!python/tuple [1]",
        "!!binary AAA=",
        "!!binary A",
        "!!float x",
        "!x ",
        "!!python/object/apply:os.getcwd []",
        "!!python/str s",
        "!!python/unicode u",
        "!!timestamp 2001-1-1",
        "&x [*x]",
        "\\",
        "\x00",
        "\ufeff",
        "#",
        "|\n  a\n",
        ">-\n  b\n",
        "!!set {a}",
        "!!omap [a: 1]",
        "\t",
    ]
)


@settings(max_examples=300, deadline=None)
@given(value=YAML_VALUES, shared=YAML_VALUES, style=DUMP_STYLES, data=st.data())
def test_fast_loading_equals_pyyaml_on_random_documents(
    value: Any, shared: Any, style: dict[str, Any], data: st.DataObject
) -> None:
    """Random documents (shared parts become anchors and aliases), intact and then damaged: the same
    data, or the same error, as PyYAML's loader (vcrpy's)."""
    document = {"value": value, "shared": shared, "again": shared, "list": [shared, value]}
    text = yaml.dump(document, Dumper=yamlserializer._CassetteDumper, **style)
    assert repr(yamlfast.load(text, VCR_LOADER)) == repr(yamlserializer.deserialize(text))
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 8)))
    damaged = text[:start] + data.draw(JUNK) + text[end:]
    assert outcome(fast_or_generic, damaged) == outcome(yamlserializer.deserialize, damaged), damaged


PLAIN_CHARS = "0123456789.-+:_eExXoObB yYnNtTfF~<=!&*#@`|>'\"[]{},?aZ\t"


@settings(max_examples=300, deadline=None)
@given(scalars=st.lists(st.text(alphabet=PLAIN_CHARS, max_size=12), min_size=1, max_size=6))
def test_fast_loading_resolves_plain_scalars_as_pyyaml(scalars: list[str]) -> None:
    """Hand-written plain scalars (each a value, a list item and a key): PyYAML's implicit types."""
    text = "".join(f"k{i}: {s}\nl{i}:\n- {s}\n{s}: v{i}\n" for i, s in enumerate(scalars))
    assert outcome(fast_or_generic, text) == outcome(yamlserializer.deserialize, text), text


HEADER_NAMES = (
    st.sampled_from(["Accept", "accept", "ACCEPT", "X-Id", "x-id", "Content-Type", "Set-Cookie"]) | SAFE
)
HEADER_VALUES = VALUES | st.binary(max_size=6) | st.integers(0, 10**6)
BODIES = st.none() | st.text(max_size=30) | st.binary(max_size=30) | st.sampled_from(["", b"", "null", "1"])


def cassette_headers(least: int) -> st.SearchStrategy[dict[str, list[Any]]]:
    return st.dictionaries(HEADER_NAMES, st.lists(HEADER_VALUES, min_size=least, max_size=3), max_size=4)


CASSETTE_ITEMS = st.lists(
    st.fixed_dictionaries(
        {
            "request": st.fixed_dictionaries(
                {
                    "method": st.sampled_from(["GET", "POST", "patch"]),
                    "uri": st.sampled_from(["http://h/", "https://h.example/p?q=1&a=2", "http://[::1]:8/x"])
                    | st.text(max_size=12),
                    "body": BODIES,
                    "headers": cassette_headers(1),
                }
            ),
            "response": st.fixed_dictionaries(
                {
                    "status": st.fixed_dictionaries(
                        {"code": st.integers(100, 599), "message": st.sampled_from(["OK", ""])}
                    ),
                    "headers": cassette_headers(0),
                    "body": st.fixed_dictionaries({"string": BODIES}),
                }
            ),
        }
    ),
    min_size=1,
    max_size=4,
)
FLAWS: dict[str, Any] = {
    "uri vcrpy refuses": lambda item: item["request"].update(uri="http://[::1/x"),
    "request header without a value": lambda item: item["request"]["headers"].update(A=[]),
    "bool header value": lambda item: item["response"]["headers"].update(A=[True]),
    "float header value": lambda item: item["request"]["headers"].update(A=["x", 1.5]),
    "int body": lambda item: item["request"].update(body=7),
    "status 99": lambda item: item["response"]["status"].update(code=99),
    "timestamp body": lambda item: item["request"].update(body=datetime.date(2001, 12, 14)),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=CASSETTE_ITEMS,
    style=DUMP_STYLES,
    share=st.booleans(),
    flaw=st.sampled_from([None] * len(FLAWS) + sorted(FLAWS)),
    where=st.integers(0, 3),
)
def test_fast_loading_equals_vcrpy_on_random_cassettes(
    tmp_path: Path, items: list[Any], style: dict[str, Any], share: bool, flaw: str | None, where: int
) -> None:
    """Random cassettes (header names that differ in case, bytes and int values, shared header lists),
    half of them with a flaw: the same interactions, or the same error, as vcrpy's way gives."""
    if share:  # one headers mapping for every response: an anchor and aliases
        for item in items:
            item["response"]["headers"] = items[0]["response"]["headers"]
    if flaw:
        FLAWS[flaw](items[where % len(items)])
    path = tmp_path / "random.yaml"
    text = yaml.dump({"interactions": items, "version": 1}, Dumper=yamlserializer._CassetteDumper, **style)
    path.write_text(text)
    assert outcome(load, path) == outcome(reference_load, path)


OLD_VCRPY_CASSETTE = """\
interactions:
- request:
    body: !!python/object/new:_io.BytesIO
      state: !!python/tuple
      - !!binary |
        eyJhIjogMX0=
      - 0
      - null
    headers:
      Accept: [!!python/unicode 'text/plain']
      accept: [!!python/str 'application/json']
    method: !!python/unicode 'POST'
    uri: http://h/x
  response:
    body: {string: !!python/unicode 'ok'}
    headers: &shared
      X-A: ['1']
    status: {code: 200, message: OK}
- request:
    body: !!python/object/apply:builtins.iter
      args: [[!!binary YWI=, !!binary Y2Q=]]
    headers: {}
    method: PUT
    uri: http://h/y
  response:
    body: {string: !!binary AAE=}
    headers: *shared
    status: {code: 201, message: Created}
version: 1
"""


def test_old_vcrpy_python_tags_load_as_vcrpy_loads_them(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(OLD_VCRPY_CASSETTE)
    with pytest.raises(yamlfast.Unusual):  # BytesIO and iter bodies: PyYAML's constructor builds them
        yamlfast.load(OLD_VCRPY_CASSETTE, VCR_LOADER)
    got = load(path)
    assert got == reference_load(path)
    assert got[0].request.body == b'{"a": 1}' and got[1].request.body == b"abcd"
    assert got[0].request.headers == (("Accept", "application/json"),)  # vcrpy: first spelling, last value
    assert got[1].response.headers == (("X-A", "1"),) and got[1].response.body == b"\x00\x01"


def test_python_str_tags_and_merge_keys() -> None:
    text = "a: !!python/str x\nb: !!python/unicode y\nc: !!str 12\nd: ! 12\ne: !!int '7'\n"
    assert yamlfast.load(text, VCR_LOADER) == {"a": "x", "b": "y", "c": "12", "d": 12, "e": 7}  # as PyYAML
    assert yamlfast.load(text, VCR_LOADER) == yamlserializer.deserialize(text)
    merged = "base: &b {x: 1, y: 2}\nover:\n  <<: *b\n  y: 3\n"
    with pytest.raises(yamlfast.Unusual):
        yamlfast.load(merged, VCR_LOADER)
    assert fast_or_generic(merged) == {"base": {"x": 1, "y": 2}, "over": {"x": 1, "y": 3}}


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:os.system ['touch {marker}']",
        "!!python/name:os.system",
        "!!python/module:os",
        "!!python/object:argparse.Namespace {{}}",
    ],
)
def test_fast_loading_refuses_python_tags(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    text = "a: " + tag.format(marker=marker) + "\n"
    with pytest.raises(yamlfast.Unusual):
        yamlfast.load(text, cassette_module._Loader)
    with pytest.raises(yaml.constructor.ConstructorError):
        fast_or_generic(text)
    assert not marker.exists()


def laughs(levels: int = 9) -> str:
    """'Billion laughs': *a{levels} stands for 10**(levels+1) 'lol's."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_fast_loading_shares_aliases_so_a_bomb_stays_small() -> None:
    data = yamlfast.load(laughs() + "top: *a9\n", VCR_LOADER)
    assert data["top"] is data["a9"] and all(item is data["a8"] for item in data["a9"])
    recursive = yamlfast.load("a: &a [*a, 1]\n", VCR_LOADER)["a"]
    assert recursive[0] is recursive and recursive[1] == 1


def test_alias_bombs_in_a_cassette_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs() + "version: 1\ninteractions: *a9\n")
    with pytest.raises(CassetteError, match="needs a 'request' mapping"):
        load(bomb)
    body = "x" * 100_000
    items = "".join(
        "- request: {body: null, headers: {}, method: GET, uri: 'http://h/'}\n"
        f"  response: {{body: {{string: {f'&b {body}' if i == 0 else '*b'}}}, headers: {{}},"
        " status: {code: 200, message: OK}}\n"
        for i in range(100)
    )
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text("version: 1\ninteractions:\n" + items)
    with pytest.raises(
        CassetteError, match=r":\d+:\d+: interaction \d+: the cassette is too big once its alias"
    ):
        load(repeated)


@pytest.mark.parametrize("enabled", [True, False])
def test_load_leaves_the_garbage_collector_as_it_was(tmp_path: Path, enabled: bool) -> None:
    path = tmp_path / "c.yaml"
    save(path, [interaction()])
    (tmp_path / "bad.yaml").write_text("interactions: [\n")
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        assert load(path) == [interaction()]
        with pytest.raises(CassetteError):
            load(tmp_path / "bad.yaml")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_a_torn_tail_of_a_large_recording_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    items = [interaction(url=f"http://h/items/{i}", resp_body=b'{"n": %d}' % i) for i in range(300)]
    with CassetteWriter(path) as w:
        for it in items:
            w.append(it)
    text = path.read_text()
    path.write_text(text[: text.rfind("\n- request:") + 40])
    assert load(path) == items[:-1] == reference_load(path)
