"""The cycle: pull -> mirror -> features -> segments -> membership diff (plan and apply come later).

``compute`` reads only the mirror, so ``report`` can evaluate any ``as_of`` without touching stored
membership. ``sync`` pulls, computes for today in the CRM time zone and records who entered and who left
each segment, inside a run record that says how it ended.
"""

from __future__ import annotations

import json

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import polars as pl

from adapters.base import CrmSource, RowError
from adapters.csv_files import CsvSource
from connector.config import LoadedConfig
from connector.store import StateStore
from rules.engine import SegmentEngine
from rules.features import FeatureStats, compute_features

log = logging.getLogger("lifecycle.pipeline")
MAX_ROW_ERRORS_LOGGED = 50


@dataclass(frozen=True)
class Computation:
    """Segment membership of every customer on one date."""

    as_of: date
    features: pl.DataFrame  # id + one column per feature
    membership: pl.DataFrame  # id + one boolean column per segment
    counts: dict[str, int]
    customers: int
    buyers: int
    active: int
    stats: FeatureStats
    frozen: frozenset[str] = frozenset()
    frozen_members: dict[str, pl.Series] = field(default_factory=dict)

    @property
    def active_share(self) -> float | None:
        return self.active / self.buyers if self.buyers else None

    def members(self, segment: str) -> list[int]:
        if segment in self.frozen_members:
            return sorted(self.frozen_members[segment].to_list())
        return self.membership.filter(pl.col(segment)).get_column("id").sort().to_list()

    def long(self, segments: list[str]) -> pl.DataFrame:
        """(segment, customer_id) rows for the given segments."""
        parts = [
            self.membership.filter(pl.col(name)).select(pl.lit(name).alias("segment"), pl.col("id").alias("customer_id"))
            for name in segments
        ]
        if not parts:
            return pl.DataFrame(schema={"segment": pl.String, "customer_id": pl.Int64})
        return pl.concat(parts)


def today_in(timezone: str) -> date:
    return datetime.now(ZoneInfo(timezone)).date()


def make_source(config: LoadedConfig, store: StateStore | None = None) -> CrmSource:
    crm = config.crm
    if crm.kind == "csv":
        assert crm.path is not None
        return CsvSource(crm.path, timezone=crm.timezone, customer=crm.customer, delimiter=crm.delimiter)
    if crm.kind == "bitrix24":
        from adapters.bitrix24 import Bitrix24Source

        assert store is not None, "the Bitrix24 source keeps its cursors and tokens in the state store"
        return Bitrix24Source(config, store)
    if crm.kind == "amocrm":
        from adapters.amocrm import AmoSource

        assert store is not None, "the amoCRM source keeps its cursors and tokens in the state store"
        return AmoSource(config, store)
    raise ValueError(f"[crm] kind = {crm.kind!r} is not supported yet")


def write_tags(config: LoadedConfig, store: StateStore, computation: Computation) -> dict[str, object]:
    """Write the tagged segments onto the customers in the CRM; return what happened."""
    tagged = config.tagged_segments()
    if not tagged or config.crm.kind not in ("bitrix24", "amocrm"):
        return {}
    frame = computation.membership.select("id", *tagged)
    wanted = {
        row[0]: [name for name, flag in zip(tagged, row[1:]) if flag]
        for row in frame.filter(pl.any_horizontal(tagged)).iter_rows()
    }
    mirror = dict(store.customers_frame(config.crm.customer).select("id", "fields").iter_rows())
    if config.crm.kind == "bitrix24":
        from adapters.bitrix24.writeback import Bitrix24TagWriter, current_tags

        current = current_tags(mirror, config.settings.writeback.field)
        result = Bitrix24TagWriter(config, store).write(wanted, current)
    else:
        from adapters.amocrm.mapping import card_tags
        from adapters.amocrm.writeback import AmoTagWriter

        labels = {cid: {config.label(s) for s in names} for cid, names in wanted.items()}
        cards = {cid: tags for cid, text in mirror.items() if text and (tags := card_tags(json.loads(text)))}
        result = AmoTagWriter(config, store).write(labels, cards, {config.label(s) for s in tagged})
    for cid, reason in sorted(result.failed.items())[:MAX_ROW_ERRORS_LOGGED]:
        log.warning("tag write-back failed for customer %s: %s", cid, reason)
    return {
        "tags_updated": result.updated,
        "tags_failed": len(result.failed),
        "tag_options_created": result.options_created,
        "writeback_requests": result.requests,
    }


def open_store(config: LoadedConfig) -> StateStore:
    return StateStore.open(config.state_url, config.crm.name)


def compute(
    store: StateStore, config: LoadedConfig, as_of: date, stored: pl.DataFrame | None = None
) -> Computation:
    """Features and membership for ``as_of`` from the mirror; static segments already frozen keep
    their stored members. ``stored`` is the stored membership if the caller already read it."""
    engine: SegmentEngine = config.rules
    crm = config.crm
    frozen_names = store.frozen_segments() & {c.name for c in engine.custom if c.static}
    frozen: dict[str, pl.Series] = {}
    if frozen_names:
        stored = store.membership_frame() if stored is None else stored
        for name in frozen_names:
            frozen[name] = stored.filter(pl.col("segment") == name).get_column("customer_id")
    features, stats = compute_features(
        store.customers_frame(crm.customer),
        store.deals_frame(),
        as_of=as_of,
        timezone=crm.timezone,
        customer=crm.customer,
        fields=engine.fields,
    )
    membership = engine.evaluate(features, frozen)
    names = engine.segment_names
    sums = membership.select(pl.col(names).sum()).row(0, named=True) if names else {}
    counts = {n: int(sums[n]) for n in names}
    counts.update({n: frozen[n].len() for n in frozen})
    r0 = config.settings.segments.lifecycle.recency_days[0]
    buyers, active = features.select(
        (pl.col("purchases") >= 1).sum().alias("buyers"),
        ((pl.col("purchases") >= 1) & (pl.col("recency_days") <= r0)).sum().alias("active"),
    ).row(0)
    return Computation(
        as_of=as_of,
        features=features,
        membership=membership,
        counts=counts,
        customers=features.height,
        buyers=int(buyers),
        active=int(active),
        stats=stats,
        frozen=frozenset(frozen),
        frozen_members=frozen,
    )


def membership_diff(
    computation: Computation, stored: pl.DataFrame, segments: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Who entered and who left each of ``segments`` compared with the stored membership.

    Frozen static segments never change; segments no longer configured are left as stored.
    """
    empty = pl.Series("customer_id", [], dtype=pl.Int64)
    by_segment = {key[0]: frame.get_column("customer_id") for key, frame in stored.partition_by("segment", as_dict=True).items()}
    entered_parts, left_parts = [], []
    for name in segments:
        if name in computation.frozen:
            continue
        now = computation.membership.filter(pl.col(name)).get_column("id").alias("customer_id")
        before = by_segment.get(name, empty)
        seg = pl.lit(name).alias("segment")
        entered_parts.append(now.filter(~now.is_in(before.implode())).sort().to_frame().select(seg, "customer_id"))
        left_parts.append(before.filter(~before.is_in(now.implode())).sort().to_frame().select(seg, "customer_id"))
    schema = {"segment": pl.String, "customer_id": pl.Int64}
    entered = pl.concat(entered_parts) if entered_parts else pl.DataFrame(schema=schema)
    left = pl.concat(left_parts) if left_parts else pl.DataFrame(schema=schema)
    return entered, left


@dataclass(frozen=True)
class SyncResult:
    run_id: int
    as_of: date
    computation: Computation
    entered: pl.DataFrame
    left: pl.DataFrame
    row_errors: list[RowError]
    mirror: dict[str, int]
    pull_requests: int = 0
    writeback: dict[str, object] = field(default_factory=dict)
    full_pull: bool = True

    def summary(self) -> dict[str, object]:
        per = lambda frame: dict(sorted(frame.group_by("segment").len().iter_rows()))  # noqa: E731
        return {
            "as_of": self.as_of.isoformat(),
            "customers": self.computation.customers,
            "deals": self.computation.stats.deals,
            "rows_skipped": len(self.row_errors),
            "deals_without_customer": self.computation.stats.deals_without_customer,
            "deals_unknown_customer": self.computation.stats.deals_unknown_customer,
            "entered": per(self.entered),
            "left": per(self.left),
            **self.mirror,
            "pull": "full" if self.full_pull else "incremental",
            "pull_requests": self.pull_requests,
            **self.writeback,
        }


def sync(config: LoadedConfig, *, as_of: date | None = None, source: CrmSource | None = None) -> SyncResult:
    """One cycle: pull into the mirror, compute membership for today, store who entered and left."""
    as_of = as_of or today_in(config.crm.timezone)
    store = open_store(config)
    run_id = store.start_run("sync", as_of)
    try:
        pull = (source or make_source(config, store)).pull()
        for err in pull.errors[:MAX_ROW_ERRORS_LOGGED]:
            log.warning("skipped row: %s", err)
        if len(pull.errors) > MAX_ROW_ERRORS_LOGGED:
            log.warning("... and %d more skipped rows", len(pull.errors) - MAX_ROW_ERRORS_LOGGED)
        mirror = store.apply_pull(pull)
        stored = store.membership_frame()
        computation = compute(store, config, as_of, stored)
        entered, left = membership_diff(computation, stored, config.rules.segment_names)
        store.apply_membership(run_id, as_of, entered, left, config.rules.definitions())
        written = write_tags(config, store, computation)
        result = SyncResult(run_id, as_of, computation, entered, left, pull.errors, mirror, pull.requests, written,
                            full_pull=pull.snapshot)
        store.finish_run(run_id, status="ok", stats=result.summary())
        return result
    except BaseException as exc:
        store.finish_run(run_id, status="failed", stats={}, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        store.close()
