"""amoCRM's call loop against the sandbox account over loopback: READ retries a 5xx after a back-off,
a non-idempotent write is never resent after one, 403 stops at once. The client's sleep is injected."""

from __future__ import annotations

import pytest

from adapters.amocrm.client import AmoClient, AmoError, AmoHTTPError, AmoStopped, StaticToken
from sandbox.amocrm.testing import running_account


@pytest.fixture(scope="module")
def acct():
    with running_account(generate=(3, 3)) as a:
        yield a


def client(acct, slept: list[float]) -> AmoClient:
    return AmoClient(acct.base_url, StaticToken(acct.access_token), ca_file=acct.info.get("ca_file"),
                     sleep=slept.append, random=lambda: 0.0)


def test_a_read_answered_500_is_retried_after_a_back_off(acct):
    slept: list[float] = []
    with client(acct, slept) as amo:
        amo.get("/api/v4/account")
        acct.faults(kind="status", status=500, path="/api/v4/contacts", count=2)
        body = amo.get("/api/v4/contacts", {"limit": 5})
    assert body["_embedded"]["contacts"] and amo.requests == 4 and slept == [0.5, 1.0]


def test_a_non_idempotent_write_answered_500_is_not_resent(acct):
    slept: list[float] = []
    with client(acct, slept) as amo:
        amo.get("/api/v4/account")
        acct.faults(kind="status", status=500, path="/api/v4/tasks", count=1)
        with pytest.raises(AmoHTTPError, match="HTTP 500 to POST /api/v4/tasks"):
            amo.post("/api/v4/tasks", [{"text": "call", "complete_till": 2_000_000_000}])
    assert amo.requests == 2 and slept == []


def test_403_stops_at_once_and_says_why(acct):
    slept: list[float] = []
    with client(acct, slept) as amo:
        amo.get("/api/v4/account")
        acct.faults(kind="status", status=403, path="/api/v4/contacts", count=1)
        with pytest.raises(AmoError, match="blocked"):
            amo.get("/api/v4/contacts")
    assert amo.requests == 2 and slept == []


def test_after_a_403_the_client_sends_nothing_more(acct):
    slept: list[float] = []
    with client(acct, slept) as amo:
        acct.faults(kind="status", status=403, path="/api/v4/leads", count=1)
        with pytest.raises(AmoStopped, match="blocked"):
            amo.get("/api/v4/leads")
        sent = amo.requests
        for call in (lambda: amo.get("/api/v4/account"), lambda: amo.patch("/api/v4/contacts", [{"id": 1}])):
            with pytest.raises(AmoStopped, match=r"not sent: .* because amoCRM answered 403"):
                call()
    assert sent == 1 and amo.requests == 1 and slept == []
    acct.clear_faults()
