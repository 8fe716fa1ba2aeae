"""Jinja2 templates of scenario answers, rendered in an immutable sandbox.

Header values, ``text`` bodies and string values inside ``json`` bodies are templates. They are rendered
by ``jinja2.sandbox.ImmutableSandboxedEnvironment`` with ``StrictUndefined`` and no loader:

* attributes starting with ``_`` (``''.__class__``, ``f.__globals__``) and methods that modify data
  (``dict.update``, ``list.append``) are refused by the sandbox;
* ``{% import %}``, ``{% include %}`` and ``{% extends %}`` are refused (there are no other templates);
* a name the context does not define (``{{ config }}``) is an error, not an empty string;
* ``**``, ``*`` and ``+`` making a huge number, text or list are refused, so that one template cannot
  stall or exhaust the proxy (best effort: the sandbox also caps ``range`` at 100000 items).

Every failure (syntax, undefined name, sandbox refusal, any exception the template raises) becomes one
``TemplateError`` line: ``file:line:column: template error: what``. A string without ``{{`` or ``{%`` is
not a template: it is returned as is, without touching Jinja. Compiled templates are cached by source.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from proxy.errors import TemplateError

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_NUMBER_BITS = 100_000
"""``a ** b`` or ``a * b`` making an integer longer than this many bits is refused (``10 ** 10 ** 10``)."""
MAX_ITEMS = 1_000_000
"""``'x' * n``, ``[..] * n`` or ``a + b`` making a text or list longer than this is refused."""


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox every template renders in, built on first use: jinja2 is imported only by scenarios that
    have templates (start-up time)."""
    import jinja2
    from jinja2.exceptions import SecurityError
    from jinja2.runtime import Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Sandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox, minus other templates, minus operators that can exhaust the process."""

        intercepted_binops = frozenset({"*", "**", "+"})

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
                    if isinstance(seq, _SEQUENCES) and _is_int(n) and len(seq) * n > MAX_ITEMS:
                        raise SecurityError(f"the result would be too long (more than {MAX_ITEMS} items)")
            elif (
                operator == "+"
                and isinstance(left, _SEQUENCES)
                and isinstance(right, _SEQUENCES)
                and len(left) + len(right) > MAX_ITEMS
            ):
                raise SecurityError(f"the result would be too long (more than {MAX_ITEMS} items)")
            return super().call_binop(context, operator, left, right)

        def get_template(self, *args: Any, **kwargs: Any) -> NoReturn:
            _no_other_templates(args)

        def select_template(self, *args: Any, **kwargs: Any) -> NoReturn:
            _no_other_templates(args)

        def get_or_select_template(self, *args: Any, **kwargs: Any) -> NoReturn:
            _no_other_templates(args)

    return _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)


_SEQUENCES = (str, bytes, list, tuple)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_other_templates(args: tuple[Any, ...]) -> NoReturn:
    from jinja2.exceptions import SecurityError

    name = f" ({args[0]!r})" if args else ""
    raise SecurityError(
        f"templates cannot use other templates{name}: import, include and extends are refused"
    )


def is_template(source: str) -> bool:
    """Whether ``source`` contains template syntax (``{{`` or ``{%``); other strings are literal."""
    return "{{" in source or "{%" in source


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def render(source: str, context: Mapping[str, Any], where: str) -> str:
    """``source`` rendered with ``context``; any failure raises ``TemplateError`` naming ``where``.

    ``where`` is the template's position, ``file:line:column``.
    """
    if not is_template(source):
        return source
    import jinja2

    try:
        return _compile(source).render(context)
    except jinja2.TemplateSyntaxError as e:
        line = f" (line {e.lineno} of the template)" if "\n" in source.strip() else ""
        message = f"{e.message}{line}"
    except jinja2.TemplateError as e:  # undefined names, sandbox refusals (SecurityError)
        message = str(e)
    except RecursionError:
        message = "nested too deeply"
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
