"""Smoke test of bench/pull_bitrix24.py: it runs against the sandbox portal with limits on and reports the
figures; our full pull stays within 1.1 x the lower bound + 10 requests with no 429/503, and the incremental
pull reads only what changed. No assertion on wall time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTACTS, DEALS = 600, 1800


@pytest.mark.slow
def test_bench_pull_bitrix24_reports_figures_and_meets_the_request_targets():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pull_bitrix24.py"), "--contacts", str(CONTACTS), "--deals", str(DEALS),
         "--time-scale", "50", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)

    full, inc, other = result["full"], result["incremental"], result["get_all"]
    for figures in (full, inc):
        for key in ("requests", "adapter_requests", "lower_bound", "wall_seconds", "refused", "counters", "records"):
            assert key in figures, key
    for key in ("requests", "wall_seconds", "complete", "stopped_by_limit", "refused"):
        assert key in other, key
    assert result["config"]["overlap_minutes"] == 0
    assert result["config"]["requests_per_second"] == 100 and result["config"]["burst"] == 50

    # Full pull: everything, within 1.1 x ceil(records / 2500) + 10 requests, nothing refused by a limit.
    assert full["records"] == CONTACTS + DEALS and full["row_errors"] == 0
    assert full["lower_bound"] == -(-(CONTACTS + DEALS) // 2500)
    assert full["requests"] <= 1.1 * full["lower_bound"] + 10
    assert full["adapter_requests"] == full["requests"]
    assert all(v == 0 for v in full["refused"].values()), full["refused"]

    # Incremental after 1 % changed: every change read, nothing else, far fewer records than the full pull.
    changed = inc["changed"]["total"]
    assert changed == round(CONTACTS * 0.01) + round(DEALS * 0.01)
    assert inc["missed_changes"] == 0 and inc["unchanged_records_read"] == 0
    assert inc["records"] == changed and inc["records"] * 20 < full["records"]
    assert inc["requests"] <= 1.1 * inc["lower_bound"] + 10 and inc["requests"] <= full["requests"]
    assert all(v == 0 for v in inc["refused"].values()), inc["refused"]

    targets = result["targets"]
    assert targets["full_within_budget"] and targets["full_no_refusals"] and targets["incremental_reads_all_changes"]
