"""Lists (catalogs), their elements, products linked to leads, and the links routes.

Sources (amocrm.ru/developers/content, via shared/research/wave2-crm-apis.md §1.2): crm_platform/catalogs-api.md
(``GET /api/v4/catalogs``, ``GET /api/v4/catalogs/{id}``, ``GET /api/v4/catalogs/{id}/elements`` with
``page``, ``limit`` <= 250, ``query``, ``filter[id]``; an element carries ``custom_fields_values`` SKU
(text), PRICE (the value a string) and GROUP (category), ``is_deleted: null``, ``catalog_id``),
crm_platform/products-api.md (one ``type: "products"`` list per account), crm_platform/leads-api.md
(``with=catalog_elements`` -> ``_embedded.catalog_elements`` ``[{"id", "metadata": {"quantity",
"catalog_id", "price_id"}}]``; no per-line price is stored on the lead), crm_platform/entity-links-api.md
(``GET /api/v4/leads/{id}/links`` with ``filter[to_entity_type]`` + ``filter[to_entity_id]`` together and
``filter[to_catalog_id]``; ``GET /api/v4/leads/links`` with the required ``filter[entity_id]``; contact
links read ``{"main_contact": true}``, company links ``null``).

Choices (UNCONFIRMED in the docs): the products list is id 4521 «Товары» (the docs' example id);
element ids are the product ids of the seed; ``price_id`` is the PRICE field's id; a quantity is an
integer when whole (the docs' example shows ``1``); ``/leads/links`` answers every link of the given
leads in one page; links of a missing lead are 204; a lead's ``updated_at`` is not changed by products.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ApiError

if TYPE_CHECKING:
    from .api import Api, Request

PRODUCTS_CATALOG_ID = 4521
SKU_FIELD_ID, PRICE_FIELD_ID, GROUP_FIELD_ID = 271207, 271211, 271213
GROUP_ENUM_BASE = 10661


def _number(value: float) -> float | int:
    value = round(float(value), 3)
    return int(value) if value.is_integer() else value


class Catalogs:
    """The account's lists and elements; links of leads to elements live on the lead record."""

    def __init__(self, account_id: int, created_at: int):
        self.account_id = account_id
        self.created_at = created_at
        self.catalogs: dict[int, dict] = {
            PRODUCTS_CATALOG_ID: {"id": PRODUCTS_CATALOG_ID, "name": "Товары", "type": "products", "sort": 10,
                                  "can_add_elements": True, "can_show_in_cards": False, "can_link_multiple": True,
                                  "can_be_deleted": False, "sdk_widget_code": None},
        }
        self.elements: dict[int, dict[int, dict]] = {PRODUCTS_CATALOG_ID: {}}
        self.groups: dict[str, int] = {}

    def add_element(self, element_id: int, name: str, *, price: float | None, sku: str | None,
                    group: str | None, created_at: int) -> None:
        if group and group not in self.groups:
            self.groups[group] = GROUP_ENUM_BASE + len(self.groups)
        self.elements[PRODUCTS_CATALOG_ID][element_id] = {
            "id": element_id, "name": name, "price": price, "sku": sku, "group": group, "created_at": created_at}

    def next_element_id(self) -> int:
        return max(self.elements[PRODUCTS_CATALOG_ID], default=0) + 1

    # -- JSON --------------------------------------------------------------------------------------

    def render_catalog(self, base: str, catalog: dict) -> dict:
        return {**catalog, "created_by": 1, "updated_by": 1, "created_at": self.created_at,
                "updated_at": self.created_at, "account_id": self.account_id,
                "_links": {"self": {"href": f"{base}/api/v4/catalogs/{catalog['id']}"}}}

    def render_element(self, base: str, catalog_id: int, element: dict) -> dict:
        values = []
        if element["sku"]:
            values.append({"field_id": SKU_FIELD_ID, "field_name": "Артикул", "field_code": "SKU",
                           "field_type": "text", "values": [{"value": element["sku"]}]})
        if element["price"] is not None:
            values.append({"field_id": PRICE_FIELD_ID, "field_name": "Цена", "field_code": "PRICE",
                           "field_type": "numeric", "values": [{"value": str(_number(element["price"]))}]})
        if element["group"]:
            values.append({"field_id": GROUP_FIELD_ID, "field_name": "Группа", "field_code": "GROUP",
                           "field_type": "category",
                           "values": [{"value": element["group"], "enum_id": self.groups[element["group"]]}]})
        return {"id": element["id"], "name": element["name"], "created_by": 1, "updated_by": 1,
                "created_at": element["created_at"], "updated_at": element["created_at"], "is_deleted": None,
                "custom_fields_values": values or None, "catalog_id": catalog_id, "account_id": self.account_id,
                "_links": {"self": {"href": f"{base}/api/v4/catalogs/{catalog_id}/elements/{element['id']}"}}}

    @staticmethod
    def embedded(rec: dict) -> list[dict]:
        """``_embedded.catalog_elements`` of a lead (``with=catalog_elements``)."""
        return [{"id": link["id"], "metadata": {"quantity": _number(link["quantity"]), "catalog_id": link["catalog_id"],
                                                "price_id": PRICE_FIELD_ID}}
                for link in rec.get("catalog_elements") or []]


# -- routes ---------------------------------------------------------------------------------------------

def catalog_routes(api: "Api", parts: list[str]) -> dict | None:
    """``/api/v4/catalogs[/{id}[/elements[/{id}]]]``."""
    n = len(parts)
    if n == 1:
        return {"GET": lambda r: list_catalogs(api, r)}
    if not parts[1].isdigit():
        return None
    catalog_id = int(parts[1])
    if n == 2:
        return {"GET": lambda r: get_catalog(api, catalog_id)}
    if parts[2] != "elements":
        return None
    if n == 3:
        return {"GET": lambda r: list_elements(api, r, catalog_id)}
    if n == 4 and parts[3].isdigit():
        return {"GET": lambda r: get_element(api, catalog_id, int(parts[3]))}
    return None


def list_catalogs(api: "Api", req: "Request") -> tuple[int, Any]:
    cats = api.store.catalogs
    base = api.acct.base_url
    items = sorted(cats.catalogs.values(), key=lambda c: (c["sort"], c["id"]))
    wanted = {str(t) for t in _values(_filter(req).get("type"))}
    if wanted:
        items = [c for c in items if c["type"] in wanted]
    return api._paged(req, "catalogs", items, lambda c: cats.render_catalog(base, c))


def get_catalog(api: "Api", catalog_id: int) -> tuple[int, Any]:
    catalog = api.store.catalogs.catalogs.get(catalog_id)
    if catalog is None:
        return 204, None
    return 200, api.store.catalogs.render_catalog(api.acct.base_url, catalog)


def list_elements(api: "Api", req: "Request", catalog_id: int) -> tuple[int, Any]:
    cats = api.store.catalogs
    if catalog_id not in cats.catalogs:
        raise ApiError(404, f"Catalog {catalog_id} not found")
    items = sorted(cats.elements[catalog_id].values(), key=lambda e: e["id"])
    ids = _ints(_filter(req).get("id"), "id")
    if ids:
        items = [e for e in items if e["id"] in ids]
    query = str(req.params.get("query") or "").strip().lower()
    if query:
        items = [e for e in items if query in e["name"].lower() or query in (e["sku"] or "").lower()]
    base = api.acct.base_url
    return api._paged(req, "elements", items, lambda e: cats.render_element(base, catalog_id, e))


def get_element(api: "Api", catalog_id: int, element_id: int) -> tuple[int, Any]:
    element = api.store.catalogs.elements.get(catalog_id, {}).get(element_id)
    if element is None:
        return 204, None
    return 200, api.store.catalogs.render_element(api.acct.base_url, catalog_id, element)


def _filter(req: "Request") -> dict:
    f = req.params.get("filter")
    return f if isinstance(f, dict) else {}


def _values(value: Any) -> list:
    if value in (None, ""):
        return []
    if isinstance(value, dict):
        value = list(value.values())
    return value if isinstance(value, list) else [value]


def _ints(value: Any, name: str) -> set[int]:
    out = set()
    for v in _values(value):
        for part in str(v).split(","):
            if part.strip():
                try:
                    out.add(int(part))
                except ValueError:
                    raise ApiError(400, f"filter[{name}] must be integers") from None
    return out


def _links_of(api: "Api", entity: str, rec: dict) -> list[dict]:
    out: list[dict] = []
    if entity == "leads":
        out += [{"to_entity_id": cid, "to_entity_type": "contacts", "metadata": {"main_contact": bool(main)}}
                for cid, main in rec.get("contacts", [])]
    if rec.get("company_id"):
        out.append({"to_entity_id": rec["company_id"], "to_entity_type": "companies", "metadata": None})
    if entity == "leads":
        out += [{"to_entity_id": item["id"], "to_entity_type": "catalog_elements", "metadata": item["metadata"]}
                for item in Catalogs.embedded(rec)]
    return out


def _filter_links(req: "Request", links: list[dict]) -> list[dict]:
    f = _filter(req)
    kind, target = f.get("to_entity_type"), f.get("to_entity_id")
    if (kind in (None, "")) != (target in (None, "")):
        raise ApiError(400, "filter[to_entity_id] and filter[to_entity_type] must be passed together")
    if kind not in (None, ""):
        wanted = _ints(target, "to_entity_id")
        links = [x for x in links if x["to_entity_type"] == str(kind) and x["to_entity_id"] in wanted]
    catalogs = _ints(f.get("to_catalog_id"), "to_catalog_id")
    if catalogs:
        links = [x for x in links if x["to_entity_type"] == "catalog_elements" and x["metadata"]["catalog_id"] in catalogs]
    return links


def entity_links(api: "Api", req: "Request", entity: str, rid: int) -> tuple[int, Any]:
    rec = api.store.rows[entity].get(rid)
    if rec is None:
        return 204, None
    links = _filter_links(req, _links_of(api, entity, rec))
    return 200, {"_total_items": len(links), "_links": {"self": api._href(req)}, "_embedded": {"links": links}}


def bulk_links(api: "Api", req: "Request", entity: str) -> tuple[int, Any]:
    ids = _ints(_filter(req).get("entity_id"), "entity_id")
    if not ids:
        raise ApiError(400, "filter[entity_id] is required")
    links: list[dict] = []
    for rid in sorted(ids):
        rec = api.store.rows[entity].get(rid)
        if rec is not None:
            links += [{"entity_id": rid, "entity_type": entity, **x}
                      for x in _filter_links(req, _links_of(api, entity, rec))]
    if not links:
        return 204, None
    return 200, {"_total_items": len(links), "_links": {"self": api._href(req)}, "_embedded": {"links": links}}
