"""Draw the results JSON that run.py wrote as a PNG of bar charts, one panel per scenario.

Runs in the peers' virtual environment, which has matplotlib (run.py calls it there):

    .venv-peers/bin/python chart.py RESULTS.json OUT.png

Each panel shows one metric for every server measured in that scenario; trioserve's bar is
drawn in a different colour, each peer's bar is labelled with trioserve's ratio to it, and a
load run that shared a core with other work (see run.py's "other load") is hatched. The trio
limit (trio_limit.py, measured in the plain hello-world load scenarios only) is not a server: it
is drawn as a dashed line across its panel, labelled with its req/s and trioserve's ratio to it.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

# metric shown per kind of scenario: (key, axis label, higher is better)
_METRIC = {
    "load": ("rps", "req/s", True),
    "memory": ("kib_per_conn", "KiB per idle connection", False),
    "startup": ("seconds", "seconds to first response", False),
    "sigterm": ("seconds", "seconds from SIGTERM to exit", False),
}
_SUBJECT = "trioserve"
_COLOURS = {_SUBJECT: "#d9480f", "trioserve-compiled": "#f59f00"}  # peers: "#748ffc"
_LIMIT = "trio-limit"  # a reference line, not a bar
_LIMIT_COLOUR = "#2b8a3e"
_SHARED = 5.0  # other load (percent of a core) above which run.py flags a load run


def draw(data: dict[str, Any], out: Path) -> None:
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    scenarios = [s for s in data["scenarios"] if any(m["values"] for m in s["measurements"])]
    columns = 2 if len(scenarios) > 1 else 1
    rows = math.ceil(len(scenarios) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(scenarios) :]:
        ax.set_visible(False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        key, label, higher_better = _METRIC[scenario["kind"]]
        measured = [m for m in scenario["measurements"] if m["server"] != _LIMIT]
        reference = next((m for m in scenario["measurements"] if m["server"] == _LIMIT), None)
        limit = reference["values"].get(key) if reference else None
        names = [m["title"] for m in measured]
        values = [m["values"].get(key, 0.0) for m in measured]
        colours = [_COLOURS.get(m["server"], "#748ffc") for m in measured]
        bars = ax.barh(names, values, color=colours)
        ax.invert_yaxis()
        ax.set_title(f"{scenario['name']}: {scenario['title']}", fontsize=9, loc="left")
        better = "higher is better" if higher_better else "lower is better"
        ax.set_xlabel(f"{label} ({better})", fontsize=8)
        ax.tick_params(labelsize=8)
        ours = next((m["values"].get(key) for m in measured if m["server"] == _SUBJECT), None)
        for bar, m, value in zip(bars, measured, values, strict=True):
            text = f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
            if key not in m["values"]:
                text = "not measured: " + m["note"][:60]
            elif ours is not None and m["server"] != _SUBJECT and value:
                text += f"  (trioserve {ours / value:.2f}x)"
            if m["values"].get("exit_code", 0) < 0:
                text += "  (signal)"
            if m["values"].get("other_pct", 0) > _SHARED:
                bar.set_hatch("///")
                text += "  (shared core)"
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                " " + text,
                va="center",
                fontsize=7,
            )
        ax.set_xlim(0, max([*values, limit or 0.0]) * 1.6 or 1)
        if reference is not None:
            _draw_limit(ax, limit, reference["note"], len(measured), ours)
    fig.suptitle(data["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def _draw_limit(ax: Any, limit: float | None, note: str, bars: int, ours: float | None) -> None:
    """The trio limit as a dashed line over the bars, labelled in an empty row of its own."""
    # Bars sit at y = 0 .. bars-1, the first at the top (the axis is inverted): one more row
    # above them, at y = -1, holds the label so that it covers no bar and no bar's label.
    ax.set_ylim(bars - 0.5, -1.6)
    if not bars:
        ax.set_yticks([])  # only the line: no server was measured beside it
    style = {"va": "center", "fontsize": 7, "color": _LIMIT_COLOUR}
    if not limit:
        ax.text(0, -1, " trio limit not measured: " + note[:60], ha="left", **style)
        return
    ax.axvline(limit, color=_LIMIT_COLOUR, linestyle="--", linewidth=1.2)
    text = f"trio limit: {limit:,.0f} req/s"
    if ours is not None:
        text += f", trioserve at {ours / limit:.2f}x"
    if limit > ax.get_xlim()[1] / 2:
        ax.text(limit, -1, f"{text} ", ha="right", **style)
    else:
        ax.text(limit, -1, f" {text}", ha="left", **style)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    draw(data, Path(sys.argv[2]))


if __name__ == "__main__":
    main()
