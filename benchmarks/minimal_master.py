"""mitmproxy's lean floor: a ``Master`` with only core, proxyserver, next_layer, tlsconfig and the trivial
addon (what replay-proxy's ReplayProxy loads, minus replay-proxy), in reverse mode, lazy connections.

``python benchmarks/minimal_master.py [--port 0]`` prints its URL on one line when ready; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path

from mitmproxy import options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trivial_addon import Trivial


class Announce:
    def __init__(self, master: Master) -> None:
        self.master = master

    def running(self) -> None:
        host, port = self.master.addons.get("proxyserver").listen_addrs()[0][:2]
        print(f"minimal master on http://{host}:{port}", flush=True)


async def serve(host: str, port: int, confdir: str) -> None:
    master = Master(options.Options(listen_host=host, listen_port=port, confdir=confdir))
    master.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        Trivial(),
        Announce(master),
    )
    master.options.update(mode=["reverse:http://127.0.0.1:9"], connection_strategy="lazy")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--confdir", default=None, help="mitmproxy's confdir (default: a temporary one)")
    args = parser.parse_args(argv)
    confdir = args.confdir or tempfile.mkdtemp(prefix="bench-mitm-")
    asyncio.run(serve(args.host, args.port, confdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
