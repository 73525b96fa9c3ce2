"""Campaign templates (``title = "Call {name}: {purchases} orders"``), checked at load, safe to render.

A template is Python's ``str.format`` syntax restricted to what a marketer needs, so a typo can neither
crash a sync after the pull nor make it eat the machine's memory:

* fields: only known names (card fields, features, custom fields); no ``{name.attr}`` or ``{name[0]}``;
* conversions: none, ``!s``, ``!r`` or ``!a``;
* format specs by field type: numbers take the standard numeric spec (``{monetary:,.0f}``,
  ``{purchases:>3}``), strings and yes/no fields a string spec (``{name:.20}``), dates strftime codes
  (``{last_purchase:%d.%m.%Y}``, ``{birthday:%d.%m}``; ``%d %-d %m %-m %Y %y %j %B %b %A %a %%``).
  Width and precision are capped (:data:`MAX_WIDTH`, :data:`MAX_PRECISION`), no nested ``{...}`` in specs;
* an empty (null) value renders as an empty string, whatever its spec;
* the rendered text is cut to the target's length (:data:`LIMITS`) with an ellipsis.

:func:`check_template` compiles a template against the field types and renders it against a typed
sample card, once with every value set and once with every value empty, so every error surfaces when
the config loads. :func:`render` never raises: a value of an unexpected type is written as plain text.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Mapping

MAX_WIDTH = 100
MAX_PRECISION = 20
MAX_STRING_PRECISION = 1000
# CRM title columns hold 255 characters (Bitrix24 task and deal TITLE, amoCRM lead name: an assumption,
# not confirmed in shared/research); 200 leaves room for the marker amoCRM's lead name carries after it.
TITLE_LIMIT = 200
TEXT_LIMIT = 20_000  # task descriptions, deal comments (long text columns)
LIMITS = {"title": TITLE_LIMIT, "task_title": TITLE_LIMIT, "description": TEXT_LIMIT, "script": TEXT_LIMIT}
ELLIPSIS = "…"

FieldType = str  # "number" | "string" | "bool" | "date"

_NUMBER_SPEC = re.compile(
    r"(?:(?P<fill>[^{}])?(?P<align>[<>=^]))?(?P<sign>[-+ ])?(?P<z>z)?(?P<alt>#)?(?P<zero>0)?(?P<width>\d+)?"
    r"(?P<grouping>[,_])?(?:\.(?P<precision>\d+))?(?P<type>[bdoxXeEfFgGn%])?"
)
_STRING_SPEC = re.compile(r"(?:(?P<fill>[^{}])?(?P<align>[<>^]))?(?P<width>\d+)?(?:\.(?P<precision>\d+))?s?")
_INT_TYPES = set("bdoxX")
_DATE_CODES = {"d", "-d", "m", "-m", "Y", "y", "j", "B", "b", "A", "a", "%"}
_DATE_CODE = re.compile(r"%(-?.?)")

SAMPLES: dict[FieldType, tuple[Any, ...]] = {
    "number": (1234567.891, 3, -12),
    "string": ("Иван Петров-Водкин", "12"),
    "bool": (True, False),
    "date": (date(1980, 2, 29), date(2026, 12, 31)),
}


class TemplateError(ValueError):
    """A template cannot be used; the message says what to write instead."""


@dataclass(frozen=True)
class Part:
    literal: str
    field: str | None = None
    spec: str = ""
    conversion: str | None = None


@lru_cache(maxsize=512)
def parse(template: str) -> tuple[Part, ...]:
    """The template's pieces; a TemplateError for broken braces, attribute access, bad conversions."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{exc}; write {{{{ and }}}} for literal braces") from None
    out = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            out.append(Part(literal))
            continue
        if not name:
            raise TemplateError("empty {} : put a field name inside, e.g. {name}, or write {{}} for literal braces")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TemplateError(f"{{{name}}}: only plain field names are allowed (no attributes or indexes)")
        if conversion not in (None, "s", "r", "a"):
            raise TemplateError(f"{{{name}!{conversion}}}: unknown conversion !{conversion}; use !s, !r, !a or none")
        if "{" in (spec or "") or "}" in (spec or ""):
            raise TemplateError(f"{{{name}:{spec}}}: nested fields in a format spec are not supported")
        out.append(Part(literal, name, spec or "", conversion))
    return tuple(out)


def template_names(template: str) -> list[str]:
    """The field names a template uses (a TemplateError when it cannot be parsed)."""
    return [part.field for part in parse(template) if part.field]


def check_spec(name: str, kind: FieldType, spec: str, conversion: str | None) -> None:
    """Raise TemplateError unless ``spec`` suits a field of this type (after ``conversion``)."""
    if not spec:
        return
    where = f"{{{name}:{spec}}}"
    if conversion is not None or kind in ("string", "bool"):
        m = _STRING_SPEC.fullmatch(spec)
        if not m:
            what = "text after !" + conversion if conversion else f"{kind} field {name!r}"
            raise TemplateError(f"{where}: not a format for {what}; use e.g. {{{name}:.40}} or {{{name}:>10}}")
        _cap(where, m, MAX_STRING_PRECISION)
    elif kind == "number":
        m = _NUMBER_SPEC.fullmatch(spec)
        if not m:
            raise TemplateError(f"{where}: not a number format; use e.g. {{{name}:,.0f}}, {{{name}:.1f}} or {{{name}:>5}}")
        _cap(where, m, MAX_PRECISION)
    elif kind == "date":
        codes = _DATE_CODE.findall(spec)
        if not codes:
            raise TemplateError(f"{where}: a date format needs strftime codes, e.g. {{{name}:%d.%m.%Y}}")
        bad = [c for c in codes if c not in _DATE_CODES]
        if bad:
            raise TemplateError(f"{where}: %{bad[0]} is not a supported date code; use %d %-d %m %-m %Y %y %j %B %b %A %a %%")
    else:
        raise TemplateError(f"{where}: field {name!r} has an unknown type {kind!r}")


def _cap(where: str, m: re.Match, max_precision: int) -> None:
    width = m.group("width")
    if width and int(width) > MAX_WIDTH:
        raise TemplateError(f"{where}: width {int(width)} is too wide; at most {MAX_WIDTH}")
    precision = m.group("precision")
    if precision and int(precision) > max_precision:
        raise TemplateError(f"{where}: precision {int(precision)} is too large; at most {max_precision}")


def check_template(template: str, types: Mapping[str, FieldType], *, limit: int = TEXT_LIMIT) -> None:
    """Compile against the field types and render against typed sample cards (set and empty)."""
    parts = parse(template)
    for part in parts:
        if part.field is None:
            continue
        if part.field not in types:
            import difflib

            close = difflib.get_close_matches(part.field, list(types), n=1)
            hint = f" (did you mean {{{close[0]}}}?)" if close else ""
            raise TemplateError(f"unknown field {{{part.field}}}{hint}; use one of {', '.join(sorted(types))}")
        check_spec(part.field, types[part.field], part.spec, part.conversion)
    variants = max(len(v) for v in SAMPLES.values())
    for i in range(variants):
        card = {name: SAMPLES[kind][i % len(SAMPLES[kind])] for name, kind in types.items() if kind in SAMPLES}
        _render(parts, card, limit, strict=True)
    _render(parts, {}, limit, strict=True)


def render(template: str, values: Mapping[str, Any], *, limit: int = TEXT_LIMIT) -> str:
    """The text for one customer; never raises for a template that passed :func:`check_template`."""
    try:
        parts = parse(template)
    except TemplateError:
        return cut(template, limit)
    return _render(parts, values, limit, strict=False)


def _render(parts: tuple[Part, ...], values: Mapping[str, Any], limit: int, *, strict: bool) -> str:
    out: list[str] = []
    for part in parts:
        out.append(part.literal)
        if part.field is not None:
            try:
                out.append(format_value(values.get(part.field), part.spec, part.conversion))
            except (ValueError, TypeError, OverflowError) as exc:
                if strict:
                    raise TemplateError(f"{{{part.field}:{part.spec}}} cannot be rendered: {exc}") from None
                out.append(_plain(values.get(part.field)))
    return cut("".join(out), limit)


def format_value(value: Any, spec: str, conversion: str | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value == "":
        return ""
    if conversion is not None:
        value = {"s": str, "r": repr, "a": ascii}[conversion](value)
        return format(value, spec)
    if isinstance(value, bool):
        return format(str(value), spec)
    if isinstance(value, (int, float)):
        if spec:
            m = _NUMBER_SPEC.fullmatch(spec) or _fail(spec)
            kind = m.group("type")
            if kind in _INT_TYPES:
                value = int(round(value))
            elif kind is not None or m.group("precision") or m.group("z"):
                value = float(value)
            return format(value, spec)
        return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else str(value)
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return format_date(value, spec) if spec else value.isoformat()
    return format(str(value), spec)


def _fail(spec: str) -> Any:
    raise ValueError(f"{spec!r} is not a number format")


def format_date(day: date, spec: str) -> str:
    def code(m: re.Match) -> str:
        c = m.group(1)
        if c == "-d":
            return str(day.day)
        if c == "-m":
            return str(day.month)
        if c == "Y":
            return f"{day.year:04d}"
        if c in _DATE_CODES:
            return day.strftime("%" + c)
        raise ValueError(f"%{c} is not a supported date code")

    return _DATE_CODE.sub(code, spec)


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


def cut(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its start and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS
