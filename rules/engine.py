"""The segment engine: presets plus custom rules, compiled once, evaluated over the feature frame.

``SegmentEngine.compile`` (from explicit values: the preset thresholds, the custom fields, the rules)
type-checks every ``[[segment]]`` rule against the feature schema (built-in
features, declared custom fields, and every segment name) and orders custom segments so a rule may use
another custom segment; a cycle is an error naming the segments in it. ``evaluate`` adds one boolean
column per segment to the feature frame, all vectorised. Static segments that the state store has
already frozen are taken from the stored membership instead of being recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

import polars as pl

from rules.features import BUILTIN_FEATURES, CustomField
from rules.language import CompiledRule, compile_rule
from rules.predict.names import PREDICTION_FEATURES
from rules.products import add_rule_inputs
from rules.presets import all_preset_names, preset_segments
from rules.reorder import DUE_COLUMN, REORDER_FEATURES, SEGMENT as REORDER_SEGMENT, CycleSpec
from rules.settings import SegmentsConfig


class SegmentRuleSpec(Protocol):
    """One ``[[segment]]`` entry: its name, its rule text, and whether it freezes on first evaluation."""

    @property
    def name(self) -> str: ...
    @property
    def when(self) -> str: ...
    @property
    def static(self) -> bool: ...


@dataclass(frozen=True)
class CustomSegment:
    name: str
    rule: CompiledRule
    static: bool


@dataclass(frozen=True)
class SegmentEngine:
    presets: dict[str, pl.Expr]
    custom: tuple[CustomSegment, ...]  # in dependency order
    fields: dict[str, CustomField]
    cycles: tuple[CycleSpec, ...] = ()  # [[product_cycle]]: the reorder features and reorder.due

    @property
    def uses_products(self) -> bool:
        """Whether evaluating needs product rows (a product function in a rule, or a product cycle)."""
        return bool(self.cycles) or any(c.rule.products for c in self.custom)

    @property
    def segment_names(self) -> list[str]:
        return [*self.presets, *(c.name for c in self.custom)]

    @property
    def feature_names(self) -> list[str]:
        """Built-in features, predictions, reorder features and declared custom fields (the columns of the
        features frame)."""
        return [*BUILTIN_FEATURES, *PREDICTION_FEATURES, *REORDER_FEATURES, *self.fields]

    def prediction_users(self) -> list[str]:
        """Segments whose definition uses a prediction feature (directly, or through another segment)."""
        direct = {c.name for c in self.custom if c.rule.references & PREDICTION_FEATURES.keys()}
        direct |= {n for n in self.presets if n.startswith("predicted.")}
        changed = True
        while changed:
            more = {c.name for c in self.custom if c.rule.references & direct} - direct
            direct |= more
            changed = bool(more)
        return [n for n in self.segment_names if n in direct]

    def definitions(self) -> dict[str, tuple[bool, str]]:
        """Segment name -> (static, definition text), as recorded in the state store."""
        out = {name: (False, "preset") for name in self.presets}
        out.update({c.name: (c.static, c.rule.source) for c in self.custom})
        return out

    @classmethod
    def compile(cls, segments: SegmentsConfig, fields: Mapping[str, CustomField],
                rules: Sequence[SegmentRuleSpec] = (), cycles: Sequence[CycleSpec] = ()) -> SegmentEngine:
        """The engine for these preset thresholds, custom fields (name -> field), custom rules and product
        cycles; ValueError (or RuleError) naming the segment or field at fault."""
        fields = dict(fields)
        for name in fields:
            if name in BUILTIN_FEATURES or name in PREDICTION_FEATURES or name in REORDER_FEATURES:
                raise ValueError(f"[fields] {name!r}: a built-in feature has this name; choose another")
        presets = preset_segments(segments)
        if cycles:
            presets[REORDER_SEGMENT] = pl.col(DUE_COLUMN).fill_null(False)
        reserved = {*all_preset_names(), REORDER_SEGMENT}
        seen: set[str] = set()
        for rule in rules:
            if rule.name in reserved:
                raise ValueError(f"segment {rule.name!r}: this name belongs to a preset; choose another")
            if rule.name in seen:
                raise ValueError(f"segment {rule.name!r} is defined twice")
            if rule.name in BUILTIN_FEATURES or rule.name in PREDICTION_FEATURES or rule.name in REORDER_FEATURES \
                    or rule.name in fields:
                raise ValueError(f"segment {rule.name!r}: a feature has this name; choose another")
            seen.add(rule.name)
        schema: dict[str, str] = {**BUILTIN_FEATURES, **PREDICTION_FEATURES, **REORDER_FEATURES,
                                  **{n: f.type for n, f in fields.items()}}
        schema.update({name: "bool" for name in reserved})  # disabled presets get a clearer error below
        schema.update({rule.name: "bool" for rule in rules})
        disabled = reserved - set(presets)
        compiled = {}
        for rule in rules:
            compiled[rule.name] = CustomSegment(rule.name, compile_rule(rule.when, schema, segment=rule.name), rule.static)
            off = sorted(compiled[rule.name].rule.references & disabled)
            if off:
                hint = ("add a [[product_cycle]]" if off == [REORDER_SEGMENT]
                        else "whose preset is not enabled in [segments] presets")
                raise ValueError(f"segment {rule.name!r}: uses {', '.join(off)}, {hint}")
        return cls(presets=presets, custom=_ordered(compiled), fields=fields, cycles=tuple(cycles))

    def evaluate(self, features: pl.DataFrame, frozen: Mapping[str, pl.Series] | None = None, *,
                 as_of: date | None = None, products: pl.DataFrame | None = None, timezone: str = "UTC") -> pl.DataFrame:
        """Return ``id`` plus one boolean column per segment.

        ``frozen`` maps a static segment already frozen in the state store to its member ids. ``as_of`` is
        the rules' ``today``; ``products`` the product rows of won deals for product functions (None: not
        pulled, product functions are unknown and select nobody); see rules.products.
        """
        frozen = frozen or {}
        live = [seg.rule for seg in self.custom if seg.name not in frozen]
        features = add_rule_inputs(features, any(r.today for r in live), [c for r in live for c in r.products],
                                   as_of=as_of, products=products, timezone=timezone)
        missing = [n for n in PREDICTION_FEATURES if n not in features.columns]
        if missing:  # no model was asked for: a rule using a prediction sees nulls and selects nobody
            features = features.with_columns(pl.lit(None, pl.Float64).alias(n) for n in missing)
        reorder_types = {"string": pl.String, "date": pl.Date, "number": pl.Int64}
        features = features.with_columns(  # no [[product_cycle]] (or not computed): nulls, nobody due
            [pl.lit(None, reorder_types[t]).alias(n) for n, t in REORDER_FEATURES.items() if n not in features.columns]
            + ([pl.lit(False).alias(DUE_COLUMN)] if DUE_COLUMN not in features.columns else []))
        frame = features.with_columns(
            (pl.col("id").is_in(frozen[n].implode()) if n in frozen else e).alias(n) for n, e in self.presets.items()
        )
        for seg in self.custom:
            expr = pl.col("id").is_in(frozen[seg.name].implode()) if seg.name in frozen else seg.rule.expr
            frame = frame.with_columns(expr.alias(seg.name))
        return frame.select("id", *self.segment_names)


def _ordered(compiled: dict[str, CustomSegment]) -> tuple[CustomSegment, ...]:
    """Topological order of custom segments by the segments they reference; a cycle is an error."""
    order: list[CustomSegment] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ValueError(f"segment {name!r}: rules refer to each other in a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for ref in sorted(compiled[name].rule.references):
            if ref in compiled:
                visit(ref, path + [name])
        state[name] = 2
        order.append(compiled[name])

    for name in compiled:
        visit(name, [])
    return tuple(order)

