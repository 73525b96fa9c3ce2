"""Prometheus metrics of the daemon (``GET /metrics``), in their own registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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

    def sizes(self, counts: dict[str, int]) -> None:
        for segment, n in counts.items():
            self.segment.labels(self.portal, segment).set(n)

    def finished(self, status: str, seconds: float) -> None:
        import time

        self.syncs.labels(self.portal, status).inc()
        self.duration.labels(self.portal).observe(seconds)
        self.last_sync.labels(self.portal, status).set(time.time())
        if status == "failed":
            self.errors.labels(self.portal, self.crm, "sync").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
