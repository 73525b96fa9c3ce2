"""The "plain way": the same features and segments written as an analyst would in pandas.

This is the comparison point for ``bench/segments.py`` and an independent re-implementation of
design.md, "Segment semantics", used by ``tests/test_bench_baseline.py`` to cross-check the polars engine
(``rules.features`` / ``rules.presets`` / ``rules.engine``). It is written from the design text, not
translated from the engine, with ordinary pandas: ``read_sql``, boolean masks, ``groupby().agg``,
``groupby().diff()`` for the purchase gaps, ``json.loads`` for the custom-field JSON, and the five bench
rules written by hand (an analyst has no rule language; :data:`CUSTOM_RULES` holds the rule text the
bench puts into its config next to the pandas code that means the same).

Semantics reproduced:

* dates are calendar dates in the CRM time zone; purchases (won deals) dated after ``as_of`` are ignored;
* deals without a customer, or whose customer is not in the mirror, are skipped;
* ``purchase_days`` / ``median_gap`` use distinct purchase dates;
* ``days_to_birthday`` is 0 on the day; 29 February is 28 February in non-leap years;
* customers created after ``as_of`` are left out unless they have a purchase by then;
* custom rules use SQL three-valued logic (pandas nullable dtypes), a missing result selects no one.

Also usable as a script (``bench/segments.py`` runs it in a child process so that its memory does not
distort the polars figures)::

    python bench/pandas_baseline.py --config bench.toml --as-of 2025-06-01 [--json]
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import resource
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

# A copy of rules.features.TRUE_WORDS / FALSE_WORDS on purpose: this baseline reimplements the features
# without importing the product; keep the two lists equal (tests/test_bench_baseline.py compares results).
TRUE_WORDS = ("1", "true", "yes", "y", "да", "t", "on")
FALSE_WORDS = ("0", "false", "no", "n", "нет", "f", "off")

LIFECYCLE_ROWS = ("new", "promising", "regular")
LIFECYCLE_COLUMNS = ("active", "sleeping", "asleep")


# --- custom rules: the text the bench config uses, and the same rule written by hand in pandas ------


def _num(frame: pd.DataFrame, column: str) -> pd.Series:
    """A numeric feature with missing values as <NA>, so comparisons give <NA> (three-valued logic)."""
    return frame[column].astype("Float64")


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype("boolean")


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype("string")


CUSTOM_RULES: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "vip": (
        "monetary >= 50000 and purchases >= 4",
        lambda f: (_num(f, "monetary") >= 50000) & (_num(f, "purchases") >= 4),
    ),
    "vip_slipping": (
        "vip and (lifecycle.regular_sleeping or lifecycle.regular_asleep)",
        lambda f: _flag(f, "vip") & (_flag(f, "lifecycle.regular_sleeping") | _flag(f, "lifecycle.regular_asleep")),
    ),
    "callable_lapsed": (
        "cadence.lapsed and has_phone and source != 'partner'",
        lambda f: _flag(f, "cadence.lapsed") & _flag(f, "has_phone") & (_text(f, "source") != "partner").astype("boolean"),
    ),
    "points_or_birthday": (
        "points > 2500 or days_to_birthday <= 7",
        lambda f: (_num(f, "points") > 2500) | (_num(f, "days_to_birthday") <= 7),
    ),
    "no_email_recent": (
        "not has_email and recency_days <= 30",
        lambda f: ~_flag(f, "has_email") & (_num(f, "recency_days") <= 30),
    ),
}

BENCH_FIELDS: dict[str, tuple[str, str]] = {"source": ("string", "source"), "points": ("number", "points")}


# --- reading ----------------------------------------------------------------------------------------


def sqlite_path(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise ValueError(f"the pandas baseline reads SQLite state stores only, not {url!r}")
    return url[len("sqlite:///") :]


def read_frames(db_path: str, portal: str, entity: str = "contact") -> tuple[pd.DataFrame, pd.DataFrame]:
    """customers and deals of one portal, straight from the state store's tables with ``pd.read_sql``."""
    with sqlite3.connect(db_path) as con:
        customers = pd.read_sql(
            "SELECT c.id, c.phone, c.email, c.birthday, c.responsible_id, c.created_ts, c.fields FROM customers c"
            " JOIN portal_keys k ON k.id = c.portal_id WHERE k.name = ? AND c.entity = ?",
            con,
            params=(portal, entity),
        )
        deals = pd.read_sql(
            "SELECT d.id, d.contact_id, d.company_id,"
            " CASE d.status WHEN 0 THEN 'open' WHEN 1 THEN 'won' WHEN 2 THEN 'lost' END AS status,"
            " d.amount, d.created_ts, d.closed_ts FROM deals d JOIN portal_keys k ON k.id = d.portal_id WHERE k.name = ?",
            con,
            params=(portal,),
        )
    return customers, deals


def read_membership(db_path: str, portal: str) -> pd.DataFrame:
    with sqlite3.connect(db_path) as con:
        return pd.read_sql(
            "SELECT s.name AS segment, m.customer_id FROM membership m JOIN portal_keys k ON k.id = m.portal_id"
            " JOIN segments s ON s.portal_id = m.portal_id AND s.id = m.segment_id WHERE k.name = ?",
            con, params=(portal,))


# --- features ---------------------------------------------------------------------------------------


def local_day(ts: pd.Series, timezone: str) -> pd.Series:
    """UTC epoch seconds -> midnight of the calendar date in the CRM time zone (naive datetime)."""
    moment = pd.to_datetime(pd.to_numeric(ts), unit="s", utc=True)
    return moment.dt.tz_convert(timezone).dt.tz_localize(None).dt.normalize()


def _birthday_in(year: int, month: pd.Series, day: pd.Series) -> pd.Series:
    if not calendar.isleap(year):
        day = day.mask((month == 2) & (day == 29), 28)
    return pd.to_datetime(pd.DataFrame({"year": year, "month": month, "day": day}), errors="coerce")


def days_to_birthday(birthday: pd.Series, as_of: date) -> pd.Series:
    born = pd.to_datetime(birthday.astype("string").str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    month, day = born.dt.month, born.dt.day
    today = pd.Timestamp(as_of)
    this_year = _birthday_in(as_of.year, month, day)
    upcoming = this_year.where(this_year >= today, _birthday_in(as_of.year + 1, month, day))
    return (upcoming - today).dt.days


def _custom_field(raw: pd.Series, kind: str) -> pd.Series:
    value = raw.astype("string").str.strip()
    if kind == "number":
        cleaned = value.str.replace(" ", "", regex=False).str.replace(",", ".", n=1, regex=False)
        return pd.to_numeric(cleaned, errors="coerce").astype("Float64")
    if kind == "bool":
        lowered = value.str.lower()
        out = pd.Series(pd.NA, index=raw.index, dtype="boolean")
        out[lowered.isin(TRUE_WORDS).fillna(False).astype(bool)] = True
        out[lowered.isin(FALSE_WORDS).fillna(False).astype(bool)] = False
        return out
    return value.mask(value == "")


def _filled(text: pd.Series) -> pd.Series:
    return text.astype("string").str.strip().fillna("") != ""


def compute_features(
    customers: pd.DataFrame,
    deals: pd.DataFrame,
    *,
    as_of: date,
    timezone: str,
    customer: str = "contact",
    fields: dict[str, tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """One row per customer, indexed by ``id``, with every feature of design.md."""
    today = pd.Timestamp(as_of)
    key = "contact_id" if customer == "contact" else "company_id"

    # Deals of known customers only (no customer, or a customer not in the mirror: skipped).
    deals = deals[deals[key].notna()]
    owner = deals[key].astype("int64")
    known = owner.isin(customers["id"])
    deals, owner = deals[known], owner[known]
    deals = pd.DataFrame(
        {
            "customer_id": owner,
            "status": deals["status"],
            "amount": deals["amount"].astype("float64"),
            "closed_on": local_day(deals["closed_ts"], timezone),
            "created_on": local_day(deals["created_ts"], timezone),
        }
    )

    won = deals[(deals["status"] == "won") & (deals["closed_on"] <= today)]
    purchases = won.groupby("customer_id").agg(
        purchases=("closed_on", "size"),
        purchase_days=("closed_on", "nunique"),
        first_purchase=("closed_on", "min"),
        last_purchase=("closed_on", "max"),
        monetary=("amount", "sum"),
    )
    days = won[["customer_id", "closed_on"]].drop_duplicates().sort_values(["customer_id", "closed_on"])
    days["gap"] = days.groupby("customer_id")["closed_on"].diff().dt.days
    median_gap = days.groupby("customer_id")["gap"].median().rename("median_gap")

    open_ok = (deals["status"] == "open") & ~(deals["created_on"] > today)
    lost_on = deals["closed_on"].fillna(deals["created_on"])
    lost_ok = (deals["status"] == "lost") & ~(lost_on > today)
    other = (
        pd.DataFrame({"customer_id": deals["customer_id"], "open_deals": open_ok, "lost_deals": lost_ok})
        .groupby("customer_id")
        .sum()
    )

    base = customers.set_index("id")
    frame = base.join(purchases).join(median_gap).join(other)
    created_on = local_day(base["created_ts"], timezone)
    known_then = base["created_ts"].isna() | (created_on <= today) | frame["purchases"].notna()
    frame = frame[known_then]

    out = pd.DataFrame(index=frame.index)
    out["purchases"] = frame["purchases"].fillna(0).astype("int64")
    out["purchase_days"] = frame["purchase_days"].fillna(0).astype("int64")
    out["first_purchase_days"] = (today - frame["first_purchase"]).dt.days
    out["recency_days"] = (today - frame["last_purchase"]).dt.days
    out["monetary"] = frame["monetary"].fillna(0.0)
    out["avg_order"] = frame["monetary"] / frame["purchases"]
    out["median_gap"] = frame["median_gap"].astype("float64")
    out["days_to_birthday"] = days_to_birthday(frame["birthday"], as_of)
    out["open_deals"] = frame["open_deals"].fillna(0).astype("int64")
    out["lost_deals"] = frame["lost_deals"].fillna(0).astype("int64")
    out["has_phone"] = _filled(frame["phone"])
    out["has_email"] = _filled(frame["email"])
    out["responsible_id"] = frame["responsible_id"]
    if fields:
        parsed = frame["fields"].map(lambda text: json.loads(text) if isinstance(text, str) and text else {})
        for name, (kind, source) in fields.items():
            raw = parsed.map(lambda d, s=source: None if d.get(s) is None else str(d.get(s)))
            out[name] = _custom_field(raw, kind)
    out.index.name = "id"
    return out


# --- segments ---------------------------------------------------------------------------------------


def segment_frame(features: pd.DataFrame, segments_cfg, custom: dict | None = None) -> pd.DataFrame:
    """One bool column per preset segment (lifecycle, status, cadence, birthday) and custom rule."""
    custom = CUSTOM_RULES if custom is None else custom
    f = features
    out = pd.DataFrame(index=f.index)
    n, r = f["purchases"], f["recency_days"]  # recency is NaN for prospects: every comparison is False
    lc = segments_cfg.lifecycle
    if "lifecycle" in segments_cfg.presets:
        b0, b1, b2 = lc.purchase_bins
        r0, r1 = lc.recency_days
        rows = {"new": (n >= b0) & (n < b1), "promising": (n >= b1) & (n < b2), "regular": n >= b2}
        cols = {"active": r <= r0, "sleeping": (r > r0) & (r <= r1), "asleep": r > r1}
        for row in LIFECYCLE_ROWS:
            for col in LIFECYCLE_COLUMNS:
                out[f"lifecycle.{row}_{col}"] = rows[row] & cols[col]
    if "status" in segments_cfg.presets:
        last = lc.recency_days[1]
        out["status.prospect"] = n == 0
        out["status.current"] = (n >= 1) & (r <= last)
        out["status.former"] = (n >= 1) & (r > last)
    if "cadence" in segments_cfg.presets:
        cd = segments_cfg.cadence
        pdays, gap, first = f["purchase_days"], f["median_gap"], f["first_purchase_days"]
        rhythm = pdays >= cd.min_purchase_days
        lapsed = rhythm & (r > cd.lapse_factor * gap)
        steady = rhythm & ~lapsed
        out["cadence.lapsed"] = lapsed
        out["cadence.frequent"] = steady & (gap <= cd.frequent_max_gap)
        out["cadence.periodic"] = steady & (gap > cd.frequent_max_gap) & (gap <= cd.periodic_max_gap)
        out["cadence.rare"] = (steady & (gap > cd.periodic_max_gap)) | (
            (pdays >= 1) & (pdays < cd.min_purchase_days) & (first > cd.rare_first_purchase_days)
        )
    if "birthday" in segments_cfg.presets:
        out["birthday.soon"] = f["days_to_birthday"] <= segments_cfg.birthday.soon_days
    both = f.join(out)
    for name, (_when, rule) in custom.items():
        both[name] = rule(both).fillna(False).astype(bool)
        out[name] = both[name]
    return out


def membership(segments: pd.DataFrame) -> dict[str, set[int]]:
    return {name: set(segments.index[segments[name].to_numpy()].tolist()) for name in segments.columns}


def long_membership(segments: pd.DataFrame) -> pd.DataFrame:
    parts = [
        pd.DataFrame({"segment": name, "customer_id": segments.index[segments[name].to_numpy()]})
        for name in segments.columns
    ]
    return pd.concat(parts, ignore_index=True)


def membership_diff(segments: pd.DataFrame, stored: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(entered, left) against the stored membership, for the segments computed here."""
    current = long_membership(segments)
    before = stored[stored["segment"].isin(segments.columns)]
    both = current.merge(before, on=["segment", "customer_id"], how="outer", indicator=True)
    entered = both.loc[both["_merge"] == "left_only", ["segment", "customer_id"]]
    left = both.loc[both["_merge"] == "right_only", ["segment", "customer_id"]]
    return entered, left


def check_rules(settings) -> None:
    """The bench config must hold exactly the rules this baseline implements by hand."""
    configured = {r.name: r.when for r in settings.segment}
    expected = {name: when for name, (when, _rule) in CUSTOM_RULES.items()}
    if configured != expected:
        raise ValueError(f"config rules {configured} differ from the baseline's hand-written rules {expected}")


def fields_of(settings) -> dict[str, tuple[str, str]]:
    return {name: (f.type, f.source or name) for name, f in settings.fields.items()}


def digest(ids) -> str:
    """Order-independent fingerprint of a set of customer ids (same on the polars side)."""
    arr = np.sort(np.asarray(list(ids) if isinstance(ids, set) else ids, dtype=np.int64))
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()[:16]


def run(config_path: str | Path, as_of: date) -> dict:
    """The whole plain-way recompute from the state store named in the config, timed per step."""
    from connector.config import load_config

    config = load_config(config_path)
    settings = config.settings
    check_rules(settings)
    db = sqlite_path(settings.state.url)
    crm = settings.crm
    t0 = time.perf_counter()
    customers, deals = read_frames(db, crm.name, crm.customer)
    stored = read_membership(db, crm.name)
    t1 = time.perf_counter()
    features = compute_features(
        customers, deals, as_of=as_of, timezone=crm.timezone, customer=crm.customer, fields=fields_of(settings)
    )
    t2 = time.perf_counter()
    segments = segment_frame(features, settings.segments)
    t3 = time.perf_counter()
    entered, left = membership_diff(segments, stored)
    t4 = time.perf_counter()
    members = membership(segments)
    return {
        "seconds": {
            "read": round(t1 - t0, 3),
            "features": round(t2 - t1, 3),
            "segments": round(t3 - t2, 3),
            "diff": round(t4 - t3, 3),
            "total": round(t4 - t0, 3),
        },
        "customers": int(features.shape[0]),
        "counts": {name: len(ids) for name, ids in members.items()},
        "digests": {name: digest(ids) for name, ids in members.items()},
        "entered": int(len(entered)),
        "left": int(len(left)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--as-of", required=True, type=date.fromisoformat)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.config, args.as_of)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
