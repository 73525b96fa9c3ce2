"""Smoke test of bench/pull_amocrm.py: against the sandbox account with its rate limit on, the full pull
stays within 1.1 x ceil(records / 250) + 10 requests with no 429, and the incremental pull reads the
changes and little else. No assertion on wall time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTACTS, DEALS = 1200, 3600


@pytest.mark.slow
def test_bench_pull_amocrm_reports_figures_and_meets_the_request_targets():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pull_amocrm.py"), "--contacts", str(CONTACTS), "--deals", str(DEALS),
         "--time-scale", "10", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    full, inc = result["full"], result["incremental"]
    assert full["records"] == CONTACTS + DEALS and full["row_errors"] == 0
    assert full["lower_bound"] == -(-(CONTACTS + DEALS) // 250)
    assert full["requests"] == full["adapter_requests"] <= 1.1 * full["lower_bound"] + 10
    assert full["http_429"] == 0 and full["http_403"] == 0
    changed = inc["changed"]["total"]
    assert changed == round(CONTACTS * 0.01) + round(DEALS * 0.01)
    assert changed <= inc["records"] <= changed * 2  # the changes, not the account
    assert inc["requests"] <= 1.1 * inc["lower_bound"] + 10 and inc["http_429"] == 0
    assert result["targets"]["all"]
