"""PPI heatmaps: the values of the paper's Appendix A.1 (numpy) and their figure (matplotlib)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import _check_nonnegative, _matplotlib, _require_records, _save, _tick_positions
from .processing import ema, iqr_mask, ppi_matrix


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
