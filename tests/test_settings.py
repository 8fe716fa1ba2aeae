"""proxy/settings.py: each run option is declared once, and every surface is derived from that table."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import taddons

from proxy import cli, settings
from proxy.addon import ReplayAddon
from proxy.errors import ConfigError
from proxy.server import ReplayProxy
from proxy.settings import (
    ADDON,
    CLI,
    INI,
    KWARG,
    PYTEST,
    SURFACES,
    Seconds,
    SettingError,
    Settings,
    declare,
    on,
)

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
NOT_SETTINGS = {"self", "journal", "forward_port"}
"""ReplayProxy keywords that are no run option: an object, and the plugin's second listener."""


@dataclass(frozen=True)
class More(Settings):
    """The table with one more entry, declared as every other."""

    fuzz_factor: float | None = declare(
        None,
        Seconds(optional=True),
        "how long to hesitate before answering (default: {default}; e.g. {flag}0.5)",
        SURFACES,
        metavar="SECONDS",
    )


@pytest.fixture
def more(monkeypatch: pytest.MonkeyPatch) -> type[Settings]:
    monkeypatch.setattr(settings, "Settings", More)
    return More


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if a.dest == "command")
    found: argparse.ArgumentParser = sub.choices[command]  # type: ignore[index]
    return found


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


# -- one entry, every surface ----------------------------------------------------------------------------


def test_one_new_entry_appears_on_the_cli(more: type[Settings]) -> None:
    parser = cli.build_parser()
    for command in settings.RUN_COMMANDS:
        text = _subparser(parser, command).format_help()
        assert "--fuzz-factor SECONDS" in text, command
        assert "e.g. --fuzz-factor 0.5" in text
    args = parser.parse_args(["replay", "c.yaml", "--fuzz-factor", "0.5"])
    assert settings.from_namespace(args, "replay").fuzz_factor == 0.5  # type: ignore[attr-defined]
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["replay", "c.yaml", "--fuzz-factor", "soon"])
    assert exit.value.code == cli.EXIT_USAGE


def test_one_new_entry_is_a_keyword(more: type[Settings]) -> None:
    """``from_kwargs`` (what ReplayProxy parses its keywords with) takes it; ReplayProxy's written-out
    signature must then name it too, which ``test_replay_proxy_signature_is_the_table`` demands."""
    assert "fuzz_factor" in {s.name for s in on(KWARG)}
    assert settings.from_kwargs({"fuzz_factor": "0.25"}).fuzz_factor == 0.25  # type: ignore[attr-defined]
    with pytest.raises(
        SettingError, match=r"^fuzz_factor takes seconds, zero or more \(e\.g\. 0\.05\), not -1$"
    ):
        settings.from_kwargs({"fuzz_factor": -1})


def test_one_new_entry_is_a_pytest_option_and_ini_key(
    more: type[Settings], pytester: pytest.Pytester
) -> None:
    config = pytester.parseconfigure("--replay-fuzz-factor=0.5")
    assert settings.from_pytest(config).fuzz_factor == 0.5  # type: ignore[attr-defined]
    pytester.makeini("[pytest]\nreplay_fuzz_factor = 2\n")
    config = pytester.parseconfigure()
    assert settings.from_pytest(config).fuzz_factor == 2.0  # type: ignore[attr-defined]
    config = pytester.parseconfigure("--replay-fuzz-factor=3")  # the command line wins
    assert settings.from_pytest(config).fuzz_factor == 3.0  # type: ignore[attr-defined]
    with pytest.raises(pytest.UsageError, match="--replay-fuzz-factor takes seconds"):
        pytester.parseconfigure("--replay-fuzz-factor=soon")


def test_one_new_entry_is_an_addon_option(more: type[Settings]) -> None:
    addon = ReplayAddon()
    with taddons.context(addon) as tctx:
        option = tctx.options._options["replay_fuzz_factor"]
        assert option.default is None
        assert (
            option.help
            == "how long to hesitate before answering (default: none; e.g. replay_fuzz_factor=0.5)"
        )
        tctx.options.update(replay_fuzz_factor="0.5")
        assert settings.from_addon_options(tctx.options).fuzz_factor == 0.5  # type: ignore[attr-defined]
        assert settings.addon_options(More(fuzz_factor=0.5))["replay_fuzz_factor"] == "0.5"


# -- the same everywhere ---------------------------------------------------------------------------------


def test_each_setting_has_one_help_and_default_on_the_cli() -> None:
    parser = cli.build_parser()
    for command in settings.RUN_COMMANDS:
        actions = _actions(_subparser(parser, command))
        for s in on(CLI, command=command):
            action = actions[s.name]
            assert s.flag in action.option_strings
            assert action.help == s.help_on(command).replace("%", "%%")
            default = s.default_on(command)
            assert action.default == (list(default) if isinstance(default, tuple) else default), s.name
        taken = {a for a in actions if a not in ("help", "command")}
        assert {s.name for s in on(CLI, command=command)} <= taken


def test_each_setting_has_one_help_and_default_as_an_addon_option() -> None:
    with taddons.context(ReplayAddon()) as tctx:
        declared = {name for name in tctx.options._options if name.startswith("replay_")}
        assert declared == {s.option for s in on(ADDON)}
        for s in on(ADDON):
            option = tctx.options._options[s.option]
            assert option.help == s.help_on(ADDON)
            assert s.kind.parse(option.default) == s.default_on(ADDON), s.name


def test_each_help_has_the_same_words_on_every_surface() -> None:
    """Only the option's spelling in examples and the surface's default differ (and what a spec's
    ``helps`` gives a CLI subcommand, or an inverted flag's value)."""
    for s in settings.table():
        words = set()
        for surface in (*s.spec.surfaces, *([INI] if PYTEST in s.spec.surfaces else ())):
            if surface in s.spec.helps or (surface != CLI and settings.VALUE in s.spec.helps):
                continue
            text = s.help_on(surface).replace(s.spelled(surface), "<option>")
            shown = s.kind.show(s.default_on(PYTEST if surface == INI else surface))
            words.add(text.replace(f"default: {shown}", "default: <default>"))
        assert len(words) <= 1, (s.name, words)


def test_each_setting_has_one_help_and_default_in_pytest(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure()
    read = settings.from_pytest(config)
    for s in on(PYTEST):
        option = next(
            o for o in config._parser._anonymous.options + _replay_group(config) if o.dest == s.option
        )
        assert option.names() == [s.pytest_flag]
        assert option.attrs()["help"] == s.help_on(PYTEST).replace("%", "%%")
        assert config._parser._inidict[s.option][0] == s.help_on(INI)
        assert getattr(read, s.name) == s.default_on(PYTEST), s.name


def _replay_group(config: pytest.Config) -> list[Any]:
    group = next(g for g in config._parser._groups if g.name == "replay-proxy")
    return list(group.options)


def test_replay_proxy_signature_is_the_table() -> None:
    """ReplayProxy's keywords stay written out (typed, for mypy and readers): one per kwarg setting,
    defaulting to the table's default."""
    params = inspect.signature(ReplayProxy.__init__).parameters
    assert set(params) - NOT_SETTINGS == {s.name for s in on(KWARG)}
    for s in on(KWARG):
        assert s.kind.parse(params[s.name].default) == s.default, s.name
    use = set(inspect.signature(ReplayProxy.use).parameters) - {"self", "paths", "timeout"}
    assert use <= {s.name for s in on(KWARG)}


def test_the_tables_constants_are_their_modules() -> None:
    """settings.py imports neither mitmproxy's machinery nor the router nor the verdict (the pytest plugin
    and the command line read it at start-up)."""
    from proxy import cassette, gateway, lean, matching, router, server, verdict

    assert tuple(m.value for m in router.RecordMode) == settings.RECORD_MODES
    assert settings.WHEN_EXHAUSTED == cassette.WHEN_EXHAUSTED
    assert settings.ENGINES == lean.ENGINES
    assert settings.DEFAULT_MATCH_ON == matching.DEFAULT_MATCH_ON
    assert settings.VERDICT_RULES == verdict.RULES
    assert settings.DEFAULT_UPSTREAM_TIMEOUT == gateway.DEFAULT_UPSTREAM_TIMEOUT
    assert server.parse_size(server.DEFAULT_MAX_BODY_SIZE) == settings.DEFAULT_MAX_BODY_SIZE
    heavy = (
        "mitmproxy.http",
        "mitmproxy.options",
        "pytest",
        "yaml",
        "proxy.router",
        "proxy.matching",
        "proxy.verdict",
    )
    code = f"import sys, proxy.settings; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- one parse, each surface's words ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("retry_after", -1, "retry_after takes seconds, zero or more (e.g. 0.05), not -1"),
        ("retry_after", "soon", "retry_after takes seconds, zero or more (e.g. 0.05), not 'soon'"),
        ("upstream_timeout", float("inf"), "upstream_timeout takes seconds, zero or more (e.g. 30), not inf"),
        ("port", 70000, "port: 70000 is not a port number (0-65535; 0 picks a free one)"),
        ("mode", "sideways", "mode: unknown value 'sideways'; choose from: reverse, regular"),
        ("record_mode", "sometimes", "record_mode: unknown value 'sometimes'; choose from: rewrite, all"),
        ("max_body_size", "lots", "max_body_size: bad size 'lots': expected bytes"),
        ("match_on", "method,colour", "match_on: unknown matcher 'colour'; choose from: method, uri"),
        ("upstream", "atlas.microsoft.com", "upstream: bad upstream URL 'atlas.microsoft.com'"),
    ],
)
def test_a_bad_keyword_names_itself(name: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ReplayProxy(**{name: value})
    assert str(raised.value).startswith(message)


def test_a_bad_addon_option_names_itself() -> None:
    with (
        taddons.context(ReplayAddon()) as tctx,
        pytest.raises(
            Exception, match=r"replay_retry_after takes seconds, zero or more \(e\.g\. 0\.05\), not '-2'"
        ),
    ):
        tctx.options.update(replay_retry_after="-2")


def test_a_bad_cli_value_is_one_line_and_status_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "replay", "c.yaml", "--upstream-timeout", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr == (
        "replay-proxy: error: argument --upstream-timeout: takes seconds, zero or more (e.g. 30), not '-1' "
        "(see --help)\n"
    )


def test_names_lists_and_flags_parse_from_text_and_from_python() -> None:
    read = settings.from_kwargs({"match_headers": "x-ms-version", "redact_query": ["key", Path("sig")]})
    assert read.match_headers == ("x-ms-version",)
    assert read.redact_query == ("key", "sig")
    assert settings.from_kwargs({"match_on": "method, path,,body"}).match_on == ("method", "path", "body")
    with pytest.raises(SettingError, match="match_on: give at least one matcher"):
        settings.from_kwargs({"match_on": " , "})
    with pytest.raises(TypeError, match="unexpected keyword argument 'quiet'"):
        settings.from_kwargs({"quiet": True})  # a CLI-only setting
