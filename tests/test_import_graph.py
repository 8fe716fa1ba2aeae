"""What the product imports: the reference service (a test double) stays out of it."""

import subprocess
import sys

PRODUCT_MODULES = [
    "proxy.cli",
    "proxy.addon",
    "proxy.server",
    "proxy.pytest_plugin",
    "proxy.scenario.loader",
    "proxy.scenario.machine",
]


def test_product_modules_do_not_import_the_reference_service() -> None:
    """proxy/creator_service.py is the seed's reference upstream, used by tests and the README's demo:
    the proxy, its CLI, its plugin and the scenario machine must run without it (a fresh interpreter,
    so that no other test's import hides one)."""
    code = (
        "import importlib, sys\n"
        f"for name in {PRODUCT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'proxy.creator_service' not in sys.modules, f'{name} imports proxy.creator_service'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_reference_service_uses_the_scenario_date_format() -> None:
    """One date format for the scripted operations and the reference service."""
    from proxy import creator_service
    from proxy.scenario import dates

    assert creator_service.format_created_date_time is dates.format_created_date_time


CORE_MODULES = ["proxy.handler", "proxy.fault_plan", "proxy.router", "proxy.rewrite", "proxy.journal"]


def test_the_core_imports_nothing_from_mitmproxy() -> None:
    """The decision a request gets (proxy/handler.py) and its fault plan are engine-neutral: both the
    mitmproxy addon and the lean engine adapt them, so importing them loads no mitmproxy module (a fresh
    interpreter; the ``proxy`` package itself only registers mitmproxy.addons's deferred init)."""
    code = (
        "import importlib, sys\n"
        "import proxy\n"
        "before = {m for m in sys.modules if m.split('.')[0] == 'mitmproxy'}\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    new = {m for m in sys.modules if m.split('.')[0] == 'mitmproxy'} - before\n"
        "    assert not new, f'{name} imports {sorted(new)}'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
