"""Origin rewriting keeps clients on the proxy; Retry-After rewriting makes recorded polling fast."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ConfigError
from proxy.model import Headers, Response
from proxy.rewrite import URL_HEADERS, parse_retry_after, rewrite_origins, rewrite_retry_after

UP = "https://atlas.microsoft.com"
PROXY = "http://127.0.0.1:8080"
JSON_CT = ("Content-Type", "application/json")


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize("name", [*URL_HEADERS, "Location", "Operation-Location", "Azure-AsyncOperation"])
def test_each_url_header_is_rewritten(name: str) -> None:
    response = Response(202, headers=((name, f"{UP}/tilesets/operations/1?api-version=2.0"), ("X-Other", UP)))
    out = rewrite_origins(response, [UP], PROXY)
    assert out.header(name) == f"{PROXY}/tilesets/operations/1?api-version=2.0"
    assert out.header("x-other") == UP  # not a URL header
    assert response.header(name) == f"{UP}/tilesets/operations/1?api-version=2.0"  # input untouched


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (UP, PROXY),
        (f"{UP}?a=1", f"{PROXY}?a=1"),
        (f"{UP}#frag", f"{PROXY}#frag"),
        ("HTTPS://Atlas.Microsoft.COM/x", f"{PROXY}/x"),
        ("https://atlas.microsoft.com:443/x", f"{PROXY}/x"),
        ("https://atlas.microsoft.com.evil/x", "https://atlas.microsoft.com.evil/x"),
        ("https://atlas.microsoft.comx/x", "https://atlas.microsoft.comx/x"),
        ("https://atlas.microsoft.com:8443/x", "https://atlas.microsoft.com:8443/x"),
        ("http://atlas.microsoft.com/x", "http://atlas.microsoft.com/x"),
        ("/relative/path", "/relative/path"),
        ("https://other.example/x", "https://other.example/x"),
        ("https://atlas.microsoft.com:notaport/x", "https://atlas.microsoft.com:notaport/x"),
    ],
)
def test_header_boundaries_and_ports(value: str, expected: str) -> None:
    out = rewrite_origins(Response(201, headers=(("Location", value),)), [UP], PROXY)
    assert out.header("location") == expected


def test_default_port_in_origin_list_and_trailing_slash_in_proxy() -> None:
    response = Response(201, headers=(("Location", "https://h.example/x"),))
    out = rewrite_origins(response, ["https://h.example:443/"], "http://127.0.0.1:9/")
    assert out.header("location") == "http://127.0.0.1:9/x"
    response = Response(201, headers=(("Location", "http://h.example:80/x"),))
    assert rewrite_origins(response, ["http://h.example"], PROXY).header("location") == f"{PROXY}/x"


def test_same_object_when_nothing_changed() -> None:
    response = Response(
        200, headers=(("Location", "https://elsewhere/x"), JSON_CT), body=b'{"a": "https://elsewhere/y"}'
    )
    assert rewrite_origins(response, [UP], PROXY) is response
    assert rewrite_origins(response, [], PROXY) is response


# ------------------------------------------------------------------- bodies


def test_json_body_nested_urls_rest_byte_identical() -> None:
    body = (
        b'{\n  "status": "Succeeded",\n  "resourceLocation": "https://atlas.microsoft.com/tilesets/ts1?api-version=2.0",\n'
        b'  "value": [{"id": 1}],\n  "nextLink": "https://atlas.microsoft.com/x?$skip=2",\n'
        b'  "@odata.nextLink": "https://atlas.microsoft.com",\n'
        b'  "deep": {"ops": [{"href": "https://atlas.microsoft.com:443/op/9#f"}]},\n'
        b'  "note": "https://atlas.microsoft.com.evil/x and https://atlas.microsoft.comx",\n'
        b'  "n": 1.50\n}'
    )
    out = rewrite_origins(Response(200, headers=(JSON_CT,), body=body), [UP], PROXY)
    expected = (
        body.replace(b"https://atlas.microsoft.com/", b"http://127.0.0.1:8080/")
        .replace(b'"https://atlas.microsoft.com"', b'"http://127.0.0.1:8080"')
        .replace(b"https://atlas.microsoft.com:443/", b"http://127.0.0.1:8080/")
    )
    assert out.body == expected
    doc = json.loads(out.body)
    assert doc["resourceLocation"] == f"{PROXY}/tilesets/ts1?api-version=2.0"
    assert doc["deep"]["ops"][0]["href"] == f"{PROXY}/op/9#f"
    assert doc["note"] == "https://atlas.microsoft.com.evil/x and https://atlas.microsoft.comx"


def test_json_body_escaped_slashes() -> None:
    body = (
        b'{"nextLink":"https:\\/\\/atlas.microsoft.com\\/page\\/2",'
        b'"other":"https:\\/\\/atlas.microsoft.com.evil\\/"}'
    )
    out = rewrite_origins(Response(200, headers=(JSON_CT,), body=body), [UP], PROXY)
    assert out.body == (
        b'{"nextLink":"http:\\/\\/127.0.0.1:8080\\/page\\/2","other":"https:\\/\\/atlas.microsoft.com.evil\\/"}'
    )
    assert json.loads(out.body)["nextLink"] == f"{PROXY}/page/2"


def test_json_string_inside_json_string() -> None:
    inner = json.dumps({"url": f"{UP}/a"})
    body = json.dumps({"payload": inner, "bare": UP}).encode()
    out = rewrite_origins(Response(200, headers=(JSON_CT,), body=body), [UP], PROXY)
    doc = json.loads(out.body)
    assert json.loads(doc["payload"]) == {"url": f"{PROXY}/a"}
    assert doc["bare"] == PROXY


def test_json_detected_by_leading_bracket_without_content_type() -> None:
    body = b'  [ "https://atlas.microsoft.com/x" ]'
    out = rewrite_origins(Response(200, body=body), [UP], PROXY)
    assert out.body == b'  [ "http://127.0.0.1:8080/x" ]'


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("text/html", b'<a href="https://atlas.microsoft.com/x">x</a>'),
        ("text/plain", b"see https://atlas.microsoft.com/x"),
        ("application/octet-stream", b"\x00https://atlas.microsoft.com/x"),
        ("application/xml", b"<u>https://atlas.microsoft.com/x</u>"),
    ],
)
def test_non_json_bodies_untouched(ctype: str, body: bytes) -> None:
    response = Response(200, headers=(("Content-Type", ctype),), body=body)
    assert rewrite_origins(response, [UP], PROXY) is response


def test_several_origins() -> None:
    body = b'{"a":"https://one.example/x","b":"http://two.example:8000/y","c":"https://three.example/z"}'
    out = rewrite_origins(
        Response(200, headers=(JSON_CT,), body=body),
        ["https://one.example", "http://two.example:8000"],
        PROXY,
    )
    assert (
        out.body
        == b'{"a":"http://127.0.0.1:8080/x","b":"http://127.0.0.1:8080/y","c":"https://three.example/z"}'
    )


@settings(max_examples=200, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=60).map(lambda t: json.dumps({"u": f"{UP}{t}", "t": t}).encode()),
        st.text(alphabet='htps:/\\"{}[]?#.atlas', max_size=80).map(str.encode),
    ),
    location=st.text(max_size=40),
    origin=st.sampled_from([UP, "https://atlas.microsoft.com:443", "http://[::1]:9", "https://h:0", "x"]),
    json_ct=st.booleans(),
)
def test_property_rewrite_origins_never_raises(
    body: bytes, location: str, origin: str, json_ct: bool
) -> None:
    headers: Headers = (("Location", location), ("Content-Type", "application/json" if json_ct else "x/y"))
    response = Response(200, headers=headers, body=body)
    out = rewrite_origins(response, [origin], PROXY)
    assert isinstance(out, Response)
    if UP.encode() not in body and "atlas" not in location.lower():
        assert out == response


# ------------------------------------------------------------- retry-after


def test_rewrite_retry_after_every_form() -> None:
    response = Response(
        202,
        headers=(
            ("Retry-After", "30"),
            ("retry-after-ms", "30000"),
            ("x-ms-retry-after-ms", "30000"),
            ("Location", "/op"),
        ),
    )
    out = rewrite_retry_after(response, 0)
    assert out.headers == (
        ("Retry-After", "0"),
        ("retry-after-ms", "0"),
        ("x-ms-retry-after-ms", "0"),
        ("Location", "/op"),
    )
    # a fraction of a second is no valid Retry-After (RFC 9110: 1*DIGIT): on a 202 it goes in ms only, so
    # azure-core (which reads Retry-After first) sleeps the milliseconds
    assert rewrite_retry_after(response, 0.05).headers == (
        ("retry-after-ms", "50"),
        ("x-ms-retry-after-ms", "50"),
        ("Location", "/op"),
    )
    assert rewrite_retry_after(response, 2.0).header("retry-after") == "2"
    assert rewrite_retry_after(response, 1.25).header("x-ms-retry-after-ms") == "1250"


@pytest.mark.parametrize(
    ("status", "headers", "seconds", "expected"),
    [
        (200, (("Retry-After", "30"),), 0.05, (("retry-after-ms", "50"),)),
        (
            202,
            (("Retry-After", "30"), ("Location", "/op")),
            0.01,
            (("retry-after-ms", "10"), ("Location", "/op")),
        ),
        (200, (("Retry-After", "30"),), 1.5, (("retry-after-ms", "1500"),)),
        (200, (("Retry-After", "30"),), 0.0004, (("retry-after-ms", "1"),)),  # never 0: azure-core's "none"
        (200, (("Retry-After", "30"),), 0.07, (("retry-after-ms", "70"),)),  # 70.00000000000001 is 70
        # an error answer keeps Retry-After, rounded up: its presence is what makes clients retry
        (429, (("Retry-After", "30"),), 0.05, (("Retry-After", "1"), ("retry-after-ms", "50"))),
        (
            503,
            (("Retry-After", "3"), ("x-ms-retry-after-ms", "3000")),
            0.05,
            (("Retry-After", "1"), ("x-ms-retry-after-ms", "50")),
        ),
        (503, (("Retry-After", "3"),), 2.5, (("Retry-After", "3"), ("retry-after-ms", "2500"))),
        (429, (("Retry-After", "30"),), 0, (("Retry-After", "0"),)),
        (429, (("Retry-After", "30"),), 2, (("Retry-After", "2"),)),
        (200, (("x-ms-retry-after-ms", "5000"),), 0.05, (("x-ms-retry-after-ms", "50"),)),
    ],
)
def test_rewrite_retry_after_sends_only_valid_headers(
    status: int, headers: Headers, seconds: float, expected: Headers
) -> None:
    out = rewrite_retry_after(Response(status, headers=headers), seconds)
    assert out.headers == expected
    for name, value in out.headers:
        if name.lower() == "retry-after":
            assert value.isdigit()  # RFC 9110 delay-seconds
    told = parse_retry_after(out.headers)
    assert told is not None and seconds <= told < seconds + 0.001  # the shortest: what was asked, in ms


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([200, 201, 202, 204, 301, 400, 429, 500, 503]),
    st.floats(min_value=0, max_value=100_000, allow_nan=False, allow_infinity=False),
)
def test_property_rewritten_retry_after_is_valid_http(status: int, seconds: float) -> None:
    out = rewrite_retry_after(
        Response(status, headers=(("Retry-After", "9"), ("x-ms-retry-after-ms", "9"))), seconds
    )
    for name, value in out.headers:
        assert value.isdigit(), (name, value)
    told = parse_retry_after(out.headers)
    assert told is not None and told >= seconds - 1e-9 and told - seconds < 0.001 + 1e-9


def test_rewrite_retry_after_http_date_becomes_seconds() -> None:
    response = Response(202, headers=(("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),))
    assert rewrite_retry_after(response, 1).headers == (("Retry-After", "1"),)


def test_rewrite_retry_after_only_present_headers_and_same_object() -> None:
    absent = Response(200, headers=(("Content-Type", "text/plain"),))
    assert rewrite_retry_after(absent, 0) is absent
    already = Response(202, headers=(("Retry-After", "0"),))
    assert rewrite_retry_after(already, 0) is already
    only_ms = Response(202, headers=(("x-ms-retry-after-ms", "5000"),))
    assert rewrite_retry_after(only_ms, 0.5).headers == (("x-ms-retry-after-ms", "500"),)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_rewrite_retry_after_rejects_bad_delay(bad: float) -> None:
    with pytest.raises(ConfigError):
        rewrite_retry_after(Response(202, headers=(("Retry-After", "1"),)), bad)


NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("Retry-After", "30"),), 30.0),
        ((("retry-after", " 2.5 "),), 2.5),
        ((("Retry-After", "0"),), 0.0),
        ((("Retry-After", formatdate(NOW + 10, usegmt=True)),), 10.0),
        ((("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),), 0.0),
        ((("Retry-After", formatdate(NOW - 100, usegmt=True)),), 0.0),  # in the past: clamped
        ((("Retry-After", "Wed, 21 Oct 2015 07:28:05 -0000"),), 5.0),
        ((("retry-after-ms", "1500"),), 1.5),
        ((("x-ms-retry-after-ms", "250"),), 0.25),
        ((("Retry-After", "junk"), ("retry-after-ms", "100")), 0.1),
        ((("Retry-After", "7"), ("retry-after-ms", "100")), 0.1),  # the shortest counts
        ((("Retry-After", "1"), ("x-ms-retry-after-ms", "2000")), 1.0),
        ((), None),
        ((("Content-Type", "text/plain"),), None),
        ((("Retry-After", "soon"),), None),
        ((("Retry-After", "-5"),), None),
        ((("Retry-After", "nan"),), None),
        ((("Retry-After", "inf"),), None),
        ((("Retry-After", "1_000"),), None),
        ((("Retry-After", ""),), None),
        ((("Retry-After", "Wed, 99 Foo 2015 07:28:00 GMT"),), None),
        ((("x-ms-retry-after-ms", "abc"),), None),
    ],
)
def test_parse_retry_after(headers: Headers, expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_date_defaults_to_wall_clock() -> None:
    far = formatdate(4_000_000_000, usegmt=True)
    seconds = parse_retry_after((("Retry-After", far),))
    assert seconds is not None and seconds > 1_000_000


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["Retry-After", "retry-after-ms", "x-ms-retry-after-ms"]))
def test_property_parse_retry_after_never_raises(value: str, name: str) -> None:
    result = parse_retry_after(((name, value),), now=NOW)
    assert result is None or result >= 0
