"""Product catalogues and deal product rows in the Bitrix24 and amoCRM sandboxes, over real HTTP.

Behaviour from shared/research/wave2-crm-apis.md §1 (crm.item.productrow.list: camelCase rows in
``result.productRows``, ``total``/``next``, 50 a page, ``=ownerId`` one id or an array, usable in ``batch``;
catalog.product.list / catalog.section.list / crm.product.list; amoCRM lists, elements,
``with=catalog_elements`` and the links routes), seeded by ``--generate`` (sandbox/products.py) and by
``--import-csv`` from deal_products.csv.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path
from urllib.parse import urlencode

import pytest

from sandbox.amocrm import running_account
from sandbox.bitrix24 import running_portal
from sandbox.bitrix24.products import ROW_FIELDS
from sandbox.products import CATALOGUE, CYCLE_DAYS
from tests.conftest import ROOT

SAMPLE = ROOT / "examples" / "sample"
TODAY = date(2026, 6, 1)


def ok(response):
    status, body = response
    assert status == 200, body
    return body


def _sample_rows() -> list[dict]:
    with (SAMPLE / "deal_products.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def portal():
    with running_portal(generate=(150, 450), limits=False, today=TODAY) as handle:
        yield handle


def _rows(portal, owner, **extra):
    return portal.call("crm.item.productrow.list", {"filter": {"=ownerType": "D", "=ownerId": owner}, **extra})


# -- Bitrix24: generated rows ---------------------------------------------------------------------------

def test_generated_rows_are_one_to_three_per_won_deal_and_cyclical(portal):
    deals = {int(d["ID"]): d for d in portal.state("deals")["deals"]}
    rows = portal.state("product_rows")["product_rows"]
    per_deal = Counter(r["ownerId"] for r in rows)
    won = {i for i, d in deals.items() if d["STAGE_SEMANTIC_ID"] == "S"}
    templates = {i for i, d in deals.items() if d["IS_RECURRING"] == "Y"}
    assert won and set(per_deal) == won | templates
    assert all(1 <= per_deal[i] <= 3 for i in won)
    assert {r["productId"] for r in rows} <= {p.id for p in CATALOGUE}
    # a contact keeps buying the same cyclical product
    by_contact: dict[str, list[set]] = defaultdict(list)
    for deal_id in sorted(won):
        by_contact[deals[deal_id]["CONTACT_ID"]].append({r["productId"] for r in rows if r["ownerId"] == deal_id})
    repeaters = [sets for contact, sets in by_contact.items() if contact and len(sets) >= 3]
    assert repeaters and all(set.intersection(*sets) & {p for p, c in CYCLE_DAYS.items() if c} for sets in repeaters)


def test_recurring_templates_are_open_deals_with_the_rows_of_a_won_deal(portal):
    deals = {int(d["ID"]): d for d in portal.state("deals")["deals"]}
    templates = ok(portal.call("crm.deal.list", {"filter": {"IS_RECURRING": "Y"}, "select": ["ID", "CONTACT_ID", "STAGE_SEMANTIC_ID"]}))["result"]
    assert templates and all(t["STAGE_SEMANTIC_ID"] == "P" for t in templates)
    for template in templates:
        rows = ok(_rows(portal, int(template["ID"])))["result"]["productRows"]
        won_of_contact = [i for i, d in deals.items() if d["CONTACT_ID"] == template["CONTACT_ID"] and d["STAGE_SEMANTIC_ID"] == "S"]
        copies = [[(r["productId"], r["quantity"], r["price"]) for r in ok(_rows(portal, i))["result"]["productRows"]]
                  for i in won_of_contact]
        assert [(r["productId"], r["quantity"], r["price"]) for r in rows] in copies


def test_the_same_seed_gives_the_same_rows():
    with running_portal(generate=(40, 120), limits=False, today=TODAY, seed=3) as a, \
            running_portal(generate=(40, 120), limits=False, today=TODAY, seed=3) as b, \
            running_portal(generate=(40, 120), limits=False, today=TODAY, seed=4) as c:
        first, second, other = (p.state("product_rows")["product_rows"] for p in (a, b, c))
    assert first == second and first != other


def test_productrow_list_shape_filter_and_errors(portal):
    rows = portal.state("product_rows")["product_rows"]
    deal_id = next(r["ownerId"] for r in rows if Counter(x["ownerId"] for x in rows)[r["ownerId"]] >= 2)
    body = ok(_rows(portal, deal_id))
    got = body["result"]["productRows"]
    assert body["total"] == len(got) >= 2 and "next" not in body
    assert all(list(r) == list(ROW_FIELDS) and r["ownerId"] == deal_id and r["ownerType"] == "D" for r in got)
    first = got[0]
    assert isinstance(first["id"], int) and isinstance(first["price"], (int, float)) and isinstance(first["quantity"], (int, float))
    assert [r["sort"] for r in got] == sorted(r["sort"] for r in got)  # default order: sort
    # the deal id as a string (a form-encoded call) works the same
    assert ok(_rows(portal, str(deal_id)))["result"]["productRows"] == got
    # filters on row fields
    product = got[1]["productId"]
    only = ok(_rows(portal, deal_id, filter={"=ownerType": "D", "=ownerId": deal_id, "=productId": product}))
    assert {r["productId"] for r in only["result"]["productRows"]} == {product}
    by_ids = ok(portal.call("crm.item.productrow.list", {"filter": {"=ownerType": "D", "=ownerId": deal_id, "@id": [got[0]["id"]]}}))
    assert [r["id"] for r in by_ids["result"]["productRows"]] == [got[0]["id"]]
    desc = ok(_rows(portal, deal_id, order={"id": "desc"}))["result"]["productRows"]
    assert [r["id"] for r in desc] == sorted((r["id"] for r in got), reverse=True)
    # start=-1: no total
    assert "total" not in ok(_rows(portal, deal_id, start=-1))
    # required keys; a deal that does not exist
    status, error = portal.call("crm.item.productrow.list", {"filter": {"=ownerType": "D"}})
    assert status == 400 and error["error"] == "REQUIRED_ARG_MISSING"
    status, error = _rows(portal, 999_999)
    assert status == 400 and error["error"] == "ACCESS_DENIED"


def test_productrow_list_takes_an_array_of_deals_and_pages_by_50(portal):
    rows = portal.state("product_rows")["product_rows"]
    owners = sorted({r["ownerId"] for r in rows})[:60]
    expected = sorted(r["id"] for r in rows if r["ownerId"] in owners)
    assert len(expected) > 50
    first = ok(_rows(portal, owners + [999_999], order={"id": "asc"}))  # a missing deal in an array is skipped
    assert first["total"] == len(expected) and first["next"] == 50 and len(first["result"]["productRows"]) == 50
    second = ok(_rows(portal, owners, order={"id": "asc"}, start=50))
    assert "next" not in second or second["next"] == 100
    seen = [r["id"] for r in first["result"]["productRows"] + second["result"]["productRows"]]
    if "next" in second:
        seen += [r["id"] for r in ok(_rows(portal, owners, order={"id": "asc"}, start=100))["result"]["productRows"]]
    assert seen == expected


def test_productrow_list_in_a_batch_with_php_bracket_arrays(portal):
    rows = portal.state("product_rows")["product_rows"]
    owners = sorted({r["ownerId"] for r in rows})
    chunks = [owners[i:i + 20] for i in range(0, 60, 20)]
    cmd = {f"c{i}": "crm.item.productrow.list?" + urlencode(
        [("filter[=ownerType]", "D")] + [(f"filter[=ownerId][{k}]", v) for k, v in enumerate(chunk)] + [("order[id]", "asc")])
        for i, chunk in enumerate(chunks)}
    portal.reset_counters()
    body = ok(portal.call("batch", {"halt": 0, "cmd": cmd}))["result"]
    assert body["result_error"] == []
    for key, chunk in zip(cmd, chunks):
        wanted = [r["id"] for r in rows if r["ownerId"] in chunk]
        got = body["result"][key]["productRows"]
        assert body["result_total"][key] == len(wanted)
        assert [r["id"] for r in got] == sorted(wanted)[:50]
        assert (body["result_next"] or {}).get(key) == (50 if len(wanted) > 50 else None)
    assert portal.counters()["methods"]["crm.item.productrow.list"] == 3


def test_legacy_deal_productrows_get(portal):
    row = portal.state("product_rows")["product_rows"][0]
    got = ok(portal.call("crm.deal.productrows.get", {"id": row["ownerId"]}))["result"]
    assert got[0]["ID"] == str(row["id"]) and got[0]["OWNER_ID"] == str(row["ownerId"]) and got[0]["OWNER_TYPE"] == "D"
    assert got[0]["PRODUCT_ID"] == row["productId"] and isinstance(got[0]["PRICE_ACCOUNT"], str)
    status, error = portal.call("crm.deal.productrows.get", {"id": 0})
    assert status == 400 and error == {"error": "", "error_description": "The parameter id is invalid or not defined."}


def test_catalogue_products_sections_and_legacy_lists(portal):
    catalogs = ok(portal.call("catalog.catalog.list", {}))["result"]["catalogs"]
    iblock = next(c["iblockId"] for c in catalogs if c["productIblockId"] is None)
    products = ok(portal.call("catalog.product.list", {"select": ["id", "iblockId", "name", "iblockSectionId"],
                                                       "filter": {"iblockId": iblock}, "order": {"id": "asc"}}))
    assert products["total"] == len(CATALOGUE)
    assert [(p["id"], p["name"]) for p in products["result"]["products"]] == [(p.id, p.name) for p in CATALOGUE]
    assert set(products["result"]["products"][0]) == {"id", "iblockId", "name", "iblockSectionId"}
    sections = {s["id"]: s["name"] for s in ok(portal.call("catalog.section.list", {"filter": {"iblockId": iblock}}))["result"]["sections"]}
    assert {sections[p["iblockSectionId"]] for p in products["result"]["products"]} == {p.section for p in CATALOGUE}
    # select and filter must name id / iblockId (error code 0, as documented)
    status, error = portal.call("catalog.product.list", {"select": ["name"], "filter": {"iblockId": iblock}})
    assert status == 400 and error["error"] == "0"
    status, error = portal.call("catalog.product.list", {"select": ["id", "iblockId"]})
    assert status == 400 and error["error"] == "0"
    one = ok(portal.call("catalog.product.list", {"select": ["id", "iblockId", "name"], "filter": {"iblockId": iblock, "id": 106}}))
    assert [p["name"] for p in one["result"]["products"]] == ["Лицензия «Офис Про», 1 год"]
    legacy = ok(portal.call("crm.product.list", {"order": {"NAME": "ASC"}, "select": ["ID", "NAME", "PRICE", "SECTION_ID"]}))
    assert legacy["total"] == len(CATALOGUE) and all(isinstance(p["ID"], str) and isinstance(p["PRICE"], str) for p in legacy["result"])
    assert [p["NAME"] for p in legacy["result"]] == sorted(p.name for p in CATALOGUE)
    legacy_sections = ok(portal.call("crm.productsection.list", {}))["result"]
    assert {s["NAME"] for s in legacy_sections} == set(sections.values())


def test_deleting_a_deal_removes_its_rows():
    with running_portal(generate=(20, 60), limits=False, today=TODAY) as p:
        rows = p.state("product_rows")["product_rows"]
        deal_id = rows[0]["ownerId"]
        others = sorted({r["ownerId"] for r in rows} - {deal_id})[:5]
        before = ok(_rows(p, [deal_id, *others]))["total"]
        mine = sum(1 for r in rows if r["ownerId"] == deal_id)
        assert ok(p.call("crm.deal.delete", {"id": deal_id}))["result"] is True
        assert ok(_rows(p, [deal_id, *others]))["total"] == before - mine
        assert _rows(p, deal_id)[1]["error"] == "ACCESS_DENIED"
        assert all(r["ownerId"] != deal_id for r in p.state("product_rows")["product_rows"])


# -- Bitrix24: CSV import --------------------------------------------------------------------------------

def test_bitrix24_import_of_the_sample_keeps_every_csv_row():
    csv_rows = _sample_rows()
    with running_portal(import_csv=SAMPLE, limits=False) as p:
        rows = p.state("product_rows")["product_rows"]
        assert len(rows) == len(csv_rows)
        assert sorted((r["ownerId"], r["productId"], r["productName"], float(r["quantity"]), float(r["price"])) for r in rows) == \
            sorted((int(c["deal_id"]), int(c["product_id"]), c["product_name"], float(c["quantity"]), float(c["price"])) for c in csv_rows)
        deals = {int(d["ID"]): d for d in p.state("deals")["deals"]}
        assert all(deals[r["ownerId"]]["STAGE_SEMANTIC_ID"] == "S" for r in rows)  # the sample's rows are on won deals
        names = {pr["id"]: pr["name"] for pr in ok(p.call("catalog.product.list", {
            "select": ["id", "iblockId", "name"], "filter": {"iblockId": 25}}))["result"]["products"]}
        assert names == {int(c["product_id"]): c["product_name"] for c in csv_rows}


def test_import_reports_bad_product_rows_and_keeps_the_good_ones(tmp_path: Path):
    (tmp_path / "contacts.csv").write_text("id,name\n1,A\n", encoding="utf-8")
    (tmp_path / "deals.csv").write_text("id,contact_id,status,amount,closed_at\n10,1,won,300,2026-01-10\n11,1,open,5,\n",
                                        encoding="utf-8")
    (tmp_path / "deal_products.csv").write_text(
        "deal_id,product_id,product_name,quantity,price\n"
        "10,7,Фильтр,2,100\n"
        "10,,Доставка,1,100\n"
        "12,7,Фильтр,1,100\n"
        "10,,,1,5\n"
        "10,7,Фильтр,0,100\n"
        "10,7,Фильтр,1,abc\n", encoding="utf-8")
    with running_portal(import_csv=tmp_path, limits=False) as p:
        assert p.server.notes == [  # type: ignore[attr-defined]
            "deal_products.csv:4, column 'deal_id': deal 12 is not in deals.csv (or its row was skipped)",
            "deal_products.csv:5, column 'product_name': is empty; a row without product_id needs a product_name",
            "deal_products.csv:6, column 'quantity': '0' is not a quantity above 0",
            "deal_products.csv:7, column 'price': 'abc' is not a number",
        ]
        got = ok(_rows(p, 10))["result"]["productRows"]
        assert [(r["productId"], r["productName"], r["quantity"], r["price"]) for r in got] == [
            (7, "Фильтр", 2, 100), (0, "Доставка", 1, 100)]
        deal = ok(p.call("crm.deal.get", {"id": 10}))["result"]
        assert deal["OPPORTUNITY"] == "300.00" and deal["IS_MANUAL_OPPORTUNITY"] == "N"  # rows add up to 300


# -- amoCRM --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def acct():
    with running_account(generate=(150, 450), limits=False, today=TODAY) as handle:
        yield handle


def test_amocrm_catalogs_and_elements(acct):
    catalogs = ok(acct.api("GET", "/api/v4/catalogs"))["_embedded"]["catalogs"]
    assert [(c["name"], c["type"]) for c in catalogs] == [("Товары", "products")]
    catalog_id = catalogs[0]["id"]
    page = ok(acct.api("GET", f"/api/v4/catalogs/{catalog_id}/elements", params={"limit": 4}))
    assert len(page["_embedded"]["elements"]) == 4 and "page=2" in page["_links"]["next"]["href"]
    everything = ok(acct.api("GET", f"/api/v4/catalogs/{catalog_id}/elements"))["_embedded"]["elements"]
    assert [e["id"] for e in everything] == [p.id for p in CATALOGUE]
    lens = next(e for e in everything if e["id"] == 101)
    fields = {f["field_code"]: f for f in lens["custom_fields_values"]}
    assert fields["SKU"]["values"] == [{"value": "LENS-1D-30"}] and fields["PRICE"]["values"] == [{"value": "1890"}]
    assert fields["GROUP"]["values"][0]["value"] == "Оптика" and isinstance(fields["GROUP"]["values"][0]["enum_id"], int)
    assert lens["catalog_id"] == catalog_id and lens["is_deleted"] is None
    found = ok(acct.api("GET", f"/api/v4/catalogs/{catalog_id}/elements", params={"filter": {"id": [104, 110]}}))
    assert [e["id"] for e in found["_embedded"]["elements"]] == [104, 110]
    assert [e["id"] for e in ok(acct.api("GET", f"/api/v4/catalogs/{catalog_id}/elements", params={"query": "кофе"}))["_embedded"]["elements"]] == [108, 109]
    assert ok(acct.api("GET", f"/api/v4/catalogs/{catalog_id}/elements/106"))["name"] == "Лицензия «Офис Про», 1 год"
    assert acct.api("GET", f"/api/v4/catalogs/{catalog_id}/elements", params={"limit": 251})[0] == 422


def test_amocrm_leads_with_catalog_elements(acct):
    plain = ok(acct.api("GET", "/api/v4/leads", params={"limit": 250}))["_embedded"]["leads"]
    assert all("catalog_elements" not in lead["_embedded"] for lead in plain)
    leads = []
    for page in (1, 2):
        leads += ok(acct.api("GET", "/api/v4/leads", params={"with": "catalog_elements", "limit": 250, "page": page}))["_embedded"]["leads"]
    assert len(leads) == 450
    for lead in leads:
        items = lead["_embedded"]["catalog_elements"]
        if lead["status_id"] == 142:
            assert 1 <= len(items) <= 3
            assert all(set(i["metadata"]) == {"quantity", "catalog_id", "price_id"} for i in items)
        else:
            assert items == []
    single = ok(acct.api("GET", f"/api/v4/leads/{leads[0]['id']}", params={"with": "catalog_elements"}))
    assert single["_embedded"]["catalog_elements"] == leads[0]["_embedded"]["catalog_elements"]


def test_amocrm_links_single_and_bulk(acct):
    state = acct.state("catalog_elements")["catalog_elements"]
    lead_id = int(next(iter(state)))
    links = ok(acct.api("GET", f"/api/v4/leads/{lead_id}/links"))
    kinds = Counter(x["to_entity_type"] for x in links["_embedded"]["links"])
    assert links["_total_items"] == len(links["_embedded"]["links"]) and kinds["catalog_elements"] == len(state[str(lead_id)])
    contact = next(x for x in links["_embedded"]["links"] if x["to_entity_type"] == "contacts")
    assert contact["metadata"] == {"main_contact": True}
    only = ok(acct.api("GET", f"/api/v4/leads/{lead_id}/links", params={"filter": {"to_catalog_id": 4521}}))
    assert {x["to_entity_type"] for x in only["_embedded"]["links"]} == {"catalog_elements"}
    element = only["_embedded"]["links"][0]["to_entity_id"]
    pair = ok(acct.api("GET", f"/api/v4/leads/{lead_id}/links",
                       params={"filter": {"to_entity_type": "catalog_elements", "to_entity_id": element}}))
    assert [x["to_entity_id"] for x in pair["_embedded"]["links"]] == [element]
    assert acct.api("GET", f"/api/v4/leads/{lead_id}/links", params={"filter": {"to_entity_id": element}})[0] == 400
    ids = [int(k) for k in list(state)[:5]]
    bulk = ok(acct.api("GET", "/api/v4/leads/links", params={"filter": {"entity_id": ids, "to_catalog_id": 4521}}))
    assert sorted((x["entity_id"], x["to_entity_id"]) for x in bulk["_embedded"]["links"]) == sorted(
        (i, e["id"]) for i in ids for e in state[str(i)])
    assert all(x["entity_type"] == "leads" for x in bulk["_embedded"]["links"])
    assert acct.api("GET", "/api/v4/leads/links")[0] == 400


def test_amocrm_import_of_the_sample_and_a_deleted_lead():
    csv_rows = _sample_rows()
    expected: Counter = Counter()
    for row in csv_rows:
        expected[(int(row["deal_id"]), int(row["product_id"]))] += float(row["quantity"])
    with running_account(import_csv=SAMPLE, limits=False) as a:
        state = a.state("catalog_elements")["catalog_elements"]
        got = Counter({(int(lead), item["id"]): float(item["metadata"]["quantity"]) for lead, items in state.items() for item in items})
        assert got == expected
        names = {e["id"]: e["name"] for e in ok(a.api("GET", "/api/v4/catalogs/4521/elements"))["_embedded"]["elements"]}
        assert names == {int(r["product_id"]): r["product_name"] for r in csv_rows}
        lead_id = int(csv_rows[0]["deal_id"])
        a.delete("leads", lead_id)
        assert a.api("GET", f"/api/v4/leads/{lead_id}/links")[0] == 204
        assert str(lead_id) not in a.state("catalog_elements")["catalog_elements"]
