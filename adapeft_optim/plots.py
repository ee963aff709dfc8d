"""Figures of parameter-group influence: PPI heatmaps, APPI curves, Pareto frontiers.

Two layers:

* **Processing** (pure numpy, no matplotlib): :func:`iqr_mask`, :func:`ema`,
  :func:`ppi_matrix`, :func:`appi_curves` and :func:`heatmap_values`, which implements the
  outlier removal / smoothing / normalisation of the paper's Appendix A.1.
* **Figures** (matplotlib, the optional ``plot`` extra): :func:`plot_ppi_heatmap`,
  :func:`plot_appi_curves` and :func:`plot_frontier`. Each writes an image file and returns
  its path.

Note [plots leave no global trace]
    Figures are built from :class:`matplotlib.figure.Figure` with an explicit
    :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, never through
    ``matplotlib.pyplot``: pyplot would pick (and possibly switch) the user's global backend,
    register figures that are never closed, and is not thread safe. No rcParams are written
    and no ``rc_context`` is used, so a notebook's or an application's matplotlib setup is
    exactly what it was before the call. matplotlib is imported inside the plotting
    functions only, so ``import adapeft_optim.plots`` works without it.

``history`` arguments take the optimizer's probe records (``GeNAdaPEFT.history``: a list of
dicts with at least the keys ``step``, ``group``, ``ppi`` and ``accepted``) or any object
with a ``history`` attribute holding them, e.g. the optimizer itself.

Note [valued probes]
    A probe's PPI enters the figures when the probe was *valued*, exactly as it enters
    ``opt.appi``: a record whose ``case`` is not ``None`` (``"interior"``, ``"trust region"``,
    ``"no descent"``; Note [Influence of every probe] in the optimizer). ``accepted`` says
    whether the lr fit was used, which is a different question: a concave line is valued but
    not accepted. Records without a ``case`` key (histories written before it existed) count
    when ``accepted``. So the last column of :func:`appi_curves` is ``opt.appi``.
"""

from __future__ import annotations

import math
import operator
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "iqr_mask",
    "ema",
    "ppi_matrix",
    "appi_curves",
    "heatmap_values",
    "plot_ppi_heatmap",
    "plot_appi_curves",
    "plot_frontier",
]

_MATPLOTLIB_HINT = "plotting needs matplotlib: pip install 'adapeft-optim[plot]'"
_RECORD_KEYS = ("step", "group", "ppi", "accepted")
_RECIPE_MARKERS = ("s", "D", "^", "v", "P", "X", "<", ">", "h", "p")


# --------------------------------------------------------------------------------------
# Processing (numpy only)
# --------------------------------------------------------------------------------------


def iqr_mask(values: Iterable[float], k: float = 3.0) -> np.ndarray:
    """Boolean mask of the values inside the interquartile-range fence.

    A value ``x`` is kept when ``Q1 - k * IQR <= x <= Q3 + k * IQR`` (both ends included),
    with ``Q1``/``Q3`` the 25th/75th percentiles of the finite values and
    ``IQR = Q3 - Q1``. The percentiles are numpy's default (``np.percentile`` with
    ``method="linear"``): for ``n`` sorted values ``v_0 <= ... <= v_{n-1}`` the ``p``-th
    percentile is ``v_i + f * (v_{i+1} - v_i)`` where ``i + f = p / 100 * (n - 1)``.
    The paper (Appendix A.1, footnote 2) uses ``k = 3``.

    Non-finite values (NaN, +-inf) are outside the fence and take no part in the
    quartiles; with no finite value at all the mask is all ``False``.

    Args:
        values: 1-D sequence of numbers.
        k: fence width in IQRs, finite and ``>= 0`` (default: 3.0)

    Returns:
        ``np.ndarray`` of ``bool`` with the shape of ``values``.
    """
    k = _check_nonnegative("k", k)
    x = _as_1d_float("values", values)
    finite = np.isfinite(x)
    if not finite.any():
        return finite
    q1, q3 = np.percentile(x[finite], [25.0, 75.0])
    iqr = q3 - q1
    with np.errstate(invalid="ignore"):
        return finite & (x >= q1 - k * iqr) & (x <= q3 + k * iqr)


def ema(values: Iterable[float], alpha: float = 0.9) -> np.ndarray:
    """Exponential moving average that skips missing values.

    Convention: ``alpha`` is the weight on the *past*,

        s_0 = x_0,    s_t = alpha * s_{t-1} + (1 - alpha) * x_t,

    so ``alpha = 0`` returns the input (gaps filled) and larger ``alpha`` smooths more (pandas'
    ``ewm(alpha=a, adjust=False, ignore_na=True)`` is this with ``alpha = 1 - a``). The
    series starts at the first finite value (earlier positions stay NaN); a non-finite
    ``x_t`` after that is skipped, i.e. ``s_t = s_{t-1}`` is carried forward.

    Args:
        values: 1-D sequence of numbers; NaN (or +-inf) marks a missing value.
        alpha: weight on the previous average, in ``[0, 1]`` (default: 0.9)

    Returns:
        ``np.ndarray`` of ``float64`` with the shape of ``values``.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Invalid alpha: {alpha}; it is the weight on the past and must be in [0, 1]")
    x = _as_1d_float("values", values)
    out = np.full_like(x, np.nan)
    s = math.nan
    for t, xt in enumerate(x.tolist()):
        if math.isfinite(xt):
            s = xt if math.isnan(s) else alpha * s + (1.0 - alpha) * xt
        out[t] = s
    return out


def ppi_matrix(history: Any, groups: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-group PPI at every probe step, as a (groups x probe steps) array.

    Cell ``[i, j]`` is the ``ppi`` of the record of group ``names[i]`` at step ``steps[j]``
    when that probe was valued (Note [valued probes]), and NaN when it was not, when the group
    was not probed at that step (e.g. after masking) or when its ``ppi`` is not finite.

    Args:
        history: the optimizer's probe records (``opt.history``) or an object with a
            ``history`` attribute.
        groups: the rows, in this order; every name must occur in ``history``. ``None`` takes
            every group in the order of first appearance (default: None)

    Returns:
        ``(names, steps, matrix)``: ``names`` a list of group names, ``steps`` the sorted
        distinct probe steps of those groups (``int64``), ``matrix`` a ``float64`` array of
        shape ``(len(names), len(steps))``.

    Raises:
        ValueError: a record misses a key, ``groups`` names a group that is not in the
            history or repeats one, or one group has two records at the same step.
    """
    names, steps, matrix, _ = _ppi_and_weights(history, groups)
    return names, steps, matrix


def _ppi_and_weights(
    history: Any, groups: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ppi_matrix` and, alongside, each cell's weight: the probe steps a probe stands for
    (record ``weight``; 1 where absent, Note [Settled groups] in optimizer.py)."""
    records = _records(history)
    seen: dict[str, None] = {}
    for rec in records:
        seen.setdefault(rec[1], None)
    if groups is None:
        names = list(seen)
    else:
        if isinstance(groups, str):
            raise TypeError(f"groups must be a sequence of group names, got the string {groups!r}; wrap it in a list")
        names = list(groups)
        duplicates = sorted({g for g in names if names.count(g) > 1})
        if duplicates:
            raise ValueError(f"groups repeats {duplicates}; give each group once")
        unknown = [g for g in names if g not in seen]
        if unknown:
            raise ValueError(f"groups {unknown} have no record in the history; groups in the history: {list(seen)}")
    row = {g: i for i, g in enumerate(names)}
    kept = [rec for rec in records if rec[1] in row]
    steps = np.array(sorted({rec[0] for rec in kept}), dtype=np.int64)
    col = {int(s): j for j, s in enumerate(steps)}
    matrix = np.full((len(names), len(steps)), np.nan)
    weights = np.ones(matrix.shape)
    filled = np.zeros(matrix.shape, dtype=bool)
    for step, group, ppi, valued, weight in kept:
        i, j = row[group], col[step]
        if filled[i, j]:
            raise ValueError(f"group {group!r} has two records at step {step}; pass the history of one run")
        filled[i, j] = True
        if valued and math.isfinite(ppi):
            matrix[i, j] = ppi
        weights[i, j] = weight
    return names, steps, matrix, weights


def appi_curves(
    history: Any, groups: Sequence[str] | None = None, *, k: float | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Accumulated PPI of each group over the probe steps, ``APPI_k(tau)``.

    ``matrix[i, j]`` is the sum of ``weight · ppi`` over the valued probes of group ``names[i]``
    at steps ``<= steps[j]`` (Note [valued probes]): 0 before the group's first valued probe,
    and carried forward (constant) over probes that were not valued or are missing. With
    ``k=None`` the last column equals the optimizer's ``opt.appi`` for a complete history.

    Args:
        history: the optimizer's probe records (``opt.history``) or an object with a
            ``history`` attribute.
        groups: row order, as in :func:`ppi_matrix` (default: None)
        k: when given, valued PPI values outside the per-group IQR fence of
            :func:`iqr_mask` with this ``k`` are left out of the sum, the outlier removal
            the paper applies to its APPI plots (Appendix A.1); ``None`` sums them all
            (default: None)

    Returns:
        ``(names, steps, matrix)`` shaped as in :func:`ppi_matrix`.
    """
    names, steps, ppi, weights = _ppi_and_weights(history, groups)
    if k is not None:
        ppi = np.stack([np.where(iqr_mask(r, k), r, np.nan) for r in ppi]) if len(ppi) else ppi
    return names, steps, np.cumsum(np.nan_to_num(ppi * weights, nan=0.0), axis=1)


def heatmap_values(
    history: Any,
    reference: str | None = "others",
    k: float | None = 3.0,
    alpha: float = 0.9,
    *,
    groups: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """PPI heatmap values processed as in the paper's Appendix A.1.

    Steps, row by row of :func:`ppi_matrix` (probes not valued, or missing, are NaN there):

    1. Outlier removal: values outside the row's fence ``[Q1 - k IQR, Q3 + k IQR]``
       (:func:`iqr_mask`) become NaN.
    2. Smoothing: :func:`ema` with weight ``alpha`` on the past; NaNs are skipped and the
       average carried forward, so only the cells before a row's first kept value stay NaN.
    3. Normalisation: every row is divided by the (processed) reference row, the row named
       ``reference``. The paper divides by its first row, which is ``others`` (most of the
       parameters) in its figures. If no row is named ``reference`` (a LoRA model whose base
       weights are frozen has no ``others`` group), the **first row** is the reference.
       The reference row thus reads 1, "one unit of influence".
    4. ``log10``. Cells whose ratio is not finite and positive (e.g. where the reference is
       still NaN) are NaN.

    Args:
        history: the optimizer's probe records (``opt.history``) or an object with a
            ``history`` attribute.
        reference: name of the row to divide by, or ``None`` for no normalisation (then the
            result is ``log10`` of the smoothed PPI) (default: "others")
        k: IQR fence width; ``None`` skips the outlier removal (default: 3.0)
        alpha: EMA weight on the past; 0 skips the smoothing but still carries values
            over gaps (default: 0.9)
        groups: row order, as in :func:`ppi_matrix` (default: None)

    Returns:
        ``(names, steps, matrix)`` shaped as in :func:`ppi_matrix`; ``matrix`` holds
        ``log10(PPI / PPI_reference)``.
    """
    names, steps, _, values = _heatmap(history, reference, k, alpha, groups)
    return names, steps, values


# --------------------------------------------------------------------------------------
# Figures (matplotlib, imported lazily)
# --------------------------------------------------------------------------------------


def plot_ppi_heatmap(
    history: Any,
    path: str | os.PathLike,
    reference: str | None = "others",
    *,
    k: float | None = 3.0,
    alpha: float = 0.9,
    groups: Sequence[str] | None = None,
    title: str | None = None,
    caption: bool = True,
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Heatmap of per-group PPI over probe steps, normalised as in Appendix A.1.

    Shows :func:`heatmap_values` (groups on the y axis, probe steps on the x axis, lighter
    = more influential with the default colormap), with a colorbar labelled
    ``log10 PPI / PPI(<reference>)``. NaN cells (before a group's first valued probe, or
    before the reference row has one, or where the ratio is not positive) are drawn light
    grey. With ``caption`` a line under the figure says how the cells were processed and
    what grey means: the cells are not raw per-probe PPI but the outlier-filtered, smoothed
    ratio of Appendix A.1.

    Args:
        history: the optimizer's probe records (``opt.history``) or an object with a
            ``history`` attribute.
        path: output file; the format follows the suffix (``.png``, ``.pdf``, ``.svg``...),
            ``.png`` is appended when there is none. Parent folders are created.
        reference: row to normalise by, see :func:`heatmap_values` (default: "others")
        k: IQR fence width, ``None`` for none (default: 3.0)
        alpha: EMA weight on the past (default: 0.9)
        groups: row order, as in :func:`ppi_matrix` (default: None)
        title: figure title (default: None)
        caption: explain the processing and the grey cells under the figure (default: True)
        cmap: matplotlib colormap name (default: "viridis")
        figsize: figure size in inches; ``None`` sizes it to the number of groups
            (default: None)
        dpi: resolution of raster output (default: 100)

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: the history holds no probe record.
    """
    fig = _heatmap_figure(history, reference, k, alpha, groups, title, cmap, figsize, dpi, caption=caption)
    return _save(fig, path, dpi)


def heatmap_caption(reference: str | None, k: float | None, alpha: float) -> str:
    """The line under :func:`plot_ppi_heatmap`: how the cells were processed, what grey is."""
    steps = []
    if k is not None:
        steps.append(f"IQR outliers removed (k={k:g})")
    if alpha > 0:
        steps.append(f"EMA-smoothed (weight {alpha:g} on the past)")
    steps.append("gaps carried forward")
    if reference is not None:
        steps.append(f"divided by the {reference!r} row")
    return (
        f"PPI of the valued probes: {', '.join(steps)}; "
        f"grey: no valued probe yet{' (of the group or of the reference)' if reference else ''}"
        f", or a PPI of 0"
    )


def _heatmap_figure(history, reference, k, alpha, groups, title, cmap, figsize, dpi, *, caption=False):
    Figure, mpl = _matplotlib()
    names, steps, ref_name, values = _heatmap(history, reference, k, alpha, groups)
    _require_records(steps, "PPI heatmap")
    if figsize is None:
        figsize = (8.0, 1.6 + 0.45 * len(names) + (0.4 if caption else 0.0))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    colormap = mpl.colormaps[cmap].with_extremes(bad="0.85")
    finite = values[np.isfinite(values)]
    if finite.size:
        vmin, vmax = float(finite.min()), float(finite.max())
    else:
        vmin, vmax = -1.0, 1.0
        ax.text(0.5, 0.5, "no valued probe", transform=ax.transAxes, ha="center", va="center")
    if vmin == vmax:  # one colour would leave the colorbar without a range
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(
        np.ma.masked_invalid(values),
        aspect="auto",
        interpolation="nearest",
        cmap=colormap,
        vmin=vmin,
        vmax=vmax,
    )
    ax.set_yticks(range(len(names)), labels=names)
    cols = _tick_positions(len(steps))
    ax.set_xticks(cols, labels=[str(int(steps[c])) for c in cols])
    ax.set_xlabel("step")
    ax.set_ylabel("parameter group")
    label = "log10 PPI" if ref_name is None else f"log10 PPI / PPI({ref_name})"
    fig.colorbar(image, ax=ax, label=label)
    if title:
        ax.set_title(title)
    if caption:  # wrapped to the figure's width (about 15 small characters per inch)
        text = textwrap.fill(heatmap_caption(ref_name, k, alpha), int(15 * figsize[0]))
        fig.supxlabel(text, fontsize="small", color="0.3")
    return fig


def plot_appi_curves(
    history: Any,
    path: str | os.PathLike,
    *,
    k: float | None = None,
    groups: Sequence[str] | None = None,
    log: bool | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (7.0, 4.5),
    dpi: int = 100,
) -> Path:
    """Line plot of accumulated PPI, one line per group (:func:`appi_curves`).

    Args:
        history: the optimizer's probe records (``opt.history``) or an object with a
            ``history`` attribute.
        path: output file; the format follows the suffix, ``.png`` is appended when there is
            none. Parent folders are created.
        k: IQR fence for leaving outlying PPI out of the sums, ``None`` for none
            (default: None)
        groups: which groups, in legend order, as in :func:`ppi_matrix` (default: None)
        log: log-scale y axis; ``None`` chooses it when every nonzero APPI is positive.
            On a log axis zeros (before a group's first accepted probe) are not drawn
            (default: None)
        title: figure title (default: None)
        figsize: figure size in inches (default: (7.0, 4.5))
        dpi: resolution of raster output (default: 100)

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: the history holds no probe record.
    """
    fig = _appi_figure(history, k, groups, log, title, figsize, dpi)
    return _save(fig, path, dpi)


def _appi_figure(history, k, groups, log, title, figsize, dpi):
    Figure, _ = _matplotlib()
    names, steps, appi = appi_curves(history, groups, k=k)
    _require_records(steps, "APPI curves")
    if log is None:
        log = bool((appi > 0).any() and (appi >= 0).all())
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for name, row in zip(names, appi):
        y = np.where(row > 0, row, np.nan) if log else row
        ax.plot(steps, y, marker="." if len(steps) < 40 else None, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("APPI (accumulated PPI)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


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


def _frontier_figure(points, recipes, ylabel, title, annotate, figsize, dpi, *, budget=None, selection=None):
    Figure, mpl = _matplotlib()
    from matplotlib.lines import Line2D

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

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
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
            numbers.append(
                ax.annotate(
                    tag,
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=line.get_color(),
                    fontweight="bold",
                    zorder=5,
                    bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.8},
                )
            )
            handles.append(Line2D([], [], linestyle="none", label=f"{tag}  {text}"))
    colors = mpl.colormaps["Dark2"]
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
    if chosen is not None and chosen[0] > 0:
        groups = "+".join(chosen[2])
        label = (
            f"selection ({groups})"
            if chosen[2] and len(groups) <= 30
            else f"selection ({len(chosen[2])} groups)"
            if chosen[2]
            else "selection"
        )
        handles.append(
            ax.scatter(
                [100.0 * chosen[0]],
                [chosen[1]],
                marker="*",
                s=220,
                facecolor="none",
                edgecolor="crimson",
                linewidth=1.5,
                zorder=4,
                label=label,
            )
        )
    if budget is not None:
        handles.append(
            ax.axvline(
                100.0 * budget,
                color="0.35",
                linestyle="--",
                linewidth=1,
                label=f"budget {100.0 * budget:.3g}%",
            )
        )
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
    if numbers:
        _separate(fig, numbers)
    return fig


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


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _matplotlib():
    try:
        import matplotlib as mpl
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MATPLOTLIB_HINT) from exc
    return Figure, mpl


def _save(fig, path, dpi) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(os.fspath(path))
    if not path.suffix:
        path = path.with_suffix(".png")
    canvas = FigureCanvasAgg(fig)
    fmt = path.suffix[1:].lower()
    supported = canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot write {str(path)!r}: unsupported suffix {path.suffix!r}; use one of {sorted(supported)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=dpi)
    return path


def _heatmap(history, reference, k, alpha, groups):
    """heatmap_values plus the name of the reference row actually used (None: none)."""
    if k is not None:
        _check_nonnegative("k", k)
    names, steps, ppi = ppi_matrix(history, groups)
    rows = []
    for row in ppi:
        if k is not None:
            row = np.where(iqr_mask(row, k), row, np.nan)
        rows.append(ema(row, alpha))
    smooth = np.stack(rows) if rows else ppi
    ref_name = None
    if reference is not None and names:
        ref_name = reference if reference in names else names[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            smooth = smooth / smooth[names.index(ref_name)]
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(np.isfinite(smooth) & (smooth > 0), np.log10(smooth), np.nan)
    return names, steps, ref_name, values


def _records(history) -> list[tuple[int, str, float, bool, float]]:
    """Validated (step, group, ppi, valued) tuples of a history (Note [valued probes])."""
    if not isinstance(history, (list, tuple)) and hasattr(history, "history"):
        history = history.history
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Iterable):
        raise TypeError(
            f"history must be a list of probe records (opt.history) or an object with a "
            f"'history' attribute, got {type(history).__name__}"
        )
    out = []
    for i, rec in enumerate(history):
        if not isinstance(rec, Mapping):
            raise TypeError(f"history record {i} must be a dict, got {type(rec).__name__}: {rec!r}")
        missing = [key for key in _RECORD_KEYS if key not in rec]
        if missing:
            raise ValueError(
                f"history record {i} has no {missing} key(s); expected GeNAdaPEFT.history "
                f"records with keys {list(_RECORD_KEYS)}"
            )
        try:
            step = operator.index(rec["step"])
        except TypeError:
            raise TypeError(f"history record {i} has a non-integer step {rec['step']!r}") from None
        ppi = rec["ppi"]
        ppi = math.nan if ppi is None else float(ppi)
        valued = rec["case"] is not None if "case" in rec else bool(rec["accepted"])
        out.append((step, str(rec["group"]), ppi, valued, float(rec.get("weight", 1))))
    return out


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


def _tick_positions(n: int, most: int = 10) -> list[int]:
    if n <= most:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, most).round().astype(int).tolist()))


def _require_records(steps: np.ndarray, what: str) -> None:
    if steps.size == 0:
        raise ValueError(f"cannot draw the {what}: the history holds no probe record; run some probe steps first")


def _check_nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Invalid {name}: {value}; it must be finite and >= 0")
    return value


def _as_1d_float(name: str, values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    return x
