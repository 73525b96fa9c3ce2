"""Products of leads (docs: amocrm.ru/developers crm_platform/leads-api.md, catalogs-api.md; shared/research/
wave2-crm-apis.md §1.2).

A lead read ``with=catalog_elements`` carries ``_embedded.catalog_elements``: ``[{"id": element id,
"metadata": {"quantity", "catalog_id", "price_id"}}]``; amoCRM keeps no per-line price on the lead. Names,
SKU, price and group (the section) are the element's: ``GET /api/v4/catalogs/{id}/elements`` with
``filter[id][]`` = the ids seen (250 a page), its ``custom_fields_values`` coded SKU, PRICE (the value
a string) and GROUP. A lead's rows are keyed by element id (a lead links an element once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from adapters.amocrm.client import AmoError
from adapters.amocrm.paging import iter_list
from adapters.base import BadValue, ProductRow, RowError, valid_amount, valid_id

if TYPE_CHECKING:
    from adapters.amocrm.client import AmoClient

IDS_PER_REQUEST = 250
log = logging.getLogger("lifecycle.amocrm")


def links_of(lead: Mapping[str, Any]) -> list[Any]:
    links = (lead.get("_embedded") or {}).get("catalog_elements") or []
    return links if isinstance(links, list) else []


def fetch_elements(client: AmoClient, leads: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Element id -> {name, sku, price, group} of every element the leads link (by catalog)."""
    wanted: dict[int, set[int]] = {}
    for lead in leads:
        for link in links_of(lead):
            try:
                meta = link.get("metadata") or {}
                wanted.setdefault(valid_id(meta.get("catalog_id"), "catalog_id"), set()).add(valid_id(link.get("id")))
            except (BadValue, AttributeError):
                continue  # reported by to_rows
    out: dict[int, dict[str, Any]] = {}
    for catalog_id, ids in sorted(wanted.items()):
        ordered = sorted(ids)
        for first in range(0, len(ordered), IDS_PER_REQUEST):
            params = {f"filter[id][{k}]": i for k, i in enumerate(ordered[first:first + IDS_PER_REQUEST])}
            try:
                for page in iter_list(client, f"/api/v4/catalogs/{catalog_id}/elements", "elements", params):
                    for element in page:
                        if isinstance(element, dict) and str(element.get("id", "")).isdigit():
                            out[int(element["id"])] = _element(element)
            except AmoError as exc:
                log.warning("amoCRM list %s could not be read (%s); its products keep no names", catalog_id, str(exc)[:200])
    return out


def _element(element: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in element.get("custom_fields_values") or []:
        if isinstance(field, dict) and field.get("field_code") in ("SKU", "PRICE", "GROUP"):
            first = (field.get("values") or [{}])[0]
            values[field["field_code"]] = first.get("value") if isinstance(first, dict) else None
    return {"name": element.get("name"), "sku": values.get("SKU"), "price": values.get("PRICE"),
            "group": values.get("GROUP")}


def to_rows(leads: Iterable[Mapping[str, Any]], elements: Mapping[int, Mapping[str, Any]]
            ) -> tuple[list[ProductRow], list[RowError]]:
    """One row per linked element of each lead; a malformed link is reported (lead and element) and skipped."""
    rows: list[ProductRow] = []
    errors: list[RowError] = []
    for lead in leads:
        try:
            lead_id = valid_id(lead.get("id"))
        except BadValue:
            continue  # the lead itself is reported by the lead mapping
        for link in links_of(lead):
            try:
                element_id = valid_id(link.get("id"), "element id")
                meta = link.get("metadata") or {}
                raw_qty = meta.get("quantity")
                quantity = valid_amount(float(raw_qty if raw_qty not in (None, "") else 1), "quantity", raw_qty)
                element = elements.get(element_id) or {}
                price = element.get("price")
                price_value = None if price in (None, "") else valid_amount(float(str(price).replace(",", ".")), "PRICE", price)
                rows.append(ProductRow(deal_id=lead_id, line=element_id, product_id=str(element_id),
                                       product_name=element.get("name"), section=element.get("group"),
                                       quantity=quantity, price=price_value, sku=element.get("sku")))
            except (BadValue, AttributeError, TypeError, ValueError) as exc:
                shown = str(link.get("id") if isinstance(link, dict) else link)[:20]
                errors.append(RowError("leads", lead_id, "catalog_elements", f"product {shown!r}: {exc}", None))
    return rows, errors
