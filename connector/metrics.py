"""Prometheus metrics of the daemon (``GET /metrics``), in their own registry.

Besides the per-sync counters: after every sync the daemon sets the state gauges the alert rules in
deploy/prometheus-alerts.yml read (:meth:`Metrics.kpi`, :meth:`Metrics.refresh_state`): customers,
buyers, the active share and its target, segment sizes, the action ledger by status, audiences whose last
sync failed, token expiry times and consecutive failed syncs. ``*_created`` series are switched off: they
double the output and no rule reads them.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime, timezone
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

prometheus_client.disable_created_metrics()
log = logging.getLogger("lifecycle.metrics")
# Lifetime of a refresh token from its last rotation (shared/research: amoCRM 3 months, Bitrix24 180 days).
REFRESH_DAYS = {"amocrm": 90, "bitrix24": 180}
LEDGER_STATUSES = ("pending", "failed", "done", "skipped", "waiting", "holdout")  # pending = planned + sending; waiting = for approval


class Metrics:
    def __init__(self, portal: str, crm: str):
        self.registry = CollectorRegistry()
        self.portal, self.crm = portal, crm
        labels = {"portal": portal}
        self.syncs = Counter("lifecycle_syncs", "Syncs by outcome", ["portal", "status"], registry=self.registry)
        self.duration = Histogram("lifecycle_sync_duration_seconds", "Sync duration", ["portal"], registry=self.registry,
                                  buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self.requests = Counter("lifecycle_api_requests", "API requests made to the CRM and cabinets",
                                ["portal", "crm", "purpose"], registry=self.registry)
        self.errors = Counter("lifecycle_api_errors", "Failed syncs, skipped records and failed actions",
                              ["portal", "crm", "kind"], registry=self.registry)
        self.segment = Gauge("lifecycle_segment_members", "Customers per segment", ["portal", "segment"], registry=self.registry)
        self.customers = Gauge("lifecycle_customers", "Customers in the mirror", ["portal"], registry=self.registry)
        self.actions = Counter("lifecycle_actions_applied", "Campaign actions created in the CRM", ["portal"],
                               registry=self.registry)
        self.tags = Counter("lifecycle_tags_written", "Customers whose segment tags were written", ["portal"],
                            registry=self.registry)
        self.webhooks = Counter("lifecycle_webhooks", "Webhooks received", ["portal", "source", "result"],
                                registry=self.registry)
        self.last_sync = Gauge("lifecycle_last_sync_timestamp_seconds", "End of the last sync", ["portal", "status"],
                               registry=self.registry)
        self.skipped = Counter("lifecycle_syncs_skipped_locked", "Syncs skipped: another process held the lock",
                               ["portal"], registry=self.registry).labels(**labels)
        # state gauges (alerts)
        self.buyers = Gauge("lifecycle_buyers", "Customers with at least one purchase", ["portal"], registry=self.registry)
        self.active_share = Gauge("lifecycle_active_share", "Share of buyers who bought within the active window (0..1)",
                                  ["portal"], registry=self.registry)
        self.active_target = Gauge("lifecycle_active_share_target", "[kpi] active_share_target", ["portal"],
                                   registry=self.registry)
        self.ledger = Gauge("lifecycle_ledger_actions", "Campaign actions in the ledger by status (pending = planned "
                            "or sending)", ["portal", "status"], registry=self.registry)
        self.audience_errors = Gauge("lifecycle_audience_errors", "Audiences whose last sync ended with an error or "
                                     "a deferral message", ["portal", "cabinet"], registry=self.registry)
        self.token_expiry = Gauge("lifecycle_token_expiry_timestamp_seconds", "When a CRM token expires (access: "
                                  "renewed by itself; refresh and long_lived: need a person before then)",
                                  ["portal", "token"], registry=self.registry)
        self.failed_in_row = Gauge("lifecycle_consecutive_failed_syncs", "Syncs that failed since the last good one",
                                   ["portal"], registry=self.registry)
        self.failed_in_row.labels(portal).set(0)
        self._failed_in_row = 0

    def observe(self, summary: dict[str, Any]) -> None:
        p, c = self.portal, self.crm
        for purpose, key in (("pull", "pull_requests"), ("writeback", "writeback_requests"), ("actions", "action_requests")):
            if summary.get(key):
                self.requests.labels(p, c, purpose).inc(float(summary[key]))
        for audience in summary.get("audiences") or []:
            self.requests.labels(p, audience["cabinet"], "audience").inc(float(audience.get("requests") or 0))
            if audience.get("message"):
                self.errors.labels(p, audience["cabinet"], "audience").inc()
        if summary.get("rows_skipped"):
            self.errors.labels(p, c, "record").inc(float(summary["rows_skipped"]))
        if summary.get("actions_failed"):
            self.errors.labels(p, c, "action").inc(float(summary["actions_failed"]))
        self.actions.labels(p).inc(float(summary.get("actions_created") or 0))
        self.tags.labels(p).inc(float(summary.get("tags_updated") or 0))
        self.customers.labels(p).set(float(summary.get("customers") or 0))
        if "audiences" in summary:
            failing: dict[str, int] = {}
            for audience in summary.get("audiences") or []:
                failing[audience["cabinet"]] = failing.get(audience["cabinet"], 0) + (1 if audience.get("message") else 0)
            self.audience_errors.clear()
            for cabinet, n in failing.items():
                self.audience_errors.labels(p, cabinet).set(n)

    def kpi(self, computation: Any, target: float) -> None:
        """Buyers, the active share and its target after a successful sync."""
        self.buyers.labels(self.portal).set(float(computation.buyers))
        self.active_target.labels(self.portal).set(float(target))
        share = computation.active_share
        if share is None:  # no buyers yet: no share (a 0 would read as "below target")
            try:
                self.active_share.remove(self.portal)
            except KeyError:
                pass
        else:
            self.active_share.labels(self.portal).set(float(share))

    def refresh_state(self, config: Any) -> None:
        """Gauges read from the state store after every sync, failed or not: the action ledger, token
        expiry, consecutive failed syncs (the runs table, so a restart does not reset it). A store that
        cannot be read leaves the gauges as they were, except the in-process failure count."""
        from connector.pipeline import open_store

        try:
            store = open_store(config)
            try:
                counts = store.action_counts()
                token = store.oauth_token()
                runs = store.last_runs(200)
            finally:
                store.close()
        except Exception as exc:  # the sync's own error is logged already; this is only metrics
            log.warning("metrics: state store unreadable: %s", type(exc).__name__)
            return
        merged = {"pending": counts.get("planned", 0) + counts.get("sending", 0)}
        for status in LEDGER_STATUSES[1:]:
            merged[status] = counts.get(status, 0)
        for status, n in merged.items():
            self.ledger.labels(self.portal, status).set(n)
        self._tokens(config, token)
        finished = [r["status"] for r in runs if r["status"] in ("ok", "failed")]
        stored_streak = next((i for i, status in enumerate(finished) if status == "ok"), len(finished))
        self.failed_in_row.labels(self.portal).set(max(stored_streak, self._failed_in_row))

    def _tokens(self, config: Any, token: dict[str, Any] | None) -> None:
        p = self.portal
        if token is not None:
            if token.get("expires_at"):
                self.token_expiry.labels(p, "access").set(float(token["expires_at"]))
            days = REFRESH_DAYS.get(config.crm.kind)
            updated = token.get("updated_at")
            if days and isinstance(updated, datetime):
                if updated.tzinfo is None:
                    updated = updated.replace(tzinfo=timezone.utc)
                self.token_expiry.labels(p, "refresh").set(updated.timestamp() + days * 86400)
        long_lived = getattr(config.crm, "access_token", None)
        if config.crm.kind == "amocrm" and long_lived is not None:
            exp = jwt_expiry(long_lived.get_secret_value())
            if exp is not None:
                self.token_expiry.labels(p, "long_lived").set(float(exp))

    def sizes(self, counts: dict[str, int]) -> None:
        for segment, n in counts.items():
            self.segment.labels(self.portal, segment).set(n)

    def finished(self, status: str, seconds: float) -> None:
        import time

        if status == "failed":
            self._failed_in_row += 1
        elif status == "ok":
            self._failed_in_row = 0
        self.failed_in_row.labels(self.portal).set(self._failed_in_row)
        self.syncs.labels(self.portal, status).inc()
        self.duration.labels(self.portal).observe(seconds)
        self.last_sync.labels(self.portal, status).set(time.time())
        if status == "failed":
            self.errors.labels(self.portal, self.crm, "sync").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def jwt_expiry(token: str) -> int | None:
    """The ``exp`` claim of a JWT (amoCRM long-lived tokens are JWTs), unverified; None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return int(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
    except (ValueError, TypeError):
        return None


def portfolio_metrics(status: dict[str, Any], webhooks: dict[tuple[str, str, str], int]) -> bytes:
    """The many-portal service's ``/metrics`` (connector/portals_web.py), built at each scrape from
    ``/status`` (the registry, the run records and procrastinate's job table, so every web replica says
    the same): one series per portal where it matters, and the queue depth. The names the single-portal
    daemon uses keep their meaning (``lifecycle_consecutive_failed_syncs``, ``lifecycle_last_sync_timestamp_seconds``)
    so deploy/prometheus-alerts.yml applies to every portal."""
    from connector.registry import PORTAL_STATES

    registry = CollectorRegistry()
    state = Gauge("lifecycle_portal_state", "1 for the portal's registry state (active, paused, failing, uninstalled)",
                  ["portal", "state"], registry=registry)
    running = Gauge("lifecycle_portal_sync_running", "1 while a sync of the portal runs", ["portal"], registry=registry)
    queued = Gauge("lifecycle_portal_sync_queued", "1 while a sync of the portal waits in the queue", ["portal"],
                   registry=registry)
    failed = Gauge("lifecycle_consecutive_failed_syncs", "Syncs that failed since the last good one", ["portal"],
                   registry=registry)
    last = Gauge("lifecycle_last_sync_timestamp_seconds", "End of the last sync", ["portal", "status"], registry=registry)
    duration = Gauge("lifecycle_last_sync_duration_seconds", "Duration of the last finished sync", ["portal"],
                     registry=registry)
    requests = Gauge("lifecycle_last_sync_requests", "CRM requests of the last finished sync", ["portal"],
                     registry=registry)
    depth = Gauge("lifecycle_queue_depth", "Jobs in the queue: todo = waiting, doing = running", ["status"],
                  registry=registry)
    hooks = Counter("lifecycle_webhooks", "Webhooks received (this web process)", ["portal", "source", "result"],
                    registry=registry)
    for p in status["portals"]:
        name = p["portal"]
        for s in PORTAL_STATES:
            state.labels(name, s).set(1 if p["state"] == s else 0)
        running.labels(name).set(1 if p["running"] else 0)
        queued.labels(name).set(1 if p["queued"] else 0)
        failed.labels(name).set(p["failures_in_row"] or 0)
        run = p.get("last_run")
        if run and run.get("finished_at"):
            last.labels(name, run["status"]).set(datetime.fromisoformat(run["finished_at"]).timestamp())
            if run.get("duration_seconds") is not None:
                duration.labels(name).set(run["duration_seconds"])
            requests.labels(name).set(run.get("requests") or 0)
    for s in ("todo", "doing"):
        depth.labels(s).set(status["queue"].get(s, 0))
    for (portal, source, result), n in webhooks.items():
        hooks.labels(portal, source, result).inc(n)
    return generate_latest(registry)
