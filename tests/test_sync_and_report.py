"""`lifecycle sync` records who entered and left; `lifecycle report` computes without changing stored
membership. Run through the CLI (in-process, see conftest.run_cli) where the user-facing output matters; one
test runs `lifecycle sync` as a real process, end to end."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta

import sqlalchemy as sa

from connector.pipeline import open_store, sync
from connector.store import membership, membership_events, runs
from tests.conftest import named_select

AS_OF = date(2026, 11, 23)


def ago(days: int) -> str:
    return (AS_OF - timedelta(days=days)).isoformat()


def seed(ws):
    ws.write_contacts([{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}])
    ws.write_deals(
        [
            {"id": 1, "contact_id": 1, "status": "won", "amount": 100, "closed_at": ago(10)},
            {"id": 2, "contact_id": 2, "status": "won", "amount": 100, "closed_at": ago(70)},
            {"id": 3, "contact_id": 3, "status": "won", "amount": 100, "closed_at": ago(200)},
        ]
    )


def table_rows(config, table):
    store = open_store(config)
    with store.engine.connect() as conn:
        rows = conn.execute(named_select(table) if "segment_id" in table.c else sa.select(table)).mappings().all()
    store.close()
    return [dict(r) for r in rows]


def events(config, run_id):
    return sorted(
        (r["event"], r["segment"], r["customer_id"]) for r in table_rows(config, membership_events) if r["run_id"] == run_id
    )


def test_first_sync_enters_everyone_and_second_records_moves(ws):
    seed(ws)
    config = ws.config()
    first = sync(config, as_of=AS_OF)
    assert ("enter", "lifecycle.new_active", 1) in events(config, first.run_id)
    assert ("enter", "status.prospect", 4) in events(config, first.run_id)
    assert not [e for e in events(config, first.run_id) if e[0] == "exit"]

    # Contact 2 buys again, contact 3 is deleted, contact 4 makes a first purchase.
    ws.write_contacts([{"id": 1}, {"id": 2}, {"id": 4}])
    ws.write_deals(
        [
            {"id": 1, "contact_id": 1, "status": "won", "amount": 100, "closed_at": ago(10)},
            {"id": 2, "contact_id": 2, "status": "won", "amount": 100, "closed_at": ago(70)},
            {"id": 4, "contact_id": 2, "status": "won", "amount": 100, "closed_at": ago(1)},
            {"id": 5, "contact_id": 4, "status": "won", "amount": 100, "closed_at": ago(1)},
        ]
    )
    second = sync(config, as_of=AS_OF)
    got = events(config, second.run_id)
    assert ("exit", "lifecycle.new_sleeping", 2) in got
    assert ("enter", "lifecycle.promising_active", 2) in got
    assert ("exit", "lifecycle.new_asleep", 3) in got and ("exit", "status.former", 3) in got
    assert ("exit", "status.prospect", 4) in got and ("enter", "lifecycle.new_active", 4) in got
    assert not any(e[2] == 1 for e in got)  # nothing changed for contact 1
    assert second.summary()["entered"]["lifecycle.new_active"] == 1

    current = {(r["segment"], r["customer_id"]) for r in table_rows(config, membership)}
    assert ("lifecycle.promising_active", 2) in current and ("lifecycle.new_sleeping", 2) not in current
    assert not any(cid == 3 for _, cid in current)
    entered_run = {(r["segment"], r["customer_id"]): r["entered_run"] for r in table_rows(config, membership)}
    assert entered_run[("lifecycle.new_active", 1)] == first.run_id  # membership keeps its entry run
    assert entered_run[("lifecycle.new_active", 4)] == second.run_id


def test_sync_without_changes_records_nothing(ws):
    seed(ws)
    config = ws.config()
    sync(config, as_of=AS_OF)
    again = sync(config, as_of=AS_OF)
    assert events(config, again.run_id) == []
    assert again.entered.height == 0 and again.left.height == 0


def test_static_segment_is_frozen_at_its_first_computation(ws):
    seed(ws)
    config = ws.config('[[segment]]\nname = "launch_buyers"\nwhen = "purchases >= 1"\nstatic = true\n')
    sync(config, as_of=AS_OF)
    ws.write_deals([{"id": 9, "contact_id": 4, "status": "won", "amount": 1, "closed_at": ago(1)}])
    second = sync(config, as_of=AS_OF)
    members = sorted(r["customer_id"] for r in table_rows(config, membership) if r["segment"] == "launch_buyers")
    assert members == [1, 2, 3]
    assert not [e for e in events(config, second.run_id) if e[1] == "launch_buyers"]
    report = ws.report_json("--as-of", AS_OF.isoformat(), "--segment", "launch_buyers")
    assert report["members"] == {"launch_buyers": ["1", "2", "3"]}


def test_report_json_shape_and_that_it_changes_nothing_stored(ws):
    seed(ws)
    config = ws.config()
    sync(config, as_of=AS_OF)
    before = (table_rows(config, membership), table_rows(config, membership_events), table_rows(config, runs))
    out = ws.report_json("--as-of", (AS_OF + timedelta(days=30)).isoformat(), "--members")
    assert set(out) == {"as_of", "customers", "segments", "active_share", "members"}
    assert out["as_of"] == "2026-12-23" and out["customers"] == 4
    # 30 days later contact 1 (last bought 40 days ago) is still active; contact 2 (100 days) is asleep.
    assert out["segments"]["lifecycle.new_active"] == 1
    assert out["members"]["lifecycle.new_asleep"] == ["2", "3"]
    assert out["active_share"] == 1 / 3
    assert out["members"]["status.prospect"] == ["4"]
    after = (table_rows(config, membership), table_rows(config, membership_events), table_rows(config, runs))
    assert before == after


def test_report_says_sync_first_then_prints_csv_a_segments_members_and_the_matrix(ws):
    seed(ws)
    ws.config()
    empty = ws.cli("report", "--format", "json")
    assert json.loads(empty.stdout)["customers"] == 0 and "run `lifecycle sync` first" in empty.stderr
    ws.cli("sync")
    out = ws.cli("report", "--as-of", AS_OF.isoformat(), "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    by_name = {r["segment"]: r for r in rows}
    assert by_name["status.prospect"]["customers"] == "1" and by_name["status.prospect"]["share"] == "0.2500"
    members = ws.cli("report", "--as-of", AS_OF.isoformat(), "--format", "csv", "--segment", "status.current").stdout
    assert members.splitlines() == ["segment,customer_id", "status.current,1", "status.current,2"]
    table = ws.cli("report", "--as-of", AS_OF.isoformat()).stdout
    assert "Lifecycle matrix on 2026-11-23" in table
    assert "Active base: 33.3% of 3 buyers" in table and "meets the target" in table


def test_report_unknown_segment_and_bad_config_exit_2_with_a_clear_message(ws):
    seed(ws)
    ws.config()
    proc = ws.cli("report", "--segment", "status.curent", check=False)
    assert proc.returncode == 2 and "did you mean 'status.current'" in proc.stderr
    ws.write_config("[kpi]\ntarget = 1\n")
    proc = ws.cli("report", check=False)
    assert proc.returncode == 2 and "kpi.target: unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_sync_cli_reports_skipped_rows_and_failed_runs_are_recorded(ws):
    seed(ws)
    with (ws.crm / "deals.csv").open("a") as handle:
        handle.write("77,1,,won,10,RUB,,\n")
    config = ws.config()
    proc = ws.cli("sync", "--format", "json", as_process=True)  # the end-to-end smoke test of a real process
    summary = json.loads(proc.stdout)
    assert summary["rows_skipped"] == 1 and summary["customers"] == 4
    assert "deals.csv:5, column 'closed_at'" in proc.stderr
    (ws.crm / "contacts.csv").unlink()
    proc = ws.cli("sync", check=False)
    assert proc.returncode == 2 and "contacts.csv not found" in proc.stderr
    statuses = [r["status"] for r in table_rows(config, runs)]
    assert statuses == ["ok", "failed"]


def test_custom_fields_that_do_not_parse_or_have_no_source_are_warned_about_with_counts(ws, caplog):
    ws.write_contacts(
        [{"id": 1, "points": "1 200,5", "vip": "да"}, {"id": 2, "points": "12 500 rub", "vip": "maybe"},
         {"id": 3, "points": "1e999", "vip": "no"}, {"id": 4}],
        extra_columns=["points", "vip"],
    )
    ws.write_deals([])
    config = ws.config('[fields]\npoints = { type = "number" }\nvip = { type = "bool" }\n'
                       'bonus = { type = "number", source = "Бонус" }\nnote = { type = "string" }\n')
    with caplog.at_level("WARNING", logger="lifecycle.pipeline"):
        result = sync(config, as_of=AS_OF)
    warnings = result.summary()["field_warnings"]
    assert warnings == [
        "[fields] points: 2 of 3 values in 'points' are not numbers and count as empty",
        "[fields] vip: 1 of 3 values in 'vip' are not yes/no values (true/false, yes/no, 1/0, да/нет) and count as empty",
        "[fields] bonus: none of 4 customers has a value in 'Бонус'; check the field's source (a CRM field id, CSV column or field name)",
        "[fields] note: none of 4 customers has a value in 'note'; check the field's source (a CRM field id, CSV column or field name)",
    ]
    assert [r.getMessage() for r in caplog.records if r.name == "lifecycle.pipeline" and r.levelname == "WARNING"] == warnings
    values = dict(result.computation.features.select("id", "points").iter_rows())
    assert values == {1: 1200.5, 2: None, 3: None, 4: None}  # 1e999 is not a number a customer can have
    vip = dict(result.computation.features.select("id", "vip").iter_rows())
    assert vip == {1: True, 2: None, 3: False, 4: None}
    store = open_store(config)
    with store.engine.connect() as conn:
        stats = conn.execute(sa.select(runs.c.stats).order_by(runs.c.id.desc())).scalars().first()
    store.close()
    assert "2 of 3 values in 'points'" in str(stats)


def test_custom_fields_that_parse_give_no_warning(ws):
    ws.write_contacts([{"id": 1, "points": "5"}], extra_columns=["points"])
    ws.write_deals([])
    config = ws.config('[fields]\npoints = { type = "number" }\n')
    assert "field_warnings" not in sync(config, as_of=AS_OF).summary()
