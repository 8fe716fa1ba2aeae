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
