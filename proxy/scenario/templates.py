"""Jinja2 templates of scenario answers, rendered in an immutable sandbox, bounded in size and time.

Header values, ``text`` bodies and string values inside ``json`` bodies are templates. They are rendered
by ``jinja2.sandbox.ImmutableSandboxedEnvironment`` with ``StrictUndefined`` and no loader:

* attributes starting with ``_`` (``''.__class__``, ``f.__globals__``) and methods that modify data
  (``dict.update``, ``list.append``) are refused by the sandbox;
* ``{% import %}``, ``{% include %}`` and ``{% extends %}`` are refused (there are no other templates);
* a name the context does not define (``{{ config }}``) is an error, not an empty string;
* **size**: no value a template builds, and not its output, may exceed ``MAX_ITEMS`` characters and items
  (nested lists counted through). Whatever can make a large result from small arguments is checked
  *before* it runs, so the memory is never taken: ``*``, ``**``, ``+``, ``~`` and ``%`` on texts, lists
  and numbers; the filters and text methods that widen or repeat (``center``, ``ljust``, ``indent``,
  ``format`` and ``str.format`` widths, ``join``, ``replace``, ``batch``, ``wordwrap``, ``tojson``...);
  ``lipsum``; macros, ``{% set %}`` blocks and the output as they are joined. A lazy sequence (``map``,
  ``select``) given to a filter or a method is read item by item under the same limit;
* **time**: a render that runs longer than ``RENDER_SECONDS`` (of its thread's CPU time on Linux, so
  that a busy machine does not fail renders that merely waited; wall-clock time elsewhere) is stopped
  (nested loops, a macro that calls itself twice, a long ``range``). The proxy renders on its event
  loop, so a render that never ended would freeze every client; rendering in a worker thread would not
  help, as a Python thread cannot be killed and would keep the CPU and the GIL. A watchdog thread raises
  ``RenderOverBudget`` in the rendering thread once its deadline has passed
  (``PyThreadState_SetAsyncExc``: delivered between two bytecodes, so any loop or recursion of the
  template's code stops); it costs an ordinary render two lock acquisitions, where a trace function
  (``sys.settrace``) cost 5 to 30 times the render. A C call is not interrupted, which is why the size
  limits keep every single step short.

Every failure (syntax, undefined name, sandbox refusal, over budget, any exception the template raises)
becomes one ``TemplateError`` line: ``file:line:column: template error: what``. A string without ``{{``
or ``{%`` is not a template: it is returned as is, without touching Jinja. Compiled templates are cached
by source.
"""

from __future__ import annotations

import functools
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, cast

from proxy.errors import TemplateError

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_NUMBER_BITS = 100_000
"""``a ** b`` or ``a * b`` making an integer longer than this many bits is refused (``10 ** 10 ** 10``)."""
MAX_ITEMS = 1_000_000
"""Characters and items a value built by a template, or its output, may have (``'x' * n``, ``center``)."""
MAX_BUILT = 16 * MAX_ITEMS
"""Characters one render may build in all (values, written output, macros' output): a loop that writes a
large value many times into a macro or a ``{% set %}`` block is stopped before it takes the memory."""
RENDER_SECONDS = 1.0
"""CPU seconds one render may take; past them it is stopped with an error (the proxy's clients wait)."""
WATCH_TICK = 0.05
"""Seconds between two looks of the watchdog at the renders running (how late past RENDER_SECONDS)."""
WATCH_LINGER = 2.0
"""Seconds the watchdog keeps looking after the last render before it sleeps until the next one."""
MAX_LIPSUM = (100, 1000)
"""``lipsum(n, html, min, max)``: at most this many paragraphs of at most this many words."""

_TOO_LONG = f"the result would be too long (more than {MAX_ITEMS} items)"


class RenderOverBudget(Exception):
    """A render ran past its deadline (raised in the rendering thread by the watchdog)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (f"the template took longer than {RENDER_SECONDS:g} s (render budget)",)))


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox every template renders in, built on first use: jinja2 is imported only by scenarios that
    have templates (start-up time)."""
    import jinja2
    from jinja2.compiler import CodeGenerator, Frame
    from jinja2.exceptions import SecurityError
    from jinja2.nodes import Concat
    from jinja2.runtime import Context, markup_join
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Code(CodeGenerator):
        """Jinja's code generator, but ``a ~ b`` joins through the sandbox (``bounded_join``)."""

        def visit_Concat(self, node: Concat, frame: Frame) -> None:
            self.write("environment.bounded_join((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("), context.eval_ctx.autoescape)")

    class _Sandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox, minus other templates, minus what can exhaust the process."""

        intercepted_binops = frozenset({"*", "**", "+", "%"})
        code_generator_class = _Code

        def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
            if _is_int(left) and _is_int(right):
                if operator == "**" and abs(left) > 1 and right > 0:
                    bits = left.bit_length() * right
                elif operator == "*":
                    bits = left.bit_length() + right.bit_length()
                else:
                    bits = 0
                if bits > MAX_NUMBER_BITS:
                    raise SecurityError(f"the number would be too large (more than {MAX_NUMBER_BITS} bits)")
            elif operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, _SEQUENCES) and _is_int(n):
                        _limit(_size(seq) * n)
            elif operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                _limit(_size(left) + _size(right))
            elif operator == "%" and isinstance(left, str):
                _check_printf(left, right)
            return _limited(super().call_binop(context, operator, left, right))

        def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            args = tuple(_materialize(a) for a in args)
            kwargs = {k: _materialize(v) for k, v in kwargs.items()}
            _check_method(__obj, args, kwargs)
            return _limited(super().call(__context, __obj, *args, **kwargs))

        def concat(self, parts: Iterable[str]) -> str:
            """Macros, ``{% set %}`` blocks and ``{% filter %}`` blocks join their output here."""
            return _join_bounded(parts)

        def bounded_join(self, parts: tuple[Any, ...], autoescape: bool) -> str:
            """``a ~ b``: the texts joined, refused when too long (``str_join``/``markup_join``)."""
            texts = [str(p) for p in parts]
            total = sum(len(t) for t in texts)
            _limit(total)
            _spend(total)
            return markup_join(parts) if autoescape else "".join(texts)

        def get_template(self, *args: Any, **kwargs: Any) -> NoReturn:
            _no_other_templates(args)

        def select_template(self, *args: Any, **kwargs: Any) -> NoReturn:
            _no_other_templates(args)

        def get_or_select_template(self, *args: Any, **kwargs: Any) -> NoReturn:
            _no_other_templates(args)

    env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, finalize=_finalize)
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals["lipsum"] = _bounded_lipsum(cast(Callable[..., str], env.globals["lipsum"]))
    return env


_SEQUENCES = (str, bytes, list, tuple)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(message: str) -> NoReturn:
    from jinja2.exceptions import SecurityError

    raise SecurityError(message)


def _limit(size: int) -> None:
    """Refuse a result of ``size`` characters/items over MAX_ITEMS."""
    if size > MAX_ITEMS:
        _refuse(_TOO_LONG)


def _size(value: Any, limit: int = MAX_ITEMS) -> int:
    """Characters of texts plus items of containers in ``value``, nested containers counted through (as
    their text would show them); the count stops soon after passing ``limit``."""
    total, todo = 0, [value]
    while todo and total <= limit:
        item = todo.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item)
            if total <= limit:
                todo.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            if total <= limit:
                todo.extend(item.keys())
                todo.extend(item.values())
        else:
            total += 1
    return total


def _depth(value: Any) -> int:
    """How deeply ``value``'s lists and dicts nest (what indentation multiplies)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, list | tuple | dict):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _limited(value: Any) -> Any:
    """``value`` unless it is too large; its size counts toward the render's MAX_BUILT."""
    if not isinstance(value, int | float | bool) and value is not None:
        size = _size(value)
        _limit(size)
        _spend(size)
    return value


def _materialize(value: Any) -> Any:
    """A lazy sequence (``map``, ``select``, a generator) read into a list under the size limit; other
    values as they are. Filters and methods that read a whole sequence then see a bounded list."""
    if not isinstance(value, Iterator):
        return value
    items, total = [], 0
    for item in value:
        total += 1 + _size(item)
        _limit(total)
        items.append(item)
    return items


def _join_bounded(parts: Iterable[str]) -> str:
    """Texts joined, refused as soon as they pass MAX_ITEMS (the output, macros, blocks)."""
    texts, total = [], 0
    for part in parts:
        total += len(part)
        _limit(total)
        texts.append(part)
    _spend(total)
    return "".join(texts)


def _width(value: Any) -> int:
    """An integer argument as the width it asks for (0 for anything else)."""
    return value if _is_int(value) else 0


def _text_len(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes) else _size(value)


# -- what a filter or a method would make, before it runs -------------------------------------------------

_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_SPEC_NUMBER = re.compile(r"\d+")


def _check_printf(fmt: str, values: Any) -> None:
    """``fmt % values`` (and the ``format`` filter): no width or precision over MAX_ITEMS."""
    star = False
    for m in _PRINTF.finditer(fmt):
        for number in m.groups():
            if number == "*":
                star = True
            elif number is not None and int(number) > MAX_ITEMS:
                _refuse(f"a width or precision in the format is too large (more than {MAX_ITEMS})")
    if star:
        given = values if isinstance(values, tuple) else (values,)
        if any(_is_int(v) and abs(v) > MAX_ITEMS for v in given):
            _refuse(f"a width or precision in the format is too large (more than {MAX_ITEMS})")


def _check_format(fmt: str) -> None:
    """``fmt.format(...)``: no width or precision over MAX_ITEMS, none taken from the arguments."""
    import string

    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:
            _refuse("a format field's width cannot come from the arguments ({:{}}) in templates")
        if any(int(n) > MAX_ITEMS for n in _SPEC_NUMBER.findall(spec)):
            _refuse(f"a width or precision in the format is too large (more than {MAX_ITEMS})")


def _check_widen(text: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str) -> None:
    """``text.NAME(*args)`` for the text methods (and filters) that can make a much longer text."""
    if not isinstance(text, str | bytes):
        return
    s: Any = text
    n = len(s)
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 80 if name == "center" else 0)
        _limit(max(n, _width(width)))
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        _limit(n + s.count("\t" if isinstance(s, str) else b"\t") * max(_width(size), 1))
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        if isinstance(old, str | bytes) and isinstance(new, str | bytes) and type(old) is type(text):
            times = s.count(old) if old else n + 1
            if _is_int(count) and count >= 0:
                times = min(times, count)
            _limit(n + times * len(new))
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, list | tuple | set | frozenset | dict):
            _limit(sum(_text_len(i) for i in items) + len(items) * n)
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str | bytes)), default=1)
        _limit(n * max(longest, 1))
    elif name in ("format", "format_map") and isinstance(text, str):
        _check_format(text)


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """A call from a template: the text methods that widen, checked before they run."""
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if isinstance(owner, str | bytes):
        _check_widen(owner, args, kwargs, name)


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """The filters that can make a result much larger than their value, checked before they run."""
    if name == "center":
        _check_widen(value, args, kwargs, "center")
    elif name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        unit = len(width) if isinstance(width, str) else _width(width)
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        _limit(_text_len(value) + lines * unit)
    elif name == "format" and isinstance(value, str):
        _check_printf(value, kwargs or args)
    elif name == "join":
        glue = args[0] if args else kwargs.get("d", "")
        if isinstance(value, list | tuple | set | frozenset | dict) and isinstance(glue, str):
            _limit(sum(_text_len(i) for i in value) + len(value) * len(glue))
    elif name in ("batch", "slice"):
        count = args[0] if args else kwargs.get("linecount" if name == "batch" else "slices", 0)
        _limit(_width(count))
    elif name == "replace" and len(args) >= 2:
        _check_widen(value, args, kwargs, "replace")
    elif name == "wordwrap":
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring")
        if isinstance(wrap, str) and isinstance(value, str):
            _limit(len(value) * (1 + len(wrap)))
    elif name in ("tojson", "pprint"):
        indent: Any = (args[0] if args else kwargs.get("indent")) if name == "tojson" else 1
        if _is_int(indent) and indent > 0:
            _limit(_size(value) * (1 + indent * _depth(value)))
    elif name == "sum":
        start = args[2] if len(args) > 2 else kwargs.get("start", 0)
        if not isinstance(start, int | float):
            _refuse("sum adds numbers: its start must be a number")


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """Filter ``name`` with its value and arguments checked first and its result after (see the module
    docstring); Jinja's ``pass_context`` and its kind are kept (``functools.wraps`` copies them)."""
    skip = 1 if hasattr(f, "jinja_pass_arg") else 0  # the context, eval context or environment

    @functools.wraps(f)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        given = args[:skip] + tuple(_materialize(a) for a in args[skip:])
        kwargs = {k: _materialize(v) for k, v in kwargs.items()}
        if len(given) > skip:
            _check_filter(name, given[skip], given[skip + 1 :], kwargs)
        result = f(*given, **kwargs)
        return result if isinstance(result, Iterator) else _limited(result)

    return bounded


def _bounded_lipsum(f: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(f)
    def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if not _is_int(n) or not _is_int(max) or n > MAX_LIPSUM[0] or max > MAX_LIPSUM[1]:
            _refuse(
                f"lipsum makes at most {MAX_LIPSUM[0]} paragraphs of at most {MAX_LIPSUM[1]} words: "
                "lipsum(n, html, min, max)"
            )
        return f(n, html, min, max)

    return lipsum


def _no_other_templates(args: tuple[Any, ...]) -> NoReturn:
    name = f" ({args[0]!r})" if args else ""
    _refuse(f"templates cannot use other templates{name}: import, include and extends are refused")


def is_template(source: str) -> bool:
    """Whether ``source`` contains template syntax (``{{`` or ``{%``); other strings are literal."""
    return "{{" in source or "{%" in source


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


class _Budget:
    """One render's budget: its thread and its deadline in that thread's CPU time, where the platform has
    a clock for it (Linux: a render starved of CPU on a busy machine is not stopped for the wait), else
    in wall-clock time; and the characters it has built."""

    def __init__(self, seconds: float) -> None:
        self.thread = threading.get_ident()
        self.clock: int | None = None
        try:
            self.clock = time.pthread_getcpuclockid(self.thread)
            self.end = time.clock_gettime(self.clock) + seconds
        except (AttributeError, OSError):  # no per-thread CPU clock here
            self.end = time.monotonic() + seconds
        self.built = 0
        self.fired = False

    def over(self) -> bool:
        """Whether the deadline has passed (called by the watchdog, from its own thread)."""
        try:
            now = time.clock_gettime(self.clock) if self.clock is not None else time.monotonic()
        except OSError:  # the thread is gone
            return False
        return now > self.end


class _Watchdog:
    """A daemon thread that stops renders past their deadline: it raises RenderOverBudget in the rendering
    thread (``PyThreadState_SetAsyncExc``, delivered between two bytecodes, so loops and recursion stop);
    it costs a render nothing but two lock acquisitions. A render's end clears an exception that was
    scheduled but not yet delivered, under the same lock, so none can land after it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active: set[_Budget] = set()
        self.thread: threading.Thread | None = None
        self.idle = True

    def arm(self, budget: _Budget) -> None:
        with self.cond:
            self.active.add(budget)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="template-watchdog", daemon=True)
                self.thread.start()
            elif self.idle:
                self.cond.notify()

    def disarm(self, budget: _Budget) -> None:
        with self.cond:
            self.active.discard(budget)
            if budget.fired:
                _async_raise(budget.thread, None)  # not delivered yet: cleared; delivered: no-op

    def _run(self) -> None:
        quiet_since = time.monotonic()
        with self.cond:
            while True:
                now = time.monotonic()
                for budget in self.active:
                    if not budget.fired and budget.over():
                        budget.fired = True
                        _async_raise(budget.thread, RenderOverBudget)
                if self.active:
                    quiet_since = now
                self.idle = now - quiet_since > WATCH_LINGER
                self.cond.wait(None if self.idle else WATCH_TICK)


def _async_raise(thread: int, exception: type[BaseException] | None) -> None:
    """Schedule ``exception`` in ``thread`` (None: clear what is scheduled)."""
    import ctypes

    what = ctypes.py_object(exception) if exception is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), what)


_watchdog = _Watchdog()
_rendering = threading.local()
"""``budget``: the _Budget of the render running on this thread, if any."""


def _spend(size: int) -> None:
    """Count ``size`` characters built by the current render; refuse past MAX_BUILT in all."""
    budget: _Budget | None = getattr(_rendering, "budget", None)
    if budget is not None:
        budget.built += size
        if budget.built > MAX_BUILT:
            _refuse(f"the template built more than {MAX_BUILT} characters in all")


def _finalize(value: Any) -> Any:
    """Every ``{{ expression }}`` before it is written (Jinja's ``finalize`` hook): too long is refused; a
    value that is not a text is counted toward MAX_BUILT, as writing it makes a new text (a text written
    is only referred to, and the values that made it were counted as they were made)."""
    if isinstance(value, str):
        if len(value) > MAX_ITEMS:
            _refuse(_TOO_LONG)
    elif not isinstance(value, int | float) and value is not None:
        size = _size(value)
        _limit(size)
        _spend(size)
    return value


def _render_bounded(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """The template's output, within MAX_ITEMS characters, MAX_BUILT built and RENDER_SECONDS."""
    budget = _Budget(RENDER_SECONDS)
    _rendering.budget = budget
    try:
        try:
            _watchdog.arm(budget)
            return _join_bounded(template.generate(context))
        finally:
            _watchdog.disarm(budget)
    except RenderOverBudget:  # raised by the watchdog, at most once, maybe in the finally before disarm
        _watchdog.disarm(budget)
        raise RenderOverBudget() from None
    finally:
        _rendering.budget = None


def render(source: str, context: Mapping[str, Any], where: str) -> str:
    """``source`` rendered with ``context``; any failure raises ``TemplateError`` naming ``where``.

    ``where`` is the template's position, ``file:line:column``.
    """
    if not is_template(source):
        return source
    import jinja2

    try:
        return _render_bounded(_compile(source), context)
    except jinja2.TemplateSyntaxError as e:
        line = f" (line {e.lineno} of the template)" if "\n" in source.strip() else ""
        message = f"{e.message}{line}"
    except jinja2.TemplateError as e:  # undefined names, sandbox refusals (SecurityError)
        message = str(e)
    except RenderOverBudget as e:
        message = str(e)
    except RecursionError:
        message = "nested too deeply"
    except MemoryError:
        message = "out of memory"
    except Exception as e:  # anything the template itself raises: 1/0, int('x'), now(3), ...
        message = f"{type(e).__name__}: {e}"
    raise TemplateError(f"{where}: template error: {' '.join(message.split())}")


def functions(
    wall: Callable[[], float] = time.time, rng: random.Random | None = None
) -> dict[str, Callable[..., str]]:
    """The helpers templates may call: ``now()``, ``now(strftime_format)``, ``uuid()``.

    ``now()`` is the ISO 8601 UTC time (``2026-11-28T10:00:00.123456+00:00``) of ``wall``; ``uuid()`` a
    version-4 UUID, drawn from ``rng`` when given (reproducible), else from ``uuid.uuid4``.
    """

    def now(fmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(wall(), UTC)
        if fmt is None:
            return moment.isoformat()
        if not isinstance(fmt, str):
            raise TypeError(f"now() takes a strftime format text, e.g. now('%Y-%m-%d'); got {fmt!r}")
        return moment.strftime(fmt)

    def new_uuid() -> str:
        return new_uuid4(rng)

    return {"now": now, "uuid": new_uuid}


def new_uuid4(rng: random.Random | None = None) -> str:
    """A version-4 UUID as text, from ``rng`` when given."""
    if rng is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
