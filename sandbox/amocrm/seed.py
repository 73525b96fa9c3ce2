"""Loading data into an account: the project's CSV format (``--import-csv``) or synthetic data (``--generate``).

CSV ids are kept (adapters/csv_files.py reads the folder, so the rules are the connector's own).
Contacts and companies: name -> ``name`` (contacts also ``first_name``/``last_name`` split at the first
space: a choice); phone -> PHONE (enum WORK); email -> EMAIL (WORK); birthday -> the «День рождения»
birthday field (unix seconds of midnight in the account time zone); responsible_id -> responsible_user_id
(a user is created for it; empty or non-numeric -> the admin, user 1); created_at -> created_at and
updated_at; every other column -> a text custom field named after the column.
Deals -> leads in the main pipeline: won -> status 142, lost -> 143, both with ``closed_at`` = the CSV
``closed_at`` to the second (a lost deal without it: created_at); open -> the first working status,
``closed_at`` null; amount -> ``price`` (rounded to an int: amoCRM prices are integers); contact_id -> the
main contact (``is_main: true``); company_id -> the lead's company. In amoCRM a link always points to an
existing entity, so a contact_id / company_id that is not in the imported base is dropped (the lead is
imported without that link, and a note says so) instead of pointing at nothing. A lead's responsible user is its
contact's; ``updated_at`` is the later of created_at and closed_at; name ``Сделка #ID`` (choice).
So the round trip is exact: a won lead's ``closed_at`` read back in the account time zone is the CSV date.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Iterable

from adapters.base import Customer, Deal

from .account import Account
from .model import ADMIN_USER_ID, FIRST_WORKING_STATUS, LOST, PIPELINE_ID, WON
from .store import birthday_ts

STATUS = {"won": WON, "lost": LOST, "open": FIRST_WORKING_STATUS}


def _user(account: Account, responsible: str | None) -> int:
    text = (responsible or "").strip()
    user_id = int(text) if text.isdigit() and int(text) > 0 else ADMIN_USER_ID
    return account.store.ensure_user(user_id)


def load(account: Account, customers: Iterable[Customer], deals: Iterable[Deal],
         notes: list[str] | None = None) -> dict:
    """Insert customers then deals; a deal's link to a contact or company not in the base is dropped
    (with a line in ``notes`` when given)."""
    store = account.store
    fields = store.fields
    now = int(account.clock.real())
    responsible_of: dict[int, int] = {}
    with account.lock:
        for customer in customers:
            entity = "contacts" if customer.entity == "contact" else "companies"
            created = int(customer.created_ts) if customer.created_ts is not None else now
            user_id = _user(account, customer.responsible_id)
            name = customer.name or ""
            rec = {"id": customer.id, "name": name, "responsible_user_id": user_id, "created_at": created,
                   "updated_at": created}
            if entity == "contacts":
                first, _, last = name.partition(" ")
                rec.update(first_name=first, last_name=last)
                responsible_of[customer.id] = user_id
            values = []
            for code, value in (("PHONE", customer.phone), ("EMAIL", customer.email)):
                if value:
                    field = fields.find(entity, code=code)
                    enum = fields.enum_of(field, enum_code="WORK")
                    values.append(fields.value(field, [{"value": value, "enum_id": enum["id"], "enum_code": "WORK"}]))
            if customer.birthday and entity == "contacts":
                field = fields.by_type["contacts"][fields.birthday_id]
                values.append(fields.value(field, [{"value": birthday_ts(customer.birthday, account.tz)}]))
            for column, value in (customer.fields or {}).items():
                if value is None or str(value) == "":
                    continue
                values.append(fields.value(fields.text_field(entity, column), [{"value": str(value)}]))
            rec["custom_fields_values"] = values or None
            store.insert(entity, rec)
        for deal in deals:
            created = int(deal.created_ts) if deal.created_ts is not None else now
            status = STATUS[deal.status]
            closed = None
            contact_id = deal.contact_id or None
            company_id = deal.company_id or None
            if contact_id is not None and contact_id not in store.rows["contacts"]:
                if notes is not None:
                    notes.append(f"deal {deal.id}: contact {contact_id} is not in the base; imported without a contact")
                contact_id = None
            if company_id is not None and company_id not in store.rows["companies"]:
                if notes is not None:
                    notes.append(f"deal {deal.id}: company {company_id} is not in the base; imported without a company")
                company_id = None
            if status in (WON, LOST):
                closed = int(deal.closed_ts) if deal.closed_ts is not None else created
            rec = {"id": deal.id, "name": f"Сделка #{deal.id}", "price": int(round(deal.amount or 0)),
                   "status_id": status, "pipeline_id": PIPELINE_ID, "closed_at": closed, "created_at": created,
                   "updated_at": max(created, closed or created),
                   "responsible_user_id": responsible_of.get(contact_id or 0, ADMIN_USER_ID),
                   "contacts": [(contact_id, True)] if contact_id else [],
                   "company_id": company_id}
            store.insert("leads", rec)
    return account.counts()


def import_csv(account: Account, folder: Path) -> tuple[dict, list[str]]:
    """Load a CSV folder; returns (counts, row errors as text). Raises adapters.csv_files.SourceError."""
    from adapters.csv_files import CsvSource

    pulled = CsvSource(Path(folder), timezone=str(account.tz)).pull()
    notes = [str(e) for e in pulled.errors]
    return load(account, pulled.customers, pulled.deals, notes), notes


def generate(account: Account, contacts: int, deals: int, *, today: date | None = None, seed: int = 7) -> dict:
    """Synthetic contacts and leads from :func:`sandbox.synthetic.generate` (its two extra fields -> text fields)."""
    from sandbox.synthetic import generate as synth

    today = today or datetime.now(account.tz).date()
    customers_df, deals_df = synth(contacts, deals, today=today, seed=seed, timezone=str(account.tz))
    customers = (
        Customer(id=int(r["id"]), name=r["name"], phone=r["phone"], email=r["email"], birthday=r["birthday"],
                 responsible_id=r["responsible_id"], created_ts=int(r["created_ts"]),
                 fields=json.loads(r["fields"]) if r["fields"] else {})
        for r in customers_df.iter_rows(named=True)
    )
    deal_rows = (
        Deal(id=int(r["id"]), status=r["status"], contact_id=r["contact_id"], company_id=r["company_id"],
             amount=float(r["amount"]), currency=r["currency"], created_ts=int(r["created_ts"]),
             closed_ts=None if r["closed_ts"] is None else int(r["closed_ts"]))
        for r in deals_df.iter_rows(named=True)
    )
    return load(account, customers, deal_rows)
