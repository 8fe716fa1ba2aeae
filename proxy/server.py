"""ReplayProxy: replay-proxy embedded in a program, mitmproxy on a background thread with its own loop.

Only the mitmproxy addons the proxy needs are loaded (core, proxyserver, next_layer, tlsconfig and
ours): the stock set of ~35 addons halves throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from mitmproxy import exceptions, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.certs import CertStore
from mitmproxy.master import Master

from proxy.addon import ReplayAddon
from proxy.errors import ConfigError, ReplayProxyError, StartupError
from proxy.journal import Journal
from proxy.matching import DEFAULT_MATCH_ON

MODES = ("reverse", "regular")
UNREACHABLE = "http://127.0.0.1:9"
"""Reverse target when replaying with no upstream: never dialled (answers come from the cassette)."""


def default_confdir() -> Path:
    """Where the CA lives unless told otherwise: $REPLAY_PROXY_CONFDIR, else ~/.replay-proxy."""
    env = os.environ.get("REPLAY_PROXY_CONFDIR")
    return Path(env) if env else Path.home() / ".replay-proxy"


def ensure_ca(confdir: Path) -> Path:
    """Create mitmproxy's CA in ``confdir`` if missing; return the certificate clients must trust."""
    try:
        confdir.mkdir(parents=True, exist_ok=True)
        CertStore.from_store(str(confdir), "mitmproxy", 2048)
    except OSError as e:
        raise ConfigError(f"{confdir}: cannot create the CA there: {e.strerror or e}") from e
    return confdir / "mitmproxy-ca-cert.pem"


def check_upstream(url: str) -> str:
    """An absolute http(s) URL with a host, or a ConfigError saying what is wrong."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"bad upstream URL {url!r}: expected http(s)://host[:port], e.g. https://atlas.microsoft.com"
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"bad upstream URL {url!r}: invalid port") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"bad upstream URL {url!r}: give the origin only (scheme://host[:port]); "
            "clients send their paths through the proxy unchanged"
        )
    return url.rstrip("/")


class ReplayProxy:
    """Record, replay and play through an embedded mitmproxy; a context manager exposing ``.url``.

    ``ReplayProxy("c.yaml")`` replays offline; ``ReplayProxy("c.yaml", upstream=URL)`` records a fresh
    cassette (record mode ``rewrite`` unless ``record_mode`` says otherwise: ``all``, ``new_episodes``,
    ``once``, ``none`` have vcrpy's meanings). ``scenarios=[...]`` answers first from scenario files,
    over the cassette, the upstream (forwarding what they do not answer), or nothing (offline).
    One per process: mitmproxy's context is global.
    """

    def __init__(
        self,
        cassette: str | os.PathLike[str] | None = None,
        upstream: str | None = None,
        *,
        record_mode: str | None = None,
        mode: str = "reverse",
        host: str = "127.0.0.1",
        port: int = 0,
        confdir: str | os.PathLike[str] | None = None,
        match_on: Sequence[str] = DEFAULT_MATCH_ON,
        match_headers: Sequence[str] = (),
        when_exhausted: str = "repeat-last",
        retry_after: float | None = None,
        redact: bool = True,
        redact_headers: Sequence[str] = (),
        redact_query: Sequence[str] = (),
        redact_json: Sequence[str] = (),
        scenarios: Sequence[str | os.PathLike[str]] = (),
        clock: str | None = None,
        upstream_ca: str | os.PathLike[str] | None = None,
        journal: Journal | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose from: {', '.join(MODES)}")
        self.upstream = check_upstream(upstream) if upstream else None
        self.mode = mode
        self.host = host
        self.port = port
        self.confdir = Path(confdir) if confdir is not None else default_confdir()
        if upstream_ca is not None and not Path(upstream_ca).is_file():
            raise ConfigError(f"{os.fspath(upstream_ca)}: upstream CA file not found")
        self.upstream_ca = os.fspath(upstream_ca) if upstream_ca is not None else None
        if mode == "regular" and tuple(match_on) == DEFAULT_MATCH_ON:
            # A forward proxy serves many hosts: the same path on another host is another resource.
            match_on = ("method", "scheme", "host", "port", "path", "query")
        self.addon = ReplayAddon(journal)
        default_mode = "rewrite" if upstream and cassette is not None else "none"
        self.replay_options: dict[str, Any] = {
            "replay_cassette": os.fspath(cassette) if cassette is not None else None,
            "replay_record_mode": record_mode or default_mode,
            "replay_match_on": list(match_on),
            "replay_match_headers": list(match_headers),
            "replay_when_exhausted": when_exhausted,
            "replay_retry_after": None if retry_after is None else repr(float(retry_after)),
            "replay_redact": redact,
            "replay_redact_headers": list(redact_headers),
            "replay_redact_query": list(redact_query),
            "replay_redact_json": list(redact_json),
            "replay_upstream": self.upstream,
            "replay_scenarios": [os.fspath(s) for s in scenarios],
            "replay_clock": clock,
            # With an upstream but no cassette to record to, forward what nothing else answers.
            "replay_passthrough": bool(upstream) and cassette is None,
        }
        self.url = ""
        self.listen_port = 0
        self._master: Master | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def journal(self) -> Journal:
        return self.addon.journal

    @property
    def ca_cert(self) -> Path:
        """The CA certificate a client must trust for HTTPS through the proxy."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    def start(self, timeout: float = 30.0) -> ReplayProxy:
        """Start serving; returns when the port is bound. Raises ReplayProxyError on a start failure."""
        if self._thread is not None:
            raise RuntimeError("ReplayProxy already started")
        try:
            self.confdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"{self.confdir}: cannot create the configuration directory: {e.strerror or e}"
            ) from e
        self._thread = threading.Thread(target=self._thread_main, name="replay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise StartupError(f"the proxy did not start within {timeout:g} s")
        if self._error is not None:
            self._thread.join(10)
            error = self._error
            if isinstance(error, ReplayProxyError):
                raise error
            raise StartupError(f"the proxy could not start: {error}") from error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and save what was recorded. Safe to call twice."""
        master, loop, thread = self._master, self._loop, self._thread
        if master is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(master.shutdown)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._error is not None and not isinstance(self._error, ReplayProxyError):
            logging.getLogger("proxy").debug("proxy thread ended with %r", self._error)

    def __enter__(self) -> ReplayProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the proxy thread ----------------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            if self._error is None:
                self._error = e
        finally:
            _remove_mitmproxy_log_handlers()
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        opts = options.Options(listen_host=self.host, listen_port=self.port, confdir=str(self.confdir))
        master = Master(opts)
        self._master = master
        master.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            self.addon,
            _Ready(self),
        )
        errors = _ErrorCapture()
        logging.getLogger().addHandler(errors)
        try:
            try:
                master.options.update(**self.replay_options)
                master.options.update(
                    mode=[self._mode_spec()],
                    connection_strategy="lazy",
                    ssl_verify_upstream_trusted_ca=self.upstream_ca,
                )
            except exceptions.OptionsError as e:
                cause = e.__cause__
                self._error = cause if isinstance(cause, ReplayProxyError) else ConfigError(str(e))
                return
            await master.run()
        finally:
            if self._error is None and not self.listen_port:
                self._error = StartupError(self._bind_error(errors.messages))
            # Still capturing: stopping a server that never bound logs an empty ERROR, which Python's
            # last-resort handler would print as a blank line on stderr.
            try:
                await _close_servers(master)
            finally:
                logging.getLogger().removeHandler(errors)

    def _mode_spec(self) -> str:
        if self.mode == "regular":
            return "regular"
        target = self.upstream or (self.addon.session and self.addon.session.primary_origin) or UNREACHABLE
        return f"reverse:{target}"

    def _bind_error(self, messages: list[str]) -> str:
        detail = messages[-1] if messages else "no listening socket"
        if "in use" in detail.lower():
            return (
                f"cannot listen on {self.host}:{self.port}: the port is already in use "
                "(choose another with --port, or --port 0)"
            )
        return f"cannot listen on {self.host}:{self.port}: {detail}"

    def _on_running(self) -> None:
        assert self._master is not None
        ps = self._master.addons.get("proxyserver")
        addrs = ps.listen_addrs() if ps is not None else []
        if addrs:
            host, port = addrs[0][:2]
            self.listen_port = port
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{port}"
        else:
            self._master.shutdown()
            return
        self._ready.set()


class _Ready:
    """Tells the starting thread that the sockets are bound (mitmproxy's ``running`` hook)."""

    def __init__(self, proxy: ReplayProxy) -> None:
        self.proxy = proxy

    def running(self) -> None:
        self.proxy._on_running()


class _ErrorCapture(logging.Handler):
    """Collects ERROR records logged while the proxy runs (mitmproxy logs bind failures this way)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _close_servers(master: Master, timeout: float = 2.0) -> None:
    """Close listeners and client connections so asyncio.run's teardown has nothing left to cancel."""
    ps = master.addons.get("proxyserver")
    if ps is None:
        return
    try:
        await ps.servers.update([])
        for handler in list(ps.connections.values()):
            io = handler.transports.get(handler.client)
            if io is not None and io.handler is not None:
                io.handler.cancel("proxy shutdown")
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while ps.connections and loop.time() < end:
            await asyncio.sleep(0.01)
    except Exception:
        pass


def _remove_mitmproxy_log_handlers() -> None:
    """mitmproxy leaves handlers on the root logger that fail once its loop is closed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__module__.startswith("mitmproxy"):
            root.removeHandler(handler)
