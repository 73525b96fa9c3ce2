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


WRITEBACK_PENDING = "writeback.pending"  # run id whose membership is stored and whose write-back has not ended cleanly
WRITEBACK_RECONCILED = "writeback.reconciled_at"  # epoch seconds of the last full pass
WRITEBACK_LABELS = "writeback.labels"  # the field and labels the last write-back wrote


def _labels_key(config: LoadedConfig, labels: dict[str, str]) -> str:
    return json.dumps({"field": config.settings.writeback.field, "labels": labels}, sort_keys=True, ensure_ascii=False)


def writeback_candidates(config: LoadedConfig, store: StateStore, labels: dict[str, str], entered: pl.DataFrame | None,
                         left: pl.DataFrame | None, pulled: set[int] | None, *, run_id: int | None = None,
                         now: float | None = None) -> set[int] | None:
    """The customers whose tags may have to change, or None when every customer must be compared with the
    mirror (a full reconciliation): the first write-back, one after a write-back that did not finish cleanly
    (interrupted, or with failed customers), changed labels or field, or ``[writeback] reconcile_days`` after
    the last full pass. Otherwise only who entered or left a tagged segment today and who the pull brought
    (someone may have edited their tags by hand) can need a new value. ``run_id``: the sync calling (its own
    pending mark, set before its membership was stored, does not count)."""
    import time

    if entered is None or left is None or pulled is None:
        return None
    state = store.cursors()
    now = time.time() if now is None else now
    every = config.settings.writeback.reconcile_days * 86400
    if (state.get(WRITEBACK_PENDING, "") not in ("", str(run_id)) or state.get(WRITEBACK_LABELS) != _labels_key(config, labels)
            or now - float(state.get(WRITEBACK_RECONCILED) or 0) >= every):
        return None
    moved = pl.concat([entered, left]).filter(pl.col("segment").is_in(list(labels))).get_column("customer_id")
    return set(moved.to_list()) | pulled


def write_tags(config: LoadedConfig, store: StateStore, computation: Computation,
               cards: CustomerCards | None = None, progress: object = None, *, entered: pl.DataFrame | None = None,
               left: pl.DataFrame | None = None, pulled: set[int] | None = None, run_id: int | None = None
               ) -> dict[str, object]:
    """Write the tagged segments onto the customers in the CRM, merge what was written into the mirror,
    and return what happened. ``cards``: the run's customer card view, if read already. With ``entered``,
    ``left`` (today's membership diff) and ``pulled`` (customer ids the pull brought), only the customers
    :func:`writeback_candidates` names are planned (no CRM request at all when none is); without them, or
    when a full reconciliation is due, every customer is compared with the mirror."""
    tagged = config.tagged_segments()
    kit = crm_kit(config)
    if not tagged or kit.make_tag_writer is None:
        return {}
    labels = {name: config.label(name) for name in tagged}
    candidates = writeback_candidates(config, store, labels, entered, left, pulled, run_id=run_id)
    frame = computation.membership.select("id", *tagged)
    if candidates is not None:
        if not candidates:  # nothing moved, nothing was edited: the CRM is not asked anything
            store.save_cursors({WRITEBACK_PENDING: ""})
            return {"tags_updated": 0, "tags_failed": 0, "tag_options_created": [], "writeback_requests": 0,
                    "writeback_planned": "changes", "writeback_candidates": 0}
        ids = pl.Series("id", sorted(candidates), dtype=pl.Int64)
        frame = frame.filter(pl.col("id").is_in(ids.implode()))
    wanted = {
        row[0]: [name for name, flag in zip(tagged, row[1:]) if flag]
        for row in frame.filter(pl.any_horizontal(tagged)).iter_rows()
    }
    cards = store.customer_card_view(config.crm.customer) if cards is None else cards
    texts = cards.frame.select("id", "fields").filter(pl.col("fields").is_not_null())
    if candidates is not None:
        texts = texts.filter(pl.col("id").is_in(ids.implode()))
    mirror = {cid: json.loads(text) or {} for cid, text in texts.iter_rows()}
    store.save_cursors({WRITEBACK_PENDING: str(run_id)})  # cleared below once every change is written
    result = kit.make_tag_writer(adapter_settings(config, kit), store).write(wanted, labels, mirror, progress=progress)
    store.update_customer_fields(config.crm.customer, result.mirror_updates)
    done = {WRITEBACK_LABELS: _labels_key(config, labels), **getattr(result, "cursors", {})}
    if not result.failed:
        import time

        done[WRITEBACK_PENDING] = ""
        if candidates is None:
            done[WRITEBACK_RECONCILED] = str(time.time())
    store.save_cursors(done)
    for cid, reason in sorted(result.failed.items())[:MAX_ROW_ERRORS_LOGGED]:
        log.warning("tag write-back failed for customer %s: %s", cid, reason)
    if getattr(result, "stopped", None):  # the CRM refuses everything now (amoCRM 403): stop the run here
        raise WritebackStopped(f"tag write-back stopped after {result.updated} cards: {result.stopped}")
    return {
        "tags_updated": result.updated,
        "tags_failed": len(result.failed),
        "tag_options_created": result.options_created,
        "writeback_requests": result.requests,
        "writeback_planned": "full" if candidates is None else "changes",
        "writeback_candidates": len(cards) if candidates is None else len(candidates),
    }


def open_store(config: LoadedConfig) -> StateStore:
    state = config.settings.state
    return StateStore.open(config.state_url, config.crm.name, columnar=state.columnar, columnar_dir=state.columnar_dir)


def compute(
    store: StateStore, config: LoadedConfig, as_of: date, stored: pl.DataFrame | None = None,
    cards: CustomerCards | None = None, *, refit: bool = False, run_id: int | None = None,
    deals: pl.DataFrame | None = None,
) -> Computation:
    """Features and membership for ``as_of`` from the mirror; static segments already frozen keep
    their stored members. ``stored`` is the stored membership if the caller already read it; ``cards``
    the run's customer card view; ``deals`` the mirror's deals if the caller already read them (the dashboard's
    back-fill computes 52 past dates from one read). ``refit``: a prediction model older than ``[predictions] refit_days`` is
    refitted and stored (sync)."""
    engine: SegmentEngine = config.rules
    crm = config.crm
    frozen_names = store.frozen_segments() & {c.name for c in engine.custom if c.static}
    frozen: dict[str, pl.Series] = {}
    if frozen_names:
        stored = store.membership_frame() if stored is None else stored
        for name in frozen_names:
            frozen[name] = stored.filter(pl.col("segment") == name).get_column("customer_id")
    deals_frame = store.deals_frame() if deals is None else deals
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


class WritebackStopped(RuntimeError):
    """The CRM refused to take any more writes (amoCRM 403: the account or address is blocked); what was
    written is recorded, the rest stays planned for the next run, and the run fails with the CRM's reason."""


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
                 left: pl.DataFrame, as_of: date, cards: CustomerCards | None = None,
                 states_out: list[dict[str, object]] | None = None) -> list:
    """The campaign actions owed to who entered and left today (and skips, with reasons). ``cards``: the
    run's customer card view, if read already. A campaign not approved yet (neither ``lifecycle campaigns
    approve`` nor ``auto_approve``) has its actions ``waiting``; ``include_current_members`` adds, once, the
    members already in the segment. ``states_out`` receives the campaign states to store with the plan."""
    from connector.campaigns import Card, WorkCalendar, group_members, is_true, plan

    campaigns = config.settings.campaign
    if not campaigns:
        return []
    wanted = {c.segment for c in campaigns}
    entered_by = group_members(entered.filter(pl.col("segment").is_in(list(wanted))))
    left_by = group_members(left.filter(pl.col("segment").is_in(list(wanted))))
    states = store.campaign_states()
    waiting = {c.name for c in campaigns if not c.auto_approve and not (c.name in states and states[c.name].approved)}
    existing: dict[str, list[int]] = {}
    for c in campaigns:
        include = c.include_current_members and (c.name not in states or states[c.name].included_run is None)
        if include and c.segment in computation.membership.columns:
            new = set(entered_by.get(c.segment, []))
            existing[c.name] = [int(i) for i in computation.membership.filter(pl.col(c.segment)).get_column("id")
                                if int(i) not in new]
        if states_out is not None:
            states_out.append({"campaign": c.name, "approve": c.auto_approve, "included": include})
    ids = sorted({i for ids in (*entered_by.values(), *left_by.values(), *existing.values()) for i in ids})
    history = store.ledger_history()
    dnc = config.settings.pressure.do_not_contact
    dnc_source = (config.settings.fields[dnc].source or dnc) if dnc and dnc in config.settings.fields else dnc
    cards_raw = (store.customer_cards(config.crm.customer, ids) if cards is None else cards.cards(ids))
    features = {r["id"]: r for r in computation.features.filter(pl.col("id").is_in(ids)).iter_rows(named=True)}
    last_amount = _last_amounts(store, config, ids)
    planned_cards = {}
    for cid in ids:
        raw = cards_raw.get(cid, {})
        values = {**features.get(cid, {}), **{k: raw.get(k) for k in ("name", "phone", "email", "birthday")}, "id": cid,
                  "last_amount": last_amount.get(cid)}
        rep = raw.get("responsible_id")
        planned_cards[cid] = Card(values=values, responsible_id=int(rep) if rep and str(rep).isdigit() else None,
                                  do_not_contact=bool(dnc_source) and is_true((raw.get("fields") or {}).get(dnc_source)))
    planned = plan(campaigns, entered_by, left_by, as_of, planned_cards, history,
                   WorkCalendar.from_settings(config.settings.calendar),
                   config.settings.pressure, ZoneInfo(config.crm.timezone), existing=existing, waiting=waiting,
                   labels={c.segment: config.label(c.segment) for c in campaigns}, language=rep_language(config))
    return planned + _closing(config, store, computation, left_by, as_of, history.keys)


def rep_language(config: LoadedConfig) -> str:
    """The language of what reps read (default texts, closing comments): ``[labels] preset``, else ``[ui] language``."""
    preset = config.settings.labels.get("preset")
    return preset if preset in ("ru", "en") else config.settings.ui.language


def _last_amounts(store: StateStore, config: LoadedConfig, ids: list[int]) -> dict[int, float]:
    """The amount of each customer's last won deal (the default texts say it)."""
    if not ids:
        return {}
    column = "company_id" if config.crm.customer == "company" else "contact_id"
    deals = store.deals_frame().filter((pl.col("status") == "won") & pl.col(column).is_in(ids) & pl.col("closed_ts").is_not_null())
    if deals.is_empty():
        return {}
    last = deals.sort("closed_ts").group_by(column).agg(pl.col("amount").last())
    return {int(cid): float(amount) for cid, amount in last.iter_rows()}


def _closing(config: LoadedConfig, store: StateStore, computation: Computation, left_by: dict[str, list[int]],
             as_of: date, keys: set[str]) -> list:
    """Close actions (``close_on_exit``) for the customers who left a campaign segment today."""
    from datetime import timedelta

    from connector.campaigns import plan_closing

    closing = [c for c in config.settings.campaign if c.close_on_exit]
    ids = sorted({i for c in closing for i in left_by.get(c.segment, [])})
    if not ids:
        return []
    done = store.ledger(["done"], customer_ids=ids)
    last: dict[int, date] = {}
    for cid, days in computation.features.filter(pl.col("id").is_in(ids)).select("id", "recency_days").iter_rows():
        if days is not None and days == days:
            last[int(cid)] = as_of - timedelta(days=int(days))
    labels = {c.segment: config.label(c.segment) for c in closing}
    return plan_closing(closing, left_by, done, as_of, last, keys, rep_language(config), labels)


USERS_REFRESH_SECONDS = 24 * 3600


def refresh_users(config: LoadedConfig, store: StateStore, sink: ActionSink | None = None, *, force: bool = False) -> None:
    """Store the CRM's users (id, name) at most once a day, so plan and the dashboard can name the reps.
    A CRM without an action sink has no users; a failure is logged, never raised (names are a courtesy)."""
    import time as _time

    kit = crm_kit(config)
    if kit.make_action_sink is None:
        return
    stamp = store.users_updated_at()
    if not force and stamp is not None and _time.time() - stamp.timestamp() < USERS_REFRESH_SECONDS:
        return
    own = None
    try:
        source = sink if sink is not None and hasattr(sink, "users") else None
        if source is None:
            own = source = kit.make_action_sink(adapter_settings(config, kit), store)
        store.save_users(source.users())  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - a missing name never stops a run
        log.warning("could not read the CRM's users: %s", safe_error(exc))
    finally:
        if own is not None:
            own.close()


def pull_for_preview(config: LoadedConfig, store: StateStore, progress: object = None) -> dict[str, int]:
    """Pull into the mirror (under the portal's sync lock) without planning, tagging or acting: what
    ``plan --pull``, a first ``plan`` and ``sync --dry-run`` do. The mirror and its pull cursors are saved
    together, as a sync saves them, so the next sync goes on from there; membership, the ledger and the CRM
    are untouched."""
    lease = SyncLease(store, config.settings.daemon.lock_seconds)
    lease.acquire(0)
    try:
        pull = _pull(make_source(config, store), progress)
        mirror = store.apply_pull(pull)
        refresh_users(config, store, force=True)
        return {**mirror, "pull_requests": pull.requests}
    finally:
        lease.release()


def preview_plan(config: LoadedConfig, *, pull: bool | None = None, progress: object = None) -> list[dict[str, object]]:
    """What the next sync would do for campaigns, writing nothing to the CRM: the actions owed to today's
    entries and exits, then those still pending in the ledger (waiting for approval, planned, failed).
    ``pull``: pull into the mirror first; None = only when the portal was never pulled (a first ``plan``)."""
    as_of = today_in(config.crm.timezone)
    store = open_store(config)
    sink = None
    try:
        sink = make_sink(config, store)
        if sink is not None:
            resolve_sink(sink, config)
        if pull is None:
            pull = crm_kit(config).needs_store and not store.cursors()
        if pull:
            pull_for_preview(config, store, progress)
        users = store.user_names()
        stored = store.membership_frame()
        cards = store.customer_card_view(config.crm.customer)
        computation = compute(store, config, as_of, stored, cards)
        entered, left = membership_diff(computation, stored, config.rules.segment_names)
        rows: list[dict[str, object]] = []
        planned = plan_actions(config, store, computation, entered, left, as_of, cards)
        pending = store.ledger(["waiting", "planned", "sending", "failed"])
        ids = sorted({p.customer_id for p in planned} | {r.customer_id for r in pending})
        names = {cid: (c.get("name") or None) for cid, c in (cards.cards(ids) if ids else {}).items()}
        existing = {c.name for c in config.settings.campaign if c.include_current_members}
        entered_ids = {(seg, int(cid)) for seg, cid in entered.iter_rows()}
        segment_of = {c.name: c.segment for c in config.settings.campaign}
        for p in planned:
            rows.append({"campaign": p.campaign, "action": p.action, "customer_id": p.customer_id, "key": p.key,
                         "skip_reason": p.skip_reason, "responsible_id": p.responsible_id,
                         "origin": "new", "status": p.ledger_status,
                         "existing_member": p.campaign in existing and p.event == "enter"
                         and (segment_of[p.campaign], p.customer_id) not in entered_ids,
                         "customer_name": names.get(p.customer_id), "responsible_name": users.get(p.responsible_id or 0),
                         "title": str(p.payload.get("title", "")), "due": str(p.payload.get("deadline", ""))[:10]})
        for r in pending:
            rows.append({"campaign": r.campaign, "action": r.action, "customer_id": r.customer_id, "key": r.key,
                         "skip_reason": None, "responsible_id": r.responsible_id, "origin": r.status, "status": r.status,
                         "existing_member": False,
                         "customer_name": names.get(r.customer_id), "responsible_name": users.get(r.responsible_id or 0),
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
        refresh_users(config, store, sink)
        stored = store.membership_frame()
        cards = store.customer_card_view(config.crm.customer)  # read once: features, plan, tags, audiences
        computation = compute(store, config, as_of, stored, cards, refit=True, run_id=run_id)
        entered, left = membership_diff(computation, stored, config.rules.segment_names)
        states: list[dict[str, object]] = []
        planned = plan_actions(config, store, computation, entered, left, as_of, cards, states)
        if config.tagged_segments():  # an interruption before the write-back ends makes the next one a full pass
            store.save_cursors({WRITEBACK_PENDING: str(run_id)})
        store.apply_membership(run_id, as_of, entered, left, config.rules.definitions(), planned, states)
        with bind(stage="segments"):
            log.info("membership stored: %d entries, %d exits, %d campaign actions planned", entered.height, left.height,
                     sum(1 for p in planned if not p.skip_reason))
        checkpoint("storing membership")
        written = write_tags(config, store, computation, cards, progress, entered=entered, left=left,
                             pulled={c.id for c in pull.customers if c.entity == config.crm.customer}, run_id=run_id)
        checkpoint("the write-back")
        if sink is not None:
            from connector.executor import execute

            ex = config.settings.executor
            caps = {c.name: c.max_actions_per_run for c in config.settings.campaign if c.max_actions_per_run}
            written = {**written, "actions_planned": sum(1 for p in planned if not p.skip_reason and p.status != "waiting"),
                       "actions_skipped": sum(1 for p in planned if p.skip_reason),
                       "actions_awaiting_approval": sum(1 for p in planned if p.status == "waiting"),
                       **execute(store, sink, batch_size=ex.batch_size, max_attempts=ex.max_attempts,
                                 should_stop=lambda: STOP.is_set() or lease.lost.is_set(), holder=lease.holder,
                                 progress=progress, max_per_run=ex.max_actions_per_run, max_per_campaign=caps)}
            checkpoint("the campaign actions")
        if config.settings.audience:
            from connector.audiences import sync_audiences

            lease.check()
            written = {**written, "audiences": [r.summary() for r in sync_audiences(config, store, computation, cards=cards, progress=progress)]}
        result = SyncResult(run_id, as_of, computation, entered, left, pull.errors, mirror, pull.requests, written,
                            full_pull=pull.snapshot)
        store.finish_run(run_id, status="ok", stats={**result.summary(), **_record_errors(pull.errors)})
        from connector import stored_report

        stored_report.record(store, config, run_id, computation)  # `lifecycle report` for today prints at once
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
