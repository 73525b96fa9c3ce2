"""The account's lead pipelines for the campaigns' start-up checks (deal actions, ``stage`` moves,
``close_deal_stage``): read once per check with ``GET /api/v4/leads/pipelines``, and the lookups by id or name
that all three make, with the error that names what exists."""

from __future__ import annotations

from typing import Any

from adapters.base import AdapterConfigError, pick


class Pipelines:
    def __init__(self, client: Any):
        self.client = client
        self._all: list[dict[str, Any]] | None = None

    def all(self) -> list[dict[str, Any]]:
        if self._all is None:
            body = self.client.get("/api/v4/leads/pipelines") or {}
            self._all = (body.get("_embedded") or {}).get("pipelines") or []
        return self._all

    def find(self, wanted: Any) -> dict[str, Any] | None:
        return pick(self.all(), wanted, "id", "name")

    def pipeline(self, campaign: Any, wanted: Any) -> dict[str, Any]:
        """The pipeline ``wanted`` (id or name), or a start-up error naming the account's pipelines."""
        pipeline = self.find(wanted)
        if pipeline is None:
            names = ", ".join(f"{p.get('name')} (id {p.get('id')})" for p in self.all())
            raise AdapterConfigError(f"[[campaign]] {campaign.name!r}: pipeline {wanted!r} is not an amoCRM pipeline; "
                                     f"pipelines: {names}")
        return pipeline


def statuses_of(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    return (pipeline.get("_embedded") or {}).get("statuses") or []


def status(campaign: Any, statuses: list[dict[str, Any]], wanted: Any, what: str) -> dict[str, Any]:
    """The status ``wanted`` (id or name) among ``statuses``, or a start-up error: ``what`` says what it is not
    (e.g. "status 'Offer' is not a status of pipeline 'Sales'"), followed by the statuses there are."""
    found = pick(statuses, wanted, "id", "name")
    if found is None:
        names = ", ".join(f"{s.get('name')} (id {s.get('id')})" for s in statuses)
        raise AdapterConfigError(f"[[campaign]] {campaign.name!r}: {what}; statuses: {names}")
    return found
