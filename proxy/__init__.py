"""replay-proxy: record HTTP traffic to vcrpy cassettes and replay it offline, through mitmproxy.

Public API: ``ReplayProxy`` (embedded proxy), the error tree, and ``__version__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.errors import (
    CassetteError,
    CassetteNotFoundError,
    ConfigError,
    ReplayProxyError,
    StartupError,
)
from proxy.lazy_packages import defer_package_init

# Start-up time: skip the package inits that import every mitmproxy addon and every vcrpy patcher
# (about 1.5 s) until someone actually uses them; see lazy_packages.py.
defer_package_init("mitmproxy.addons")
defer_package_init("vcr")

if TYPE_CHECKING:
    from proxy.server import ReplayProxy

__version__ = "0.1.0"

__all__ = [
    "CassetteError",
    "CassetteNotFoundError",
    "ConfigError",
    "ReplayProxy",
    "ReplayProxyError",
    "StartupError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # ReplayProxy's module loads the cassette, session and engine machinery (~60 ms; mitmproxy only for
    # the mitmproxy engine): load it on first use, not on `import proxy`.
    if name == "ReplayProxy":
        from proxy.server import ReplayProxy

        return ReplayProxy
    raise AttributeError(f"module 'proxy' has no attribute {name!r}")
