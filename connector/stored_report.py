"""The instant report: what the last sync computed, recorded so ``lifecycle report`` for that date prints at
once instead of recomputing every feature from the mirror (issue 20, item 4).

At the end of a successful sync :func:`record` keeps, in the portal's cursors (key ``report.last``), the run id,
its date, a fingerprint of everything the computation depends on in the configuration (segment rules and
presets, custom fields, CRM time zone and entity, predictions) and the figures the report prints: customers,
buyers, active buyers, every segment's size, the skipped-deal counts and field warnings. :func:`load` returns
them only when a fresh compute would print exactly the same:

* the requested date is the recorded run's date, and that run is still the portal's newest sync and ended
  ``ok`` (any later sync, even a failed one, may have changed the mirror);
* the configuration's fingerprint is unchanged;
* no prediction is wanted (a sync refits the model, a report does not, so the lines could differ) and no
  segment rule reads the write-back field (the write-back changes it in the mirror after the computation);
* no member list is asked for (``--members``, ``--segment``).

Otherwise the caller computes as before. Frozen static segments are read from the store at report time, as
the computation does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa

KEY = "report.last"


def fingerprint(config: Any) -> str:
    s = config.settings
    parts = {
        "definitions": config.rules.definitions(),
        "segments": s.segments.model_dump(mode="json"),
        "fields": {k: v.model_dump(mode="json") for k, v in s.fields.items()},
        "predictions": s.predictions.model_dump(mode="json"),
        "timezone": config.crm.timezone,
        "customer": config.crm.customer,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _usable_config(config: Any) -> bool:
    """Whether a stored figure can equal a fresh compute under this configuration at all."""
    tag_field = config.settings.writeback.field
    sources = {(f.source or name) for name, f in config.settings.fields.items()}
    # product cycles print what they learned from the product rows (not stored): those reports compute
    return tag_field not in sources and not config.settings.product_cycle


@dataclass(frozen=True)
class SkipStats:
    deals_without_customer: int = 0
    deals_unknown_customer: int = 0
    field_warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredComputation:
    """The attributes of :class:`connector.pipeline.Computation` that the report's renderers read."""

    as_of: date
    customers: int
    buyers: int
    active: int
    counts: dict[str, int]
    stats: SkipStats
    frozen: frozenset[str] = frozenset()
    predictions: dict[str, object] | None = None
    run_id: int = 0
    frozen_members: dict[str, Any] = field(default_factory=dict)
    product_cycles: tuple[dict[str, object], ...] = ()  # never stored (see _usable_config)

    @property
    def active_share(self) -> float | None:
        return self.active / self.buyers if self.buyers else None

    def members(self, segment: str) -> list[int]:  # pragma: no cover - load() refuses member lists
        raise RuntimeError("a stored report has no member lists; compute instead")


def record(store: Any, config: Any, run_id: int, comp: Any) -> None:
    """Keep the figures of this sync's computation (called after the run finished ``ok``)."""
    if comp.predictions is not None or not _usable_config(config):
        store.save_cursors({KEY: ""})
        return
    value = {
        "run_id": run_id, "as_of": comp.as_of.isoformat(), "config": fingerprint(config),
        "customers": comp.customers, "buyers": comp.buyers, "active": comp.active,
        "counts": {k: int(v) for k, v in comp.counts.items()},
        "deals_without_customer": comp.stats.deals_without_customer,
        "deals_unknown_customer": comp.stats.deals_unknown_customer,
        "field_warnings": list(comp.stats.field_warnings),
    }
    store.save_cursors({KEY: json.dumps(value, sort_keys=True, ensure_ascii=False)})


def load(store: Any, config: Any, as_of: date) -> StoredComputation | None:
    """The stored figures for ``as_of`` if a compute now would print exactly them, else None."""
    from connector.store.schema import cursors, runs

    if not _usable_config(config):
        return None
    with store.engine.connect() as conn:
        text = conn.execute(sa.select(cursors.c.value).where(cursors.c.portal == store.portal,
                                                             cursors.c.name == KEY)).scalar()
        if not text:
            return None
        saved = json.loads(text)
        if saved.get("as_of") != as_of.isoformat():
            return None
        newest = conn.execute(sa.select(runs.c.id, runs.c.status).where(runs.c.portal == store.portal,
                                                                        runs.c.kind == "sync")
                              .order_by(runs.c.id.desc()).limit(1)).first()
    if newest is None or newest[0] != saved.get("run_id") or newest[1] != "ok":
        return None
    if saved.get("config") != fingerprint(config):
        return None
    engine = config.rules
    frozen = store.frozen_segments() & {c.name for c in engine.custom if c.static}
    counts = saved["counts"]
    if set(counts) != set(engine.segment_names):
        return None
    return StoredComputation(
        as_of=as_of, customers=int(saved["customers"]), buyers=int(saved["buyers"]), active=int(saved["active"]),
        counts={n: int(counts[n]) for n in engine.segment_names},
        stats=SkipStats(int(saved["deals_without_customer"]), int(saved["deals_unknown_customer"]),
                        tuple(saved.get("field_warnings") or ())),
        frozen=frozenset(frozen), run_id=int(saved["run_id"]),
    )
