"""Product functions of the rule language: what each call means, and the per-customer columns behind it.

A rule such as ``bought("Lenses", within_days=30)`` is compiled (in :mod:`rules.language`) to a reference
to one hidden column, ``__prod_<hash>``, and a :class:`ProductCall` saying how to fill it. Before the rules
are evaluated, :func:`add_rule_inputs` computes every such column for all customers at once from the
product rows of won deals (one polars ``group_by``, no loop per customer) and joins it to the feature
frame, so each rule stays one vectorised expression over one row per customer.

Product rows (one line of a won deal): ``customer_id``, ``deal_id``, ``product_id``, ``product_name``,
``section``, ``quantity``, ``price``, ``closed_ts`` (UTC epoch seconds of the deal's close; or a
``closed_on`` date column already in the CRM time zone).

Semantics:

* ``P`` names a product by its id (exact text) or its name (case and repeated spaces ignored);
  ``section:NAME`` names every product of the section NAME (case and repeated spaces ignored).
* A purchase is dated by its deal's close date in the CRM time zone; purchases after ``as_of`` are
  ignored. ``within_days=N`` keeps purchases on a day ``d`` with ``as_of - d <= N`` (so N = 0 is
  ``as_of`` only, N = 30 reaches back to the 30th day before ``as_of``).
* ``bought`` is true when at least one such purchase exists, else false; ``times_bought`` counts the
  distinct deals containing P; ``spent_on`` sums ``price * quantity`` (a missing quantity counts as 1);
  ``days_since_bought`` is ``as_of`` minus the last purchase day, null when never bought.
* Without product rows (none pulled yet) every product column is null and a rule using a product
  function selects nobody, however it is written (``not bought(...)``, ``days_since_bought(...) == null``):
  unknown is not "never bought". The compiler ANDs such a rule with ``__products_known``.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

import polars as pl

from rules.features import local_date

__all__ = [
    "PRODUCT_FUNCTIONS", "SECTION_PREFIX", "TODAY_COLUMN", "KNOWN_COLUMN", "ProductCall", "ProductCatalogue",
    "product_columns", "add_rule_inputs", "match_expr",
]

# function -> (result type, accepts within_days)
PRODUCT_FUNCTIONS: dict[str, tuple[str, bool]] = {
    "bought": ("bool", True),
    "times_bought": ("number", True),
    "days_since_bought": ("number", False),
    "spent_on": ("number", True),
}
SECTION_PREFIX = "section:"
TODAY_COLUMN = "__today"  # the `today` of a rule: as_of, added as a column before evaluation
KNOWN_COLUMN = "__products_known"  # true when product rows were given: a product rule is false without them

_FILL = {"bought": False, "times_bought": 0, "spent_on": 0.0}  # days_since_bought stays null
_DTYPES = {"bought": pl.Boolean, "times_bought": pl.Int64, "spent_on": pl.Float64, "days_since_bought": pl.Int64}


def normalise(text: str) -> str:
    """How names are matched: lower case (Unicode, as polars does it), runs of spaces made one, trimmed."""
    return " ".join(text.split()).lower()


def _normalised(column: pl.Expr) -> pl.Expr:
    return column.cast(pl.String).str.replace_all(r"\s+", " ").str.strip_chars().str.to_lowercase()


@dataclass(frozen=True)
class ProductCall:
    """One product function call in a rule. Equal calls (same function, product and window) share a column."""

    function: str  # a key of PRODUCT_FUNCTIONS
    ref: str  # the product as written: an id, a name, or section:NAME
    within_days: int | None = None
    line: int = field(default=1, compare=False)
    column: int = field(default=1, compare=False)

    @property
    def is_section(self) -> bool:
        return self.ref[: len(SECTION_PREFIX)].lower() == SECTION_PREFIX

    @property
    def key(self) -> str:
        """The id/name (or section name) to match, trimmed."""
        return self.ref[len(SECTION_PREFIX):].strip() if self.is_section else self.ref.strip()

    @property
    def type(self) -> str:
        return PRODUCT_FUNCTIONS[self.function][0]

    @property
    def name(self) -> str:
        """The hidden column holding this call's value."""
        kind = "section" if self.is_section else "product"
        key = normalise(self.key) if self.is_section else self.key
        digest = hashlib.sha1(f"{self.function}\0{kind}\0{key}\0{self.within_days}".encode()).hexdigest()
        return f"__prod_{digest[:16]}"

    def text(self) -> str:
        window = "" if self.within_days is None else f", within_days={self.within_days}"
        return f"{self.function}({self.ref!r}{window})"


@dataclass(frozen=True)
class ProductCatalogue:
    """The products and sections a portal knows, for load-time warnings about unknown product names."""

    ids: frozenset[str] = frozenset()
    names: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()

    @classmethod
    def from_rows(cls, rows: pl.DataFrame) -> ProductCatalogue:
        """The distinct ids, names and sections of product rows; of names that differ only in case and
        spaces, the most frequent spelling (spaces tidied) is kept."""
        def distinct(column: str) -> list[str]:
            if column not in rows.columns:
                return []
            values = rows.get_column(column).cast(pl.String).drop_nulls().str.replace_all(r"\s+", " ").str.strip_chars()
            counts = values.filter(values != "").value_counts(sort=True, name="n")
            best: dict[str, str] = {}
            for value, _n in counts.sort(["n", column], descending=[True, False]).iter_rows():
                best.setdefault(normalise(value), value)
            return sorted(best.values())

        return cls(frozenset(distinct("product_id")), tuple(distinct("product_name")), tuple(distinct("section")))

    def knows(self, call: ProductCall) -> bool:
        if call.is_section:
            return normalise(call.key) in {normalise(s) for s in self.sections}
        return call.key in self.ids or normalise(call.key) in {normalise(n) for n in self.names}

    def near(self, call: ProductCall, n: int = 3) -> list[str]:
        """Up to ``n`` known names (or ``section:NAME``s) close to the call's product, best first."""
        pool = list(self.sections) if call.is_section else [*self.names, *sorted(self.ids)]
        by_norm: dict[str, str] = {}
        for item in pool:
            by_norm.setdefault(normalise(item), item)
        found = [by_norm[m] for m in difflib.get_close_matches(normalise(call.key), list(by_norm), n=n, cutoff=0.6)]
        return [SECTION_PREFIX + f for f in found] if call.is_section else found


@dataclass(frozen=True)
class Lookup:
    """The distinct product ids, names and sections of a frame of rows: a call is matched on these few values
    and then picked out of the rows with ``is_in``, instead of normalising millions of strings per call."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    sections: tuple[str, ...]

    @classmethod
    def of(cls, rows: pl.DataFrame) -> Lookup:
        def distinct(column: str) -> tuple[str, ...]:
            if column not in rows.columns:
                return ()
            return tuple(rows.get_column(column).unique().drop_nulls().cast(pl.String).to_list())

        return cls(distinct("product_id"), distinct("product_name"), distinct("section"))


def match_expr(call: ProductCall, lookup: Lookup | None = None) -> pl.Expr:
    """True on the product rows the call's product (id, name or section) names."""
    return _match(call, lookup)


def _match(call: ProductCall, lookup: Lookup | None = None) -> pl.Expr:
    if lookup is not None:
        key = normalise(call.key)
        if call.is_section:
            return pl.col("section").is_in([v for v in lookup.sections if normalise(v) == key])
        ids = [v for v in lookup.ids if v.strip() == call.key]
        names = [v for v in lookup.names if normalise(v) == key]
        return pl.col("product_id").is_in(ids) | pl.col("product_name").is_in(names)
    if call.is_section:
        return _normalised(pl.col("section")) == normalise(call.key)
    by_name = _normalised(pl.col("product_name")) == normalise(call.key)
    return (pl.col("product_id").cast(pl.String).str.strip_chars() == call.key) | by_name


def _aggregate(call: ProductCall, as_of_day: int, lookup: Lookup | None = None) -> pl.Expr:
    mask = _match(call, lookup).fill_null(False)
    if call.within_days is not None:
        mask = mask & (pl.lit(as_of_day) - pl.col("_day") <= call.within_days)
    if call.function == "bought":
        value = mask.any()
    elif call.function == "times_bought":
        value = pl.col("deal_id").filter(mask).drop_nulls().n_unique().cast(pl.Int64)
    elif call.function == "spent_on":
        value = pl.col("_amount").filter(mask).sum().cast(pl.Float64)
    else:  # days_since_bought
        value = (pl.lit(as_of_day) - pl.col("_day").filter(mask).max()).cast(pl.Int64)
    return value.alias(call.name)


def _unique(calls: Iterable[ProductCall]) -> list[ProductCall]:
    seen: dict[str, ProductCall] = {}
    for call in calls:
        seen.setdefault(call.name, call)
    return list(seen.values())


def product_columns(rows: pl.DataFrame, calls: Sequence[ProductCall], *, as_of: date, timezone: str = "UTC"
                    ) -> pl.DataFrame:
    """``customer_id`` plus one column per distinct call, for every customer with a product row by ``as_of``.

    Customers without rows are absent here; :func:`add_rule_inputs` fills them in (false / 0 / null).
    """
    calls = _unique(calls)
    day = pl.col("closed_on") if "closed_on" in rows.columns else local_date("closed_ts", timezone)
    quantity = pl.col("quantity").cast(pl.Float64) if "quantity" in rows.columns else pl.lit(1.0)
    as_of_day = (as_of - date(1970, 1, 1)).days
    prepared = (
        rows.lazy()
        .filter(pl.col("customer_id").is_not_null())
        .with_columns(
            day.cast(pl.Date).cast(pl.Int64).alias("_day"),
            (pl.col("price").cast(pl.Float64) * quantity.fill_null(1.0)).alias("_amount"),
        )
        .filter(pl.col("_day") <= as_of_day)
    )
    if not calls:
        return prepared.select("customer_id").unique().collect()
    lookup = Lookup.of(rows)
    return prepared.group_by("customer_id").agg(_aggregate(c, as_of_day, lookup) for c in calls).collect()


def add_rule_inputs(
    features: pl.DataFrame,
    today: bool,
    calls: Sequence[ProductCall],
    *,
    as_of: date | None,
    products: pl.DataFrame | None = None,
    timezone: str = "UTC",
) -> pl.DataFrame:
    """The feature frame (``id`` per customer) with the hidden columns the rules need: ``__today`` when a
    rule uses ``today``, and one column per product call. ``products`` None means no product rows are
    known (not pulled): product columns are then null for everybody."""
    calls = _unique(calls)
    if today or calls:
        if as_of is None:
            raise ValueError("a segment rule uses today or a product function: evaluate needs as_of")
    out = features
    if today:
        out = out.with_columns(pl.lit(as_of, pl.Date).alias(TODAY_COLUMN))
    if not calls:
        return out
    out = out.with_columns(pl.lit(products is not None).alias(KNOWN_COLUMN))
    if products is None:
        return out.with_columns(pl.lit(None, _DTYPES[c.function]).alias(c.name) for c in calls)
    assert as_of is not None
    table = product_columns(products, calls, as_of=as_of, timezone=timezone)
    table = table.with_columns(pl.col("customer_id").cast(out.schema["id"], strict=False)).rename({"customer_id": "id"})
    out = out.drop([c.name for c in calls if c.name in out.columns]).join(table, on="id", how="left", maintain_order="left")
    return out.with_columns(
        pl.col(c.name).fill_null(_FILL[c.function]).cast(_DTYPES[c.function]) if c.function in _FILL
        else pl.col(c.name).cast(_DTYPES[c.function])
        for c in calls
    )
