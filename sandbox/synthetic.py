"""A synthetic but realistic customer base, generated vectorised with numpy (1M customers in seconds).

Realism that matters to the segments:

* skewed purchase counts: a third of customers never buy (prospects); buyers' appetite is lognormal, so
  most buy once or twice and a long tail buys dozens of times;
* each buyer has an own rhythm (a personal active window), and about 40 % stop buying at some point,
  which is what ``cadence.lapsed`` has to find;
* seasonality: purchases lean towards November-December and away from summer;
* lost and open deals, deals without a contact (about 1 %), same-day repeat purchases, birthdays
  including 29 February, missing phones and e-mails, responsible reps, two custom fields.

Frames match the mirror's columns (UTC epoch seconds); :func:`write_csv` writes the CSV source format.
"""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

DAY = 86_400
MONTH_WEIGHT = np.array([0.8, 0.85, 1.0, 1.0, 0.95, 0.75, 0.7, 0.75, 1.0, 1.05, 1.35, 1.6])


def generate(
    customers: int, deals: int, *, today: date, seed: int = 7, timezone: str = "Europe/Moscow", years: int = 4,
    not_after: int | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``today`` at noon (in ``timezone``) is the end of the generated history. ``not_after`` (epoch seconds,
    a CRM's "now") caps every creation and closing moment: before noon on ``today`` a CRM cannot already hold
    a deal created or closed at noon, and an incremental pull would read such a record again and again
    (DATE_MODIFY / updated_at later than any cursor). The sandboxes pass their clock minus a minute, so the
    history is over before a client's first pull starts (a cursor is inclusive to the second); a capped
    moment stays on its local day except in the first minute after midnight."""
    rng = np.random.default_rng(seed)
    tz = ZoneInfo(timezone)
    end = int(datetime.combine(today, time(12, 0), tz).timestamp())
    start = end - years * 365 * DAY

    ids = np.arange(1, customers + 1, dtype=np.int64)
    created = rng.integers(start, end - 7 * DAY, customers)
    buyer = rng.random(customers) >= 0.33
    appetite = np.where(buyer, rng.lognormal(0.0, 1.1, customers), 0.0)
    churn = rng.random(customers) < 0.4
    stop = np.where(churn, created + (rng.random(customers) * (end - created)).astype(np.int64), end)

    # Deals go to customers in proportion to appetite (a few to no one, like a web-form lead).
    weights = appetite / appetite.sum()
    owner_idx = rng.choice(customers, size=deals, p=weights)
    contact = ids[owner_idx]
    no_contact = rng.random(deals) < 0.01
    lo, hi = created[owner_idx], np.maximum(stop[owner_idx], created[owner_idx] + DAY)
    moment = _seasonal_times(rng, lo, hi)
    same_day = rng.random(deals) < 0.03  # a second order on the day of a previous one
    moment = np.where(same_day, lo + (moment - lo) // DAY * DAY, moment)

    roll = rng.random(deals)
    status = np.where(roll < 0.68, "won", np.where(roll < 0.88, "lost", "open"))
    is_open = status == "open"
    created_deal = np.where(is_open, np.maximum(end - rng.integers(0, 120, deals) * DAY, lo), moment - rng.integers(0, 14, deals) * DAY)
    closed = moment
    if not_after is not None:
        created_deal = np.minimum(created_deal, not_after)
        closed = np.minimum(closed, not_after)
        created = np.minimum(created, not_after)
    amount = np.round(rng.lognormal(8.3, 0.9, deals), 2)

    deals_df = pl.DataFrame(
        {
            "id": np.arange(1, deals + 1, dtype=np.int64),
            "contact_id": contact,
            "company_id": pl.Series("company_id", [None] * deals, dtype=pl.Int64),
            "status": status,
            "amount": amount,
            "currency": np.full(deals, "RUB"),
            "created_ts": created_deal.astype(np.int64),
            "closed_ts": closed,
        }
    ).with_columns(
        pl.when(pl.Series(no_contact)).then(None).otherwise(pl.col("contact_id")).alias("contact_id"),
        pl.when(pl.Series(is_open)).then(None).otherwise(pl.col("closed_ts")).alias("closed_ts"),
    )

    born = rng.integers(-20 * 365, 36 * 365, customers)  # days since 1950-01-01 -> 1930..2005
    birthday = pl.Series("birthday", (np.datetime64("1950-01-01") + born.astype("timedelta64[D]")))
    has_bday = rng.random(customers) < 0.7
    leap_day = rng.random(customers) < 0.002
    source = rng.choice(np.array(["site", "shop", "partner"]), customers, p=[0.5, 0.35, 0.15])
    points = rng.integers(0, 5000, customers)
    customers_df = pl.DataFrame(
        {
            "id": ids,
            "name": pl.Series([f"Customer {i}" for i in range(1, customers + 1)]) if customers <= 200_000 else pl.Series(ids).cast(pl.String),
            "phone": np.where(rng.random(customers) < 0.8, (79_000_000_000 + rng.integers(0, 999_999_999, customers)).astype(str), None),
            "email": np.where(rng.random(customers) < 0.6, np.char.add(ids.astype(str), "@example.ru"), None),
            "birthday": birthday.cast(pl.Date),
            "responsible_id": (1 + rng.integers(0, 10, customers)).astype(str),
            "created_ts": created,
            "source": source,
            "points": points,
        }
    ).with_columns(
        pl.when(pl.Series(leap_day)).then(pl.date(pl.lit(1988), 2, 29))
        .when(pl.Series(has_bday)).then(pl.col("birthday")).otherwise(None).alias("birthday"),
        pl.concat_str(pl.lit('{"source":"'), pl.col("source"), pl.lit('","points":"'), pl.col("points").cast(pl.String), pl.lit('"}')).alias("fields"),
    )
    return customers_df, deals_df


def _seasonal_times(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Uniform times in [lo, hi) reshaped by month weights with a few rounds of rejection sampling."""
    out = lo + (rng.random(lo.size) * (hi - lo)).astype(np.int64)
    todo = np.ones(lo.size, dtype=bool)
    for _ in range(6):
        months = (out.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12)
        accept = rng.random(lo.size) < MONTH_WEIGHT[months] / MONTH_WEIGHT.max()
        todo &= ~accept
        if not todo.any():
            break
        fresh = lo + (rng.random(lo.size) * (hi - lo)).astype(np.int64)
        out = np.where(todo, fresh, out)
    return out


def mirror_rows(customers_df: pl.DataFrame, deals_df: pl.DataFrame, portal_id: int,
                status_codes: dict[str, int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The generated frames shaped as the mirror tables, as the database stores them (for bulk seeding of a
    state store): the portal's integer key, deal statuses as their codes (``status_codes``: the store's,
    connector.store.schema.DEAL_STATUS, passed in because the sandbox imports nothing of the connector)."""
    cust = customers_df.select(
        pl.lit(portal_id).alias("portal_id"), pl.lit("contact").alias("entity"), "id", "name", "phone", "email",
        pl.col("birthday").dt.to_string("%Y-%m-%d"), "responsible_id", "created_ts", "fields",
    ).sort("id")
    codes = dict(status_codes)
    deal = deals_df.select(pl.lit(portal_id).alias("portal_id"), "id", "contact_id", "company_id",
                           pl.col("status").replace_strict(codes, return_dtype=pl.Int64), "amount", "currency",
                           "created_ts", "closed_ts").sort("id")
    return cust, deal


def write_csv(folder: Path, customers_df: pl.DataFrame, deals_df: pl.DataFrame, *, timezone: str = "Europe/Moscow") -> None:
    """Write the CSV source format (ISO 8601 with offsets; extra contact columns become custom fields)."""
    folder.mkdir(parents=True, exist_ok=True)

    def iso(col: str) -> pl.Expr:
        return (
            pl.from_epoch(pl.col(col), time_unit="s").dt.replace_time_zone("UTC").dt.convert_time_zone(timezone)
            .dt.to_string("%Y-%m-%dT%H:%M:%S%:z")
        )

    customers_df.select(
        "id", "name", "phone", "email", pl.col("birthday").dt.to_string("%Y-%m-%d"), "responsible_id",
        iso("created_ts").alias("created_at"), "source", "points",
    ).write_csv(folder / "contacts.csv")
    deals_df.select(
        "id", "contact_id", "company_id", "status", "amount", "currency",
        iso("created_ts").alias("created_at"), iso("closed_ts").alias("closed_at"),
    ).write_csv(folder / "deals.csv")

