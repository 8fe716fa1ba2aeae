"""Listening: the proxy binds 127.0.0.1 unless told otherwise, and says what binding further exposes.

Checked two ways: the kernel's table of listening sockets (/proc/net/tcp and tcp6), and a connection to
the machine's own non-loopback addresses, refused on the proxy's port by default and accepted once the
proxy is told ``--host 0.0.0.0`` (which shows that the refusal is the binding's doing).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from proxy.cassette import save
from proxy.cli import build_parser, exposure_warning
from proxy.model import Interaction, Request, Response
from proxy.pytest_plugin import _free_port  # the plugin's own way to pick its forward listener's port
from proxy.server import ReplayProxy

SIOCGIFADDR = 0x8915


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port``, from the kernel's tables."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                    continue
                # the kernel writes each 32-bit word of the address in host (little-endian) order
                raw = b"".join(
                    struct.pack("<I", int(address[i : i + 8], 16)) for i in range(0, len(address), 8)
                )
                found.add(socket.inet_ntop(family, raw))
    return found


def own_addresses() -> set[str]:
    """This machine's IPv4 addresses other than loopback (its interfaces', and its host name's)."""
    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):  # an interface without an IPv4 address
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                found.add(socket.inet_ntoa(packed[20:24]))
    with contextlib.suppress(OSError):
        found.add(socket.gethostbyname(socket.gethostname()))
    return {a for a in found if not ipaddress.ip_address(a).is_loopback}


def connects(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def cassette(path: Path) -> Path:
    save(path, [Interaction(Request("GET", "http://127.0.0.1:9/x"), Response(200, "OK"))])
    return path


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_every_listener_binds_loopback_only(cli: Any, confdir: Path, tmp_path: Path) -> None:
    """The command line in reverse and forward mode, and the embedded proxy with the forward listener the
    pytest plugin adds: each port listens on 127.0.0.1 alone, and this machine's other addresses are
    refused there."""
    reverse = cli(["replay", str(cassette(tmp_path / "c.yaml")), "--port", "0"])
    forward = cli(["play", "scenarios/azure-maps/tileset-succeeds.yaml", "--mode", "regular", "--port", "0"])
    try:
        with ReplayProxy(confdir=confdir, forward_port=_free_port()) as embedded:
            ports = {
                "replay (reverse)": port_of(reverse.url),
                "play --mode regular": port_of(forward.url),
                "ReplayProxy": port_of(embedded.url),
                "ReplayProxy forward_port": port_of(embedded.forward_url),
            }
            bound = {name: listening_addresses(port) for name, port in ports.items()}
            reached = {
                (name, address): connects(address, port)
                for name, port in ports.items()
                for address in own_addresses()
            }
    finally:
        assert reverse.stop() == 0 and forward.stop() == 0
    assert bound == {name: {"127.0.0.1"} for name in ports}
    assert not any(reached.values()), reached
    assert "warning" not in reverse.stderr + forward.stderr


def test_a_public_host_is_reachable_and_says_so(cli: Any, tmp_path: Path) -> None:
    proc = cli(["replay", str(cassette(tmp_path / "c.yaml")), "--port", "0", "--host", "0.0.0.0", "-q"])
    try:
        port = port_of(proc.url)
        bound = listening_addresses(port)
        reached = {address: connects(address, port) for address in own_addresses()}
    finally:
        assert proc.stop() == 0
    assert bound == {"0.0.0.0"}
    assert all(reached.values()), reached  # what the test above sees refused is reachable now
    assert proc.stderr.splitlines() == [
        "replay-proxy: warning: listening on 0.0.0.0, not only on this machine: anyone who can reach it can "
        "use the proxy and read what it replays or records (--host 127.0.0.1 keeps it local); the control "
        "API is off (give --control-token TOKEN to turn it on)"
    ]


@pytest.mark.parametrize(
    ("argv", "warns"),
    [
        (["replay", "c.yaml"], None),
        (["replay", "c.yaml", "--host", "localhost"], None),
        (["replay", "c.yaml", "--host", "127.0.0.2"], None),
        (["play", "s.yaml", "--host", "::1"], None),
        (["replay", "c.yaml", "--host", ""], "listening on every interface"),
        (["play", "s.yaml", "--host", "::", "--mode", "regular"], "read what it replays or records ("),
        (
            ["record", "https://atlas.microsoft.com", "-o", "c.yaml", "--host", "0.0.0.0"],
            "reach https://atlas",
        ),
        (
            ["play", "s.yaml", "--upstream", "http://h:1", "--host", "192.0.2.2"],
            "and reach http://h:1 through it",
        ),
        (
            ["record", "--mode", "regular", "-o", "c.yaml", "--host", "0.0.0.0"],
            "reach any host this machine can",
        ),
    ],
)
def test_the_warning_names_what_others_can_do(argv: list[str], warns: str | None) -> None:
    """Loopback in any spelling is quiet; otherwise the warning says what a stranger gains: reading the
    traffic, and, when the proxy forwards, the upstream (or, as a forward proxy, any host)."""
    warning = exposure_warning(build_parser().parse_args(argv))
    if warns is None:
        assert warning is None
    else:
        assert warning is not None and warning.startswith("replay-proxy: warning: listening on ")
        assert "anyone who can reach it can use the proxy and read what it replays or records" in warning
        assert warns in warning, warning
