"""Import a package's submodules without running its ``__init__`` until someone needs it.

``mitmproxy.addons/__init__`` imports all ~35 default addons (1.5 s) and ``vcr/__init__`` imports every
HTTP-library patcher (0.5 s); replay-proxy uses a handful of their submodules. The package object is
completed transparently the first time anyone reads one of its own attributes (``vcr.use_cassette``).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any


def defer_package_init(name: str) -> None:
    """Register package ``name`` so ``import name.sub`` works before ``name/__init__.py`` has run."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attr: str) -> Any:
        if not attr.startswith("__") and _is_submodule(f"{name}.{attr}"):
            return importlib.import_module(f"{name}.{attr}")  # `from name import sub` asks hasattr first
        if "__getattr__" in module.__dict__:
            del module.__dict__["__getattr__"]
            loader.exec_module(module)
        return module.__dict__[attr] if attr in module.__dict__ else _missing(name, attr)

    module.__dict__["__getattr__"] = complete
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _is_submodule(qualified: str) -> bool:
    try:
        return importlib.util.find_spec(qualified) is not None
    except (ImportError, ValueError):
        return False


def _missing(name: str, attr: str) -> ModuleType:
    raise AttributeError(f"module {name!r} has no attribute {attr!r}")
