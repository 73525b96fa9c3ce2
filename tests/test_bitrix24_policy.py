"""Bitrix24's call loop against the sandbox portal over loopback: the READ and WRITE policies, one limiter.

The client's sleep is injected, so no test waits for a back-off."""

from __future__ import annotations

import asyncio

import pytest

from adapters.bitrix24.client import Bitrix24Client, BitrixError
from sandbox.bitrix24.testing import running_portal

LIST = ("crm.contact.list", {"select": ["ID"], "start": -1})


@pytest.fixture(scope="module")
def portal():
    with running_portal(generate=(5, 5), limits=False) as p:
        yield p


def run(portal, body, **fault):
    """Warm up (one answered read), inject ``fault`` if any, count from zero, then run ``body(client)``."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main():
        async with Bitrix24Client(portal.webhook_url, ca_file=portal.ca_file, sleep=sleep) as client:
            await client.call(*LIST)  # the portal has answered: later connection errors are not "unreachable"
            if fault:
                portal.faults(method="crm.contact.list", **fault)
            client.requests = 0
            outcome = await body(client)
            return client, outcome

    client, outcome = asyncio.run(main())
    return client, outcome, slept


def test_a_read_answered_500_is_retried_after_a_back_off(portal):
    client, answer, slept = run(portal, lambda c: c.call(*LIST), kind="status", status=500, count=1)
    assert answer["result"] and client.requests == 2 and len(slept) == 1 and 0 < slept[0] <= 0.25


def test_a_write_answered_500_is_not_resent_and_its_outcome_is_unknown(portal):

    async def body(client):
        with pytest.raises(BitrixError, match="server error 500.*outcome unknown"):
            await client.call_once(*LIST)

    client, _, slept = run(portal, body, kind="status", status=500, count=1)
    assert client.requests == 1 and slept == []


def test_a_write_refused_with_query_limit_exceeded_is_sent_again(portal):
    client, answer, slept = run(portal, lambda c: c.call_once(*LIST), kind="status", status=503, count=2)
    assert answer["result"] and client.requests == 3 and len(slept) == 2


def test_a_write_whose_connection_dropped_is_not_resent(portal):

    async def body(client):
        with pytest.raises(BitrixError, match="outcome unknown"):
            await client.call_once(*LIST)

    client, _, _ = run(portal, body, kind="reset", count=1)
    assert client.requests == 1


def test_a_read_whose_connection_dropped_is_retried(portal):
    client, answer, slept = run(portal, lambda c: c.call(*LIST), kind="reset", count=1)
    assert answer["result"] and client.requests == 2 and len(slept) == 1


def test_writes_pass_the_same_limiter_as_reads(portal):
    async def body(client):
        bucket = client._bitrix.srh.leaky_bucket_throttler._request_history  # fast-bitrix24's bucket of this portal
        before = len(bucket)
        await client.call_once(*LIST)
        after_write = len(bucket)
        await client.call(*LIST)
        return before, after_write, len(bucket)

    _, (before, after_write, after_read), _ = run(portal, body)
    assert (after_write - before, after_read - after_write) == (1, 1)
