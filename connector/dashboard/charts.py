"""Server-side SVG charts (pygal): no script, no asset from the internet (pygal's tooltip script is off)."""

from __future__ import annotations

from typing import Any

import pygal
from pygal.style import Style

STYLE = Style(background="transparent", plot_background="transparent", foreground="#333", foreground_strong="#111",
              foreground_subtle="#999", colors=("#2b6cb0", "#c05621"), font_family="system-ui, sans-serif")


def kpi_chart(history: list[dict[str, Any]], target: float, title: str) -> str:
    """The active-base share per weekly point, with the target as a flat line; inline SVG markup."""
    chart = pygal.Line(js=[], disable_xml_declaration=True, style=STYLE, height=260, width=760, show_dots=False,
                       x_label_rotation=0, show_minor_x_labels=False, legend_at_bottom=True, range=(0, 100),
                       value_formatter=lambda v: f"{v:.1f}%", explicit_size=False, dynamic_print_values=False)
    labels = [p["date"] for p in history]
    chart.x_labels = labels
    chart.x_labels_major = labels[::max(len(labels) // 6, 1)]
    chart.add(title, [None if p["active_share"] is None else 100 * p["active_share"] for p in history])
    chart.add(f"{100 * target:.0f}%", [100 * target] * len(history))
    return chart.render(is_unicode=True)
