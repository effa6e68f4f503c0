"""The Grafana dashboard, built from the same analyst queries as the page.

Each query of :mod:`dashboards.queries` becomes a panel of the provisioned
ClickHouse data source, in the page's order: plots over time as time series
(stacked bars for ``stacked``), other plots as bar charts or trends, tiles as
stat panels, the rest as tables. ``python -m dashboards.grafana_dashboard``
rewrites :data:`DASHBOARD_FILE`; a test checks that it is up to date.

>>> board = dashboard()
>>> board["uid"], board["panels"][0]["type"], board["panels"][1]["targets"][0]["rawSql"].startswith("SELECT")
('feedbackloop', 'stat', True)
"""

from __future__ import annotations

import json
from pathlib import Path

from dashboards import queries

DASHBOARD_FILE = Path(__file__).resolve().parent / "grafana" / "dashboards" / "feedbackloop.json"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "feedbackloop-clickhouse"}
TIMESERIES, TABLE = 0, 1  # the plugin's query formats
TIME_COLUMNS = {"bucket"}


def _panel(query: queries.Query, panel_id: int, x: int, y: int, w: int, h: int) -> dict:
    plot = query.plot
    over_time = plot is not None and plot.x in TIME_COLUMNS
    kind = ("stat" if plot and plot.kind == "tiles" else "table" if plot is None
            else "timeseries" if over_time else "barchart" if plot.kind in ("bar", "stacked") else "trend")
    panel = {
        "id": panel_id, "type": kind, "title": query.question, "description": query.notes,
        "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [{"refId": "A", "datasource": DATASOURCE, "editorType": "sql",
                     "format": TIMESERIES if over_time else TABLE,
                     "queryType": "timeseries" if over_time else "table", "rawSql": query.sql}],
        "fieldConfig": {"defaults": {}, "overrides": []}, "options": {},
    }
    if over_time and plot.kind == "stacked":
        panel["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "bars", "fillOpacity": 80,
                                                     "stacking": {"mode": "normal"}}
    if kind == "trend":
        panel["options"]["xField"] = plot.x
        if plot.series:
            panel["transformations"] = [{"id": "partitionByValues", "options": {"fields": [plot.series]}}]
    if kind == "barchart":
        panel["options"]["xField"] = plot.x
    return panel


def dashboard() -> dict:
    """The dashboard JSON model."""
    panels, x, y = [], 0, 0
    for i, query in enumerate(queries.load(), 1):
        wide = query.plot is None or query.plot.kind == "tiles"
        w, h = (24, 5 if query.plot else 8) if wide else (12, 8)
        if x + w > 24:
            x, y = 0, y + 8
        panels.append(_panel(query, i, x, y, w, h))
        x, y = (0, y + h) if wide else (x + w, y)
    return {
        "uid": "feedbackloop", "title": "feedbackloop: what the labels buy", "tags": ["feedbackloop"],
        "editable": False, "refresh": "10s", "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
        "schemaVersion": 39, "version": 1, "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    DASHBOARD_FILE.write_text(render())
    print(f"wrote {DASHBOARD_FILE}")
