"""Benchmark of the segment recompute: synthetic base -> state store -> features -> segments -> diff.

    python bench/segments.py --customers 1000000 --deals 5000000 [--json] [--db PATH]
                             [--as-of YYYY-MM-DD] [--skip-baseline] [--product-rows 10000000]

``--product-rows N`` (issue 17) also loads N product rows spread over the won deals (catalogue products of
sandbox/products.py) and adds product rules and two ``[[product_cycle]]`` entries (one learned), so the timed
compute reads the rows and evaluates the product functions, the reorder features and ``reorder.due``; those
segments are not in the pandas baseline and are left out of the comparison.

Steps and what is timed:

* load: ``sandbox.synthetic.generate`` plus a bulk insert (``executemany`` of tuples, in chunks) into the
  ``customers`` and ``deals`` tables of a fresh state store created by ``StateStore.open``;
* first store: the day before ``as_of``, one recompute stored with ``store.apply_membership`` (so that
  the timed run has a realistic stored membership to diff against, as a daily ``sync`` does);
* compute: what ``sync`` does after the pull: ``store.membership_frame()`` -> ``connector.pipeline.compute``
  (mirror -> features -> presets and five custom rules) -> ``membership_diff``; not applied;
* a second, untimed-in-the-headline pass of the same steps one by one, for the breakdown;
* the pandas baseline (``bench/pandas_baseline.py``) on the same database and ``as_of``, in a child
  process so that its memory does not count against the polars figures; both results are compared
  segment by segment (member count and a fingerprint of the member ids).

Peak RSS is ``ru_maxrss``; the per-phase peaks reset the kernel's high-water mark between phases
(``/proc/self/clear_refs``), so "peak during compute" is not inflated by the load.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import polars as pl  # noqa: E402

import pandas_baseline as baseline  # noqa: E402
from connector.config import load_config  # noqa: E402
from connector.pipeline import Computation, compute, membership_diff, open_store, today_in  # noqa: E402
from connector.store import StateStore  # noqa: E402
from rules.features import compute_features  # noqa: E402
from sandbox.synthetic import generate, mirror_rows  # noqa: E402

TIMEZONE = "Europe/Moscow"
PORTAL = "bench"
INSERT_CHUNK = 100_000


PRODUCT_RULES = {
    "optics_30d": 'bought("section:Оптика", within_days=30)',
    "coffee_lapsed": 'days_since_bought("109") > 2 * median_gap and times_bought("109") >= 2',
    "big_on_software": 'spent_on("section:Программы") > 20000 or spent_on("Техподдержка, 1 месяц") / 2 > 4000',
}
PRODUCT_CYCLES = (("101", "30"), ("section:Фильтры для воды", '"learn"'))


def config_text(crm_dir: Path, db_path: Path, *, timezone: str = TIMEZONE, portal: str = PORTAL,
                products: bool = False, columnar: bool = True) -> str:
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        "[crm]",
        'kind = "csv"',
        f"name = {q(portal)}",
        f"path = {q(str(crm_dir))}",
        f"timezone = {q(timezone)}",
        "",
        "[state]",
        f"url = {q('sqlite:///' + str(db_path))}",
        f"columnar = {'true' if columnar else 'false'}",
        "",
        "[fields]",
        'source = { type = "string" }',
        'points = { type = "number" }',
    ]
    for name, (when, _rule) in baseline.CUSTOM_RULES.items():
        lines += ["", "[[segment]]", f"name = {q(name)}", f"when = {q(when)}"]
    if products:
        for name, when in PRODUCT_RULES.items():
            lines += ["", "[[segment]]", f"name = {q(name)}", f"when = {q(when)}"]
        for product, days in PRODUCT_CYCLES:
            lines += ["", "[[product_cycle]]", f"product = {q(product)}", f"cycle_days = {days}"]
    return "\n".join(lines) + "\n"


def seed_products(store: StateStore, rows: int, seed: int = 17, chunk: int = INSERT_CHUNK) -> int:
    """``rows`` product rows over the won deals of the mirror (at least one each while rows last), catalogue
    products of sandbox/products.py, quantity 1-3, catalogue prices; marks products as pulled."""
    import numpy as np

    from connector.store.mirror import PRODUCTS_CURSOR
    from sandbox.products import CATALOGUE

    won = store.read_frame(sa_select_won(store), {"id": pl.Int64}).get_column("id").to_numpy()
    if not won.size or rows <= 0:
        return 0
    rng = np.random.default_rng(seed)
    per = np.full(won.size, rows // won.size, dtype=np.int64)
    per[rng.choice(won.size, rows - int(per.sum()), replace=False)] += 1
    deal = np.repeat(won, per)
    line = np.arange(1, deal.size + 1, dtype=np.int64)
    pick = rng.integers(0, len(CATALOGUE), deal.size)
    prices = np.array([p.price for p in CATALOGUE])
    from adapters.base import ProductRow
    from connector.store.mirror import product_key

    keys = np.array([product_key(ProductRow(0, 0, str(p.id), p.name, p.section)) for p in CATALOGUE], dtype=np.int64)
    kinds = pl.DataFrame({"portal_id": store.portal_id, "key": keys, "product_id": [str(p.id) for p in CATALOGUE],
                          "product_name": [p.name for p in CATALOGUE], "section": [p.section for p in CATALOGUE],
                          "sku": [p.sku for p in CATALOGUE]})
    prices = np.array([p.price for p in CATALOGUE])
    frame = pl.DataFrame({"portal_id": store.portal_id, "deal_id": deal, "line": line, "product_key": keys[pick],
                          "quantity": rng.choice([1.0, 2.0, 3.0], deal.size, p=[0.75, 0.2, 0.05]),
                          "price": prices[pick]})
    with store.engine.begin() as conn:
        for table, data in (("products", kinds), ("product_rows", frame)):
            sql = f"INSERT INTO {table} ({', '.join(data.columns)}) VALUES ({', '.join('?' * data.width)})"
            for start in range(0, data.height, chunk):
                conn.exec_driver_sql(sql, data.slice(start, chunk).rows())
        conn.exec_driver_sql("INSERT INTO cursors (portal, name, value, updated_at) VALUES (?, ?, ?, ?)",
                             (store.portal, PRODUCTS_CURSOR, "bench", "2026-01-01 00:00:00"))
    return int(frame.height)


def sa_select_won(store: StateStore):
    import sqlalchemy as sa

    from connector.store.schema import deals

    return sa.select(deals.c.id).where(deals.c.portal_id == store.portal_id, deals.c.status == "won")


def seed_store(store: StateStore, customers_df: pl.DataFrame, deals_df: pl.DataFrame, chunk: int = INSERT_CHUNK) -> None:
    """Bulk insert generated frames into the mirror tables (plain INSERT, one transaction)."""
    from connector.store.schema import DEAL_STATUS

    codes = {word: code for code, word in enumerate(DEAL_STATUS.words)}
    cust, deal = mirror_rows(customers_df, deals_df, store.portal_id, codes)
    with store.engine.begin() as conn:
        for table, frame in (("customers", cust), ("deals", deal)):
            sql = f"INSERT INTO {table} ({', '.join(frame.columns)}) VALUES ({', '.join('?' * frame.width)})"
            for start in range(0, frame.height, chunk):
                conn.exec_driver_sql(sql, frame.slice(start, chunk).rows())


# --- memory -----------------------------------------------------------------------------------------


def rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


class Peaks:
    """Per-phase peak RSS; the high-water mark is reset between phases where the kernel allows it."""

    def __init__(self) -> None:
        self.process = 0.0
        self.can_reset = True

    def mark(self) -> float:
        peak = peak_mb()
        self.process = max(self.process, peak)
        if self.can_reset:
            try:
                with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                    fh.write("5")
            except OSError:
                self.can_reset = False
        return peak


# --- the run ----------------------------------------------------------------------------------------


def polars_members(computation: Computation, names: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    counts, digests = {}, {}
    for name in names:
        ids = computation.membership.filter(pl.col(name)).get_column("id").to_numpy()
        counts[name] = int(ids.size)
        digests[name] = baseline.digest(ids)
    return counts, digests


def breakdown(store: StateStore, config, as_of: date) -> dict[str, float]:
    """The steps of ``compute`` + ``membership_diff`` one by one (same functions, same order)."""
    engine, crm = config.rules, config.crm
    out: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = round(now - t, 3)
        t = now

    stored = store.membership_frame()
    lap("read_membership")
    frozen_names = store.frozen_segments()
    customers = store.customers_frame(crm.customer)
    lap("read_customers")
    deals = store.deals_frame()
    lap("read_deals")
    features, stats = compute_features(
        customers, deals, as_of=as_of, timezone=crm.timezone, customer=crm.customer, fields=engine.fields
    )
    lap("features")
    products = None
    if engine.uses_products:
        products = store.products_frame(crm.customer, deals, crm.timezone)
        lap("read_products")
        if engine.cycles:
            from rules.reorder import add_reorder_features

            features, _cycles = add_reorder_features(features, products, engine.cycles, as_of=as_of, timezone=crm.timezone,
                                                     min_observations=config.settings.products.min_observations)
            lap("reorder")
    membership = engine.evaluate(features, {}, as_of=as_of, products=products, timezone=crm.timezone)
    lap("evaluate")
    names = engine.segment_names
    sums = membership.select(pl.col(names).sum()).row(0, named=True)
    r0 = config.settings.segments.lifecycle.recency_days[0]
    buyers, active = features.select(
        (pl.col("purchases") >= 1).sum().alias("buyers"),
        ((pl.col("purchases") >= 1) & (pl.col("recency_days") <= r0)).sum().alias("active"),
    ).row(0)
    lap("counts")
    values = dict(
        as_of=as_of, features=features, membership=membership, counts={n: int(sums[n]) for n in names},
        customers=features.height, buyers=int(buyers), active=int(active), stats=stats,
    )
    # only the fields this version of Computation has (pipeline.py evolves)
    computation = Computation(**{f.name: values[f.name] for f in dataclasses.fields(Computation) if f.name in values})
    computation.long(names)
    lap("diff_long")
    membership_diff(computation, stored, names)
    lap("diff_total")
    out["diff_joins"] = round(out["diff_total"] - out["diff_long"], 3)  # diff_total repeats the long step
    out["frozen_segments"] = len(frozen_names)
    return out


def run_baseline(config_path: Path, as_of: date) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE / "pandas_baseline.py"), "--config", str(config_path), "--as-of", as_of.isoformat(), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pandas baseline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(polars_counts: dict[str, int], polars_digests: dict[str, str], base: dict) -> list[str]:
    problems = []
    for name in sorted(set(polars_counts) | set(base["counts"])):
        a, b = polars_counts.get(name), base["counts"].get(name)
        if a != b:
            problems.append(f"{name}: polars {a} members, pandas {b}")
        elif polars_digests.get(name) != base["digests"].get(name):
            problems.append(f"{name}: {a} members on both sides but different customers")
    return problems


def bench(customers: int, deals: int, *, as_of: date, db: Path | None, skip_baseline: bool, workdir: Path,
          product_rows: int = 0, columnar: bool = True) -> dict:
    peaks = Peaks()
    peaks.mark()
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # timings are only comparable on a quiet machine
    db_path = (db or workdir / "state.db").resolve()
    if db_path.exists():
        raise SystemExit(f"{db_path} exists; the bench needs a fresh state store (remove it or pick another --db)")
    crm_dir = workdir / "crm"
    crm_dir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "bench.toml"
    config_path.write_text(config_text(crm_dir, db_path, products=product_rows > 0, columnar=columnar), encoding="utf-8")
    config = load_config(config_path)
    names = config.rules.segment_names
    previous = as_of - timedelta(days=1)

    # (a) load = generate + insert
    t0 = time.perf_counter()
    cust_df, deals_df = generate(customers, deals, today=as_of, timezone=TIMEZONE)
    t1 = time.perf_counter()
    store = open_store(config)
    seed_store(store, cust_df, deals_df)
    del cust_df, deals_df
    loaded_rows = seed_products(store, product_rows) if product_rows else 0
    store.close()
    t2 = time.perf_counter()
    gc.collect()
    rss_after_load = rss_mb()
    peak_load = peaks.mark()

    # (b) first store: the previous day's run, stored
    t3 = time.perf_counter()
    store = open_store(config)
    run_id = store.start_run("bench", previous)
    stored = store.membership_frame()
    first = compute(store, config, previous, stored)
    entered, left = membership_diff(first, stored, names)
    store.apply_membership(run_id, previous, entered, left, config.rules.definitions())
    store.finish_run(run_id, status="ok", stats={"entered": entered.height, "left": left.height})
    # Close as sync does. Besides, it is needed: connectorx's own SQLite, closing after a read, deletes the
    # WAL file under the pooled pysqlite connection, so writes made after that read stay invisible to
    # other connections (connectorx reads included) until this process's pysqlite connection closes.
    store.close()
    t4 = time.perf_counter()
    stored_rows = entered.height
    state_bytes = sum(p.stat().st_size for p in (db_path, db_path.with_name(db_path.name + "-wal")) if p.exists())
    del first, entered, left, stored
    gc.collect()
    peak_first = peaks.mark()

    # (c) compute = the recompute of sync after the pull, up to the membership diff
    store = open_store(config)
    t5 = time.perf_counter()
    stored = store.membership_frame()
    computation = compute(store, config, as_of, stored)
    entered, left = membership_diff(computation, stored, names)
    t6 = time.perf_counter()
    peak_compute = peaks.mark()
    counts, digests = polars_members(computation, names)
    cycles = list(computation.product_cycles)
    product_made = set(PRODUCT_RULES) | {"reorder.due"}  # not in the pandas baseline
    diff = {"stored_rows": stored_rows, "entered": entered.height, "left": left.height}
    if product_rows:
        diff["entered_without_products"] = entered.filter(~pl.col("segment").is_in(list(product_made))).height
        diff["left_without_products"] = left.filter(~pl.col("segment").is_in(list(product_made))).height
    summary = {
        "customers": computation.customers, "buyers": computation.buyers, "active": computation.active,
        "deals_without_customer": computation.stats.deals_without_customer,
        "deals_unknown_customer": computation.stats.deals_unknown_customer,
    }
    del computation, entered, left, stored
    gc.collect()

    steps = breakdown(store, config, as_of)
    peaks.mark()
    store.close()

    result: dict = {
        "customers": customers,
        "deals": deals,
        "product_rows": loaded_rows,
        "product_cycles": cycles,
        "as_of": as_of.isoformat(),
        "db": str(db_path),
        "machine": {"cpus": os.cpu_count(), "polars_threads": pl.thread_pool_size(), "loadavg_at_start": load_at_start},
        "columnar": columnar,
        "state_file": {"bytes": state_bytes, "mb": round(state_bytes / 1e6, 1)},  # after the first store (+ its WAL)
        "seconds": {
            "generate": round(t1 - t0, 3),
            "insert": round(t2 - t1, 3),
            "load": round(t2 - t0, 3),
            "first_store": round(t4 - t3, 3),
            "compute": round(t6 - t5, 3),
        },
        "rss_mb": {
            "after_load": rss_after_load,
            "peak_load": peak_load,
            "peak_first_store": peak_first if peaks.can_reset else None,
            "peak_compute": peak_compute if peaks.can_reset else None,
            "peak_process": peaks.process,  # ru_maxrss over the whole run (polars side only)
        },
        "compute_breakdown": steps,
        "summary": summary,
        "diff": diff,
        "segments": counts,
        "baseline": None,
        "ratio": None,
        "agree": None,
        "mismatches": [],
    }
    if not skip_baseline:
        base_config = config_path
        if product_rows:  # the baseline checks that the config's rules are its own: give it the rules without products
            base_config = workdir / "baseline.toml"
            base_config.write_text(config_text(crm_dir, db_path), encoding="utf-8")
        base = run_baseline(base_config, as_of)
        mismatches = compare({k: v for k, v in counts.items() if k not in product_made}, digests, base)
        if base["customers"] != summary["customers"]:
            mismatches.append(f"customers: polars {summary['customers']}, pandas {base['customers']}")
        ours = (diff.get("entered_without_products", diff["entered"]), diff.get("left_without_products", diff["left"]))
        if (base["entered"], base["left"]) != ours:
            mismatches.append(
                f"diff: polars entered {diff['entered']} left {diff['left']}, pandas entered {base['entered']} left {base['left']}"
            )
        result["baseline"] = {k: base[k] for k in ("seconds", "peak_rss_mb", "entered", "left")}
        compute_s = result["seconds"]["compute"]
        result["ratio"] = round(base["seconds"]["total"] / compute_s, 2) if compute_s else None
        result["agree"] = not mismatches
        result["mismatches"] = mismatches
    return result


def print_text(r: dict) -> None:
    s, m = r["seconds"], r["rss_mb"]
    print(f"bench: {r['customers']:,} customers, {r['deals']:,} deals, {r['product_rows']:,} product rows, "
          f"as_of {r['as_of']}, db {r['db']}")
    mach = r["machine"]
    print(f"  machine: {mach['cpus']} CPUs, {mach['polars_threads']} polars threads, load average at start {mach['loadavg_at_start']}")
    print(f"  load          {s['load']:8.2f} s  (generate {s['generate']:.2f} s + insert {s['insert']:.2f} s)")
    print(f"  first store   {s['first_store']:8.2f} s  ({r['diff']['stored_rows']:,} membership rows stored)")
    print(f"  state file    {r['state_file']['mb']:8.1f} MB ({r['state_file']['bytes']:,} bytes after the first store)")
    print(f"  compute       {s['compute']:8.2f} s  (entered {r['diff']['entered']:,}, left {r['diff']['left']:,})")
    print("  compute breakdown: " + ", ".join(f"{k} {v}" for k, v in r["compute_breakdown"].items()))
    print(f"  RSS after load {m['after_load']:.0f} MB; peak: load {m['peak_load']:.0f} MB, first store "
          f"{m['peak_first_store']} MB, compute {m['peak_compute']} MB, process {m['peak_process']:.0f} MB")
    print("  segments: " + ", ".join(f"{k}={v}" for k, v in r["segments"].items()))
    for c in r.get("product_cycles") or []:
        print(f"  product cycle {c['product']}: {c['cycle_days']} days ({c['configured']}, {c['observations']} gaps), "
              f"{c['customers']:,} buyers, {c['due']:,} due")
    b = r["baseline"]
    if b is None:
        print("  pandas baseline: skipped")
        return
    bs = b["seconds"]
    print(f"  pandas baseline {bs['total']:8.2f} s  (read {bs['read']:.2f}, features {bs['features']:.2f}, "
          f"segments {bs['segments']:.2f}, diff {bs['diff']:.2f}); peak RSS {b['peak_rss_mb']:.0f} MB")
    print(f"  ratio baseline/compute: {r['ratio']}x")
    if r["agree"]:
        print("  agreement: every segment has the same members in both implementations")
    else:
        print("  MISMATCH between polars engine and pandas baseline:")
        for line in r["mismatches"]:
            print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the segment recompute against a pandas baseline.")
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--deals", type=int, required=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--db", type=Path, help="SQLite file for the state store (must not exist; kept afterwards)")
    parser.add_argument("--as-of", type=date.fromisoformat, help="'today' of the run (default: today in the CRM zone)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the pandas baseline")
    parser.add_argument("--no-columnar", action="store_true",
                        help="read the mirror from the database, not from its columnar copy ([state] columnar = false)")
    parser.add_argument("--product-rows", type=int, default=0, help="product rows over the won deals (issue 17)")
    args = parser.parse_args(argv)
    as_of = args.as_of or today_in(TIMEZONE)
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        result = bench(
            args.customers, args.deals, as_of=as_of, db=args.db, skip_baseline=args.skip_baseline, workdir=Path(tmp),
            columnar=not args.no_columnar, product_rows=args.product_rows)
    if args.json:
        print(json.dumps(result))
    else:
        print_text(result)
    return 0 if result["agree"] in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
