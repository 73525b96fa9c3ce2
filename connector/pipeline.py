"""The cycle: pull -> mirror -> features -> segments -> membership diff (plan and apply come later).

``compute`` reads only the mirror, so ``report`` can evaluate any ``as_of`` without touching stored
membership. ``sync`` pulls, computes for today in the CRM time zone and records who entered and who left
each segment, inside a run record that says how it ended.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

import polars as pl

from adapters.base import ActionSink, AdapterConfigError, CrmSource, RowError
from connector.config import ConfigError, LoadedConfig
from connector.kits import adapter_settings, as_config_error, crm_kit
from connector.logs import bind, redact, safe_error
from connector.store import CustomerCards, StateStore
from connector.synclock import LockLost, SyncLease, SyncLocked  # noqa: F401 - SyncLocked: raised by sync()
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
    predictions: dict[str, object] | None = None  # fit summary and P(alive) distribution; None: not wanted
    product_cycles: tuple[dict[str, object], ...] = ()  # per [[product_cycle]]: cycle used, learned from, due now

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
    """The configured CRM's source (a CSV folder needs no store; a CRM keeps cursors and tokens there)."""
    kit = crm_kit(config)
    assert store is not None or not kit.needs_store, f"the {kit.name} source keeps its cursors and tokens in the state store"
    return kit.make_source(adapter_settings(config, kit), store)  # type: ignore[arg-type]


def write_tags(config: LoadedConfig, store: StateStore, computation: Computation,
               cards: CustomerCards | None = None, progress: object = None) -> dict[str, object]:
    """Write the tagged segments onto the customers in the CRM, merge what was written into the mirror,
    and return what happened. ``cards``: the run's customer card view, if read already."""
    tagged = config.tagged_segments()
    kit = crm_kit(config)
    if not tagged or kit.make_tag_writer is None:
        return {}
    frame = computation.membership.select("id", *tagged)
    wanted = {
        row[0]: [name for name, flag in zip(tagged, row[1:]) if flag]
        for row in frame.filter(pl.any_horizontal(tagged)).iter_rows()
    }
    cards = store.customer_card_view(config.crm.customer) if cards is None else cards
    mirror = {cid: json.loads(text) or {} for cid, text in cards.fields_text().items() if text}
    labels = {name: config.label(name) for name in tagged}
    result = kit.make_tag_writer(adapter_settings(config, kit), store).write(wanted, labels, mirror, progress=progress)
    store.update_customer_fields(config.crm.customer, result.mirror_updates)
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
    store: StateStore, config: LoadedConfig, as_of: date, stored: pl.DataFrame | None = None,
    cards: CustomerCards | None = None, *, refit: bool = False, run_id: int | None = None,
) -> Computation:
    """Features and membership for ``as_of`` from the mirror; static segments already frozen keep
    their stored members. ``stored`` is the stored membership if the caller already read it; ``cards``
    the run's customer card view. ``refit``: a prediction model older than ``[predictions] refit_days`` is
    refitted and stored (sync)."""
    engine: SegmentEngine = config.rules
    crm = config.crm
    frozen_names = store.frozen_segments() & {c.name for c in engine.custom if c.static}
    frozen: dict[str, pl.Series] = {}
    if frozen_names:
        stored = store.membership_frame() if stored is None else stored
        for name in frozen_names:
            frozen[name] = stored.filter(pl.col("segment") == name).get_column("customer_id")
    deals_frame = store.deals_frame()
    features, stats = compute_features(
        store.customers_frame(crm.customer) if cards is None else cards.features_frame(),
        deals_frame,
        as_of=as_of,
        timezone=crm.timezone,
        customer=crm.customer,
        fields=engine.fields,
    )
    for warning in stats.field_warnings:
        log.warning("%s", warning)
    from connector.predictions import add_predictions

    features, predictions = add_predictions(store, config, features, as_of, refit=refit, run_id=run_id)
    products = _product_rows(store, config, deals_frame)
    del deals_frame
    cycles: list = []
    if engine.cycles:
        from rules.reorder import DUE_COLUMN, add_reorder_features

        features, cycles = add_reorder_features(features, products, engine.cycles, as_of=as_of, timezone=crm.timezone,
                                                min_observations=config.settings.products.min_observations)
    membership = engine.evaluate(features, frozen, as_of=as_of, timezone=crm.timezone, products=products)
    if engine.cycles:
        features = features.drop(DUE_COLUMN)
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
        predictions=predictions,
        product_cycles=tuple(c.as_dict() for c in cycles),
    )


_WARNED: set[str] = set()


def _product_rows(store: StateStore, config: LoadedConfig, deals_frame: pl.DataFrame | None = None) -> pl.DataFrame | None:
    """Product rows of won deals when the rules use them and they were pulled (else None: unknown). Products
    the rules or cycles name that the rows never mention are logged once each, with near matches."""
    engine: SegmentEngine = config.rules
    if not engine.uses_products or not store.products_pulled():
        return None
    rows = store.products_frame(config.crm.customer, deals_frame, config.crm.timezone)
    from rules.language import product_warnings
    from rules.products import ProductCall, ProductCatalogue

    catalogue = ProductCatalogue.from_rows(rows.select("product_id", "product_name", "section").unique())
    warnings = product_warnings({c.name: c.rule for c in engine.custom}, catalogue)
    for cycle in engine.cycles:
        call = ProductCall("bought", cycle.product)
        if not catalogue.knows(call):
            near = catalogue.near(call)
            warnings.append(f"[[product_cycle]] product {cycle.product!r} is in no deal's product rows"
                            + (f" (near matches: {', '.join(repr(n) for n in near)})" if near else ""))
    for warning in warnings:
        if warning not in _WARNED:
            _WARNED.add(warning)
            log.warning("%s", warning)
    return rows


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
            **({"field_warnings": list(self.computation.stats.field_warnings)} if self.computation.stats.field_warnings else {}),
            **self.writeback,
            **({"predictions": self.computation.predictions} if self.computation.predictions is not None else {}),
        }


STOP = threading.Event()  # set by the daemon on SIGTERM: the sync stops at the next safe point


class Interrupted(Exception):
    """The sync stopped at a safe point because the process is shutting down; the next run goes on."""


def _checkpoint(stage: str) -> None:
    if STOP.is_set():
        raise Interrupted(f"stopped after {stage}")


def make_sink(config: LoadedConfig, store: StateStore) -> ActionSink | None:
    """The CRM's campaign executor (call tasks, deals), or None when no campaign is configured."""
    if not config.settings.campaign:
        return None
    kit = crm_kit(config)
    if kit.make_action_sink is None:
        from adapters import KITS, kit as kit_named

        able = " or ".join(name for name in KITS if kit_named(name).make_action_sink is not None)
        raise ConfigError(f"{config.path}: [[campaign]] needs a CRM to create tasks and deals in; [crm] kind = "
                          f"{config.crm.kind!r} cannot (use {able})")
    return kit.make_action_sink(adapter_settings(config, kit), store)


def resolve_sink(sink: ActionSink, config: LoadedConfig) -> None:
    """Check the campaigns' pipelines, stages and users against the CRM; ConfigError naming the campaign."""
    try:
        sink.resolve(config.settings.campaign)
    except AdapterConfigError as exc:
        raise as_config_error(exc) from None


def plan_actions(config: LoadedConfig, store: StateStore, computation: Computation, entered: pl.DataFrame,
                 left: pl.DataFrame, as_of: date, cards: CustomerCards | None = None) -> list:
    """The campaign actions owed to who entered and left today (and skips, with reasons). ``cards``: the
    run's customer card view, if read already."""
    from connector.campaigns import Card, WorkCalendar, group_members, is_true, plan

    campaigns = config.settings.campaign
    if not campaigns:
        return []
    wanted = {c.segment for c in campaigns}
    entered_by = group_members(entered.filter(pl.col("segment").is_in(list(wanted))))
    left_by = group_members(left.filter(pl.col("segment").is_in(list(wanted))))
    ids = sorted({i for ids in (*entered_by.values(), *left_by.values()) for i in ids})
    history = store.ledger_history()
    dnc = config.settings.pressure.do_not_contact
    dnc_source = (config.settings.fields[dnc].source or dnc) if dnc and dnc in config.settings.fields else dnc
    cards_raw = (store.customer_cards(config.crm.customer, ids) if cards is None else cards.cards(ids))
    features = {r["id"]: r for r in computation.features.filter(pl.col("id").is_in(ids)).iter_rows(named=True)}
    planned_cards = {}
    for cid in ids:
        raw = cards_raw.get(cid, {})
        values = {**features.get(cid, {}), **{k: raw.get(k) for k in ("name", "phone", "email", "birthday")}, "id": cid}
        rep = raw.get("responsible_id")
        planned_cards[cid] = Card(values=values, responsible_id=int(rep) if rep and str(rep).isdigit() else None,
                                  do_not_contact=bool(dnc_source) and is_true((raw.get("fields") or {}).get(dnc_source)))
    return plan(campaigns, entered_by, left_by, as_of, planned_cards, history,
                WorkCalendar.from_settings(config.settings.calendar),
                config.settings.pressure, ZoneInfo(config.crm.timezone))


def preview_plan(config: LoadedConfig) -> list[dict[str, object]]:
    """What the next sync would do for campaigns, from the mirror as it is (no pull, nothing written):
    the actions owed to today's entries and exits, then those still pending in the ledger."""
    as_of = today_in(config.crm.timezone)
    store = open_store(config)
    sink = None
    try:
        sink = make_sink(config, store)
        if sink is not None:
            resolve_sink(sink, config)
        stored = store.membership_frame()
        cards = store.customer_card_view(config.crm.customer)
        computation = compute(store, config, as_of, stored, cards)
        entered, left = membership_diff(computation, stored, config.rules.segment_names)
        rows: list[dict[str, object]] = []
        for p in plan_actions(config, store, computation, entered, left, as_of, cards):
            rows.append({"campaign": p.campaign, "action": p.action, "customer_id": p.customer_id, "key": p.key,
                         "skip_reason": p.skip_reason, "responsible_id": p.responsible_id, "origin": "new",
                         "title": str(p.payload.get("title", "")), "due": str(p.payload.get("deadline", ""))[:10]})
        for r in store.ledger(["planned", "sending", "failed"]):
            rows.append({"campaign": r.campaign, "action": r.action, "customer_id": r.customer_id, "key": r.key,
                         "skip_reason": None, "responsible_id": r.responsible_id, "origin": r.status,
                         "title": str(r.payload.get("title", "")), "due": str(r.payload.get("deadline", ""))[:10]})
        return rows
    finally:
        if sink is not None:
            sink.close()
        store.close()


def sync(config: LoadedConfig, *, as_of: date | None = None, source: CrmSource | None = None,
         wait: float = 0, progress: object = None) -> SyncResult:
    """One cycle: pull into the mirror, compute membership for today, store who entered and left together
    with the campaign actions it owes them, write tags, then apply the actions.

    The whole cycle holds the portal's sync lock (connector.synclock), renewed while it runs: if another
    process holds it, wait up to ``wait`` seconds, then raise :class:`SyncLocked` before anything is
    written (no run record)."""
    as_of = as_of or today_in(config.crm.timezone)
    store = open_store(config)
    try:
        lease = SyncLease(store, config.settings.daemon.lock_seconds)
        lease.acquire(wait)
        try:
            run_id = store.start_run("sync", as_of)
            with bind(run_id=run_id, portal=config.crm.name):
                return _sync(config, store, run_id, as_of, source, lease, progress)
        finally:
            lease.release()
    finally:
        store.close()


def _sync(config: LoadedConfig, store: StateStore, run_id: int, as_of: date, source: CrmSource | None,
          lease: SyncLease, progress: object = None) -> SyncResult:
    sink = None

    def checkpoint(stage: str) -> None:
        _checkpoint(stage)
        lease.check()

    try:
        sink = make_sink(config, store)
        if sink is not None:
            resolve_sink(sink, config)  # unknown pipelines, stages, users: stop before any change
        pull = _pull(source or make_source(config, store), progress)
        for err in pull.errors[:MAX_ROW_ERRORS_LOGGED]:
            log.warning("skipped row: %s", err)
        if len(pull.errors) > MAX_ROW_ERRORS_LOGGED:
            log.warning("... and %d more skipped rows", len(pull.errors) - MAX_ROW_ERRORS_LOGGED)
        mirror = store.apply_pull(pull)
        with bind(stage="pull"):
            log.info("pulled %d customers and %d deals (%s, %d requests)", len(pull.customers), len(pull.deals),
                     "full" if pull.snapshot else "incremental", pull.requests)
        checkpoint("the pull")
        stored = store.membership_frame()
        cards = store.customer_card_view(config.crm.customer)  # read once: features, plan, tags, audiences
        computation = compute(store, config, as_of, stored, cards, refit=True, run_id=run_id)
        entered, left = membership_diff(computation, stored, config.rules.segment_names)
        planned = plan_actions(config, store, computation, entered, left, as_of, cards)
        store.apply_membership(run_id, as_of, entered, left, config.rules.definitions(), planned)
        with bind(stage="segments"):
            log.info("membership stored: %d entries, %d exits, %d campaign actions planned", entered.height, left.height,
                     sum(1 for p in planned if not p.skip_reason))
        checkpoint("storing membership")
        written = write_tags(config, store, computation, cards, progress)
        checkpoint("the write-back")
        if sink is not None:
            from connector.executor import execute

            ex = config.settings.executor
            written = {**written, "actions_planned": sum(1 for p in planned if not p.skip_reason),
                       "actions_skipped": sum(1 for p in planned if p.skip_reason),
                       **execute(store, sink, batch_size=ex.batch_size, max_attempts=ex.max_attempts,
                                 should_stop=lambda: STOP.is_set() or lease.lost.is_set(), holder=lease.holder,
                                 progress=progress)}
            checkpoint("the campaign actions")
        if config.settings.audience:
            from connector.audiences import sync_audiences

            lease.check()
            written = {**written, "audiences": [r.summary() for r in sync_audiences(config, store, computation, cards=cards, progress=progress)]}
        result = SyncResult(run_id, as_of, computation, entered, left, pull.errors, mirror, pull.requests, written,
                            full_pull=pull.snapshot)
        store.finish_run(run_id, status="ok", stats={**result.summary(), **_record_errors(pull.errors)})
        from connector.dashboard.snapshot import record_safely

        record_safely(store, config, result, compute)  # what the dashboard shows; a failure there is logged, never raised
        return result
    except (Interrupted, LockLost) as exc:
        store.finish_run(run_id, status="interrupted", stats={}, error=redact(str(exc)))
        raise
    except BaseException as exc:
        _record_failure(store, run_id, exc)
        raise
    finally:
        if sink is not None:
            sink.close()


def _record_errors(errors: list[RowError]) -> dict[str, object]:
    """The run record's sample of skipped records (``lifecycle runs``): where and why, redacted, as logged."""
    if not errors:
        return {}
    return {"record_errors": [{"stage": "pull", "record": f"{e.file}:{e.line}", "record_id": e.record_id,
                               "error": redact(str(e.message))} for e in errors[:MAX_ROW_ERRORS_LOGGED]]}


def _pull(source: CrmSource, progress: object):
    """``source.pull``, with the progress reporter when the source takes one (the CSV source does not)."""
    import inspect

    if progress is not None and "progress" in inspect.signature(source.pull).parameters:
        return source.pull(progress=progress)  # type: ignore[call-arg]
    return source.pull()


def _record_failure(store: StateStore, run_id: int, exc: BaseException) -> None:
    """Mark the run failed with a redacted one-line error (no SQL, no customer data). When the store
    itself is what failed (disk full, read-only), retry the small update once; if that fails too, the
    run is finished from a fresh connection, so it never stays ``running``."""
    error = safe_error(exc)
    for attempt in range(2):
        try:
            store.finish_run(run_id, status="failed", stats={}, error=error)
            return
        except Exception as again:  # noqa: BLE001 - the original error is the one to raise
            if attempt:
                log.error("could not mark run %s failed: %s", run_id, safe_error(again))
            else:
                store.engine.dispose()
