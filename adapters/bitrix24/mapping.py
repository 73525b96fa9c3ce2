"""Bitrix24 records -> the project's Customer and Deal.

Legacy ``crm.*.list`` values are strings (``"ID": "75"``, ``"OPPORTUNITY": "19999.99"``); dates are ISO
date-times with the portal's offset, and date-only fields (``BIRTHDATE``) arrive as date-times too or as
``""`` when unset (docs: api-reference/crm/contacts/crm-contact-get.md, data-types.md). A deal is a
purchase when ``STAGE_SEMANTIC_ID`` is ``S``, lost when ``F``; ``CONTACT_ID`` is its primary contact.
Phones and e-mails are multifields (``[{"VALUE": "...", "TYPE_ID": "PHONE", ...}]``): the first is kept.
User fields are kept under their FIELD_NAME (raw: option ids for enumerations, a JSON list when
multiple) and, when the field has a label, under the label as display text (option values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from adapters.base import Customer, Deal, Entity

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
        return int(datetime.fromisoformat(str(value)).timestamp())
    except ValueError:
        raise MappingError(f"{value!r} is not an ISO date-time") from None


def birthday(value: Any) -> date | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise MappingError(f"BIRTHDATE {value!r} is not a date") from None


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
        cid = int(record["ID"])
    except (KeyError, TypeError, ValueError):
        raise MappingError(f"record without a numeric ID: {str(record)[:80]}") from None
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


def _optional_id(value: Any) -> int | None:
    if value in (None, "", "0", 0):
        return None
    return int(value)


def to_deal(record: dict[str, Any]) -> Deal:
    try:
        return Deal(
            id=int(record["ID"]),
            status=STATUS.get(str(record.get("STAGE_SEMANTIC_ID", "")), "open"),  # type: ignore[arg-type]
            contact_id=_optional_id(record.get("CONTACT_ID")),
            company_id=_optional_id(record.get("COMPANY_ID")),
            amount=float(record.get("OPPORTUNITY") or 0),
            currency=record.get("CURRENCY_ID") or None,
            created_ts=timestamp(record.get("DATE_CREATE")),
            closed_ts=timestamp(record.get("CLOSEDATE")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MappingError(f"deal {record.get('ID')!r}: {exc}") from None
