"""Product functions of the rule language (bought, times_bought, days_since_bought, spent_on) over
hand-built product rows: day boundaries, name/id/section matching, purchases after as_of, warnings for
unknown products, and the engine adding the columns; plus the date features through the real pipeline."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import polars as pl
import pytest

from rules.language import RuleError, compile_rule, product_warnings
from rules.products import ProductCall, ProductCatalogue, add_rule_inputs, product_columns

AS_OF = date(2026, 3, 31)
TZ = "Europe/Moscow"  # UTC+3 all year
SCHEMA = {"purchases": "number", "has_phone": "bool"}


def ts(day: date, hour: int = 12, minute: int = 0) -> int:
    """Epoch seconds of ``day`` at hour:minute Moscow time."""
    moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=timezone(timedelta(hours=3)))
    return int(moment.timestamp())


def ago(days: int) -> date:
    return AS_OF - timedelta(days=days)


def line(customer, deal, product_id, name, section, quantity, price, closed) -> dict:
    return {"customer_id": customer, "deal_id": deal, "product_id": product_id, "product_name": name,
            "section": section, "quantity": quantity, "price": price, "closed_ts": closed}


ROWS = pl.DataFrame(
    [
        # customer 1: Lenses on as_of - 30 (the boundary of within_days=30), twice in one deal
        line(1, 101, "P-1", "Lenses", "Optics", 2, 500.0, ts(ago(30))),
        line(1, 101, "P-2", "Frame Classic", "Optics", 1, 3000.0, ts(ago(30))),
        # customer 2: Lenses on as_of - 31 (just outside 30) and as_of - 29 in another deal
        line(2, 201, "P-1", "Lenses", "Optics", 1, 500.0, ts(ago(31))),
        line(2, 202, "P-1", "Lenses", "Optics", None, 450.0, ts(ago(29))),  # quantity missing: counts as 1
        # customer 3: Lenses only after as_of (ignored), and a contact-lens cleaner today
        line(3, 301, "P-1", "Lenses", "Optics", 1, 500.0, ts(AS_OF + timedelta(days=1))),
        line(3, 302, "P-9", "lens CLEANER", "Care", 3, 100.0, ts(AS_OF, 23, 59)),
        # customer 4: Lenses at 00:30 Moscow time on as_of - 30 (21:30 UTC of the day before)
        line(4, 401, "P-1", "  LENSES ", "optics", 1, 500.0, ts(ago(30), 0, 30)),
        # customer 4: a deal at 23:59 on as_of - 31 Moscow (already as_of - 31 in UTC too): outside 30
        line(4, 402, "P-2", "Frame Classic", "Optics", 1, 2500.0, ts(ago(31), 23, 59)),
        # a row without a customer: skipped
        line(None, 901, "P-1", "Lenses", "Optics", 1, 500.0, ts(ago(1))),
    ],
    schema_overrides={"quantity": pl.Int64, "customer_id": pl.Int64},
)
FEATURES = pl.DataFrame({"id": [1, 2, 3, 4, 5], "purchases": [1, 2, 1, 2, 0], "has_phone": [True] * 5})


def evaluate(rule: str, rows: pl.DataFrame | None = ROWS, as_of: date = AS_OF) -> list[bool]:
    compiled = compile_rule(rule, SCHEMA, segment="s")
    frame = add_rule_inputs(FEATURES, compiled.today, compiled.products, as_of=as_of, products=rows, timezone=TZ)
    return frame.select(compiled.expr).to_series().to_list()


def members(rule: str, **kwargs) -> list[int]:
    hits = evaluate(rule, **kwargs)
    return [cid for cid, hit in zip(FEATURES["id"], hits) if hit]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ('bought("Lenses")', [1, 2, 4]),  # 3 bought only after as_of
        ('bought("Lenses", within_days=30)', [1, 2, 4]),  # 1 and 4 on day N, 2 on day N - 1
        ('bought("Lenses", within_days=29)', [2]),  # day N + 1 is outside
        ('bought("Lenses", within_days=31)', [1, 2, 4]),
        ('bought("Lenses", within_days=0)', []),
        ('bought("lens cleaner", within_days=0)', [3]),  # bought on as_of itself (23:59 local)
        ('not bought("Lenses")', [3, 5]),  # never bought (by as_of) is false, not unknown
        ('not bought("Lenses", within_days=29)', [1, 3, 4, 5]),
        ('bought("Frame Classic", within_days=30)', [1]),  # 4's frame is on as_of - 31
        ('bought("Frame Classic", within_days=31)', [1, 4]),
        ('bought("P-2")', [1, 4]),  # by product id
        ('bought("p-2")', []),  # ids match exactly
        ('bought("LENSES")', [1, 2, 4]),  # names ignore case and surrounding/repeated spaces
        ('bought(" lenses  ")', [1, 2, 4]),
        ('bought("Frame  classic")', [1, 4]),
        ('bought("section:Optics")', [1, 2, 4]),
        ('bought("section:OPTICS", within_days=30)', [1, 2, 4]),
        ('bought("Section: care")', [3]),
        ('bought("section:Frames")', []),
        ('bought("Optics")', []),  # a section name is not a product name
        ('bought("Lenses") and not bought("Frame Classic")', [2]),
        ('times_bought("Lenses") == 1', [1, 4]),  # one deal with two units is one time
        ('times_bought("Lenses") == 2', [2]),
        ('times_bought("Lenses") == 0', [3, 5]),
        ('times_bought("Lenses", within_days=30) >= 1', [1, 2, 4]),
        ('times_bought("Lenses", within_days=29) == 1', [2]),
        ('times_bought("section:optics") == 2', [2, 4]),  # distinct deals: 101 / 201+202 / 401+402
        ('spent_on("Lenses") == 1000', [1]),  # 2 x 500
        ('spent_on("Lenses") == 950', [2]),  # 500 + 450 x (missing quantity = 1)
        ('spent_on("Lenses", within_days=29) == 450', [2]),
        ('spent_on("Lenses") == 0', [3, 5]),
        ('spent_on("section:Optics") > 3000', [1]),  # 4000 / 950 / 3000
        ('spent_on("section:Optics") >= 3000', [1, 4]),
        ('spent_on("lens cleaner") == 300', [3]),
        ('days_since_bought("Lenses") == 30', [1, 4]),
        ('days_since_bought("Lenses") == 29', [2]),  # the last purchase counts
        ('days_since_bought("Lenses") > 29', [1, 4]),
        ('days_since_bought("Lenses") == null', [3, 5]),  # never bought: null
        ('not (days_since_bought("Lenses") > 29)', [2]),  # null stays unselected
        ('days_since_bought("lens cleaner") == 0', [3]),
        ('days_since_bought("Lenses") >= 30 or times_bought("section:care") > 0', [1, 3, 4]),
        ('spent_on("Lenses") / times_bought("Lenses") == 475', [2]),  # 0 / 0 for 3 and 5 is null
    ],
)
def test_product_functions(rule, expected):
    assert members(rule) == expected


def test_day_boundaries_n_minus_one_n_n_plus_one():
    for n in (0, 1, 7, 30, 365):
        # customer 1 bought on day as_of - (n - 1) (tomorrow when n = 0: ignored), 2 on as_of - n, 3 on as_of - (n + 1)
        rows = pl.DataFrame(
            [line(c, c, "A", "Apple", "Fruit", 1, 1.0, ts(ago(d))) for c, d in ((1, n - 1), (2, n), (3, n + 1))],
            schema_overrides={"quantity": pl.Int64},
        )
        assert members(f'bought("Apple", within_days={n})', rows=rows) == ([2] if n == 0 else [1, 2]), n
        assert members(f'times_bought("A", within_days={n}) == 0', rows=rows) == ([1, 3, 4, 5] if n == 0 else [3, 4, 5])
        assert members(f'days_since_bought("Apple") == {n}', rows=rows) == [2]
        assert members(f'days_since_bought("Apple") == {n + 1}', rows=rows) == [3]


def test_purchases_after_as_of_are_ignored_everywhere():
    rows = pl.DataFrame(
        [line(1, 1, "A", "Apple", "Fruit", 1, 10.0, ts(AS_OF + timedelta(days=1), 0, 1)),
         line(1, 2, "A", "Apple", "Fruit", 1, 7.0, ts(ago(3)))],
        schema_overrides={"quantity": pl.Int64},
    )
    assert members('times_bought("Apple") == 1 and spent_on("Apple") == 7', rows=rows) == [1]
    assert members('days_since_bought("Apple") == 3', rows=rows) == [1]
    # a day later the later purchase counts
    later = AS_OF + timedelta(days=1)
    assert members('times_bought("Apple") == 2 and days_since_bought("Apple") == 0', rows=rows, as_of=later) == [1]


def test_without_product_rows_product_rules_select_nobody():
    for rule in ('bought("Lenses")', 'not bought("Lenses")', 'times_bought("Lenses") == 0',
                 'spent_on("Lenses") >= 0', 'days_since_bought("Lenses") == null'):
        assert members(rule, rows=None) == [], rule
    # the whole rule, not only its product part: no campaign fires on "never bought" before rows exist
    assert members('bought("Lenses") or purchases == 0', rows=None) == []
    assert members('bought("Lenses") or purchases == 0') == [1, 2, 4, 5]


def test_empty_product_rows_mean_nobody_bought():
    empty = ROWS.clear()
    assert members('not bought("Lenses")', rows=empty) == [1, 2, 3, 4, 5]
    assert members('times_bought("Lenses") == 0 and spent_on("Lenses") == 0', rows=empty) == [1, 2, 3, 4, 5]


def test_closed_on_dates_instead_of_timestamps():
    rows = ROWS.with_columns(
        pl.from_epoch("closed_ts", time_unit="s").dt.replace_time_zone("UTC").dt.convert_time_zone(TZ).dt.date()
        .alias("closed_on")
    ).drop("closed_ts")
    assert members('bought("Lenses", within_days=30)', rows=rows) == [1, 2, 4]
    assert members('bought("Lenses", within_days=29)', rows=rows) == [2]


def test_calls_share_columns_and_product_columns_frame():
    compiled = compile_rule('bought("Lenses") or bought("Lenses") and times_bought("Lenses", within_days=7) > 0'
                            ' or bought("section:Optics") or bought("SECTION: optics")', SCHEMA, segment="s")
    names = [c.name for c in compiled.products]
    assert len(names) == 5 and len(set(names)) == 3  # equal calls and equal sections share one column
    assert compiled.references == frozenset()  # hidden columns are not feature references
    assert all(n.startswith("__prod_") for n in names)
    table = product_columns(ROWS, compiled.products, as_of=AS_OF, timezone=TZ).sort("customer_id")
    assert table.columns[0] == "customer_id" and table.height == 4  # customers 1-4; the row without one skipped
    bought = ProductCall("bought", "Lenses")
    assert table.get_column(bought.name).to_list() == [True, True, False, True]
    assert ProductCall("bought", "Lenses", 7).name != bought.name != ProductCall("spent_on", "Lenses").name


def test_product_features_of_large_frames_are_vectorised():
    n = 50_000
    rows = pl.DataFrame({
        "customer_id": pl.int_range(0, n, eager=True) % 10_000,
        "deal_id": pl.int_range(0, n, eager=True),
        "product_id": (pl.int_range(0, n, eager=True) % 7).cast(pl.String),
        "product_name": pl.Series(["x"] * n),
        "section": pl.Series(["s"] * n),
        "quantity": pl.Series([1] * n),
        "price": pl.Series([2.0] * n),
        "closed_ts": pl.Series([ts(ago(i % 100)) for i in range(n)]),
    })
    features = pl.DataFrame({"id": pl.int_range(0, 10_000, eager=True), "purchases": [1] * 10_000,
                             "has_phone": [True] * 10_000})
    compiled = compile_rule('times_bought("3", within_days=49) >= 1 and spent_on("section:s") == 10', SCHEMA,
                            segment="s")
    frame = add_rule_inputs(features, compiled.today, compiled.products, as_of=AS_OF, products=rows, timezone=TZ)
    got = frame.select(compiled.expr).to_series()
    # row d: customer d % 10000, deal d, product d % 7, bought d % 100 days before as_of; five rows each, 2.0 apiece
    expected = []
    for c in range(10_000):
        deals = [c + 10_000 * k for k in range(5)]
        hit = any(d % 7 == 3 and d % 100 <= 49 for d in deals)
        expected.append(hit)
    assert got.to_list() == expected and 100 < sum(expected) < 9_900


# --- compile-time checks and warnings -------------------------------------------------

CATALOGUE = ProductCatalogue.from_rows(ROWS)


def test_catalogue_from_rows():
    assert CATALOGUE.ids == {"P-1", "P-2", "P-9"}
    # spellings differing in case and spaces are one name: the most frequent one is shown
    assert CATALOGUE.names == ("Frame Classic", "Lenses", "lens CLEANER")
    assert CATALOGUE.sections == ("Care", "Optics")


def test_unknown_products_are_warnings_with_near_matches_not_errors():
    rule = 'bought("Lense") or bought("lenses") or bought("P-2") or bought("section:Optic")\n or bought("Zzzz")'
    compiled = compile_rule(rule, SCHEMA, segment="vip", catalogue=CATALOGUE)
    assert compiled.warnings == (
        "segment 'vip': when: unknown product 'Lense' at line 1, column 1 (near matches: 'Lenses');"
        " the rule treats it as never bought",
        "segment 'vip': when: unknown section 'section:Optic' at line 1, column 57 (near matches: 'section:Optics');"
        " the rule treats it as never bought",
        "segment 'vip': when: unknown product 'Zzzz' at line 2, column 5 (no similar product in the catalogue);"
        " the rule treats it as never bought",
    )
    frame = add_rule_inputs(FEATURES, False, compiled.products, as_of=AS_OF, products=ROWS, timezone=TZ)
    assert frame.select(compiled.expr).to_series().to_list() == [True, True, False, True, False]
    assert compile_rule(rule, SCHEMA, segment="vip").warnings == ()  # no catalogue, nothing to check against
    near = compile_rule('bought("frame clasic")', SCHEMA, segment="v", catalogue=CATALOGUE).warnings
    assert "near matches: 'Frame Classic'" in near[0]
    assert compile_rule('bought("Lenses") and bought("section:care")', SCHEMA, segment="v",
                        catalogue=CATALOGUE).warnings == ()


def test_product_warnings_for_rules_checked_later():
    rules = {"a": compile_rule('bought("Lenses")', SCHEMA, segment="a"),
             "b": compile_rule('spent_on("Lensez") > 0', SCHEMA, segment="b")}
    assert product_warnings(rules, CATALOGUE) == [
        "segment 'b': when: unknown product 'Lensez' at line 1, column 1 (near matches: 'Lenses');"
        " the rule treats it as never bought"
    ]


@pytest.mark.parametrize(
    "rule, line_no, column, reason",
    [
        ("bought()", 1, 7, "bought() needs a product"),
        ('bought("")', 1, 8, "bought(): empty product name"),
        ('bought("section:  ")', 1, 8, "bought(): empty product name"),
        ("bought(Lenses)", 1, 8, "bought() needs the product as quoted text"),
        ('bought("a", "b")', 1, 13, "bought() takes one product"),
        ('bought("a", within_day=3)', 1, 13, "bought() has no option 'within_day'"),
        ('bought("a", within_days=3, within_days=4)', 1, 28, "bought(): 'within_days' given twice"),
        ('bought("a", within_days=-1)', 1, 25, "within_days must be a whole number of days, 0 or more"),
        ('bought("a", within_days=1.5)', 1, 25, "within_days must be a whole number of days, 0 or more"),
        ('bought("a", within_days="30")', 1, 25, "within_days must be a whole number of days, 0 or more"),
        ('days_since_bought("a", within_days=3) > 1', 1, 24, "days_since_bought() has no option 'within_days'"),
        ('bought("a") > 1', 1, 13, "cannot compare bool 'bought(\"a\")' with number 1"),
        ('times_bought("a")', 1, 1, "expected a true/false condition, got number 'times_bought(\"a\")'"),
        ('spent_on("a") contains "x"', 1, 15, "'contains' applies to strings, not number 'spent_on(\"a\")'"),
        ('bougth("a")', 1, 7, "unexpected '('"),
        ('purchases > 1 and BOUGHT("a")', 1, 25, "unexpected '('"),
        ("bought > 1", 1, 1, "unknown feature 'bought'"),
        ('bought("a" within_days=3)', 1, 12, "unexpected 'within_days'"),
    ],
)
def test_product_call_errors_point_at_the_position(rule, line_no, column, reason):
    with pytest.raises(RuleError) as info:
        compile_rule(rule, SCHEMA, segment="vip")
    err = info.value
    assert (err.line, err.column, err.reason) == (line_no, column, reason)


def test_product_call_error_hints():
    def hint(rule: str) -> str:
        with pytest.raises(RuleError) as info:
            compile_rule(rule, SCHEMA, segment="vip")
        return info.value.hint or ""

    assert hint('bougth("a")') == "'bougth' is not a function; did you mean 'bought'?"
    assert "the functions are bought, times_bought, days_since_bought, spent_on" in hint('open("x")')
    assert hint("bought > 1") == "'bought' is a function: bought(\"product name\")"
    assert hint('days_since_bought("a", within_days=3)') == "days_since_bought() takes no options"


# --- the engine adds the columns ------------------------------------------------------


def test_engine_evaluates_product_and_today_rules(ws):
    config = ws.config(
        """
[[segment]]
name = "lens_buyers"
when = 'bought("Lenses", within_days=30)'

[[segment]]
name = "lens_lapsed"
when = 'bought("section:optics") and not lens_buyers and days_since_bought("Lenses") < 365'

[[segment]]
name = "recent"
when = "last_purchase >= today - 30"
"""
    )
    engine = config.rules
    features = FEATURES.with_columns(
        pl.Series("last_purchase", [ago(30), ago(31), None, AS_OF, ago(400)]),
    )
    for name in ("recency_days", "monetary", "purchase_days", "first_purchase_days", "avg_order", "median_gap",
                 "days_to_birthday", "open_deals", "lost_deals"):
        features = features.with_columns(pl.lit(None, pl.Float64).alias(name))
    features = features.with_columns(pl.lit(False).alias("has_email"), pl.lit("1").alias("responsible_id"),
                                     pl.lit(None, pl.Date).alias("birthday"), pl.lit(None, pl.Date).alias("first_purchase"))
    result = engine.evaluate(features, {}, as_of=AS_OF, products=ROWS, timezone=TZ)
    assert result.filter("lens_buyers")["id"].to_list() == [1, 2, 4]
    assert result.filter("lens_lapsed")["id"].to_list() == []
    assert result.filter("recent")["id"].to_list() == [1, 4]
    assert not any(c.startswith("__") for c in result.columns)
    later = engine.evaluate(features, {}, as_of=AS_OF + timedelta(days=1), products=ROWS, timezone=TZ)
    assert later.filter("lens_buyers")["id"].to_list() == [2, 3]  # 3's purchase of as_of + 1 now counts
    assert later.filter("lens_lapsed")["id"].to_list() == [1, 4]
    unknown = engine.evaluate(features, {}, as_of=AS_OF, timezone=TZ)  # no product rows pulled
    assert unknown.filter(pl.col("lens_buyers") | pl.col("lens_lapsed")).height == 0
    assert unknown.filter("recent")["id"].to_list() == [1, 4]


# --- date features through the real pipeline ------------------------------------------


def test_date_features_and_today_through_the_pipeline(ws):
    from connector.pipeline import compute, make_source, open_store
    from tests.conftest import CONTACT_HEADER

    as_of = date(2026, 11, 23)
    ws.write_contacts([{"id": 1, "birthday": "1990-05-01"}, {"id": 2}, {"id": 3, "birthday": "2001-01-01"}],
                      extra_columns=[] if "birthday" in CONTACT_HEADER else ["birthday"])
    ws.write_deals([
        {"id": 10, "contact_id": 1, "status": "won", "amount": 100, "closed_at": (as_of - timedelta(days=30)).isoformat()},
        {"id": 11, "contact_id": 1, "status": "won", "amount": 100, "closed_at": (as_of - timedelta(days=200)).isoformat()},
        {"id": 12, "contact_id": 3, "status": "won", "amount": 100, "closed_at": (as_of - timedelta(days=31)).isoformat()},
    ])
    config = ws.config(
        """
[[segment]]
name = "recent_month"
when = "last_purchase >= today - 30"

[[segment]]
name = "born_before_2000"
when = "birthday < 2000-01-01"

[[segment]]
name = "old_customer"
when = "first_purchase <= 2026-06-01 and today - first_purchase > 150"
"""
    )
    store = open_store(config)
    try:
        store.apply_pull(make_source(config).pull())
        comp = compute(store, config, as_of)
    finally:
        store.close()
    row = comp.features.filter(pl.col("id") == 1).row(0, named=True)
    assert row["last_purchase"] == as_of - timedelta(days=30) and row["first_purchase"] == as_of - timedelta(days=200)
    assert row["birthday"] == date(1990, 5, 1)
    assert comp.features.filter(pl.col("id") == 2)["last_purchase"].item() is None
    by_segment = {n: comp.membership.filter(pl.col(n))["id"].to_list() for n in
                  ("recent_month", "born_before_2000", "old_customer")}
    assert by_segment == {"recent_month": [1], "born_before_2000": [1], "old_customer": [1]}
