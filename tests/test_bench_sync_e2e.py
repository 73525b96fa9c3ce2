"""Smoke tests of bench/sync_e2e.py and bench/report.py on small bases: they run and report their figures;
the request-count targets hold (the sync after a write-back reads no more than 5 requests' worth, with
nothing refused by a limit), and the stored report equals a compute. No assertion on wall time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_sync_e2e_reports_the_write_back_and_the_next_syncs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "sync_e2e.py"), "--contacts", "600", "--deals", "1800",
                           "--time-scale", "50", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    first, second, quiet = r["first_sync"], r["second_sync"], r["quiet_sync"]
    assert first["tags_updated"] == 600 and first["tags_failed"] == 0 and not first["refused"]
    assert first["writeback_planned"] == "full" and first["writeback_floor_seconds"] > 0
    assert second["http_requests"] <= 5 and second["writeback_requests"] == 0 and not second["refused"]
    assert quiet["writeback_planned"] == "changes" and quiet["writeback_candidates"] == 0
    assert quiet["writeback_requests"] == 0 and "writeback_seconds_per_100k" in quiet


@pytest.mark.slow
def test_bench_sync_e2e_on_amocrm_reads_none_of_our_writes_back() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "sync_e2e.py"), "--crm", "amocrm", "--contacts", "600",
                           "--deals", "1800", "--time-scale", "50", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    first, second = r["first_sync"], r["second_sync"]
    assert first["tags_updated"] == 600 and first["tags_failed"] == 0 and not first["refused"]
    assert second["customers_read"] == 0 and second["writeback_requests"] == 0 and not second["refused"]
    assert second["http_requests"] <= 8 and second["by_route"]["GET /api/v4/contacts"] in (2, 3)


@pytest.mark.slow
def test_bench_report_prints_the_stored_figures_equal_to_a_compute() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--customers", "2000", "--deals", "8000",
                           "--repeat", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    assert r["equal_to_compute"] is True and r["other_date_progress_line"] is True
    assert r["stored_date_seconds"]["median"] > 0
