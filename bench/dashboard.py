"""Benchmark of the dashboard on a big portal: server time of its pages and API (not a timed test).

    python bench/dashboard.py [--customers 1000000] [--db PATH] [--json]

Builds a state store directly (bulk inserts, no sync, no CRM): ``customers`` count of ``dash_members`` rows,
the current membership of the nine matrix cells and the three status segments, a year of ``dash_cells``
intervals (each customer changes cell 0-3 times), 53 weekly ``dash_trend`` points and a ``dash_snapshots`` row,
exactly what a sync's snapshot stores. Then, in process through the daemon's real ASGI app (Starlette's
TestClient, signed in), it times:

* the overview (API and page), the first page of the biggest segment (API and page);
* the flows table between a year ago and today and between two recent dates, and one flows cell's customers;
* a CSV and an XLSX export of a segment of about 100,000 members, streamed, with the growth of the process's
  resident memory during the export (sampled every 20 ms).

    python bench/dashboard.py --snapshot [--customers 1000000]

instead times what the snapshot adds to a sync (a first sync and the next day's) on a generated mirror of
``--customers`` customers with three deals each.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.config import load_config  # noqa: E402
from connector.dashboard import auth, schema  # noqa: E402
from connector.http import create_app  # noqa: E402
from connector.metrics import Metrics  # noqa: E402
from connector.store import StateStore, membership, segments  # noqa: E402
from connector.store.types import day_number  # noqa: E402
from connector.store.base import insert_tuples as _insert_tuples  # noqa: E402

CELLS = [f"lifecycle.{r}_{c}" for r in ("new", "promising", "regular") for c in ("active", "sleeping", "asleep")]
# shares of the customers per state: prospects, then the nine cells (lifecycle.new_asleep about 10 % = 100k of 1M)
WEIGHTS = [0.20, 0.08, 0.03, 0.10, 0.08, 0.03, 0.12, 0.10, 0.04, 0.22]
STATES = ["prospect", *CELLS]
assert tuple(STATES) == schema.CELL_CODES


def build(db: Path, n: int, today: date) -> None:
    rng = np.random.default_rng(14)
    store = StateStore.open(f"sqlite:///{db}", "default")
    ids = np.arange(1, n + 1)
    state_now = rng.choice(len(STATES), size=n, p=WEIGHTS)
    pid = store.portal_id  # before the transaction: resolving it may write
    with store.engine.begin() as conn:
        purchases = np.where(state_now == 0, 0, rng.integers(1, 12, n))
        money = np.round(purchases * rng.gamma(2.0, 3000.0, n), 2)
        last = [(today - timedelta(days=int(d))).isoformat() for d in rng.integers(1, 400, n)]
        bday = rng.integers(0, 366, n)
        _insert_tuples(conn, schema.members, ("portal", "customer_id", "name", "phone", "email", "responsible_id", "purchases",
                                              "last_purchase", "monetary", "days_to_birthday", "extra", "features"),
                       (("default", int(i), f"Customer {i}", f"+7900{i:07d}", f"c{i}@example.com", str(1 + i % 40),
                         int(purchases[k]), None if purchases[k] == 0 else last[k], float(money[k]), int(bday[k]), None,
                         json.dumps({"purchases": int(purchases[k])}))
                        for k, i in enumerate(ids)))
        day = day_number(today)
        names = ["status.prospect", *STATES[1:], "status.former", "status.current"]
        seg = {name: k + 1 for k, name in enumerate(names)}
        conn.execute(segments.insert(), [{"portal_id": pid, "id": k, "name": name, "static": False} for name, k in seg.items()])
        _insert_tuples(conn, membership, ("portal_id", "segment_id", "customer_id", "entered_on", "entered_run"),
                       sorted((pid, seg[STATES[s] if s else "status.prospect"], int(i), day, 1) for s, i in zip(state_now, ids)))
        status = np.where(state_now == 0, "", np.where(np.isin(state_now, [3, 6, 9]), "status.former", "status.current"))
        _insert_tuples(conn, membership, ("portal_id", "segment_id", "customer_id", "entered_on", "entered_run"),
                       sorted((pid, seg[str(s)], int(i), day, 1) for s, i in zip(status, ids) if s))
        # a year of intervals: 0-3 changes per customer at random days, the last one ending in today's state
        changes = rng.integers(0, 4, n)
        rows = []
        start = today - timedelta(days=371)
        for k, i in enumerate(ids):
            days = sorted(rng.choice(370, size=changes[k], replace=False) + 1) if changes[k] else []
            bounds = [start, *(start + timedelta(days=int(d)) for d in days)]
            states = [*rng.integers(0, len(STATES), len(bounds) - 1), state_now[k]]
            for j, b in enumerate(bounds):  # days as day numbers, cells as codes (connector/dashboard/schema.py)
                end = schema.day_number(bounds[j + 1]) if j + 1 < len(bounds) else None
                rows.append(("default", int(i), schema.day_number(b), end, int(states[j])))
            if len(rows) > 200_000:
                _insert_tuples(conn, schema.cells, ("portal", "customer_id", "valid_from", "valid_to", "cell"), rows)
                rows = []
        _insert_tuples(conn, schema.cells, ("portal", "customer_id", "valid_from", "valid_to", "cell"), rows)
        counts = {s: int((state_now == k).sum()) for k, s in enumerate(STATES) if k}
        counts["status.prospect"] = int((state_now == 0).sum())
        counts["status.current"] = int((status == "status.current").sum())
        counts["status.former"] = int((status == "status.former").sum())
        buyers = n - counts["status.prospect"]
        active = sum(counts[c] for c in CELLS if c.endswith("_active"))
        now = datetime.now(timezone.utc)
        conn.execute(schema.snapshots.insert().values(portal="default", run_id=1, as_of=today, customers=n, buyers=buyers,
                                                      active=active, counts=json.dumps(counts), created_at=now))
        monday = today - timedelta(days=today.weekday())
        for w in range(53):
            conn.execute(schema.trend.insert().values(portal="default", on_date=monday - timedelta(weeks=w), customers=n,
                                                      buyers=buyers, active=int(active * (0.9 + 0.2 * rng.random())),
                                                      counts=json.dumps(counts), computed_at=now))
    auth.add_user(store.engine, "bench@example.com", "admin", [], "bench password")
    store.close()


def rss_mb() -> float:
    """The process's resident memory now (Linux /proc), in MB."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 1e6


class RssSampler(threading.Thread):
    """The highest resident memory seen every 20 ms while an export runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak = rss_mb()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())


def timed(client, path: str, repeat: int = 3) -> tuple[float, int, int]:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        best = min(best, time.perf_counter() - started)
    return best, answer.status_code, len(answer.content)


def snapshot_bench(customers: int, folder: Path) -> dict:
    """What the snapshot adds to a sync: a generated mirror (sandbox/synthetic, 3 deals per customer), then
    :func:`connector.dashboard.snapshot.record` for a first sync (52 weekly points computed from the mirror, the
    cells' back-fill, the member columns) and for the next day's sync (one point, cell changes, member columns)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from segments import config_text, seed_store  # bench/segments.py

    from connector.dashboard.snapshot import record
    from connector.pipeline import compute
    from sandbox.synthetic import generate

    db = folder / "snapshot.db"
    db.unlink(missing_ok=True)
    (folder / "crm").mkdir(exist_ok=True)
    config_path = folder / "snapshot.toml"
    config_path.write_text(config_text(folder / "crm", db), encoding="utf-8")
    config = load_config(config_path)
    today = date.today()
    cust, deals = generate(customers, 3 * customers, today=today, timezone="Europe/Moscow")
    store = StateStore.open(config.state_url, config.crm.name)
    seed_store(store, cust, deals)
    # a dashboard account makes the first snapshot back-fill the past year (52 weekly points and the cells)
    auth.add_user(store.engine, "bench@example.com", "admin", [], "bench password")
    out = {"snapshot_customers": customers}
    for label, day in (("first_sync", today - timedelta(days=1)), ("next_day", today)):
        started = time.perf_counter()
        comp = compute(store, config, day, store.membership_frame())
        out[f"compute_{label}_seconds"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        record(store, config, SimpleNamespace(computation=comp, as_of=day, run_id=1 if label == "first_sync" else 2), compute)
        out[f"snapshot_{label}_seconds"] = round(time.perf_counter() - started, 1)
    store.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--db", help="keep the database here (default a temporary folder)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--snapshot", action="store_true",
                        help="instead: time the snapshot a sync writes, on a generated mirror of --customers")
    args = parser.parse_args()
    if args.snapshot:
        figures = snapshot_bench(args.customers, Path(tempfile.mkdtemp(prefix="bench-snapshot-")))
        print(json.dumps(figures) if args.json else "\n".join(f"{k:36} {v}" for k, v in figures.items()))
        return 0
    from starlette.testclient import TestClient

    folder = Path(args.db).parent if args.db else Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    db = Path(args.db) if args.db else folder / "state.db"
    today = date.today()
    started = time.perf_counter()
    if not db.exists():
        build(db, args.customers, today)
    build_seconds = time.perf_counter() - started
    (folder / "crm").mkdir(exist_ok=True)
    config_path = folder / "bench.toml"
    config_path.write_text(f'[crm]\nkind = "csv"\npath = "crm"\n[state]\nurl = "sqlite:///{db}"\n[ui]\nlanguage = "en"\n',
                           encoding="utf-8")
    config = load_config(config_path)
    daemon = SimpleNamespace(config=config, metrics=Metrics("default", "csv"), ready=lambda: (True, "ready"),
                             crm_changed=lambda: None)
    client = TestClient(create_app(daemon))
    token = client.get("/ui/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert client.post("/ui/login", data={"email": "bench@example.com", "password": "bench password", "csrf": token},
                       follow_redirects=False).status_code == 303
    api = "/api/v1/portals/default"
    year_ago, recent = (today - timedelta(days=365)).isoformat(), (today - timedelta(days=30)).isoformat()
    figures = {"customers": args.customers, "build_seconds": round(build_seconds, 1)}
    for name, path in [
        ("overview_api", f"{api}/overview"), ("overview_page", "/ui/p/default/"),
        ("segment_first_page_api", f"{api}/segments/status.current/members?size=50"),
        ("segment_first_page_page", "/ui/p/default/segments/status.current"),
        ("segment_first_page_by_monetary", f"{api}/segments/status.current/members?size=50&sort=monetary&order=desc"),
        ("flows_year", f"{api}/flows?from={year_ago}&to={today}"),
        ("flows_30_days", f"{api}/flows?from={recent}&to={today}"),
        ("flows_cell_members", f"{api}/flows/members?from={recent}&to={today}&src=lifecycle.new_active&dst=lifecycle.new_asleep"),
    ]:
        seconds, status, size = timed(client, path, repeat=1 if name.startswith("flows") else 3)
        assert status == 200, (name, status)
        figures[name] = round(seconds, 3)
    segment = "lifecycle.new_asleep"
    for kind in ("csv", "xlsx"):
        before = rss_mb()
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        rows = 0
        with client.stream("GET", f"{api}/segments/{segment}/members.{kind}") as answer:
            assert answer.status_code == 200
            size = 0
            for chunk in answer.iter_bytes():
                size += len(chunk)
                if kind == "csv":
                    rows += chunk.count(b"\n")
        figures[f"export_{kind}_seconds"] = round(time.perf_counter() - started, 2)
        figures[f"export_{kind}_mb"] = round(size / 1e6, 1)
        sampler.stop.set()
        sampler.join()
        figures[f"export_{kind}_peak_rss_growth_mb"] = round(sampler.peak - before, 1)
        if kind == "csv":
            figures["export_rows"] = rows - 1
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
