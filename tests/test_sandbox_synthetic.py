"""sandbox/synthetic.py and the sandboxes' --generate: a generated history never lies in the CRM's future.

Before noon (the history's nominal end on ``today``) a generated deal could be created or closed at noon,
later than the portal's clock: every incremental pull then read it again (``>=DATE_MODIFY`` / updated_at
filters), which made the pull bench fail from midnight to noon in Moscow. The sandboxes cap the history at
their clock minus a minute. ``today`` = tomorrow makes the whole nominal end lie in the future, at any hour."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sandbox.amocrm.testing import running_account
from sandbox.bitrix24.testing import running_portal
from sandbox.synthetic import generate

MSK = ZoneInfo("Europe/Moscow")


def _tomorrow() -> date:
    return datetime.now(MSK).date() + timedelta(days=1)


def test_not_after_caps_every_moment_and_without_it_the_history_reaches_noon_of_today():
    today = _tomorrow()
    noon = int(datetime(today.year, today.month, today.day, 12, tzinfo=MSK).timestamp())
    free_customers, free_deals = generate(300, 900, today=today, seed=3)
    assert int(free_deals["created_ts"].max()) > noon - 86_400  # open deals are created up to the end itself

    cap = noon - 2 * 86_400
    customers, deals = generate(300, 900, today=today, seed=3, not_after=cap)
    assert int(customers["created_ts"].max()) <= cap
    assert int(deals["created_ts"].max()) <= cap and int(deals["closed_ts"].max()) <= cap
    # the cap moves moments, it does not drop or reorder records
    assert deals["id"].to_list() == free_deals["id"].to_list() and deals["status"].to_list() == free_deals["status"].to_list()


def test_bitrix24_portal_holds_no_record_modified_after_its_clock():
    with running_portal(generate=(200, 600), today=_tomorrow(), limits=False) as portal:
        now = time.time()
        for method, fields in (("crm.deal.list", ["ID", "DATE_MODIFY", "DATE_CREATE"]),
                               ("crm.contact.list", ["ID", "DATE_MODIFY", "DATE_CREATE"])):
            status, answer = portal.call(method, {"order": {"DATE_MODIFY": "DESC"}, "select": fields})
            assert status == 200, answer
            latest = answer["result"][0]
            for key in ("DATE_MODIFY", "DATE_CREATE"):
                assert datetime.fromisoformat(latest[key]).timestamp() <= now - 59, (method, latest)


def test_amocrm_account_holds_no_record_updated_after_its_clock():
    with running_account(generate=(200, 600), today=_tomorrow(), limits=False) as account:
        now = time.time()
        for entity in ("leads", "contacts"):
            status, body = account.api("GET", f"/api/v4/{entity}", params={"order": {"updated_at": "desc"}, "limit": 1})
            assert status == 200, body
            latest = body["_embedded"][entity][0]
            assert latest["updated_at"] <= now - 59 and latest["created_at"] <= now - 59, latest
            if entity == "leads" and latest.get("closed_at"):
                assert latest["closed_at"] <= now - 59, latest
