"""Bitrix24 records -> the project's Customer and Deal.

Legacy ``crm.*.list`` values are strings (``"ID": "75"``, ``"OPPORTUNITY": "19999.99"``); dates are ISO
date-times with the portal's offset, and date-only fields (``BIRTHDATE``) arrive as date-times too or as
``""`` when unset (docs: api-reference/crm/contacts/crm-contact-get.md, data-types.md). A deal is a
purchase when ``STAGE_SEMANTIC_ID`` is ``S``, lost when ``F``; ``CONTACT_ID`` is its primary contact.
Phones and e-mails are multifields (``[{"VALUE": "...", "TYPE_ID": "PHONE", ...}]``): the first is kept.
User fields are kept under their FIELD_NAME (raw: option ids for enumerations, a JSON list when
multiple) and, when the field has a label, under the label as display text (option values).
Ids, amounts and dates must lie within the bounds every source shares (adapters/base.py): a record
with ``ID "abc"``, a ``CONTACT_ID`` above 2**63-1, ``OPPORTUNITY "1e999"`` or a date in the year 9999
raises MappingError, so the source reports and skips it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from adapters.base import BadValue, Customer, Deal, Entity, valid_amount, valid_date, valid_id, valid_timestamp

CONTACT_SELECT = ["ID", "NAME", "LAST_NAME", "PHONE", "EMAIL", "BIRTHDATE", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY", "UF_*"]
COMPANY_SELECT = ["ID", "TITLE", "PHONE", "EMAIL", "ASSIGNED_BY_ID", "DATE_CREATE", "DATE_MODIFY", "UF_*"]
DEAL_SELECT = ["ID", "CONTACT_ID", "COMPANY_ID", "STAGE_SEMANTIC_ID", "OPPORTUNITY", "CURRENCY_ID", "DATE_CREATE", "CLOSEDATE", "DATE_MODIFY"]
STATUS = {"S": "won", "F": "lost"}


class MappingError(ValueError):
    pass


@dataclass(frozen=True)
class UserField:
    name: str  # UF_CRM_...
    label: str | None
    type: str
    multiple: bool
    options: dict[str, str] = field(default_factory=dict)  # option id -> VALUE (enumerations)


def user_field_map(items: list[dict[str, Any]]) -> dict[str, UserField]:
    out = {}
    for item in items:
        label = item.get("EDIT_FORM_LABEL") or item.get("LIST_COLUMN_LABEL")
        if isinstance(label, dict):  # {"ru": "...", "en": "..."}
            label = label.get("en") or next(iter(label.values()), None)
        options = {str(o.get("ID")): str(o.get("VALUE", "")) for o in item.get("LIST") or [] if isinstance(o, dict)}
        out[item["FIELD_NAME"]] = UserField(
            name=item["FIELD_NAME"], label=label or None, type=str(item.get("USER_TYPE_ID", "")),
            multiple=item.get("MULTIPLE") == "Y", options=options,
        )
    return out


def timestamp(value: Any) -> int | None:
    if value in (None, "", "0000-00-00 00:00:00"):
        return None
    try:
        return valid_timestamp(int(datetime.fromisoformat(str(value)).timestamp()), repr(value))
    except (ValueError, OverflowError):
        raise MappingError(f"{str(value)[:40]!r} is not an ISO date-time in the years 1900..2200") from None


def birthday(value: Any) -> date | None:
    if value in (None, ""):
        return None
    try:
        return valid_date(date.fromisoformat(str(value)[:10]), "BIRTHDATE")
    except ValueError:
        raise MappingError(f"BIRTHDATE {str(value)[:40]!r} is not a date in the years 1900..2200") from None


def _first_value(multi: Any) -> str | None:
    if isinstance(multi, list):
        for item in multi:
            if isinstance(item, dict) and str(item.get("VALUE", "")).strip():
                return str(item["VALUE"]).strip()
    return None


def _user_fields(record: dict[str, Any], fields_map: dict[str, UserField]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in record.items():
        if not key.startswith("UF_") or value in (None, "", [], False):
            continue
        raw = json.dumps([str(v) for v in value]) if isinstance(value, list) else str(value)
        out[key] = raw
        uf = fields_map.get(key)
        if uf and uf.label and uf.label not in out:
            values = value if isinstance(value, list) else [value]
            shown = [uf.options.get(str(v), str(v)) for v in values] if uf.options else [str(v) for v in values]
            out[uf.label] = ", ".join(shown)
    return out


def to_customer(record: dict[str, Any], entity: Entity, fields_map: dict[str, UserField]) -> Customer:
    try:
        cid = valid_id(record["ID"], "ID")
    except KeyError:
        raise MappingError("record without an ID") from None
    except BadValue as bad:
        raise MappingError(str(bad)) from None
    if entity == "contact":
        name = " ".join(p for p in (record.get("NAME"), record.get("LAST_NAME")) if p) or None
    else:
        name = record.get("TITLE") or None
    return Customer(
        id=cid,
        entity=entity,
        name=name,
        phone=_first_value(record.get("PHONE")),
        email=_first_value(record.get("EMAIL")),
        birthday=birthday(record.get("BIRTHDATE")) if entity == "contact" else None,
        responsible_id=str(record["ASSIGNED_BY_ID"]) if record.get("ASSIGNED_BY_ID") not in (None, "") else None,
        created_ts=timestamp(record.get("DATE_CREATE")),
        fields=_user_fields(record, fields_map),
    )


def _optional_id(value: Any, what: str) -> int | None:
    if value in (None, "", "0", 0):
        return None
    return valid_id(value, what)


def to_deal(record: dict[str, Any]) -> Deal:
    try:
        return Deal(
            id=valid_id(record["ID"], "ID"),
            status=STATUS.get(str(record.get("STAGE_SEMANTIC_ID", "")), "open"),  # type: ignore[arg-type]
            contact_id=_optional_id(record.get("CONTACT_ID"), "CONTACT_ID"),
            company_id=_optional_id(record.get("COMPANY_ID"), "COMPANY_ID"),
            amount=valid_amount(float(record.get("OPPORTUNITY") or 0), "OPPORTUNITY", record.get("OPPORTUNITY")),
            currency=record.get("CURRENCY_ID") or None,
            created_ts=timestamp(record.get("DATE_CREATE")),
            closed_ts=timestamp(record.get("CLOSEDATE")),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise MappingError(f"deal {str(record.get('ID'))[:40]!r}: {exc}") from None
