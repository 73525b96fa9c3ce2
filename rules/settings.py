"""The presets' thresholds (``[segments]`` in the TOML), validated with pydantic.

They live here, on the ground floor, so ``rules/`` needs nothing from ``connector/``: the connector's
``Settings`` embeds :class:`SegmentsConfig` as its ``segments`` section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LifecyclePreset(_Section):
    purchase_bins: tuple[int, int, int] = (1, 2, 4)
    recency_days: tuple[int, int] = (60, 90)

    @field_validator("purchase_bins")
    @classmethod
    def _bins_increase(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not (1 <= v[0] < v[1] < v[2]):
            raise ValueError("purchase_bins must be three increasing counts starting at 1 or more, e.g. [1, 2, 4]")
        return v

    @field_validator("recency_days")
    @classmethod
    def _recency_increase(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not (0 <= v[0] < v[1]):
            raise ValueError("recency_days must be two increasing day counts, e.g. [60, 90]")
        return v


class CadencePreset(_Section):
    frequent_max_gap: float = Field(30, gt=0)
    periodic_max_gap: float = Field(180, gt=0)
    lapse_factor: float = Field(2.0, gt=0)
    min_purchase_days: int = Field(3, ge=2)
    rare_first_purchase_days: int = Field(180, ge=0)

    @model_validator(mode="after")
    def _gaps_increase(self) -> CadencePreset:
        if self.frequent_max_gap >= self.periodic_max_gap:
            raise ValueError("frequent_max_gap must be smaller than periodic_max_gap")
        return self


class BirthdayPreset(_Section):
    soon_days: int = Field(30, ge=0, le=366)


class PredictedPreset(_Section):
    """``[segments.predicted]``: the prediction presets (enable with ``presets = [..., "predicted"]``)."""

    at_risk_max_p_alive: float = Field(0.3, gt=0, lt=1, description="at_risk: P(alive) below this")
    at_risk_min_monetary: float = Field(0, ge=0, description="at_risk: total bought at least this much")
    due_min_p_buy_30d: float = Field(0.5, gt=0, lt=1, description="due: P(buys within 30 days) at least this")


PresetName = Literal["lifecycle", "status", "cadence", "birthday", "predicted"]


class SegmentsConfig(_Section):
    presets: tuple[PresetName, ...] = ("lifecycle", "status", "cadence", "birthday")
    lifecycle: LifecyclePreset = LifecyclePreset()
    cadence: CadencePreset = CadencePreset()
    birthday: BirthdayPreset = BirthdayPreset()
    predicted: PredictedPreset = PredictedPreset()


class ProductCycleConfig(_Section):
    """One ``[[product_cycle]]``: a product bought again on a cycle (rules/reorder.py)."""

    product: str = Field(min_length=1, description='product id, name, or "section:NAME"')
    cycle_days: int | Literal["learn"] = Field(
        description='days between purchases, or "learn": the median gap between purchases across customers')
    remind_before_days: int = Field(5, ge=0, le=365, description="open the reminder window this many days before")
    units_per_cycle: float | None = Field(None, gt=0, description="units one cycle uses up (a 3-pack lasts 3 cycles)")
    max_overdue_days: int | None = Field(None, ge=0, description="leave the window this long after the due date "
                                                                  "(default: one cycle)")

    @field_validator("cycle_days")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if value != "learn" and not (isinstance(value, int) and 1 <= value <= 3650):
            raise ValueError('cycle_days must be a whole number of days from 1 to 3650, or "learn"')
        return value


class ProductsConfig(_Section):
    """``[products]``: product rows of deals (rules.products, rules.reorder)."""

    pull: bool | None = Field(None, description="pull product rows; unset: when a rule or [[product_cycle]] uses them")
    min_observations: int = Field(20, ge=2, description='"learn" cycles need at least this many purchase gaps')
