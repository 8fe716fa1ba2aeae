"""Scenario templates: Jinja2 in an immutable sandbox; a failure is one ``file:line:col`` TemplateError."""

from __future__ import annotations

import contextlib
import random
import re
import time
from typing import Any

import pytest

from proxy.errors import ReplayProxyError, ScenarioError, TemplateError
from proxy.scenario import templates
from proxy.scenario.templates import functions, is_template, render

WHERE = "s.yaml:7:12"
EPOCH = 1583959513.0  # 2020-03-11 20:45:13 UTC
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def context() -> dict[str, Any]:
    return {
        "request": {
            "method": "POST",
            "path": "/tilesets",
            "query": {"datasetId": "d1", "api-version": "2.0"},
            "headers": {"x-ms-client-request-id": "abc"},
            "json": {"items": [{"id": 7}], "name": "n"},
            "params": {},
        },
        "operation": {"id": "op-1", "poll": 3, "status": "Running"},
        "proxy_url": "http://127.0.0.1:8080",
        **functions(wall=lambda: EPOCH, rng=random.Random(5)),
    }


def error_of(source: str, ctx: dict[str, Any] | None = None) -> str:
    with pytest.raises(TemplateError) as caught:
        render(source, context() if ctx is None else ctx, WHERE)
    message = str(caught.value)
    assert caught.value.problems == [message]
    assert "\n" not in message
    return message


# -- what works ---------------------------------------------------------------------------------------


def test_reading_allowed_values() -> None:
    ctx = context()
    assert render("{{ request.method }} {{ request.path }}", ctx, WHERE) == "POST /tilesets"
    assert render("{{ request.query.datasetId }}", ctx, WHERE) == "d1"
    assert render("{{ request.query['api-version'] }}", ctx, WHERE) == "2.0"
    assert render("{{ request.headers['x-ms-client-request-id'] }}", ctx, WHERE) == "abc"
    assert render("{{ request.json['items'][0].id * 6 }}", ctx, WHERE) == "42"
    assert render("{{ proxy_url }}/ops/{{ operation.id }}", ctx, WHERE) == "http://127.0.0.1:8080/ops/op-1"
    assert render("{% if operation.poll > 2 %}late{% else %}early{% endif %}", ctx, WHERE) == "late"
    assert (
        render("{% for k in request.query | sort %}{{ k }};{% endfor %}", ctx, WHERE)
        == "api-version;datasetId;"
    )
    assert render("{{ operation.status | upper }}", ctx, WHERE) == "RUNNING"
    assert render("{{ request.query.missing | default('none') }}", ctx, WHERE) == "none"
    assert render("{{ request.json | tojson }}", ctx, WHERE) == '{"items": [{"id": 7}], "name": "n"}'
    assert render("{% set n = namespace(x=1) %}{% set n.x = n.x + 1 %}{{ n.x }}", ctx, WHERE) == "2"


def test_no_autoescaping() -> None:
    assert render("{{ '<a href=\"x\">&' }}", {}, WHERE) == '<a href="x">&'


def test_strings_without_template_syntax_are_returned_unchanged() -> None:
    # Jinja would refuse "{# open" (unclosed comment): the fast path never hands it to Jinja.
    for text in ["plain", "", "{ json: 1 }", "{# open", "50% done", "a } b { c"]:
        assert not is_template(text)
        assert render(text, {}, WHERE) == text
    assert is_template("{{ x }}") and is_template("{% if 1 %}{% endif %}")


def test_compiled_templates_are_cached_by_source() -> None:
    source = "{{ operation.id }}-cached-" + str(random.random())
    before = templates._compile.cache_info()
    assert render(source, context(), WHERE).startswith("op-1-cached-")
    assert render(source, context(), WHERE).startswith("op-1-cached-")
    after = templates._compile.cache_info()
    assert after.misses == before.misses + 1
    assert after.hits == before.hits + 1


# -- helpers --------------------------------------------------------------------------------------------


def test_now_is_iso_8601_utc_and_takes_a_strftime_format() -> None:
    helpers = functions(wall=lambda: EPOCH + 0.123456)
    assert render("{{ now() }}", helpers, WHERE) == "2020-03-11T20:45:13.123456+00:00"
    assert render("{{ now('%Y-%m-%d %H:%M:%S') }}", helpers, WHERE) == "2020-03-11 20:45:13"
    assert render("{{ now('%a, %d %b %Y') }}", helpers, WHERE) == "Wed, 11 Mar 2020"
    assert error_of("{{ now(3) }}", helpers) == (
        f"{WHERE}: template error: TypeError: now() takes a strftime format text, e.g. now('%Y-%m-%d'); got 3"
    )


def test_uuid_is_a_fresh_version_4_uuid() -> None:
    helpers = functions()
    first, second = render("{{ uuid() }}", helpers, WHERE), render("{{ uuid() }}", helpers, WHERE)
    assert UUID4.match(first) and UUID4.match(second)
    assert first != second
    # From a seeded generator: reproducible.
    seeded = [render("{{ uuid() }} {{ uuid() }}", functions(rng=random.Random(9)), WHERE) for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert all(UUID4.match(u) for u in seeded[0].split())


# -- what fails, and how it is reported ---------------------------------------------------------------


def test_error_is_a_scenario_error_naming_the_position() -> None:
    with pytest.raises(TemplateError) as caught:
        render("{{ config }}", context(), WHERE)
    assert isinstance(caught.value, ScenarioError)
    assert isinstance(caught.value, ReplayProxyError)
    assert str(caught.value) == f"{WHERE}: template error: 'config' is undefined"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe."),
        ("{{ request.__class__ }}", "access to attribute '__class__' of 'dict' object is unsafe."),
        ("{{ request['__class__'] }}", "access to attribute '__class__' of 'dict' object is unsafe."),
        ("{{ request | attr('__class__') }}", "access to attribute '__class__' of 'dict' object is unsafe."),
        ("{{ cycler.__init__.__globals__ }}", "access to attribute '__init__' of 'type' object is unsafe."),
        ("{{ lipsum.__globals__ }}", "access to attribute '__globals__' of 'function' object is unsafe."),
        ("{{ now.__globals__ }}", "access to attribute '__globals__' of 'function' object is unsafe."),
        (
            "{{ self._TemplateReference__context }}",
            "access to attribute '_TemplateReference__context' of 'TemplateReference' object is unsafe.",
        ),
        (
            "{{ '{0.__class__}'.format(request) }}",
            "access to attribute '__class__' of 'dict' object is unsafe.",
        ),
        (
            "{% import 'os' as os %}",
            "templates cannot use other templates ('os'): import, include and extends are refused",
        ),
        (
            "{% from 'os' import path %}",
            "templates cannot use other templates ('os'): import, include and extends are refused",
        ),
        (
            "{% include 'secrets.txt' %}",
            "templates cannot use other templates ('secrets.txt'): import, include and extends are refused",
        ),
        (
            "{% include ['a', 'b'] ignore missing %}",
            "templates cannot use other templates (['a', 'b']): import, include and extends are refused",
        ),
        (
            "{% extends 'base.html' %}",
            "templates cannot use other templates ('base.html'): import, include and extends are refused",
        ),
        ("{{ config }}", "'config' is undefined"),
        ("{{ request.nope }}", "'dict object' has no attribute 'nope'"),
        ("{% set x = request.update({}) %}", "access to attribute 'update' of 'dict' object is unsafe."),
        ("{{ request.json['items'].append(1) }}", "access to attribute 'append' of 'list' object is unsafe."),
        ("{{ request.query.pop('datasetId') }}", "access to attribute 'pop' of 'dict' object is unsafe."),
    ],
)
def test_sandbox_refuses_escapes_imports_and_writes(source: str, message: str) -> None:
    ctx = context()
    assert error_of(source, ctx) == f"{WHERE}: template error: {message}"
    assert ctx["request"]["query"] == {"datasetId": "d1", "api-version": "2.0"}  # nothing was modified


def test_syntax_errors() -> None:
    assert (
        error_of("{{ x")
        == f"{WHERE}: template error: unexpected end of template, expected 'end of print statement'."
    )
    assert error_of("{% if x %}") == (
        f"{WHERE}: template error: Unexpected end of template. Jinja was looking for the following tags: "
        "'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'."
    )
    assert error_of("line one\n{{ 1 + }}\n") == (
        f"{WHERE}: template error: unexpected 'end of print statement' (line 2 of the template)"
    )


def test_exceptions_raised_while_rendering() -> None:
    assert error_of("{{ 1 / 0 }}") == f"{WHERE}: template error: ZeroDivisionError: division by zero"
    assert error_of("{{ 1 + 'a' }}") == (
        f"{WHERE}: template error: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    )
    assert error_of("{{ range(10 ** 9) | list }}") == (
        f"{WHERE}: template error: OverflowError: Range too big. The sandbox blocks ranges larger than "
        "MAX_RANGE (100000)."
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ 2 ** 100000000 }}", "the number would be too large (more than 100000 bits)"),
        ("{{ (10 ** 1000) ** 1000 }}", "the number would be too large (more than 100000 bits)"),
        (
            "{% set n = namespace(x=2) %}{% for i in range(40) %}{% set n.x = n.x * n.x %}{% endfor %}",
            "the number would be too large (more than 100000 bits)",
        ),
        ("{{ 'a' * 10 ** 7 }}", "the result would be too long (more than 1000000 items)"),
        ("{{ [0] * 10 ** 7 }}", "the result would be too long (more than 1000000 items)"),
        (
            "{% set n = namespace(s='ab') %}{% for i in range(40) %}{% set n.s = n.s + n.s %}{% endfor %}",
            "the result would be too long (more than 1000000 items)",
        ),
    ],
)
def test_templates_cannot_exhaust_the_proxy(source: str, message: str) -> None:
    assert error_of(source) == f"{WHERE}: template error: {message}"


TOO_LONG = "the result would be too long (more than 1000000 items)"
WIDTH = "a width or precision in the format is too large (more than 1000000)"
BUILT = "the template built more than 16000000 characters in all"
OVER_TIME = "the template took longer than 1 s (render budget)"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # filters and methods that widen: refused before they take the memory (issue 16: 1 GB renders)
        ("{{ 'x'|center(10**9) }}", TOO_LONG),
        ("{{ 'x'.ljust(10**9) }}", TOO_LONG),
        ("{{ 'x'.rjust(10**9) }}", TOO_LONG),
        ("{{ 'x'.zfill(10**9) }}", TOO_LONG),
        ("{{ ('\t' * 1000).expandtabs(10**6) }}", TOO_LONG),
        ("{{ 'a\nb'|indent(10**9) }}", TOO_LONG),
        ("{{ 'a\nb\nc'|indent('x' * 900000) }}", TOO_LONG),
        ("{{ '%999999999s'|format('x') }}", WIDTH),
        ("{{ '%*s'|format(10**9, 'x') }}", WIDTH),
        ("{{ '%.999999999f' % 1.5 }}", WIDTH),
        ("{{ '{:>999999999}'.format('x') }}", WIDTH),
        (
            "{{ '{:{}}'.format('x', 10**9) }}",
            "a format field's width cannot come from the arguments ({:{}}) in templates",
        ),
        ("{{ ('x' * 1000000)|replace('x', 'yy') }}", TOO_LONG),
        ("{{ ('x' * 1000).replace('x', 'y' * 10000) }}", TOO_LONG),
        ("{{ ['x' * 1000000] * 1000 }}", TOO_LONG),
        ("{{ (['x' * 100000] * 5) | join('y' * 200000) }}", TOO_LONG),
        ("{{ range(100000)|map('center', 1000000)|join }}", TOO_LONG),
        ("{{ ','.join(range(100000)|map('center', 1000)) }}", TOO_LONG),
        ("{{ [1]|batch(10**9, 0)|list }}", TOO_LONG),
        ("{{ [[[[1]]]]|tojson(indent=10**9) }}", TOO_LONG),
        ("{{ ('x ' * 500000)|wordwrap(1, wrapstring='y' * 1000) }}", TOO_LONG),
        ("{{ ('x' * 100000).translate({120: 'y' * 1000}) }}", TOO_LONG),
        ("{{ [[1]] * 100000 | sum(start=[]) }}", "sum adds numbers: its start must be a number"),
        (
            "{{ lipsum(10**6) }}",
            "lipsum makes at most 100 paragraphs of at most 1000 words: lipsum(n, html, min, max)",
        ),
        # ~ and the output
        (
            "{% set n = namespace(x='ab') %}{% for i in range(40) %}{% set n.x = n.x ~ n.x %}{% endfor %}",
            TOO_LONG,
        ),
        ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", TOO_LONG),
        # many values each under the limit, written into a macro or a block: counted as they are built
        ("{% set x %}{% for i in range(100000) %}{{ 'y' * 1000000 }}{% endfor %}{% endset %}", BUILT),
        (
            "{% macro m() %}{% for i in range(9999) %}{{ 'y' * 999999 }}{% endfor %}{% endmacro %}{{ m() }}",
            BUILT,
        ),
        # CPU: stopped at the render budget
        ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", OVER_TIME),
        (
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
            OVER_TIME,
        ),
    ],
)
def test_renders_are_bounded_in_size_and_time(source: str, message: str) -> None:
    assert error_of(source) == f"{WHERE}: template error: {message}"


def test_the_bounds_leave_ordinary_templates_alone() -> None:
    source = (
        "{{ 'ab'|center(6) }}|{{ '%5s'|format('x') }}|{{ 'a\nb'|indent(2) }}|"
        "{{ range(3)|map('string')|join(',') }}|{{ [1, 2]|sum }}|{{ 'a' ~ 1 }}|{{ '{:>4}'.format('z') }}|"
        "{{ [{'a': [1]}]|tojson(indent=2)|length }}|{{ lipsum(1, false, 5, 6)|length > 0 }}|"
        "{{ '%-3s|' % 'x' }}{{ 'x-y'.replace('-', '+') }}|"
        "{{ request.json['items']|map(attribute='id')|list }}|"
        "{% for i in range(1000) %}{% endfor %}{{ request.query.datasetId|upper }}"
    )
    assert render(source, context(), WHERE) == ("  ab  |    x|a\n  b|0,1,2|3|a1|   z|36|True|x  |x+y|[7]|D1")


def test_the_render_budget_stops_only_the_render_over_it() -> None:
    """The watchdog interrupts the render past its deadline, in its own thread, and nothing after it: a
    render that ends just in time leaves nothing scheduled behind, and other threads render on."""
    import threading

    results: list[str] = []

    def fine_renders() -> None:
        for _ in range(200):
            results.append(render("{% for i in range(300) %}{{ i }}{% endfor %}", {}, WHERE)[-3:])

    other = threading.Thread(target=fine_renders)
    other.start()
    assert error_of("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}") == (
        f"{WHERE}: template error: the template took longer than 1 s (render budget)"
    )
    other.join(60)
    assert results == ["299"] * 200
    # Renders ending around their deadline: whatever happens, no exception arrives after render() returns.
    original = templates.RENDER_SECONDS
    try:
        for seconds in (0.0, 0.001, 0.01, 0.05):
            templates.RENDER_SECONDS = seconds
            for _ in range(20):
                with contextlib.suppress(TemplateError):
                    render("{% for i in range(20000) %}{% endfor %}", {}, WHERE)
                deadline = time.monotonic() + 0.06  # longer than the watchdog's tick: a late one would land
                while time.monotonic() < deadline:
                    pass
    finally:
        templates.RENDER_SECONDS = original
    assert not templates._watchdog.active  # every render, however it ended, left the watchdog


def test_ordinary_arithmetic_is_untouched() -> None:
    source = (
        "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ 3 * 4 }} {{ 'a' + 'b' }} {{ 2 ** 0.5 }} {{ 2 ** -1 }}"
    )
    out = render(source, {}, WHERE)
    assert out == "1024 ababab [1, 1] 12 ab 1.4142135623730951 0.5"
