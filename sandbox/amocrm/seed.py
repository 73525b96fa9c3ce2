"""Loading data into an account: the project's CSV format (``--import-csv``) or synthetic data (``--generate``).

CSV ids are kept. sandbox/dataset.py reads the folder (the sandbox's own reader, not the connector's CsvSource).
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
Products (deal_products.csv, or sandbox/products.py for ``--generate``) become elements of the products
list (element id = product id; name, SKU, PRICE = the catalogue price, or the first CSV price; GROUP = the
section) linked to the lead with ``metadata`` quantity and catalog_id. amoCRM keeps one link per element
and lead and no per-line price (leads-api.md), so two CSV rows of one product in one deal add up their
quantities and a row price that differs from the element's PRICE is not kept; a row without product_id
gets an element of its own name.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Iterable

from sandbox.dataset import SeedCustomer, SeedDeal, SeedProduct, SeedProductRow, from_frames, read_folder

from .account import Account
from .catalogs import PRODUCTS_CATALOG_ID
from .model import ADMIN_USER_ID, FIRST_WORKING_STATUS, LOST, PIPELINE_ID, WON
from .store import birthday_ts

STATUS = {"won": WON, "lost": LOST, "open": FIRST_WORKING_STATUS}


def _user(account: Account, responsible: str | None) -> int:
    text = (responsible or "").strip()
    user_id = int(text) if text.isdigit() and int(text) > 0 else ADMIN_USER_ID
    return account.store.ensure_user(user_id)


def load(account: Account, customers: Iterable[SeedCustomer], deals: Iterable[SeedDeal],
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
    """Load a CSV folder (sandbox/dataset.py reads it); returns (counts, skipped rows as text).

    Raises :class:`sandbox.dataset.DatasetError` when the folder as a whole cannot be read.
    """
    data = read_folder(Path(folder), timezone=str(account.tz))
    notes = list(data.problems)
    counts = load(account, data.customers, data.deals, notes)
    load_products(account, data.products, data.product_rows)
    return counts, notes


def load_products(account: Account, products: Iterable[SeedProduct], rows: Iterable[SeedProductRow]) -> None:
    store = account.store
    catalogs = store.catalogs
    now = int(account.clock.real())
    with account.lock:
        for product in products:
            catalogs.add_element(product.id, product.name, price=product.price, sku=product.sku,
                                 group=product.section, created_at=now)
        elements = catalogs.elements[PRODUCTS_CATALOG_ID]
        by_name: dict[str, int] = {}
        for row in rows:
            lead = store.rows["leads"].get(row.deal_id)
            if lead is None:
                continue
            element_id = row.product_id
            if element_id is None:
                element_id = by_name.get(row.product_name)
                if element_id is None:
                    element_id = by_name[row.product_name] = catalogs.next_element_id()
            if element_id not in elements:
                catalogs.add_element(element_id, row.product_name, price=row.price, sku=None, group=None,
                                     created_at=now)
            links = lead.setdefault("catalog_elements", [])
            link = next((x for x in links if x["id"] == element_id), None)
            if link is None:
                links.append({"id": element_id, "quantity": row.quantity, "catalog_id": PRODUCTS_CATALOG_ID})
            else:
                link["quantity"] += row.quantity
        store.version += 1


def generate(account: Account, contacts: int, deals: int, *, today: date | None = None, seed: int = 7) -> dict:
    """Synthetic contacts and leads from :func:`sandbox.synthetic.generate` (its two extra fields -> text fields)."""
    from sandbox.synthetic import generate as synth

    today = today or datetime.now(account.tz).date()
    customers_df, deals_df = synth(contacts, deals, today=today, seed=seed, timezone=str(account.tz),
                                     not_after=int(account.clock.real()) - 60)
    from sandbox.products import CATALOGUE, generate_rows

    customers, deal_iter = from_frames(customers_df, deals_df)
    deal_rows = list(deal_iter)
    counts = load(account, customers, deal_rows)
    load_products(account, CATALOGUE, generate_rows(deal_rows, seed=seed))
    return counts
