"""Normalising and hashing customer identifiers, per ad cabinet, in one place.

Sources: shared/research/ad_audiences.md (sections 1.4, 2.3, 3.2, 4.3 and the comparison table).

| cabinet | e-mail | phone | hash |
|---|---|---|---|
| Yandex Audience | trimmed, lowercased | digits with country code, no ``+`` (``79995551111``) | SHA-256 hex (MD5 refused for new data since 2025) |
| VK Ads | trimmed, lowercased | digits with country code, no ``+`` | MD5 hex (the documented pre-hash) |
| Google Data Manager | trimmed, lowercased; gmail.com / googlemail.com: dots and ``+suffix`` removed from the local part | E.164 **with** ``+`` | SHA-256 hex |
| Meta | trimmed, lowercased | digits with country code, no ``+``, no leading zeros | SHA-256 hex |

Phones are parsed with ``phonenumbers`` (region ``[audiences] default_region`` for numbers written
without a country code, e.g. ``8 (999) 555-11-11`` in Russia) and must be *valid* numbers; e-mails need
one ``@`` and a dotted domain. Invalid values are counted, never sent. Raw values never leave this
module: callers get hashes only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import phonenumbers

CABINETS = ("yandex", "vk", "google", "meta")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
GMAIL_DOMAINS = {"gmail.com", "googlemail.com"}


def normalize_email(raw: str | None, cabinet: str) -> str | None:
    if not raw:
        return None
    email = "".join(str(raw).split()).lower()  # leading, trailing and inner whitespace
    if not EMAIL.match(email):
        return None
    if cabinet == "google":
        local, domain = email.split("@")
        if domain in GMAIL_DOMAINS:
            local = local.split("+", 1)[0].replace(".", "")
            if not local:
                return None
            email = f"{local}@{domain}"
    return email


def normalize_phone(raw: str | None, cabinet: str, default_region: str = "RU") -> str | None:
    if not raw:
        return None
    try:
        number = phonenumbers.parse(str(raw), default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164 if cabinet == "google" else e164.lstrip("+")


def digest(value: str, cabinet: str) -> str:
    data = value.encode("utf-8")
    return hashlib.md5(data).hexdigest() if cabinet == "vk" else hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Identifiers:
    """A customer's hashed identifiers for one cabinet (None where missing or invalid)."""

    email: str | None
    phone: str | None
    invalid_email: bool = False
    invalid_phone: bool = False

    @property
    def matchable(self) -> bool:
        return bool(self.email or self.phone)


def identifiers(email: str | None, phone: str | None, cabinet: str, default_region: str = "RU") -> Identifiers:
    if cabinet not in CABINETS:
        raise ValueError(f"unknown cabinet {cabinet!r}")
    e = normalize_email(email, cabinet)
    p = normalize_phone(phone, cabinet, default_region)
    return Identifiers(
        email=digest(e, cabinet) if e else None,
        phone=digest(p, cabinet) if p else None,
        invalid_email=bool(email) and e is None,
        invalid_phone=bool(phone) and p is None,
    )
