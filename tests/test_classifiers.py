"""The error tables: what each answer means, and which policy tries it again (no network)."""

from __future__ import annotations

import pytest

from adapters.amocrm import client as amo
from adapters.ads import cabinets as ads
from adapters.bitrix24 import client as b24
from adapters.retry import Backoff, Outcome


@pytest.mark.parametrize(("status", "code", "outcome", "nothing_ran"), [
    (503, "QUERY_LIMIT_EXCEEDED", Outcome.RATE_LIMITED, True),
    (429, "OPERATION_TIME_LIMIT", Outcome.RATE_LIMITED, True),
    (401, "expired_token", Outcome.REFRESH_AUTH, True),
    (401, "invalid_token", Outcome.REFRESH_AUTH, True),
    (401, "NO_AUTH_FOUND", Outcome.FAIL, False),
    (403, "insufficient_scope", Outcome.FAIL, False),
    (403, "ACCESS_DENIED", Outcome.FAIL, False),
    (400, "ERROR_CORE", Outcome.FAIL, False),
    (500, "INTERNAL_SERVER_ERROR", Outcome.RETRY, False),
    (502, "", Outcome.RETRY, False),
])
def test_bitrix24_table_reads_status_and_body_code(status, code, outcome, nothing_ran):
    decision = b24.classify(status, {"error": code, "error_description": "whatever"})
    assert (decision.outcome, decision.nothing_ran) == (outcome, nothing_ran)


def test_bitrix24_codes_match_whatever_their_case():
    assert b24.classify(503, {"error": "query_limit_exceeded"}).outcome is Outcome.RATE_LIMITED
    assert b24.classify(401, "EXPIRED_TOKEN").outcome is Outcome.REFRESH_AUTH


def test_bitrix24_a_503_without_its_code_is_a_plain_server_error():
    decision = b24.classify(503, {"error": "", "error_description": "Service Unavailable"})
    assert decision.outcome is Outcome.RETRY and not decision.nothing_ran


def test_bitrix24_messages_are_written_for_the_operator():
    assert "give it crm, task and user" in b24.classify(403, {"error": "insufficient_scope"}).message
    assert "check webhook_url" in b24.classify(401, {"error": "NO_AUTH_FOUND"}).message
    assert b24.classify(418, {"error": "TEAPOT"}).message == "HTTP 418 TEAPOT"


def test_bitrix24_https_required_names_the_host_and_the_mix_up():
    decision = b24.classify(400, {"error": "", "error_description": "Https required."}, where="shop.bitrix24.ru:80")
    assert decision.outcome is Outcome.FAIL
    assert decision.message.startswith("shop.bitrix24.ru:80 speaks https, not http (an http/https mix-up)")


@pytest.mark.parametrize(("status", "code"), [(503, "QUERY_LIMIT_EXCEEDED"), (429, "OPERATION_TIME_LIMIT"), (401, "expired_token")])
def test_bitrix24_writes_retry_only_answers_that_prove_nothing_ran(status, code):
    decision = b24.classify(status, {"error": code})
    assert b24.WRITE.retries(decision, 1)
    assert b24.READ.retries(decision, 1)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_bitrix24_a_5xx_is_retried_for_reads_but_never_resent_for_writes(status):
    decision = b24.classify(status, {"error": "INTERNAL_SERVER_ERROR"})
    assert b24.READ.retries(decision, 1)
    assert not b24.WRITE.retries(decision, 1)


def test_bitrix24_transport_errors_are_retried_for_reads_only():
    assert b24.READ.retries_transport(1) and not b24.READ.retries_transport(10)
    assert not b24.WRITE.retries_transport(1)


def test_an_expired_token_is_refreshed_once():
    decision = b24.classify(401, {"error": "expired_token"})
    assert b24.READ.retries(decision, 1) and not b24.READ.retries(decision, 2)
    assert amo.READ.retries(amo.classify(401), 1) and not amo.READ.retries(amo.classify(401), 2)


def test_bitrix24_a_refusal_is_never_retried():
    for code in ("NO_AUTH_FOUND", "ACCESS_DENIED"):
        decision = b24.classify(401 if code == "NO_AUTH_FOUND" else 403, {"error": code})
        assert not b24.READ.retries(decision, 1) and not b24.WRITE.retries(decision, 1)


@pytest.mark.parametrize(("status", "outcome"), [
    (401, Outcome.REFRESH_AUTH), (402, Outcome.FAIL), (403, Outcome.STOP), (429, Outcome.RATE_LIMITED),
    (500, Outcome.RETRY), (502, Outcome.RETRY), (504, Outcome.RETRY), (400, Outcome.FAIL), (422, Outcome.FAIL),
])
def test_amocrm_table(status, outcome):
    assert amo.classify(status, {"title": "x"}).outcome is outcome


def test_amocrm_429_hint_is_the_bodys_retry_after_clamped():
    assert amo.classify(429, {"retry_after": 3}).hint == 3.0
    assert amo.classify(429, {"retry_after": "2.5"}).hint == 2.5
    assert amo.classify(429, {}).hint == 1.0  # none given: one second
    assert amo.classify(429, {"retry_after": "soon"}).hint == 1.0
    assert amo.classify(429, {"retry_after": 0}).hint == 0.05
    assert amo.classify(429, {"retry_after": 10_000}).hint == 900.0


def test_amocrm_429s_in_a_row_stop_before_the_account_is_blocked():
    decision = amo.classify(429, {"retry_after": 1})
    assert all(amo.READ.retries(decision, n) for n in range(1, amo.MAX_429 + 1))
    assert not amo.READ.retries(decision, amo.MAX_429 + 1)
    assert amo.WRITE.retries(decision, 1)  # a 429 proves the write did not run


def test_amocrm_403_stops_and_says_why():
    decision = amo.classify(403, {"title": "Forbidden"})
    assert decision.outcome is Outcome.STOP and "blocked" in decision.message
    assert not amo.READ.retries(decision, 1)


def test_amocrm_a_5xx_is_retried_for_reads_only():
    decision = amo.classify(500)
    assert amo.READ.retries(decision, 4) and not amo.READ.retries(decision, 5)
    assert not amo.WRITE.retries(decision, 1)


def test_amocrm_402_says_to_renew_the_subscription():
    error = amo.AmoHTTPError("GET", "/api/v4/leads", 402, {"title": "Payment Required"}, amo.classify(402).message)
    assert str(error) == ("amoCRM answered HTTP 402 to GET /api/v4/leads: Payment Required; "
                          "the amoCRM account is not paid (402): renew the subscription")


@pytest.mark.parametrize(("status", "read", "write"), [(500, True, False), (503, True, False), (429, False, False),
                                                       (400, False, False), (401, False, False)])
def test_ads_cabinets_retry_server_errors_for_reads_only(status, read, write):
    decision = ads.decide(ads.RULES, status)
    assert ads.READ.retries(decision, 1) is read
    assert ads.WRITE.retries(decision, 1) is write
    assert ads.READ.retries_transport(1) and not ads.WRITE.retries_transport(1)


def test_backoff_honours_the_servers_hint_first():
    backoff = Backoff(base=0.5, cap=30.0, jitter=0.25, hint_cap=900.0)
    assert backoff.delay(7, hint=2.5, rand=lambda: 0.9) == 2.5
    assert backoff.delay(0, hint=5000, rand=lambda: 0.9) == 900.0


def test_backoff_grows_exponentially_up_to_its_cap_with_jitter_taken_off():
    backoff = Backoff(base=0.5, cap=30.0, jitter=0.25)
    assert [backoff.delay(n, rand=lambda: 0.0) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(3, rand=lambda: 1.0) == 3.0  # 4 s less a quarter
    assert 3.0 <= backoff.delay(3) <= 4.0


def test_bitrix24_a_batch_commands_error_is_read_by_the_same_table():
    assert b24.classify_command({"error": "OPERATION_TIME_LIMIT", "error_description": "closed"}).outcome is Outcome.RATE_LIMITED
    assert b24.classify_command({"error": "ACCESS_DENIED"}).outcome is Outcome.FAIL
    assert b24.classify_command({"error": "ERROR_CORE"}).outcome is Outcome.FAIL
    assert b24.classify_command("not a dict").outcome is Outcome.FAIL
