"""Prediction model fits: parameters and fit quality per portal (refitted at most daily, see
connector/predictions.py)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import sqlalchemy as sa

from connector.store.base import Part, now
from connector.store.schema import model_fits


class ModelFits(Part):
    """Store and read this portal's model fits."""

    def save_model_fit(self, model: str, fitted_on: date, detail: dict[str, Any], *, usable: bool,
                       loglik: float | None, run_id: int | None = None) -> None:
        finite = loglik is not None and loglik == loglik and abs(loglik) != float("inf")
        with self.engine.begin() as conn:
            conn.execute(sa.insert(model_fits).values(
                portal=self.portal, run_id=run_id, model=model, fitted_on=fitted_on, fitted_at=now(), usable=usable,
                loglik=loglik if finite else None, detail=json.dumps(detail, default=str)))

    def latest_model_fit(self, model: str | None = None) -> dict[str, Any] | None:
        """The newest stored fit of this portal (of ``model`` if given): fitted_on, detail, ..."""
        query = sa.select(model_fits).where(model_fits.c.portal == self.portal)
        if model is not None:
            query = query.where(model_fits.c.model == model)
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(model_fits.c.id.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        fitted_on = row["fitted_on"]
        if isinstance(fitted_on, str):
            fitted_on = date.fromisoformat(fitted_on)
        return dict(row) | {"fitted_on": fitted_on, "detail": json.loads(row["detail"])}
