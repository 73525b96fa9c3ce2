"""Issue 20, item 4: ``lifecycle report`` for the date the last sync stored prints from the stored figures,
and what it prints is exactly what a fresh compute from the mirror prints; anything that could make them
differ (a later sync, a changed configuration, another date, member lists) computes as before."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta

from rich.console import Console

from connector import report, stored_report
from connector.pipeline import compute, open_store, sync

AS_OF = date(2026, 3, 2)
PROGRESS = "computing segments for"
CUSTOM = """
[fields.points]
type = "number"

[[segment]]
name = "big"
when = "monetary >= 150"
"""


def seed(ws) -> None:
    ws.write_contacts([{"id": i, "points": str(i)} for i in range(1, 9)], extra_columns=["points"])
    ago = lambda d: (AS_OF - timedelta(days=d)).isoformat()  # noqa: E731
    ws.write_deals([
        {"id": 1, "contact_id": 1, "status": "won", "amount": 100, "closed_at": ago(10)},
        {"id": 2, "contact_id": 2, "status": "won", "amount": 300, "closed_at": ago(70)},
        {"id": 3, "contact_id": 2, "status": "won", "amount": 50, "closed_at": ago(20)},
        {"id": 4, "contact_id": 3, "status": "won", "amount": 100, "closed_at": ago(200)},
        {"id": 5, "contact_id": 99, "status": "won", "amount": 10, "closed_at": ago(5)},  # unknown customer
        {"id": 6, "status": "won", "amount": 10, "closed_at": ago(5)},  # no customer
        {"id": 7, "contact_id": 5, "status": "lost", "amount": 10, "closed_at": ago(5)},
    ])


def _fresh(config, fmt: str) -> str:
    """What a compute from the mirror prints, rendered the way the command renders it."""
    store = open_store(config)
    try:
        comp = compute(store, config, AS_OF)
    finally:
        store.close()
    names = config.rules.segment_names
    if fmt == "json":
        return report.as_json(comp, segments=names, members=False) + "\n"
    if fmt == "csv":
        return report.as_csv(comp, segments=names, members=False)
    out = io.StringIO()
    report.render_table(comp, config.settings, segments=names, members=False,
                        console=Console(file=out, soft_wrap=False, width=110, color_system=None))
    return out.getvalue()


def _instant(config, fmt: str) -> str:
    store = open_store(config)
    try:
        comp = stored_report.load(store, config, AS_OF)
    finally:
        store.close()
    assert comp is not None
    names = config.rules.segment_names
    if fmt == "json":
        return report.as_json(comp, segments=names, members=False) + "\n"
    if fmt == "csv":
        return report.as_csv(comp, segments=names, members=False)
    out = io.StringIO()
    report.render_table(comp, config.settings, segments=names, members=False,  # type: ignore[arg-type]
                        console=Console(file=out, soft_wrap=False, width=110, color_system=None))
    return out.getvalue()


def test_the_stored_report_equals_a_fresh_compute_in_every_format(ws) -> None:
    seed(ws)
    config = ws.config(CUSTOM)
    sync(config, as_of=AS_OF)
    for fmt in ("json", "csv", "table"):
        assert _instant(config, fmt) == _fresh(config, fmt), fmt
    shown = ws.cli("report", "--as-of", AS_OF.isoformat(), "--format", "json")
    assert PROGRESS not in shown.stderr  # printed from the stored figures
    assert shown.stdout == _fresh(config, "json")
    got = json.loads(shown.stdout)
    assert got["segments"]["big"] == 1 and got["customers"] == 8


def test_other_dates_later_syncs_and_changed_rules_compute_again(ws) -> None:
    seed(ws)
    config = ws.config(CUSTOM)
    sync(config, as_of=AS_OF)
    other = ws.cli("report", "--as-of", (AS_OF - timedelta(days=1)).isoformat(), "--format", "json")
    assert PROGRESS in other.stderr
    members = ws.cli("report", "--as-of", AS_OF.isoformat(), "--segment", "big", "--format", "json")
    assert PROGRESS in members.stderr and json.loads(members.stdout)["members"]["big"] == ["2"]

    # A changed rule: the stored sizes no longer apply.
    changed = ws.config(CUSTOM.replace("monetary >= 150", "monetary >= 50"))
    again = ws.cli("report", "--as-of", AS_OF.isoformat(), "--format", "json")
    assert PROGRESS in again.stderr and json.loads(again.stdout)["segments"]["big"] == 3
    store = open_store(changed)
    try:
        assert stored_report.load(store, changed, AS_OF) is None
    finally:
        store.close()

    # Back to the synced rules, but a later sync (of another day) has run: its date is the stored one now.
    config = ws.config(CUSTOM)
    ws.write_deals([{"id": 8, "contact_id": 4, "status": "won", "amount": 500, "closed_at": AS_OF.isoformat()}])
    sync(config, as_of=AS_OF + timedelta(days=1))
    stale = ws.cli("report", "--as-of", AS_OF.isoformat(), "--format", "json")
    assert PROGRESS in stale.stderr
    fresh = ws.cli("report", "--as-of", (AS_OF + timedelta(days=1)).isoformat(), "--format", "json")
    assert PROGRESS not in fresh.stderr
    assert json.loads(fresh.stdout)["segments"]["big"] == 1  # contact 4 (500); contacts 1-3 and their deals left


def test_a_failed_sync_after_the_stored_one_makes_the_report_compute(ws) -> None:
    seed(ws)
    config = ws.config(CUSTOM)
    sync(config, as_of=AS_OF)
    store = open_store(config)
    try:
        run = store.start_run("sync", AS_OF)
        store.finish_run(run, status="failed", stats={}, error="boom")
        assert stored_report.load(store, config, AS_OF) is None
    finally:
        store.close()
