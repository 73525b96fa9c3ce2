"""Issue 20, item 1 (amoCRM): the tag write-back keeps up to ``[writeback] batches_in_flight`` PATCHes in
flight, all through the account's one rate limiter. Over HTTP against the sandbox account with its limit on
(7 requests in any account second, 429 above it; the clock 20 times faster, the client's rate likewise):
no 429, every card written by exactly one PATCH, the own-writes window covering every write, and a card
that spoils its batch failing alone while the other PATCHes go on."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from pathlib import Path

import pytest

from adapters.amocrm.client import AmoClient
from adapters.amocrm.source import AmoSource
from connector.config import load_config
from connector.kits import adapter_settings
from connector.pipeline import open_store, sync
from sandbox.amocrm import running_account
from tests.test_amocrm_adapter import assert_mirror_equals_account, card_tags, managed, wanted_tags, write_config
from tests.test_bitrix24_own_writes import _cursors

SCALE = 20


def _config(tmp_path: Path, acct, in_flight: int):
    """The adapter tests' configuration, at the sandbox's time scale and with ``batches_in_flight``."""
    path = write_config(tmp_path, acct, crm_extra=f"requests_per_second = {7 * SCALE}")
    segments = 'tag_segments = ["lifecycle.*", "status.*"]'
    text = path.read_text(encoding="utf-8")
    assert segments in text
    path.write_text(text.replace(segments, f"{segments}\nbatches_in_flight = {in_flight}"), encoding="utf-8")
    config = load_config(path)
    assert adapter_settings(config).writeback_batches_in_flight == in_flight  # [writeback] reaches the adapter
    return config


def _tag_events(acct) -> Counter:
    """entity_tag_added events per contact (the sandbox writes one for each PATCH that adds a tag)."""
    return Counter(int(e["entity_id"]) for e in acct.state()["events"]
                   if e["type"] == "entity_tag_added" and e["entity_type"] == "contact")


@pytest.mark.parametrize("in_flight", [3, 10])
def test_patches_in_flight_stay_under_the_limit_and_write_every_card_once(tmp_path, monkeypatch, in_flight):
    """3 (the default) and 10 (the configurable maximum, more than the limiter's 7 slots) PATCHes at once."""
    together = min(in_flight, 7)
    barrier = threading.Barrier(together, timeout=30)  # breaks (and the run fails) unless that many PATCH at once
    first_wave = iter(range(together))
    lock = threading.Lock()
    patch = AmoClient.patch

    def patch_together(self, path, body, **kwargs):
        with lock:
            waits = next(first_wave, None) is not None
        if waits:
            barrier.wait()
        return patch(self, path, body, **kwargs)

    monkeypatch.setattr(AmoClient, "patch", patch_together)
    with running_account(generate=(1500, 600), time_scale=SCALE) as acct:
        config = _config(tmp_path, acct, in_flight)
        acct.reset_counters()
        summary = sync(config).summary()
        counters = acct.counters()
        assert counters["http_status"].get("429", 0) == 0 and counters["too_many_requests"] == 0
        assert not counters["blocked"]
        written = summary["tags_updated"]
        assert written == len(wanted_tags(config)) > 7 * 50 and summary["tags_failed"] == 0
        # every card by exactly one bulk PATCH: none resent, none split
        assert counters["by_route"]["PATCH /api/v4/contacts"] == math.ceil(written / 50)
        assert not [r for r in counters["by_route"] if r.startswith("PATCH /api/v4/contacts/")]
        events = _tag_events(acct)
        assert len(events) == written and set(events.values()) == {1}
        state = assert_mirror_equals_account(config, acct)
        own = json.loads(_cursors(config)["own_writes"])
        stamps = [int(c["updated_at"]) for c in state["contacts"] if int(c["id"]) in events]
        assert own["from"] <= min(stamps) and max(stamps) <= own["until"]


def test_a_card_deleted_meanwhile_fails_alone_while_the_other_patches_go_on(tmp_path):
    """Two cards, in different batches, are deleted between our pull and our write: their batches are refused
    (400) and retried one card at a time; a third batch meets a 500 and is sent again. Only the two deleted
    cards fail, each reported; every other card gets its tags."""
    with running_account(generate=(1000, 400), time_scale=SCALE) as acct:
        config = _config(tmp_path, acct, 3)
        store = open_store(config)
        source = AmoSource(adapter_settings(config), store)
        gone: list[int] = []

        class DeletingSource:
            def pull(self, progress=None):
                result = source.pull(progress)
                ids = sorted(int(c["id"]) for c in acct.state("contacts")["contacts"])
                gone.extend([ids[10], ids[500]])
                for cid in gone:
                    acct.delete("contacts", cid)
                acct.faults(kind="status", status=500, path="/api/v4/contacts", method="PATCH", count=1)
                return result

        try:
            summary = sync(config, source=DeletingSource()).summary()
        finally:
            store.close()
        wanted = wanted_tags(config)
        assert set(gone) <= set(wanted)
        assert summary["tags_failed"] == 2 and summary["tags_updated"] == len(wanted) - 2
        counters = acct.counters()
        assert counters["faults"]["status"] == 1 and counters["http_status"].get("429", 0) == 0
        assert counters["by_route"]["PATCH /api/v4/contacts/{id}"] == 100  # two batches, one card at a time
        tags = {cid: managed(t) for cid, t in card_tags(acct.state()).items()}
        assert {k: v for k, v in tags.items() if v} == {k: v for k, v in wanted.items() if k not in gone}
