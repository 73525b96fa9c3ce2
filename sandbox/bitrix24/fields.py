"""Field catalogues of the legacy CRM entities and the conversion of values to and from the wire.

Sources (b24restdocs): api-reference/crm/contacts/crm-contact-fields.md, crm-contact-get.md,
companies/crm-company-get.md, deals/crm-deal-get.md, crm-deal-add.md, api-reference/data-types.md,
api-reference/crm/data-types.md#crm_multifield.

* Legacy ``crm.*.get/list`` return every scalar as a string (``"ID":"75"``,
  ``"OPPORTUNITY":"19999.99"``), unset values as ``null``; an unset BIRTHDATE is ``""``.
* ``datetime`` is ISO 8601 with the portal offset (``2024-08-15T10:38:21+03:00``); legacy ``date``
  fields (BIRTHDATE, BEGINDATE, CLOSEDATE) also come back as a full date-time. The docs' examples
  disagree about the hour (``...T02:00:00+02:00``, ``...T03:00:00+01:00``); the sandbox sends midnight
  in the portal time zone, so the first ten characters are the calendar date (UNCONFIRMED).
* Writes accept ISO 8601 and the portal's locale format (``"BIRTHDATE":"11.11.1999"``,
  crm-contact-update.md); a naive value is taken in the portal time zone.
* Multifields (PHONE, EMAIL, WEB, IM, LINK) are lists of ``{"ID","VALUE_TYPE","VALUE","TYPE_ID"}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any
from zoneinfo import ZoneInfo

INT_TYPES = {"integer", "user", "crm_company", "crm_contact", "crm_lead", "crm_category", "crm_quote", "location"}
MONEY_FIELDS = {"OPPORTUNITY", "TAX_VALUE", "REVENUE"}
MULTIFIELDS = ("PHONE", "EMAIL", "WEB", "IM", "LINK")
MULTIFIELD_TITLES = {"PHONE": "Phone", "EMAIL": "E-mail", "WEB": "Website", "IM": "Messenger", "LINK": "Link"}


class BadValue(ValueError):
    pass


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    title: str
    readonly: bool = False
    multiple: bool = False
    required: bool = False
    status_type: str | None = None

    def info(self) -> dict:
        out = {
            "type": self.type, "isRequired": self.required, "isReadOnly": self.readonly,
            "isImmutable": False, "isMultiple": self.multiple, "isDynamic": False,
        }
        if self.status_type:
            out["statusType"] = self.status_type
        out["title"] = self.title
        return out


def _f(name: str, type_: str, title: str, flags: str = "", status: str | None = None) -> FieldSpec:
    return FieldSpec(name, type_, title, readonly="r" in flags, multiple="m" in flags, required="q" in flags,
                     status_type=status)


_COMMON_TAIL = [
    _f("ASSIGNED_BY_ID", "user", "Responsible person"),
    _f("CREATED_BY_ID", "user", "Created by", "r"),
    _f("MODIFY_BY_ID", "user", "Modified by", "r"),
    _f("DATE_CREATE", "datetime", "Created", "r"),
    _f("DATE_MODIFY", "datetime", "Modified", "r"),
    _f("OPENED", "char", "Available to everyone"),
    _f("ORIGINATOR_ID", "string", "External source"),
    _f("ORIGIN_ID", "string", "Item ID in data source"),
    _f("UTM_SOURCE", "string", "Ad system"),
    _f("UTM_MEDIUM", "string", "Traffic type"),
    _f("UTM_CAMPAIGN", "string", "Ad campaign UTM"),
    _f("UTM_CONTENT", "string", "Campaign contents"),
    _f("UTM_TERM", "string", "Campaign search term"),
    _f("LAST_ACTIVITY_TIME", "datetime", "Last activity", "r"),
    _f("LAST_ACTIVITY_BY", "user", "Last activity by", "r"),
]

_MULTI = [_f(code, "crm_multifield", MULTIFIELD_TITLES[code], "m") for code in MULTIFIELDS]

CONTACT_FIELDS = [
    _f("ID", "integer", "ID", "r"),
    _f("HONORIFIC", "crm_status", "Salutation", status="HONORIFIC"),
    _f("NAME", "string", "First Name", "q"),
    _f("SECOND_NAME", "string", "Middle Name", "q"),
    _f("LAST_NAME", "string", "Last Name", "q"),
    _f("PHOTO", "file", "Photo"),
    _f("BIRTHDATE", "date", "Birthdate"),
    _f("TYPE_ID", "crm_status", "Contact Type", status="CONTACT_TYPE"),
    _f("SOURCE_ID", "crm_status", "Source", status="SOURCE"),
    _f("SOURCE_DESCRIPTION", "string", "Additional Source Information"),
    _f("POST", "string", "Position"),
    _f("ADDRESS", "string", "Address"),
    _f("ADDRESS_CITY", "string", "City"),
    _f("ADDRESS_COUNTRY", "string", "Country"),
    _f("COMMENTS", "string", "Comment"),
    _f("EXPORT", "char", "Included in Export"),
    _f("HAS_PHONE", "char", "Has phone", "r"),
    _f("HAS_EMAIL", "char", "Has email", "r"),
    _f("HAS_IMOL", "char", "Has Open Channel", "r"),
    _f("COMPANY_ID", "crm_company", "Company"),
    _f("COMPANY_IDS", "crm_company", "Companies", "m"),
    _f("LEAD_ID", "crm_lead", "Lead", "r"),
    _f("ORIGIN_VERSION", "string", "Original version"),
    _f("FACE_ID", "integer", "Linked to Face Tracker", "r"),
    *_COMMON_TAIL,
    *_MULTI,
]

COMPANY_FIELDS = [
    _f("ID", "integer", "ID", "r"),
    _f("TITLE", "string", "Company Name", "q"),
    _f("COMPANY_TYPE", "crm_status", "Company type", status="COMPANY_TYPE"),
    _f("LOGO", "file", "Logo"),
    _f("ADDRESS", "string", "Address"),
    _f("ADDRESS_CITY", "string", "City"),
    _f("BANKING_DETAILS", "string", "Payment details"),
    _f("INDUSTRY", "crm_status", "Industry", status="INDUSTRY"),
    _f("EMPLOYEES", "crm_status", "Employees", status="EMPLOYEES"),
    _f("CURRENCY_ID", "crm_currency", "Currency"),
    _f("REVENUE", "double", "Annual revenue"),
    _f("COMMENTS", "string", "Comment"),
    _f("IS_MY_COMPANY", "char", "My Company"),
    _f("HAS_PHONE", "char", "Has phone", "r"),
    _f("HAS_EMAIL", "char", "Has email", "r"),
    _f("HAS_IMOL", "char", "Has Open Channel", "r"),
    _f("LEAD_ID", "crm_lead", "Lead", "r"),
    _f("ORIGIN_VERSION", "string", "Original version"),
    *_COMMON_TAIL,
    *_MULTI,
]

DEAL_FIELDS = [
    _f("ID", "integer", "ID", "r"),
    _f("TITLE", "string", "Name"),
    _f("TYPE_ID", "crm_status", "Type", status="DEAL_TYPE"),
    _f("CATEGORY_ID", "crm_category", "Pipeline"),
    _f("STAGE_ID", "crm_status", "Deal stage", status="DEAL_STAGE"),
    _f("STAGE_SEMANTIC_ID", "string", "Stage group", "r"),
    _f("IS_NEW", "char", "New deal", "r"),
    _f("IS_RECURRING", "char", "Recurring deal"),
    _f("IS_RETURN_CUSTOMER", "char", "Repeat deal"),
    _f("IS_REPEATED_APPROACH", "char", "Repeat inquiry"),
    _f("PROBABILITY", "integer", "Probability"),
    _f("CURRENCY_ID", "crm_currency", "Currency"),
    _f("OPPORTUNITY", "double", "Income"),
    _f("IS_MANUAL_OPPORTUNITY", "char", "IS_MANUAL_OPPORTUNITY"),
    _f("TAX_VALUE", "double", "Tax rate"),
    _f("COMPANY_ID", "crm_company", "Company"),
    _f("CONTACT_ID", "crm_contact", "Contact"),
    _f("CONTACT_IDS", "crm_contact", "Contacts", "m"),
    _f("QUOTE_ID", "crm_quote", "Quote", "r"),
    _f("BEGINDATE", "date", "Start date"),
    _f("CLOSEDATE", "date", "End date"),
    _f("CLOSED", "char", "Closed"),
    _f("COMMENTS", "string", "Comment"),
    _f("ADDITIONAL_INFO", "string", "Additional information"),
    _f("LOCATION_ID", "location", "Location"),
    _f("SOURCE_ID", "crm_status", "Source", status="SOURCE"),
    _f("SOURCE_DESCRIPTION", "string", "Source information"),
    _f("LEAD_ID", "crm_lead", "Lead", "r"),
    _f("MOVED_BY_ID", "user", "Stage changed by", "r"),
    _f("MOVED_TIME", "datetime", "Stage changed on", "r"),
    *_COMMON_TAIL,
]

CATALOGUE = {
    "contact": {f.name: f for f in CONTACT_FIELDS},
    "company": {f.name: f for f in COMPANY_FIELDS},
    "deal": {f.name: f for f in DEAL_FIELDS},
}


def star_fields(entity: str) -> list[str]:
    """What ``select: ["*"]`` means: every standard field that is not multiple (crm-contact-list.md)."""
    return [f.name for f in CATALOGUE[entity].values() if not f.multiple]


# -- dates ---------------------------------------------------------------------------------------

_LOCALE_DT = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def parse_datetime(value: Any, tz: ZoneInfo) -> datetime:
    """ISO 8601 (offset, ``Z`` or naive) or ``dd.mm.YYYY [HH:MI[:SS]]``; naive means portal time."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tz)
    text = str(value).strip()
    match = _LOCALE_DT.match(text)
    if match:
        d, m, y, hh, mm, ss = match.groups()
        try:
            moment = datetime(int(y), int(m), int(d), int(hh or 0), int(mm or 0), int(ss or 0))
        except ValueError:
            raise BadValue(text) from None
        return moment.replace(tzinfo=tz)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadValue(text) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=tz)


def parse_date(value: Any, tz: ZoneInfo) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    return parse_datetime(value, tz).astimezone(tz).date()


def fmt_datetime(value: datetime | float | int | None, tz: ZoneInfo) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, timezone.utc)
    return value.astimezone(tz).isoformat(timespec="seconds")


def fmt_date(value: date | None, tz: ZoneInfo) -> str | None:
    if value is None:
        return None
    return datetime.combine(value, time(0), tz).isoformat(timespec="seconds")


# -- values --------------------------------------------------------------------------------------

def to_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    match = re.match(r"\s*([+-]?\d+)", str(value))
    return int(match.group(1)) if match else 0


def to_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(str(value).replace(",", ".").replace(" ", ""))
    except ValueError:
        raise BadValue(str(value)) from None


def to_char(value: Any) -> str:
    if isinstance(value, bool):
        return "Y" if value else "N"
    text = str(value).strip().upper()
    return "Y" if text in ("Y", "1", "TRUE") else "N"


def parse_standard(spec: FieldSpec, value: Any, tz: ZoneInfo) -> Any:
    """Wire value -> stored value for a standard (non-multifield) field."""
    if spec.multiple:
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        return [v for v in (to_int(i) for i in items) if v]
    kind = spec.type
    if kind in INT_TYPES:
        return to_int(value)
    if kind == "double":
        return to_float(value)
    if kind == "char":
        return to_char(value)
    if kind == "date":
        return None if value in (None, "") else parse_date(value, tz)
    if kind == "datetime":
        return None if value in (None, "") else parse_datetime(value, tz)
    if kind == "file":
        return None
    return None if value is None else str(value)


def render_standard(spec: FieldSpec, value: Any, tz: ZoneInfo) -> Any:
    """Stored value -> legacy wire value (strings, ``null`` when unset)."""
    kind = spec.type
    if spec.multiple:
        return [str(v) for v in (value or [])] if kind != "crm_multifield" else [dict(v) for v in (value or [])]
    if value is None:
        return "" if spec.name == "BIRTHDATE" else None
    if kind == "double":
        return f"{value:.2f}" if spec.name in MONEY_FIELDS else repr(float(value))
    if kind == "date":
        return fmt_date(value, tz)
    if kind == "datetime":
        return fmt_datetime(value, tz)
    return str(value)
