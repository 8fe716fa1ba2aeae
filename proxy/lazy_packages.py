"""Import a package's submodules without running its ``__init__`` until someone needs it.

``mitmproxy.addons/__init__`` imports all ~35 default addons (1.5 s) and ``vcr/__init__`` imports every
HTTP-library patcher (0.5 s); replay-proxy uses a handful of their submodules. The package object is
completed transparently the first time anyone reads one of its own attributes (``vcr.use_cassette``).

Registering a package imports nothing: the deferral happens when the package is first imported (a finder
on ``sys.meta_path``), so ``import proxy`` does not import mitmproxy (the lean engine never does).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader


def defer_package_init(name: str) -> None:
    """Register package ``name`` so ``import name.sub`` works before ``name/__init__.py`` has run."""
    if name in sys.modules:
        return
    for finder in sys.meta_path:
        if isinstance(finder, _DeferringFinder):
            finder.names.add(name)
            return
    sys.meta_path.insert(0, _DeferringFinder({name}))


class _DeferringFinder:
    """Finds the registered packages with the other finders and defers their ``__init__``.

    (A meta path finder and a loader by their methods: ``importlib.abc`` costs 9 ms to import.)"""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and spec.submodule_search_locations is not None:
                spec.loader = cast("Loader", _DeferredInit(spec.loader))
            return spec
        return None


class _DeferredInit:
    """Creates the package module with ``real``'s ``__init__`` not run: it runs on the first read of
    one of the package's own attributes (a submodule is imported instead when one has that name)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self.real, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        name, real = module.__name__, self.real

        def complete(attr: str) -> Any:
            if not attr.startswith("__") and _is_submodule(f"{name}.{attr}"):
                return importlib.import_module(f"{name}.{attr}")  # `from name import sub` asks hasattr first
            if "__getattr__" in module.__dict__:
                del module.__dict__["__getattr__"]
                module.__loader__ = real
                if module.__spec__ is not None:
                    module.__spec__.loader = real
                real.exec_module(module)
            return module.__dict__[attr] if attr in module.__dict__ else _missing(name, attr)

        module.__dict__["__getattr__"] = complete

    def __getattr__(self, attr: str) -> Any:
        if attr == "real":  # not set yet (a copy being made)
            raise AttributeError(attr)
        return getattr(self.real, attr)  # get_resource_reader, is_package, get_filename...


def _is_submodule(qualified: str) -> bool:
    try:
        return importlib.util.find_spec(qualified) is not None
    except (ImportError, ValueError):
        return False


def _missing(name: str, attr: str) -> ModuleType:
    raise AttributeError(f"module {name!r} has no attribute {attr!r}")
