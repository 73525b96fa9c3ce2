"""Product rows end to end over HTTP (issue 17): the mirror's rows equal the sandboxes' (Bitrix24 through
batches of crm.item.productrow.list with =ownerId arrays, amoCRM with=catalog_elements), incremental pulls
and deletions keep them equal; product functions select the right customers at day boundaries (purchases
after as_of ignored); a learned cycle equals the median computed here; reorder.due reminds once per cycle
and never again after the customer reorders."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import pytest

from adapters.bitrix24.products import RowBatches, to_rows
from connector.config import load_config
from connector.pipeline import compute, open_store, sync
from sandbox.amocrm import running_account
from sandbox.bitrix24 import running_portal

RULE = '[[segment]]\nname = "lens_90"\nwhen = \'bought("section:Оптика", within_days=90)\'\n'


def next_second() -> None:
    time.sleep(1.1)  # DATE_MODIFY has one-second resolution


def bitrix_config(folder: Path, portal, extra: str = "") -> Path:
    path = folder / "lifecycle.toml"
    path.write_text(f"""
[crm]
kind = "bitrix24"
webhook_url = "{portal.webhook_url}"
requests_per_second = 500
reconcile_hours = 0
overlap_minutes = 0
[state]
url = "sqlite:///{folder / 'state.db'}"
{extra}
""", encoding="utf-8")
    return path


def stored_rows(config) -> set[tuple]:
    store = open_store(config)
    try:
        frame = store.product_rows_frame()
    finally:
        store.close()
    return {(r["deal_id"], r["line"], r["product_id"], r["product_name"], r["section"], r["quantity"], r["price"])
            for r in frame.iter_rows(named=True)}


def portal_rows(portal) -> set[tuple]:
    """The won, non-template deals' rows as the portal serves them, with catalogue names and sections."""
    deals = {int(d["ID"]): d for d in portal.state("deals")["deals"]}
    products = portal.call("catalog.product.list", {"select": ["id", "iblockId", "name", "iblockSectionId"],
                                                    "filter": {"iblockId": 25}})[1]["result"]["products"]
    sections = {s["id"]: s["name"] for s in portal.call("catalog.section.list", {"filter": {"iblockId": 25}})[1]["result"]["sections"]}
    catalogue = {p["id"]: (p["name"], sections.get(p["iblockSectionId"])) for p in products}
    won = sorted(i for i, d in deals.items() if d["STAGE_SEMANTIC_ID"] == "S" and d.get("IS_RECURRING") != "Y")
    out = set()
    for first in range(0, len(won), 20):
        start = 0
        while True:
            status, body = portal.call("crm.item.productrow.list", {
                "filter": {"=ownerType": "D", "=ownerId": won[first:first + 20]}, "order": {"id": "asc"}, "start": start})
            assert status == 200, body
            for r in body["result"]["productRows"]:
                name, section = catalogue.get(r["productId"], (r["productName"], None))
                out.add((r["ownerId"], r["id"], str(r["productId"]) if r["productId"] else None, name, section,
                         float(r["quantity"]), float(r["price"])))
            if "next" not in body:
                break
            start = body["next"]
    return out


# -- Bitrix24 -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def portal():
    with running_portal(generate=(150, 450), limits=False) as handle:
        yield handle


def test_bitrix24_mirror_rows_equal_the_portal_through_changes_and_deletions(tmp_path, portal):
    config = load_config(bitrix_config(tmp_path, portal, RULE))
    first = sync(config)
    want = portal_rows(portal)
    assert want and stored_rows(config) == want
    templates = [int(d["ID"]) for d in portal.state("deals")["deals"] if d["IS_RECURRING"] == "Y"]
    assert templates and not {r[0] for r in stored_rows(config)} & set(templates)
    assert first.summary()["product_rows_written"] == len(want)

    next_second()
    sync(config)  # re-reads the contacts whose tags it may have written
    next_second()
    won = sorted({r[0] for r in want})
    changed, gone = won[0], won[1]
    assert portal.call("crm.item.productrow.set", {"ownerType": "D", "ownerId": changed, "productRows": [
        {"productId": 103, "price": 1000, "quantity": 4}, {"productName": "Free text line", "price": 10}]})[0] == 200
    assert portal.call("crm.deal.delete", {"id": gone})[0] == 200
    contact = int(portal.state("contacts")["contacts"][0]["ID"])
    status, body = portal.call("crm.deal.add", {"fields": {"TITLE": "new", "CONTACT_ID": contact, "STAGE_ID": "WON",
                                                           "OPPORTUNITY": 500, "CLOSEDATE": date.today().isoformat()}})
    new_deal = int(body["result"])
    rows = [{"productId": 101, "price": 1890, "quantity": 1}] * 60  # more than one 50-row page
    assert portal.call("crm.item.productrow.set", {"ownerType": "D", "ownerId": new_deal, "productRows": rows})[0] == 200
    portal.reset_counters()
    second = sync(config)
    asked = portal.counters()["methods"].get("crm.item.productrow.list", 0)
    assert stored_rows(config) == portal_rows(portal)
    mine = stored_rows(config)
    assert not any(r[0] == gone for r in mine)
    assert sorted(((r[2], r[3], r[4], r[5], r[6]) for r in mine if r[0] == changed), key=str) == [
        ("103", "Картридж для фильтра воды", "Фильтры для воды", 4.0, 1000.0), (None, "Free text line", None, 1.0, 10.0)]
    assert sum(1 for r in mine if r[0] == new_deal) == 60
    # incremental: only the two changed won deals were asked for (one batch, its overflow page in a second)
    assert asked == 2
    assert second.summary()["pull"] == "incremental"


def test_row_batches_fill_pages_follow_overflow_and_resend_limited_commands():
    plan = RowBatches(range(1, 101))
    first = plan.next_request()
    assert first is not None and len(first) == 7  # 16 deals a command (3 rows a deal guessed): 100 deals
    assert "filter[%3DownerId][15]=16" in first["r0"] and "filter[%3DownerId][16]" not in first["r0"]
    results = {k: {"productRows": [{"id": 1000 * int(k[1:]) + j, "ownerId": 1} for j in range(50 if k == "r0" else 10)]}
               for k in first}
    errors = {"r6": {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked"}}
    del results["r6"]
    got = plan.feed(results, errors, {"r0": 50})
    assert len(got) == 50 + 5 * 10 and plan.blocked
    again = plan.next_request()
    assert again is not None and "start=50" in again["r0"] and "start" not in again["r1"]  # overflow page, then r6 resent
    assert again["r1"] == first["r6"].replace("r6", "r1")
    assert plan.per_command == int(48 / (100 / 96))  # re-sized from the rows per deal read so far


def test_malformed_rows_are_reported_by_id_and_skipped():
    rows, errors = to_rows([
        {"id": 1, "ownerId": 5, "productId": 101, "productName": "A", "price": 10, "quantity": 2},
        {"id": 2, "ownerId": 5, "productId": 101, "productName": "A", "price": "1e999", "quantity": 1},
        {"id": "x", "ownerId": 5, "productId": 101, "price": 1, "quantity": 1},
        {"id": 4, "ownerId": 5, "productId": 0, "productName": "Free", "price": 3, "quantity": "abc"},
    ], {})
    assert [(r.line, r.product_id, r.quantity) for r in rows] == [(1, "101", 2.0)]
    assert [e.line for e in errors] == [2, 0, 4] and "'2'" in errors[0].message and "'x'" in errors[1].message


# -- amoCRM ---------------------------------------------------------------------------------------------

def test_amocrm_mirror_rows_equal_the_linked_elements(tmp_path):
    with running_account(generate=(100, 300), limits=False) as acct:
        info = acct.info
        path = tmp_path / "lifecycle.toml"
        path.write_text(f"""
[crm]
kind = "amocrm"
base_url = "{info['base_url']}"
access_token = "{info['access_token']}"
overlap_minutes = 0
[state]
url = "sqlite:///{tmp_path / 'state.db'}"
{RULE}""", encoding="utf-8")
        config = load_config(path)
        sync(config)

        def account_rows() -> set[tuple]:
            status, body = acct.api("GET", "/api/v4/catalogs/4521/elements", params={"limit": 250})
            assert status == 200, body
            elements = {}
            for element in body["_embedded"]["elements"]:
                fields = {f["field_code"]: f["values"][0].get("value") for f in element.get("custom_fields_values") or []}
                elements[element["id"]] = (element["name"], fields.get("GROUP"), float(fields["PRICE"]))
            out = set()
            page = 1
            while True:
                status, body = acct.api("GET", "/api/v4/leads", params={"with": "catalog_elements", "limit": 250, "page": page})
                if status == 204:
                    break
                for lead in body["_embedded"]["leads"]:
                    for link in lead["_embedded"].get("catalog_elements") or []:
                        name, group, price = elements[link["id"]]
                        out.add((lead["id"], link["id"], str(link["id"]), name, group, float(link["metadata"]["quantity"]),
                                 price))
                if "next" not in body["_links"]:
                    break
                page += 1
            return out

        want = account_rows()
        assert want and stored_rows(config) == want
        gone = sorted({r[0] for r in want})[0]
        acct.delete("leads", gone)
        next_second()
        sync(config)
        assert stored_rows(config) == account_rows() and not any(r[0] == gone for r in stored_rows(config))


# -- functions at day boundaries, learned cycles, reorder reminders (a small portal built by hand) -------

AS_OF = date(2026, 6, 1)


def _add_purchase(portal, contact: int, day: date, rows: list[dict]) -> int:
    status, body = portal.call("crm.deal.add", {"fields": {"TITLE": "order", "CONTACT_ID": contact, "STAGE_ID": "WON",
                                                           "OPPORTUNITY": 100, "CLOSEDATE": day.isoformat()}})
    assert status == 200, body
    deal = int(body["result"])
    assert portal.call("crm.item.productrow.set", {"ownerType": "D", "ownerId": deal, "productRows": rows})[0] == 200
    return deal


def _add_contact(portal, name: str) -> int:
    status, body = portal.call("crm.contact.add", {"fields": {"NAME": name}})
    assert status == 200, body
    return int(body["result"])


LENS = {"productName": "Test lenses 30", "price": 1000, "quantity": 1}
FILTER = {"productName": "Test filter", "price": 500, "quantity": 1}


def test_bought_within_days_at_the_boundaries_and_purchases_after_as_of_ignored(tmp_path):
    with running_portal(limits=False) as portal:
        n = 30
        who = {}
        for label, offset in (("n_minus_1", n - 1), ("n", n), ("n_plus_1", n + 1), ("after", -1)):
            who[label] = _add_contact(portal, label)
            _add_purchase(portal, who[label], AS_OF - timedelta(days=offset), [LENS])
        rules = (
            '[[segment]]\nname = "recent"\nwhen = \'bought("test LENSES 30", within_days=30)\'\n'
            '[[segment]]\nname = "since"\nwhen = \'days_since_bought("Test lenses 30") >= 30\'\n'
            '[[segment]]\nname = "twice"\nwhen = \'times_bought("Test lenses 30") == 1 and spent_on("Test lenses 30") == 1000\'\n'
            '[[segment]]\nname = "window"\nwhen = \'times_bought("Test lenses 30", within_days=30) + '
            'spent_on("Test lenses 30", within_days=30) / 1000 == 2\'\n')
        config = load_config(bitrix_config(tmp_path, portal, rules))
        sync(config, as_of=AS_OF)
        store = open_store(config)
        try:
            result = compute(store, config, AS_OF)
            later = compute(store, config, AS_OF + timedelta(days=1))
        finally:
            store.close()
        assert set(result.members("recent")) == {who["n_minus_1"], who["n"]}
        assert set(result.members("since")) == {who["n"], who["n_plus_1"]}
        assert set(result.members("twice")) == {who["n_minus_1"], who["n"], who["n_plus_1"]}  # "after" not yet
        assert set(result.members("window")) == {who["n_minus_1"], who["n"]}
        assert set(later.members("recent")) == {who["n_minus_1"], who["after"]}


def test_learned_cycle_equals_the_median_gap_computed_from_the_portal(tmp_path, portal):
    extra = ('[[product_cycle]]\nproduct = "section:Оптика"\ncycle_days = "learn"\n'
             '[products]\nmin_observations = 5\n')
    config = load_config(bitrix_config(tmp_path, portal, extra))
    sync(config)
    store = open_store(config)
    try:
        result = compute(store, config, date.today())
    finally:
        store.close()
    # independently: each contact's distinct close dates of won deals with an optics product, gaps pooled
    state = portal.state()
    sections = {s["id"]: s["name"] for s in portal.call("catalog.section.list", {})[1]["result"]["sections"]}
    products = portal.call("catalog.product.list", {"select": ["id", "iblockId", "iblockSectionId"],
                                                    "filter": {"iblockId": 25}})[1]["result"]["products"]
    optics = {p["id"] for p in products if sections.get(p["iblockSectionId"]) == "Оптика"}
    with_optics = {r["ownerId"] for r in state["product_rows"] if r["productId"] in optics}
    days = defaultdict(set)
    for deal in state["deals"]:
        if deal["STAGE_SEMANTIC_ID"] == "S" and deal["IS_RECURRING"] != "Y" and int(deal["ID"]) in with_optics \
                and deal.get("CONTACT_ID"):
            days[int(deal["CONTACT_ID"])].add(date.fromisoformat(deal["CLOSEDATE"][:10]))
    gaps = [(b - a).days for d in days.values() for a, b in zip(sorted(d), sorted(d)[1:])]
    assert len(gaps) >= 5
    cycle = result.product_cycles[0]
    assert cycle["observations"] == len(gaps) and cycle["cycle_days"] == round(statistics.median(gaps), 1)


def test_reorder_due_reminds_once_per_cycle_never_after_reordering_and_once_for_two_products(tmp_path):
    start = date(2026, 3, 1)
    with running_portal(limits=False) as portal:
        anna = _add_contact(portal, "Anna")
        boris = _add_contact(portal, "Boris")
        _add_purchase(portal, anna, start, [LENS])
        _add_purchase(portal, anna, start + timedelta(days=28), [LENS])  # her reorder, before the due date
        _add_purchase(portal, boris, start, [LENS, FILTER])
        extra = (
            '[[product_cycle]]\nproduct = "Test lenses 30"\ncycle_days = 30\nremind_before_days = 5\n'
            '[[product_cycle]]\nproduct = "Test filter"\ncycle_days = 32\nremind_before_days = 9\n'
            '[[campaign]]\nname = "reorder"\nsegment = "reorder.due"\nauto_approve = true\n'
            'on_enter = [{ action = "call_task", title = "Remind {name}: {reorder_product} due {reorder_due_date:%d.%m.%Y}", '
            'description = "due soon", due_in_days = 0 }]\n')
        config = load_config(bitrix_config(tmp_path, portal, extra))

        def reminders() -> list[str]:
            return sorted(t["TITLE"] for t in portal.state()["tasks"])

        due = {}
        for offset in (22, 23, 24, 25, 26, 27, 28, 29, 40, 52, 53, 54, 60):
            day = start + timedelta(days=offset)
            result = sync(config, as_of=day)
            due[offset] = set(result.computation.members("reorder.due"))
        # Boris: the filter's window opens on day 32 - 9 = 23, the lenses' on day 25; he is due from day 23
        # to the end and reminded once, about the earlier due date (the lenses, day 30)
        assert due[22] == set() and boris in due[23] and all(boris in due[d] for d in (25, 29, 40, 60))
        # Anna: due on day 30 (window from 25); she reorders on day 28: out until the next window (58 - 5 = 53)
        assert anna not in due[24] and anna in due[25] and anna in due[27]
        assert all(anna not in due[d] for d in (28, 29, 40, 52)) and anna in due[53]
        assert reminders() == sorted([
            "Remind Boris: Test lenses 30 due 31.03.2026",
            "Remind Anna: Test lenses 30 due 31.03.2026",
            "Remind Anna: Test lenses 30 due 28.04.2026",
        ])
        store = open_store(config)
        try:
            row = compute(store, config, start + timedelta(days=24)).features.filter(
                pl_col_id(boris)).select("reorder_product", "reorder_due_date", "reorder_overdue_days").row(0)
        finally:
            store.close()
        assert row == ("Test lenses 30", start + timedelta(days=30), -6)


def pl_col_id(value: int):
    import polars as pl

    return pl.col("id") == value


def test_the_commented_products_example_is_valid_when_uncommented(tmp_path):
    from tests.conftest import ROOT

    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    block = text[text.index("# --- Products"):text.index("# --- Campaigns")].splitlines()[1:]
    toml = [line[2:] for line in block if line.startswith("# ") and (line[2:].startswith("[") or " = " in line)]
    path = tmp_path / "lifecycle.toml"
    path.write_text('[crm]\nkind = "bitrix24"\nwebhook_url = "https://example.bitrix24.ru/rest/1/x/"\n' + "\n".join(toml),
                    encoding="utf-8")
    loaded = load_config(path)
    cycle = loaded.settings.product_cycle[0]
    assert (cycle.cycle_days, cycle.remind_before_days, cycle.units_per_cycle, cycle.max_overdue_days) == (30, 5, 1, 30)
    assert "reorder.due" in loaded.rules.segment_names and loaded.rules.uses_products
    assert [c.segment for c in loaded.settings.campaign] == ["reorder.due"]


def test_csv_deal_products_replace_rows_and_report_malformed_lines(tmp_path):
    from adapters.csv_files import CsvSource

    crm = tmp_path / "crm"
    crm.mkdir()
    (crm / "contacts.csv").write_text("id,name\n1,A\n2,B\n", encoding="utf-8")
    (crm / "deals.csv").write_text("id,contact_id,status,amount,closed_at\n10,1,won,100,2026-05-01\n11,2,won,50,2026-05-20\n",
                                   encoding="utf-8")
    (crm / "deal_products.csv").write_text(
        "deal_id,product_id,product_name,quantity,price,section\n"
        "10,101,Lenses,2,45,Optics\n10,,Gift wrap,,5,\n11,101,Lenses,abc,45,Optics\n11,,,1,1,\n99,101,Lenses,1,45,Optics\n",
        encoding="utf-8")
    pull = CsvSource(crm, timezone="Europe/Moscow").pull()
    assert [(r.deal_id, r.product_id, r.product_name, r.quantity, r.price, r.section) for r in pull.product_rows] == [
        (10, "101", "Lenses", 2.0, 45.0, "Optics"), (10, None, "Gift wrap", 1.0, 5.0, None)]  # deal 99 is unknown
    assert [(e.file, e.line, e.column) for e in pull.errors] == [
        ("deal_products.csv", 4, "quantity"), ("deal_products.csv", 5, "product_id")]
    path = tmp_path / "lifecycle.toml"
    path.write_text(f'[crm]\nkind = "csv"\npath = "{crm}"\n[state]\nurl = "sqlite:///{tmp_path / "s.db"}"\n'
                    '[[segment]]\nname = "optics"\nwhen = \'spent_on("section:optics") == 90\'\n', encoding="utf-8")
    config = load_config(path)
    result = sync(config, as_of=date(2026, 6, 1))
    assert result.computation.members("optics") == [1]
    # the file changes: deal 10's rows are replaced by the file's, none are kept from before
    (crm / "deal_products.csv").write_text("deal_id,product_id,product_name,quantity,price\n11,101,Lenses,1,45\n",
                                           encoding="utf-8")
    sync(config, as_of=date(2026, 6, 1))
    assert {(r[0], r[2]) for r in stored_rows(config)} == {(11, "101")}


def test_row_batches_skip_a_single_deal_the_portal_no_longer_shows():
    plan = RowBatches([7])
    first = plan.next_request()
    assert plan.feed({}, {"r0": {"error": "ACCESS_DENIED", "error_description": "Access denied"}}) == []
    assert plan.skipped == [7] and plan.next_request() is None
    two = RowBatches([1, 2])
    two.next_request()
    with pytest.raises(Exception, match="ACCESS_DENIED"):
        two.feed({}, {"r0": {"error": "ACCESS_DENIED", "error_description": "Access denied"}})
    assert first is not None
