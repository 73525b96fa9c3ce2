"""Issue 20, item 1: a write-back proportional to the day's moves. Which customers are planned
(:func:`connector.pipeline.writeback_candidates`), the weekly full reconciliation, a full pass after a
write-back that did not end cleanly, the set-based mirror update (SQLite here, PostgreSQL when the test
server runs), and batches in flight under the sandbox portal's limits with no refusal."""

from __future__ import annotations

import json

import polars as pl
import pytest

from adapters.base import Customer, PullResult
from connector.pipeline import (WRITEBACK_LABELS, WRITEBACK_PENDING, WRITEBACK_RECONCILED, _labels_key, open_store,
                                sync, writeback_candidates)
from connector.store import StateStore
from sandbox.bitrix24 import running_portal
from tests.test_bitrix24_adapter import assert_mirror_equals_portal, write_config
from connector.config import load_config

LABELS = {"status.current": "Current", "status.former": "Former"}
NOW = 1_800_000_000.0


def _diff(rows: list[tuple[str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"segment": pl.String, "customer_id": pl.Int64}, orient="row")


def test_candidates_are_the_moves_and_the_pulled_once_a_clean_full_pass_is_recorded(ws) -> None:
    config = ws.config('[writeback]\ntag_segments = ["status.*"]\n[labels]\n"status.current" = "Current"\n'
                       '"status.former" = "Former"\n')
    store = open_store(config)
    try:
        entered = _diff([("status.current", 1), ("lifecycle.new_active", 2)])  # lifecycle.* is not tagged
        left = _diff([("status.former", 3)])
        args = (config, store, LABELS, entered, left, {7})
        assert writeback_candidates(*args, now=NOW) is None  # never reconciled: a full pass
        clean = {WRITEBACK_LABELS: _labels_key(config, LABELS), WRITEBACK_RECONCILED: str(NOW), WRITEBACK_PENDING: ""}
        store.save_cursors(clean)
        assert writeback_candidates(*args, now=NOW + 3600) == {1, 3, 7}
        assert writeback_candidates(config, store, LABELS, entered, left, None, now=NOW) is None  # no diff given
        # [writeback] reconcile_days (default 7) after the last full pass: a full pass again
        assert writeback_candidates(*args, now=NOW + 7 * 86400) is None
        # labels changed (amoCRM tags are the labels): every member must be rewritten
        assert writeback_candidates(config, store, {**LABELS, "status.former": "Ex"}, entered, left, {7}, now=NOW) is None
        # a run whose membership is stored but whose write-back did not end cleanly: a full pass next time
        store.save_cursors({WRITEBACK_PENDING: "41"})
        assert writeback_candidates(*args, run_id=42, now=NOW) is None
        assert writeback_candidates(*args, run_id=41, now=NOW) == {1, 3, 7}  # its own mark does not count
    finally:
        store.close()


def test_reconcile_days_zero_means_every_sync_is_a_full_pass(ws) -> None:
    config = ws.config('[writeback]\ntag_segments = ["status.*"]\nreconcile_days = 0\n')
    store = open_store(config)
    try:
        store.save_cursors({WRITEBACK_LABELS: _labels_key(config, LABELS), WRITEBACK_RECONCILED: str(NOW)})
        assert writeback_candidates(config, store, LABELS, _diff([]), _diff([]), set(), now=NOW) is None
    finally:
        store.close()


def _mirror_store(url: str) -> StateStore:
    store = StateStore.open(url, "p")
    store.apply_pull(PullResult(customers=[
        Customer(id=1, entity="contact", fields={"UF_CRM_SOURCE": "ads", "UF_CRM_LIFECYCLE": '["1"]'}),
        Customer(id=2, entity="contact", fields={}),
        Customer(id=3, entity="contact", fields={"Город": "Москва"}),
        Customer(id=4, entity="company", fields={"UF_CRM_LIFECYCLE": '["9"]'}),
    ], deals=[], snapshot=True))
    return store


def _check_merge(store: StateStore) -> None:
    store.update_customer_fields("contact", {1: {"UF_CRM_LIFECYCLE": '["2", "3"]'}, 2: {"UF_CRM_LIFECYCLE": "[]"},
                                             3: {"UF_CRM_LIFECYCLE": '["5"]', "tags": '["Клиент"]'},
                                             4: {"UF_CRM_LIFECYCLE": '["7"]'}})  # 4 is a company, not a contact
    cards = store.customer_cards("contact", [1, 2, 3])
    assert cards[1]["fields"] == {"UF_CRM_SOURCE": "ads", "UF_CRM_LIFECYCLE": '["2", "3"]'}
    assert cards[2]["fields"] == {"UF_CRM_LIFECYCLE": "[]"}
    assert cards[3]["fields"] == {"Город": "Москва", "UF_CRM_LIFECYCLE": '["5"]', "tags": '["Клиент"]'}
    assert store.customer_cards("company", [4])[4]["fields"] == {"UF_CRM_LIFECYCLE": '["9"]'}


def test_mirror_update_is_one_merge_per_field_sqlite(tmp_path) -> None:
    store = _mirror_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        _check_merge(store)
        many = {i: {"UF_CRM_LIFECYCLE": json.dumps([str(i)])} for i in range(1, 4)}
        store.update_customer_fields("contact", many)
        assert store.customer_cards("contact", [3])[3]["fields"]["UF_CRM_LIFECYCLE"] == '["3"]'
    finally:
        store.close()


def test_mirror_update_is_one_merge_per_field_postgres(postgres_url) -> None:
    store = _mirror_store(postgres_url)
    try:
        _check_merge(store)
    finally:
        store.close()


@pytest.fixture
def limited_portal():
    # the documented bucket (50, drained at 2 a second), on a clock 50x faster than the wall
    with running_portal(generate=(600, 900), time_scale=50) as handle:
        yield handle


def test_batches_in_flight_keep_within_the_limits_without_a_refusal(tmp_path, limited_portal) -> None:
    path = write_config(tmp_path, limited_portal)
    path.write_text(path.read_text(encoding="utf-8").replace("requests_per_second = 500", "requests_per_second = 100")
                    .replace('tag_segments = ["lifecycle.*", "status.*"]',
                             'tag_segments = ["lifecycle.*", "status.*"]\nbatches_in_flight = 3'), encoding="utf-8")
    config = load_config(path)
    limited_portal.reset_counters()
    first = sync(config).summary()
    assert first["tags_updated"] == 600 and first["tags_failed"] == 0
    statuses = limited_portal.counters()["http_status"]
    assert set(statuses) == {"200"} or set(map(str, statuses)) == {"200"}, statuses  # no 503, no 429
    assert_mirror_equals_portal(config, limited_portal)
