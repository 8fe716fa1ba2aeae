"""ReplayProxy: replay-proxy embedded in a program, on a background thread with its own loop.

The mitmproxy engine loads only the mitmproxy addons the proxy needs (core, proxyserver, next_layer,
tlsconfig and ours): the stock set of ~35 addons halves throughput. mitmproxy is imported only by that
engine: the lean one (proxy/lean.py) starts without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from proxy import control, lean, loading
from proxy.errors import CassetteNotFoundError, ConfigError, ReplayProxyError, StartupError
from proxy.har import HarCapture, is_har
from proxy.journal import Journal
from proxy.matching import DEFAULT_MATCH_ON
from proxy.session import Core
from proxy.settings import DEFAULT_UPSTREAM_TIMEOUT, KWARG, Settings, addon_options, from_kwargs, on
from proxy.settings import check_upstream as check_upstream  # its home until settings.py took it
from proxy.settings import parse_size as parse_size  # likewise

if TYPE_CHECKING:
    from mitmproxy.master import Master

    from proxy.addon import ReplayAddon

MODES = ("reverse", "regular")
_START_TICK = 0.5
"""Seconds between ``progress`` calls while ``start`` waits."""
UNREACHABLE = "http://127.0.0.1:9"
"""Reverse target when replaying with no upstream: never dialled (answers come from the cassette)."""

_T = TypeVar("_T")

_running_lock = threading.Lock()
_running: ReplayProxy | None = None
"""The proxy whose mitmproxy runs in this process: mitmproxy's context (``ctx.master``) is global, so a
second master would take over the first one's traffic."""


class _Keep:
    """``use()``'s default for a setting: keep what the proxy was constructed with."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


def default_confdir() -> Path:
    """Where the CA lives unless told otherwise: $REPLAY_PROXY_CONFDIR, else ~/.replay-proxy."""
    env = os.environ.get("REPLAY_PROXY_CONFDIR")
    return Path(env) if env else Path.home() / ".replay-proxy"


def ensure_ca(confdir: Path) -> Path:
    """Create mitmproxy's CA in ``confdir`` if missing; return the certificate clients must trust."""
    from mitmproxy.certs import CertStore

    try:
        confdir.mkdir(parents=True, exist_ok=True)
        CertStore.from_store(str(confdir), "mitmproxy", 2048)
    except OSError as e:
        raise ConfigError(f"{confdir}: cannot create the CA there: {e.strerror or e}") from e
    return confdir / "mitmproxy-ca-cert.pem"


DEFAULT_MAX_BODY_SIZE = "100m"
"""Request bodies above this get 413 (upstream response bodies 502) instead of being buffered."""


class ReplayProxy:
    """Record, replay and play through an embedded mitmproxy; a context manager exposing ``.url``.

    ``ReplayProxy("c.yaml")`` replays offline; ``ReplayProxy("c.yaml", upstream=URL)`` records a fresh
    cassette (record mode ``rewrite`` unless ``record_mode`` says otherwise: ``all``, ``new_episodes``,
    ``once``, ``none`` have vcrpy's meanings). ``scenarios=[...]`` answers first from scenario files,
    over the cassette, the upstream (forwarding what they do not answer), or nothing (offline).
    ``use()`` switches what a running proxy serves (milliseconds, state reset); ``forward_port`` adds a
    forward-proxy listener (``forward_url``) beside the reverse one. One per process: mitmproxy's
    context is global.
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
        filter_query_parameters: Sequence[str] = (),
        filter_headers: Sequence[str] = (),
        when_exhausted: str = "repeat-last",
        retry_after: float | None = None,
        redact: bool = True,
        redact_headers: Sequence[str] = (),
        redact_query: Sequence[str] = (),
        redact_json: Sequence[str] = (),
        redact_except: Sequence[str] = (),
        scenarios: Sequence[str | os.PathLike[str]] = (),
        clock: str | None = None,
        upstream_ca: str | os.PathLike[str] | None = None,
        journal: Journal | None = None,
        forward_port: int | None = None,
        max_body_size: int | str | None = DEFAULT_MAX_BODY_SIZE,
        upstream_timeout: float | None = DEFAULT_UPSTREAM_TIMEOUT,
        control_api: bool = True,
        control_token: str | None = None,
        root: str | os.PathLike[str] | None = None,
        journal_file: str | os.PathLike[str] | None = None,
        engine: str = lean.DEFAULT_ENGINE,
        har: str | os.PathLike[str] | None = None,
    ) -> None:
        # Each keyword is a setting of proxy/settings.py (a test holds this signature to its table).
        given = {name: value for name, value in locals().items() if name in _KEYWORDS}
        settings = from_kwargs(given)
        if forward_port is not None and (settings.mode != "reverse" or not 0 < forward_port < 65536):
            raise ConfigError("forward_port adds a forward-proxy listener to reverse mode: give a free port")
        self.forward_port = forward_port
        self.max_body_size = settings.max_body_size
        """Bytes; a larger request body gets 413 (None: no limit)."""
        self.upstream = settings.upstream
        self.mode = settings.mode
        self.host = settings.host
        self.port = settings.port
        self.confdir = settings.confdir if settings.confdir is not None else default_confdir()
        if settings.upstream_ca is not None and not settings.upstream_ca.is_file():
            raise ConfigError(f"{settings.upstream_ca}: upstream CA file not found")
        self.upstream_ca = os.fspath(settings.upstream_ca) if settings.upstream_ca is not None else None
        if settings.mode == "regular" and settings.match_on == DEFAULT_MATCH_ON:
            # A forward proxy serves many hosts: the same path on another host is another resource.
            settings = replace(settings, match_on=("method", "scheme", "host", "port", "path", "query"))
        self.settings = settings
        """What the proxy was constructed with: what use() falls back to for a setting it is not given."""
        self.engine = settings.engine
        """``mitmproxy`` (everything) or ``lean`` (replay and play, HTTP/1.1, several times faster)."""
        if self.engine == "lean" and settings.har is not None:  # HarCapture reads mitmproxy's flows
            raise ConfigError(f"the lean engine does not write HAR (--har, har=): {lean._UNSUPPORTED}")
        self.core = Core(journal)
        """The session served, the journal, the control API: what both engines answer with."""
        self.addon: ReplayAddon | None = None
        """The mitmproxy engine's addon over ``core`` (None with the lean engine)."""
        self.har: HarCapture | None = None
        """With ``har``: every exchange as the client saw it, written as HAR 1.2 when the proxy stops."""
        if self.engine == "mitmproxy":
            from proxy.addon import ReplayAddon

            self.addon = ReplayAddon(core=self.core)
            self.har = HarCapture(settings.har, self.addon) if settings.har is not None else None
            self.addon.annotate_flows = self.har is not None  # each HAR entry's comment says what answered it
        if settings.control_api:
            self.core.control = _control_api(self, settings.host, settings.control_token, settings.root)
        self.replay_options = addon_options(_served(settings))
        self._check_engine(self.replay_options)
        self._lean: lean.LeanServer | None = None
        self._lean_stop: asyncio.Event | None = None
        self.url = ""
        self.forward_url = ""
        """With ``forward_port``: the forward proxy's URL (for HTTP_PROXY / HTTPS_PROXY)."""
        self.listen_port = 0
        self._master: Master | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _check_engine(self, opts: dict[str, Any]) -> None:
        """The lean engine refuses what it cannot do (a ConfigError naming --engine mitmproxy)."""
        if self.engine != "lean":
            return
        why = lean.refusal(
            mode=self.mode,
            record_mode=opts["replay_record_mode"],
            upstream=opts["replay_upstream"],
            passthrough=opts["replay_passthrough"],
            forward_port=self.forward_port,
        )
        if why is not None:
            raise ConfigError(why)

    @property
    def journal(self) -> Journal:
        return self.core.journal

    @property
    def operations(self) -> list[control.OperationHandle]:
        """The scenario operations started since the last ``use``/``reset``, oldest first; each can be
        steered: ``proxy.operations[-1].fail({"code": "InvalidFeature"})``, ``.hold()``, ``.advance()``..."""
        machine = self._machine()
        states = machine.operations if machine is not None else []
        return [control.OperationHandle(self._machine, state) for state in states]

    def _machine(self) -> Any:
        session = self.core.session
        return session.router.scenarios if session is not None else None

    @property
    def ca_cert(self) -> Path:
        """The CA certificate a client must trust for HTTPS through the proxy."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def https_url(self) -> str:
        """The reverse proxy's listener spoken to over TLS (the same port): for clients that refuse plain
        http, such as azure-core with a bearer token. Trust ``ca_cert``. Empty in forward mode."""
        if self.mode != "reverse" or not self.url or self.engine == "lean":
            return ""
        return "https://" + self.url.removeprefix("http://")

    def start(
        self, timeout: float | None = 30.0, progress: Callable[[float], None] | None = None
    ) -> ReplayProxy:
        """Start serving; returns when the port is bound. Raises ReplayProxyError on a start failure.

        ``timeout``: seconds to wait (None: as long as loading the cassette takes; a large one takes
        minutes). ``progress(seconds)`` is called about twice a second while waiting (see
        ``proxy.loading.current`` for how far a cassette load got)."""
        if self._thread is not None:
            raise RuntimeError("ReplayProxy already started")
        try:
            self.confdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"{self.confdir}: cannot create the configuration directory: {e.strerror or e}"
            ) from e
        _claim(self)
        self._thread = threading.Thread(target=self._thread_main, name="replay-proxy", daemon=True)
        self._thread.start()
        began = time.monotonic()
        while not self._ready.wait(_START_TICK if timeout is None else min(_START_TICK, timeout)):
            waited = time.monotonic() - began
            if timeout is not None and waited >= timeout:
                still = loading.current()
                self.stop()
                why = f" ({still.line(waited).removeprefix('replay-proxy: ')})" if still else ""
                raise StartupError(
                    f"the proxy did not start within {timeout:g} s{why}: give start() a longer timeout, "
                    "or None to wait as long as loading takes"
                )
            if progress is not None:
                progress(waited)
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
        lean_stop = self._lean_stop
        if lean_stop is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(lean_stop.set)
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

    # -- switching what a running proxy serves -------------------------------------------------------------

    def use(
        self,
        *paths: str | os.PathLike[str],
        scenarios: Sequence[str | os.PathLike[str]] = (),
        cassette: str | os.PathLike[str] | None = None,
        record_mode: str | None = None,
        upstream: str | None = KEEP,
        retry_after: float | None = KEEP,
        clock: str | None = KEEP,
        match_on: Sequence[str] = KEEP,
        match_headers: Sequence[str] = KEEP,
        filter_query_parameters: Sequence[str] = KEEP,
        filter_headers: Sequence[str] = KEEP,
        when_exhausted: str = KEEP,
        redact: bool = KEEP,
        redact_headers: Sequence[str] = KEEP,
        redact_query: Sequence[str] = KEEP,
        redact_json: Sequence[str] = KEEP,
        redact_except: Sequence[str] = KEEP,
        timeout: float = 30.0,
    ) -> ReplayProxy:
        """Serve something else from now on, without restarting mitmproxy; all state starts afresh.

        Each of ``paths`` is a scenario file (``routes``/``operations``) or a cassette (``interactions``;
        a path that does not exist yet is a cassette to record), told apart by content. ``scenarios`` and
        ``cassette`` say it explicitly. Settings not given keep the constructor's values; ``record_mode``
        defaults as in the constructor. Operation counters, sequences, cassette playback and the journal
        are reset even when nothing changed; a cassette being recorded is saved. ``use()`` alone serves
        nothing. Raises ReplayProxyError (the proxy keeps serving what it served) on a bad file or option.
        """
        given = {name: value for name, value in locals().items() if name in _KEYWORDS and value is not KEEP}
        found_scenarios = [os.fspath(s) for s in scenarios]
        for path in paths:
            if classify(path) == "scenario":
                found_scenarios.append(os.fspath(path))
            elif cassette is not None:
                raise ConfigError(f"{os.fspath(path)}: only one cassette at a time (already {cassette})")
            else:
                cassette = path
        given.update(cassette=cassette, scenarios=found_scenarios)
        settings = _served(from_kwargs(given, base=self.settings))
        if cassette is not None and settings.record_mode == "none" and not Path(cassette).exists():
            raise CassetteNotFoundError(
                f"{os.fspath(cassette)}: no such file (neither a scenario nor a cassette to replay; "
                "record mode none records nothing)"
            )
        opts = addon_options(settings)
        self._check_engine(opts)
        self._call_on_loop(lambda: self._switch(opts), timeout)
        return self

    def reset(self, timeout: float = 30.0) -> ReplayProxy:
        """Start what is served afresh (counters, sequences, playback, journal); save what was recorded."""
        self._call_on_loop(lambda: self._switch(None), timeout)
        return self

    def _switch(self, opts: dict[str, Any] | None) -> None:
        """On the proxy's loop: set the options (the addon rebuilds its session) and clear the journal."""
        if self._lean is not None:
            lean.install_session(self.core, opts or self.replay_options, self.max_body_size)
            self.replay_options = dict(opts or self.replay_options)
            self.core.journal.clear()
            return
        from mitmproxy import exceptions

        assert self._master is not None
        if opts is None:
            names = self.replay_options.keys()
            opts = {name: getattr(self._master.options, name) for name in names}
        try:
            # mitmproxy tells addons about every option given, changed or not: the session is rebuilt.
            self._master.options.update(**opts)
        except exceptions.OptionsError as e:
            cause = e.__cause__
            raise cause if isinstance(cause, ReplayProxyError) else ConfigError(str(e)) from e
        self.replay_options = dict(opts)
        self.core.journal.clear()

    def _call_on_loop(self, fn: Callable[[], _T], timeout: float) -> _T:
        """Run ``fn`` on the proxy's event loop (between two hooks, never inside one); return its result."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive() or not self.url or loop.is_closed():
            raise ReplayProxyError("the proxy is not running: start() it first")
        if threading.current_thread() is thread:
            return fn()

        async def call() -> _T:
            return fn()

        future = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise ReplayProxyError(f"the proxy did not switch within {timeout:g} s") from None

    # -- the proxy thread ----------------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            if self.engine == "lean":
                lean.run(self._main())
            else:
                asyncio.run(self._main())
        except BaseException as e:
            if self._error is None:
                self._error = e
        finally:
            _remove_mitmproxy_log_handlers()
            _release(self)
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.engine == "lean":
            await self._lean_main()
        else:
            await self._mitmproxy_main()

    async def _mitmproxy_main(self) -> None:
        """Serve with mitmproxy (its Master, a few of its addons and ours) until ``stop``."""
        from mitmproxy import exceptions, options
        from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
        from mitmproxy.master import Master

        from proxy import mitm_internals

        assert self.addon is not None
        opts = options.Options(listen_host=self.host, listen_port=self.port, confdir=str(self.confdir))
        master = Master(opts)
        self._master = master
        master.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            self.addon,
            *([self.har] if self.har is not None else []),
            _Ready(self),
        )
        errors = _ErrorCapture()
        logging.getLogger().addHandler(errors)
        try:
            try:
                # body_size_limit first: it also caps the decoded bodies of the cassette the addon loads
                master.options.update(body_size_limit=str(self.max_body_size) if self.max_body_size else None)
                master.options.update(**self.replay_options)
                specs = self._mode_specs()
                mitm_internals.listen_on_tcp_only(specs)
                master.options.update(
                    mode=specs,
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
                await mitm_internals.close_servers(master)
            finally:
                logging.getLogger().removeHandler(errors)

    async def _lean_main(self) -> None:
        """Serve with the lean engine (proxy/lean.py) until ``stop``."""
        self._lean_stop = asyncio.Event()
        try:
            lean.install_session(self.core, self.replay_options, self.max_body_size)
        except ReplayProxyError as e:
            self._error = e
            self.core.open_journal_file(None)
            return
        target = self.core.session.primary_origin if self.core.session is not None else None
        server = lean.LeanServer(self.core, self.max_body_size, target or UNREACHABLE)
        try:
            host, port = await server.start(self.host, self.port)
        except OSError as e:
            detail = "the port is already in use" if "in use" in str(e).lower() else str(e)
            self._error = StartupError(self._bind_error([detail]))
            await server.close()
            return
        self._lean = server
        self.listen_port = port
        self.url = _url_of((host, port))
        self._ready.set()
        try:
            await self._lean_stop.wait()
        finally:
            await server.close()

    def _mode_spec(self) -> str:
        if self.mode == "regular":
            return "regular"
        target = self.upstream or (self.core.session and self.core.session.primary_origin) or UNREACHABLE
        return f"reverse:{target}"

    def _mode_specs(self) -> list[str]:
        """The listeners: the main one, plus a forward proxy on ``forward_port`` when asked.

        mitmproxy refuses two listeners configured on the same port, so only the main one may use port 0.
        """
        specs = [self._mode_spec()]
        if self.forward_port is not None:
            specs.append(f"regular@{self.forward_port}")
        return specs

    def _bind_error(self, messages: list[str]) -> str:
        detail = messages[-1] if messages else "no listening socket"
        if self.forward_port is not None:
            return f"cannot listen on {self.host}:{self.port} and {self.host}:{self.forward_port}: {detail}"
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
        if addrs and self.forward_port is not None:
            for server in ps.servers:
                if server.listen_addrs and server.mode.type_name == "regular":
                    self.forward_url = _url_of(server.listen_addrs[0])
                elif server.listen_addrs:
                    addrs = server.listen_addrs
            if not self.forward_url:
                self._master.shutdown()
                return
        if addrs:
            self.listen_port = addrs[0][1]
            self.url = _url_of(addrs[0])
        else:
            self._master.shutdown()
            return
        self._ready.set()


def _control_api(
    proxy: ReplayProxy, host: str, token: str | None, root: str | os.PathLike[str] | None
) -> control.ControlAPI:
    """The control API of ``proxy``: on for loopback; beyond it, only with a token (then required)."""
    import ipaddress

    name = host.strip("[]")
    try:
        loopback = name.lower() == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    return control.ControlAPI(
        _ControlHost(proxy),
        root=root,
        token=token,
        enabled=loopback or bool(token),
        off_reason=f"the control API is off: the proxy listens on {host or 'every interface'}, beyond "
        "loopback, and was given no --control-token (start it with --control-token TOKEN to turn it on)",
    )


class _ControlHost:
    """A ReplayProxy as the control API's ``Host`` (called on the proxy's event loop)."""

    def __init__(self, proxy: ReplayProxy) -> None:
        self.proxy = proxy

    def use(self, scenarios: list[Path], cassette: Path | None, settings: Any) -> None:
        self.proxy.use(scenarios=scenarios, cassette=cassette, **settings)

    def reset(self) -> None:
        self.proxy.reset()

    def entries(self) -> list[Any]:
        return self.proxy.journal.entries

    def machine(self) -> Any:
        return self.proxy._machine()

    def loaded(self) -> dict[str, Any]:
        opts = self.proxy.replay_options
        retry_after = opts.get("replay_retry_after")
        return {
            "scenarios": list(opts.get("replay_scenarios") or []),
            "cassette": opts.get("replay_cassette"),
            "record_mode": opts.get("replay_record_mode"),
            "retry_after": float(retry_after) if retry_after is not None else None,
            "clock": opts.get("replay_clock"),
            "upstream": opts.get("replay_upstream"),
        }


def _claim(proxy: ReplayProxy) -> None:
    """Make ``proxy`` this process's one running proxy, or raise StartupError naming the one running."""
    global _running
    with _running_lock:
        if _running is not None:
            where = _running.url or "still starting"
            raise StartupError(
                f"another ReplayProxy is running in this process ({where}): mitmproxy runs one proxy per "
                "process; stop() that one first, or have it serve something else with use()"
            )
        _running = proxy


def _release(proxy: ReplayProxy) -> None:
    """``proxy``'s thread has ended: another proxy may start."""
    global _running
    with _running_lock:
        if _running is proxy:
            _running = None


def classify(path: str | os.PathLike[str]) -> str:
    """``"scenario"`` or ``"cassette"``, by the top-level keys; a missing file is a cassette to record."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "cassette"
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it: {e.strerror or e}") from e
    if is_har(p):
        return "cassette"  # a HAR file replays like one
    keys = set(re.findall(r"^([A-Za-z_][\w-]*)\s*:", text, re.MULTILINE))
    if "interactions" in keys or (text.lstrip().startswith("{") and '"interactions"' in text):
        return "cassette"  # vcrpy's YAML, or its JSON
    if keys & {"routes", "operations"}:
        return "scenario"
    if not text.strip():
        return "cassette"  # vcrpy reads an empty file as an empty cassette
    raise ConfigError(
        f"{p}: neither a scenario (top-level 'routes' or 'operations') "
        "nor a cassette (top-level 'interactions')"
    )


_KEYWORDS = frozenset(s.name for s in on(KWARG))


def _served(settings: Settings) -> Settings:
    """``settings`` as one session serves them: record mode ``rewrite`` when there is an upstream and a
    cassette to record to, else ``none``; with an upstream but no cassette, forward what nothing else
    answers."""
    default_mode = "rewrite" if settings.upstream and settings.cassette is not None else "none"
    return replace(
        settings,
        record_mode=settings.record_mode or default_mode,
        passthrough=bool(settings.upstream) and settings.cassette is None,
    )


def _url_of(addr: Any) -> str:
    host, port = addr[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Ready:
    """Tells the starting thread that the sockets are bound (mitmproxy's ``running`` hook), then leaves
    the addon chain: mitmproxy offers every addon in it the eight events of each request."""

    def __init__(self, proxy: ReplayProxy) -> None:
        self.proxy = proxy

    def running(self) -> None:
        self.proxy._on_running()
        master = self.proxy._master
        if master is not None:
            master.addons.remove(self)  # a new chain list: the event being dispatched is not disturbed


class _ErrorCapture(logging.Handler):
    """Collects ERROR records logged while the proxy runs (mitmproxy logs bind failures this way)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _remove_mitmproxy_log_handlers() -> None:
    """mitmproxy leaves handlers on the root logger that fail once its loop is closed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__module__.startswith("mitmproxy"):
            root.removeHandler(handler)
