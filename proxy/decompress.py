"""Decoding a cassette's compressed bodies (gzip, deflate, br, zstd) without trusting their size.

A 2.7 kB brotli body can expand to 1 GiB: each decoder here stops as soon as the output passes
``limit`` (``TooLarge``) instead of building it all first, as mitmproxy's ``encoding.decode`` does.
"""

from __future__ import annotations

import importlib
import zlib
from typing import Any

_CHUNK = 1 << 20
"""Output produced per step by zlib and PEP 784's zstd (both take an output bound)."""
_BROTLI_STEP = 16
"""Input fed to brotli per step: its Python API takes no output bound, and a byte of a bomb can expand
to about a megabyte, so one step overshoots the limit by tens of MB at worst, not by gigabytes (16-byte
steps decode ~20 MB of compressed input a second)."""
_ZSTD_STEP = 256
"""Input fed to ``zstandard`` per step (it takes no output bound): a block of at most 128 KiB can be
written in 4 bytes (32,768 to 1)."""

ENCODINGS = ("gzip", "x-gzip", "deflate", "br", "zstd")


class TooLarge(ValueError):
    """The decoded body is larger than the limit."""


class Invalid(ValueError):
    """The body is not valid in its encoding."""


def decode(body: bytes, encoding: str, limit: int | None) -> bytes:
    """``body`` decoded from ``encoding`` (one of ``ENCODINGS``); ``TooLarge`` past ``limit`` bytes
    (None: no limit), ``Invalid`` when it does not decode."""
    cap = limit if limit is not None else 1 << 62
    try:
        if encoding in ("gzip", "x-gzip"):
            return _zlib(body, 16 + zlib.MAX_WBITS, cap)
        if encoding == "deflate":
            try:
                return _zlib(body, zlib.MAX_WBITS, cap)
            except Invalid:  # raw DEFLATE without the zlib header, which servers send too
                return _zlib(body, -zlib.MAX_WBITS, cap)
        if encoding == "br":
            return _brotli(body, cap)
        if encoding == "zstd":
            return _zstd(body, cap)
    except (TooLarge, Invalid):
        raise
    except MemoryError:
        raise TooLarge(f"out of memory decoding {encoding}") from None
    except Exception as e:
        raise Invalid(f"not valid {encoding}: {e}") from None
    raise Invalid(f"unknown encoding {encoding!r}")


def _zlib(body: bytes, wbits: int, cap: int) -> bytes:
    """zlib/gzip/raw DEFLATE, every gzip member in turn (as ``gzip.GzipFile`` reads them)."""
    out: list[bytes] = []
    size = 0
    data = body
    while True:
        d = zlib.decompressobj(wbits)
        try:
            while data:
                piece = d.decompress(data, min(_CHUNK, cap - size + 1))
                size += len(piece)
                out.append(piece)
                if size > cap:
                    raise TooLarge(f"decodes to more than {cap} bytes")
                data = d.unconsumed_tail
                if d.eof:
                    break
            piece = d.flush(_CHUNK)
        except zlib.error as e:
            raise Invalid(str(e)) from None
        size += len(piece)
        out.append(piece)
        if size > cap:
            raise TooLarge(f"decodes to more than {cap} bytes")
        if not d.eof:
            raise Invalid("incomplete or truncated stream")
        data = d.unused_data
        if wbits < 16 or not data.strip(b"\0"):  # another gzip member follows, or padding
            break
    return b"".join(out)


def _brotli(body: bytes, cap: int) -> bytes:
    brotli: Any = importlib.import_module("brotli")
    d = brotli.Decompressor()
    out: list[bytes] = []
    size = 0
    for i in range(0, len(body), _BROTLI_STEP):
        piece = d.process(body[i : i + _BROTLI_STEP])
        size += len(piece)
        if size > cap:
            raise TooLarge(f"decodes to more than {cap} bytes")
        out.append(piece)
    if not d.is_finished():
        raise Invalid("incomplete or truncated stream")
    return b"".join(out)


def _zstd_module() -> Any:
    """PEP 784's ``compression.zstd`` (or its backport, which mitmproxy 12 uses), else ``zstandard``."""
    for name in ("compression.zstd", "backports.zstd"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _zstd(body: bytes, cap: int) -> bytes:
    """Every frame in turn, with an output bound (PEP 784) or fed in small steps (``zstandard``)."""
    pep784 = _zstd_module()
    out: list[bytes] = []
    size = 0
    data = body
    while data:
        if pep784 is not None:
            d = pep784.ZstdDecompressor()
            piece = d.decompress(data, min(_CHUNK, cap - size + 1))
            while True:
                size += len(piece)
                if size > cap:
                    raise TooLarge(f"decodes to more than {cap} bytes")
                out.append(piece)
                if d.eof or d.needs_input:
                    break
                piece = d.decompress(b"", min(_CHUNK, cap - size + 1))
            rest = d.unused_data
        else:
            d = importlib.import_module("zstandard").ZstdDecompressor().decompressobj()
            i = 0
            while i < len(data) and not d.eof:
                piece = d.decompress(data[i : i + _ZSTD_STEP])
                i += _ZSTD_STEP
                size += len(piece)
                if size > cap:
                    raise TooLarge(f"decodes to more than {cap} bytes")
                out.append(piece)
            rest = d.unused_data + data[i:]
        if not d.eof:
            raise Invalid("incomplete or truncated stream")
        data = rest
    return b"".join(out)
