"""Issue 20, item 2 (amoCRM): the pull after a tag write-back does not read back the contacts the connector
itself just wrote, while a change by anyone else is still seen, including one made between our pull and
our write (the race). Over HTTP against the sandbox account, which stamps ``updated_by`` and the events'
``created_by`` with the user whose token made the request, as amoCRM does."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from adapters.amocrm.source import AmoSource, customer_filters, own_window
from connector.config import load_config
from connector.kits import adapter_settings
from connector.pipeline import open_store, sync
from sandbox.amocrm import running_account
from tests.conftest import mirror
from tests.test_amocrm_adapter import next_second, write_config
from tests.test_bitrix24_own_writes import _cursors

OTHER_USER = 7


@pytest.fixture
def acct():
    with running_account(generate=(200, 600)) as handle:
        yield handle


def _contact(acct, cid: int) -> dict:
    return next(c for c in acct.state("contacts")["contacts"] if int(c["id"]) == cid)


def test_sandbox_acts_as_the_user_whose_token_it_is():
    """Fidelity: a write stamps ``updated_by`` with the token's user, the events it leaves carry that user in
    ``created_by`` (a name change: ``name_field_changed``; a field: ``custom_field_{ID}_value_changed``),
    ``current_user_id`` names them, and ``filter[updated_by][]`` takes several users."""
    with running_account(generate=(20, 40), limits=False) as acct:
        _users_and_events(acct)


def _users_and_events(acct) -> None:
    other = acct.user_token(OTHER_USER)
    assert acct.api("GET", "/api/v4/account", token=other)[1]["current_user_id"] == OTHER_USER
    assert acct.api("GET", "/api/v4/account")[1]["current_user_id"] == acct.info["user_id"] == 1
    assert acct.api("PATCH", "/api/v4/contacts/4", json={"name": "By other"}, token=other)[0] == 200
    assert acct.api("PATCH", "/api/v4/contacts/3", json={"name": "By admin"})[0] == 200
    assert _contact(acct, 4)["updated_by"] == OTHER_USER and _contact(acct, 3)["updated_by"] == 1
    status, listed = acct.api("GET", "/api/v4/contacts", params={"filter": {"updated_by": [OTHER_USER, 0], "id": [3, 4]}})
    assert status == 200 and [c["id"] for c in listed["_embedded"]["contacts"]] == [4]
    _, listed = acct.api("GET", "/api/v4/contacts", params={"filter": {"updated_by": [1, OTHER_USER], "id": [3, 4]}})
    assert [c["id"] for c in listed["_embedded"]["contacts"]] == [3, 4]
    phone = next(f for f in acct.state()["custom_fields"]["contacts"] if f.get("code") == "PHONE")
    assert acct.api("PATCH", "/api/v4/contacts/4", token=other, json={"custom_fields_values": [
        {"field_id": phone["id"], "values": [{"value": "+79990001122", "enum_code": "WORK"}]}]})[0] == 200
    _, events = acct.api("GET", "/api/v4/events", params={"filter": {"created_by": [OTHER_USER], "entity": "contact"}})
    mine = [(e["type"], e["entity_id"], e["created_by"]) for e in events["_embedded"]["events"]]
    assert mine == [(f"custom_field_{phone['id']}_value_changed", 4, OTHER_USER), ("name_field_changed", 4, OTHER_USER)]
    users = acct.api("GET", "/api/v4/users")[1]["_embedded"]["users"]
    assert OTHER_USER in [u["id"] for u in users]
    with pytest.raises(RuntimeError, match="answered 400"):
        acct.control("POST", "oauth/long_lived", {"user_id": "seven"})


def test_a_third_party_client_sees_the_other_users_writes():
    """Fidelity with aioamocrm (nobody here wrote it): with another user's long-lived token its writes are that
    user's, and its reads filter by ``updated_by`` and by the events' ``created_by``."""
    aioamocrm = pytest.importorskip("aioamocrm")

    async def run(info, other):
        async with aioamocrm.AmoCRMClient(auth=aioamocrm.LongLivedToken(other), base_url=info["base_url"]) as amo:
            refs = await amo.contacts.update([{"id": 11, "name": "Edited by 7"}])
            me = await amo.request("GET", "account")
        async with aioamocrm.AmoCRMClient(auth=aioamocrm.LongLivedToken(info["access_token"]), base_url=info["base_url"]) as amo:
            by_other = await amo.request("GET", "contacts", params={"filter": {"updated_by": [OTHER_USER]}})
            events = await amo.request("GET", "events", params={"filter": {"created_by": [OTHER_USER], "entity": "contact"}})
        return refs, me, by_other, events

    with running_account(generate=(40, 80), limits=False) as handle:
        refs, me, by_other, events = asyncio.run(run(handle.info, handle.user_token(OTHER_USER)))
    assert refs[0].id == 11 and me["current_user_id"] == OTHER_USER
    assert [c["id"] for c in by_other["_embedded"]["contacts"]] == [11]
    assert [(e["type"], e["entity_id"]) for e in events["_embedded"]["events"]] == [("name_field_changed", 11)]


def test_the_pull_after_a_write_back_skips_our_writes_and_sees_everyone_elses(tmp_path, acct):
    config = load_config(write_config(tmp_path, acct))
    # the first PATCH is held 1.2 s before it runs while the others (in flight with it) run at once: the
    # write-back's writes span two seconds, and the PATCH sent first is answered last
    store = open_store(config)
    source = AmoSource(adapter_settings(config), store)

    class Spread:
        def pull(self, progress=None):
            result = source.pull(progress)
            acct.faults(kind="slow", path="/api/v4/contacts", method="PATCH", count=1, delay=1.2)
            return result

    try:
        first = sync(config, source=Spread()).summary()
    finally:
        store.close()
    written = first["tags_updated"]
    assert written == 200
    own = json.loads(_cursors(config)["own_writes"])
    stamps = sorted(c["updated_at"] for c in acct.state("contacts")["contacts"])
    assert own["user"] == 1 and own["from"] <= stamps[0] < stamps[-1] <= own["until"]
    cursor = int(_cursors(config)["updated_since"])  # the first pull's start
    next_second()

    acct.reset_counters()
    second = sync(config).summary()  # nobody touched the account
    # none of our 200 writes is read back (before this change all were: one more page per 250 written)
    assert second["customers_upserted"] == 0
    routes = acct.counters()["by_route"]
    # everyone else since the cursor, our user after the window, our user before it (unless the window began
    # in the cursor's second): empty lists
    before = 1 if own["from"] > cursor else 0
    assert routes["GET /api/v4/contacts"] == 2 + before and routes["GET /api/v4/users"] == 1
    assert routes["GET /api/v4/events"] == 2  # deletions, and the other users' events (the race)
    assert second["pull_requests"] == 7 + before and second["writeback_requests"] == 0
    assert _cursors(config)["own_writes"] == ""  # used once
    next_second()

    other = acct.user_token(OTHER_USER)
    assert acct.api("PATCH", "/api/v4/contacts/5", json={"name": "Edited elsewhere"}, token=other)[0] == 200
    assert acct.api("PATCH", "/api/v4/contacts/6", json={"name": "Edited by the admin"})[0] == 200  # our user
    third = sync(config).summary()
    customers, _ = mirror(config)
    assert customers[5]["name"] == "Edited elsewhere" and customers[6]["name"] == "Edited by the admin"
    assert third["customers_upserted"] == 2


def test_a_change_by_someone_else_between_our_pull_and_our_write_is_read_next_time(tmp_path, acct):
    """The race: another user renames contacts after our pull listed them and before our write-back writes
    them. Our write then stamps ``updated_by`` and ``updated_at`` with our user and time, hiding the edit
    from the list filters; the events feed names it and the next pull reads the contact again."""
    config = load_config(write_config(tmp_path, acct))
    other = acct.user_token(OTHER_USER)
    raced = list(range(1, 31))
    store = open_store(config)
    source = AmoSource(adapter_settings(config), store)

    class RacingSource:
        def pull(self, progress=None):
            result = source.pull(progress)
            edits = [{"id": cid, "name": f"Raced {cid}"} for cid in raced]
            for _ in range(50):  # the account's 7 requests a second are shared with our pull: wait for a slot
                status, _ = acct.api("PATCH", "/api/v4/contacts", json=edits, token=other)
                if status != 429:
                    break
                time.sleep(0.2)
            assert status == 200
            return result

    try:
        first = sync(config, source=RacingSource()).summary()
    finally:
        store.close()
    assert first["tags_updated"] > 0
    hidden = [cid for cid in raced if _contact(acct, cid)["updated_by"] == 1]
    assert hidden, "some raced contact was written after the edit, which our write now hides"
    assert all(_contact(acct, cid)["name"] == f"Raced {cid}" for cid in hidden)
    assert all(not mirror(config)[0][cid]["name"].startswith("Raced") for cid in raced)
    next_second()
    acct.reset_counters()
    second = sync(config).summary()
    customers = mirror(config)[0]
    assert all(customers[cid]["name"] == f"Raced {cid}" for cid in raced)
    assert second["customers_upserted"] <= first["tags_updated"]  # the split lists still held
    assert acct.counters()["by_route"]["GET /api/v4/events"] >= 2  # deletions + the other users' events


def test_customer_filters_split_only_while_the_window_reaches_into_the_pull() -> None:
    since = {"order[id]": "asc", "filter[updated_at][from]": 1000}
    cursors = {"own_writes": json.dumps({"user": 1, "from": 1300, "until": 1420})}
    own = own_window(cursors, 1000)
    assert own == {"user": 1, "from": 1300, "until": 1420}
    assert customer_filters(since, own, [0, 5, 7]) == [
        {**since, "filter[updated_by][]": [0, 5, 7]},
        {**since, "filter[updated_by][]": [1], "filter[updated_at][from]": 1421},
        {**since, "filter[updated_by][]": [1], "filter[updated_at][to]": 1299},
    ]
    many = customer_filters(since, own, list(range(2, 120)))
    assert [len(f["filter[updated_by][]"]) for f in many] == [50, 50, 18, 1, 1]
    assert own_window(cursors, 1500) is None  # the window ended before this pull's start: nothing to leave out
    assert own_window(cursors, None) is None  # a full pull reads everything
    assert own_window({"own_writes": ""}, 1000) is None and own_window({"own_writes": "{bad"}, 1000) is None
    later = own_window(cursors, 1350)
    assert customer_filters({**since, "filter[updated_at][from]": 1350}, later, [0])[1:] == [
        {**since, "filter[updated_at][from]": 1421, "filter[updated_by][]": [1]}]
