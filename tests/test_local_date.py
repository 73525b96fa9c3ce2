"""``rules.features.local_date`` (epoch seconds -> the CRM zone's calendar date) looks offsets up in a table of
the zone's transitions instead of converting every value; it must give exactly what polars' own time-zone
conversion gives, including the seconds on both sides of every transition."""

from __future__ import annotations

import random

import polars as pl
import pytest

from rules.features import local_date, zone_transitions

ZONES = ["Europe/Moscow", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe",
         "Pacific/Chatham", "Europe/Kaliningrad", "America/Sao_Paulo", "UTC"]


def _reference(column: str, tz: str) -> pl.Expr:
    return pl.from_epoch(pl.col(column), time_unit="s").dt.replace_time_zone("UTC").dt.convert_time_zone(tz).dt.date()


@pytest.mark.parametrize("tz", ZONES)
def test_local_date_equals_the_time_zone_conversion(tz: str) -> None:
    rng = random.Random(tz)
    starts, _ = zone_transitions(tz)
    edges = [s + d for s in starts[1:] for d in (-86_401, -3_601, -1, 0, 1, 3_600, 86_400)]
    values = edges + [rng.randint(-2_208_988_800, 4_102_444_800) for _ in range(20_000)] + [None, 0, 1_795_000_000]
    frame = pl.DataFrame({"t": values}, schema={"t": pl.Int64})
    got = frame.select(local_date("t", tz).alias("d")).get_column("d")
    want = frame.select(_reference("t", tz).alias("d")).get_column("d")
    assert got.null_count() == want.null_count() == 1
    mismatched = frame.filter(got.ne_missing(want))
    assert mismatched.is_empty(), mismatched.head(5)


def test_a_zone_with_daylight_saving_has_transitions_and_utc_has_none() -> None:
    starts, offsets = zone_transitions("America/New_York")
    assert len(starts) > 100 and {-18_000, -14_400} <= set(offsets)
    assert zone_transitions("UTC") == ((-2_208_988_800,), (0,))
