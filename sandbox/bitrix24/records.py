"""Writing and rendering CRM records (contacts, companies, deals) and their user-field values.

Sources (b24restdocs): api-reference/crm/contacts/crm-contact-update.md (unknown fields are ignored;
multifield items: ``{"ID":223,"VALUE":"444"}`` overwrites, an item without ID adds, ``"DELETE":"Y"`` or a
missing/empty VALUE deletes, untouched items stay), crm-contact-get.md (get returns PHONE/EMAIL),
crm-contact-list.md (lists return them only when named in ``select``), deals/crm-deal-add.md (defaults:
TITLE, CATEGORY_ID 0, first stage, BEGINDATE today, CLOSEDATE +7 days, OPENED Y, ASSIGNED_BY_ID = caller),
api-reference/crm/deals/contacts/*.md (CONTACT_IDS, first = primary), data-types.md#uf_enum_element.
User-field values: an enumeration stores option IDs (crm/universal/crm-item-add.md) — a single value is
rendered as the ID string, a multiple one as an array of integer IDs (bitrix-tools/crest#10 shows
``[246,248,256]``; exact legacy typing UNCONFIRMED). Writing an ID that is not an option of the field is
refused with ERROR_CORE (UNCONFIRMED; it catches adapters writing VALUE or XML_ID instead of the ID).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from .errors import core, legacy
from .fields import (CATALOGUE, MULTIFIELDS, BadValue, fmt_date, fmt_datetime, parse_date, parse_datetime,
                     parse_standard, render_standard, to_float, to_int)
from .store import Store

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_EMAIL_KIND = {"WORK": "Work", "HOME": "Private", "MAILING": "Newsletter", "OTHER": "Other"}
WRITE_ONLY = {"COMPANY_IDS", "CONTACT_IDS"}


# -- user fields ---------------------------------------------------------------------------------

def _uf_one(defn: dict, value: Any, tz: ZoneInfo) -> Any:
    kind = defn["USER_TYPE_ID"]
    if kind == "boolean":
        if isinstance(value, str):
            return 1 if value.strip().upper() in ("Y", "1", "TRUE") else 0
        return 1 if value else 0
    if value is None or value == "" or value is False:
        return None
    if kind == "enumeration":
        option = to_int(value)
        if option not in {item["ID"] for item in defn.get("LIST", [])}:
            raise core(f'Value "{value}" is not an option of field "{defn["EDIT_FORM_LABEL"] or defn["FIELD_NAME"]}".')
        return option
    try:
        if kind in ("integer", "employee"):
            return to_int(value)
        if kind == "double":
            return to_float(value)
        if kind == "date":
            return parse_date(value, tz)
        if kind == "datetime":
            return parse_datetime(value, tz)
    except BadValue:
        raise core(f'Invalid value "{value}" for field "{defn["FIELD_NAME"]}".') from None
    return str(value)


def uf_parse(defn: dict, value: Any, tz: ZoneInfo) -> Any:
    if defn["MULTIPLE"] == "Y":
        if value is None or value == "" or value is False:
            return []
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        parsed = [_uf_one(defn, item, tz) for item in items if item not in (None, "")]
        return [v for v in parsed if v is not None]
    if isinstance(value, list):
        value = value[0] if value else None
    return _uf_one(defn, value, tz)


def _uf_render_one(kind: str, value: Any, tz: ZoneInfo) -> Any:
    if value is None:
        return None
    if kind == "date":
        return fmt_date(value, tz)
    if kind == "datetime":
        return fmt_datetime(value, tz)
    if kind == "double":
        return repr(float(value))
    return str(value)


def uf_render(defn: dict, value: Any, tz: ZoneInfo) -> Any:
    kind = defn["USER_TYPE_ID"]
    if defn["MULTIPLE"] == "Y":
        if kind == "enumeration":
            return [int(v) for v in (value or [])]
        return [_uf_render_one(kind, v, tz) for v in (value or [])]
    if kind == "boolean" and value is None:
        return "0"
    return _uf_render_one(kind, value, tz)


# -- writing -------------------------------------------------------------------------------------

def _multifield(store: Store, code: str, current: list[dict], value: Any) -> list[dict]:
    items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
    result = [dict(item) for item in current]
    for item in items:
        if not isinstance(item, dict):
            continue
        item_id = to_int(item.get("ID"))
        text = item.get("VALUE")
        text = None if text is None else str(text).strip()
        kind = str(item.get("VALUE_TYPE") or "").upper()
        if item_id:
            for pos, existing in enumerate(result):
                if int(existing["ID"]) == item_id:
                    if str(item.get("DELETE", "")).upper() == "Y" or not text:
                        del result[pos]
                    else:
                        existing["VALUE"] = text
                        if kind:
                            existing["VALUE_TYPE"] = kind
                    break
            continue
        if not text:
            continue
        result.append({"ID": str(store.new_multifield_id()), "VALUE_TYPE": kind or "WORK", "VALUE": text,
                       "TYPE_ID": code})
    if code == "EMAIL":
        for item in result:
            if not _EMAIL.match(item["VALUE"]):
                label = _EMAIL_KIND.get(item["VALUE_TYPE"], "Work")
                raise core(f'The field "{label} e-mail" contains an invalid address.')
    return result


def apply_fields(store: Store, entity: str, row: dict, fields: dict, *, is_new: bool, user_id: int,
                 now: float) -> dict:
    """Return a new row with ``fields`` applied (``row`` is untouched until the caller commits)."""
    tz = store.tz
    new = dict(row)
    catalogue = CATALOGUE[entity]
    ufs = store.userfields[entity]
    for name, value in fields.items():
        if not isinstance(name, str):
            continue
        if name in ufs:
            new[name] = uf_parse(ufs[name], value, tz)
            continue
        spec = catalogue.get(name)
        if spec is None or spec.readonly:
            continue  # "An incorrect field in fields will be ignored" (crm-contact-update.md)
        if spec.type == "crm_multifield":
            new[name] = _multifield(store, name, new.get(name, []), value)
            continue
        if entity == "deal" and name == "CATEGORY_ID" and not is_new:
            continue  # pipeline changes go through crm.deal.category.set
        try:
            parsed = parse_standard(spec, value, tz)
        except BadValue:
            raise core(f'Field "{spec.title}" has an invalid value "{value}".') from None
        if parsed is None or parsed == []:
            new.pop(name, None)
        else:
            new[name] = parsed
    moment = datetime.fromtimestamp(now, timezone.utc)
    if is_new:
        new.setdefault("DATE_CREATE", moment)
        new.setdefault("CREATED_BY_ID", user_id)
        new.setdefault("ASSIGNED_BY_ID", user_id)
        new.setdefault("OPENED", "Y")
        new.setdefault("LAST_ACTIVITY_TIME", new["DATE_CREATE"])
        new.setdefault("LAST_ACTIVITY_BY", user_id)
    new["DATE_MODIFY"] = moment
    new["MODIFY_BY_ID"] = user_id
    if entity in ("contact", "company"):
        new["HAS_PHONE"] = "Y" if new.get("PHONE") else "N"
        new["HAS_EMAIL"] = "Y" if new.get("EMAIL") else "N"
        new.setdefault("HAS_IMOL", "N")
    if entity == "contact":
        new.setdefault("EXPORT", "Y")
        if "COMPANY_IDS" in fields:
            ids = new.get("COMPANY_IDS") or []
            if ids:
                new["COMPANY_ID"] = ids[0]
            else:
                new.pop("COMPANY_ID", None)
        elif "COMPANY_ID" in fields:
            new["COMPANY_IDS"] = [new["COMPANY_ID"]] if new.get("COMPANY_ID") else []
    if entity == "company":
        new.setdefault("IS_MY_COMPANY", "N")
    if entity == "deal":
        _deal_rules(store, row, new, fields, is_new=is_new, user_id=user_id, moment=moment)
    return new


def _deal_rules(store: Store, old: dict, new: dict, fields: dict, *, is_new: bool, user_id: int,
                moment: datetime) -> None:
    tz = store.tz
    category = int(new.get("CATEGORY_ID") or 0)
    if is_new and category not in (0, 1):
        raise legacy(f"Category with ID '{category}' is not found.")
    new["CATEGORY_ID"] = category
    if "STAGE_ID" in fields or is_new:
        stage_id = new.get("STAGE_ID") or store.first_stage(category)
        stage = store.stage(stage_id)
        if stage is None or store.stage_category(stage) != category:
            raise core(f"Stage '{stage_id}' does not belong to pipeline {category}.")
        if stage_id != old.get("STAGE_ID"):
            new["MOVED_TIME"] = moment
            new["MOVED_BY_ID"] = user_id
        new["STAGE_ID"] = stage_id
        semantic = store.semantic(stage)
        new["STAGE_SEMANTIC_ID"] = semantic
        new["CLOSED"] = "N" if semantic == "P" else "Y"
        new["IS_NEW"] = "Y" if stage_id == store.first_stage(category) else "N"
    if "CONTACT_IDS" in fields:
        new["CONTACT_IDS"] = list(dict.fromkeys(new.get("CONTACT_IDS") or []))
    elif "CONTACT_ID" in fields:
        primary = new.get("CONTACT_ID")
        rest = [c for c in (old.get("CONTACT_IDS") or []) if c != primary]
        new["CONTACT_IDS"] = ([primary] if primary else []) + rest
    if new.get("CONTACT_IDS"):
        new["CONTACT_ID"] = new["CONTACT_IDS"][0]
    else:
        new.pop("CONTACT_ID", None)
        new.pop("CONTACT_IDS", None)
    if is_new:
        today = moment.astimezone(tz).date()
        new.setdefault("BEGINDATE", today)
        new.setdefault("CLOSEDATE", today + timedelta(days=7))
        new.setdefault("OPPORTUNITY", 0.0)
        new.setdefault("TAX_VALUE", 0.0)
        new.setdefault("CURRENCY_ID", "RUB")
        new.setdefault("IS_MANUAL_OPPORTUNITY", "N")
        new.setdefault("TYPE_ID", "SALE")
        for flag in ("IS_RECURRING", "IS_RETURN_CUSTOMER", "IS_REPEATED_APPROACH"):
            new.setdefault(flag, "N")


def create(store: Store, entity: str, fields: dict, *, user_id: int, now: float,
           record_id: int | None = None) -> int:
    row = apply_fields(store, entity, {}, fields, is_new=True, user_id=user_id, now=now)
    new_id = store.tables[entity].insert(row, record_id)
    if entity == "deal" and not row.get("TITLE"):
        row["TITLE"] = f"Deal #{new_id}"
    return new_id


def delete(store: Store, entity: str, record_id: int) -> None:
    store.tables[entity].delete(record_id)
    if entity == "deal":  # a deal's product rows go with it
        for row_id in store.rows_of_deal.pop(record_id, []):
            store.product_rows.delete(row_id)
    if entity == "contact":
        for deal in store.tables["deal"].rows.values():
            if record_id in (deal.get("CONTACT_IDS") or []):
                deal["CONTACT_IDS"] = [c for c in deal["CONTACT_IDS"] if c != record_id]
                if deal["CONTACT_IDS"]:
                    deal["CONTACT_ID"] = deal["CONTACT_IDS"][0]
                else:
                    deal.pop("CONTACT_ID", None)
                    deal.pop("CONTACT_IDS", None)


# -- rendering -----------------------------------------------------------------------------------

def resolve_select(store: Store, entity: str, select: Any, warn=None) -> list[str]:
    """Field names a list call returns (crm-contact-list.md: ``*``, ``UF_*``, multifields only when named)."""
    catalogue = CATALOGUE[entity]
    ufs = store.userfields[entity]
    names = select if isinstance(select, list) else list(select.values()) if isinstance(select, dict) else []
    names = [str(n) for n in names if isinstance(n, (str, int))]
    if not names:
        names = ["*", "UF_*"]
    wanted: set[str] = {"ID"}
    for name in names:
        if name == "*":
            wanted.update(n for n, s in catalogue.items() if not s.multiple)
        elif name == "UF_*":
            wanted.update(n for n, d in ufs.items() if d["MULTIPLE"] != "Y")
        elif name in catalogue and name not in WRITE_ONLY:
            wanted.add(name)
        elif name in ufs:
            wanted.add(name)
        elif warn is not None:
            warn(f"crm.{entity}.list: select field {name!r} is unknown or not selectable and was ignored")
    order = [n for n in catalogue if n in wanted and n not in MULTIFIELDS]
    order += [n for n in ufs if n in wanted]
    order += [n for n in MULTIFIELDS if n in wanted]
    return order


def render(store: Store, entity: str, row: dict, names: list[str]) -> dict:
    tz = store.tz
    catalogue = CATALOGUE[entity]
    ufs = store.userfields[entity]
    out: dict[str, Any] = {}
    for name in names:
        if name in ufs:
            out[name] = uf_render(ufs[name], row.get(name), tz)
        elif name in MULTIFIELDS:
            values = row.get(name)
            if values:
                out[name] = [dict(v) for v in values]
        else:
            out[name] = render_standard(catalogue[name], row.get(name), tz)
    raw = row.get("_raw")  # values planted by POST /_sandbox/corrupt, served verbatim
    if raw:
        out.update({k: v for k, v in raw.items() if k in out})
    return out


def render_full(store: Store, entity: str, row: dict) -> dict:
    """What ``crm.<entity>.get`` returns: every standard field, every user field, filled multifields."""
    catalogue = CATALOGUE[entity]
    names = [n for n, s in catalogue.items() if not s.multiple] + list(store.userfields[entity])
    names += [n for n in MULTIFIELDS if n in catalogue]
    return render(store, entity, row, names)
