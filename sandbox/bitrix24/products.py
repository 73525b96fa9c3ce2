"""Product catalogue and deal product rows.

Sources (b24restdocs HEAD 5988ed1, 2026-08-21; shared/research/wave2-crm-apis.md §1.1):

* ``crm.item.productrow.list`` (api-reference/crm/universal/product-rows/crm-item-productrow-list.md):
  ``filter`` must hold ``=ownerType`` and ``=ownerId``; ``=`` "equals (works with arrays as well)", so
  ``=ownerId`` takes one deal id or an array of them; the other keys use the prefixes of the legacy
  lists (``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``@``, ``%``...) on the row's camelCase fields; no
  ``select``; ``order`` by row fields (asc|desc); pages are "always static: 50 records"; the answer is
  ``{"result": {"productRows": [...]}, "total": N, "next": 50}`` with numbers as numbers. It is an
  ordinary method, so it runs inside ``batch`` (and counts against its own operating time).
* ``crm.deal.productrows.get`` (deals/crm-deal-productrows-get.md, deprecated): one deal, a bare array
  of UPPER_CASE rows (``ID``/``OWNER_ID`` strings, ``PRICE_ACCOUNT`` a string, the rest numbers).
* ``catalog.catalog.list``, ``catalog.product.list`` (``select`` must include ``id`` and ``iblockId``,
  ``filter`` must include ``iblockId``; ``{"products": [...]}``), ``catalog.section.list``
  (``{"sections": [...]}``) in api-reference/catalog/; legacy ``crm.product.list`` and
  ``crm.productsection.list`` (api-reference/crm/outdated/products/, UPPER_CASE string values).

Choices where the docs are silent or disagree (marked UNCONFIRMED in README.md): a missing ``=ownerType``
or ``=ownerId`` is 400 ``REQUIRED_ARG_MISSING`` (a later stored version of the page names that code; the
2026-08-21 page lists only ``100``); a single ``=ownerId`` of a deal that does not exist is 400
``ACCESS_DENIED`` (same later version), ids of missing deals inside an array are skipped; the default
order is ``sort`` then ``id``; ``order`` keys match row fields case-insensitively (the page's own
b24pysdk ``as_list_fast`` example orders by ``ID`` before it learns the field is ``id``), filter keys only
in camelCase; ``start=-1`` gives no ``total`` and no ``next``. That later version also
says arrays are accepted only in ``@id`` and that conditions on ``price``/``productName``/``quantity``
are ignored: the sandbox follows the 2026-08-21 page (arrays in ``=ownerId``, every field filterable).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .decode import php_intval
from .errors import ApiError, legacy
from .fields import fmt_datetime
from .filters import PAGE, make_test, simple_filter, split_key
from .registry import Call, Result, method
from .store import Store

PRODUCT_IBLOCK_ID = 25  # "most often 25 for products, 27 for variants (cloud)" (helpdesk, research §1.1)
OFFERS_IBLOCK_ID = 27
OWNER_DEAL = "D"
ROW_FIELDS = ("id", "ownerId", "ownerType", "productId", "productName", "price", "priceAccount", "priceExclusive",
              "priceNetto", "priceBrutto", "quantity", "discountTypeId", "discountRate", "discountSum", "taxRate",
              "taxIncluded", "customized", "measureCode", "measureName", "sort", "xmlId", "type", "storeId")
TYPE_SIMPLE, TYPE_SERVICE = 1, 7


def _number(value: float) -> float | int:
    """Numbers as the docs' examples show them: 3, 90000, 81818.18."""
    value = round(float(value), 2)
    return int(value) if value.is_integer() else value


# -- store helpers (used by the seed) -----------------------------------------------------------------

def add_section(store: Store, name: str, now: float) -> int:
    return store.sections.insert({"name": name, "iblockId": PRODUCT_IBLOCK_ID, "iblockSectionId": None,
                                  "sort": 100 * (len(store.sections) + 1), "active": "Y", "code": None,
                                  "xmlId": None, "description": None, "dateCreate": now})


def add_product(store: Store, product_id: int, name: str, price: float, *, section_id: int | None, sku: str | None,
                service: bool, now: float) -> None:
    store.products.insert({"name": name, "iblockId": PRODUCT_IBLOCK_ID, "iblockSectionId": section_id,
                           "price": float(price), "currency": "RUB", "xmlId": sku, "code": sku,
                           "type": TYPE_SERVICE if service else TYPE_SIMPLE, "active": "Y", "measure": 5,
                           "sort": 100, "dateCreate": now}, product_id)


def add_row(store: Store, deal_id: int, product_id: int | None, name: str, quantity: float, price: float) -> int:
    """One product row of a deal; the catalogue price (if any) is the price before the discount."""
    product = store.products.rows.get(product_id or 0)
    base = product["price"] if product and product["price"] >= price else price
    rows = store.rows_of_deal.setdefault(deal_id, [])
    row_id = store.product_rows.insert({
        "ownerId": deal_id, "ownerType": OWNER_DEAL, "productId": product_id or 0, "productName": name,
        "price": float(price), "base": float(base), "quantity": float(quantity), "sort": 10 * (len(rows) + 1),
        "type": product["type"] if product else TYPE_SIMPLE,
    })
    rows.append(row_id)
    return row_id


def deal_total(store: Store, deal_id: int) -> float:
    return round(sum(store.product_rows.rows[r]["price"] * store.product_rows.rows[r]["quantity"]
                     for r in store.rows_of_deal.get(deal_id, [])), 2)


# -- rendering ----------------------------------------------------------------------------------------

def render_row(row: dict) -> dict:
    price, base = row["price"], row["base"]
    discount = base - price
    return {
        "id": row["ID"], "ownerId": row["ownerId"], "ownerType": row["ownerType"], "productId": row["productId"],
        "productName": row["productName"], "price": _number(price), "priceAccount": _number(price),
        "priceExclusive": _number(price), "priceNetto": _number(base), "priceBrutto": _number(base),
        "quantity": _number(row["quantity"]), "discountTypeId": 2,
        "discountRate": _number(discount / base * 100) if base else 0, "discountSum": _number(discount),
        "taxRate": None, "taxIncluded": "Y", "customized": "Y", "measureCode": 796, "measureName": "pcs",
        "sort": row["sort"], "xmlId": None, "type": row["type"], "storeId": None,
    }


def _legacy_row(row: dict) -> dict:
    r = render_row(row)
    return {"ID": str(r["id"]), "OWNER_ID": str(r["ownerId"]), "OWNER_TYPE": r["ownerType"],
            "PRODUCT_ID": r["productId"], "PRODUCT_NAME": r["productName"], "ORIGINAL_PRODUCT_NAME": r["productName"],
            "PRODUCT_DESCRIPTION": None, "PRICE": r["price"], "PRICE_EXCLUSIVE": r["priceExclusive"],
            "PRICE_NETTO": r["priceNetto"], "PRICE_BRUTTO": r["priceBrutto"], "PRICE_ACCOUNT": f"{row['price']:.2f}",
            "QUANTITY": r["quantity"], "DISCOUNT_TYPE_ID": 2, "DISCOUNT_RATE": r["discountRate"],
            "DISCOUNT_SUM": r["discountSum"], "TAX_RATE": None, "TAX_INCLUDED": "Y", "CUSTOMIZED": "Y",
            "MEASURE_CODE": 796, "MEASURE_NAME": "pcs", "SORT": r["sort"], "XML_ID": None, "TYPE": r["type"],
            "STORE_ID": 0, "RESERVE_ID": None, "DATE_RESERVE_END": None, "RESERVE_QUANTITY": None}


def _iso(store: Store, ts: float) -> str | None:
    return fmt_datetime(datetime.fromtimestamp(ts, timezone.utc), store.tz)


def _catalog_product(store: Store, row: dict) -> dict:
    return {"id": row["ID"], "iblockId": row["iblockId"], "iblockSectionId": row["iblockSectionId"],
            "name": row["name"], "active": row["active"], "available": "Y", "code": row["code"],
            "xmlId": row["xmlId"], "type": row["type"], "measure": row["measure"], "sort": row["sort"],
            "dateCreate": _iso(store, row["dateCreate"]), "timestampX": _iso(store, row["dateCreate"]),
            "createdBy": 1, "modifiedBy": 1, "previewText": None, "detailText": None, "vatIncluded": "Y"}


def _catalog_section(store: Store, row: dict) -> dict:
    return {"id": row["ID"], "iblockId": row["iblockId"], "iblockSectionId": row["iblockSectionId"],
            "name": row["name"], "xmlId": row["xmlId"], "code": row["code"], "sort": row["sort"],
            "active": row["active"], "description": row["description"], "descriptionType": "text"}


def _crm_product(store: Store, row: dict) -> dict:
    return {"ID": str(row["ID"]), "CATALOG_ID": str(row["iblockId"]), "PRICE": f"{row['price']:.2f}",
            "CURRENCY_ID": row["currency"], "NAME": row["name"], "CODE": row["code"], "DESCRIPTION": None,
            "DESCRIPTION_TYPE": "text", "ACTIVE": row["active"],
            "SECTION_ID": None if row["iblockSectionId"] is None else str(row["iblockSectionId"]),
            "SORT": str(row["sort"]), "VAT_ID": None, "VAT_INCLUDED": "Y", "MEASURE": str(row["measure"]),
            "XML_ID": row["xmlId"], "PREVIEW_PICTURE": None, "DETAIL_PICTURE": None,
            "DATE_CREATE": _iso(store, row["dateCreate"]), "TIMESTAMP_X": _iso(store, row["dateCreate"]),
            "MODIFIED_BY": "1", "CREATED_BY": "1"}


def _crm_section(row: dict) -> dict:
    return {"ID": str(row["ID"]), "CATALOG_ID": str(row["iblockId"]),
            "SECTION_ID": None if row["iblockSectionId"] is None else str(row["iblockSectionId"]),
            "NAME": row["name"], "XML_ID": row["xmlId"], "CODE": row["code"]}


# -- paging ---------------------------------------------------------------------------------------------

def _page(call: Call, rows: list) -> tuple[list, int | None, int | None]:
    start = php_intval(call.params.get("start", 0))
    if start == -1:
        return rows[:PAGE], None, None
    offset = (max(start, 0) // PAGE) * PAGE
    return rows[offset:offset + PAGE], len(rows), (offset + PAGE if offset + PAGE < len(rows) else None)


def _order(rows: list[dict], raw: Any, default: list[tuple[str, bool]]) -> list[dict]:
    """Sort by ``order`` keys that name a field (case-insensitively: the docs' own b24pysdk example,
    ``as_list_fast``, orders by ``ID`` first); unknown keys are ignored."""
    names = {k.lower(): k for k in rows[0]} if rows else {}
    keys = [(names.get(str(k).lower()), str(v).strip().lower() == "desc") for k, v in raw.items()] if isinstance(raw, dict) else []
    keys = [(k, d) for k, d in keys if k] or default
    out = sorted(rows, key=lambda r: r["id"] if "id" in r else r.get("ID"))
    for name, desc in reversed(keys):
        out.sort(key=lambda r: (r.get(name) is None, r.get(name) if r.get(name) is not None else 0), reverse=desc)
    return out


# -- crm.item.productrow.list ---------------------------------------------------------------------------

def _coerce(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return text.casefold()
    return int(number) if number.is_integer() else number


@method("crm.item.productrow.list")
def productrow_list(call: Call) -> Result:
    store = call.store
    raw = call.params.get("filter")
    raw = raw if isinstance(raw, dict) else {}
    conditions = {split_key(str(k)): v for k, v in raw.items()}
    owner_type = conditions.pop(("=", "ownerType"), None)
    owner_ids = conditions.pop(("=", "ownerId"), None)
    if owner_type in (None, "", []) or owner_ids in (None, "", []):
        raise ApiError(400, "REQUIRED_ARG_MISSING", "Required fields: =ownerType, =ownerId")
    wanted = owner_ids if isinstance(owner_ids, list) else list(owner_ids.values()) if isinstance(owner_ids, dict) else [owner_ids]
    ids = [php_intval(v) for v in wanted]
    if not isinstance(owner_ids, (list, dict)) and ids[0] not in store.tables["deal"].rows:
        raise ApiError(400, "ACCESS_DENIED", "Access denied")
    rows: list[dict] = []
    if str(owner_type).upper() == OWNER_DEAL:
        for deal_id in dict.fromkeys(ids):
            rows += [render_row(store.product_rows.rows[r]) for r in store.rows_of_deal.get(deal_id, [])]
    for (op, name), value in conditions.items():
        if name not in ROW_FIELDS:
            call.warn(f"crm.item.productrow.list: filter field {name!r} is unknown and was ignored")
            continue
        test = make_test(op, lambda r, n=name: r.get(n), _coerce, text=True)(value)
        rows = [r for r in rows if test(r)]
    rows = _order(rows, call.params.get("order"), [("sort", False), ("id", False)])
    page, total, nxt = _page(call, rows)
    return Result({"productRows": page}, total=total, next=nxt)


@method("crm.item.productrow.set")
def productrow_set(call: Call) -> Result:
    """Replace every product row of a deal (product-rows/crm-item-productrow-set.md): ``ownerType``,
    ``ownerId``, ``productRows`` [{productId, productName, price, quantity, sort}]; a missing productName of a
    catalogue product is the catalogue's name, quantity defaults to 1. The deal's DATE_MODIFY moves (an older
    version of the page said a row write recalculates the deal and runs its automation: UNCONFIRMED)."""
    store = call.store
    owner_type, owner_id = call.params.get("ownerType"), php_intval(call.params.get("ownerId"))
    rows = call.params.get("productRows")
    if owner_type in (None, "") or owner_id <= 0 or rows is None:
        raise ApiError(400, "REQUIRED_ARG_MISSING", "Required fields: ownerType, ownerId, productRows")
    deal = store.tables["deal"].rows.get(owner_id)
    if str(owner_type).upper() != OWNER_DEAL or deal is None:
        raise ApiError(400, "ACCESS_DENIED", "Access denied")
    items = rows if isinstance(rows, list) else list(rows.values()) if isinstance(rows, dict) else []
    for row_id in store.rows_of_deal.pop(owner_id, []):
        store.product_rows.delete(row_id)
    for item in items:
        item = item if isinstance(item, dict) else {}
        product_id = php_intval(item.get("productId") or 0)
        product = store.products.rows.get(product_id)
        name = item.get("productName") or (product["name"] if product else "")
        add_row(store, owner_id, product_id or None, str(name), float(item.get("quantity") or 1),
                float(item.get("price") or 0))
    deal["DATE_MODIFY"] = datetime.fromtimestamp(call.now, timezone.utc)
    rendered = [render_row(store.product_rows.rows[r]) for r in store.rows_of_deal.get(owner_id, [])]
    return Result({"productRows": rendered})


@method("crm.deal.productrows.get")
def deal_productrows_get(call: Call) -> Result:
    deal_id = php_intval(call.params.get("id"))
    if deal_id <= 0:
        raise legacy("The parameter id is invalid or not defined.")
    if deal_id not in call.store.tables["deal"].rows:
        raise legacy("Not found")
    rows = call.store.product_rows.rows
    return Result([_legacy_row(rows[r]) for r in call.store.rows_of_deal.get(deal_id, [])])


# -- catalogue ------------------------------------------------------------------------------------------

def _catalog_error(text: str) -> ApiError:
    return ApiError(400, "0", text)


def _select(row: dict, select: Any) -> dict:
    names = select if isinstance(select, list) else list(select.values()) if isinstance(select, dict) else []
    return {k: row[k] for k in dict.fromkeys(str(n) for n in names) if k in row}


@method("catalog.catalog.list")
def catalog_catalog_list(call: Call) -> Result:
    catalogs = [
        {"id": 1, "iblockId": PRODUCT_IBLOCK_ID, "iblockTypeId": "CRM_PRODUCT_CATALOG", "lid": "s1",
         "name": "CRM product catalog", "productIblockId": None, "skuPropertyId": None, "subscription": "N",
         "vatId": None, "yandexExport": "N"},
        {"id": 2, "iblockId": OFFERS_IBLOCK_ID, "iblockTypeId": "CRM_PRODUCT_CATALOG", "lid": "s1",
         "name": "CRM product catalog (offers)", "productIblockId": PRODUCT_IBLOCK_ID, "skuPropertyId": 97,
         "subscription": "N", "vatId": None, "yandexExport": "N"},
    ]
    catalogs = simple_filter(catalogs, call.params.get("filter"))
    page, total, nxt = _page(call, catalogs)
    return Result({"catalogs": page}, total=total, next=nxt)


@method("catalog.product.list")
def catalog_product_list(call: Call) -> Result:
    select = call.params.get("select")
    names = select if isinstance(select, list) else list(select.values()) if isinstance(select, dict) else []
    raw = call.params.get("filter")
    if "id" not in names or "iblockId" not in names:
        raise _catalog_error("Required select fields: id, iblockId")
    if not isinstance(raw, dict) or not any(split_key(str(k))[1] == "iblockId" for k in raw):
        raise _catalog_error("Required filter fields: iblockId")
    rows = [_catalog_product(call.store, r) for r in call.store.products.rows.values()]
    rows = simple_filter(rows, raw)
    rows = _order(rows, call.params.get("order"), [("id", False)])
    page, total, nxt = _page(call, rows)
    return Result({"products": [_select(r, names) for r in page]}, total=total, next=nxt)


@method("catalog.section.list")
def catalog_section_list(call: Call) -> Result:
    rows = [_catalog_section(call.store, r) for r in call.store.sections.rows.values()]
    rows = simple_filter(rows, call.params.get("filter"))
    rows = _order(rows, call.params.get("order"), [("id", False)])
    page, total, nxt = _page(call, rows)
    select = call.params.get("select")
    if select:
        page = [_select(r, select) for r in page]
    return Result({"sections": page}, total=total, next=nxt)


def _legacy_list(call: Call, rows: list[dict]) -> Result:
    rows = simple_filter(rows, call.params.get("filter"))
    order = call.params.get("order")
    rows.sort(key=lambda r: int(r["ID"]))
    if isinstance(order, dict):
        for key, direction in reversed(list(order.items())):
            numeric = str(key).upper() in ("ID", "SORT", "PRICE", "SECTION_ID", "CATALOG_ID")
            rows.sort(key=lambda r: float(r.get(str(key).upper()) or 0) if numeric else str(r.get(str(key).upper()) or ""),
                      reverse=str(direction).upper() == "DESC")
    page, total, nxt = _page(call, rows)
    select = call.params.get("select")
    names = select if isinstance(select, list) else list(select.values()) if isinstance(select, dict) else []
    if names and "*" not in names:
        page = [{k: r[k] for k in ["ID", *[str(n).upper() for n in names]] if k in r} for r in page]
    return Result(page, total=total if total is not None else 0, next=nxt)


@method("crm.product.list")
def crm_product_list(call: Call) -> Result:
    return _legacy_list(call, [_crm_product(call.store, r) for r in call.store.products.rows.values()])


@method("crm.productsection.list")
def crm_productsection_list(call: Call) -> Result:
    return _legacy_list(call, [_crm_section(r) for r in call.store.sections.rows.values()])
