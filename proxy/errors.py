"""Every error replay-proxy raises on purpose, in one tree.

A ``ReplayProxyError`` is a user's mistake or an environment problem: the CLI prints its message as one
line on stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations


class ReplayProxyError(Exception):
    """Base of every error that the command line reports as one line and exit status 2."""


class ConfigError(ReplayProxyError):
    """An option or argument is invalid (bad URL, unknown matcher name, ...)."""


class CassetteError(ReplayProxyError):
    """A cassette cannot be read or written; the message names the file (and line, when known)."""


class CassetteNotFoundError(CassetteError):
    """The cassette file does not exist (or is empty) where one was required."""


class StartupError(ReplayProxyError):
    """The proxy could not start: port in use, address not available, mitmproxy refused an option."""


class ScenarioError(ReplayProxyError):
    """One or more scenario files are invalid; each problem is one ``file:line:column: message`` line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class TemplateError(ScenarioError):
    """A scenario template failed while rendering an answer: ``file:line:column: template error: ...``."""

    def __init__(self, message: str) -> None:
        super().__init__([message])
