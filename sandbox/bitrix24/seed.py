"""Loading data into a portal: the project's CSV format (``--import-csv``) or synthetic data (``--generate``).

CSV ids are kept; sandbox/dataset.py reads the folder (the sandbox's own reader, not the connector's
CsvSource). Mapping (issue text; field names from api-reference/crm/contacts/crm-contact-get.md and
deals/crm-deal-get.md): name -> NAME (companies: TITLE); phone/email -> PHONE/EMAIL multifields (WORK);
birthday -> BIRTHDATE; responsible_id -> ASSIGNED_BY_ID (a user is created for each); created_at ->
DATE_CREATE (and DATE_MODIFY); every other column -> a string user field ``UF_CRM_<COLUMN>`` (label = the
column name). Deals: won -> STAGE_ID WON / STAGE_SEMANTIC_ID S, lost -> LOSE / F, open -> NEW / P, all in
pipeline 0; closed_at -> CLOSEDATE (a date in the portal time zone; without it CLOSEDATE = created + 7
days, the crm.deal.add default); amount -> OPPORTUNITY; currency -> CURRENCY_ID (RUB when empty);
contact_id -> CONTACT_ID/CONTACT_IDS; company_id -> COMPANY_ID; DATE_MODIFY = the later of created/closed.
Products (deal_products.csv, or sandbox/products.py for ``--generate``): catalogue products keep their ids
(sections by name for generated ones), rows keep their order (sort 10, 20, ...); a deal whose rows do not
add up to its amount gets IS_MANUAL_OPPORTUNITY "Y" (the amount stays). ``--generate`` also turns about
one in six open deals of a contact with a past purchase into a recurring-deal template (IS_RECURRING "Y",
the product rows of that contact's last won deal), which is what crm.deal.recurring.add leaves in the
deal list (api-reference/crm/deals/recurring-deals/index.md); stage and dates stay those of the open deal
(UNCONFIRMED: the docs do not say which stage a template has).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from sandbox.dataset import SeedCustomer, SeedDeal, SeedProduct, SeedProductRow, from_frames, read_folder

from .portal import Portal
from .products import add_product, add_row, add_section, deal_total
from .store import UF_ENTITY

STAGES = {"won": ("WON", "S", "Y"), "lost": ("LOSE", "F", "Y"), "open": ("NEW", "P", "N")}


def uf_name(column: str) -> str:
    name = re.sub(r"[^A-Z0-9_]", "_", column.strip().upper())
    return ("UF_CRM_" + name)[:50]


def _moment(ts: int | None, fallback: float) -> datetime:
    return datetime.fromtimestamp(ts if ts is not None else fallback, timezone.utc)


def _user(portal: Portal, responsible: str | None, now: float) -> int:
    if responsible and responsible.strip().isdigit() and int(responsible) > 0:
        user_id = int(responsible)
    else:
        user_id = 1
    portal.store.ensure_user(user_id, now)
    return user_id


def _ensure_string_uf(portal: Portal, entity: str, column: str) -> str:
    name = uf_name(column)
    defs = portal.store.userfields[entity]
    if name not in defs:
        defs[name] = {
            "ID": portal.store.new_uf_id(), "ENTITY_ID": UF_ENTITY[entity], "FIELD_NAME": name,
            "USER_TYPE_ID": "string", "XML_ID": None, "SORT": 100, "MULTIPLE": "N", "MANDATORY": "N",
            "SHOW_FILTER": "N", "SHOW_IN_LIST": "Y", "EDIT_IN_LIST": "Y", "IS_SEARCHABLE": "N",
            "SETTINGS": {"SIZE": 20, "ROWS": 1, "REGEXP": "", "MIN_LENGTH": 0, "MAX_LENGTH": 0, "DEFAULT_VALUE": ""},
            "EDIT_FORM_LABEL": column, "LIST_COLUMN_LABEL": column, "LIST_FILTER_LABEL": column,
            "ERROR_MESSAGE": None, "HELP_MESSAGE": None,
        }
    return name


def load(portal: Portal, customers: Iterable[SeedCustomer], deals: Iterable[SeedDeal]) -> dict:
    store = portal.store
    now = portal.clock.real()
    responsible_of: dict[int, int] = {}
    with portal.lock:
        for customer in customers:
            entity = customer.entity
            created = _moment(customer.created_ts, now)
            user_id = _user(portal, customer.responsible_id, now)
            row: dict = {"DATE_CREATE": created, "DATE_MODIFY": created, "CREATED_BY_ID": 1, "MODIFY_BY_ID": 1,
                         "ASSIGNED_BY_ID": user_id, "OPENED": "Y", "HAS_IMOL": "N", "LAST_ACTIVITY_TIME": created,
                         "LAST_ACTIVITY_BY": 1}
            if entity == "contact":
                row.update(TYPE_ID="CLIENT", SOURCE_ID="WEB", EXPORT="Y")
                if customer.name:
                    row["NAME"] = customer.name
                if customer.birthday:
                    row["BIRTHDATE"] = customer.birthday
                responsible_of[customer.id] = user_id
            else:
                row.update(TITLE=customer.name or f"Company #{customer.id}", COMPANY_TYPE="CUSTOMER",
                           IS_MY_COMPANY="N")
            for code, value in (("PHONE", customer.phone), ("EMAIL", customer.email)):
                if value:
                    row[code] = [{"ID": str(store.new_multifield_id()), "VALUE_TYPE": "WORK", "VALUE": value,
                                  "TYPE_ID": code}]
            row["HAS_PHONE"] = "Y" if row.get("PHONE") else "N"
            row["HAS_EMAIL"] = "Y" if row.get("EMAIL") else "N"
            for column, value in (customer.fields or {}).items():
                row[_ensure_string_uf(portal, entity, column)] = str(value)
            store.tables[entity].insert(row, customer.id)
        for deal in deals:
            created = _moment(deal.created_ts, now)
            closed = _moment(deal.closed_ts, now) if deal.closed_ts is not None else None
            stage, semantic, is_closed = STAGES[deal.status]
            created_day = created.astimezone(portal.tz).date()
            row = {
                "TITLE": f"Deal #{deal.id}", "TYPE_ID": "SALE", "CATEGORY_ID": 0, "STAGE_ID": stage,
                "STAGE_SEMANTIC_ID": semantic, "IS_NEW": "Y" if stage == "NEW" else "N", "CLOSED": is_closed,
                "OPPORTUNITY": float(deal.amount or 0.0), "TAX_VALUE": 0.0, "IS_MANUAL_OPPORTUNITY": "N",
                "CURRENCY_ID": deal.currency or "RUB", "BEGINDATE": created_day,
                "CLOSEDATE": closed.astimezone(portal.tz).date() if closed else created_day + timedelta(days=7),
                "OPENED": "Y", "IS_RECURRING": "N", "IS_RETURN_CUSTOMER": "N", "IS_REPEATED_APPROACH": "N",
                "DATE_CREATE": created, "DATE_MODIFY": max(created, closed) if closed else created,
                "CREATED_BY_ID": 1, "MODIFY_BY_ID": 1, "MOVED_BY_ID": 1, "MOVED_TIME": closed or created,
                "ASSIGNED_BY_ID": responsible_of.get(deal.contact_id or 0, 1),
                "LAST_ACTIVITY_TIME": closed or created, "LAST_ACTIVITY_BY": 1,
            }
            if deal.contact_id:
                row["CONTACT_ID"] = deal.contact_id
                row["CONTACT_IDS"] = [deal.contact_id]
            if deal.company_id:
                row["COMPANY_ID"] = deal.company_id
            store.tables["deal"].insert(row, deal.id)
    return portal.counts()


def import_csv(portal: Portal, folder: Path) -> tuple[dict, list[str]]:
    """Load a CSV folder (sandbox/dataset.py reads it); returns (counts, skipped rows as text).

    Raises :class:`sandbox.dataset.DatasetError` when the folder as a whole cannot be read.
    """
    data = read_folder(Path(folder), timezone=str(portal.tz))
    counts = load(portal, data.customers, data.deals)
    load_products(portal, data.products, data.product_rows)
    return counts, data.problems


def load_products(portal: Portal, products: Iterable[SeedProduct], rows: Iterable[SeedProductRow]) -> None:
    store = portal.store
    now = portal.clock.real()
    with portal.lock:
        sections: dict[str, int] = {}
        for product in products:
            section_id = None
            if product.section:
                section_id = sections.get(product.section) or add_section(store, product.section, now)
                sections[product.section] = section_id
            add_product(store, product.id, product.name, product.price, section_id=section_id, sku=product.sku,
                        service=product.service, now=now)
        for row in rows:
            if row.deal_id in store.tables["deal"].rows:
                add_row(store, row.deal_id, row.product_id, row.product_name, row.quantity, row.price)
        for deal_id in store.rows_of_deal:
            deal = store.tables["deal"].rows[deal_id]
            if abs(deal_total(store, deal_id) - deal["OPPORTUNITY"]) >= 0.005:
                deal["IS_MANUAL_OPPORTUNITY"] = "Y"


def _recurring_templates(portal: Portal, seed: int) -> None:
    """Mark about one in six open deals of a contact with a past won deal as a recurring-deal template."""
    store = portal.store
    rng = np.random.default_rng([seed, 23])
    with portal.lock:
        deals = store.tables["deal"].rows
        last_won: dict[int, dict] = {}
        for deal in deals.values():
            contact = deal.get("CONTACT_ID")
            if contact and deal["STAGE_SEMANTIC_ID"] == "S" and deal["ID"] in store.rows_of_deal:
                best = last_won.get(contact)
                if best is None or (deal["CLOSEDATE"], deal["ID"]) > (best["CLOSEDATE"], best["ID"]):
                    last_won[contact] = deal
        for deal_id in list(store.tables["deal"].ids):
            deal = deals[deal_id]
            source = last_won.get(deal.get("CONTACT_ID") or 0)
            if deal["STAGE_SEMANTIC_ID"] != "P" or source is None or rng.random() >= 1 / 6:
                continue
            deal["IS_RECURRING"] = "Y"
            for row_id in store.rows_of_deal[source["ID"]]:
                row = store.product_rows.rows[row_id]
                add_row(store, deal_id, row["productId"] or None, row["productName"], row["quantity"], row["price"])
            if abs(deal_total(store, deal_id) - deal["OPPORTUNITY"]) >= 0.005:
                deal["IS_MANUAL_OPPORTUNITY"] = "Y"


def generate(portal: Portal, contacts: int, deals: int, *, today: date | None = None, seed: int = 7) -> dict:
    """Synthetic contacts and deals from :func:`sandbox.synthetic.generate` (fields -> string user fields)."""
    from sandbox.synthetic import generate as synth

    today = today or datetime.now(portal.tz).date()
    customers_df, deals_df = synth(contacts, deals, today=today, seed=seed, timezone=str(portal.tz),
                                     not_after=int(portal.clock.real()) - 60)
    from sandbox.products import CATALOGUE, generate_rows

    customers, deal_iter = from_frames(customers_df, deals_df)
    deal_rows = list(deal_iter)
    counts = load(portal, customers, deal_rows)
    load_products(portal, CATALOGUE, generate_rows(deal_rows, seed=seed))
    _recurring_templates(portal, seed)
    return counts
