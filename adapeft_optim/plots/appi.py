"""APPI curves: accumulated PPI of each group over the probe steps, and their line plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import _matplotlib, _require_records, _save
from .processing import _ppi_and_weights, iqr_mask


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
