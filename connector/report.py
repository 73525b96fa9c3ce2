"""Rendering a :class:`Computation` as a table (rich), JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from connector.config import Settings
from connector.pipeline import Computation
from rules.presets import COLUMNS, ROWS


def as_dict(comp: Computation, *, segments: list[str], members: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "as_of": comp.as_of.isoformat(),
        "customers": comp.customers,
        "segments": {name: comp.counts[name] for name in segments},
        "active_share": comp.active_share,
    }
    if members:
        out["members"] = {name: [str(i) for i in comp.members(name)] for name in segments}
    if comp.predictions is not None:
        out["predictions"] = comp.predictions
    if comp.product_cycles:
        out["product_cycles"] = list(comp.product_cycles)
    return out


def as_json(comp: Computation, *, segments: list[str], members: bool) -> str:
    return json.dumps(as_dict(comp, segments=segments, members=members), ensure_ascii=False)


def as_csv(comp: Computation, *, segments: list[str], members: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if members:
        writer.writerow(["segment", "customer_id"])
        for name in segments:
            writer.writerows([name, str(i)] for i in comp.members(name))
    else:
        writer.writerow(["as_of", "segment", "customers", "share"])
        for name in segments:
            share = comp.counts[name] / comp.customers if comp.customers else 0.0
            writer.writerow([comp.as_of.isoformat(), name, comp.counts[name], f"{share:.4f}"])
    return buf.getvalue()


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def matrix_table(comp: Computation, settings: Settings) -> Table:
    lc = settings.segments.lifecycle
    b0, b1, b2 = lc.purchase_bins
    r0, r1 = lc.recency_days
    row_titles = {"new": f"new ({b0}" + (f"-{b1 - 1})" if b1 - 1 > b0 else ")"), "promising": f"promising ({b1}-{b2 - 1})",
                  "regular": f"regular ({b2}+)"}
    col_titles = {"active": f"active (<= {r0} d)", "sleeping": f"sleeping ({r0 + 1}-{r1} d)", "asleep": f"asleep (> {r1} d)"}
    cells = {(r, c): comp.counts[f"lifecycle.{r}_{c}"] for r in ROWS for c in COLUMNS}
    in_matrix = sum(cells.values())
    table = Table(title=f"Lifecycle matrix on {comp.as_of} (share of the {in_matrix} customers in it)")
    table.add_column("purchases \\ last purchase")
    for c in COLUMNS:
        table.add_column(col_titles[c], justify="right")
    table.add_column("total", justify="right")
    for r in ROWS:
        row_total = sum(cells[(r, c)] for c in COLUMNS)
        table.add_row(
            row_titles[r],
            *(f"{cells[(r, c)]}  {_pct(cells[(r, c)], in_matrix)}" for c in COLUMNS),
            f"{row_total}  {_pct(row_total, in_matrix)}",
        )
    col_totals = [sum(cells[(r, c)] for r in ROWS) for c in COLUMNS]
    table.add_row("total", *(f"{t}  {_pct(t, in_matrix)}" for t in col_totals), f"{in_matrix}", style="bold")
    return table


def kpi_line(comp: Computation, settings: Settings) -> Text:
    target = settings.kpi.active_share_target
    share = comp.active_share
    if share is None:
        return Text(f"Active base: no customer has bought yet (target {target:.0%})", style="yellow")
    ok = share >= target
    verdict = "meets the target" if ok else "below the target"
    return Text(
        f"Active base: {share:.1%} of {comp.buyers} buyers bought within "
        f"{settings.segments.lifecycle.recency_days[0]} days (target {target:.0%}): {verdict}",
        style="green" if ok else "red",
    )


def segments_table(comp: Computation, segments: list[str]) -> Table:
    table = Table(title=f"Segments ({comp.customers} customers)")
    table.add_column("segment")
    table.add_column("customers", justify="right")
    table.add_column("share", justify="right")
    for name in segments:
        note = " (static, frozen)" if name in comp.frozen else ""
        table.add_row(name + note, str(comp.counts[name]), _pct(comp.counts[name], comp.customers))
    return table


def render_table(
    comp: Computation, settings: Settings, *, segments: list[str], members: bool, console: Console
) -> None:
    parts: list[Any] = []
    lifecycle_cells = [n for n in segments if n.startswith("lifecycle.")]
    if "lifecycle" in settings.segments.presets and len(segments) > 1:
        parts.append(matrix_table(comp, settings))
        segments = [n for n in segments if n not in lifecycle_cells]
    parts.append(segments_table(comp, segments))
    parts.append(kpi_line(comp, settings))
    skipped = comp.stats.deals_without_customer + comp.stats.deals_unknown_customer
    if skipped:
        parts.append(
            Text(
                f"Skipped deals: {comp.stats.deals_without_customer} without a customer, "
                f"{comp.stats.deals_unknown_customer} whose customer is not in the mirror",
                style="dim",
            )
        )
    if comp.predictions is not None:
        parts.extend(predictions_parts(comp, settings))
    if comp.product_cycles:
        parts.append(cycles_table(comp))
    console.print(Group(*parts))
    if members:
        for name in segments:
            ids = comp.members(name)
            console.print(f"[bold]{name}[/bold] ({len(ids)}): " + (", ".join(map(str, ids)) or "-"))


def predictions_parts(comp: Computation, settings: Settings) -> list[Any]:
    """The model's fit summary and the P(alive) distribution, or why there are no predictions."""
    from rules.predict.models import TITLES

    pred = comp.predictions or {}
    users = pred.get("segments_using", [])
    if not pred.get("usable"):
        line = f"Predictions unavailable: {pred.get('reason') or 'no usable model'}"
        if users:
            line += f". Segments using them select nobody: {', '.join(users)}"
        return [Text(line, style="yellow")]
    counts = pred["counts"]
    params = ", ".join(f"{k} {v:.4g}" for k, v in counts["params"].items())
    origin = {"stored": "stored fit", "fitted": "fitted now", "memory": "fitted for this report"}.get(pred.get("origin", ""), "")
    parts: list[Any] = [Text(
        f"Predictions: {TITLES.get(counts['model'], counts['model'])} fitted on {pred['fitted_on']} ({origin}) on "
        f"{counts['customers']} buyers, time in days: {params}; log-likelihood {counts['loglik']:.1f}, "
        f"converged: {'yes' if counts['converged'] else 'no'}")]
    spend = pred.get("spend")
    if spend and spend.get("usable"):
        parts.append(Text("Order value: Gamma-Gamma " + ", ".join(f"{k} {v:.4g}" for k, v in spend["params"].items())))
    elif pred.get("spend_reason"):
        parts.append(Text(f"Order value: no model ({pred['spend_reason']}); exp_order_value and clv_365d are empty",
                          style="yellow"))
    dist = pred.get("p_alive")
    if dist and dist["customers"]:
        table = Table(title=f"P(alive) of {dist['customers']} buyers (mean {dist['mean']:.2f}, median {dist['median']:.2f})")
        for label in dist["histogram"]:
            table.add_column(label, justify="right")
        table.add_row(*(f"{n}  {_pct(n, dist['customers'])}" for n in dist["histogram"].values()))
        parts.append(table)
    return parts



def cycles_table(comp: Computation) -> Table:
    """The ``[[product_cycle]]`` entries: the cycle used (a learned one with the gaps it came from), buyers, due."""
    table = Table(title="Product cycles (reorder.due)")
    for name, justify in (("product", "left"), ("cycle, days", "right"), ("from", "left"), ("buyers", "right"),
                          ("due now", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in comp.product_cycles:
        days = c["cycle_days"]
        if c["configured"] == "learn":
            origin = f"learned: median of {c['observations']} gaps" if days is not None else \
                f"not learned: {c['observations']} gaps, too few (see \\[products] min_observations)"
        else:
            origin = "configured"
        table.add_row(str(c["product"]), "-" if days is None else f"{days:g}", origin, str(c["customers"]), str(c["due"]))
    return table
