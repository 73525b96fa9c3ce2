"""``lifecycle report`` on a large base: the date the last sync stored (printed from the stored figures,
connector/stored_report.py) against another date (computed from the mirror), as separate processes.

The base is bench/segments.py's synthetic one (same config: CSV kind, five custom rules), written straight
into the mirror; then one sync's computation is recorded as a sync records it (a ``sync`` run finished
``ok`` and ``stored_report.record``). Timed: ``lifecycle report --format json`` for that date (median of
``--repeat`` runs, cold processes; target under 1 s on 1,000,000 customers) and for the day before (one
run: a full compute). The stored output is checked to equal the computed one for the same date.

    python bench/report.py --customers 1000000 --deals 5000000 [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import segments as seg  # noqa: E402  bench/segments.py

from connector import report, stored_report  # noqa: E402
from connector.config import load_config  # noqa: E402
from connector.pipeline import compute, open_store, today_in  # noqa: E402


def run_report(config_path: Path, as_of: date) -> tuple[float, str, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "connector.cli", "report", "--config", str(config_path), "--as-of",
                           as_of.isoformat(), "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"lifecycle report failed: {proc.stderr[-500:]}")
    return wall, proc.stdout, proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--deals", type=int, required=True)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the base (config and state) in this new folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out: dict[str, object] = {"customers": args.customers, "deals": args.deals}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        (work / "crm").mkdir()
        config_path = work / "bench.toml"
        config_path.write_text(seg.config_text(work / "crm", work / "state.db"), encoding="utf-8")
        config = load_config(config_path)
        as_of = today_in(config.crm.timezone)
        started = time.perf_counter()
        cust, deals = seg.generate(args.customers, args.deals, today=as_of, timezone=seg.TIMEZONE)
        store = open_store(config)
        seg.seed_store(store, cust, deals)
        del cust, deals
        out["load_seconds"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        run_id = store.start_run("sync", as_of)
        comp = compute(store, config, as_of)
        store.finish_run(run_id, status="ok", stats={})
        stored_report.record(store, config, run_id, comp)
        out["sync_compute_seconds"] = round(time.perf_counter() - started, 2)
        expected = report.as_json(comp, segments=config.rules.segment_names, members=False) + "\n"
        store.close()
        walls = []
        for _ in range(args.repeat):
            wall, stdout, stderr = run_report(config_path, as_of)
            if stdout != expected:
                raise SystemExit("the stored report differs from the computed one")
            if "computing segments" in stderr:
                raise SystemExit("the report for the synced date computed instead of printing the stored figures")
            walls.append(wall)
        out["stored_date_seconds"] = {"median": round(statistics.median(walls), 3), "runs": [round(w, 3) for w in walls]}
        wall, _, stderr = run_report(config_path, as_of - timedelta(days=1))
        out["other_date_seconds"] = round(wall, 2)
        out["other_date_progress_line"] = "computing segments" in stderr
        out["equal_to_compute"] = True
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.customers} customers, {args.deals} deals: `lifecycle report` for the synced date "
              f"{out['stored_date_seconds']['median']} s (median of {args.repeat}; target < 1 s; output equal to a "
              f"compute), another date {out['other_date_seconds']} s (computed, progress line "
              f"{'shown' if out['other_date_progress_line'] else 'missing'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
