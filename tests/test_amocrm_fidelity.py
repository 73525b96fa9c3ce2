"""amoCRM clients from PyPI that nobody here wrote, unchanged, against the sandbox account.

* amocrm-api-wrapper (bzdvdn, httpx, sync): ``AmoOAuthClient(crm_url=...)`` takes the account address as a
  documented argument; it refreshes once on 401 with the refresh token and retries. Its writes work; its
  reads cannot run at all with httpx 0.28 (it passes ``json=`` to ``httpx.Client.get``), which the test records.
* aioamocrm (async, httpx): ``AmoCRMClient(base_url=...)`` ("for a proxy or a test server" in its own
  docstring), with its default 7 requests/second limiter against the sandbox's real 7 req/s limit.

Only documented constructor arguments are used; nothing in either client is patched.
"""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from sandbox.amocrm import running_account

amocrm_api = pytest.importorskip("amocrm_api")
aioamocrm = pytest.importorskip("aioamocrm")


@pytest.fixture(scope="module")
def acct():
    with running_account(generate=(300, 700), limits=False, today=date(2026, 6, 1)) as handle:
        yield handle


def wrapper_client(acct):
    info = acct.info
    return amocrm_api.AmoOAuthClient(access_token=info["oauth_access_token"], refresh_token=info["refresh_token"],
                                     crm_url=info["base_url"], client_id=info["client_id"],
                                     client_secret=info["client_secret"], redirect_uri=info["redirect_uri"])


def test_amocrm_api_wrapper_writes_tags_and_cannot_read_with_current_httpx(acct):
    client = wrapper_client(acct)
    acct.reset_counters()
    answer = client.update_contacts([{"id": 7, "_embedded": {"tags": [{"name": "lifecycle.new_active"}]}}])
    assert answer["_embedded"]["contacts"][0]["id"] == 7
    created = client.add_tags_for_entity_type("leads", [{"name": "vip"}])
    assert created["_embedded"]["tags"][0]["name"] == "vip"
    leads = client.update_leads([{"id": 9, "tags_to_add": [{"name": "vip"}]}])
    assert leads["_embedded"]["leads"][0]["id"] == 9
    state = acct.state()
    assert [t["name"] for t in next(c for c in state["contacts"] if c["id"] == 7)["_embedded"]["tags"]] == ["lifecycle.new_active"]
    assert [t["name"] for t in next(x for x in state["leads"] if x["id"] == 9)["_embedded"]["tags"]] == ["vip"]
    assert acct.counters()["by_route"] == {"PATCH /api/v4/contacts": 1, "POST /api/v4/leads/tags": 1, "PATCH /api/v4/leads": 1}
    # Its reads call httpx.Client.get(url, json=None, ...), which httpx does not accept: the client fails
    # before sending anything, whatever the server (amocrm-api-wrapper 1.0.1 with httpx 0.28).
    with pytest.raises(TypeError):
        list(client.iter_contacts(limit=250))
    assert acct.counters()["http_requests"] == 3
    client.close()


def test_amocrm_api_wrapper_refreshes_an_expired_token_once(acct):
    stored = []
    info = acct.info
    status, tokens = acct.oauth(grant_type="authorization_code", code=acct.new_code())
    assert status == 200
    client = amocrm_api.AmoOAuthClient(access_token=tokens["access_token"], refresh_token=tokens["refresh_token"],
                                       crm_url=info["base_url"], client_id=info["client_id"],
                                       client_secret=info["client_secret"], redirect_uri=info["redirect_uri"],
                                       token_store=lambda access, refresh: stored.append((access, refresh)))
    acct.reset_counters()
    acct.expire_tokens(tokens["access_token"])
    answer = client.update_contacts([{"id": 3, "tags_to_add": [{"name": "refreshed"}]}])
    assert answer["_embedded"]["contacts"][0]["id"] == 3
    counters = acct.counters()
    assert counters["oauth_refreshes"] == 1 and counters["http_status"] == {"401": 1, "200": 2}
    assert counters["by_route"] == {"PATCH /api/v4/contacts": 2, "POST /oauth2/access_token": 1}
    assert stored and stored[0][1] != tokens["refresh_token"]
    # the rotated pair has been used (its access token was accepted): the old refresh token is gone
    assert acct.oauth(grant_type="refresh_token", refresh_token=tokens["refresh_token"])[0] == 401
    client.close()


def test_aioamocrm_pulls_within_the_rate_limit_and_adds_a_tag():
    async def run(info):
        auth = aioamocrm.LongLivedToken(info["access_token"])
        async with aioamocrm.AmoCRMClient(auth=auth, base_url=info["base_url"]) as amo:
            contacts = [c async for c in amo.contacts.iterate(limit=50)]
            leads = [lead async for lead in amo.leads.iterate(with_=["contacts"], limit=100)]
            refs = await amo.contacts.update([{"id": 5, "tags_to_add": [{"name": "birthday.soon"}]}])
            account = await amo.account.get()
            return contacts, leads, refs, account

    with running_account(generate=(120, 300), today=date(2026, 6, 1)) as limited:
        contacts, leads, refs, account = asyncio.run(run(limited.info))
        counters = limited.counters()
        assert len(contacts) == 120 and len(leads) == 300
        mains = [lead.embedded.contacts[0] for lead in leads if lead.embedded.contacts]
        assert mains and all(contact.is_main for contact in mains)
        assert all(lead.closed_at for lead in leads if lead.status_id == 142)
        assert refs[0].id == 5 and account.subdomain == limited.info["subdomain"]
        assert counters["too_many_requests"] == 0 and counters["http_status"].get("429") is None
        assert counters["by_route"]["GET /api/v4/contacts"] == 3 and counters["by_route"]["GET /api/v4/leads"] == 3
        tags = limited.state("contacts")["contacts"][4]["_embedded"]["tags"]
        assert [t["name"] for t in tags] == ["birthday.soon"]


def test_aioamocrm_reads_products_of_leads_catalogs_and_links():
    """Products (wave2-crm-apis.md §1.2): ``with=catalog_elements`` on leads, the links route, the lists."""

    async def run(info, lead_ids):
        auth = aioamocrm.LongLivedToken(info["access_token"])
        async with aioamocrm.AmoCRMClient(auth=auth, base_url=info["base_url"]) as amo:
            leads = [lead async for lead in amo.leads.iterate(with_=["catalog_elements"], limit=250)]
            links = {lid: await amo.leads.links(lid, filter={"to_catalog_id": 4521}) for lid in lead_ids}
            catalogs = await amo.request("GET", "catalogs")
            elements = await amo.request("GET", f"catalogs/{catalogs['_embedded']['catalogs'][0]['id']}/elements",
                                         params={"filter": {"id": [101, 109]}})
            bulk = await amo.request("GET", "leads/links", params={"filter": {"entity_id": lead_ids, "to_catalog_id": 4521}})
            return leads, links, catalogs, elements, bulk

    with running_account(generate=(80, 240), limits=False, today=date(2026, 6, 1)) as handle:
        state = handle.state("catalog_elements")["catalog_elements"]
        lead_ids = [int(k) for k in list(state)[:4]]
        leads, links, catalogs, elements, bulk = asyncio.run(run(handle.info, lead_ids))
    assert len(leads) == 240
    embedded = {lead.id: lead.embedded.catalog_elements for lead in leads if lead.embedded.catalog_elements}
    assert {str(k): v for k, v in embedded.items()} == state
    assert all(lead.status_id == 142 for lead in leads if lead.id in embedded)
    for lid in lead_ids:
        assert [(x.to_entity_type, x.to_entity_id, x.metadata["quantity"]) for x in links[lid]] == [
            ("catalog_elements", e["id"], e["metadata"]["quantity"]) for e in state[str(lid)]]
    assert [(c["type"], c["name"]) for c in catalogs["_embedded"]["catalogs"]] == [("products", "Товары")]
    assert [e["id"] for e in elements["_embedded"]["elements"]] == [101, 109]
    assert {(x["entity_id"], x["to_entity_id"]) for x in bulk["_embedded"]["links"]} == {
        (lid, e["id"]) for lid in lead_ids for e in state[str(lid)]}


# -- issue 19 item 6: behaviours where aioamocrm used to disagree with the sandbox ------------------

def test_aioamocrm_follows_every_lead_link_to_an_existing_contact(tmp_path):
    # A deal whose contact is not in the imported base: amoCRM never links a lead to a missing contact,
    # so every embedded main contact the client reads can be fetched (aioamocrm raises NotFoundError on 204).
    (tmp_path / "contacts.csv").write_text("id,name\n10,Анна\n11,Борис\n", encoding="utf-8")
    (tmp_path / "deals.csv").write_text(
        "id,contact_id,company_id,status,amount,currency,created_at,closed_at\n"
        "100,10,,won,100,RUB,2024-03-01,2024-03-02\n"
        "101,77,,open,10,RUB,2024-04-01,\n"
        "102,11,,open,10,RUB,2024-04-01,\n", encoding="utf-8")

    async def run(info):
        async with aioamocrm.AmoCRMClient(auth=aioamocrm.LongLivedToken(info["access_token"]),
                                          base_url=info["base_url"]) as amo:
            leads = [lead async for lead in amo.leads.iterate(with_=["contacts"])]
            mains = {lead.id: [c.id for c in lead.embedded.contacts if c.is_main] for lead in leads}
            fetched = [(await amo.contacts.get(cid)).id for ids in mains.values() for cid in ids]
            with pytest.raises(aioamocrm.NotFoundError):
                await amo.contacts.get(77)
            return mains, fetched

    with running_account(import_csv=tmp_path, limits=False) as imported:
        mains, fetched = asyncio.run(run(imported.info))
    assert mains == {100: [10], 101: [], 102: [11]}
    assert sorted(fetched) == [10, 11]


def test_aioamocrm_statuses_filter_is_a_stage_and_account_with_extras():
    async def run(info):
        async with aioamocrm.AmoCRMClient(auth=aioamocrm.LongLivedToken(info["access_token"]),
                                          base_url=info["base_url"]) as amo:
            created = await amo.leads.create([{"name": "won main", "pipeline_id": 7000001, "status_id": 142},
                                              {"name": "won repeat", "pipeline_id": 7000002, "status_id": 142}])
            repeat_won = [lead.id async for lead in amo.leads.iterate(
                filter={"statuses": [{"pipeline_id": 7000002, "status_id": 142}]})]
            main_won = [lead.id async for lead in amo.leads.iterate(
                filter={"statuses": [{"pipeline_id": 7000001, "status_id": 142}]})]
            account = await amo.account.get(with_=["amojo_rights", "entity_names"])
            return [ref.id for ref in created], repeat_won, main_won, account

    with running_account(generate=(5, 0), limits=False) as fresh:
        (won_main, won_repeat), repeat_won, main_won, account = asyncio.run(run(fresh.info))
    assert repeat_won == [won_repeat] and main_won == [won_main]
    assert set(account.embedded["amojo_rights"]) == {"can_direct", "can_create_groups"}
    names = account.model_extra["entity_names"]
    assert names["leads"]["en"]["singular_form"]["default"] == "lead"
