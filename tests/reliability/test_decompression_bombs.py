"""Decompression bombs in a cassette (issue 16): refused with a located error, in bounded memory.

vcrpy's httpx stub saves compressed bodies as they came, with their ``Content-Encoding``; the proxy
decodes them when it loads the cassette. A small body that expands to hundreds of MiB must not cost that
memory: decoding stops past ``--max-body-size`` and the command says which interaction and where. A body
that claims an encoding, has its signature and does not decode is refused too: it is not served as if it
had been decoded. mitmproxy's own errors reach the console.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from pathlib import Path

import brotli
import pytest
from mitmproxy.net import encoding as codecs  # zstd on both stacks (zstandard / PEP 784)

from proxy import cassette
from proxy.model import Interaction, Request, Response
from tests.reliability.test_hostile_files import ERROR, run_proxy

BOMB = 512 << 20
"""Bytes each bomb decodes to (zeros)."""
LIMIT = "16m"
BODY_LINE = 21
"""Where the second interaction's response body is in the cassette ``_cassette`` writes."""
PEAK_RSS = 256 << 20
"""Peak RSS a refused bomb may cost the command (measured: 77-93 MiB; before the fix it held all 512 MiB)."""


def _bomb(encoding: str) -> bytes:
    zeros = bytes(BOMB)
    if encoding == "gzip":
        return gzip.compress(zeros, compresslevel=9, mtime=0)
    if encoding == "br":
        return bytes(brotli.compress(zeros, quality=5))
    return bytes(codecs.encode(zeros, "zstd"))


def _cassette(path: Path, encoding: str, body: bytes) -> Path:
    ok = Interaction(Request("GET", "http://h/ok", (), b""), Response(200, "OK", (), b"fine"))
    bomb = Interaction(
        Request("GET", "http://h/bomb", (), b""), Response(200, "OK", (("Content-Encoding", encoding),), body)
    )
    cassette.save(path, [ok, bomb])
    return path


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_a_decompression_bomb_is_refused_with_a_located_error(
    encoding: str, tmp_path: Path, confdir: Path
) -> None:
    body = _bomb(encoding)
    path = _cassette(tmp_path / f"bomb-{encoding}.yaml", encoding, body)
    run = run_proxy(["replay", str(path), "--max-body-size", LIMIT], tmp_path, confdir)
    print(
        f"\n{encoding}: {len(body):,} bytes -> {BOMB:,}: exit {run.status} in {run.seconds:.1f} s, "
        f"peak RSS {run.peak_rss / 2**20:.0f} MiB"
    )
    assert run.status == 2, run.stderr
    where = f"{ERROR}{path}:{BODY_LINE}:7: interaction 1: response body (Content-Encoding: {encoding})"
    assert run.stderr.startswith(where), run.stderr
    assert "decodes to more than 16,777,216 bytes (--max-body-size)" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.peak_rss < PEAK_RSS


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_body_with_the_signature_that_does_not_decode_is_refused(encoding: str, tmp_path: Path) -> None:
    """Truncated: before, it was kept as if it were already decoded and served with its header."""
    whole = bytes(codecs.encode(b"x" * 100_000, encoding))
    path = _cassette(tmp_path / "torn.yaml", encoding, whole[: len(whole) // 2])
    where = rf"torn.yaml:{BODY_LINE}:7: interaction 1: .* does not decode"
    with pytest.raises(cassette.CassetteError, match=where):
        cassette.load(path)


def test_bodies_within_the_limit_are_decoded_and_plain_ones_kept(tmp_path: Path) -> None:
    data = b'{"ok": true}' * 1000
    bodies = {
        "gzip": gzip.compress(data),
        "deflate": zlib.compress(data),
        "br": brotli.compress(data),
        "zstd": codecs.encode(data, "zstd"),
    }
    for encoding, body in bodies.items():
        path = _cassette(tmp_path / f"{encoding}.yaml", encoding, body)
        assert cassette.load(path)[1].response.body == data
        with pytest.raises(cassette.CassetteError, match="decodes to more than 11,999 bytes"):
            cassette.load(path, max_body_size=len(data) - 1)
        # urllib3's shape: decoded already, header kept: kept as it is
        plain = _cassette(tmp_path / f"plain-{encoding}.yaml", encoding, data)
        assert cassette.load(plain)[1].response.body == data


def test_mitmproxy_errors_reach_the_console() -> None:
    """An error mitmproxy logs (an addon that raised, say) is printed; before, nothing was."""
    code = """
import asyncio, logging
from proxy import cli
from mitmproxy import options
from mitmproxy.master import Master
cli._configure_logging(quiet=True)
async def main():
    Master(options.Options())  # puts its handler on the root logger: Python's last resort stays silent
    logging.getLogger("mitmproxy.addonmanager").error("Addon error: MemoryError", exc_info=MemoryError())
    logging.getLogger("mitmproxy.addons.proxyserver").error("")
    logging.getLogger("mitmproxy.proxy.server").info("client connect")
asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.startswith("replay-proxy: mitmproxy error: Addon error: MemoryError\n"), done.stderr
    assert "MemoryError" in done.stderr.splitlines()[-1]
    assert "client connect" not in done.stderr
