"""Shared pieces of the evaluation reports of every task: the metric table and figure-to-image."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Row", "format_cell", "metric_table", "new_figure", "save_figure"]

#: One table row: metric key, label, format (``"{:d}"`` formats an int).
Row = tuple[str, str, str]


def format_cell(value: Any, fmt: str) -> str:
    """One number of a table; ``-`` when missing, ``n/m`` (not meaningful) for NaN, ``inf`` as such, never
    ``-0.00``. ``envs.metrics.trade_metrics`` gives NaN for ratios over periods too short to annualize."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/m"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = fmt.format(int(value) if fmt == "{:d}" else float(value))
    # A tiny negative number rounds to "-0.00": a sign the reader cannot act on.
    if text.startswith("-") and not any(c in "123456789" for c in text):
        text = ("+" if "+" in fmt else "") + text[1:]
    return text


def metric_table(
    columns: Mapping[str, Mapping[str, Any]], rows: Sequence[Row], *, min_width: int = 12
) -> list[str]:
    """Lines of a table: one column per policy (``columns``: name -> metrics), one row per metric."""
    first = max(20, *(len(label) for _, label, _ in rows))
    widths = [max(min_width, len(c) + 2) for c in columns]
    lines = [f"{'':<{first}}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
    for key, label, fmt in rows:
        cells = [
            f"{format_cell(m.get(key), fmt):>{w}}" for m, w in zip(columns.values(), widths, strict=True)
        ]
        lines.append(f"{label:<{first}}" + "".join(cells))
    return lines


def new_figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=100)


def save_figure(fig: Any, path: str | Path) -> np.ndarray:
    """Save ``fig`` to ``path`` and return it as an RGB array (for TensorBoard), closing it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
