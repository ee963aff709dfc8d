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
"""

from __future__ import annotations

import math
import operator
import os
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
        raise ValueError(
            f"Invalid alpha: {alpha}; it is the weight on the past and must be in [0, 1]"
        )
    x = _as_1d_float("values", values)
    out = np.full_like(x, np.nan)
    s = math.nan
    for t, xt in enumerate(x.tolist()):
        if math.isfinite(xt):
            s = xt if math.isnan(s) else alpha * s + (1.0 - alpha) * xt
        out[t] = s
    return out


def ppi_matrix(
    history: Any, groups: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-group PPI at every probe step, as a (groups x probe steps) array.

    Cell ``[i, j]`` is the ``ppi`` of the record of group ``names[i]`` at step ``steps[j]``
    when that probe was accepted, and NaN when it was rejected, when the group was not probed
    at that step (e.g. after masking) or when its ``ppi`` is not finite.

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
    records = _records(history)
    seen: dict[str, None] = {}
    for rec in records:
        seen.setdefault(rec[1], None)
    if groups is None:
        names = list(seen)
    else:
        if isinstance(groups, str):
            raise TypeError(
                f"groups must be a sequence of group names, got the string {groups!r}; "
                f"wrap it in a list"
            )
        names = list(groups)
        duplicates = sorted({g for g in names if names.count(g) > 1})
        if duplicates:
            raise ValueError(f"groups repeats {duplicates}; give each group once")
        unknown = [g for g in names if g not in seen]
        if unknown:
            raise ValueError(
                f"groups {unknown} have no record in the history; "
                f"groups in the history: {list(seen)}"
            )
    row = {g: i for i, g in enumerate(names)}
    kept = [rec for rec in records if rec[1] in row]
    steps = np.array(sorted({rec[0] for rec in kept}), dtype=np.int64)
    col = {int(s): j for j, s in enumerate(steps)}
    matrix = np.full((len(names), len(steps)), np.nan)
    filled = np.zeros(matrix.shape, dtype=bool)
    for step, group, ppi, accepted in kept:
        i, j = row[group], col[step]
        if filled[i, j]:
            raise ValueError(
                f"group {group!r} has two records at step {step}; pass the history of one run"
            )
        filled[i, j] = True
        if accepted and math.isfinite(ppi):
            matrix[i, j] = ppi
    return names, steps, matrix


def appi_curves(
    history: Any, groups: Sequence[str] | None = None, *, k: float | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Accumulated PPI of each group over the probe steps, ``APPI_k(tau)``.

    ``matrix[i, j]`` is the sum of the ``ppi`` of the accepted probes of group ``names[i]``
    at steps ``<= steps[j]``: 0 before the group's first accepted probe, and carried forward
    (constant) over rejected or missing probes. With ``k=None`` the last column equals the
    optimizer's ``opt.appi`` for a complete history.

    Args:
        history: the optimizer's probe records (``opt.history``) or an object with a
            ``history`` attribute.
        groups: row order, as in :func:`ppi_matrix` (default: None)
        k: when given, accepted PPI values outside the per-group IQR fence of
            :func:`iqr_mask` with this ``k`` are left out of the sum, the outlier removal
            the paper applies to its APPI plots (Appendix A.1); ``None`` sums them all
            (default: None)

    Returns:
        ``(names, steps, matrix)`` shaped as in :func:`ppi_matrix`.
    """
    names, steps, ppi = ppi_matrix(history, groups)
    if k is not None:
        ppi = np.stack([np.where(iqr_mask(r, k), r, np.nan) for r in ppi]) if len(ppi) else ppi
    return names, steps, np.cumsum(np.nan_to_num(ppi, nan=0.0), axis=1)


def heatmap_values(
    history: Any,
    reference: str | None = "others",
    k: float | None = 3.0,
    alpha: float = 0.9,
    *,
    groups: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """PPI heatmap values processed as in the paper's Appendix A.1.

    Steps, row by row of :func:`ppi_matrix` (rejected/missing probes are NaN there):

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
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Heatmap of per-group PPI over probe steps, normalised as in Appendix A.1.

    Shows :func:`heatmap_values` (groups on the y axis, probe steps on the x axis, lighter
    = more influential with the default colormap), with a colorbar labelled
    ``log10 PPI / PPI(<reference>)``. NaN cells (before a group's first kept probe) are
    drawn light grey.

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
    fig = _heatmap_figure(history, reference, k, alpha, groups, title, cmap, figsize, dpi)
    return _save(fig, path, dpi)


def _heatmap_figure(history, reference, k, alpha, groups, title, cmap, figsize, dpi):
    Figure, mpl = _matplotlib()
    names, steps, ref_name, values = _heatmap(history, reference, k, alpha, groups)
    _require_records(steps, "PPI heatmap")
    if figsize is None:
        figsize = (8.0, 1.6 + 0.45 * len(names))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    colormap = mpl.colormaps[cmap].with_extremes(bad="0.85")
    finite = values[np.isfinite(values)]
    if finite.size:
        vmin, vmax = float(finite.min()), float(finite.max())
    else:
        vmin, vmax = -1.0, 1.0
        ax.text(0.5, 0.5, "no accepted probe", transform=ax.transAxes, ha="center", va="center")
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
    ylabel: str = "predicted loss reduction",
    title: str | None = None,
    annotate: bool = True,
    figsize: tuple[float, float] = (7.0, 4.5),
    dpi: int = 100,
) -> Path:
    """Pareto frontier: trainable-parameter share against loss (reduction).

    x is the percentage of trainable parameters (``100 * fraction``) on a log axis, y the
    points' ``value`` (predicted loss reduction, or a measured loss: set ``ylabel``).
    Points with ``fraction <= 0`` (the empty selection) cannot sit on a log axis and are
    left out.

    Args:
        points: frontier points, objects with ``fraction``, ``value`` and ``groups``
            attributes (``selection.FrontierPoint``) or tuples ``(fraction, value[, groups])``;
            or a mapping label -> such a sequence to draw several frontiers (e.g. greedy
            against exact), each with its legend entry.
        path: output file; the format follows the suffix, ``.png`` is appended when there is
            none. Parent folders are created.
        recipes: optional fixed PEFT recipes, name -> ``(fraction, y)``, drawn as labelled
            markers (e.g. ``{"LoRA": (0.004, 0.31), "BitFit": (0.001, 0.27)}``)
            (default: None)
        ylabel: y axis label (default: "predicted loss reduction")
        title: figure title (default: None)
        annotate: label each frontier point with its groups joined by ``+`` (``"N groups"``
            when that is longer than 32 characters) (default: True)
        figsize: figure size in inches (default: (7.0, 4.5))
        dpi: resolution of raster output (default: 100)

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        ImportError: matplotlib is not installed.
        TypeError: a point has neither the attributes nor the tuple form.
        ValueError: there is nothing with a positive fraction to draw.
    """
    fig = _frontier_figure(points, recipes, ylabel, title, annotate, figsize, dpi)
    return _save(fig, path, dpi)


def _frontier_figure(points, recipes, ylabel, title, annotate, figsize, dpi):
    Figure, _ = _matplotlib()
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
    drawable = [p for pts in series.values() for p in pts if p[0] > 0] + [
        p for p in recipe_points.values() if p[0] > 0
    ]
    if not drawable:
        raise ValueError("plot_frontier needs at least one point or recipe with fraction > 0")

    xs = [100.0 * p[0] for p in drawable]
    log_lo, log_hi = math.log10(min(xs)), math.log10(max(xs))

    def place(x, y, text, dy, **kw):
        # Labels of points in the right part of the axis go to their left, so long group
        # lists stay inside the figure; they are kept out of the layout so that they never
        # shrink the axes.
        right = log_hi > log_lo and (math.log10(x) - log_lo) / (log_hi - log_lo) > 0.7
        ax.annotate(
            text, (x, y), textcoords="offset points", xytext=(-4 if right else 4, dy),
            ha="right" if right else "left", **kw,
        ).set_in_layout(False)

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for label, pts in series.items():
        pts = sorted(p for p in pts if p[0] > 0)
        if not pts:
            continue
        x = [100.0 * p[0] for p in pts]
        ax.plot(x, [p[1] for p in pts], marker="o", label=label)
        if annotate:
            for xi, (_, yi, grp) in zip(x, pts):
                if grp:
                    text = "+".join(grp)
                    place(xi, yi, text if len(text) <= 32 else f"{len(grp)} groups", 4, fontsize=7)
    for name, (fraction, y) in recipe_points.items():
        if fraction <= 0:
            continue
        ax.scatter([100.0 * fraction], [y], marker="s", color="0.3", zorder=3)
        place(100.0 * fraction, y, name, -10, fontsize=8, color="0.2")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (%)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 1:
        ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


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
            f"cannot write {str(path)!r}: unsupported suffix {path.suffix!r}; "
            f"use one of {sorted(supported)}"
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


def _records(history) -> list[tuple[int, str, float, bool]]:
    """Validated (step, group, ppi, accepted) tuples of a history."""
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
        out.append((step, str(rec["group"]), ppi, bool(rec["accepted"])))
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
        raise ValueError(
            f"cannot draw the {what}: the history holds no probe record; "
            f"run some probe steps first"
        )


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
