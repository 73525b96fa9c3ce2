"""Issue 20, item 2 (Bitrix24): the pull after a write-back does not read back the contacts the connector
itself just wrote, while a change by anyone else is still seen, including one made between our pull and
our write (the race). Over HTTP against the sandbox portal, which stamps MODIFY_BY_ID with the user of the
webhook that wrote, as Bitrix24 does."""

from __future__ import annotations

import json

import pytest

from adapters.bitrix24.source import Bitrix24Source, customer_filters
from connector.config import load_config
from connector.kits import adapter_settings
from connector.pipeline import open_store, sync
from sandbox.bitrix24 import running_portal
from tests.conftest import mirror
from tests.test_bitrix24_adapter import next_second, write_config

OTHER_USER = 7


@pytest.fixture
def portal():
    with running_portal(generate=(240, 720), time_scale=50) as handle:
        yield handle


def _cursors(config) -> dict[str, str]:
    store = open_store(config)
    try:
        return store.cursors()
    finally:
        store.close()


def _spread(tmp_path, portal):
    """A config and a source for a first sync whose write-back spans two seconds of DATE_MODIFY: batches go
    one at a time, and the sandbox holds the answer to the first one for 1.2 s (``slow_after``: the batch's
    writes are stored at once), so its 49 contacts are stamped a second before the others. Deletions are
    looked for daily (no id listing in between)."""
    path = write_config(tmp_path, portal, extra="")
    text = path.read_text(encoding="utf-8").replace("reconcile_hours = 0", "reconcile_hours = 24")
    text = text.replace('tag_segments = ["lifecycle.*", "status.*"]',
                        'tag_segments = ["lifecycle.*", "status.*"]\nbatches_in_flight = 1')
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    store = open_store(config)
    source = Bitrix24Source(adapter_settings(config), store)

    class Spread:
        def pull(self):
            result = source.pull()
            portal.faults(kind="slow_after", method="batch", count=1, delay=1.2)
            return result

    return config, store, Spread()


def test_sandbox_stamps_modify_by_id_with_the_writing_user(portal):
    """Fidelity: crm.contact.update records the webhook's user in MODIFY_BY_ID (crm-contact-fields: MODIFY_BY_ID
    "who changed it"), and another user's webhook records that user."""
    other = portal.add_webhook(["crm"], user_id=OTHER_USER)
    assert f"/rest/{OTHER_USER}/" in other
    portal.call("crm.contact.update", {"id": 3, "fields": {"NAME": "By admin"}})
    status, body = portal.call("crm.contact.update", {"id": 4, "fields": {"NAME": "By other"}}, base=other)
    assert status == 200 and body["result"] is True
    rows = {int(c["ID"]): c for c in portal.state()["contacts"]}
    assert str(rows[3]["MODIFY_BY_ID"]) == "1" and str(rows[4]["MODIFY_BY_ID"]) == str(OTHER_USER)
    _, listed = portal.call("crm.contact.list", {"filter": {"!MODIFY_BY_ID": 1, "@ID": [3, 4]}, "select": ["ID"]})
    assert [r["ID"] for r in listed["result"]] == ["4"]


def test_the_pull_after_a_write_back_skips_our_writes_and_sees_everyone_elses(tmp_path, portal):
    config, store, source = _spread(tmp_path, portal)
    try:
        first = sync(config, source=source).summary()
    finally:
        store.close()
    written = first["tags_updated"]
    assert written == 240
    own = json.loads(_cursors(config)["own_writes"])
    assert own["user"] == 1 and own["from"] <= own["until"]
    contacts = portal.state()["contacts"]
    assert all(str(c["MODIFY_BY_ID"]) == "1" for c in contacts)  # our write stamped every contact
    next_second()

    portal.reset_counters()
    second = sync(config).summary()  # nobody touched the portal
    # Only our writes of the window's last second are read again (DATE_MODIFY has one-second resolution):
    # not the 49 of the first batch; before this change every written contact was (240 here).
    assert second["customers_upserted"] <= written - 49
    assert second["pull_requests"] <= 4 and second["writeback_requests"] == 0
    assert second["writeback_planned"] == "changes"
    assert _cursors(config)["own_writes"] == ""  # used once
    next_second()

    other = portal.add_webhook(["crm"], user_id=OTHER_USER)
    portal.call("crm.contact.update", {"id": 5, "fields": {"NAME": "Edited elsewhere"}}, base=other)
    portal.call("crm.contact.update", {"id": 6, "fields": {"NAME": "Edited by the admin"}})  # the connector's user
    third = sync(config).summary()
    customers, _ = mirror(config)
    assert customers[5]["name"] == "Edited elsewhere" and customers[6]["name"] == "Edited by the admin"
    assert third["customers_upserted"] == 2


def test_a_change_by_someone_else_between_our_pull_and_our_write_is_read_next_time(tmp_path, portal):
    """The race: another user edits a contact after our pull listed it and before our write-back writes it.
    Our write then stamps MODIFY_BY_ID and DATE_MODIFY with our user and time, hiding the edit from the
    filters; the in-batch check sees it and the next pull reads the contact again."""
    config = load_config(write_config(tmp_path, portal))
    other = portal.add_webhook(["crm"], user_id=OTHER_USER)
    store = open_store(config)
    source = Bitrix24Source(adapter_settings(config), store)

    class RacingSource:
        def pull(self):
            result = source.pull()
            status, _ = portal.call("crm.contact.update", {"id": 9, "fields": {"NAME": "Raced"}}, base=other)
            assert status == 200
            return result

    try:
        first = sync(config, source=RacingSource())
    finally:
        store.close()
    assert first.summary()["tags_updated"] == 240  # contact 9 was written after the edit...
    row = next(c for c in portal.state()["contacts"] if int(c["ID"]) == 9)
    assert row["NAME"] == "Raced" and str(row["MODIFY_BY_ID"]) == "1"  # ...which our write now hides
    assert mirror(config)[0][9]["name"] != "Raced"
    assert 9 in json.loads(_cursors(config)["reread_ids"])
    next_second()
    sync(config)
    assert mirror(config)[0][9]["name"] == "Raced"
    assert _cursors(config)["reread_ids"] == "[]"


def test_customer_filters_split_only_while_the_window_reaches_into_the_pull() -> None:
    since = {">=DATE_MODIFY": "2026-01-01T10:00:00+03:00"}
    window = json.dumps({"user": 1, "from": "2026-01-01T10:05:00+03:00", "until": "2026-01-01T10:07:00+03:00"})
    split = customer_filters(since, {"own_writes": window})
    assert split == [
        {">=DATE_MODIFY": "2026-01-01T10:00:00+03:00", "!MODIFY_BY_ID": 1},
        {">=DATE_MODIFY": "2026-01-01T10:07:00+03:00", "MODIFY_BY_ID": 1},
        {">=DATE_MODIFY": "2026-01-01T10:00:00+03:00", "MODIFY_BY_ID": 1, "<=DATE_MODIFY": "2026-01-01T10:05:00+03:00"},
    ]
    old = json.dumps({"user": 1, "from": "2026-01-01T09:00:00+03:00", "until": "2026-01-01T09:30:00+03:00"})
    assert customer_filters(since, {"own_writes": old}) == [since]
    assert customer_filters({}, {"own_writes": window}) == [{}]  # a full pull reads everything
    assert customer_filters(since, {"reread_ids": "[5, 3]"}) == [since, {"@ID": [3, 5]}]
