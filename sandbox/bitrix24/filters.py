"""``filter`` / ``order`` / ``start`` for list methods, and 50-row pagination.

Sources (b24restdocs): api-reference/crm/contacts/crm-contact-list.md and deals/crm-deal-list.md (prefixes
``>=`` ``>`` ``<=`` ``<`` ``@`` ``!@`` ``%`` ``=%`` ``%=`` ``=`` ``!=`` ``!``; multifields only by exact
match), api-reference/user/user-get.md (``!%``, ``!=%``; "if the value is not recognized as a date, the
condition retrieves no records"), settings/how-to-call-rest-api/list-methods-pecularities.md (pages of 50,
``total``, ``next``), settings/performance/huge-data.md (``start=-1``: no count, ``total`` 0, no ``next``).
Not from the docs (Bitrix core behaviour, kept on purpose): string equality is case-insensitive (MySQL
``_ci`` collation); ``=`` with an empty value matches NULL or empty; negations (``!``, ``!=``, ``!@``) also
match NULL; legacy lists page by page number, so ``start=70`` returns rows 50..99 (CRestUtil::getNavData,
``iNumPage = start/50 + 1``). Unknown filter/order fields are ignored, as Bitrix does, and reported in
``/_sandbox/counters`` under ``warnings``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Callable, Iterable

from .errors import legacy
from .fields import CATALOGUE, INT_TYPES, MULTIFIELDS, BadValue, parse_datetime, to_int
from .limits import list_cost
from .store import Store

PAGE = 50
PREFIXES = ("!=%", "!%=", ">=", "<=", "!@", "!=", "!%", "=%", "%=", ">", "<", "@", "%", "=", "!")


@dataclass
class Cond:
    field: str
    op: str
    value: Any
    test: Callable[[dict], bool]


def split_key(key: str) -> tuple[str, str]:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return prefix, key[len(prefix):]
    return "", key


def _like_regex(pattern: str) -> re.Pattern:
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE | re.DOTALL)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value is False or value == []


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]


def make_test(op: str, getter: Callable[[dict], Any], coerce: Callable[[Any], Any], *, text: bool = False,
              multi: bool = False) -> Callable[[Any], Callable[[dict], bool]]:
    """Build ``value -> row predicate`` for one operator over one field."""

    def norm(v: Any) -> Any:
        return v.casefold() if text and isinstance(v, str) else v

    def values_of(row: dict) -> list:
        got = getter(row)
        if multi:
            return [norm(v) for v in (got or [])]
        return [] if got is None or got == "" else [norm(got)]

    def build(value: Any) -> Callable[[dict], bool]:
        if op in ("%", "!%", "=%", "%=", "!=%", "!%="):
            needles = [str(v) for v in _as_list(value)]
            if op in ("%", "!%"):
                hit = lambda vals: any(n.casefold() in str(v).casefold() for v in vals for n in needles)
            else:
                regexes = [_like_regex(n) for n in needles]
                hit = lambda vals: any(r.match(str(v)) for v in vals for r in regexes)
            if op.startswith("!"):
                return lambda row: not hit(values_of(row))
            return lambda row: hit(values_of(row))
        if op in ("", "=", "!", "!=", "@", "!@"):
            negate = op.startswith("!")
            items = _as_list(value) if (isinstance(value, (list, dict)) or op in ("@", "!@")) else [value]
            if not items or all(_empty(i) for i in items):
                if op in ("@", "!@"):
                    return (lambda row: True) if negate else (lambda row: False)
                return (lambda row: bool(values_of(row))) if negate else (lambda row: not values_of(row))
            wanted = set()
            for item in items:
                try:
                    wanted.add(norm(coerce(item)))
                except BadValue:
                    continue
            if negate:
                return lambda row: not any(v in wanted for v in values_of(row))
            return lambda row: any(v in wanted for v in values_of(row))
        # comparisons
        try:
            bound = norm(coerce(value[0] if isinstance(value, list) and value else value))
        except BadValue:
            return lambda row: False
        if bound is None:
            return lambda row: False
        compare = {">": lambda a: a > bound, ">=": lambda a: a >= bound, "<": lambda a: a < bound,
                   "<=": lambda a: a <= bound}[op]

        def test(row: dict) -> bool:
            for v in values_of(row):
                try:
                    if compare(v):
                        return True
                except TypeError:
                    continue
            return False

        return test

    return build


def _midnight(store: Store) -> Callable[[Any], Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, date) and not isinstance(v, datetime):
            return datetime.combine(v, time(0), store.tz)
        return v
    return conv


def entity_accessor(store: Store, entity: str, name: str):
    """(getter, coerce, text, multi) for a filterable field of a CRM entity, or None."""
    tz = store.tz
    as_dt = _midnight(store)

    def dt_coerce(v: Any) -> datetime:
        return as_dt(parse_datetime(v, tz)) if not _empty(v) else None

    def int_coerce(v: Any) -> int:
        return to_int(v) or 0

    def float_coerce(v: Any) -> float:
        try:
            return float(str(v).replace(",", "."))
        except ValueError:
            raise BadValue(v) from None

    if entity == "deal" and name == "ASSOCIATED_CONTACT_ID":
        return (lambda r: r.get("CONTACT_IDS")), int_coerce, False, True
    ufs = store.userfields[entity]
    if name in ufs:
        defn = ufs[name]
        multi = defn["MULTIPLE"] == "Y"
        kind = defn["USER_TYPE_ID"]
        if kind in ("enumeration", "integer", "employee", "boolean"):
            return (lambda r: r.get(name)), int_coerce, False, multi
        if kind == "double":
            return (lambda r: r.get(name)), float_coerce, False, multi
        if kind in ("date", "datetime"):
            getter = (lambda r: [as_dt(v) for v in r.get(name) or []]) if multi else (lambda r: as_dt(r.get(name)))
            return getter, dt_coerce, False, multi
        return (lambda r: r.get(name)), str, True, multi
    spec = CATALOGUE[entity].get(name)
    if spec is None:
        return None
    if name in MULTIFIELDS:
        return (lambda r: [m["VALUE"] for m in r.get(name) or []]), str, True, True
    if spec.type in INT_TYPES:
        if spec.multiple:
            return (lambda r: r.get(name)), int_coerce, False, True
        return (lambda r: r.get(name)), int_coerce, False, False
    if spec.type == "double":
        return (lambda r: r.get(name)), float_coerce, False, False
    if spec.type in ("date", "datetime"):
        return (lambda r: as_dt(r.get(name))), dt_coerce, False, False
    return (lambda r: r.get(name)), str, True, False


def parse_filter(store: Store, entity: str, raw: Any, warn: Callable[[str], None]) -> list[Cond]:
    if raw is None or raw == "" or raw == []:
        return []
    if not isinstance(raw, dict):
        raise legacy("Parameter 'filter' must be array.")
    conds: list[Cond] = []
    for key, value in raw.items():
        op, name = split_key(str(key))
        access = entity_accessor(store, entity, name)
        if access is None:
            warn(f"crm.{entity}.list: filter field {name!r} is unknown and was ignored")
            continue
        getter, coerce, text, multi = access
        if name in MULTIFIELDS and op not in ("", "=", "@"):
            op = "="  # multifields filter by exact match only
        conds.append(Cond(name, op, value, make_test(op, getter, coerce, text=text, multi=multi)(value)))
    return conds


def parse_order(raw: Any, known: Callable[[str], bool], warn: Callable[[str], None], where: str) -> list[tuple[str, bool]]:
    if raw is None or raw == "" or raw == []:
        return []
    if not isinstance(raw, dict):
        raise legacy("Parameter 'order' must be array.")
    out = []
    for name, direction in raw.items():
        if not known(str(name)):
            warn(f"{where}: order field {name!r} is unknown and was ignored")
            continue
        out.append((str(name), str(direction).strip().upper() == "DESC"))
    return out


def _id_bounds(conds: list[Cond]) -> tuple[tuple[int, bool] | None, tuple[int, bool] | None]:
    lo = hi = None
    for cond in conds:
        if cond.field != "ID" or cond.op not in (">", ">=", "<", "<=") or isinstance(cond.value, (list, dict)):
            continue
        value = to_int(cond.value) or 0
        if cond.op in (">", ">=") and (lo is None or value >= lo[0]):
            lo = (value, cond.op == ">=")
        if cond.op in ("<", "<=") and (hi is None or value <= hi[0]):
            hi = (value, cond.op == "<=")
    return lo, hi


def _sort_key(value: Any) -> tuple:
    if value is None or value == "":
        return (0, 0)
    if isinstance(value, list):
        value = value[0] if value else None
        return _sort_key(value)
    if isinstance(value, str):
        return (1, value.casefold())
    if isinstance(value, (date, datetime)) and not isinstance(value, datetime):
        return (1, datetime.combine(value, time(0)).timestamp())
    if isinstance(value, datetime):
        return (1, value.timestamp())
    return (1, value)


def run_list(store: Store, entity: str, conds: list[Cond], order: list[tuple[str, bool]], start: int):
    """Return (rows, total, next, cost) for one legacy list call."""
    table = store.tables[entity]
    counted = start != -1
    offset = (max(start, 0) // PAGE) * PAGE if counted else 0
    tests = [c.test for c in conds]

    def match(row: dict) -> bool:
        return all(t(row) for t in tests)

    if not order or (len(order) == 1 and order[0][0] == "ID"):
        desc = bool(order and order[0][1])
        lo, hi = _id_bounds(conds)
        scan: Iterable[dict] = table.scan(desc=desc, lo=lo, hi=hi)
        if counted:
            matches = [r for r in scan if match(r)]
            total, page = len(matches), matches[offset:offset + PAGE]
        else:
            page = []
            for row in scan:
                if match(row):
                    page.append(row)
                    if len(page) == PAGE:
                        break
            total = 0
    else:
        matches = [r for r in table.rows.values() if match(r)]
        matches.sort(key=lambda r: r["ID"])
        for name, desc in reversed(order):
            matches.sort(key=lambda r: _sort_key(r.get(name)), reverse=desc)
        total = len(matches) if counted else 0
        page = matches[offset:offset + PAGE]
    nxt = offset + PAGE if counted and offset + PAGE < total else None
    cost = list_cost(table_rows=len(table), offset=offset, returned=len(page), counted=counted)
    return page, total, nxt, cost


def simple_filter(rows: list[dict], raw: Any) -> list[dict]:
    """Filter already-rendered rows (users, statuses, user fields, tasks) by the same prefix rules."""
    if not isinstance(raw, dict) or not raw:
        return rows

    def coerce(v: Any) -> Any:
        if isinstance(v, bool):
            return "y" if v else "n"  # compared casefolded, like the "Y"/"N" a client sends
        text = str(v)
        return int(text) if re.fullmatch(r"-?\d+", text) else text.casefold()

    def getter_for(name: str) -> Callable[[dict], Any]:
        def get(row: dict) -> Any:
            value = row.get(name)
            if isinstance(value, list):
                return [coerce(v) for v in value]
            return None if value is None else coerce(value)
        return get

    out = rows
    for key, value in raw.items():
        op, name = split_key(str(key))
        multi = any(isinstance(r.get(name), list) for r in rows)
        build = make_test(op, getter_for(name), coerce, multi=multi)
        test = build(value)
        out = [r for r in out if test(r)]
    return out
