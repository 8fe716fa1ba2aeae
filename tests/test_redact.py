"""Redaction: no secret reaches a saved interaction, placeholders are stable, matching still works."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.model import Interaction, Request, Response, header_value
from proxy.redact import (
    DEFAULT_HEADERS,
    DEFAULT_JSON_FIELDS,
    DEFAULT_QUERY,
    MATCH_PLACEHOLDER,
    Redactor,
    is_secret_name,
    shown_url,
)

API = "https://api.example.com"
JSON_CT = ("Content-Type", "application/json")
FORM_CT = ("Content-Type", "application/x-www-form-urlencoded")


def exchange(request: Request | None = None, response: Response | None = None) -> Interaction:
    return Interaction(
        request=request or Request("GET", f"{API}/items"),
        response=response or Response(200, "OK"),
    )


def assert_no_secret(interaction: Interaction, *secrets: str) -> None:
    text = repr(interaction)
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked"


# --------------------------------------------------------------- headers


@pytest.mark.parametrize("name", DEFAULT_HEADERS)
def test_each_default_header_is_redacted_in_request_and_response(name: str) -> None:
    secret = f"s3cret-{name}-value"
    value = f"k={secret}" if "cookie" in name else secret
    red = Redactor()
    saved = red.interaction(
        exchange(
            Request("GET", f"{API}/x", headers=((name.title(), value), ("Accept", "*/*"))),
            Response(200, "OK", headers=((name.upper(), value),)),
        )
    )
    assert_no_secret(saved, secret)
    assert "<REDACTED-1>" in (saved.request.header(name) or "")
    assert "<REDACTED-1>" in (saved.response.header(name) or "")
    assert saved.request.header("accept") == "*/*"
    # names keep the case they were sent in
    assert saved.request.headers[0][0] == name.title()


def test_authorization_keeps_scheme() -> None:
    red = Redactor()
    first = red.interaction(
        exchange(Request("GET", f"{API}/a", headers=(("Authorization", "Bearer eyJhbGciOi.abc.def"),)))
    )
    second = red.interaction(
        exchange(Request("GET", f"{API}/b", headers=(("authorization", "Basic dXNlcjpodW50ZXIy"),)))
    )
    assert first.request.header("authorization") == "Bearer <REDACTED-1>"
    assert second.request.header("authorization") == "Basic <REDACTED-2>"
    assert_no_secret(first, "eyJhbGciOi.abc.def")
    assert_no_secret(second, "dXNlcjpodW50ZXIy")


def test_authorization_without_scheme_hidden_whole() -> None:
    saved = Redactor().request(Request("GET", API, headers=(("Authorization", "rawkey123"),)))
    assert saved.header("authorization") == "<REDACTED-1>"


def test_proxy_authorization_keeps_scheme() -> None:
    saved = Redactor().request(Request("GET", API, headers=(("Proxy-Authorization", "Basic Zm9vOmJhcg=="),)))
    assert saved.header("proxy-authorization") == "Basic <REDACTED-1>"


def test_cookie_each_value_hidden() -> None:
    saved = Redactor().request(
        Request("GET", API, headers=(("Cookie", "session=abc123secret; theme=dark-secret"),))
    )
    assert saved.header("cookie") == "session=<REDACTED-1>; theme=<REDACTED-2>"


def test_set_cookie_keeps_attributes() -> None:
    saved = Redactor().response(
        Response(
            200,
            headers=(
                ("Set-Cookie", "session=abc123secret; Path=/; HttpOnly; Secure; SameSite=Lax"),
                ("Set-Cookie", "csrf=zzz999; Path=/api"),
            ),
        )
    )
    values = [v for k, v in saved.headers if k == "Set-Cookie"]
    assert values == [
        "session=<REDACTED-1>; Path=/; HttpOnly; Secure; SameSite=Lax",
        "csrf=<REDACTED-2>; Path=/api",
    ]


def test_subscription_key_in_header_and_query_share_placeholder() -> None:
    key = "0123456789abcdef0123456789abcdef"
    saved = Redactor().request(
        Request(
            "GET",
            f"https://atlas.microsoft.com/tilesets?api-version=2.0&subscription-key={key}",
            headers=(("Ocp-Apim-Subscription-Key", key),),
        )
    )
    assert saved.url == "https://atlas.microsoft.com/tilesets?api-version=2.0&subscription-key=<REDACTED-1>"
    assert saved.header("ocp-apim-subscription-key") == "<REDACTED-1>"


def test_extra_header_names_are_case_insensitive() -> None:
    red = Redactor(headers=(*DEFAULT_HEADERS, "X-Custom-Secret"))
    saved = red.request(Request("GET", API, headers=(("x-CUSTOM-secret", "hush"),)))
    assert saved.header("x-custom-secret") == "<REDACTED-1>"


# ----------------------------------------------------------------- query


@pytest.mark.parametrize("name", DEFAULT_QUERY)
def test_each_default_query_param_is_redacted(name: str) -> None:
    secret = f"qs-{name}-secret"
    saved = Redactor().request(Request("GET", f"{API}/x?keep=1&{name}={secret}&after=2#frag"))
    assert saved.url == f"{API}/x?keep=1&{name}=<REDACTED-1>&after=2#frag"
    assert_no_secret(exchange(saved), secret)


def test_query_names_case_insensitive_and_extra() -> None:
    red = Redactor(query=(*DEFAULT_QUERY, "Session"))
    saved = red.request(Request("GET", f"{API}/x?SIG=abc%2Bdef%3D&session=42&x=1"))
    assert saved.url == f"{API}/x?SIG=<REDACTED-1>&session=<REDACTED-2>&x=1"


def test_blank_query_value_left_alone() -> None:
    request = Request("GET", f"{API}/x?sig=&code")
    assert Redactor().request(request) is request


def test_sas_sig_in_url_location_and_json_resource_location() -> None:
    sig = "Zm9vYmFyYmF6cXV4%2Bsig%3D"
    sas = f"https://acct.blob.core.windows.net/c/b.zip?sv=2021-08-06&se=2030-01-01&sig={sig}"
    body = json.dumps(
        {"status": "Succeeded", "resourceLocation": sas, "nested": [{"href": f"see {sas} now"}]},
        indent=2,
    ).encode()
    red = Redactor()
    saved = red.interaction(
        exchange(
            Request("PUT", sas, body=b"zipbytes"),
            Response(
                201,
                "Created",
                headers=(("Location", sas), ("Operation-Location", f"{sas}&x=1"), JSON_CT),
                body=body,
            ),
        )
    )
    assert_no_secret(saved, sig, "Zm9vYmFyYmF6cXV4")
    redacted = sas.replace(sig, "<REDACTED-1>")
    assert saved.request.url == redacted
    assert saved.request.body == b"zipbytes"
    assert saved.response.header("location") == redacted
    assert saved.response.header("operation-location") == f"{redacted}&x=1"
    doc = json.loads(saved.response.body)
    assert doc == {
        "status": "Succeeded",
        "resourceLocation": redacted,
        "nested": [{"href": f"see {redacted} now"}],
    }
    assert list(doc) == ["status", "resourceLocation", "nested"]
    assert b"\n" not in saved.response.body  # re-serialized compactly


def test_sig_in_xml_body_with_escaped_ampersands() -> None:
    body = b"<Blob><Url>https://a.blob.core.windows.net/c/b?sv=1&amp;sig=xmlsecret99&amp;se=2</Url></Blob>"
    saved = Redactor().response(Response(200, headers=(("Content-Type", "application/xml"),), body=body))
    assert saved.body == body.replace(b"xmlsecret99", b"<REDACTED-1>")


def test_url_in_arbitrary_request_header() -> None:
    source = "https://src.blob.core.windows.net/c/b?sv=1&sig=copysecret"
    saved = Redactor().request(Request("PUT", API, headers=(("x-ms-copy-source", source),)))
    assert saved.header("x-ms-copy-source") == source.replace("copysecret", "<REDACTED-1>")


# ------------------------------------------------------------ JSON and form


def test_configured_json_field_nested_in_request_and_response() -> None:
    red = Redactor(json_fields=(*DEFAULT_JSON_FIELDS, "password"))
    request_body = json.dumps(
        {"user": "ann", "auth": {"Password": "hunter2", "list": [{"password": "pw-2"}]}}
    )
    response_body = json.dumps({"account": {"password": "hunter2", "ok": True}, "items": [1, 2.5, None]})
    saved = red.interaction(
        exchange(
            Request("POST", f"{API}/login", headers=(JSON_CT,), body=request_body.encode()),
            Response(200, headers=(JSON_CT,), body=response_body.encode()),
        )
    )
    assert_no_secret(saved, "hunter2", "pw-2")
    assert json.loads(saved.request.body) == {
        "user": "ann",
        "auth": {"Password": "<REDACTED-1>", "list": [{"password": "<REDACTED-2>"}]},
    }
    assert saved.response.body == b'{"account":{"password":"<REDACTED-1>","ok":true},"items":[1,2.5,null]}'


def test_json_field_non_string_values() -> None:
    red = Redactor(json_fields=("pin", "creds", "flag", "none"))
    body = b'{"pin": 1234, "creds": {"a": "b"}, "flag": true, "none": null, "empty": ""}'
    saved = red.request(Request("POST", API, headers=(JSON_CT,), body=body))
    assert json.loads(saved.body) == {
        "pin": "<REDACTED-1>",
        "creds": "<REDACTED-2>",
        "flag": True,
        "none": None,
        "empty": "",
    }


def test_json_detected_without_content_type() -> None:
    red = Redactor(json_fields=("password",))
    saved = red.request(Request("POST", API, body=b'  [{"password": "hunter2"}]'))
    assert saved.body == b'[{"password":"<REDACTED-1>"}]'


def test_oauth_token_response_redacted_by_default() -> None:
    body = b'{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0eXAi.tok.sig"}'
    saved = Redactor().response(Response(200, headers=(JSON_CT,), body=body))
    assert saved.body == b'{"token_type":"Bearer","expires_in":3599,"access_token":"<REDACTED-1>"}'


def test_form_body_fields() -> None:
    red = Redactor(json_fields=("password",))
    body = (
        b"grant_type=client_credentials&client_id=app&client_secret=s3cr%2Bet&username=ann&password=hunter2"
    )
    saved = red.request(Request("POST", f"{API}/token", headers=(FORM_CT,), body=body))
    assert saved.body == (
        b"grant_type=client_credentials&client_id=app&client_secret=<REDACTED-1>"
        b"&username=ann&password=<REDACTED-2>"
    )


def test_untouched_bodies_are_byte_identical() -> None:
    red = Redactor(json_fields=("password",))
    pretty = b'{\n  "name": "x",\n  "url": "https://h/p?a=1",\n  "n": 1.50\n}'
    binary = bytes(range(256))
    for request, response in [
        (
            Request("POST", API, headers=(JSON_CT,), body=pretty),
            Response(200, headers=(JSON_CT,), body=pretty),
        ),
        (
            Request("POST", API, body=binary),
            Response(200, headers=(("Content-Type", "application/octet-stream"),), body=binary),
        ),
        (
            Request("POST", API, headers=(FORM_CT,), body=b"a=1&b=%20"),
            Response(200, headers=(("Content-Type", "text/plain"),), body=b"not json {"),
        ),
        (
            Request("POST", API, headers=(JSON_CT,), body=b'{"broken": '),
            Response(200, headers=(JSON_CT,), body=b"\xff\xfe{}"),
        ),
    ]:
        original = exchange(request, response)
        assert red.interaction(original) is original


def test_response_echo_of_request_secret_is_swept() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.payload.signature"
    red = Redactor()
    saved = red.interaction(
        exchange(
            Request("GET", f"{API}/echo", headers=(("Authorization", f"Bearer {token}"),)),
            Response(
                200,
                headers=(("Content-Type", "text/plain"), ("X-Echo", f"Bearer {token}")),
                body=f"you sent Bearer {token}".encode(),
            ),
        )
    )
    assert_no_secret(saved, token)
    assert saved.response.body == b"you sent Bearer <REDACTED-1>"
    assert saved.response.header("x-echo") == "Bearer <REDACTED-1>"


# ----------------------------------------------------------- placeholders


def test_same_secret_same_placeholder_different_secret_different_placeholder() -> None:
    red = Redactor()

    def saved_auth(token: str) -> str | None:
        request = Request("GET", API, headers=(("Authorization", f"Bearer {token}"),))
        return red.request(request).header("authorization")

    assert saved_auth("token-A") == "Bearer <REDACTED-1>"
    assert saved_auth("token-B") == "Bearer <REDACTED-2>"
    assert saved_auth("token-A") == "Bearer <REDACTED-1>"
    # across places: the same value in a query parameter reuses the number
    assert red.request(Request("GET", f"{API}/?token=token-B")).url == f"{API}/?token=<REDACTED-2>"
    # a separate redactor starts again
    assert Redactor().request(Request("GET", f"{API}/?token=token-B")).url == f"{API}/?token=<REDACTED-1>"


def test_redacting_a_saved_interaction_again_changes_nothing() -> None:
    red = Redactor(json_fields=("password",))
    original = exchange(
        Request(
            "POST",
            f"{API}/x?sig=abc",
            headers=(("Authorization", "Bearer tok"), ("Cookie", "a=1; b=2"), JSON_CT),
            body=b'{"password":"pw"}',
        ),
        Response(200, headers=(("Set-Cookie", "s=v; Path=/"), ("Location", f"{API}/y?sig=def"))),
    )
    once = red.interaction(original)
    again = Redactor(json_fields=("password",)).interaction(once)
    assert again == once


def test_disabled_redactor_is_a_no_op() -> None:
    red = Redactor(json_fields=("password",), enabled=False)
    original = exchange(
        Request(
            "POST",
            f"{API}/x?sig=abc",
            headers=(("Authorization", "Bearer tok"), JSON_CT),
            body=b'{"password":"pw"}',
        ),
        Response(200, headers=(("Set-Cookie", "s=v"),)),
    )
    assert red.interaction(original) is original
    assert red.request(original.request) is original.request
    assert red.for_matching(original.request) is original.request


def test_properties_expose_lower_case_names() -> None:
    red = Redactor(headers=("X-A",), query=("Q",), json_fields=("Pw",))
    assert red.header_names == frozenset({"x-a"})
    assert red.query_names == frozenset({"q"})
    assert red.json_fields == frozenset({"pw"})


# -------------------------------------------------------------- matching


def test_for_matching_live_secret_equals_saved_placeholder() -> None:
    red = Redactor(json_fields=("password",))
    live = Request(
        "POST",
        f"{API}/login?api-version=1&subscription-key=LIVEKEY&sig=abc%2Bdef",
        headers=(("Authorization", "Bearer live-token"), ("Cookie", "a=1; b=2"), JSON_CT),
        body=b'{"user":"ann","password":"hunter2"}',
    )
    saved = red.request(live)
    assert saved != live
    assert red.for_matching(saved) == red.for_matching(live)
    # a fresh redactor (as at replay time, in another process) agrees
    assert Redactor(json_fields=("password",)).for_matching(live) == red.for_matching(saved)
    normalized = red.for_matching(live)
    assert (
        normalized.url
        == f"{API}/login?api-version=1&subscription-key={MATCH_PLACEHOLDER}&sig={MATCH_PLACEHOLDER}"
    )
    assert normalized.header("authorization") == MATCH_PLACEHOLDER
    assert json.loads(normalized.body) == {"user": "ann", "password": MATCH_PLACEHOLDER}


def test_for_matching_different_secrets_match_but_other_differences_do_not() -> None:
    red = Redactor()
    a = Request("GET", f"{API}/x?sig=one&n=1", headers=(("Authorization", "Bearer one"),))
    b = Request("GET", f"{API}/x?sig=two&n=1", headers=(("Authorization", "Basic two"),))
    c = Request("GET", f"{API}/x?sig=one&n=2", headers=(("Authorization", "Bearer one"),))
    assert red.for_matching(a) == red.for_matching(b)
    assert red.for_matching(a) != red.for_matching(c)


def test_for_matching_placeholder_sent_back_by_a_client() -> None:
    # a replayed token response handed the client "<REDACTED-5>"; it sends it wherever it likes
    red = Redactor()
    saved = Request("GET", f"{API}/x?state=<REDACTED-5>", headers=(("X-Token", "<REDACTED-5>"),))
    live = Request("GET", f"{API}/x?state=%3CREDACTED-5%3E", headers=(("X-Token", "<REDACTED-5>"),))
    assert red.for_matching(saved) == red.for_matching(live)
    assert red.for_matching(saved).url == f"{API}/x?state={MATCH_PLACEHOLDER}"


def test_for_matching_form_and_url_in_json() -> None:
    red = Redactor()
    form_live = Request("POST", API, headers=(FORM_CT,), body=b"client_secret=real&scope=x")
    assert red.for_matching(form_live) == red.for_matching(red.request(form_live))
    url_live = Request(
        "POST", API, headers=(JSON_CT,), body=b'{"source": "https://s.blob.core.windows.net/c?sig=real"}'
    )
    assert red.for_matching(url_live) == red.for_matching(red.request(url_live))


def test_for_matching_is_identity_when_nothing_to_redact() -> None:
    red = Redactor(json_fields=("password",))
    plain = Request(
        "POST", f"{API}/x?a=1", headers=(("Accept", "*/*"), JSON_CT), body=b'{"name": "x", "n": [1, 2]}'
    )
    assert red.for_matching(plain) is plain
    big = Request("PUT", f"{API}/blob", body=b"\x00" * 100_000)
    assert red.for_matching(big) is big


def test_for_matching_remembers_bodiless_requests_and_answers_each_alike() -> None:
    """A poller sends one bodiless request again and again: made once, by method, URL and headers."""
    red = Redactor()
    secret = Request("GET", f"{API}/x?sig=one", headers=(("Authorization", "Bearer one"),))
    first = red.for_matching(secret)
    again = red.for_matching(Request("GET", f"{API}/x?sig=one", headers=(("Authorization", "Bearer one"),)))
    assert again == first and first.url == f"{API}/x?sig={MATCH_PLACEHOLDER}"
    assert again.header("authorization") == MATCH_PLACEHOLDER
    plain = Request("GET", f"{API}/x?n=1", headers=(("Accept", "*/*"),))
    assert red.for_matching(plain) is plain
    twin = Request("GET", f"{API}/x?n=1", headers=(("Accept", "*/*"),))
    assert red.for_matching(twin) is twin  # the request asked about, not the one remembered
    other = Request("POST", f"{API}/x?sig=one", headers=(("Authorization", "Bearer one"),))
    assert red.for_matching(other).method == "POST"
    with_body = Request("POST", API, headers=(FORM_CT,), body=b"client_secret=real")
    assert b"real" not in red.for_matching(with_body).body


# ------------------------------------------- body type: declared, duplicated, unparsed

SAS_SECRET = "Zq222222"
SAS_IN_TEXT = f"https://h.example/p?x=1&sig={SAS_SECRET}&y=2"


def test_regression_empty_duplicate_content_type_and_json_string_body() -> None:
    # found by the property test: an empty Content-Type field ahead of "application/json" hid the
    # JSON type, and a body that is a JSON string (no leading [ or {) was then never searched
    body = json.dumps(SAS_IN_TEXT).encode()
    red = Redactor(json_fields=(*DEFAULT_JSON_FIELDS, "password"))
    live = Request(
        "POST",
        f"{API}/p?sig={SAS_SECRET}&a=1",
        headers=(("Content-Type", ""), ("Authorization", f"Bearer {SAS_SECRET}"), JSON_CT),
        body=body,
    )
    saved = red.interaction(exchange(live, Response(200, headers=(("Content-Type", ""), JSON_CT), body=body)))
    assert_no_secret(saved, SAS_SECRET)
    assert saved.request.body == b'"https://h.example/p?x=1&sig=<REDACTED-1>&y=2"'
    assert saved.response.body == b'"https://h.example/p?x=1&sig=<REDACTED-1>&y=2"'
    assert saved.request.url == f"{API}/p?sig=<REDACTED-1>&a=1"
    assert red.for_matching(saved.request) == red.for_matching(live)
    assert red.for_matching(live).body == b'"https://h.example/p?x=1&sig=<REDACTED>&y=2"'


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/octet-stream", "text/plain", "application/json", "multipart/mixed", "image/png"],
)
def test_url_secret_found_in_body_of_any_type(content_type: str | None) -> None:
    red = Redactor()
    headers = () if content_type is None else (("Content-Type", content_type),)
    body = f"--x\r\nsee {SAS_IN_TEXT}\r\n".encode() + bytes(range(0x80, 0x90))
    live = Request("POST", API, headers=headers, body=body)
    saved = red.request(live)
    assert saved.body == body.replace(SAS_SECRET.encode(), b"<REDACTED-1>")
    assert red.for_matching(saved) == red.for_matching(live)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/xml", b"<U>https://b.example/c?sv=1&amp;sig=SECRET99&amp;se=2</U>"),
        ("text/plain", b"copy from https://b.example/c?sig=SECRET99 please"),
        ("application/json", b"https://b.example/c?sig=SECRET99 (not json)"),
    ],
)
def test_text_body_url_secret_normalized_for_matching_like_saved(content_type: str, body: bytes) -> None:
    # saving hid the secret in text bodies but matching left it: a live request never matched its own save
    red = Redactor()
    live = Request("PUT", f"{API}/x", headers=(("Content-Type", content_type),), body=body)
    saved = red.request(live)
    assert b"SECRET99" not in saved.body
    assert red.for_matching(live).body == body.replace(b"SECRET99", MATCH_PLACEHOLDER.encode())
    assert red.for_matching(saved) == red.for_matching(live)


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (
            "application/x-ndjson",
            b'{"access_token":"tok-AAAA1111","n":1}\n{"access_token": "tok-BBBB2222"}\n',
            b'{"access_token":"<REDACTED-1>","n":1}\n{"access_token": "<REDACTED-2>"}\n',
        ),
        (
            "text/event-stream",
            b'event: token\ndata: {"refresh_token":"tok-AAAA1111"}\n\n',
            b'event: token\ndata: {"refresh_token":"<REDACTED-1>"}\n\n',
        ),
        (
            "application/javascript",
            b'cb({"Access_Token":"tok-\\"AAAA1111","pin":1234});',
            b'cb({"Access_Token":"<REDACTED-1>","pin":"<REDACTED-2>"});',
        ),
        (  # truncated JSON, and a key written with an escape
            "application/json",
            b'{"acc\\u0065ss_token":"tok-AAAA1111","more":[1,',
            b'{"acc\\u0065ss_token":"<REDACTED-1>","more":[1,',
        ),
        (  # JSON text that writes slashes and ampersands escaped, unparsed
            "application/javascript",
            b'x = "https:\\/\\/h.example\\/p?x=1\\u0026sig=tok-AAAA1111\\u0026y=2";',
            b'x = "https:\\/\\/h.example\\/p?x=1\\u0026sig=<REDACTED-1>\\u0026y=2";',
        ),
        (  # a URL inside a form field's value, unencoded
            "application/x-www-form-urlencoded",
            b"client_id=app&redirect=https://h.example/cb?code=tok-AAAA1111&scope=x",
            b"client_id=app&redirect=https://h.example/cb?code=<REDACTED-1>&scope=x",
        ),
    ],
    ids=["ndjson", "sse", "jsonp", "truncated-escaped-key", "escaped-url", "form-url"],
)
def test_json_looking_text_that_does_not_parse(content_type: str, body: bytes, expected: bytes) -> None:
    red = Redactor(json_fields=(*DEFAULT_JSON_FIELDS, "pin"))
    live = Request("POST", API, headers=(("Content-Type", content_type),), body=body)
    saved = red.request(live)
    assert saved.body == expected
    assert red.for_matching(saved) == red.for_matching(live)
    assert b"tok-" not in red.for_matching(live).body
    assert red.response(Response(200, headers=(("Content-Type", content_type),), body=body)).body == expected


def test_escaped_json_key_normalized_for_matching() -> None:
    # the matcher's cheap pre-check looked for the literal key name and missed "p\u0061ssword"
    red = Redactor(json_fields=("password",))
    live = Request("POST", API, headers=(JSON_CT,), body=b'{"user":"ann","p\\u0061ssword":"hunter2"}')
    saved = red.request(live)
    assert json.loads(saved.body) == {"user": "ann", "password": "<REDACTED-1>"}
    assert red.for_matching(saved) == red.for_matching(live)


def test_binary_body_without_url_untouched_and_not_copied() -> None:
    red = Redactor(json_fields=("password",))
    for body in (bytes(range(256)) * 64, b'{"password"' + bytes(range(256))):
        live = Request(
            "PUT", f"{API}/blob", headers=(("Content-Type", "application/octet-stream"),), body=body
        )
        assert red.request(live) is live
        assert red.for_matching(live) is live


# -------------------------------------------------------------- property

SECRET = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=6, max_size=16).map(lambda s: f"Zq{s}")
KEY = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet='abcdefghij :/?&=.\\"\n<>{}[]é\u2603', max_size=12),
)


@st.composite
def body_with_secrets(draw: st.DrawFn) -> tuple[object, list[str]]:
    """A JSON-ish document with secrets under configured keys and inside URL query strings."""
    secrets: list[str] = []

    def leaf() -> object:
        kind = draw(st.integers(0, 3))
        if kind == 0:
            secret = draw(SECRET)
            secrets.append(secret)
            return {draw(st.sampled_from(["password", "Password", "access_token"])): secret}
        if kind == 1:
            secret = draw(SECRET)
            secrets.append(secret)
            return f"https://h.example/p?x=1&{draw(st.sampled_from(['sig', 'code', 'Token']))}={secret}&y=2"
        return draw(SCALAR)

    def tree(depth: int) -> object:
        if depth == 0 or draw(st.booleans()):
            return leaf()
        if draw(st.booleans()):
            return [tree(depth - 1) for _ in range(draw(st.integers(0, 3)))]
        return {draw(KEY): tree(depth - 1) for _ in range(draw(st.integers(0, 3)))}

    return tree(3), secrets


HEADER_NAME = st.sampled_from(
    ["Authorization", "Cookie", "Set-Cookie", "api-key", "X-Other", "Location", "Content-Type", "x-api-key"]
)
HEADER_VALUE = st.text(alphabet="abc =;,:/?&<>\t", max_size=20)
CONTENT_TYPE = st.sampled_from(
    [None, "application/json", "application/json; charset=utf-8", "text/plain", "application/octet-stream"]
)
JSONISH = {"jsonp": "application/javascript", "ndjson": "application/x-ndjson"}


def serialize(doc: object, shape: str, escape: str, ensure_ascii: bool) -> bytes:
    """``doc`` as a body: bare JSON, wrapped in a list, JSONP or two NDJSON lines; slashes or
    ``&<>`` optionally escaped as some serializers write them (still the same JSON)."""
    text = json.dumps([doc] if shape == "list" else doc, ensure_ascii=ensure_ascii)
    if escape == "slashes":
        text = text.replace("/", "\\/")
    elif escape == "html":
        text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    if shape == "jsonp":
        text = f"callback({text});"
    elif shape == "ndjson":
        text = f"{text}\n{text}\n"
    return text.encode("utf-8")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=body_with_secrets(),
    headers=st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=6),
    header_secret=SECRET,
    query_secret=SECRET,
    content_type=CONTENT_TYPE,
    shape=st.sampled_from(["bare", "list", "jsonp", "ndjson"]),
    escape=st.sampled_from(["none", "slashes", "html"]),
)
@example(  # the regression above, as the property test first found it
    doc=(SAS_IN_TEXT, [SAS_SECRET]),
    headers=[("Content-Type", "")],
    header_secret=SAS_SECRET,
    query_secret=SAS_SECRET,
    content_type="application/json",
    shape="bare",
    escape="none",
)
def test_property_redaction_never_raises_and_never_leaks(
    doc: tuple[object, list[str]],
    headers: list[tuple[str, str]],
    header_secret: str,
    query_secret: str,
    content_type: str | None,
    shape: str,
    escape: str,
) -> None:
    body_doc, secrets = doc
    # configured keys are promised in JSON, and in JSON-looking text only when it says or looks so
    if shape in JSONISH:
        content_type = JSONISH[shape]
    body = serialize(body_doc, shape, escape, ensure_ascii=len(secrets) % 2 == 0)
    ctype: tuple[tuple[str, str], ...] = () if content_type is None else (("Content-Type", content_type),)
    request_headers = (*headers, ("Authorization", f"Bearer {header_secret}"), *ctype)
    response_headers = (
        *headers,
        ("Set-Cookie", f"s={header_secret}; Path=/"),
        ("Location", f"{API}/?sig={query_secret}"),
        *ctype,
    )
    red = Redactor(json_fields=(*DEFAULT_JSON_FIELDS, "password"))
    original = exchange(
        Request("POST", f"{API}/p?sig={query_secret}&a=1", headers=request_headers, body=body),
        Response(200, headers=response_headers, body=body),
    )
    saved = red.interaction(original)
    assert_no_secret(saved, header_secret, query_secret, *secrets)
    assert header_value(saved.request.headers, "authorization") is not None
    # matching sees the saved copy and the live request alike
    assert red.for_matching(saved.request) == red.for_matching(original.request)
    # and what was saved is a fixed point
    assert Redactor(json_fields=(*DEFAULT_JSON_FIELDS, "password")).interaction(saved) == saved


# ------------------------------------------------ issue 16: names by pattern, values by shape, encodings


@pytest.mark.parametrize(
    "name",
    [
        "accessToken",
        "refresh_token",
        "sessionJwt",
        "X-Vault-Token",
        "Private-Token",
        "x-access-token",
        "db_password",
        "client-secret",
        "X-Hub-Signature-256",
        "apikey",
        "APIKey",
        "sessionId",
        "PHPSESSID",
        "primaryConnectionString",
        "code_verifier",
        "key1",
    ],
)
def test_secret_names_in_any_case_style(name: str) -> None:
    assert is_secret_name(name, "json")
    assert is_secret_name(name, "header")


@pytest.mark.parametrize(
    "name",
    [
        "operationId",
        "status",
        "nextLink",
        "Retry-After",
        "Content-Length",
        "keyword",
        "token_type",
        "max_tokens",
        "keyId",
        "signatureVersion",
        "partitionKey",
        "Idempotency-Key",
        "Sec-WebSocket-Key",
        "passwordPolicy",
        "authMethod",
        "Access-Control-Allow-Credentials",
        "author",
        "monkey",
        "continuationToken",
        "nextPageToken",
        "$skiptoken",
        "NextToken",
        "syncToken",
    ],
)
def test_names_that_are_no_secrets(name: str) -> None:
    assert not is_secret_name(name, "json")
    assert not is_secret_name(name, "header")


def test_bare_key_is_a_secret_in_a_query_not_as_a_json_key() -> None:
    assert is_secret_name("key", "query") and not is_secret_name("key", "json")
    red = Redactor()
    saved = red.request(Request("GET", f"{API}/geocode?address=x&key=AIzaSyAbc"))
    assert saved.url == f"{API}/geocode?address=x&key=<REDACTED-1>"
    body = b'[{"key":"color","value":"red"}]'
    assert red.response(Response(200, headers=(JSON_CT,), body=body)).body == body


def test_redact_except_keeps_a_name_the_patterns_would_take() -> None:
    red = Redactor(keep=("key",))
    request = Request("GET", f"{API}/kv?key=app:color")
    assert red.request(request) is request
    assert (
        Redactor(keep=("x-session",))
        .request(Request("GET", API, headers=(("X-Session", "1"),)))
        .header("x-session")
        == "1"
    )


def test_camel_case_tokens_in_json_only_strings_hidden() -> None:
    body = json.dumps(
        {"accessToken": "at-secret-1", "tokenCount": 5, "usage": {"max_tokens": 9}, "auth": {"pwd": "p-2"}}
    ).encode()
    saved = Redactor().response(Response(200, headers=(JSON_CT,), body=body))
    assert json.loads(saved.body) == {
        "accessToken": "<REDACTED-1>",
        "tokenCount": 5,
        "usage": {"max_tokens": 9},
        "auth": {"pwd": "<REDACTED-2>"},
    }


def test_token_shaped_values_anywhere_and_in_the_path() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    bot = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    red = Redactor()
    live = Request(
        "POST",
        f"{API}/bot{bot}/sendMessage",
        headers=(JSON_CT, ("X-Custom", jwt)),
        body=json.dumps({"proof": jwt, "text": "hi"}).encode(),
    )
    saved = red.request(live)
    assert_no_secret(exchange(saved), jwt, bot)
    assert saved.url == f"{API}/bot<REDACTED-1>/sendMessage"
    other = Request(
        "POST", f"{API}/bot987654321:AAZZZTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage", live.headers, live.body
    )
    assert red.for_matching(saved) == red.for_matching(live) == red.for_matching(other)


def test_gzip_request_body_saved_decoded_and_redacted() -> None:
    import gzip

    plain = b'{"client_id":"app","client_secret":"gz-secret-123"}'
    live = Request(
        "POST",
        API,
        headers=(JSON_CT, ("Content-Encoding", "gzip"), ("Content-Length", "9")),
        body=gzip.compress(plain),
    )
    saved = Redactor().request(live)
    assert saved.body == b'{"client_id":"app","client_secret":"<REDACTED-1>"}'
    assert saved.header("content-encoding") is None and saved.header("content-length") == str(len(plain))
    assert Redactor().for_matching(live) == Redactor().for_matching(saved)


def test_every_encoded_form_of_an_echoed_secret_is_swept() -> None:
    import base64

    token = "tok+en/With=Chars42"
    echoes = [
        base64.b64encode(token.encode()).decode(),
        base64.urlsafe_b64encode(token.encode()).decode(),
        base64.b64encode(f"Bearer {token}".encode()).decode(),  # shifted alignment
        token.replace("/", "\\/"),
        "tok\\u002ben\\u002fWith\\u003dChars42",
        "tok%2Ben%2FWith%3DChars42",
        "tok%252Ben%252FWith%253DChars42",
    ]
    body = json.dumps({"e": echoes}).encode().replace(b"\\\\", b"\\")
    saved = Redactor().interaction(
        exchange(
            Request("GET", f"{API}/me", headers=(("Authorization", f"Bearer {token}"),)),
            Response(200, headers=(("Content-Type", "text/plain"),), body=body),
        )
    )
    for echo in echoes:
        assert echo.encode() not in saved.response.body, echo
    assert saved.response.body.count(b"<REDACTED-1>") == len(echoes)


def test_percent_encoded_pair_inside_a_url_and_set_cookie_attributes() -> None:
    inner = "/b?sv=1&sig=Nested%2BSig%3D"
    body = json.dumps({"next": f"https://h/login?return={quote(inner, safe='')}"}).encode()
    saved = Redactor().response(
        Response(
            200,
            headers=(
                JSON_CT,
                (
                    "Set-Cookie",
                    "pref=dark; Path=/; X-Csrf-Token=attr-secret-1; Expires=Wed, 21 Oct 2026 07:28:00 GMT",
                ),
                ("Set-Cookie", "a=1; Path=/, sid=folded-secret-2; HttpOnly"),
            ),
            body=body,
        )
    )
    assert b"Nested" not in saved.body and b"sig%253D%3CREDACTED" not in saved.body
    assert json.loads(saved.body)["next"] == "https://h/login?return=%2Fb%3Fsv%3D1%26sig%3D<REDACTED-5>"
    cookies = [v for k, v in saved.headers if k == "Set-Cookie"]
    assert cookies == [
        "pref=<REDACTED-1>; Path=/; X-Csrf-Token=<REDACTED-2>; Expires=Wed, 21 Oct 2026 07:28:00 GMT",
        "a=<REDACTED-3>; Path=/, sid=<REDACTED-4>; HttpOnly",
    ]


def test_multipart_secret_field_hidden_file_part_kept() -> None:
    b = "bnd"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="user"\r\n\r\nbob\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="password"\r\n\r\nmp-secret-9\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="token"; filename="t.txt"\r\n\r\nfile bytes\r\n'
        f"--{b}--\r\n"
    ).encode()
    live = Request("POST", API, headers=(("Content-Type", f"multipart/form-data; boundary={b}"),), body=body)
    saved = Redactor().request(live)
    assert saved.body == body.replace(b"mp-secret-9", b"<REDACTED-1>")
    assert Redactor().for_matching(live) == Redactor().for_matching(saved)


def test_scrub_hides_what_a_console_line_would_show() -> None:
    red = Redactor()
    line = "GET /bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe?key=k-1&sig=s%2B1&page=2 -> 200"
    assert red.scrub(line) == "GET /bot<REDACTED-3>/getMe?key=<REDACTED-1>&sig=<REDACTED-2>&page=2 -> 200"
    assert (
        red.scrub("closest #1 GET /x (query: missing key=abc)")
        == "closest #1 GET /x (query: missing key=<REDACTED-4>)"
    )
    assert Redactor(enabled=False).scrub(line) == line
    assert shown_url("https://bob:pw-1@h.example") == "https://bob:<REDACTED>@h.example"


def test_an_encoded_request_body_is_decoded_without_mitmproxy_and_a_bomb_is_kept_encoded() -> None:
    """Request bodies decode with proxy/decompress.py (bounded), not mitmproxy's decoders: the lean engine
    never loads mitmproxy, and a few hundred kB that claim 101 MiB are matched as they came."""
    import subprocess
    import sys
    import zlib

    script = (
        "import gzip, sys\n"
        "from proxy.model import Request\n"
        "from proxy.redact import Redactor\n"
        "body = gzip.compress(b'client_secret=real&scope=x')\n"
        "r = Request('POST', 'https://h/token', (('Content-Type', 'application/x-www-form-urlencoded'),"
        " ('Content-Encoding', 'gzip')), body)\n"
        "m = Redactor().for_matching(r)\n"
        "print(b'real' not in m.body, b'scope=x' in m.body)\n"
        "print(sorted(n for n in sys.modules if n.startswith('mitmproxy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True True", "[]"]

    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(101)) + packer.flush()
    request = Request("POST", f"{API}/upload", headers=(("Content-Encoding", "gzip"),), body=bomb)
    assert Redactor().for_matching(request).body == bomb
