"""The polars engine and the plain pandas baseline (bench/pandas_baseline.py) must agree exactly.

The baseline is an independent reading of design.md "Segment semantics", so agreement on a generated
base plus hand-made edge customers (time zone edges, purchases after as_of, customers created after
as_of, unknown and missing customers, Feb-29 birthdays, cadence and recency boundaries, custom-field
parsing, three-valued logic in rules) cross-checks the engine. No test depends on timing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import polars as pl
import pytest

from adapters.base import Customer, Deal, PullResult
from connector.config import load_config
from connector.pipeline import compute, open_store
from rules.features import compute_features
from sandbox.synthetic import generate

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.append(str(BENCH))
import pandas_baseline as baseline  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_segments", BENCH / "segments.py")
bench_segments = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_segments)

TZ_NAMES = ["Europe/Moscow", "America/New_York"]  # fixed offset since 2014, and one with DST
A = date(2025, 2, 27)  # the base is generated for this day; non-leap year, Feb 29 birthdays fall on Feb 28
AS_OFS = [A, A + timedelta(days=1), A - timedelta(days=200), date(2024, 2, 28), date(2024, 2, 29)]


def edge_pull(tz_name: str) -> PullResult:
    """Hand-made customers at the edges of the semantics (ids 900001+, deal ids 9000001+)."""
    tz = ZoneInfo(tz_name)

    def local(day: date, hour: int = 12, minute: int = 0) -> int:
        return int(datetime.combine(day, time(hour, minute), tz).timestamp())

    old = local(A - timedelta(days=1000))
    customers: list[Customer] = []
    deals: list[Deal] = []
    next_deal = iter(range(9_000_001, 9_100_000))

    def cust(cid: int, **kw) -> int:
        kw.setdefault("created_ts", old)
        kw.setdefault("phone", "79000000000")
        kw.setdefault("email", f"{cid}@example.ru")
        kw.setdefault("fields", {"source": "site", "points": "100"})
        customers.append(Customer(id=cid, **kw))
        return cid

    def won(cid: int | None, ts: int, amount: float = 1000.0) -> None:
        deals.append(Deal(id=next(next_deal), status="won", contact_id=cid, amount=amount, created_ts=ts - 3600, closed_ts=ts))

    def ago(days: int) -> int:
        return local(A - timedelta(days=days))

    cust(900001, birthday=date(1988, 2, 29))  # prospect, birthday tomorrow (Feb 28 in 2025)
    won(cust(900002), local(A, 23, 30))  # late on as_of (another UTC day in New York): counts
    won(900002, local(A + timedelta(days=1), 0, 30))  # just after as_of (same UTC day in Moscow): ignored
    cust(900003)  # two purchases on one local day that are two different UTC days
    won(900003, local(A - timedelta(days=10), 1, 0))
    won(900003, local(A - timedelta(days=10), 23, 0))
    won(900003, ago(40))
    won(cust(900004, created_ts=local(A + timedelta(days=5))), ago(30))  # created after as_of, bought before
    cust(900005, created_ts=local(A + timedelta(days=5)))  # created after as_of, no purchase: left out
    won(cust(900006, created_ts=local(A + timedelta(days=5))), local(A + timedelta(days=3)))  # bought after as_of
    won(999_999, ago(3))  # unknown customer
    won(None, ago(3))  # no customer
    won(cust(900008, phone="   ", email="", fields={}), ago(5))  # no phone, no e-mail, no custom fields
    won(cust(900009, fields={"points": "3 000,5", "source": "  partner "}), ago(400))
    for cid, days in ((900010, (60, 50, 30)), (900011, (61, 51, 31)), (900016, (10, 9, 7))):
        cust(cid)
        for d in days:
            won(cid, ago(d))  # median gap 15 / 15 / 1.5: lapse boundary at recency 30 / 31 / 7
    for cid, days in ((900020, 60), (900021, 61), (900022, 90), (900023, 91)):
        won(cust(cid), ago(days))  # recency column boundaries
    cust(900024, fields={"source": "shop", "points": "2500"})
    for d in (300, 200, 150, 90):
        won(900024, ago(d), 15_000.0)  # regular, sleeping, vip, vip_slipping
    cust(900013, created_ts=None)  # unknown creation date: kept
    cust(900014)
    deals.append(Deal(id=next(next_deal), status="lost", contact_id=900014, closed_ts=local(A + timedelta(days=2)), created_ts=ago(5)))
    deals.append(Deal(id=next(next_deal), status="open", contact_id=900014, created_ts=local(A + timedelta(days=1))))
    deals.append(Deal(id=next(next_deal), status="open", contact_id=900014, created_ts=None))
    deals.append(Deal(id=next(next_deal), status="lost", contact_id=900014, closed_ts=None, created_ts=ago(2)))
    for cid, first in ((900030, 200), (900031, 180)):
        cust(cid)
        won(cid, ago(first))
        won(cid, ago(first - 1))  # two purchase days: rare only if first purchase > 180 days ago
    won(cust(900032, fields={"source": "", "points": "abc"}, birthday=date(1990, 3, 5)), ago(1))
    cust(900033, birthday=date(1970, 2, 27), fields={"source": "partner", "points": "-5"})  # birthday on as_of
    return PullResult(customers=customers, deals=deals, snapshot=False)


@pytest.fixture(scope="module", params=TZ_NAMES)
def config(request, tmp_path_factory):
    tz_name = request.param
    tmp = tmp_path_factory.mktemp("bench-baseline")
    (tmp / "crm").mkdir()
    path = tmp / "bench.toml"
    path.write_text(bench_segments.config_text(tmp / "crm", tmp / "state.db", timezone=tz_name), encoding="utf-8")
    config = load_config(path)
    store = open_store(config)
    customers, deals = generate(3000, 10_000, today=A, timezone=tz_name)
    bench_segments.seed_store(store, customers, deals)
    store.apply_pull(edge_pull(tz_name))
    store.close()
    return config


def engine_result(config, as_of: date):
    store = open_store(config)
    try:
        return compute(store, config, as_of)
    finally:
        store.close()


def engine_features(config, as_of: date) -> pl.DataFrame:
    crm = config.crm
    store = open_store(config)
    try:
        customers, deals = store.customers_frame(crm.customer), store.deals_frame()
    finally:
        store.close()
    features, _stats = compute_features(
        customers, deals, as_of=as_of, timezone=crm.timezone, customer=crm.customer, fields=config.rules.fields
    )
    return features


def engine_members(computation) -> dict[str, set[int]]:
    frame = computation.membership
    return {name: set(frame.filter(pl.col(name)).get_column("id").to_list()) for name in frame.columns if name != "id"}


def baseline_features(config, as_of: date, *, from_store: bool = False) -> pd.DataFrame:
    settings = config.settings
    crm = settings.crm
    if from_store:
        store = open_store(config)
        try:
            customers = store.customers_frame(crm.customer).to_pandas()
            deals = store.deals_frame().to_pandas()
        finally:
            store.close()
    else:
        customers, deals = baseline.read_frames(baseline.sqlite_path(settings.state.url), crm.name, crm.customer)
    return baseline.compute_features(
        customers, deals, as_of=as_of, timezone=crm.timezone, customer=crm.customer, fields=baseline.fields_of(settings)
    )


def baseline_members(config, as_of: date, *, from_store: bool = False) -> dict[str, set[int]]:
    features = baseline_features(config, as_of, from_store=from_store)
    return baseline.membership(baseline.segment_frame(features, config.settings.segments))


def describe(name: str, engine: set[int], plain: set[int]) -> str:
    return (
        f"{name}: engine {len(engine)}, pandas {len(plain)}; only engine {sorted(engine - plain)[:10]}, "
        f"only pandas {sorted(plain - engine)[:10]}"
    )


@pytest.mark.parametrize("as_of", AS_OFS, ids=str)
def test_same_membership_for_every_segment(config, as_of):
    engine = engine_members(engine_result(config, as_of))
    plain = baseline_members(config, as_of)
    assert list(engine) == list(plain) == config.rules.segment_names
    problems = [describe(n, engine[n], plain[n]) for n in engine if engine[n] != plain[n]]
    assert not problems, "\n".join(problems)
    assert all(engine[n] for n in ("status.prospect", "status.current", "cadence.lapsed", "vip"))


def test_baseline_from_store_frames_agrees(config):
    """The baseline also accepts the store's polars frames converted to pandas."""
    assert baseline_members(config, A, from_store=True) == baseline_members(config, A)


@pytest.mark.parametrize("as_of", [A, A - timedelta(days=200)], ids=str)
def test_engine_features_equal_the_pandas_baseline(config, as_of):
    engine = engine_features(config, as_of).to_pandas().set_index("id").sort_index()
    plain = baseline_features(config, as_of).sort_index()
    assert engine.index.equals(plain.index)
    for column in plain.columns:
        a, b = engine[column], plain[column]
        assert a.isna().equals(b.isna()), f"{column}: missing values differ"
        if column in ("monetary", "avg_order", "median_gap", "points"):
            diff = (a.astype("float64") - b.astype("float64")).abs().fillna(0)
            assert (diff <= 1e-6 * (1 + b.astype("float64").abs().fillna(0))).all(), column
        else:
            ok = a.isna() | (a.astype("object") == b.astype("object"))
            assert ok.all(), f"{column}: {a[~ok].head().to_dict()} vs {b[~ok].head().to_dict()}"


def test_hand_made_edge_customers_get_the_features_and_segments_of_design_md(config):
    """Spot checks of the hand-made customers against design.md (both implementations)."""
    features = baseline_features(config, A)
    members = baseline_members(config, A)
    assert features.loc[900001, "days_to_birthday"] == 1
    assert features.loc[900033, "days_to_birthday"] == 0
    assert features.loc[900002, ["purchases", "recency_days"]].tolist() == [1, 0]
    assert features.loc[900003, ["purchases", "purchase_days"]].tolist() == [3, 2]
    assert 900004 in features.index and 900005 not in features.index and 900006 not in features.index
    assert 900013 in members["status.prospect"]
    assert features.loc[900014, ["open_deals", "lost_deals"]].tolist() == [1, 1]
    assert 900010 in members["cadence.frequent"] and 900011 in members["cadence.lapsed"]
    assert 900016 in members["cadence.lapsed"] and features.loc[900016, "median_gap"] == 1.5
    assert 900020 in members["lifecycle.new_active"] and 900021 in members["lifecycle.new_sleeping"]
    assert 900022 in members["status.current"] and 900023 in members["lifecycle.new_asleep"]
    assert 900024 in members["vip_slipping"]
    assert 900030 in members["cadence.rare"] and 900031 not in members["cadence.rare"]
    assert 900008 in members["no_email_recent"] and 900008 not in members["points_or_birthday"]
    assert features.loc[900009, "points"] == 3000.5 and features.loc[900009, "source"] == "partner"
    assert pd.isna(features.loc[900032, "source"]) and pd.isna(features.loc[900032, "points"])
    assert 900032 in members["points_or_birthday"] or features.loc[900032, "days_to_birthday"] > 7
    for cid in (900001, 900002, 900004, 900008, 900024, 900033):
        assert all((cid in engine) == (cid in members[name]) for name, engine in engine_members(engine_result(config, A)).items())


@pytest.mark.slow
def test_bench_script_reports_timings_memory_and_agreement_with_the_baseline(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "segments.py"), "--customers", "2000", "--deals", "6000", "--json",
         "--as-of", A.isoformat(), "--db", str(tmp_path / "bench.db")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("load", "first_store", "compute"):
        assert isinstance(result["seconds"][key], float) and result["seconds"][key] >= 0
    for key in ("after_load", "peak_process"):
        assert result["rss_mb"][key] > 0
    assert result["baseline"]["seconds"]["total"] >= 0 and result["baseline"]["peak_rss_mb"] > 0
    assert isinstance(result["ratio"], float) and math.isfinite(result["ratio"])
    assert result["agree"] is True and result["mismatches"] == []
    assert set(result["segments"]) == set(baseline.CUSTOM_RULES) | {
        *(f"lifecycle.{r}_{c}" for r in baseline.LIFECYCLE_ROWS for c in baseline.LIFECYCLE_COLUMNS),
        "status.prospect", "status.current", "status.former",
        "cadence.lapsed", "cadence.frequent", "cadence.periodic", "cadence.rare", "birthday.soon",
    }
    assert result["diff"]["stored_rows"] > 0
    assert (tmp_path / "bench.db").exists()
