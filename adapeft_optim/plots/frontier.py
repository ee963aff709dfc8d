"""Pareto-frontier figures: trainable-parameter share against loss (reduction)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import _matplotlib, _save

_RECIPE_MARKERS = ("s", "D", "^", "v", "P", "X", "<", ">", "h", "p")


def plot_frontier(
    points: Any,
    path: str | os.PathLike,
    recipes: Mapping[str, tuple[float, float]] | None = None,
    *,
    budget: float | None = None,
    selection: Any = None,
    ylabel: str = "predicted loss reduction",
    title: str | None = None,
    annotate: bool = True,
    figsize: tuple[float, float] = (8.5, 4.5),
    dpi: int = 100,
) -> Path:
    """Pareto frontier: trainable-parameter share against loss (reduction).

    x is the percentage of trainable parameters (``100 * fraction``) on a log axis, y the
    points' ``value`` (predicted loss reduction, or a measured loss: set ``ylabel``).
    Points with ``fraction <= 0`` (the empty selection) cannot sit on a log axis and are
    left out. Everything drawn has a legend entry, outside the axes on the right.

    Frontier points are numbered in order of size; the legend lists what each number is:
    the group it adds to the previous point (``"2  +embed"``) when the frontier is nested,
    as a greedy one is, else its groups (``"N groups"`` past 40 characters). Numbers that
    would overlap are moved apart, so 7 groups of nearly equal size stay readable.

    Args:
        points: frontier points, objects with ``fraction``, ``value`` and ``groups``
            attributes (``selection.FrontierPoint``) or tuples ``(fraction, value[, groups])``;
            or a mapping label -> such a sequence to draw several frontiers (e.g. greedy
            against exact), each with its legend entry; their numbers then carry a letter per
            frontier (``a1``, ``b1``).
        path: output file; the format follows the suffix, ``.png`` is appended when there is
            none. Parent folders are created.
        recipes: optional fixed PEFT recipes, name -> ``(fraction, y)``, each drawn with a
            marker of its own and named in the legend (e.g.
            ``{"LoRA": (0.004, 0.31), "BitFit": (0.001, 0.27)}``) (default: None)
        budget: a fraction of the parameters in (0, 1], drawn as a dashed vertical line
            (default: None)
        selection: the chosen point, a :class:`~adapeft_optim.selection.Selection` (or any
            object with ``fraction``, ``value`` and ``groups``) or a tuple
            ``(fraction, value[, groups])``, drawn as a star (default: None)
        ylabel: y axis label (default: "predicted loss reduction")
        title: figure title (default: None)
        annotate: number the frontier points and list their groups in the legend
            (default: True)
        figsize: figure size in inches (default: (8.5, 4.5))
        dpi: resolution of raster output (default: 100)

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ImportError: matplotlib is not installed.
        TypeError: a point has neither the attributes nor the tuple form.
        ValueError: there is nothing with a positive fraction to draw, or ``budget`` is not
            in (0, 1].
    """
    fig = _frontier_figure(points, recipes, ylabel, title, annotate, figsize, dpi, budget=budget, selection=selection)
    return _save(fig, path, dpi)


def _frontier_figure(points, recipes, ylabel, title, annotate, figsize, dpi, *, budget=None, selection=None):
    """The figure of :func:`plot_frontier`: frontiers, then recipes, the selection and the budget
    line, in this order in the legend."""
    Figure, mpl = _matplotlib()
    series, recipe_points, budget, chosen = _frontier_inputs(points, recipes, budget, selection)
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    handles, numbers = _draw_frontiers(ax, series, annotate)
    handles += _draw_recipes(ax, recipe_points, mpl.colormaps["Dark2"])
    if chosen is not None and chosen[0] > 0:
        handles.append(_draw_selection(ax, chosen))
    if budget is not None:
        handles.append(_draw_budget(ax, budget))
    _finish_frontier_axes(fig, ax, handles, ylabel, title)
    if numbers:
        _separate(fig, numbers)
    return fig


def _frontier_inputs(points, recipes, budget, selection):
    """Validated ``(series, recipe_points, budget, chosen)`` of :func:`plot_frontier`'s arguments:
    label -> frontier points, recipe name -> ``(fraction, y)``, the budget as a float (or None)
    and the selection as a point (or None)."""
    if isinstance(points, Mapping):
        series = {str(label): [_frontier_point(p) for p in pts] for label, pts in points.items()}
    else:
        series = {"frontier": [_frontier_point(p) for p in points]}
    recipe_points = {}
    for name, value in (recipes or {}).items():
        try:
            fraction, y = value
            recipe_points[str(name)] = (float(fraction), float(y))
        except (TypeError, ValueError):
            raise TypeError(f"recipe {name!r} must map to (fraction, y), got {value!r}") from None
    if budget is not None:
        budget = float(budget)
        if not (math.isfinite(budget) and 0.0 < budget <= 1.0):
            raise ValueError(f"Invalid budget: {budget}; use a fraction of the parameters in (0, 1]")
    chosen = _frontier_point(selection) if selection is not None else None
    drawable = [p for pts in series.values() for p in pts if p[0] > 0] + [p for p in recipe_points.values() if p[0] > 0]
    if not drawable:
        raise ValueError("plot_frontier needs at least one point or recipe with fraction > 0")
    return series, recipe_points, budget, chosen


def _draw_frontiers(ax, series, annotate) -> tuple[list[Any], list[Any]]:
    """Draw each frontier's line (points with a positive fraction, sorted) and, with
    ``annotate``, number its points; returns the legend handles (a line, then one entry per
    number) and the number annotations."""
    from matplotlib.lines import Line2D

    handles: list[Any] = []
    numbers = []
    for s, (label, pts) in enumerate(series.items()):
        pts = sorted(p for p in pts if p[0] > 0)
        if not pts:
            continue
        x = [100.0 * p[0] for p in pts]
        (line,) = ax.plot(x, [p[1] for p in pts], marker="o", label=label)
        handles.append(line)
        if not annotate or not any(p[2] for p in pts):
            continue
        prefix = "" if len(series) == 1 else chr(ord("a") + s % 26)
        for k, (xi, (_, yi, grp), text) in enumerate(zip(x, pts, _point_labels(pts)), start=1):
            if not grp:
                continue
            tag = f"{prefix}{k}"
            numbers.append(_number_point(ax, tag, (xi, yi), line.get_color()))
            handles.append(Line2D([], [], linestyle="none", label=f"{tag}  {text}"))
    return handles, numbers


def _number_point(ax, tag: str, xy: tuple[float, float], color) -> Any:
    """The bold number ``tag`` beside the frontier point at ``xy``, in its line's colour."""
    return ax.annotate(
        tag,
        xy,
        textcoords="offset points",
        xytext=(4, 4),
        fontsize=8,
        color=color,
        fontweight="bold",
        zorder=5,
        bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.8},
    )


def _draw_recipes(ax, recipe_points, colors) -> list[Any]:
    """One marker per recipe with a positive fraction, each with its own shape and colour."""
    handles = []
    for i, (name, (fraction, y)) in enumerate(recipe_points.items()):
        if fraction <= 0:
            continue
        handles.append(
            ax.scatter(
                [100.0 * fraction],
                [y],
                marker=_RECIPE_MARKERS[i % len(_RECIPE_MARKERS)],
                color=colors(i % colors.N),
                zorder=3,
                label=name,
            )
        )
    return handles


def _selection_label(groups: tuple[str, ...]) -> str:
    """Legend entry of the selection: its groups, or their number past 30 characters."""
    joined = "+".join(groups)
    if groups and len(joined) <= 30:
        return f"selection ({joined})"
    if groups:
        return f"selection ({len(groups)} groups)"
    return "selection"


def _draw_selection(ax, chosen) -> Any:
    """The chosen point as a hollow star."""
    return ax.scatter(
        [100.0 * chosen[0]],
        [chosen[1]],
        marker="*",
        s=220,
        facecolor="none",
        edgecolor="crimson",
        linewidth=1.5,
        zorder=4,
        label=_selection_label(chosen[2]),
    )


def _draw_budget(ax, budget: float) -> Any:
    """The budget as a dashed vertical line."""
    return ax.axvline(
        100.0 * budget,
        color="0.35",
        linestyle="--",
        linewidth=1,
        label=f"budget {100.0 * budget:.3g}%",
    )


def _finish_frontier_axes(fig, ax, handles, ylabel, title) -> None:
    """Log x axis, labels, grid, the legend outside the axes on the right, and the title."""
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (%)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        handlelength=1.5,
    )
    if title:  # over the figure: the legend beside the axes leaves them too narrow for it
        fig.suptitle(title)


def _point_labels(pts: list[tuple[float, float, tuple[str, ...]]]) -> list[str]:
    """What each point of a sorted frontier holds: ``"+group"`` added to the previous point
    when the frontier is nested there, else its groups."""
    labels, previous = [], ()
    for _, _, groups in pts:
        if previous and set(previous) < set(groups):
            text = "+" + "+".join(g for g in groups if g not in previous)
        else:
            text = "+".join(groups)
        labels.append(text if len(text) <= 40 else f"{len(groups)} groups")
        previous = groups
    return labels


def _frontier_point(p) -> tuple[float, float, tuple[str, ...]]:
    if all(hasattr(p, attr) for attr in ("fraction", "value")):
        fraction, value, groups = p.fraction, p.value, getattr(p, "groups", ())
    elif isinstance(p, Sequence) and not isinstance(p, str) and len(p) in (2, 3):
        fraction, value, groups = p[0], p[1], (p[2] if len(p) == 3 else ())
    else:
        raise TypeError(
            f"frontier point must have .fraction and .value (selection.FrontierPoint) or be a "
            f"(fraction, value[, groups]) tuple, got {p!r}"
        )
    groups = (groups,) if isinstance(groups, str) else tuple(str(g) for g in (groups or ()))
    return float(fraction), float(value), groups


def _separate(fig, labels) -> None:
    """Move point labels up or down until none overlaps another label or a marker (in the
    final layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # runs the constrained layout: positions are final from here
    fig.set_layout_engine("none")
    renderer = canvas.get_renderer()
    to_pixels = fig.dpi / 72.0
    ax = labels[0].axes

    def square(x, y, size_points):
        r = size_points * to_pixels / 2.0
        return Bbox([[x - r, y - r], [x + r, y + r]])

    placed = []  # the markers first: labels keep off every point
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        for x, y in line.get_transform().transform(line.get_xydata()):
            placed.append(square(x, y, line.get_markersize()))
    for collection in ax.collections:
        sizes = collection.get_sizes()
        size = math.sqrt(float(sizes[0])) if len(sizes) else 6.0
        for x, y in collection.get_offset_transform().transform(collection.get_offsets()):
            placed.append(square(x, y, size))
    for label in labels:
        dx, dy = label.xyann
        box = label.get_window_extent(renderer)
        step = box.height / to_pixels + 1.0
        for k in range(1, 24):
            if not any(box.overlaps(other) for other in placed):
                break
            # up and down in turn, further each time: +1 step, -1, +2, -2, ...
            shift = (k + 1) // 2 * step * (1 if k % 2 else -1)
            label.xyann = (dx, dy + shift)
            box = label.get_window_extent(renderer)
        placed.append(box)
