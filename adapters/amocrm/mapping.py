"""amoCRM JSON -> the project's records (shared/research/amocrm.md sections 2 and 8).

* Contact/company: ``name`` (or first + last name), the first PHONE and EMAIL value (multitext fields by
  ``field_code``), the birthday from the field of type ``birthday`` (or the one named in
  ``[crm] birthday_field``): unix seconds of midnight in the account time zone, or a date string;
  ``responsible_user_id``; ``created_at``. Every custom field is kept under two stable names: ``cf_<id>``
  (survives renames) and its field name. The card's tags are kept as a JSON list under ``tags``.
* Lead: status 142 = won, 143 = lost (the same ids in every pipeline), anything else open; ``price``;
  ``closed_at`` is the purchase date of a won lead; the contact is the one marked ``is_main`` (else the
  first); the company is the first linked one.
* Ids (the record's, linked contacts' and companies'), prices and dates must lie within the bounds every
  source shares (adapters/base.py); a record outside them raises MappingError and is reported and skipped.
"""

from __future__ import annotations

import re

import json
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from adapters.base import BadValue, Customer, Deal, Entity, valid_amount, valid_date, valid_id, valid_timestamp

WON, LOST = 142, 143
TAGS_FIELD = "tags"


class MappingError(ValueError):
    pass


def _int(value: Any, what: str) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise MappingError(f"{what} {value!r} is not a number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MappingError(f"{what} {value!r} is not a number") from None


def _shape(record: Any) -> str:
    """What the id looked like, without its value or the record's personal data: its type only."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not an object"
    if "id" not in record:
        return "missing"
    value = record["id"]
    if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"[-+0-9.eE]{1,40}", value.strip())):
        return repr(str(value).strip())  # a number out of range (-7, 2**64, 1e999) is no personal data
    return f"a {type(value).__name__}"


def record_id(record: Any) -> int | None:
    """The record's id when it is a valid id (1 .. 2**63-1), else None."""
    try:
        return valid_id(record["id"])
    except (KeyError, TypeError, BadValue):
        return None


def _id(value: Any, what: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return valid_id(value, what)
    except BadValue as bad:
        raise MappingError(str(bad)) from None


def _stamp(value: Any, what: str) -> int | None:
    number = _int(value, what)
    if number is None:
        return None
    try:
        return valid_timestamp(number, what)
    except BadValue as bad:
        raise MappingError(str(bad)) from None


def birthday(value: Any, tz: ZoneInfo) -> date | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            day = datetime.fromtimestamp(value, tz).date()
        elif text.isdigit():
            day = datetime.fromtimestamp(int(text), tz).date()
        elif len(text) >= 10 and text[2] == "." and text[5] == ".":  # 12.01.1980 (webhook style)
            day = date(int(text[6:10]), int(text[3:5]), int(text[:2]))
        else:
            parsed = datetime.fromisoformat(text)
            day = (parsed.astimezone(tz) if parsed.tzinfo else parsed).date()
        return valid_date(day, "birthday")
    except (ValueError, OverflowError, OSError):
        raise MappingError(f"birthday {text[:40]!r} is not a date in the years 1900..2200") from None


def _values(field: dict[str, Any]) -> list[Any]:
    return [v.get("value") for v in field.get("values") or [] if isinstance(v, dict) and v.get("value") not in (None, "")]


def is_birthday_field(field: dict[str, Any], wanted: str | None) -> bool:
    if wanted:
        return str(field.get("field_id")) == wanted or field.get("field_name") == wanted
    return field.get("field_type") == "birthday"


def to_customer(record: dict[str, Any], entity: Entity, tz: ZoneInfo, birthday_field: str | None = None) -> Customer:
    cid = record_id(record)
    if cid is None:
        raise MappingError(f"record without a numeric id (id = {_shape(record)}); its data is not logged")
    name = record.get("name") or " ".join(p for p in (record.get("first_name"), record.get("last_name")) if p) or None
    phone = email = None
    born: date | None = None
    fields: dict[str, str] = {}
    custom = record.get("custom_fields_values") or []
    if not isinstance(custom, list):
        raise MappingError(f"custom_fields_values is not a list: {str(custom)[:60]}")
    for field in custom:
        if not isinstance(field, dict):
            continue
        values = _values(field)
        code = field.get("field_code")
        if code == "PHONE" and values and phone is None:
            phone = str(values[0]).strip()
        elif code == "EMAIL" and values and email is None:
            email = str(values[0]).strip()
        if entity == "contact" and is_birthday_field(field, birthday_field) and values:
            born = birthday(values[0], tz)
        if values:
            text = ", ".join(str(v) for v in values)
            fields[f"cf_{field.get('field_id')}"] = text
            if field.get("field_name"):
                fields.setdefault(str(field["field_name"]), text)
    tags = [t.get("name") for t in (record.get("_embedded") or {}).get("tags") or [] if isinstance(t, dict) and t.get("name")]
    if tags:
        fields[TAGS_FIELD] = json.dumps(sorted(tags), ensure_ascii=False)
    responsible = _int(record.get("responsible_user_id"), "responsible_user_id")
    return Customer(
        id=cid,
        entity=entity,
        name=str(name) if name else None,
        phone=phone or None,
        email=email or None,
        birthday=born,
        responsible_id=str(responsible) if responsible else None,
        created_ts=_stamp(record.get("created_at"), "created_at"),
        fields=fields,
    )


def _linked(record: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = (record.get("_embedded") or {}).get(key) or []
    return [i for i in items if isinstance(i, dict)]


def to_deal(record: dict[str, Any]) -> Deal:
    lid = record_id(record)
    if lid is None:
        raise MappingError(f"lead without a numeric id (id = {_shape(record)}); its data is not logged")
    status_id = _int(record.get("status_id"), "status_id")
    status = "won" if status_id == WON else "lost" if status_id == LOST else "open"
    contacts = _linked(record, "contacts")
    main = next((c for c in contacts if c.get("is_main")), contacts[0] if contacts else None)
    companies = _linked(record, "companies")
    raw_price = price = record.get("price")
    if price not in (None, "") and (isinstance(price, bool) or not isinstance(price, (int, float))):
        try:
            price = float(price)
        except (TypeError, ValueError):
            raise MappingError(f"price {str(price)[:40]!r} is not a number") from None
    try:
        amount = valid_amount(float(price or 0), "price", raw_price)
    except (BadValue, OverflowError) as bad:
        raise MappingError(str(bad) if isinstance(bad, BadValue) else f"price {str(raw_price)[:40]!r} is out of range") from None
    return Deal(
        id=lid,
        status=status,  # type: ignore[arg-type]
        contact_id=_id(main.get("id"), "contact id") if main else None,
        company_id=_id(companies[0].get("id"), "company id") if companies else None,
        amount=amount,
        currency=None,
        created_ts=_stamp(record.get("created_at"), "created_at"),
        closed_ts=_stamp(record.get("closed_at"), "closed_at") if status != "open" else None,
    )


def card_tags(fields: dict[str, str]) -> set[str]:
    """The tags on a mirrored card (``fields['tags']``, a JSON list)."""
    raw = fields.get(TAGS_FIELD)
    if not raw:
        return set()
    try:
        return {str(t) for t in json.loads(raw)}
    except ValueError:
        return set()
